//! The access log: one JSON line per request (HTTP and gRPC), written by a thread of its own through a buffered
//! writer. Requests hand their line over a bounded channel and never wait for the disk: when the channel is full
//! the line is dropped and counted in `ferroserve_access_log_dropped_total`. The writer flushes whenever it has
//! caught up, so a quiet server's log is current and a busy one writes in large blocks. At shutdown
//! [`AccessLog::flush`] waits until every line recorded before it is on disk (or stdout).

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use prometheus::IntCounter;
use serde::Serialize;

use crate::{
    exchange::{Exchange, Outcome},
    obs_config::AccessLogTarget,
};

/// Lines waiting for the writer at most; past this, lines are dropped (and counted).
pub const QUEUE: usize = 16 * 1024;

/// What the writer thread is handed: a line, or a request to flush what came before and say so.
#[derive(Debug)]
enum Message {
    Line(String),
    Flush(Sender<()>),
}

/// An open access log.
#[derive(Debug)]
pub struct AccessLog {
    lines: Sender<Message>,
    dropped: IntCounter,
    writer: Option<JoinHandle<()>>,
}

impl AccessLog {
    /// Opens the log `target` names (`None` for [`AccessLogTarget::Off`]), counting the lines it drops in
    /// `dropped`.
    ///
    /// # Errors
    /// When the file cannot be opened for appending, or the writer thread cannot start.
    pub fn open(target: &AccessLogTarget, dropped: IntCounter) -> std::io::Result<Option<Self>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        Self::to_writer(out, dropped).map(Some)
    }

    /// An access log written to `out`.
    ///
    /// # Errors
    /// When the writer thread cannot start.
    pub fn to_writer(out: Box<dyn Write + Send>, dropped: IntCounter) -> std::io::Result<Self> {
        let (lines, received) = crossbeam_channel::bounded(QUEUE);
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&received, BufWriter::with_capacity(64 * 1024, out)))?;
        Ok(Self { lines, dropped, writer: Some(writer) })
    }

    /// Logs one request; never waits: a full queue drops the line.
    pub fn record(&self, exchange: &Exchange, outcome: &Outcome) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.lines.try_send(Message::Line(line(exchange, outcome)))
        {
            self.dropped.inc();
        }
    }

    /// Waits, `timeout` at most, until every line recorded before the call is written and flushed: what a
    /// server stopping does, so that the lines of its last requests are not lost. Returns whether they were.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (done, flushed) = crossbeam_channel::bounded(1);
        self.lines.send_deadline(Message::Flush(done), deadline).is_ok() && flushed.recv_deadline(deadline).is_ok()
    }
}

impl Drop for AccessLog {
    /// Writes what is queued and waits for the writer.
    fn drop(&mut self) {
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.lines, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: writes lines as they come, flushing each time the queue is empty or a flush is asked for,
/// until every sender is gone. A write error is reported once and the lines that follow are dropped rather than
/// block requests.
fn write_lines(received: &Receiver<Message>, mut out: BufWriter<Box<dyn Write + Send>>) {
    let mut failed = false;
    while let Ok(first) = received.recv() {
        let mut asked = Vec::new();
        let mut take = |message: Message| match message {
            Message::Line(line) if !failed => {
                if let Err(error) = out.write_all(line.as_bytes()) {
                    tracing::error!(%error, "cannot write the access log; its lines are dropped from now on");
                    failed = true;
                }
            }
            Message::Line(_) => {}
            Message::Flush(done) => asked.push(done),
        };
        take(first);
        while let Ok(message) = received.try_recv() {
            take(message);
        }
        if !failed {
            let _ = out.flush();
        }
        for done in asked {
            let _ = done.send(());
        }
    }
}

/// One line of the access log, as JSON.
#[derive(Debug, Serialize)]
struct Line<'a> {
    time: String,
    client: Option<String>,
    protocol: &'static str,
    method: &'a str,
    path: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_status: Option<i32>,
    bytes: u64,
    latency_ms: f64,
    model: Option<&'a str>,
    version: Option<&'a str>,
    batch_size: Option<usize>,
    batch_id: Option<u64>,
    queue_ms: Option<f64>,
    inference_ms: Option<f64>,
    request_id: &'a str,
}

/// The JSON line of `exchange` ended by `outcome`, with its newline.
#[must_use]
pub fn line(exchange: &Exchange, outcome: &Outcome) -> String {
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let served = outcome.served.as_ref();
    let line = Line {
        time: humantime::format_rfc3339_millis(exchange.started).to_string(),
        client: exchange.peer.map(|p| p.to_string()),
        protocol: exchange.protocol,
        method: &exchange.method,
        path: &exchange.path,
        status: outcome.status,
        grpc_status: outcome.grpc_status,
        bytes: outcome.bytes,
        latency_ms: ms(outcome.latency),
        model: served.map(|s| s.model.as_str()),
        version: served.map(|s| s.version.as_str()),
        batch_size: served.map(|s| s.timing.batch_size),
        batch_id: served.map(|s| s.timing.batch_id),
        queue_ms: served.map(|s| ms(s.timing.queue)),
        inference_ms: served.map(|s| ms(s.timing.inference)),
        request_id: &exchange.request_id,
    };
    let mut text = serde_json::to_string(&line).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::{Duration, Instant, SystemTime},
    };

