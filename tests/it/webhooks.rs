//! Webhooks against the real binary: the API, signatures, retries for
//! every kind of failing receiver, 410 and 4xx, and the outbox bound.

use std::net::SocketAddr;
use std::time::Duration;

use relay_tests::harness::{free_port, RelayProcess};
use relay_tests::receiver::{Receipt, Receiver, Reply};
use serde_json::{json, Value};

use crate::support::Api;

/// Fast retries so that the contract's behaviour fits in a test.
pub const FAST: &str = "[limits]\nread_per_minute = 1000000\nread_burst = 100000\nwrite_per_minute = 1000000\nwrite_burst = 100000\n[webhooks]\nretry_base_s = 1\nretry_cap_s = 2\nprobe_interval_s = 1\ntimeout_s = 2\n";

pub async fn receiver() -> Receiver {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    Receiver::start(any, None).await.expect("receiver starts")
}

/// Creates a webhook and returns `(webhook_id, secret)`.
pub async fn create(api: &Api, url: &str, events: Value) -> (String, String) {
    let r = api
        .post(
            "/api/webhooks",
            json!({"url": url, "events": events, "description": "test"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    (
        r.body["webhook_id"].as_str().expect("id").to_string(),
        r.body["secret"].as_str().expect("secret").to_string(),
    )
}

/// Queues a `webhook.test` event and returns its event id.
pub async fn test_event(api: &Api, id: &str) -> String {
    let r = api
        .post(&format!("/api/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    r.body["event_id"].as_str().expect("event id").to_string()
}

fn of(receipts: &[Receipt], event_id: &str) -> Vec<Receipt> {
    receipts
        .iter()
        .filter(|r| r.event_id() == event_id)
        .cloned()
        .collect()
}

async fn delivery(api: &Api, id: &str, event_id: &str) -> Value {
    let list = api
        .all(&format!("/api/webhooks/{id}/deliveries"), "deliveries", 100)
        .await;
    list.into_iter()
        .find(|d| d["event_id"] == event_id)
        .expect("the delivery is listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_api_signs_rotates_and_never_shows_the_secret_again() {
    let relay = RelayProcess::start(FAST).expect("relay");
    let api = Api::new(&relay);
    let rx = receiver().await;

    for bad in [
        json!({"url": "ftp://127.0.0.1/x", "events": ["*"]}),
        json!({"url": "http://127.0.0.1/x", "events": ["patch.exploded"]}),
        json!({"url": "http://127.0.0.1/x", "events": []}),
        json!({"url": "http://u:p@127.0.0.1/x", "events": ["*"]}),
    ] {
        let r = api.post("/api/webhooks", bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text);
    }
    let (id, secret) = create(&api, &rx.url("/hook"), json!(["*"])).await;
    assert!(secret.starts_with("whsec_") && secret.len() > 30);

    let listed = api.get("/api/webhooks").await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["total"], 1);
    assert!(
        !listed.text.contains(&secret),
        "a list never shows the secret"
    );
    let one = api.get(&format!("/api/webhooks/{id}")).await;
    assert_eq!(one.body["status"], "active");
    assert!(!one.text.contains(&secret));
    assert_eq!(api.get("/api/webhooks/whk_nope").await.status, 404);

    // A real event: an agent enrolls.
    let enroll = reqwest::Client::new()
        .post(format!("{}/agent/v1/enroll", relay.base_url))
        .json(&json!({"enrollment_token": relay.enrollment_token, "machine_id": "wh-1", "hostname": "WH-1",
            "os_family": "linux", "os_name": "Debian GNU/Linux 12", "os_version": "12", "agent_version": "1"}))
        .send()
        .await
        .expect("enroll");
    assert_eq!(enroll.status(), 201);
    let first = test_event(&api, &id).await;
    assert!(
        rx.wait_until(Duration::from_secs(10), |r| r
            .iter()
            .any(|x| x.event_id() == first))
            .await,
        "the test event arrives"
    );
    let got = rx.receipts();
    assert_eq!(got[0].event, "device.enrolled");
    assert_eq!(got[0].json()["data"]["hostname"], "WH-1");
    assert_eq!(got[1].event, "webhook.test");
    assert!(
        got.iter().all(|r| r.signed_by(&secret)),
        "signed with the secret"
    );
    assert!(got[1].sequence() > got[0].sequence());
    assert!(got.iter().all(|r| r.delivery.starts_with("dlv_")));
    assert_eq!(
        got[1].json()["relay_id"]
            .as_str()
            .map(|s| s.starts_with("rly_")),
        Some(true)
    );

    // Rotation: both secrets sign during the grace period.
    let rotated = api
        .post(
            &format!("/api/webhooks/{id}/rotate-secret"),
            json!({"grace_period_s": 600}),
        )
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let new_secret = rotated.body["secret"]
        .as_str()
        .expect("new secret")
        .to_string();
    assert_ne!(new_secret, secret);
    assert!(rotated.body["previous_secret_expires_at"].is_string());
    let second = test_event(&api, &id).await;
    assert!(
        rx.wait_until(Duration::from_secs(10), |r| r
            .iter()
            .any(|x| x.event_id() == second))
            .await
    );
    let r = of(&rx.receipts(), &second).remove(0);
    assert_eq!(r.signature.matches("v1=").count(), 2);
    assert!(r.signed_by(&new_secret) && r.signed_by(&secret));
    let bad = api
        .post(
            &format!("/api/webhooks/{id}/rotate-secret"),
            json!({"grace_period_s": 604801}),
        )
        .await;
    assert_eq!(bad.status, 422);

    let patched = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/webhooks/{id}"),
            Some(json!({"description": "renamed", "events": ["patch.failed"]})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.body["events"], json!(["patch.failed"]));
    assert!(!patched.text.contains(&new_secret));

    let d = delivery(&api, &id, &second).await;
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["attempt"], 1);
    assert_eq!(d["response_status"], 200);

    assert_eq!(api.delete(&format!("/api/webhooks/{id}")).await.status, 204);
    assert_eq!(api.get(&format!("/api/webhooks/{id}")).await.status, 404);
    let log = std::fs::read_to_string(&relay.log_path).expect("relay log");
    assert!(
        !log.contains(&secret) && !log.contains(&new_secret),
        "secrets never reach the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receivers_are_retried_with_backoff_and_retry_after() {
    let relay = RelayProcess::start(FAST).expect("relay");
    let api = Api::new(&relay);
    let rx = receiver().await;
    let (id, secret) = create(&api, &rx.url("/hook"), json!(["*"])).await;
    rx.script([
        Reply::Status(500),
        Reply::RetryAfter(429, "3".into()),
        Reply::Hangup,
        Reply::Slow(Duration::from_secs(4)),
        Reply::Status(503),
    ]);
    let event = test_event(&api, &id).await;
    assert!(
        rx.wait_until(Duration::from_secs(40), |r| of(r, &event).len() >= 6)
            .await,
        "the event is finally delivered: {:?}",
        of(&rx.receipts(), &event)
            .iter()
            .map(|r| r.answered)
            .collect::<Vec<_>>()
    );
    let attempts = of(&rx.receipts(), &event);
    assert_eq!(
        attempts.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 429, 0, 200, 503, 200],
        "500, 429, hangup, slow (timed out) and 503 are all retried"
    );
    assert!(attempts.iter().all(|r| r.signed_by(&secret)));
    let ids: std::collections::HashSet<_> = attempts.iter().map(|r| r.delivery.clone()).collect();
    assert_eq!(
        ids.len(),
        attempts.len(),
        "each attempt has its own delivery id"
    );
    let gap = attempts[2].at_ms - attempts[1].at_ms;
    assert!(gap >= 2_500, "Retry-After: 3 is honoured (waited {gap} ms)");
    let first_gap = attempts[1].at_ms - attempts[0].at_ms;
    assert!(
        (700..=2_500).contains(&first_gap),
        "backoff from the base: {first_gap} ms"
    );

    let d = delivery(&api, &id, &event).await;
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["attempt"], 6);
    let statuses: Vec<Value> = d["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["response_status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [
            json!(500),
            json!(429),
            Value::Null,
            Value::Null,
            json!(503),
            json!(200)
        ]
    );
    assert!(d["attempts"][3]["error"]
        .as_str()
        .expect("timeout error")
        .contains("no answer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_does_not_hold_back_later_ones_and_410_disables() {
    let relay = RelayProcess::start(FAST).expect("relay");
    let api = Api::new(&relay);
    let rx = receiver().await;
    let (id, _) = create(&api, &rx.url("/hook"), json!(["*"])).await;

    rx.script([Reply::Status(500)]);
    let a = test_event(&api, &id).await;
    let b = test_event(&api, &id).await;
    let c = test_event(&api, &id).await;
    assert!(
        rx.wait_until(Duration::from_secs(15), |r| of(r, &a).len() == 2)
            .await
    );
    let order: Vec<String> = rx.receipts().iter().map(Receipt::event_id).collect();
    assert_eq!(
        order,
        [a.clone(), b.clone(), c.clone(), a.clone()],
        "B and C go out while A waits for its retry"
    );

    rx.script([Reply::Status(400)]);
    let d = test_event(&api, &id).await;
    let e = test_event(&api, &id).await;
    assert!(
        rx.wait_until(Duration::from_secs(10), |r| of(r, &e).len() == 1)
            .await
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(of(&rx.receipts(), &d).len(), 1, "a 400 is not retried");
    let failed = delivery(&api, &id, &d).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"], "the endpoint answered 400");

    rx.script([Reply::Status(410)]);
    let f = test_event(&api, &id).await;
    assert!(
        rx.wait_until(Duration::from_secs(10), |r| of(r, &f).len() == 1)
            .await
    );
    let mut disabled = Value::Null;
    for _ in 0..50 {
        disabled = api.get(&format!("/api/webhooks/{id}")).await.body;
        if disabled["status"] == "disabled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(disabled["status"], "disabled");
    assert!(disabled["disabled_reason"]
        .as_str()
        .expect("reason")
        .contains("410"));
    let g = test_event(&api, &id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        of(&rx.receipts(), &g).is_empty(),
        "nothing goes to a disabled webhook"
    );
    let on = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/webhooks/{id}"),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(on.status, 200);
    assert!(
        rx.wait_until(Duration::from_secs(10), |r| of(r, &g).len() == 1)
            .await,
        "events held while disabled go out once it is active again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_outbox_size_the_oldest_are_dropped_and_counted() {
    let relay = RelayProcess::start(&format!("{FAST}max_outbox = 5\n")).expect("relay");
    let api = Api::new(&relay);
    // Nothing listens on this port: the endpoint is unreachable.
    let closed = format!("http://127.0.0.1:{}/hook", free_port().expect("port"));
    let (id, secret) = create(&api, &closed, json!(["*"])).await;
    let mut events = Vec::new();
    for _ in 0..12 {
        events.push(test_event(&api, &id).await);
    }
    let mut info = Value::Null;
    for _ in 0..100 {
        info = api.get("/api/relay").await.body;
        if info["webhooks"]["dropped"]["outbox_full"] == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(info["webhooks"]["dropped"]["outbox_full"], 7, "{info}");
    assert_eq!(info["webhooks"]["uplink"], "down");
    assert_eq!(info["webhooks"]["outbox_depth"], 5);
    let metrics = api.get("/metrics").await.text;
    assert!(metrics.contains("patchpilot_webhook_deliveries_dropped_outbox_full_total 7"));
    let log = std::fs::read_to_string(&relay.log_path).expect("log");
    assert!(log.contains("outbox full"), "the drop is logged");

    let rx = receiver().await;
    let moved = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/webhooks/{id}"),
            Some(json!({"url": rx.url("/hook")})),
        )
        .await;
    assert_eq!(moved.status, 200);
    assert!(
        rx.wait_until(Duration::from_secs(10), |r| r.len() >= 5)
            .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<String> = rx.receipts().iter().map(Receipt::event_id).collect();
    assert_eq!(got, events[7..], "the five newest arrive, in order");
    assert!(rx.receipts().iter().all(|r| r.signed_by(&secret)));
}
