//! One TorchServe Python worker process: started in its own process group with the archive's folder as working
//! directory and first import path, listening on a Unix socket in a private folder; its output goes to
//! ferroserve's log, line by line, naming the model and the worker. Dropping it kills the whole group (the
//! handler's own children too) and reaps it, so that no Python process outlives its worker.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::{net::UnixStream, process::CommandExt},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    protocol::{self, Answer, Load},
    PythonOptions,
};
use crate::backend::handler::HandlerInput;

/// How often the start-up looks whether the worker listens yet.
const CONNECT_POLL: Duration = Duration::from_millis(20);

/// A worker process started but not yet connected and loaded (it imports torch meanwhile).
pub(crate) struct Spawned {
    child: Child,
    socket: tempfile::TempDir,
}

/// A worker that has loaded the model and takes inference commands.
pub(crate) struct Worker {
    spawned: Spawned,
    stream: UnixStream,
    /// The id of the next request sent (unique per worker, as TorchServe's request ids are per request).
    next_id: u64,
}

/// The thread variables a worker is started with: `threads` for each of torch's (OpenMP) and MKL's pools that
/// ferroserve's environment leaves unset, so that workers x threads fit the cores as with the native backends
/// (torch would otherwise give every worker a thread per core, and N workers would fight over them).
fn thread_env(threads: usize) -> Vec<(&'static str, String)> {
    ["OMP_NUM_THREADS", "MKL_NUM_THREADS"]
        .into_iter()
        .filter(|key| std::env::var_os(key).is_none())
        .map(|key| (key, threads.max(1).to_string()))
        .collect()
}

/// The socket's path in `dir`: the worker wants a name ending in `.<number>` (it adds its `LOCAL_RANK`).
fn socket_path(dir: &Path) -> std::path::PathBuf {
    dir.join("ts.sock.0")
}

impl Spawned {
    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the worker process of worker `worker`; it returns at once.
    ///
    /// # Errors
    /// When the folder for the socket cannot be made or the interpreter cannot be started.
    pub(crate) fn start(options: &PythonOptions, worker: usize) -> io::Result<Self> {
        let socket = tempfile::Builder::new().prefix("ferroserve-py-").tempdir()?;
        let mut command = Command::new(&options.python);
        command
            .args(["-m", "ts.model_service_worker", "--sock-type", "unix", "--sock-name"])
            .arg(socket_path(socket.path()))
            .args(options.metrics_config.iter().flat_map(|m| [std::ffi::OsStr::new("--metrics-config"), m.as_os_str()]))
            .current_dir(&options.model_dir)
            .env("PYTHONPATH", python_path(&options.model_dir))
            .env("PYTHONUNBUFFERED", "1")
            .env("TS_DECODE_INPUT_REQUEST", if options.decode_input_request { "true" } else { "false" })
            .envs(thread_env(options.threads))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {} (python_executable): {e}", options.python.display()))
        })?;
        let pid = child.id();
        tracing::info!(model = %options.model_name, worker, pid, "Python worker started");
        if let Some(out) = child.stdout.take() {
            forward_log(out, &options.model_name, worker, false);
        }
        if let Some(err) = child.stderr.take() {
            forward_log(err, &options.model_name, worker, true);
        }
        Ok(Self { child, socket })
    }

    /// Connects to the worker and loads the model in it, within `startup_timeout` (counted from now: a worker
    /// restarted after a failure is connected when its next batch comes).
    ///
    /// # Errors
    /// When the worker exits or does not listen in time, or the handler fails to load (TorchServe's status and
    /// message).
    pub(crate) fn connect(mut self, options: &PythonOptions, load: &Load<'_>) -> io::Result<Worker> {
        let until = Instant::now() + options.startup_timeout;
        let stream = loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "the Python worker exited ({status}) before it listened: see its log lines above"
                )));
            }
            match UnixStream::connect(socket_path(self.socket.path())) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < until => std::thread::sleep(CONNECT_POLL),
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the Python worker did not listen within {:?} ({e})", options.startup_timeout),
                    ))
                }
            }
        };
        let mut worker = Worker { spawned: self, stream, next_id: 0 };
        let answer = worker.exchange(&protocol::encode_load(load), until).map_err(|e| match e.kind() {
            // The worker exits on any exception but a few while it loads (an ImportError of the handler, say).
            io::ErrorKind::UnexpectedEof => io::Error::other(
                "the Python worker exited while it loaded the model: see its log lines above (the handler's traceback)",
            ),
            _ => e,
        })?;
        if answer.code != 200 {
            return Err(io::Error::other(format!(
                "the handler failed to load: {} {} (see the worker's log lines above)",
                answer.code, answer.message
            )));
        }
        Ok(worker)
    }
}

