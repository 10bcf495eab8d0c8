//! TLS and CORS over real sockets: certificates made in the test (a test CA, a server certificate it signs for
//! `localhost` and 127.0.0.1, an expired one, a key of another pair); curl trusting the test CA gets `/ping`, a
//! prediction and HTTP/2, and a gRPC call over TLS; the load generator runs over TLS; plain HTTP to a TLS port is
//! answered 400 and closed; a silent client does not hold up others; a wrong key, a missing file, an expired
//! certificate and a `keystore` each stop the binary with the reason; CORS preflights and headers as configured;
//! SIGHUP and a change of the files reload the certificate (a half-written pair is not used); `ferroserve
//! healthcheck` over https trusts the CA given, or exactly the configured certificate, and nothing else.

mod support;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use ferroserve::tls::Tls;
use ferroserve::tls_config::TlsConfig;
use ferroserve_loadtest::{
    body::BodySet,
    client::{fetch, http_client_trusting, join_url, Protocol, Target},
    load::{Load, LoadSpec, Mode, Stop},
};
use hyper::Method;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The files of a test PKI, in a temporary folder.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate it signs (valid now), an expired one, and a key of another pair.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "ferroserve test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let server = CertificateParams::new(names.clone()).expect("params").signed_by(&key, &issuer).expect("sign");
        let mut old = CertificateParams::new(names).expect("params");
        old.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        old.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let expired = old.signed_by(&key, &issuer).expect("sign");
        let other = KeyPair::generate().expect("another key");
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).expect("write");
        write("ca.pem", ca_cert.pem());
        write("cert.pem", server.pem());
        write("key.pem", key.serialize_pem());
        write("expired.pem", expired.pem());
        write("other-key.pem", other.serialize_pem());
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

/// curl trusting the test CA: the status line's code, the HTTP version and the body.
async fn curl(pki: &Pki, args: &[&str]) -> (String, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert", &pki.arg("ca.pem"), "-w", "\n%{http_code} %{http_version}"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "curl {args:?}: {}{text}", String::from_utf8_lossy(&out.stderr));
    let (body, last) = text.rsplit_once('\n').expect("the -w line");
    let (code, version) = last.split_once(' ').expect("code and version");
    (code.to_string(), version.to_string(), body.to_string())
}

/// The signnet server with every API and the gRPC services over TLS, plus `extra` keys.
async fn tls_server(pki: &Pki, extra: &[(&str, &str)]) -> TestServer {
    let (key, cert) = (pki.arg("key.pem"), pki.arg("cert.pem"));
    let mut settings = vec![
        ("inference_address", "https://127.0.0.1:0"),
        ("management_address", "https://127.0.0.1:0"),
        ("metrics_address", "https://127.0.0.1:0"),
        ("enable_grpc_ssl", "true"),
        ("private_key_file", key.as_str()),
        ("certificate_file", cert.as_str()),
        ("default_workers_per_model", "1"),
        ("intra_op_threads", "1"),
    ];
    settings.extend_from_slice(extra);
    support::signnet_server_with(&settings).await
}

