use super::*;
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