impl Worker {
    /// Sends a batch and reads the answer, within `timeout`.
    ///
    /// # Errors
    /// When the worker dies, does not answer in time, or answers out of protocol; the worker is then unusable.
    pub(crate) fn infer(&mut self, batch: &[&HandlerInput], timeout: Duration) -> io::Result<(Vec<String>, Answer)> {
        let ids: Vec<String> = (0..batch.len())
            .map(|_| {
                self.next_id += 1;
                self.next_id.to_string()
            })
            .collect();
        // A timeout past the clock's range (a configuration of u64::MAX seconds) waits a year.
        let until = Instant::now() + timeout.min(Duration::from_secs(365 * 24 * 3600));
        let answer = self.exchange(&protocol::encode_inference(batch, &ids), until)?;
        Ok((ids, answer))
    }

    /// Writes one command and reads its answer before `until`.
    fn exchange(&mut self, command: &[u8], until: Instant) -> io::Result<Answer> {
        self.stream.set_write_timeout(Some(remaining(until)?))?;
        self.stream.write_all(command)?;
        let mut reader = BufReader::new(Deadline { stream: &self.stream, until });
        protocol::read_answer(&mut reader)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.spawned.pid()
    }
}

/// The time left before `until`, or a timeout error when none is.
fn remaining(until: Instant) -> io::Result<Duration> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "the Python worker did not answer in time"))
    } else {
        Ok(left)
    }
}

/// The stream, read with one deadline for the whole answer rather than a timeout per read.
struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(remaining(self.until)?))?;
        match self.stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "the Python worker did not answer in time"))
            }
            other => other,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        // The group is the worker's own (`process_group(0)`): the handler's children go with it.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The archive's installed requirements first on the import path when there are any, then the archive's folder
/// (the handler and its extra files are there), then what the server's environment had.
fn python_path(model_dir: &Path) -> std::ffi::OsString {
    let mut path = std::ffi::OsString::new();
    let dependencies = model_dir.join(super::DEPENDENCIES);
    if dependencies.is_dir() {
        path.push(dependencies.as_os_str());
        path.push(":");
    }
    path.push(model_dir.as_os_str());
    if let Some(existing) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        path.push(":");
        path.push(existing);
    }
    path
}

/// Logs each line the worker writes, at INFO (stdout) or WARN (stderr) as TorchServe's `MODEL_LOG` does, naming
/// the model and worker; lines of the worker's `MetricsCache` (`[METRICS]...`) at DEBUG under the target
/// `ferroserve::handler_metrics`. The thread ends when the process closes the pipe.
fn forward_log(pipe: impl Read + Send + 'static, model: &str, worker: usize, stderr: bool) {
    let model = model.to_string();
    let spawned = std::thread::Builder::new().name(format!("fs-py-log-{worker}")).spawn(move || {
        for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            if let Some(metric) = line.strip_prefix("[METRICS]") {
                tracing::debug!(target: "ferroserve::handler_metrics", model = %model, worker, "{metric}");
            } else if stderr {
                tracing::warn!(target: "ferroserve::handler", model = %model, worker, "{line}");
            } else {
                tracing::info!(target: "ferroserve::handler", model = %model, worker, "{line}");
            }
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the thread that logs the Python worker's output");
    }
}

#[cfg(test)]
mod tests {
    use super::thread_env;

    #[test]
    fn workers_get_their_share_of_threads_unless_the_environment_says() {
        for threads in [0, 1, 3] {
            let env = thread_env(threads);
            for key in ["OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
                let given = env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
                match std::env::var_os(key) {
                    Some(_) => assert_eq!(given, None, "{key} is inherited"),
                    None => assert_eq!(given, Some(threads.max(1).to_string().as_str()), "{key}"),
                }
            }
        }
    }
}
