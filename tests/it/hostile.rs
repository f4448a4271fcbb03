//! Issue 5, hostile input: what a client that does not play by the rules
//! gets, on raw sockets. Each attack must get a clear 4xx (or a closed
//! connection where HTTP has no answer) and leave the relay serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use relay_tests::harness::RelayProcess;

use crate::support::Api;

/// Short header deadline and few connections, so the limits show in a test.
const LIMITS: &str = "[server]\nheader_read_timeout_s = 2\nmax_connections = 16\n";

fn connect(relay: &RelayProcess) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", relay.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Sends `request` as is and returns everything the relay answers until it
/// closes the connection (or 10 s pass).
fn exchange(relay: &RelayProcess, request: &[u8]) -> String {
    let mut stream = connect(relay);
    stream.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn still_serving(relay: &RelayProcess) {
    let api = Api::new(relay);
    let r = api.get("/api/devices?limit=1").await;
    assert_eq!(r.status, 200, "the relay stopped serving: {}", r.text);
    let metrics = api.get("/metrics").await.text;
    let server_errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("patchpilot_http_server_errors_total "))
        .expect("the server error counter is exported");
    assert_eq!(server_errors.trim(), "0", "the relay answered 5xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_and_header_floods_are_refused() {
    let relay = RelayProcess::start(LIMITS).expect("the relay starts");
    let auth = format!("Authorization: Bearer {}\r\n", relay.admin_key);

    // CL.TE: both framings at once. HTTP/1.1 says Transfer-Encoding wins and
    // the connection must close after; the smuggled request must never run.
    let smuggle = format!(
        "POST /api/patch-exclusions HTTP/1.1\r\nHost: r\r\n{auth}Content-Type: application/json\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/keys HTTP/1.1\r\nHost: r\r\n{auth}\r\n"
    );
    let answer = exchange(&relay, smuggle.as_bytes());
    assert!(
        answer.matches("HTTP/1.1").count() <= 1,
        "a smuggled request was answered: {answer}"
    );
    assert!(!answer.contains("\"keys\""), "{answer}");

    // Two different Content-Lengths: 400.
    let answer = exchange(
        &relay,
        format!("POST /api/patch-exclusions HTTP/1.1\r\nHost: r\r\n{auth}Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{{}}").as_bytes(),
    );
    assert_eq!(status_of(&answer), 400, "{answer}");

    // An obfuscated Transfer-Encoding is not taken as chunked.
    let answer = exchange(
        &relay,
        format!("POST /api/patch-exclusions HTTP/1.1\r\nHost: r\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n").as_bytes(),
    );
    let status = status_of(&answer);
    assert!(
        (400..500).contains(&status) || answer.is_empty(),
        "{answer}"
    );

    // A flood of headers: 431.
    let mut flood = String::from("GET /api/devices HTTP/1.1\r\nHost: r\r\n");
    for i in 0..500 {
        flood.push_str(&format!("X-Flood-{i}: {i}\r\n"));
    }
    flood.push_str("\r\n");
    let answer = exchange(&relay, flood.as_bytes());
    assert_eq!(status_of(&answer), 431, "{answer}");

    // One enormous header line: 431 too, not an unbounded buffer.
    let huge = format!(
        "GET /api/devices HTTP/1.1\r\nHost: r\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let mut stream = connect(&relay);
    let _ = stream.write_all(huge.as_bytes());
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let answer = String::from_utf8_lossy(&out);
    assert!(
        status_of(&answer) == 431 || answer.is_empty(),
        "an oversized header was accepted: {answer}"
    );

    // Garbage that is not HTTP at all: 400.
    let answer = exchange(
        &relay,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    );
    assert!(status_of(&answer) == 400 || answer.is_empty(), "{answer}");
    still_serving(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off_without_starving_others() {
    let relay = RelayProcess::start(LIMITS).expect("the relay starts");

    // A client that sends half a request line and stops: the connection is
    // closed once the header deadline (2 s) passes.
    let mut slow = connect(&relay);
    slow.write_all(b"GET /api/devi").expect("write");
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let held = started.elapsed();
    assert!(
        held < Duration::from_secs(8),
        "a slow client held its connection for {held:?}"
    );

    // Fill every connection slot with idle clients: a new client waits at
    // most about one header deadline, then is served.
    let idle: Vec<TcpStream> = (0..16).map(|_| connect(&relay)).collect();
    let started = Instant::now();
    let api = Api::new(&relay);
    let r = api.get("/healthz").await;
    assert_eq!(r.status, 200);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(8),
        "the idle clients starved a real one for {waited:?}"
    );
    drop(idle);
    still_serving(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_and_paths_get_clear_client_errors() {
    let relay = RelayProcess::start(LIMITS).expect("the relay starts");
    let client = reqwest::Client::new();
    let base = &relay.base_url;
    let send = |path: &str, body: Vec<u8>| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&relay.admin_key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // Very deep nesting, cut off or complete: no stack overflow, a
        // syntax error for the first, a wrong shape for the others (the
        // unknown field's value is skipped without recursion).
        (
            "/api/patch-exclusions",
            "[".repeat(100_000).into_bytes(),
            400,
        ),
        (
            "/api/patch-exclusions",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            422,
        ),
        (
            "/api/patch-exclusions",
            format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000)).into_bytes(),
            422,
        ),
        (
            "/api/patch-exclusions",
            format!("{{\"kind\":{}1{}}}", "[".repeat(50_000), "]".repeat(50_000)).into_bytes(),
            422,
        ),
        // Larger than the 1 MiB API limit.
        (
            "/api/patch-exclusions",
            format!("{{\"reason\":\"{}\"}}", "x".repeat(2 << 20)).into_bytes(),
            413,
        ),
        // Invalid UTF-8 inside a string.
        (
            "/api/users",
            b"{\"name\":\"\xff\xfe\",\"role\":\"viewer\"}".to_vec(),
            400,
        ),
        // Duplicate keys: refused, not last-one-wins.
        (
            "/api/users",
            br#"{"name":"a","name":"b","role":"viewer"}"#.to_vec(),
            422,
        ),
        // Numbers out of range, as JSON and for the field.
        (
            "/api/keys",
            br#"{"name":"k","expires_in_days":1e400}"#.to_vec(),
            400,
        ),
        (
            "/api/keys",
            br#"{"name":"k","expires_in_days":18446744073709551616}"#.to_vec(),
            422,
        ),
        (
            "/api/keys",
            br#"{"name":"k","expires_in_days":-9223372036854775808}"#.to_vec(),
            422,
        ),
        // A NUL and a lone surrogate escape.
        (
            "/api/users",
            br#"{"name":"a\u0000b","role":"viewer"}"#.to_vec(),
            422,
        ),
        (
            "/api/users",
            br#"{"name":"\ud800","role":"viewer"}"#.to_vec(),
            400,
        ),
    ];
    for (path, body, expected) in cases {
        let preview = String::from_utf8_lossy(&body[..body.len().min(40)]).to_string();
        let r = send(path, body).await.expect("an answer");
        assert_eq!(r.status().as_u16(), expected, "{path} {preview}");
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert_eq!(content_type, "application/problem+json", "{path} {preview}");
    }

    // Path traversal and odd bytes in ids: 404, never a file or a 500.
    for path in [
        "/api/devices/..%2F..%2Fetc%2Fpasswd",
        "/api/devices/../../etc/passwd",
        "/api/devices/%00",
        "/api/devices/dev_%2e%2e",
        "/api/webhooks/whk_..%5C..%5Cwindows",
        "/api/patch-exclusions/%F0%9F%92%A3",
        "/api/compliance/snapshots/snap_01HXYZ8K3M4N5P6Q7R8S9T0VW%C0%AF",
    ] {
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            relay.admin_key
        );
        let answer = exchange(&relay, raw.as_bytes());
        assert_eq!(status_of(&answer), 404, "{path}: {answer}");
        assert!(!answer.contains("root:"), "{path}");
    }
    still_serving(&relay).await;
}
