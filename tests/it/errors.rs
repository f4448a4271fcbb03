//! Every status of the contract's error table, as problem+json, and bad input
//! that must never become a 500.

use reqwest::Method;
use serde_json::json;

use crate::support::{relay_with_fleet, Api};

async fn raw(
    relay: &relay_tests::harness::RelayProcess,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", relay.base_url))
        .bearer_auth(&relay.admin_key)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.expect("the relay answers")
}

fn assert_problem(resp: &reqwest::Response, status: u16) {
    assert_eq!(resp.status().as_u16(), status, "{}", resp.url());
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "{}",
        resp.url()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_of_the_contract() {
    let (relay, fleet, _client) = relay_with_fleet(3, 4, "").await;
    let api = Api::new(&relay);
    let device = fleet.agents()[0].device_id().expect("id").to_string();

    // 400: bad JSON, an unparseable query parameter, a foreign cursor.
    let r = raw(
        &relay,
        Method::POST,
        "/api/patch-exclusions",
        Some("application/json"),
        b"{\"kind\": ".to_vec(),
    )
    .await;
    assert_problem(&r, 400);
    for path in [
        "/api/devices?limit=abc",
        "/api/devices?cursor=!!!",
        "/api/devices?has_critical=maybe",
        "/api/devices?status=sleeping",
        "/api/vulnerabilities?min_cvss=eleven",
    ] {
        let r = api.get(path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert!(r.body["detail"].is_string());
    }
    // 401 with WWW-Authenticate, for no key and for a wrong scheme.
    let anonymous = Api::with_key(&relay, "");
    let r = anonymous.get("/api/devices").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = reqwest::Client::new()
        .get(format!("{}/api/devices", relay.base_url))
        .header("authorization", format!("Basic {}", relay.admin_key))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401);
    // The scheme is case-insensitive.
    let r = reqwest::Client::new()
        .get(format!("{}/api/devices", relay.base_url))
        .header("authorization", format!("bEaReR {}", relay.admin_key))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    // 404: unknown route, unknown id, malformed id, path traversal.
    for path in [
        "/api/nope",
        "/api/devices/dev_01HXYZ8K3M4N5P6Q7R8S9T0VWX",
        "/api/devices/not-an-id",
        "/api/devices/..%2F..%2Fetc%2Fpasswd",
        "/api/compliance/snapshots/snap_x",
        "/nothing",
    ] {
        let r = api.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.headers["content-type"], "application/problem+json");
    }
    // 405 with Allow.
    let r = api.send(Method::PUT, "/api/devices", None).await;
    assert_eq!(r.status, 405);
    assert!(r.headers["allow"].to_str().expect("ascii").contains("GET"));
    assert_eq!(r.headers["content-type"], "application/problem+json");
    // 409 is covered with exclusions; 413 past 1 MiB on /api.
    let big = format!(
        "{{\"kind\":\"kb\",\"value\":\"KB1\",\"reason\":\"{}\"}}",
        "x".repeat(1_100_000)
    );
    let r = raw(
        &relay,
        Method::POST,
        "/api/patch-exclusions",
        Some("application/json"),
        big.into_bytes(),
    )
    .await;
    assert_problem(&r, 413);
    // 415 without a JSON content type; parameters and case are fine.
    let r = raw(
        &relay,
        Method::POST,
        "/api/patch-exclusions",
        Some("text/plain"),
        b"{}".to_vec(),
    )
    .await;
    assert_problem(&r, 415);
    let r = raw(
        &relay,
        Method::POST,
        "/api/patch-exclusions",
        None,
        b"{}".to_vec(),
    )
    .await;
    assert_problem(&r, 415);
    let ok = raw(
        &relay,
        Method::POST,
        "/api/patch-exclusions",
        Some("Application/JSON; charset=utf-8"),
        br#"{"kind":"package","value":"openssl"}"#.to_vec(),
    )
    .await;
    assert_eq!(ok.status(), 201);
    // 422: limits, wrong types, bad values, a time without an offset.
    let r = api.get("/api/devices?limit=0").await;
    assert_eq!(r.status, 422);
    assert_eq!(api.get("/api/devices?limit=501").await.status, 422);
    let r = api
        .post(
            "/api/patch-exclusions",
            json!({"kind": "kb", "value": 5034441}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["field"], "value");
    let r = api
        .post(
            "/api/patch-exclusions",
            json!({"kind": "kb", "value": "KB50x"}),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = api
        .post(
            "/api/patch-exclusions",
            json!({"kind": "package", "value": "rm -rf /"}),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = api
        .post(
            &format!("/api/reboot-management/{device}/schedule"),
            json!({"at": "2099-01-01T10:00:00"}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body["errors"][0]["message"]
        .as_str()
        .expect("msg")
        .contains("offset"));
    let r = raw(
        &relay,
        Method::POST,
        "/api/patch-exclusions",
        Some("application/json"),
        br#"{"kind": "kb", "value": "KB1", "kind": "package"}"#.to_vec(),
    )
    .await;
    assert_problem(&r, 422);
    let r = api
        .post("/api/keys", json!({"name": "n", "expires_in_days": 1e40}))
        .await;
    assert_eq!(r.status, 422);
    let r = api
        .post(
            "/api/users",
            json!({"name": "\u{202e}evil\u{0000}", "role": "admin"}),
        )
        .await;
    assert_eq!(r.status, 422);
    let deep = format!(
        "{{\"name\":\"a\",\"role\":\"viewer\",\"x\":{}{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let r = raw(
        &relay,
        Method::POST,
        "/api/users",
        Some("application/json"),
        deep.into_bytes(),
    )
    .await;
    assert!(
        r.status().is_success() || r.status().is_client_error(),
        "deep JSON: {}",
        r.status()
    );
    let deeper = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let r = raw(
        &relay,
        Method::POST,
        "/api/keys",
        Some("application/json"),
        deeper.into_bytes(),
    )
    .await;
    assert!(
        r.status().is_client_error(),
        "very deep JSON: {}",
        r.status()
    );
    let r = raw(
        &relay,
        Method::POST,
        "/api/users",
        Some("application/json"),
        vec![0xff, 0xfe, 0x7b],
    )
    .await;
    assert_problem(&r, 400);

    let metrics = reqwest::get(format!("{}/metrics", relay.base_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("patchpilot_http_server_errors_total 0"),
        "no input produced a 500:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_protocol_refuses_bad_checkins_whole() {
    let (relay, fleet, _client) = relay_with_fleet(2, 8, "").await;
    let agent = &fleet.agents()[0];
    let token = agent.agent_token().expect("token").to_string();
    let api = Api::new(&relay);
    let id = agent.device_id().expect("id");
    let before = api.get(&format!("/api/devices/{id}")).await.body;

    let client = reqwest::Client::new();
    let checkin = |body: serde_json::Value, token: &str| {
        client
            .post(format!("{}/agent/v1/checkin", relay.base_url))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let good_update = json!({"update_id": "KB1", "kb": "KB1", "package": null, "title": "t", "severity": "critical", "cves": [], "released_at": null});
    let mut bad_update = good_update.clone();
    bad_update["severity"] = json!("apocalyptic");
    bad_update["update_id"] = json!("KB2");
    bad_update["kb"] = json!("KB2");
    let body = json!({"hostname": "renamed", "os_family": "windows", "os_name": "W", "os_version": "1", "agent_version": "9", "available_updates": [good_update, bad_update]});
    let r = checkin(body, &token).await.expect("answer");
    assert_eq!(r.status(), 422);
    let problem: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        problem["errors"][0]["field"],
        "available_updates[1].severity"
    );
    let after = api.get(&format!("/api/devices/{id}")).await.body;
    assert_eq!(
        before["hostname"], after["hostname"],
        "a refused check-in changes nothing"
    );
    assert_eq!(before["updates"], after["updates"]);

    let r = checkin(json!({"hostname": "x", "os_family": "windows", "os_name": "W", "os_version": "1", "agent_version": "1"}), "ppa_wrong").await.expect("answer");
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{}/agent/v1/enroll", relay.base_url))
        .json(&json!({"enrollment_token": "ppe_wrong", "machine_id": "m", "hostname": "h", "os_family": "linux", "os_name": "Debian", "os_version": "12", "agent_version": "1"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401);
    let huge = vec![b' '; 9 * 1024 * 1024];
    let r = client
        .post(format!("{}/agent/v1/checkin", relay.base_url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_input_found_by_the_breaker_stays_a_clear_4xx() {
    let relay = relay_tests::harness::RelayProcess::start("[server]\nrequest_timeout_s = 1\n")
        .expect("relay");
    let api = Api::new(&relay);
    let far = api
        .post(
            "/api/patch-exclusions",
            json!({"kind": "package", "value": "bash", "expires_at": "9999-12-31T23:59:59-23:59"}),
        )
        .await;
    assert_eq!(far.status, 422, "{}\n{}", far.text, relay.log_tail());
    for path in ["/api/devices/%ff%fe", "/api/keys/%C0%AF"] {
        let r = api.send(Method::DELETE, path, None).await;
        assert!(r.status == 404 || r.status == 405, "{path}: {}", r.status);
        let r = api.get(path).await;
        assert!(r.status == 404 || r.status == 405, "{path}: {}", r.status);
    }
    assert_eq!(api.get("/api/devices/%ff%fe").await.status, 404);
    let r = raw(
        &relay,
        Method::POST,
        "/api/users",
        Some("application/json"),
        b"{} {}".to_vec(),
    )
    .await;
    assert_problem(&r, 400);
    let r = api
        .post(
            "/api/users",
            json!({"name": "admin\u{202e}nimda", "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status, 422);
    let huge = vec![b' '; 9 * 1024 * 1024];
    let r = raw(
        &relay,
        Method::POST,
        "/agent/v1/enroll",
        Some("application/json"),
        huge,
    )
    .await;
    let status = r.status().as_u16();
    let body = r.text().await.expect("body");
    assert!(
        status == 413 && body.contains("8388608"),
        "{status}: {body}"
    );

    // A client that stops sending its body gets a problem+json 408 in time.
    let port = relay.port;
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
        write!(s, "POST /agent/v1/enroll HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{").expect("write");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    })
    .await
    .expect("slow client");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        reply.contains("application/problem+json") && reply.contains("x-request-id"),
        "{reply}"
    );
}