fn prediction_body() -> String {
    let reference = support::signnet_reference();
    serde_json::json!({ "landmarks": reference["landmarks"][0] }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_ping_a_prediction_http2_and_grpc_over_tls() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]).await;
    let url = |addr: std::net::SocketAddr, path: &str| format!("https://127.0.0.1:{}{path}", addr.port());
    let (code, version, body) = curl(&pki, &["--http1.1", &url(server.addr, "/ping")]).await;
    assert_eq!((code.as_str(), version.as_str()), ("200", "1.1"), "{body}");
    assert!(body.contains("Healthy"), "{body}");
    let (code, version, body) = curl(
        &pki,
        &[
            "--http2",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &prediction_body(),
            &url(server.addr, "/predictions/signnet"),
        ],
    )
    .await;
    assert_eq!((code.as_str(), version.as_str()), ("200", "2"), "ALPN picks h2: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON predictions");
    assert!(json.as_object().is_some_and(|o| !o.is_empty()) || json.as_array().is_some(), "{body}");
    let (code, _, body) = curl(&pki, &[&url(server.metrics, "/metrics")]).await;
    assert_eq!(code, "200", "the metrics API over TLS");
    assert!(body.contains("ferroserve_"), "{}", &body[..body.len().min(200)]);
    let (code, _, _) = curl(&pki, &[&url(server.management, "/models")]).await;
    assert_eq!(code, "200", "the management API over TLS");
    // KServe v2's ServerLive over gRPC on TLS: an empty request message, answered `live: true` (field 1 = 1).
    let frame = pki.path("empty.grpc");
    std::fs::write(&frame, [0u8, 0, 0, 0, 0]).expect("frame");
    let answer = pki.path("live.grpc");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--http2", "--cacert", &pki.arg("ca.pem")])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary"])
        .arg(format!("@{}", frame.display()))
        .arg("-o")
        .arg(&answer)
        .arg(url(server.grpc, "/inference.GRPCInferenceService/ServerLive"))
        .stdout(Stdio::null())
        .status()
        .await
        .expect("curl runs");
    assert!(out.success(), "gRPC over TLS");
    assert_eq!(std::fs::read(&answer).expect("answer"), [0u8, 0, 0, 0, 2, 0x08, 0x01]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_runs_over_tls() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]).await;
    let base = format!("https://localhost:{}", server.addr.port());
    let client = http_client_trusting(&pki.path("ca.pem")).expect("the test CA");
    let ping = fetch(&client, Method::GET, &join_url(&base, "/ping").expect("uri"), None).await.expect("ping");
    assert!(String::from_utf8_lossy(&ping).contains("Healthy"));
    let uri = join_url(&base, &Protocol::Torchserve.infer_path("signnet", None)).expect("uri");
    let target = Arc::new(Target::new(client, uri, BodySet::landmarks(30, 21, 4, 1), Duration::from_secs(10)));
    let spec =
        LoadSpec { mode: Mode::Closed { concurrency: 4 }, warmup: Duration::ZERO, duration: None, requests: Some(40) };
    let rec = Load::new(target, spec, Stop::default()).run().await;
    assert_eq!((rec.requests, rec.successes), (40, 40), "every request over TLS answered 200");
    let untrusted = ferroserve_loadtest::client::http_client();
    let refused = fetch(&untrusted, Method::GET, &join_url(&base, "/ping").expect("uri"), None).await;
    assert!(refused.is_err(), "a client that does not trust the test CA is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_port_is_answered_400_and_closed_and_a_silent_client_holds_up_no_one() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]).await;
    // A client that connects and says nothing: the next ones are served meanwhile.
    let _silent = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    plain.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer))
        .await
        .expect("closed, not left hanging")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 ") && answer.contains("https://"), "{answer}");
    let (code, _, _) = curl(&pki, &[&format!("https://127.0.0.1:{}/ping", server.addr.port())]).await;
    assert_eq!(code, "200", "TLS clients are still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_preflights_and_adds_its_headers_when_configured() {
    let pki = Pki::new();
    let server = tls_server(
        &pki,
        &[
            ("cors_allowed_origin", "https://app.example"),
            ("cors_allowed_methods", "GET, POST, OPTIONS"),
            ("cors_allowed_headers", "content-type, authorization"),
        ],
    )
    .await;
    let url = |addr: std::net::SocketAddr, path: &str| format!("https://127.0.0.1:{}{path}", addr.port());
    let headers = pki.path("headers.txt");
    let preflight =
        ["-X", "OPTIONS", "-H", "origin: https://app.example", "-H", "access-control-request-method: GET", "-D"];
    let models = url(server.management, "/models");
    let mut args: Vec<&str> = preflight.to_vec();
    let header_file = headers.display().to_string();
    args.extend([header_file.as_str(), models.as_str()]);
    let (code, _, _) = curl(&pki, &args).await;
    assert_eq!(code, "200", "a preflight is answered");
    let got = std::fs::read_to_string(&headers).expect("headers").to_ascii_lowercase();
    for line in [
        "access-control-allow-origin: https://app.example",
        "access-control-allow-methods: get, post, options",
        "access-control-allow-headers: content-type, authorization",
    ] {
        assert!(got.contains(line), "{line} in {got}");
    }
    let (code, _, _) = curl(&pki, &["-D", &header_file, &models]).await;
    assert_eq!(code, "200", "the request itself");
    let got = std::fs::read_to_string(&headers).expect("headers").to_ascii_lowercase();
    assert!(got.contains("access-control-allow-origin: https://app.example"), "on every response: {got}");
    let (code, _, _) = curl(&pki, &["-D", &header_file, &url(server.addr, "/predictions/nope")]).await;
    assert_eq!(code, "405", "GET on predictions");
    let got = std::fs::read_to_string(&headers).expect("headers").to_ascii_lowercase();
    assert!(got.contains("access-control-allow-methods: get, post, options"), "on errors too: {got}");
    let (code, _, body) = curl(&pki, &["-X", "OPTIONS", &url(server.addr, "/")]).await;
    assert_eq!(code, "200");
    assert!(body.contains("openapi"), "OPTIONS without Origin is still the API description");

    let off = tls_server(&pki, &[]).await;
    let (code, _, _) = curl(&pki, &["-D", &header_file, &url(off.addr, "/ping")]).await;
    assert_eq!(code, "200");
    let got = std::fs::read_to_string(&headers).expect("headers").to_ascii_lowercase();
    assert!(!got.contains("access-control-"), "no CORS headers unless configured: {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_asks_https_trusting_the_ca_or_exactly_the_configured_certificate() {
    use ferroserve::healthcheck::{check, HealthError, Trust};
    let (pki, other) = (Pki::new(), Pki::new());
    let server = tls_server(&pki, &[]).await;
    let port = server.addr.port();
    let time = Duration::from_secs(20);
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{port}/ping");
        for trust in [Trust::Pinned(pki.path("cert.pem")), Trust::Ca(pki.path("ca.pem"))] {
            let body = check(&url, &trust, time).await.unwrap_or_else(|e| panic!("{url} {trust:?}: {e}"));
            assert!(body.contains("Healthy"), "{body}");
        }
        for trust in [Trust::Pinned(other.path("cert.pem")), Trust::Ca(other.path("ca.pem"))] {
            let error = check(&url, &trust, time).await.expect_err("another certificate");
            assert!(matches!(error, HealthError::Tls { .. }), "{url} {trust:?}: {error}");
        }
    }
    let plain = check(&format!("http://127.0.0.1:{port}/ping"), &Trust::Nothing, time).await.expect_err("plain");
    let refused = matches!(plain, HealthError::Unhealthy { status: hyper::StatusCode::BAD_REQUEST, .. });
    assert!(refused || matches!(plain, HealthError::Http { .. }), "plain HTTP to the TLS port: {plain}");
}

