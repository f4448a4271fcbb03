//! schemathesis (from PyPI) against the real relay on loopback, driven by the
//! relay's own `GET /api/openapi.json`: every operation, positive and
//! negative data, with ids that exist (a seeded fleet, a webhook, an
//! exclusion, a snapshot, a reboot schedule, a second user and key). The run
//! must find no server error and no response outside the document.

use std::process::Command;
use std::time::{Duration, Instant};

use relay_tests::pytools;
use serde_json::json;

use crate::support::{relay_with_fleet, Api};

pub const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// Limits high enough that the run is not throttled into 429s.
const LIMITS: &str = "[limits]\nread_per_minute = 1000000\nread_burst = 100000\nwrite_per_minute = 1000000\nwrite_burst = 100000\nauth_failures_per_minute = 1000000\n";

/// The checks asked for: status codes, content types, headers and bodies as
/// documented, no 5xx, and invalid input refused with a 4xx.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,unsupported_method,allow_header_conformance,missing_required_header,ignored_auth";

fn toml_list(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_contract_violation() {
    let st = pytools::ensure(SCHEMATHESIS, "st").expect("schemathesis installs from PyPI");
    let (relay, fleet, _client) = relay_with_fleet(12, 0x5c4e, LIMITS).await;
    let api = Api::new(&relay);

    // Ids that exist, for schemathesis to use beside the ones it makes up.
    let devices: Vec<String> = fleet
        .agents()
        .iter()
        .filter_map(|a| a.device_id().map(str::to_string))
        .collect();
    assert_eq!(devices.len(), 12);
    let agent_token = fleet.agents()[1]
        .agent_token()
        .expect("an enrolled agent has a token")
        .to_string();
    // Several of each resource schemathesis may delete, so that deleting
    // one early leaves others to test against.
    let mut webhooks = Vec::new();
    let mut exclusions = Vec::new();
    for i in 0..6 {
        let webhook = api
            .post(
                "/api/webhooks",
                json!({"url": format!("http://127.0.0.1:9/hook{i}"), "events": ["*"], "description": "st"}),
            )
            .await;
        assert_eq!(webhook.status, 201, "{}", webhook.text);
        webhooks.push(
            webhook.body["webhook_id"]
                .as_str()
                .expect("an id")
                .to_string(),
        );
        let exclusion = api
            .post(
                "/api/patch-exclusions",
                json!({"kind": "kb", "value": format!("KB50344{i:02}"), "reason": "st"}),
            )
            .await;
        assert_eq!(exclusion.status, 201, "{}", exclusion.text);
        exclusions.push(
            exclusion.body["exclusion_id"]
                .as_str()
                .expect("an id")
                .to_string(),
        );
    }
    let snapshot = api.post("/api/compliance/snapshot", json!({})).await;
    assert_eq!(snapshot.status, 201, "{}", snapshot.text);
    let at = relay_tests::timefmt::rfc3339(
        relay_tests::timefmt::now_utc() + Duration::from_secs(86_400),
    );
    let reboot = api
        .post(
            &format!("/api/reboot-management/{}/schedule", devices[0]),
            json!({"at": at, "message": "st"}),
        )
        .await;
    assert_eq!(reboot.status, 201, "{}", reboot.text);
    let user = api
        .post("/api/users", json!({"name": "st-viewer", "role": "viewer"}))
        .await;
    assert_eq!(user.status, 201, "{}", user.text);
    let user_id = user.body["user_id"].as_str().expect("user id").to_string();
    let key = api
        .post(
            "/api/keys",
            json!({"name": "st-key", "user_id": user_id, "expires_in_days": 30}),
        )
        .await;
    assert_eq!(key.status, 201, "{}", key.text);
    let id = |r: &crate::support::Reply, f: &str| -> Vec<String> {
        vec![r.body[f].as_str().expect("an id").to_string()]
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[dictionaries.devices]\nvalues = {}\n\
         [dictionaries.webhooks]\nvalues = {}\n\
         [dictionaries.exclusions]\nvalues = {}\n\
         [dictionaries.snapshots]\nvalues = {}\n\
         [dictionaries.users]\nvalues = {}\n\
         [dictionaries.keys]\nvalues = {}\n\
         [parameters]\n\
         \"path.device_id\" = {{ dictionary = \"devices\", probability = 0.7 }}\n\
         \"query.device_id\" = {{ dictionary = \"devices\", probability = 0.5 }}\n\
         \"path.webhook_id\" = {{ dictionary = \"webhooks\", probability = 0.7 }}\n\
         \"path.exclusion_id\" = {{ dictionary = \"exclusions\", probability = 0.7 }}\n\
         \"path.snapshot_id\" = {{ dictionary = \"snapshots\", probability = 0.7 }}\n\
         \"path.user_id\" = {{ dictionary = \"users\", probability = 1.0 }}\n\
         \"path.key_id\" = {{ dictionary = \"keys\", probability = 1.0 }}\n\
         \"body.enrollment_token\" = {{ dictionary = \"enrollment\", probability = 0.8 }}\n\
         [dictionaries.enrollment]\nvalues = [{:?}]\n\
         [headers]\nAuthorization = {:?}\n\
         [[operations]]\ninclude-path = \"/agent/v1/checkin\"\n\
         headers = {{ Authorization = {:?} }}\n",
        toml_list(&devices),
        toml_list(&webhooks),
        toml_list(&exclusions),
        toml_list(&id(&snapshot, "snapshot_id")),
        toml_list(&id(&user, "user_id")),
        toml_list(&id(&key, "key_id")),
        relay.enrollment_token,
        format!("Bearer {}", relay.admin_key),
        format!("Bearer {agent_token}"),
    );
    let config_path = dir.path().join("schemathesis.toml");
    std::fs::write(&config_path, config).expect("config written");

    // Deleting (webhooks, exclusions, schedules, keys) and disabling users
    // run last, on their own: deleted resources would leave the other
    // operations only 404s, and schemathesis learns ids from `GET /api/keys`
    // and `GET /api/users`, so revoking the admin's own key early would turn
    // the rest of the run into 401s.
    let run = |filter: &str, regex: &str, phases: &str, seconds: &str| {
        let started = Instant::now();
        let output = Command::new(&st)
            .arg("--no-color")
            .arg("--config-file")
            .arg(&config_path)
            .args(["run", &format!("{}/api/openapi.json", relay.base_url)])
            .args(["--url", &relay.base_url])
            .args([filter, regex])
            .args(["--checks", CHECKS])
            .args(["--phases", phases])
            .args(["--max-examples", "40", "--seed", "1", "--workers", "1"])
            .args(["--max-time", seconds, "--request-timeout", "10"])
            .args(["--suppress-health-check", "all", "--no-shrink"])
            .current_dir(dir.path())
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis runs");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("{stdout}\n{stderr}");
        println!("schemathesis took {:.0} s", started.elapsed().as_secs_f64());
        assert!(
            output.status.success(),
            "schemathesis found problems (exit {:?}):\n{stdout}\n{stderr}\nrelay log:\n{}",
            output.status.code(),
            relay.log_tail()
        );
        stdout
    };
    const DESTRUCTIVE: &str = "^DELETE |^POST /api/users/\\{user_id\\}/disable$";
    let first = run(
        "--exclude-name-regex",
        DESTRUCTIVE,
        "examples,coverage,fuzzing,stateful",
        "60",
    );
    assert!(
        first.contains("Tested: 30"),
        "not every operation was tested"
    );
    let still = api.get("/api/relay").await;
    assert_eq!(
        still.status, 200,
        "the run lost its admin key: {}",
        still.text
    );
    let second = run(
        "--include-name-regex",
        DESTRUCTIVE,
        "examples,coverage,fuzzing",
        "20",
    );
    assert!(
        second.contains("Tested: 5"),
        "the destructive operations were not tested"
    );
    let metrics = Api::with_key(&relay, &relay.admin_key)
        .get("/metrics")
        .await;
    let requests: u64 = metric(&metrics.text, "patchpilot_http_requests_total");
    let server_errors: u64 = metric(&metrics.text, "patchpilot_http_server_errors_total");
    println!("relay: {requests} requests, {server_errors} 5xx");
    assert!(
        requests > 1_000,
        "schemathesis sent only {requests} requests"
    );
    assert_eq!(server_errors, 0, "the relay answered 5xx");
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}
