//! CPU time of the load generator itself (`getrusage`) and of the server under test (`/proc/PID/stat`),
//! so that a report can show that the generator was not the bottleneck.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The server's CPU time could not be read.
#[derive(Debug, Error)]
pub enum CpuError {
    /// `/proc/PID/stat` could not be read (no such process, or not Linux).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The stat file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The stat file does not have the expected fields.
    #[error("{0} is not in the /proc/PID/stat format")]
    Format(PathBuf),
}

/// User plus system CPU time of this process, all threads.
#[allow(unsafe_code)]
pub fn own_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given, which points to memory of that type;
    // RUSAGE_SELF is always a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: getrusage returned 0, so it filled the struct (which was zeroed before in any case).
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Clock ticks per second of `/proc` times.
#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// User plus system CPU time of process `pid` (utime + stime of `/proc/PID/stat`).
///
/// # Errors
/// [`CpuError`] when the file cannot be read or parsed.
pub fn process_cpu_time(pid: u32) -> Result<Duration, CpuError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = std::fs::read_to_string(&path).map_err(|source| CpuError::Io { path: path.clone(), source })?;
    let ticks = parse_stat_ticks(&text).ok_or(CpuError::Format(path))?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

/// utime + stime from a stat line; the command name (field 2) may hold spaces and parentheses.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU used during the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUsage {
    /// Wall-clock seconds measured over.
    pub wall_s: f64,
    /// The generator's CPU seconds.
    pub generator_s: f64,
    /// The server's CPU seconds, with `--server-pid`.
    pub server_s: Option<f64>,
}

impl CpuUsage {
    /// Cores the generator kept busy on average.
    pub fn generator_cores(&self) -> f64 {
        self.generator_s / self.wall_s.max(1e-9)
    }

    /// Cores the server kept busy on average.
    pub fn server_cores(&self) -> Option<f64> {
        self.server_s.map(|s| s / self.wall_s.max(1e-9))
    }

    /// Generator CPU over server CPU.
    pub fn ratio(&self) -> Option<f64> {
        self.server_s.filter(|s| *s > 0.0).map(|s| self.generator_s / s)
    }
}

/// CPU counters at the start of a run.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    wall: std::time::Instant,
    own: Duration,
    server: Option<(u32, Duration)>,
}

impl CpuMeter {
    /// Reads the counters now; a server pid whose stat cannot be read is reported and ignored.
    pub fn start(server_pid: Option<u32>) -> Self {
        let server = server_pid.and_then(|pid| match process_cpu_time(pid) {
            Ok(t) => Some((pid, t)),
            Err(e) => {
                tracing::warn!("--server-pid: {e}");
                None
            }
        });
        Self { wall: std::time::Instant::now(), own: own_cpu_time(), server }
    }

    /// The CPU used since [`CpuMeter::start`].
    pub fn stop(&self) -> CpuUsage {
        let server_s = self.server.and_then(|(pid, before)| {
            process_cpu_time(pid).ok().map(|after| after.saturating_sub(before).as_secs_f64())
        });
        CpuUsage {
            wall_s: self.wall.elapsed().as_secs_f64(),
            generator_s: own_cpu_time().saturating_sub(self.own).as_secs_f64(),
            server_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let line = "1234 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100";
        assert_eq!(parse_stat_ticks(line), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_measurable() {
        let meter = CpuMeter::start(Some(std::process::id()));
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let usage = meter.stop();
        assert!(usage.generator_s >= 0.0 && usage.server_s.is_some());
    }
}
