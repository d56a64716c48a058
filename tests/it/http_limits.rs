//! The API's connection limits against slow and greedy clients: a cap on
//! connections, header and idle-body timeouts, and a bounded wait at
//! SIGTERM. The real binary on free ports; raw TCP clients.

use crate::common;

use std::time::{Duration, Instant};

use common::service::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The API's `host:port`.
fn address(s: &Service) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or `limit` passes),
/// answering what it sent.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_at_once_and_others_served_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "max_connections = 3");
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(address(&s)).await.expect("connect"));
    }
    let mut extra = TcpStream::connect(address(&s)).await.expect("connect");
    let started = Instant::now();
    assert!(
        until_closed(&mut extra, Duration::from_secs(2))
            .await
            .is_some(),
        "the fourth connection was queued, not refused"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(idle);
    // Until the server has seen the idle ones close, a probe may itself be
    // refused: count those, so the total is exact.
    let refused_probes = std::sync::atomic::AtomicUsize::new(0);
    common::wait_until(Duration::from_secs(5), || async {
        let served = s
            .http
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !served {
            refused_probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        served
    })
    .await;
    let metrics = s.metrics_text().await;
    let refused = 1 + refused_probes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        metrics.contains(&format!(
            "energyguard_http_connections_refused_total {refused}"
        )),
        "{refused} refused: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_headers_is_dropped_and_others_are_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    let mut slow = TcpStream::connect(address(&s)).await.expect("connect");
    let started = Instant::now();
    let trickle = async {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
            if slow.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    // Meanwhile others are served at once.
    let others = async {
        for _ in 0..5 {
            let (status, _) = s.get("/healthz").await;
            assert!(status.is_success());
        }
    };
    let ((), ()) = tokio::join!(
        async {
            let _ = tokio::time::timeout(Duration::from_secs(20), trickle).await;
        },
        others
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "dropped after {took:?}, not at the 10 s header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_is_dropped_and_sigterm_waits_at_most_the_grace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "shutdown_grace = \"2s\"");
    let mut stalled = TcpStream::connect(address(&s)).await.expect("connect");
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{{\"sensor_id\":"
    );
    stalled.write_all(head.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || s.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "SIGTERM waited {:?} for a stalled request",
        started.elapsed()
    );
    assert!(
        until_closed(&mut stalled, Duration::from_secs(5))
            .await
            .is_some()
    );

    // And without a stop, the idle body is dropped after 30 s.
    let s = Service::start_in(dir.path(), "");
    let mut stalled = TcpStream::connect(address(&s)).await.expect("connect");
    stalled.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let answer = until_closed(&mut stalled, Duration::from_secs(45))
        .await
        .expect("dropped within 45 s");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(29) && took < Duration::from_secs(40),
        "dropped after {took:?}: {answer}"
    );
    assert_eq!(
        s.get("/measurements").await.1,
        serde_json::json!([]),
        "nothing stored"
    );
}

/// A read-only token cannot make the service build millions of buckets:
/// `every` has bounds, and an answer of more than 100,000 buckets is
/// refused with the limit before they are made.
#[tokio::test]
async fn history_buckets_are_bounded_before_they_are_made() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    let t0 = 1_751_738_400;
    for (ts, value) in [(t0, 100.0), (t0 + 2 * 86_400, 100.0)] {
        let (status, _) = s
            .call(
                reqwest::Method::POST,
                "/ingest",
                Some(WRITE_TOKEN),
                Some(serde_json::json!({"sensor_id": "h", "timestamp": ts, "value": value})),
            )
            .await;
        assert!(status.is_success());
    }
    let (status, body) = s.get("/sensor/h/history?every=1ms&agg=mean").await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "every");
    let (status, body) = s
        .get("/sensor/h/history?every=1s&agg=energy&max_gap=3d")
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["limit"], 100_000);
    let (status, body) = s
        .get(&format!(
            "/sensor/h/history?every=1s&agg=mean&from={t0}&to={}",
            t0 + 200_000
        ))
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["limit"], 100_000);
    let (status, body) = s
        .get("/sensor/h/history?every=1h&agg=energy&max_gap=3d")
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(49));
}

/// The service's peak resident memory (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        / 1024
}

/// Four 16 MiB bodies of empty objects at once are each refused at their
/// first item, others are served meanwhile, and memory stays near the
/// bodies' own size (they cost 676 MB each when parsed whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_refused_at_their_first_bad_item() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    let before = peak_rss_mib(s.pid());
    let body = format!("[{}{{}}]", "{},".repeat(16 * 1024 * 1024 / 3 - 1));
    assert!(body.len() <= 16 * 1024 * 1024);
    let posts = (0..4).map(|_| {
        s.http
            .post(format!("{}/ingest", s.url))
            .bearer_auth(WRITE_TOKEN)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    });
    let (answers, health) = tokio::join!(futures::future::join_all(posts), s.get("/healthz"));
    assert!(health.0.is_success());
    for answer in answers {
        let answer = answer.expect("an answer");
        assert_eq!(answer.status(), reqwest::StatusCode::BAD_REQUEST);
        let error: serde_json::Value = answer.json().await.expect("JSON");
        assert_eq!(error["field"], "[0].value", "{error}");
    }
    let after = peak_rss_mib(s.pid());
    eprintln!("peak RSS {before} MiB before, {after} MiB after four hostile 16 MiB bodies");
    assert!(
        after < before + 300,
        "peak RSS grew from {before} to {after} MiB"
    );
    assert_eq!(s.get("/measurements").await.1, serde_json::json!([]));
}

/// Made-up methods and paths do not grow `/metrics`: unknown methods count
/// as `other`, unknown paths as `unmatched`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_methods_and_paths_leave_metrics_the_same_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    let hostile = |i: usize| {
        let method = reqwest::Method::from_bytes(format!("X{i}").as_bytes()).expect("a method");
        s.http
            .request(method, format!("{}/nothing/{i}", s.url))
            .send()
    };
    // One of each kind first, and a scrape, so the label sets they share
    // (and the scrape's own) exist.
    let _ = hostile(0).await;
    s.metrics_text().await;
    let before = s.metrics_text().await;
    for chunk in (1..10_000).collect::<Vec<_>>().chunks(100) {
        futures::future::join_all(chunk.iter().map(|&i| hostile(i))).await;
    }
    let after = s.metrics_text().await;
    // No series is added; counts change by a few digits.
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(series(&after), series(&before), "{after}");
    assert!(
        after.len() < before.len() + 200,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(
        after.contains("method=\"other\"") && after.contains("route=\"unmatched\""),
        "{after}"
    );
}
