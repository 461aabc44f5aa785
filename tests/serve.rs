//! `hcn serve` with real clients: the binary is started on loopback ports and talked to through
//! tonic's generated client (gRPC) and ureq (HTTP). Every answer is checked against the engine
//! run in-process on the same files (bit-identical on the CPU); every error code of SPEC §7;
//! a reload during traffic with no failed request; SIGTERM draining in-flight requests.

#![cfg(feature = "serve")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hcn_prerank::serve::pb::prerank_client::PrerankClient;
use hcn_prerank::serve::pb::{InfoRequest, ScoreRequest};
use hcn_prerank::{Engine, EngineOptions, Request, RunOptions};
use tonic::Code;

const WEIGHTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights");

struct Server {
    child: Child,
    grpc: String,
    http: String,
    admin: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hcn"))
            .args([
                "serve",
                "--model",
                &format!("{WEIGHTS}/hcn-public.safetensors"),
            ])
            .args(["--tokens", &format!("{WEIGHTS}/tokens.safetensors")])
            .args(["--candidates", &format!("{WEIGHTS}/candidates.safetensors")])
            .args([
                "--grpc",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(["--threads", "2"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "hcn serve: grpc A http B admin C"
        let w: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(w.len(), 8, "unexpected first line: {line:?}");
        Server {
            child,
            grpc: format!("http://{}", w[3]),
            http: format!("http://{}", w[5]),
            admin: format!("http://{}", w[7]),
        }
    }

    async fn client(&self) -> PrerankClient<tonic::transport::Channel> {
        PrerankClient::connect(self.grpc.clone())
            .await
            .unwrap()
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn engine() -> Engine {
    Engine::load(
        format!("{WEIGHTS}/hcn-public.safetensors"),
        format!("{WEIGHTS}/tokens.safetensors"),
        format!("{WEIGHTS}/candidates.safetensors"),
        EngineOptions::default(),
    )
    .unwrap()
}

fn lines() -> Vec<String> {
    std::fs::read_to_string(format!("{WEIGHTS}/requests.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

fn grpc_request(r: &Request, top_k: u32) -> ScoreRequest {
    ScoreRequest {
        long: r.user.long.clone(),
        short: r.user.short.clone(),
        fields: r.user.fields.iter().cloned().collect(),
        dense: r.user.dense.clone(),
        candidates: r.candidates.clone(),
        top_k,
        return_scores: true,
        return_interests: true,
    }
}

/// A gRPC answer's microseconds under `key` (the x-*-time-us metadata; panics if absent).
fn metadata_us<T>(r: &tonic::Response<T>, key: &str) -> u64 {
    r.metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in the metadata"))
}

fn http_post(url: &str, body: &str) -> (u16, String) {
    let (status, text, _) = http_post_headers(url, body);
    (status, text)
}

/// [`http_post`], with the answer's headers.
fn http_post_headers(url: &str, body: &str) -> (u16, String, ureq::http::HeaderMap) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (
        status,
        resp.body_mut().read_to_string().unwrap_or_default(),
        headers,
    )
}

/// Announces a body of `len` bytes (`Content-Length`) and sends only its first bytes, then
/// reads the answer: a server that refuses an over-size body at once answers before the body is
/// sent (a client that pushes the whole body first may hit a closed socket instead of reading
/// the 413).
fn http_post_oversize(url: &str, len: usize) -> u16 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").split('/').next().unwrap();
    let path = &url[url.find(addr).unwrap() + addr.len()..];
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{\"candidates\": [1,"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The status line is all we need.
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while !answer.contains(&b'\n') {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn http_get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(url).call().unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

/// `hcn_requests_total` counted one gRPC request under `grpc_code` and one HTTP request under
/// `http_code`.
fn assert_counted_once(metrics: &str, grpc_code: &str, http_code: &str) {
    for (protocol, code) in [("grpc", grpc_code), ("http", http_code)] {
        let line = format!("hcn_requests_total{{protocol=\"{protocol}\",code=\"{code}\"}} 1");
        assert!(metrics.contains(&line), "no {line:?} in {metrics}");
    }
}

/// The head of a `POST /v1/score` of `len` bytes, for a client that sends it by hand (`extra`:
/// more header lines, each ending in CRLF).
fn score_head(addr: &str, len: usize, extra: &str) -> String {
    format!(
        "POST /v1/score HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {len}\r\n\r\n"
    )
}

/// Waits until the server has started executing a batch.
async fn wait_for_a_batch(server: &Server) {
    let url = format!("{}/metrics", server.http);
    let started = std::time::Instant::now();
    loop {
        let u = url.clone();
        let (_, m) = tokio::task::spawn_blocking(move || http_get(&u))
            .await
            .unwrap();
        if m.lines()
            .any(|l| l.starts_with("hcn_batch_requests_count") && !l.ends_with(" 0"))
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no batch started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// gRPC and HTTP answers equal the engine's, bit for bit; the HTTP body equals `hcn score`'s line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_the_engine_bit_for_bit_on_both_protocols() {
    let server = Server::start(&[]);
    let engine = engine();
    let cfg = engine.model().config.clone();
    let mut client = server.client().await;
    for line in lines() {
        let req = hcn_prerank::json::parse_request(&line, &cfg).unwrap();
        let want = engine.run_with(&req, &RunOptions::top_k(Some(5))).unwrap();
        let got = client.score(grpc_request(&req, 5)).await.unwrap();
        for key in [
            "x-receive-time-us",
            "x-queue-time-us",
            "x-inference-time-us",
        ] {
            let v = got
                .metadata()
                .get(key)
                .map(|v| v.to_str().unwrap().parse::<u64>());
            assert!(matches!(v, Some(Ok(_))), "{key}: {v:?}");
        }
        let got = got.into_inner();
        assert_eq!(got.model_version, engine.version());
        let bits: Vec<u32> = got.scores.iter().map(|s| s.to_bits()).collect();
        let want_bits: Vec<u32> = want
            .scores
            .iter()
            .map(|s| s.unwrap_or(f32::NAN).to_bits())
            .collect();
        assert_eq!(bits, want_bits);
        let top: Vec<(u64, u32, u32)> = got
            .top_k
            .iter()
            .map(|t| (t.id, t.score.to_bits(), t.position))
            .collect();
        let want_top: Vec<(u64, u32, u32)> = want
            .top_k
            .iter()
            .map(|t| (t.id, t.score.to_bits(), t.position as u32))
            .collect();
        assert_eq!(top, want_top);
        assert_eq!(got.interests, want.interests.as_ref().unwrap().values);
        assert_eq!(got.missing_candidates, want.missing_candidates);

        // HTTP: the §4 response line, as `hcn score --top-k 5` writes it.
        let mut body: serde_json::Value = serde_json::from_str(&line).unwrap();
        body["top_k"] = 5.into();
        let (status, text, headers) =
            http_post_headers(&format!("{}/v1/score", server.http), &body.to_string());
        assert_eq!(status, 200, "{text}");
        assert_eq!(text, hcn_prerank::json::response_json(&want, false, true));
        for key in [
            "x-receive-time-us",
            "x-queue-time-us",
            "x-inference-time-us",
        ] {
            let v = headers.get(key).map(|v| v.to_str().unwrap().parse::<u64>());
            assert!(matches!(v, Some(Ok(_))), "{key}: {v:?}");
        }
    }
    let info = client.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.model_version, engine.version());
    assert_eq!(info.candidate_rows, engine.candidates().len() as u64);
}

/// Every error code of SPEC §7, on both protocols; the server keeps serving after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_the_spec_code() {
    let server = Server::start(&["--max-body-bytes", "2000000"]);
    let cfg = engine().model().config.clone();
    let good = hcn_prerank::json::parse_request(&lines()[0], &cfg).unwrap();
    let mut client = server.client().await;

    let mut bad = grpc_request(&good, 3);
    bad.fields.insert("age".into(), 1_000_000);
    let e = client.score(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("fields.age"), "{e}");

    let mut bad = grpc_request(&good, 3);
    bad.dense.pop();
    assert_eq!(
        client.score(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // A message over --max-body-bytes (1 byte per id here).
    let mut many = grpc_request(&good, 3);
    many.candidates = vec![1; 2_100_000];
    let e = client.score(many).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");

    // HTTP: bad JSON, a wrong type, an id out of range, an unknown field, a huge body.
    let url = format!("{}/v1/score", server.http);
    for body in [
        "{not json".to_string(),
        r#"{"candidates": "many"}"#.to_string(),
        lines()[0].replacen("\"candidates\": [", "\"candidates\": [-1, ", 1),
        lines()[0].replacen("\"age\"", "\"shoe_size\"", 1),
    ] {
        let (status, text) = http_post(&url, &body);
        assert_eq!(status, 400, "{body:.80}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
    }
    assert_eq!(http_post_oversize(&url, 2_200_000), 413);

    // Still serving, on both protocols.
    assert!(client.score(grpc_request(&good, 3)).await.is_ok());
    let mut body: serde_json::Value = serde_json::from_str(&lines()[0]).unwrap();
    body["top_k"] = 3.into();
    assert_eq!(http_post(&url, &body.to_string()).0, 200);
}

/// On the CPU a lone request does not wait for a batch to fill (the default delay is the GPU's):
/// the least queue time of 50 requests, read from the gRPC trailers, is below the 500 µs every
/// request used to wait (a hard floor then). An explicit `--max-queue-delay-us` is honoured on
/// the CPU too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_on_the_cpu_does_not_wait_for_a_batch() {
    let cfg = engine().model().config.clone();
    let good = hcn_prerank::json::parse_request(&lines()[0], &cfg).unwrap();
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let mut least = u64::MAX;
    for _ in 0..50 {
        let r = client.score(grpc_request(&good, 3)).await.unwrap();
        least = least.min(metadata_us(&r, "x-queue-time-us"));
    }
    assert!(least < 500, "least queue time {least} µs");
    drop(server);
    let server = Server::start(&["--max-queue-delay-us", "30000"]);
    let mut client = server.client().await;
    let r = client.score(grpc_request(&good, 3)).await.unwrap();
    let queued = metadata_us(&r, "x-queue-time-us");
    assert!(queued >= 30_000, "{queued}");
}

/// A deadline that passes while the request is queued: answered DEADLINE_EXCEEDED (HTTP 504)
/// without being computed. The server waits 200 ms for a batch to fill, so a lone request with
/// a 20 ms deadline is always expired when its batch forms. (A gRPC client enforces its deadline
/// itself and gives up first, so the server's DEADLINE_EXCEEDED is read from its metrics.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_past_in_the_queue_is_not_computed() {
    let server = Server::start(&["--max-queue-delay-us", "200000"]);
    let cfg = engine().model().config.clone();
    let good = hcn_prerank::json::parse_request(&lines()[0], &cfg).unwrap();
    let mut client = server.client().await;
    let mut late = tonic::Request::new(grpc_request(&good, 3));
    late.set_timeout(Duration::from_millis(20));
    let Err(e) = client.score(late).await else {
        panic!("answered past its deadline");
    };
    assert!(
        matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{:?}",
        e.code()
    );
    let url = format!("{}/v1/score", server.http);
    let line = lines()[0].clone();
    let (status, text) = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .post(&url)
            .header("x-timeout-ms", "20")
            .send(line.as_str())
            .unwrap();
        (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 504, "{text}");
    let (_, metrics) = http_get(&format!("{}/metrics", server.http));
    assert_counted_once(&metrics, "DeadlineExceeded", "504");
    // Neither was computed: no batch ran, no candidate was scored.
    assert!(metrics.contains("hcn_batch_requests_count 0"), "{metrics}");
    assert!(metrics.contains("hcn_candidates_total 0"), "{metrics}");
}

/// A client's deadline counts from its request's headers: a body that arrives after the deadline
/// is answered DEADLINE_EXCEEDED / 504 and not computed, on both protocols, while the same slow
/// body under a longer deadline is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_counts_from_the_headers_not_the_body() {
    let server = Server::start(&[]);
    let cfg = engine().model().config.clone();
    let good = hcn_prerank::json::parse_request(&lines()[0], &cfg).unwrap();
    let slow = Duration::from_millis(400);

    // gRPC: the headers (with `grpc-timeout`) go at once, the message `slow` later, over a
    // plain HTTP/2 connection (tonic's client would start its own timer from that header).
    let grpc_call = |timeout: &'static str| {
        let msg = prost::Message::encode_to_vec(&grpc_request(&good, 3));
        let addr = server.grpc.trim_start_matches("http://").to_string();
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let (client, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            let mut client = client.ready().await.unwrap();
            let req =
                tonic::codegen::http::Request::post(format!("http://{addr}/hcn.v1.Prerank/Score"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .header("grpc-timeout", timeout)
                    .body(())
                    .unwrap();
            let (resp, mut send) = client.send_request(req, false).unwrap();
            tokio::time::sleep(slow).await;
            let mut frame = vec![0u8];
            frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            frame.extend_from_slice(&msg);
            send.send_data(frame.into(), true).unwrap();
            let (parts, mut body) = resp.await.unwrap().into_parts();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            // A trailers-only answer carries the status in its headers.
            let trailers = body.trailers().await.unwrap().unwrap_or_default();
            let status = parts
                .headers
                .get("grpc-status")
                .or(trailers.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_string());
            Code::from_i32(status.expect("a grpc-status").parse().unwrap())
        }
    };
    assert_eq!(grpc_call("150m").await, Code::DeadlineExceeded);
    assert_eq!(grpc_call("20S").await, Code::Ok);

    // HTTP: the same over a raw connection, the body written `slow` after the headers.
    let http_call = |timeout_ms: u64| {
        use std::io::{Read, Write};
        let addr = server.http.trim_start_matches("http://").to_string();
        let body = lines()[0].clone();
        move || {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            let extra = format!("Connection: close\r\nx-timeout-ms: {timeout_ms}\r\n");
            let head = score_head(&addr, body.len(), &extra);
            s.write_all(head.as_bytes()).unwrap();
            std::thread::sleep(slow);
            s.write_all(body.as_bytes()).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        }
    };
    let late = tokio::task::spawn_blocking(http_call(150)).await.unwrap();
    assert!(late.starts_with("HTTP/1.1 504"), "{late}");
    let in_time = tokio::task::spawn_blocking(http_call(20_000))
        .await
        .unwrap();
    assert!(in_time.starts_with("HTTP/1.1 200"), "{in_time}");

    // Only the two in time were computed.
    let (_, metrics) = http_get(&format!("{}/metrics", server.http));
    assert_counted_once(&metrics, "DeadlineExceeded", "504");
    assert!(metrics.contains("hcn_batch_requests_count 2"), "{metrics}");
}

/// A request whose client went away while it was queued is never computed, on both protocols
/// (a gRPC call dropped by its client: an HTTP/2 reset; an HTTP connection closed), and is
/// counted as such; the server goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_went_away_is_not_computed() {
    // Every request waits 2 s in the queue for a batch to fill; the clients leave before that,
    // well after their requests arrived.
    let server = Server::start(&["--max-queue-delay-us", "2000000"]);
    let cfg = engine().model().config.clone();
    let good = hcn_prerank::json::parse_request(&lines()[0], &cfg).unwrap();

    // gRPC: the call is sent, then its client drops it.
    let mut client = server.client().await;
    let req = grpc_request(&good, 3);
    let call = tokio::spawn(async move { client.score(req).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    call.abort();
    // HTTP: the whole request is sent, then the connection is closed.
    let addr = server.http.trim_start_matches("http://").to_string();
    let body = lines()[0].clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let head = score_head(&addr, body.len(), "");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    })
    .await
    .unwrap();

    // The batch comes due with nobody waiting: nothing is computed, both are counted.
    let url = format!("{}/metrics", server.http);
    let started = std::time::Instant::now();
    let metrics = loop {
        let u = url.clone();
        let (_, m) = tokio::task::spawn_blocking(move || http_get(&u))
            .await
            .unwrap();
        if m.contains("code=\"Cancelled\"} 1") && m.contains("code=\"499\"} 1") {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_counted_once(&metrics, "Cancelled", "499");
    assert!(metrics.contains("hcn_batch_requests_count 0"), "{metrics}");
    assert!(metrics.contains("hcn_candidates_total 0"), "{metrics}");

    // And the next request is answered.
    let mut client = server.client().await;
    let resp = client.score(grpc_request(&good, 3)).await.unwrap();
    assert_eq!(resp.into_inner().top_k.len(), 3);
}

/// On the CPU a batch runs request by request and each request is answered when it is done: a
/// small request batched with a large one does not wait for it (both in one batch, read from the
/// metrics; each one's inference time from its trailers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_request_batched_with_a_large_one_does_not_wait_for_it() {
    let server = Server::start(&["--max-queue-delay-us", "300000"]);
    let cfg = engine().model().config.clone();
    let small = hcn_prerank::json::parse_request(&lines()[0], &cfg).unwrap();
    let mut large = small.clone();
    large.candidates = small.candidates.repeat(1000);
    let (mut c1, mut c2) = (server.client().await, server.client().await);
    let (s, l) = (grpc_request(&small, 3), grpc_request(&large, 3));
    let small_call = tokio::spawn(async move { c1.score(s).await });
    // The small one first; the large one joins its batch (the queue waits 300 ms for more).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let large_call = tokio::spawn(async move { c2.score(l).await });
    let small_resp = small_call.await.unwrap().unwrap();
    let large_resp = large_call.await.unwrap().unwrap();
    let (_, metrics) = http_get(&format!("{}/metrics", server.http));
    assert!(metrics.contains("hcn_batch_requests_count 1"), "{metrics}");
    assert!(metrics.contains("hcn_batch_requests_sum 2"), "{metrics}");
    let (a, b) = (
        metadata_us(&small_resp, "x-inference-time-us"),
        metadata_us(&large_resp, "x-inference-time-us"),
    );
    // Had the small one waited for the large one, a ≥ b; the margin leaves room for a stall of
    // the small one on a loaded host (4 · a < b with half as many candidates failed once that way).
    assert!(2 * a < b, "small {a} µs, large {b} µs");
}

/// Health, readiness, metrics with SPEC §7's names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let server = Server::start(&[]);
    assert_eq!(http_get(&format!("{}/health/live", server.http)).0, 200);
    assert_eq!(http_get(&format!("{}/health/ready", server.http)).0, 200);
    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "hcn.v1.Prerank".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut client = server.client().await;
    let cfg = engine().model().config.clone();
    let good = hcn_prerank::json::parse_request(&lines()[0], &cfg).unwrap();
    client.score(grpc_request(&good, 3)).await.unwrap();
    let (status, text) = http_get(&format!("{}/metrics", server.http));
    assert_eq!(status, 200);
    for name in [
        "hcn_request_duration_seconds",
        "hcn_queue_duration_seconds",
        "hcn_inference_duration_seconds",
        "hcn_batch_requests",
        "hcn_batch_candidates",
        "hcn_requests_total",
        "hcn_candidates_total",
        "hcn_missing_candidates_total",
        "hcn_skipped_behaviors_total",
        "hcn_queue_depth",
        "hcn_model_info",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(text.contains("protocol=\"grpc\",code=\"Ok\""), "{text}");
}

/// Reloads (admin route and SIGHUP) while clients send requests: no request fails, each is
/// answered by one model; a reload of missing files fails, changes nothing, and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_during_traffic_fails_no_request() {
    let server = Server::start(&[]);
    let cfg = engine().model().config.clone();
    let reqs: Vec<Request> = lines()
        .iter()
        .map(|l| hcn_prerank::json::parse_request(l, &cfg).unwrap())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for t in 0..3 {
        let mut client = server.client().await;
        let reqs = reqs.clone();
        let stop = stop.clone();
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = &reqs[(n + t) % reqs.len()];
                let resp = client
                    .score(grpc_request(r, 10))
                    .await
                    .expect("no failed request");
                assert_eq!(resp.into_inner().top_k.len(), 10);
                n += 1;
            }
            n
        }));
    }
    let admin = format!("{}/admin/reload", server.admin);
    for _ in 0..3 {
        let (status, text) = tokio::task::spawn_blocking({
            let admin = admin.clone();
            move || http_post(&admin, "")
        })
        .await
        .unwrap();
        assert_eq!(status, 200, "{text}");
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, text) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || http_post(&admin, r#"{"model": "/nonexistent/model.safetensors"}"#)
    })
    .await
    .unwrap();
    assert_eq!(status, 422, "{text}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for s in senders {
        total += s.await.unwrap();
    }
    assert!(total > 0);
    let (_, metrics) = http_get(&format!("{}/metrics", server.http));
    assert!(
        metrics.contains("hcn_reloads_total{result=\"success\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hcn_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
}

/// SIGTERM: requests already accepted are answered, then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let mut server = Server::start(&[]);
    let cfg = engine().model().config.clone();
    let good = hcn_prerank::json::parse_request(&lines()[0], &cfg).unwrap();
    // Large requests (1M candidates each, tens of ms) so some are in flight at the signal.
    let mut big = grpc_request(&good, 100);
    big.candidates = good
        .candidates
        .iter()
        .cycle()
        .take(1 << 20)
        .copied()
        .collect();
    big.return_scores = false;
    big.return_interests = false;
    let mut inflight = Vec::new();
    for _ in 0..4 {
        let mut client = server.client().await;
        let big = big.clone();
        inflight.push(tokio::spawn(async move { client.score(big).await }));
    }
    // Signal once the first batch is executing (the server has accepted at least one).
    wait_for_a_batch(&server).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = server.terminate();
        drop(server);
        s
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
    let mut answered = 0;
    for f in inflight {
        // Accepted before the signal: answered in full. A request whose stream the server had
        // not yet taken when it stopped accepting is refused (GOAWAY: never processed, safe to
        // retry), never cut off mid-answer.
        match f.await.unwrap() {
            Ok(resp) => {
                assert_eq!(resp.into_inner().top_k.len(), 100);
                answered += 1;
            }
            Err(e) => {
                let transport = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<tonic::transport::Error>());
                assert!(e.code() == Code::Unavailable || transport, "{e:?}");
            }
        }
    }
    assert!(answered >= 1, "no request was in flight at the signal");
}

/// Sends raw bytes as a `Score` message (what a broken client could put on the wire).
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = prost::bytes::Buf::remaining(src);
        let mut v = vec![0; n];
        prost::bytes::Buf::copy_to_slice(src, &mut v);
        Ok(Some(v))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 1,000 malformed requests over both protocols (bad JSON, bad protobuf bytes, wrong types,
/// unknown fields, ids and field values out of range, huge bodies) interleaved with good ones:
/// every bad one gets its code, every good one its exact answer, the server stays up and its
/// memory flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_malformed_requests_interleaved_with_good_ones() {
    let server = Server::start(&["--max-body-bytes", "1000000"]);
    let engine = engine();
    let cfg = engine.model().config.clone();
    let good_lines = lines();
    let goods: Vec<Request> = good_lines
        .iter()
        .map(|l| hcn_prerank::json::parse_request(l, &cfg).unwrap())
        .collect();
    let wants: Vec<hcn_prerank::Response> = goods
        .iter()
        .map(|r| engine.run_with(r, &RunOptions::top_k(Some(5))).unwrap())
        .collect();
    let mut client = server.client().await;
    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    let url = format!("{}/v1/score", server.http);
    let pid = server.child.id();
    let mut rss_after_warmup = 0;
    let mut rng = hcn_prerank::rng::SplitMix64::new(11);
    for i in 0..1000usize {
        if i == 100 {
            rss_after_warmup = rss_kib(pid);
        }
        let g = i % goods.len();
        match i % 10 {
            // Good, both protocols: exact answers.
            0 => {
                let got = client
                    .score(grpc_request(&goods[g], 5))
                    .await
                    .unwrap()
                    .into_inner();
                let top: Vec<u64> = got.top_k.iter().map(|t| t.id).collect();
                let want: Vec<u64> = wants[g].top_k.iter().map(|t| t.id).collect();
                assert_eq!(top, want, "#{i}");
            }
            1 => {
                let mut body: serde_json::Value = serde_json::from_str(&good_lines[g]).unwrap();
                body["top_k"] = 5.into();
                let (status, text) = http_post(&url, &body.to_string());
                assert_eq!(status, 200, "#{i}: {text}");
                assert_eq!(
                    text,
                    hcn_prerank::json::response_json(&wants[g], false, true),
                    "#{i}"
                );
            }
            // Bad protobuf bytes.
            2 => {
                let len = 1 + rng.below(64);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8 | 0x80).collect();
                raw.ready().await.unwrap();
                let e = raw
                    .unary(
                        tonic::Request::new(bytes),
                        "/hcn.v1.Prerank/Score".parse().unwrap(),
                        RawCodec,
                    )
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), Code::InvalidArgument, "#{i}: {e:?}");
            }
            // gRPC: unknown profile field, out-of-vocabulary id, wrong dense length.
            3 => {
                let mut r = grpc_request(&goods[g], 5);
                match rng.below(3) {
                    0 => {
                        r.fields.insert(format!("nope{i}"), 1);
                    }
                    1 => {
                        r.fields.insert("city".into(), u64::MAX - i as u64);
                    }
                    _ => {
                        r.dense.push(1.0);
                    }
                }
                let e = client.score(r).await.unwrap_err();
                assert_eq!(e.code(), Code::InvalidArgument, "#{i}: {e:?}");
            }
            // HTTP: broken JSON (a good line cut short), wrong types, negative / fractional /
            // huge ids, an unknown profile field.
            4..=8 => {
                let line = &good_lines[g];
                let body = match i % 10 {
                    4 => line[..1 + rng.below(line.len() - 2)].to_string(),
                    5 => line.replacen("\"candidates\": [", "\"candidates\": [\"x\", ", 1),
                    6 => line.replacen("\"candidates\": [", &format!("\"candidates\": [-{i}, "), 1),
                    7 => line.replacen("\"long\": [", "\"long\": [1.5, ", 1),
                    _ => line.replacen(
                        "\"candidates\": [",
                        "\"candidates\": [18446744073709551616, ",
                        1,
                    ),
                };
                let (status, text) = http_post(&url, &body);
                assert_eq!(status, 400, "#{i}: {body:.60} → {text}");
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "#{i}");
            }
            // A body over the limit.
            _ => assert_eq!(http_post_oversize(&url, 1_200_000), 413, "#{i}"),
        }
    }
    // Still the same process, still answering, memory flat after the warm-up.
    assert!(server_alive(&server));
    let rss = rss_kib(pid);
    assert!(
        rss < rss_after_warmup + 64 * 1024,
        "RSS grew from {rss_after_warmup} KiB to {rss} KiB"
    );
    assert!(client.score(grpc_request(&goods[0], 5)).await.is_ok());
}

fn server_alive(server: &Server) -> bool {
    std::path::Path::new(&format!("/proc/{}", server.child.id())).exists()
}
