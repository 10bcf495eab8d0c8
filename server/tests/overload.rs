//! Overload and slow clients over real HTTP: the in-flight limit answers 429 at once and the connection limit
//! 503, both with `Retry-After` and counted; a client deadline (`x-request-timeout-ms`) drops a queued request
//! before it runs and cuts a batch that runs too long with a 504 while the worker recovers; a body that does not
//! arrive in time is a 408; absurd nesting is a 400.

mod support;

use std::{
    io::{Read, Write},
    sync::Arc,
    time::Duration,
};

use ferroserve::{AppState, Config};
use ferroserve_engine::backend::{FakeMode, FakeStep};
use hyper::{Method, StatusCode};
use support::{add_fake_metered, landmark_body, metric, metrics_for, options, test_config, TestServer};

const MB: usize = 1 << 20;

async fn server_with(config: Config) -> Arc<TestServer> {
    let metrics = metrics_for(&config);
    let state = AppState::new(Arc::new(ferroserve_engine::Registry::new()), config, metrics);
    Arc::new(TestServer::start_state(Arc::new(state)).await)
}

/// A server with one echo fake `m`: 1 worker, a queue of 10, batches of 1.
async fn fake_server(config: Config) -> (Arc<TestServer>, ferroserve_engine::backend::FakeBackend) {
    let server = server_with(config).await;
    let state = &server.state;
    let fake = add_fake_metered(
        &state.registry,
        &state.metrics.engine,
        FakeMode::Echo,
        options("m", 1, 10, 1, Duration::ZERO),
    );
    (server, fake)
}

fn body() -> String {
    landmark_body(&[0.5; 18])
}

fn spawn_predict(server: &Arc<TestServer>, timeout_ms: Option<u64>) -> tokio::task::JoinHandle<support::Reply> {
    let server = Arc::clone(server);
    tokio::spawn(async move {
        match timeout_ms {
            None => server.predict("m", body()).await,
            Some(ms) => {
                server
                    .send_with_header(Method::POST, "/predictions/m", body(), "x-request-timeout-ms", &ms.to_string())
                    .await
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_answers_429_at_once() {
    let (server, fake) = fake_server(Config { max_inflight_requests: 2, ..test_config(MB) }).await;
    fake.gate.close();
    let held = [spawn_predict(&server, None), spawn_predict(&server, None)];
    let model = server.state.registry.get("m", None).expect("model");
    while model.stats().accepted < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let refused = server.predict("m", body()).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json["type"], "TooManyRequestsException");
    assert_eq!(refused.headers["retry-after"], "1");
    let ping = server.send(Method::GET, "/ping", "").await;
    assert_eq!(ping.status, StatusCode::OK, "health checks are not limited");
    fake.gate.open();
    for h in held {
        assert_eq!(h.await.expect("held").status, StatusCode::OK);
    }
    assert_eq!(server.predict("m", body()).await.status, StatusCode::OK);
    let text = server.scrape().await;
    let labels = [("api", "inference"), ("reason", "too_many_requests")];
    assert_eq!(metric(&text, "ferroserve_admission_refused_total", &labels), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_answers_503_and_closes() {
    let (server, _fake) = fake_server(Config { max_connections: 1, ..test_config(MB) }).await;
    let holder = std::net::TcpStream::connect(server.addr).expect("first connection");
    // Make sure the server has accepted the first connection before the second arrives.
    let mut first = holder.try_clone().expect("clone");
    first.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n").expect("ping");
    let mut seen = [0u8; 12];
    first.read_exact(&mut seen).expect("ping answer");
    let refused = tokio::task::spawn_blocking(move || {
        let mut second = std::net::TcpStream::connect(server_addr_of(&first)).expect("second connection");
        let mut answer = String::new();
        second.read_to_string(&mut answer).expect("answer, then close");
        answer
    });
    let answer = refused.await.expect("second");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1") && answer.contains("ServiceUnavailableException"), "{answer}");
    drop(holder);
    let mut served = false;
    for _ in 0..200 {
        // A raw exchange: a connection refused with a 503 is expected until the permit comes back.
        let ping = raw_exchange(server.addr, b"GET /ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        if ping.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(served, "the permit comes back when the first connection closes");
    let text = server.scrape().await;
    let labels = [("api", "inference"), ("reason", "too_many_connections")];
    assert!(metric(&text, "ferroserve_admission_refused_total", &labels).expect("counted") >= 1.0);
}

fn server_addr_of(stream: &std::net::TcpStream) -> std::net::SocketAddr {
    stream.peer_addr().expect("peer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_deadline_drops_a_queued_request_before_it_runs() {
    let (server, fake) = fake_server(test_config(MB)).await;
    fake.gate.close();
    let held = spawn_predict(&server, None);
    let gate = fake.gate.clone();
    tokio::task::spawn_blocking(move || gate.wait_arrived(1)).await.expect("worker busy");
    let late = server.send_with_header(Method::POST, "/predictions/m", body(), "x-request-timeout-ms", "50").await;
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT, "{}", late.json);
    assert_eq!(late.json["type"], "RequestTimeoutException");
    fake.gate.open();
    assert_eq!(held.await.expect("held").status, StatusCode::OK);
    assert_eq!(server.predict("m", body()).await.status, StatusCode::OK);
    assert_eq!(fake.batch_sizes(), vec![1, 1], "the timed-out request never ran");
    let bad = server.send_with_header(Method::POST, "/predictions/m", body(), "x-request-timeout-ms", "soon").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_the_deadline_fails_only_its_request_and_the_worker_recovers() {
    let (server, fake) = fake_server(test_config(MB)).await;
    fake.script.push(FakeStep::Sleep(Duration::from_millis(300)));
    let slow = server.send_with_header(Method::POST, "/predictions/m", body(), "x-request-timeout-ms", "50").await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    let next = server.predict("m", body()).await;
    assert_eq!(next.status, StatusCode::OK, "the worker finished the slow batch and goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_a_408() {
    let (server, _fake) = fake_server(Config { request_read_timeout: Duration::from_secs(1), ..test_config(MB) }).await;
    let answer =
        raw_exchange(server.addr, b"POST /predictions/m HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"landm")
            .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("RequestTimeoutException"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_nesting_is_a_400() {
    let (server, _fake) = fake_server(test_config(MB)).await;
    let deep = format!("{{\"landmarks\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let reply = server.predict("m", deep).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.json);
    let v2 = format!("{{\"inputs\": [{{\"name\": \"landmarks\", \"datatype\": \"FP32\", \"shape\": [1, 2, 3, 3], \"data\": {}{}}}]}}", "[".repeat(100_000), "]".repeat(100_000));
    let reply = server.send(Method::POST, "/v2/models/m/infer", v2).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.json);
    assert_eq!(server.predict("m", body()).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_is_answered_400_and_the_server_goes_on() {
    let (server, _fake) = fake_server(test_config(MB)).await;
    let answer = raw_exchange(server.addr, b"GET / HTTP/1.1\r\nbad header without colon\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(server.predict("m", body()).await.status, StatusCode::OK);
}

/// Writes `bytes` on a new connection and reads until the server closes it (20 s at most).
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &'static [u8]) -> String {
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.write_all(bytes).expect("write");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .expect("raw client")
}