/// The binary started with `lines` added to a config on port 0: its exit status and stderr, or `None` when it
/// is still running after 30 s (killed).
fn start_binary(lines: &str) -> (Option<i32>, String) {
    let mut config = tempfile::NamedTempFile::new().expect("config");
    write!(
        config,
        "inference_address=https://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\n\
         metrics_address=http://127.0.0.1:0\ngrpc_inference_port=0\ngrpc_management_port=0\n{lines}"
    )
    .expect("write");
    let keys = tempfile::tempdir().expect("key dir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("--ts-config")
        .arg(config.path())
        .current_dir(keys.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferroserve");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    (None, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn start_up_stops_naming_the_file_and_the_reason() {
    let pki = Pki::new();
    let files =
        |key: &str, cert: &str| format!("private_key_file={}\ncertificate_file={}\n", pki.arg(key), pki.arg(cert));
    let missing = pki.arg("missing.pem");
    for (lines, needles) in [
        (files("other-key.pem", "cert.pem"), vec!["does not match certificate_file", "other-key.pem"]),
        (files("missing.pem", "cert.pem"), vec!["cannot read private_key_file", missing.as_str()]),
        (files("key.pem", "expired.pem"), vec!["certificate_file", "expired.pem", "expired on"]),
        (files("cert.pem", "cert.pem"), vec!["private_key_file", "no private key"]),
        (files("key.pem", "key.pem"), vec!["certificate_file", "holds no certificate"]),
        (format!("certificate_file={}\n", pki.arg("cert.pem")), vec!["private_key_file is not set"]),
        (format!("keystore={}\n", pki.arg("ks.p12")), vec!["keystore", "PKCS#12", "is not supported"]),
    ] {
        let (status, stderr) = start_binary(&lines);
        assert_eq!(status, Some(1), "{lines}: exits 1\n{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{lines}: `{needle}` in\n{stderr}");
        }
    }
}

#[test]
fn rsa_pkcs1_and_ec_sec1_keys_are_read_and_a_key_of_another_certificate_is_refused() {
    let config = |key: &str, cert: &str| TlsConfig {
        https: [true, false, false],
        private_key_file: Some(fixture(key)),
        certificate_file: Some(fixture(cert)),
        ..TlsConfig::default()
    };
    for (key, cert) in [("rsa-pkcs1.key", "rsa.crt"), ("ec-sec1.key", "ec.crt")] {
        let tls = Tls::from_config(&config(key, cert)).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(tls.is_some_and(|t| t.reload().is_ok()), "{key} loads and reloads");
    }
    let error = Tls::from_config(&config("rsa-pkcs1.key", "ec.crt")).expect_err("mismatch").to_string();
    assert!(error.contains("does not match") && error.contains("rsa-pkcs1.key"), "{error}");
    assert!(Tls::from_config(&TlsConfig::default()).expect("off").is_none(), "no TLS unless asked for");
}

/// A folder with a copy of `pki`'s key and certificate (`key.pem`, `cert.pem`), the files a reload test rewrites,
/// and their paths.
fn live_copy(pki: &Pki) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let live = tempfile::tempdir().expect("dir");
    let (key, cert) = (live.path().join("key.pem"), live.path().join("cert.pem"));
    std::fs::copy(pki.path("key.pem"), &key).expect("copy");
    std::fs::copy(pki.path("cert.pem"), &cert).expect("copy");
    (live, key, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_the_files_reloads_the_certificate_and_a_half_written_pair_is_not_used() {
    let (first, second) = (Pki::new(), Pki::new());
    let (_live, key, cert) = live_copy(&first);
    let config = TlsConfig {
        https: [true, false, false],
        private_key_file: Some(key.clone()),
        certificate_file: Some(cert.clone()),
        ..TlsConfig::default()
    };
    let tls = Tls::from_config(&config).expect("TLS").expect("on");
    use rustls_pki_types::pem::PemObject as _;
    let pem = |pki: &Pki| {
        let text = std::fs::read(pki.path("cert.pem")).expect("read");
        rustls_pki_types::CertificateDer::from_pem_slice(&text).expect("a certificate")
    };
    assert_eq!(tls.certificate(), pem(&first));
    let watcher = tokio::spawn(tls.clone().reload_on_change(Duration::from_millis(20)));
    // Only the certificate rewritten: the pair does not match, the first certificate stays.
    std::fs::copy(second.path("cert.pem"), &cert).expect("copy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tls.certificate(), pem(&first), "a half-written pair is not used");
    std::fs::copy(second.path("key.pem"), &key).expect("copy");
    let mut reloaded = false;
    for _ in 0..250 {
        if tls.certificate() == pem(&second) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.abort();
    assert!(reloaded, "the new pair is served once both files are written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_for_new_connections() {
    use std::io::BufRead as _;
    let (first, second) = (Pki::new(), Pki::new());
    let (live, key, cert) = live_copy(&first);
    let mut config = tempfile::NamedTempFile::new().expect("config");
    write!(
        config,
        "inference_address=https://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\n\
         metrics_address=http://127.0.0.1:0\ngrpc_inference_port=0\ngrpc_management_port=0\n\
         private_key_file={}\ncertificate_file={}\n",
        key.display(),
        cert.display()
    )
    .expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferroserve"))
        .arg("--ts-config")
        .arg(config.path())
        .current_dir(live.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferroserve");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines().map_while(Result::ok);
    let port = lines
        .by_ref()
        .find_map(|line| line.split_once("inference API on https://127.0.0.1:").map(|(_, p)| p.trim().to_string()))
        .expect("the server says where it listens");
    std::thread::spawn(move || lines.for_each(drop));
    let ping = format!("https://localhost:{port}/ping");
    let (code, _, _) = curl(&first, &[&ping]).await;
    assert_eq!(code, "200", "the first certificate");
    // `ferroserve healthcheck` with the server's configuration trusts exactly its certificate_file.
    let healthcheck = || {
        let ping = format!("https://127.0.0.1:{port}/ping");
        std::process::Command::new(env!("CARGO_BIN_EXE_ferroserve"))
            .args(["healthcheck", "--url", &ping, "--ts-config"])
            .arg(config.path())
            .output()
            .expect("ferroserve healthcheck")
    };
    let out = healthcheck();
    assert!(out.status.success(), "healthcheck over TLS: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::copy(second.path("key.pem"), &key).expect("copy");
    std::fs::copy(second.path("cert.pem"), &cert).expect("copy");
    let hup = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().expect("kill");
    assert!(hup.success());
    let mut reloaded = false;
    for _ in 0..100 {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "5", "--cacert", &second.arg("ca.pem"), &ping])
            .status()
            .await
            .expect("curl");
        if out.success() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = healthcheck();
    assert!(out.status.success(), "healthcheck after the reload: {}", String::from_utf8_lossy(&out.stderr));
    let still_running = child.try_wait().expect("wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(reloaded, "after SIGHUP, new connections get the second certificate");
    assert!(still_running, "SIGHUP does not end the server");
}
