use super::*;
use crate::clock::Clock;
use crate::config::WebhooksConfig;

fn url_ok(config: &WebhooksConfig, url: &str) -> bool {
    let mut checks = Checks::new();
    let out = check_url(&mut checks, config, url);
    checks.finish().is_ok() && out.is_some()
}

#[test]
fn only_http_and_https_urls_without_credentials_are_accepted() {
    let config = WebhooksConfig::default();
    assert!(url_ok(&config, "https://hooks.example.com/pp?x=1"));
    assert!(url_ok(&config, "http://10.0.0.5:8080/in"));
    assert!(url_ok(&config, "http://[::1]:9/x"));
    assert!(!url_ok(&config, "ftp://hooks.example.com/"));
    assert!(!url_ok(&config, "file:///etc/passwd"));
    assert!(!url_ok(&config, "https://user:pw@hooks.example.com/"));
    assert!(!url_ok(&config, "hooks.example.com/path"));
    assert!(!url_ok(&config, ""));
    assert!(!url_ok(
        &config,
        &format!("https://a.example/{}", "x".repeat(3000))
    ));
}

#[test]
fn allow_and_deny_lists_decide_destinations() {
    let config = WebhooksConfig {
        allow_hosts: vec!["*.example.com".into(), "10.0.0.5".into()],
        deny_hosts: vec!["bad.example.com".into()],
        ..WebhooksConfig::default()
    };
    assert!(url_ok(&config, "https://hooks.example.com/"));
    assert!(url_ok(&config, "http://10.0.0.5/"));
    assert!(!url_ok(&config, "https://example.org/"));
    assert!(!url_ok(&config, "https://bad.example.com/"));
    assert!(!url_ok(&config, "https://evilexample.com/"));
}

#[test]
fn event_filters_take_known_names_or_a_star() {
    let mut checks = Checks::new();
    let events = check_events(
        &mut checks,
        &[
            "patch.failed".into(),
            "patch.failed".into(),
            "device.online".into(),
        ],
    );
    assert!(checks.finish().is_ok());
    assert_eq!(events, ["patch.failed", "device.online"]);

    let mut checks = Checks::new();
    assert_eq!(
        check_events(&mut checks, &["*".into(), "patch.failed".into()]),
        ["*"]
    );

    for bad in [
        vec![],
        vec!["patch.exploded".to_string()],
        vec!["webhook.test".into()],
    ] {
        let mut checks = Checks::new();
        check_events(&mut checks, &bad);
        assert!(checks.finish().is_err(), "{bad:?} must be refused");
    }
}

fn record(events: &[&str]) -> WebhookRecord {
    WebhookRecord {
        webhook_id: WebhookId::generate(),
        url: "http://127.0.0.1:9/".into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        description: String::new(),
        status: WebhookStatus::Active,
        disabled_reason: None,
        created_at: Timestamp(0),
        updated_at: Timestamp(0),
        secret: "whsec_current".into(),
        previous_secret: Some("whsec_old".into()),
        previous_secret_expires_at: Some(Timestamp(100)),
    }
}

fn event(event_type: EventType, data: serde_json::Value) -> EventRecord {
    EventRecord {
        event_id: EventId::generate(),
        sequence: 1,
        event_type,
        occurred_at: Timestamp(0),
        data: data.to_string(),
    }
}

#[test]
fn a_test_event_goes_only_to_its_own_webhook() {
    let mine = record(&["*"]);
    let other = record(&["*"]);
    let test = event(
        EventType::WebhookTest,
        serde_json::json!({"webhook_id": mine.webhook_id}),
    );
    assert!(mine.wants(&test));
    assert!(!other.wants(&test));
    let failed = event(EventType::PatchFailed, serde_json::json!({}));
    assert!(mine.wants(&failed));
    assert!(record(&["patch.failed"]).wants(&failed));
    assert!(!record(&["patch.installed"]).wants(&failed));
}

#[test]
fn the_previous_secret_signs_only_during_its_grace_period() {
    let r = record(&["*"]);
    assert_eq!(
        r.signing_secrets(Timestamp(99)),
        ["whsec_current", "whsec_old"]
    );
    assert_eq!(r.signing_secrets(Timestamp(100)), ["whsec_current"]);
    let shown = format!("{r:?}");
    assert!(!shown.contains("whsec_current") && !shown.contains("whsec_old"));
}

#[test]
fn delivery_keys_sort_by_webhook_then_sequence() {
    let id = WebhookId::generate();
    let a = delivery_key(id, 9);
    let b = delivery_key(id, 10);
    assert!(a < b);
    assert_eq!(key_sequence(&b), Some(10));
}

/// A relay on a temporary store with a manual clock.
fn relay_at(dir: &std::path::Path, clock: &Clock) -> std::sync::Arc<Relay> {
    let mut config = crate::RelayConfig::default();
    config.store.data_dir = dir.to_path_buf();
    config.webhooks.probe_interval_s = 1;
    Relay::open(config, clock.clone()).expect("the relay opens")
}

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    format!("http://127.0.0.1:{port}/hook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_past_retention_are_dropped_and_counted_across_restarts() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::manual(Timestamp(1_800_000_000));
    {
        let relay = relay_at(dir.path(), &clock);
        let webhook = NewWebhook {
            url: closed_port_url(),
            events: vec!["*".into()],
            description: String::new(),
        };
        let id = relay
            .create_webhook(webhook)
            .await
            .expect("created")
            .record
            .webhook_id;
        for _ in 0..3 {
            relay.queue_webhook_test(id).await.expect("queued");
        }
        clock.advance(31 * Timestamp::SECONDS_PER_DAY);

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let outbox = tokio::spawn(outbox::run(relay.clone(), stop_rx));
        let counters = &relay.webhooks.counters;
        for _ in 0..100 {
            if counters.dropped_retention.load(Ordering::Relaxed) == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(counters.dropped_retention.load(Ordering::Relaxed), 3);
        assert_eq!(counters.dropped_outbox_full.load(Ordering::Relaxed), 0);
        assert_eq!(
            relay
                .webhooks
                .backlog(id, relay.store.last_event_sequence_applied()),
            0
        );
        let _ = stop_tx.send(true);
        outbox.await.expect("the outbox stops");
        relay.store.sync_now().await.expect("sync");
    }
    let reopened = relay_at(dir.path(), &clock);
    assert_eq!(
        reopened
            .webhooks
            .counters
            .dropped_retention
            .load(std::sync::atomic::Ordering::Relaxed),
        3,
        "drop totals survive a restart"
    );
}

#[tokio::test]
async fn sequences_never_restart_after_the_event_log_is_emptied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::manual(Timestamp(1_800_000_000));
    {
        let relay = relay_at(dir.path(), &clock);
        let webhook = NewWebhook {
            url: closed_port_url(),
            events: vec!["*".into()],
            description: String::new(),
        };
        let id = relay
            .create_webhook(webhook)
            .await
            .expect("created")
            .record
            .webhook_id;
        let event = relay.queue_webhook_test(id).await.expect("queued");
        assert_eq!(event.sequence, 1);
        let mut batch = Batch::new();
        batch.delete(Table::Events, 1u64.to_be_bytes().to_vec());
        relay.store.writer().apply(batch).expect("pruned");
        relay.store.sync_now().await.expect("sync");
    }
    let relay = relay_at(dir.path(), &clock);
    let id = relay.webhook_page(None, 1).expect("list").0[0].webhook_id;
    let event = relay.queue_webhook_test(id).await.expect("queued");
    assert_eq!(
        event.sequence, 2,
        "a cursor at 1 must still see the next event"
    );
}
