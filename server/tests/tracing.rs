//! What an operator sees with `RUST_LOG=debug`: each request's span names its id, API, method and path, and the
//! engine's span of its time in the queue sits inside it, with the queue time, inference time and batch size of
//! the batch it joined. The same id comes back in `x-request-id`.

mod support;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use ferroserve_engine::{backend::FakeMode, Registry};
use hyper::{Method, StatusCode};
use support::{add_fake, captured::Captured, landmark_body, options, TestServer};
use tracing_subscriber::fmt::format::FmtSpan;

/// The log of this test binary: the fmt subscriber `ferroserve` uses, at DEBUG, with a line when a span closes.
fn captured() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_span_events(FmtSpan::CLOSE)
            .with_ansi(false)
            .with_writer(log.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this binary");
        log
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_queue_time_is_logged_inside_its_request_span_under_its_id() {
    let log = captured();
    let registry = Arc::new(Registry::new());
    add_fake(&registry, FakeMode::Echo, options("traced", 1, 8, 1, Duration::ZERO));
    let server = TestServer::start(registry, 1 << 20).await;
    let body = landmark_body(&[0.5; 18]);

    let reply =
        server.send_with_header(Method::POST, "/predictions/traced", body.clone(), "x-request-id", "abc-123").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.headers["x-request-id"], "abc-123", "the client's own id comes back");
    // The request's span names its model and worker once the answer is in, which may be before or after the
    // engine's span closes.
    let request = "request{id=abc-123 api=\"inference\" method=POST path=/predictions/traced";
    let queued = line_with_all(log, &[request, "}:queued{"]).await;
    for field in ["model=\"traced\"", "version=\"1.0\"", "queue_us=", "inference_us=", "batch_size=1"] {
        assert!(queued.contains(field), "{field} missing in {queued}");
    }

    // Without an id, or with one that is not a plain token, the server makes a UUID and names the span with it.
    for header in [None, Some("two words")] {
        let reply = match header {
            Some(value) => server.send_with_header(Method::GET, "/ping", "", "x-request-id", value).await,
            None => server.send(Method::GET, "/ping", "").await,
        };
        let id = reply.headers["x-request-id"].to_str().expect("ASCII").to_string();
        let parsed = uuid_shape(&id);
        assert!(parsed, "a UUID, not {id:?}");
        line_with(log, &format!("request{{id={id} api=\"inference\" method=GET path=/ping}}")).await;
    }
}

/// The first line of the log that contains `needle`. A span's line is written when the span closes, which for
/// the engine's span is when the worker drops the request, after the answer may have reached the client: wait
/// for it (a bound only turns a line that never comes into a failure).
async fn line_with(log: &Captured, needle: &str) -> String {
    line_with_all(log, &[needle]).await
}

/// The first line of the log that contains every one of `needles`, waited for as [`line_with`].
async fn line_with_all(log: &Captured, needles: &[&str]) -> String {
    for _ in 0..1_000 {
        if let Some(line) = log.text().lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no line with {needles:?} in:\n{}", log.text());
}

/// Whether `id` looks like a hyphenated lower-case UUID.
fn uuid_shape(id: &str) -> bool {
    let groups: Vec<usize> = id.split('-').map(str::len).collect();
    groups == [8, 4, 4, 4, 12] && id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}
