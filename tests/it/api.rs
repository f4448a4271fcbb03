//! The API's answers checked against what the simulated agents sent.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use relay_tests::Fleet;
use serde_json::{json, Value};

use crate::support::{real_profiles, relay_with_fleet, Api};

fn is_critical(u: &relay_tests::protocol::Update) -> bool {
    serde_json::to_value(u.severity).ok() == Some(json!("critical"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_report_exactly_what_agents_sent() {
    let (relay, mut fleet, client) = relay_with_fleet(60, 7, "").await;
    fleet.checkin_round(&client).await.expect("second round");
    let api = Api::new(&relay);

    let listed = api.all("/api/devices", "devices", 25).await;
    assert_eq!(listed.len(), 60);
    let first = api.get("/api/devices?limit=5").await;
    assert_eq!(first.body["total"], 60);

    for agent in fleet.agents() {
        let id = agent.device_id().expect("enrolled");
        let sent = agent.last_sent_updates();
        let detail = api.get(&format!("/api/devices/{id}")).await;
        assert_eq!(detail.status, 200, "{}", detail.text);
        let d = &detail.body;
        assert_eq!(d["hostname"], agent.hostname());
        assert_eq!(d["os_family"], agent.os_family().as_str());
        assert_eq!(d["status"], "online");
        assert_eq!(d["updates_available"], sent.len(), "{}", agent.hostname());
        assert_eq!(
            d["critical_count"],
            sent.iter().filter(|u| is_critical(u)).count()
        );
        let got: BTreeSet<&str> = d["updates"]
            .as_array()
            .expect("updates")
            .iter()
            .filter_map(|u| u["update_id"].as_str())
            .collect();
        let want: BTreeSet<&str> = sent.iter().map(|u| u.update_id.as_str()).collect();
        assert_eq!(got, want);
        assert_eq!(
            d["reboot_pending"],
            agent.last_sent().expect("sent").reboot_pending
        );
        let summary = listed
            .iter()
            .find(|s| s["device_id"] == id)
            .expect("listed");
        assert_eq!(summary["updates_available"], d["updates_available"]);
    }

    let windows = fleet
        .agents()
        .iter()
        .filter(|a| a.os_family().as_str() == "windows")
        .count();
    let filtered = api.get("/api/devices?os_family=windows&limit=1").await;
    assert_eq!(filtered.body["total"], windows);
    let critical = fleet
        .agents()
        .iter()
        .filter(|a| a.last_sent_updates().iter().any(|u| is_critical(u)))
        .count();
    assert_eq!(
        api.get("/api/devices?has_critical=true").await.body["total"],
        critical
    );
    let host = fleet.agents()[0].hostname().to_lowercase();
    let q = api
        .get(&format!("/api/devices?q={}", &host[..host.len().min(6)]))
        .await;
    assert!(q.body["total"].as_u64().expect("total") >= 1);
    assert_eq!(
        api.get("/api/devices?status=offline").await.body["total"],
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vulnerabilities_cover_every_cve_agents_reported() {
    let (relay, fleet, _client) = relay_with_fleet(50, 11, "").await;
    let kev = std::path::Path::new(&relay_tests::profiles::default_data_dir())
        .join("kev/known_exploited_vulnerabilities.json");
    relay
        .cli(&["import-kev", kev.to_str().expect("utf-8 path")])
        .expect("KEV import");
    let api = Api::new(&relay);

    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for agent in fleet.agents() {
        for u in agent.last_sent_updates() {
            for c in &u.cves {
                want.entry(c.id.to_uppercase())
                    .or_default()
                    .insert(agent.device_id().expect("id").to_string());
            }
        }
    }
    let got = api
        .all("/api/vulnerabilities", "vulnerabilities", 500)
        .await;
    assert_eq!(got.len(), want.len());
    let kev_text = std::fs::read_to_string(&kev).expect("kev");
    let mut exploited = 0;
    let mut seen_not_exploited = false;
    for v in &got {
        let cve = v["cve_id"].as_str().expect("id");
        let devices: BTreeSet<String> = v["device_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|d| d.as_str().expect("id").to_string())
            .collect();
        assert_eq!(&devices, want.get(cve).expect("expected CVE"), "{cve}");
        assert_eq!(v["affected_devices"], devices.len());
        let in_kev = kev_text.contains(&format!("\"{cve}\""));
        assert_eq!(v["known_exploited"], in_kev, "{cve}");
        if in_kev {
            exploited += 1;
            assert!(!seen_not_exploited, "known-exploited CVEs come first");
        } else {
            seen_not_exploited = true;
        }
    }
    assert!(
        exploited > 0,
        "the real Windows profiles miss fixes for known-exploited CVEs"
    );
    let only = api
        .get("/api/vulnerabilities?known_exploited=true&limit=500")
        .await;
    assert_eq!(only.body["total"], exploited);
    let one = fleet.agents()[0].device_id().expect("id");
    let per_device = api
        .all(
            &format!("/api/vulnerabilities?device_id={one}"),
            "vulnerabilities",
            500,
        )
        .await;
    let expected = want.values().filter(|d| d.contains(one)).count();
    assert_eq!(per_device.len(), expected);
}

/// A KB that at least two Windows agents report.
fn shared_kb(fleet: &Fleet) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for a in fleet.agents() {
        for u in a.last_sent_updates() {
            if let Some(kb) = &u.kb {
                *counts.entry(kb.clone()).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(kb, _)| kb)
        .expect("windows agents report KBs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusions_change_counts_and_reach_agents() {
    let (relay, mut fleet, client) = relay_with_fleet(40, 3, "").await;
    let api = Api::new(&relay);
    let kb = shared_kb(&fleet);
    let digits = kb.trim_start_matches("KB");
    let before: Vec<Value> = api.all("/api/devices", "devices", 100).await;

    let created = api
        .post("/api/patch-exclusions", json!({"kind": "kb", "value": format!(" kb {digits} "), "os_family": "windows", "reason": "breaks the ERP client"}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["value"], kb);
    let exclusion_id = created.body["exclusion_id"]
        .as_str()
        .expect("id")
        .to_string();
    let dup = api
        .post(
            "/api/patch-exclusions",
            json!({"kind": "kb", "value": digits, "os_family": "windows"}),
        )
        .await;
    assert_eq!(dup.status, 409);
    assert!(dup.body["detail"]
        .as_str()
        .expect("detail")
        .contains(&exclusion_id));

    let after: Vec<Value> = api.all("/api/devices", "devices", 100).await;
    for agent in fleet.agents() {
        let id = agent.device_id().expect("id");
        let has = agent
            .last_sent_updates()
            .iter()
            .any(|u| u.kb.as_deref() == Some(kb.as_str()));
        let b = before
            .iter()
            .find(|d| d["device_id"] == id)
            .expect("before")["updates_available"]
            .as_u64()
            .expect("n");
        let a = after.iter().find(|d| d["device_id"] == id).expect("after")["updates_available"]
            .as_u64()
            .expect("n");
        assert_eq!(a + u64::from(has), b, "{}", agent.hostname());
        if has {
            let detail = api.get(&format!("/api/devices/{id}")).await;
            let row = detail.body["updates"]
                .as_array()
                .expect("updates")
                .iter()
                .find(|u| u["kb"] == kb.as_str())
                .expect("row")
                .clone();
            assert_eq!(row["excluded"], true);
            assert_eq!(row["exclusion_id"], exclusion_id.as_str());
        }
    }

    fleet.checkin_round(&client).await.expect("round");
    for agent in fleet.agents() {
        let told = agent
            .last_response()
            .expect("answered")
            .exclusions
            .iter()
            .any(|e| e.value == kb);
        assert_eq!(
            told,
            agent.os_family().as_str() == "windows",
            "{}",
            agent.hostname()
        );
    }
    let vulns = api
        .all("/api/vulnerabilities", "vulnerabilities", 500)
        .await;
    assert!(
        vulns.iter().any(|v| v["fixed_by"]
            .as_array()
            .expect("fixes")
            .iter()
            .any(|f| f == kb.as_str())),
        "its CVEs stay open"
    );

    assert_eq!(
        api.delete(&format!("/api/patch-exclusions/{exclusion_id}"))
            .await
            .status,
        204
    );
    assert_eq!(
        api.delete(&format!("/api/patch-exclusions/{exclusion_id}"))
            .await
            .status,
        404
    );
    let restored = api.get("/api/patch-exclusions").await;
    assert_eq!(restored.body["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_never_repeats_or_skips_while_agents_enroll() {
    let (relay, _fleet, client) = relay_with_fleet(30, 5, "").await;
    let api = Api::new(&relay);
    let existing: HashSet<String> = api
        .all("/api/devices", "devices", 500)
        .await
        .iter()
        .map(|d| d["device_id"].as_str().expect("id").to_string())
        .collect();

    let token = relay.enrollment_token.clone();
    let enroller = tokio::spawn(async move {
        let mut more = Fleet::new(real_profiles(), 40, 99).expect("fleet");
        more.enroll_all(&client, &token).await.expect("enroll")
    });
    let mut seen = Vec::new();
    let mut url = "/api/devices?limit=7".to_string();
    loop {
        let page = api.get(&url).await;
        seen.extend(
            page.body["devices"]
                .as_array()
                .expect("list")
                .iter()
                .map(|d| d["device_id"].as_str().expect("id").to_string()),
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        match page.body["next_cursor"].as_str() {
            Some(c) => url = format!("/api/devices?limit=7&cursor={c}"),
            None => break,
        }
    }
    let report = enroller.await.expect("enroller");
    assert_eq!(report.failed, 0);
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a device was listed twice");
    assert!(
        existing.iter().all(|id| unique.contains(id)),
        "a device that existed was skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboots_are_dispatched_reported_and_listed() {
    let (relay, mut fleet, client) =
        relay_with_fleet(12, 21, "[reboot]\ndispatch_grace_s = 600\n").await;
    let api = Api::new(&relay);
    let target = fleet.agents()[0].device_id().expect("id").to_string();
    let other = fleet.agents()[1].device_id().expect("id").to_string();

    let past = api
        .post(
            &format!("/api/reboot-management/{target}/schedule"),
            json!({"at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(past.status, 422);
    let far = time::OffsetDateTime::now_utc() + time::Duration::days(31);
    let far = far
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    assert_eq!(
        api.post(
            &format!("/api/reboot-management/{target}/schedule"),
            json!({"at": far})
        )
        .await
        .status,
        422
    );
    let unknown = "dev_01HXYZ8K3M4N5P6Q7R8S9T0VWX";
    assert_eq!(
        api.post(
            &format!("/api/reboot-management/{unknown}/schedule"),
            json!({"at": "2099-01-01T00:00:00Z"})
        )
        .await
        .status,
        404
    );

    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let soon_local = soon.to_offset(time::UtcOffset::from_hms(2, 0, 0).expect("offset"));
    let at = soon_local
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let first = api
        .post(
            &format!("/api/reboot-management/{target}/schedule"),
            json!({"at": at, "message": "first"}),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let replaced = api
        .post(
            &format!("/api/reboot-management/{target}/schedule"),
            json!({"at": at, "message": "Patch night", "force": true}),
        )
        .await;
    assert_eq!(replaced.status, 201);
    assert!(replaced.body["at"].as_str().expect("at").ends_with('Z'));
    let schedule_id = replaced.body["schedule_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        api.post(
            &format!("/api/reboot-management/{other}/schedule"),
            json!({"at": "2099-01-01T00:00:00Z"})
        )
        .await
        .status,
        422
    );
    let later = (time::OffsetDateTime::now_utc() + time::Duration::days(2))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    assert_eq!(
        api.post(
            &format!("/api/reboot-management/{other}/schedule"),
            json!({"at": later})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        api.delete(&format!("/api/reboot-management/{other}/schedule"))
            .await
            .status,
        204
    );
    assert_eq!(
        api.delete(&format!("/api/reboot-management/{other}/schedule"))
            .await
            .status,
        404
    );

    let listed = api.all("/api/reboot-management", "devices", 50).await;
    assert!(listed.iter().any(|d| d["device_id"] == target.as_str()
        && d["scheduled_reboot"]["schedule_id"] == schedule_id.as_str()));

    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    fleet.checkin_round(&client).await.expect("round");
    let agent = fleet.agent_by_device_id(&target).expect("agent");
    let order = agent
        .last_response()
        .expect("answer")
        .reboot
        .clone()
        .expect("the reboot is handed over");
    assert_eq!(order.schedule_id, schedule_id);
    assert_eq!(order.message.as_deref(), Some("Patch night"));
    assert!(order.force);
    assert!(fleet
        .agent_by_device_id(&other)
        .expect("other")
        .last_response()
        .expect("answer")
        .reboot
        .is_none());

    fleet.checkin_round(&client).await.expect("round");
    let detail = api.get(&format!("/api/devices/{target}")).await;
    assert!(detail.body["scheduled_reboot"].is_null(), "{}", detail.text);
    assert_eq!(detail.body["reboot_pending"], false);
    assert_eq!(
        api.delete(&format!("/api/reboot-management/{target}/schedule"))
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_snapshots_in_json_and_csv() {
    let (relay, _fleet, _client) = relay_with_fleet(20, 13, "").await;
    let api = Api::new(&relay);
    let taken = api.post("/api/compliance/snapshot", json!({})).await;
    assert_eq!(taken.status, 201, "{}", taken.text);
    let summary = &taken.body["summary"];
    assert_eq!(summary["total_devices"], 20);
    assert_eq!(
        summary["compliant"].as_u64().expect("n") + summary["non_compliant"].as_u64().expect("n"),
        20
    );
    let non_compliant = taken.body["devices"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|d| d["compliant"] == false)
        .count();
    assert!(
        non_compliant > 0,
        "real Windows machines miss old critical updates"
    );

    let csv = reqwest::Client::new()
        .get(format!(
            "{}/api/compliance/snapshot?format=csv",
            relay.base_url
        ))
        .bearer_auth(&relay.admin_key)
        .send()
        .await
        .expect("csv");
    assert!(csv.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/csv"));
    let text = csv.text().await.expect("text");
    assert!(text.starts_with("device_id,hostname,compliant,reasons\r\n"));
    assert_eq!(text.matches("\r\n").count(), 21);
    assert!(text.contains("critical_update_missing: KB"));

    let listed = api.get("/api/compliance/snapshots").await;
    assert_eq!(listed.body["total"], 1);
    let id = taken.body["snapshot_id"].as_str().expect("id");
    assert_eq!(
        api.get(&format!("/api/compliance/snapshots/{id}"))
            .await
            .body["snapshot_id"],
        id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_users_and_roles_work_end_to_end() {
    let (relay, _fleet, _client) = relay_with_fleet(3, 1, "").await;
    let admin = Api::new(&relay);
    let user = admin
        .post(
            "/api/users",
            json!({"name": "viewer-vic", "role": "viewer"}),
        )
        .await;
    assert_eq!(user.status, 201);
    let user_id = user.body["user_id"].as_str().expect("id");
    let key = admin
        .post(
            "/api/keys",
            json!({"name": "vic-laptop", "user_id": user_id, "expires_in_days": 30}),
        )
        .await;
    assert_eq!(key.status, 201, "{}", key.text);
    let secret = key.body["key"].as_str().expect("key").to_string();
    assert!(secret.starts_with("ppk_") && secret.len() >= 36);
    assert_eq!(
        admin
            .post(
                "/api/keys",
                json!({"name": "vic-laptop", "user_id": user_id, "expires_in_days": 30})
            )
            .await
            .status,
        409
    );
    assert_eq!(
        admin
            .post(
                "/api/keys",
                json!({"name": "x", "user_id": user_id, "expires_in_days": 400})
            )
            .await
            .status,
        422
    );
    assert_eq!(
        admin
            .post("/api/keys", json!({"name": "x", "user_id": user_id}))
            .await
            .status,
        422
    );

    let listed = admin.get("/api/keys").await;
    assert!(
        !listed.text.contains(&secret[4..]),
        "a key is never shown again"
    );

    let viewer = Api::with_key(&relay, &secret);
    assert_eq!(viewer.get("/api/devices").await.status, 200);
    assert_eq!(
        viewer
            .post(
                "/api/patch-exclusions",
                json!({"kind": "kb", "value": "KB1"})
            )
            .await
            .status,
        403
    );
    assert_eq!(viewer.get("/api/keys").await.status, 403);

    // The CLI reaches the running relay over its control socket.
    let out = relay.cli(&["keys", "list"]).expect("keys list");
    assert!(String::from_utf8_lossy(&out.stdout).contains("vic-laptop"));

    assert_eq!(
        admin
            .post(&format!("/api/users/{user_id}/disable"), json!({}))
            .await
            .status,
        200
    );
    let refused = viewer.get("/api/devices").await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.headers["www-authenticate"], "Bearer");

    let key2 = admin
        .post("/api/keys", json!({"name": "ops", "expires_in_days": 1}))
        .await;
    let key2_id = key2.body["key_id"].as_str().expect("id");
    let ops = Api::with_key(&relay, key2.body["key"].as_str().expect("key"));
    assert_eq!(ops.get("/api/devices").await.status, 200);
    relay
        .cli(&["keys", "revoke", key2_id])
        .expect("CLI revoke while serving");
    assert_eq!(ops.get("/api/devices").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_per_key_only() {
    let (relay, _fleet, _client) = relay_with_fleet(2, 2, "").await;
    let admin = Api::new(&relay);
    let limited = admin
        .post("/api/keys", json!({"name": "tiny", "expires_in_days": 1, "rate_limit": {"read_per_minute": 6, "read_burst": 3, "write_per_minute": 6, "write_burst": 1}}))
        .await;
    assert_eq!(limited.status, 201, "{}", limited.text);
    let tiny = Api::with_key(&relay, limited.body["key"].as_str().expect("key"));
    for remaining in [2, 1, 0] {
        let ok = tiny.get("/api/devices").await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.headers["ratelimit-limit"], "3");
        assert_eq!(
            ok.headers["ratelimit-remaining"],
            remaining.to_string().as_str()
        );
    }
    let refused = tiny.get("/api/devices").await;
    assert_eq!(refused.status, 429);
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert!((1..=10).contains(&retry), "retry after {retry}");
    assert_eq!(refused.headers["content-type"], "application/problem+json");
    assert_eq!(
        admin.get("/api/devices").await.status,
        200,
        "another key is not slowed"
    );

    // Failed authentication from one address: 429 past 20 a minute, but a
    // valid key from the same address still gets through.
    let bad = Api::with_key(&relay, "ppk_notarealkeynotarealkeynotarealkey12");
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(bad.get("/api/devices").await.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(statuses[24], 429);
    assert_eq!(admin.get("/api/devices").await.status, 200);
}