    use ferroserve_engine::request::Timing;

    use super::*;
    use crate::exchange::Served;

    fn exchange(id: &str) -> Exchange {
        Exchange {
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            start: Instant::now(),
            peer: Some("127.0.0.1:5000".parse().expect("an address")),
            protocol: "HTTP/1.1",
            method: "POST".into(),
            path: "/predictions/m".into(),
            request_id: id.into(),
            trace_headers: None,
        }
    }

    fn outcome(served: bool) -> Outcome {
        let timing = Timing {
            queue: Duration::from_micros(1500),
            inference: Duration::from_millis(3),
            batch_size: 4,
            batch_id: 17,
            worker: 0,
        };
        Outcome {
            status: 200,
            grpc_status: None,
            bytes: 42,
            latency: Duration::from_micros(5250),
            served: served.then(|| Served {
                model: "m".into(),
                version: "1.0".into(),
                timing,
                answered: Instant::now(),
            }),
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let text = line(&exchange("id-1"), &outcome(true));
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["client"], "127.0.0.1:5000");
        assert_eq!(value["status"], 200);
        assert_eq!(value["bytes"], 42);
        assert_eq!(value["latency_ms"], 5.25);
        assert_eq!(value["model"], "m");
        assert_eq!(value["batch_size"], 4);
        assert_eq!(value["batch_id"], 17);
        assert_eq!(value["queue_ms"], 1.5);
        assert_eq!(value["request_id"], "id-1");
        assert!(value.get("grpc_status").is_none());
        let unserved: serde_json::Value = serde_json::from_str(&line(&exchange("x"), &outcome(false))).expect("JSON");
        assert!(unserved["model"].is_null() && unserved["batch_size"].is_null());
    }

    /// A writer that blocks until told to go on, then keeps what it is given.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let (lock, opened) = &*self.open;
            let mut open = lock.lock().expect("gate");
            while !*open {
                open = opened.wait(open).expect("gate");
            }
            self.written.lock().expect("written").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn flush_returns_once_every_line_recorded_before_it_is_written_and_flushed() {
        let gate = Gate::default();
        *gate.open.0.lock().expect("gate") = true;
        let log =
            AccessLog::to_writer(Box::new(gate.clone()), IntCounter::new("d", "d").expect("a counter")).expect("a log");
        for round in 1..=3 {
            for i in 0..100 {
                log.record(&exchange(&format!("{round}-{i}")), &outcome(true));
            }
            assert!(log.flush(Duration::from_secs(30)), "flushed");
            let written = String::from_utf8(gate.written.lock().expect("written").clone()).expect("UTF-8");
            assert_eq!(written.lines().count(), round * 100, "every line so far, with no waiting after flush");
            assert!(written.ends_with(&format!("\"request_id\":\"{round}-99\"}}\n")), "the last line is whole");
        }
    }

    #[test]
    fn a_stuck_writer_never_blocks_a_request_lines_past_the_queue_are_dropped_and_counted() {
        let gate = Gate::default();
        let dropped = IntCounter::new("dropped", "dropped lines").expect("a counter");
        let log = AccessLog::to_writer(Box::new(gate.clone()), dropped.clone()).expect("a log");
        let sent = QUEUE + 64 * 1024;
        let started = Instant::now();
        for i in 0..sent {
            log.record(&exchange(&i.to_string()), &outcome(true));
        }
        assert!(started.elapsed() < Duration::from_secs(30), "recording must not wait for the writer");
        let dropped_lines = usize::try_from(dropped.get()).expect("a count");
        assert!(dropped_lines >= sent - QUEUE - (64 * 1024 / 100), "{dropped_lines} dropped of {sent}");
        {
            let (lock, opened) = &*gate.open;
            *lock.lock().expect("gate") = true;
            opened.notify_all();
        }
        drop(log);
        let written = gate.written.lock().expect("written").clone();
        let lines = String::from_utf8(written).expect("UTF-8");
        assert_eq!(lines.lines().count() + dropped_lines, sent, "every line is written or counted as dropped");
        for text in lines.lines() {
            serde_json::from_str::<serde_json::Value>(text).expect("each line is JSON");
        }
    }
}
