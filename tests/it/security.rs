//! Issue 5: HTTPS with a pinned self-signed certificate, the audit trail,
//! and secrets that never reach the logs or the disk's other readers.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use relay_tests::harness::RelayProcess;
use relay_tests::{Fleet, RelayClient};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{real_profiles, Api};
use crate::webhooks::receiver;

/// `patchpilot-relay tls` → (fingerprint hex without colons, certificate path).
fn tls_cli(relay: &RelayProcess) -> (String, String) {
    let out = relay.cli(&["tls"]).expect("tls command");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let fingerprint = text
        .lines()
        .find_map(|l| l.strip_prefix("sha256 fingerprint: "))
        .expect("a fingerprint line")
        .replace(':', "")
        .to_ascii_lowercase();
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("certificate: "))
        .and_then(|l| l.split(" (").next())
        .expect("a certificate line")
        .to_string();
    (fingerprint, path)
}

fn pinned_client(cert_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem).expect("pem"))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_with_a_self_signed_certificate_kept_across_restarts() {
    // HTTPS only for the API: the plain listener stays for the harness's
    // readiness polling on loopback, as the default config has it.
    let mut relay = RelayProcess::start_https("", None).expect("the relay starts");
    let port = relay.https_port.expect("https port");
    let (fingerprint, cert_path) = tls_cli(&relay);
    assert_eq!(fingerprint.len(), 64);
    let pem = std::fs::read(&cert_path).expect("certificate file");
    let client = pinned_client(&pem);

    for host in ["localhost", "127.0.0.1"] {
        let r = client
            .get(format!("https://{host}:{port}/api/relay"))
            .bearer_auth(&relay.admin_key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTPS to {host}: {e}"));
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["tls_sha256"], fingerprint, "{body}");
    }
    // A client that does not trust the certificate is refused by TLS.
    let stranger = reqwest::Client::builder()
        .use_rustls_tls()
        .build()
        .expect("client");
    let err = stranger
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .expect_err("an unpinned client must not connect");
    assert!(err.is_connect(), "{err}");
    // Plain HTTP spoken to the HTTPS port gets nothing usable, and the relay
    // keeps serving.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    relay.stop();
    relay.launch().expect("restart");
    let (again, _) = tls_cli(&relay);
    assert_eq!(
        again, fingerprint,
        "the certificate is kept across restarts"
    );
    let r = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .expect("HTTPS after restart");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_certificate_files_are_served_and_bad_ones_refuse_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    relay_core::tls::generate(dir.path(), &["relay.test".into(), "127.0.0.1".into()])
        .expect("generate");
    let cert = dir.path().join(relay_core::tls::GENERATED_CERT);
    let key = dir.path().join(relay_core::tls::GENERATED_KEY);
    let extra = format!(
        "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let relay = RelayProcess::start_https(&extra, None).expect("the relay starts");
    let port = relay.https_port.expect("port");
    let (_, shown) = tls_cli(&relay);
    assert_eq!(Path::new(&shown), cert.as_path());
    let client = pinned_client(&std::fs::read(&cert).expect("pem"));
    let r = client
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .expect("HTTPS with the configured certificate");
    assert_eq!(r.status(), StatusCode::OK);
    drop(relay);

    // A key that does not belong to the certificate: the relay says so and
    // does not start.
    let other = tempfile::tempdir().expect("tempdir");
    relay_core::tls::generate(other.path(), &["x.test".into()]).expect("generate");
    let extra = format!(
        "[server]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        cert.display().to_string(),
        other
            .path()
            .join(relay_core::tls::GENERATED_KEY)
            .display()
            .to_string()
    );
    let err = RelayProcess::start_https(&extra, None)
        .err()
        .expect("a mismatched key must stop the relay");
    assert!(format!("{err:#}").contains("TLS"), "{err:#}");
}

/// Every regular file under `dir` is 0600 and every folder 0700.
fn assert_private(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        let mode = meta.permissions().mode() & 0o777;
        let path = entry.path();
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            assert_private(&path);
        } else {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_logged_at_trace_level_or_left_readable() {
    let mut relay = RelayProcess::start_https("", Some("trace")).expect("the relay starts");
    let api = Api::new(&relay);
    let mut secrets = vec![relay.admin_key.clone(), relay.enrollment_token.clone()];

    // Agents enroll and check in (agent tokens), over plain HTTP.
    let client = RelayClient::new(&relay.base_url, 4).expect("client");
    let mut fleet = Fleet::new(real_profiles(), 3, 7).expect("fleet");
    let enrolled = fleet
        .enroll_all(&client, &relay.enrollment_token)
        .await
        .expect("enroll");
    assert_eq!(enrolled.failed, 0);
    fleet.checkin_round(&client).await.expect("checkin");
    secrets.extend(
        fleet
            .agents()
            .iter()
            .filter_map(|a| a.agent_token().map(str::to_string)),
    );

    // Keys, users, a refused key, webhook secrets and their rotation.
    let user = api
        .post("/api/users", json!({"name": "ops", "role": "operator"}))
        .await;
    assert_eq!(user.status, 201, "{}", user.text);
    let key = api
        .post(
            "/api/keys",
            json!({"name": "script", "user_id": user.body["user_id"], "expires_in_days": 30}),
        )
        .await;
    assert_eq!(key.status, 201, "{}", key.text);
    let script_key = key.body["key"].as_str().expect("key").to_string();
    secrets.push(script_key.clone());
    let near_miss = format!("{}x", &script_key[..script_key.len() - 1]);
    assert_eq!(
        Api::with_key(&relay, &near_miss)
            .get("/api/devices")
            .await
            .status,
        401
    );
    secrets.push(near_miss);
    let sink = receiver().await;
    let hook = api
        .post(
            "/api/webhooks",
            json!({"url": sink.url("/hook"), "events": ["*"], "description": "s"}),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", hook.text);
    secrets.push(hook.body["secret"].as_str().expect("secret").to_string());
    let id = hook.body["webhook_id"].as_str().expect("id");
    let rotated = api
        .post(&format!("/api/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    secrets.push(rotated.body["secret"].as_str().expect("secret").to_string());
    let test = api
        .post(&format!("/api/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(test.status, 202);
    assert!(
        sink.wait_until(std::time::Duration::from_secs(15), |r| !r.is_empty())
            .await,
        "the test event is delivered"
    );
    // The CLI: a new enrollment token and a key.
    let out = relay.cli(&["rotate-enrollment-token"]).expect("rotate");
    let token = String::from_utf8_lossy(&out.stdout)
        .rsplit(": ")
        .next()
        .expect("token")
        .trim()
        .to_string();
    secrets.push(token);
    let out = relay
        .cli(&[
            "keys",
            "create",
            "--user",
            user.body["user_id"].as_str().expect("id"),
            "--name",
            "cli-key",
        ])
        .expect("keys create");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("json");
    secrets.push(printed["key"].as_str().expect("key").to_string());
    // HTTPS traffic too.
    let (_, cert) = tls_cli(&relay);
    let pinned = pinned_client(&std::fs::read(cert).expect("pem"));
    let r = pinned
        .get(format!(
            "https://localhost:{}/api/devices",
            relay.https_port.expect("port")
        ))
        .bearer_auth(&relay.admin_key)
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), StatusCode::OK);

    // Nothing the API answers afterwards repeats a secret.
    let mut readable = String::new();
    for path in [
        "/api/keys",
        "/api/users",
        "/api/webhooks",
        "/api/audit?limit=500",
        "/api/relay",
    ] {
        readable.push_str(&api.get(path).await.text);
    }
    readable.push_str(&api.get(&format!("/api/webhooks/{id}")).await.text);
    assert!(relay.stop(), "clean stop");

    let log = std::fs::read_to_string(&relay.log_path).expect("log");
    assert!(log.lines().count() > 100, "the trace log was captured");
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "verbose levels were on"
    );
    for secret in &secrets {
        // The whole secret, and its random part alone (16 characters from
        // its middle), must appear in neither the log nor later answers.
        let tail = &secret[secret.len() - 16..];
        assert!(
            !log.contains(tail),
            "a secret ({}…) is in the log",
            &secret[..6]
        );
        assert!(
            !readable.contains(tail),
            "a secret ({}…) is returned after creation",
            &secret[..6]
        );
    }
    assert_private(&relay.data_dir());
    let mode = std::fs::metadata(relay.data_dir())
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_api_and_cli_changes_for_admins_only() {
    let relay = RelayProcess::start("").expect("the relay starts");
    let api = Api::new(&relay);
    let viewer = api
        .post("/api/users", json!({"name": "vera", "role": "viewer"}))
        .await;
    assert_eq!(viewer.status, 201);
    let viewer_id = viewer.body["user_id"].as_str().expect("id").to_string();
    let key = api
        .post(
            "/api/keys",
            json!({"name": "vera-key", "user_id": viewer_id, "expires_in_days": 7}),
        )
        .await;
    assert_eq!(key.status, 201);
    let vera = Api::with_key(&relay, key.body["key"].as_str().expect("key"));
    let key_id = key.body["key_id"].as_str().expect("key id").to_string();
    // A viewer's attempted change is refused and recorded as denied.
    let denied = vera
        .post(
            "/api/patch-exclusions",
            json!({"kind": "kb", "value": "KB5034441", "reason": "try"}),
        )
        .await;
    assert_eq!(denied.status, 403);
    // Reading is not a change: not recorded.
    assert_eq!(vera.get("/api/devices").await.status, 200);
    // Only admins read the trail.
    assert_eq!(vera.get("/api/audit").await.status, 403);
    let exclusion = api
        .post(
            "/api/patch-exclusions",
            json!({"kind": "kb", "value": "KB5034441", "reason": "breaks boot"}),
        )
        .await;
    assert_eq!(exclusion.status, 201);
    let exclusion_id = exclusion.body["exclusion_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        api.delete(&format!("/api/keys/{key_id}")).await.status,
        StatusCode::NO_CONTENT
    );
    relay
        .cli(&["users", "create", "--name", "carl", "--role", "operator"])
        .expect("cli user");

    // Page through everything two at a time.
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/audit?limit=2&cursor={c}"),
            None => "/api/audit?limit=2".to_string(),
        };
        let page = api.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.text);
        entries.extend(page.body["entries"].as_array().expect("entries").clone());
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let actions: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().expect("action").to_string(),
                e["outcome"].as_str().expect("outcome").to_string(),
            )
        })
        .collect();
    // Newest first: the CLI user, the revocation, the exclusion, the denied
    // attempt, the key, the user, and the bootstrap through the CLI.
    assert_eq!(
        actions,
        vec![
            ("POST /users".to_string(), "success".to_string()),
            ("DELETE /api/keys/{key_id}".into(), "success".into()),
            ("POST /api/patch-exclusions".into(), "success".into()),
            ("POST /api/patch-exclusions".into(), "denied".into()),
            ("POST /api/keys".into(), "success".into()),
            ("POST /api/users".into(), "success".into()),
            ("POST /bootstrap".into(), "success".into()),
        ],
        "{entries:#?}"
    );
    assert_eq!(entries[0]["actor"]["kind"], "cli");
    assert_eq!(entries[0]["source"], "control socket");
    assert!(entries[0]["actor"]["os_uid"].is_u64());
    assert_eq!(entries[1]["targets"], json!([key_id]));
    assert_eq!(entries[2]["targets"], json!([exclusion_id]));
    assert_eq!(entries[2]["actor"]["user_id"], relay.admin_user);
    assert_eq!(entries[2]["source"], "127.0.0.1");
    assert_eq!(entries[3]["actor"]["user_id"], viewer_id);
    assert_eq!(entries[3]["status"], 403);
    let mine = api.get(&format!("/api/audit?user_id={viewer_id}")).await;
    assert_eq!(mine.body["total"], 1, "{}", mine.text);
    assert_eq!(api.get("/api/audit?since=yesterday").await.status, 400);
    assert_eq!(
        api.get("/api/audit?since=2026-12-04T20:49:00").await.status,
        422,
        "a time without an offset is 422, as everywhere in the contract"
    );
    let text = serde_json::to_string(&entries).expect("json");
    assert!(!text.contains(&relay.admin_key[4..20]));
    assert!(!text.contains(&key.body["key"].as_str().expect("key")[4..20]));
    // The CLI reads the same trail.
    let out = relay.cli(&["audit", "--limit", "1"]).expect("cli audit");
    let cli: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(cli["entries"][0]["action"], "POST /users");
    // Data leaving the box is recorded although it is a read.
    assert_eq!(api.get("/api/bundles/export").await.status, 200);
    let newest = api.get("/api/audit?limit=1").await;
    assert_eq!(
        newest.body["entries"][0]["action"],
        "GET /api/bundles/export"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_pin_the_advertised_fingerprint_and_refuse_any_other() {
    let relay = RelayProcess::start_https("", None).expect("the relay starts");
    let port = relay.https_port.expect("port");
    let info = Api::new(&relay).get("/api/relay").await.body;
    let pin = info["tls_sha256"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    let url = format!("https://127.0.0.1:{port}");

    let client = RelayClient::new_pinned(&url, 4, &pin).expect("client");
    let mut fleet = Fleet::new(real_profiles(), 2, 11).expect("fleet");
    let enrolled = fleet
        .enroll_all(&client, &relay.enrollment_token)
        .await
        .expect("enroll");
    assert_eq!(enrolled.failed, 0, "{:?}", enrolled.errors);
    let round = fleet.checkin_round(&client).await.expect("checkin");
    assert_eq!(round.failed, 0, "{:?}", round.errors);

    // One bit off: the handshake fails and nothing is sent.
    let mut wrong = pin.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).expect("hex");
    let client = RelayClient::new_pinned(&url, 4, &wrong).expect("client");
    let mut strangers = Fleet::new(real_profiles(), 1, 12).expect("fleet");
    let enrolled = strangers
        .enroll_all(&client, &relay.enrollment_token)
        .await
        .expect("enroll runs");
    assert_eq!(enrolled.ok, 0, "a client with the wrong pin got through");
    assert_eq!(Api::new(&relay).get("/api/devices").await.body["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_enabled_admin_cannot_be_disabled() {
    let relay = RelayProcess::start("").expect("the relay starts");
    let api = Api::new(&relay);
    let me = relay.admin_user.clone();
    let r = api
        .post(&format!("/api/users/{me}/disable"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(
        api.get("/api/devices").await.status,
        200,
        "the admin key still works"
    );
    // With a second admin, the first may go, and its keys stop at once.
    let other = api
        .post("/api/users", json!({"name": "second", "role": "admin"}))
        .await;
    assert_eq!(other.status, 201);
    let r = api
        .post(&format!("/api/users/{me}/disable"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(api.get("/api/devices").await.status, 401);
}
