//! Backup under load and restore onto a fresh data directory, through the
//! real binary's CLI; damaged and foreign files are refused.

use relay_tests::harness::RelayProcess;
use serde_json::json;

use crate::support::{relay_with_fleet, Api};

const DEVICES: usize = 40;

async fn device_ids(api: &Api) -> Vec<String> {
    let mut ids: Vec<String> = api
        .all("/api/devices", "devices", 100)
        .await
        .iter()
        .map(|d| d["device_id"].as_str().expect("an id").to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_fleet_and_keys_on_a_fresh_box() {
    let (source, mut fleet, client) = relay_with_fleet(DEVICES, 61, "").await;
    let api = Api::new(&source);
    let extra = api
        .post("/api/keys", json!({"name": "ci", "expires_in_days": 30}))
        .await;
    assert_eq!(extra.status, 201, "{}", extra.text);
    let extra_key = extra.body["key"].as_str().expect("a key").to_string();

    // Check-ins keep landing while the backup is taken.
    let load = tokio::spawn(async move {
        for _ in 0..3 {
            fleet.checkin_round(&client).await.expect("check-in round");
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("relay.ppbackup");
    let file_arg = file.to_str().expect("utf-8 path");
    let out = source
        .cli(&["backup", file_arg])
        .expect("backup while running");
    assert!(String::from_utf8_lossy(&out.stdout).contains("backup written"));
    load.await.expect("load");
    let expected = device_ids(&api).await;
    assert_eq!(expected.len(), DEVICES);

    let mut fresh = RelayProcess::start("").expect("a fresh relay");
    let err = fresh
        .cli(&["restore", file_arg])
        .expect_err("restore while running");
    assert!(format!("{err:#}").contains("is running"), "{err:#}");

    assert!(fresh.stop(), "the fresh relay stops cleanly");
    let out = fresh.cli(&["restore", file_arg]).expect("restore");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("devices: {DEVICES}")), "{text}");
    fresh.launch().expect("the restored relay starts");

    let restored = Api::with_key(&fresh, &source.admin_key);
    assert_eq!(device_ids(&restored).await, expected);
    let with_extra = Api::with_key(&fresh, &extra_key);
    assert_eq!(with_extra.get("/api/devices?limit=1").await.status, 200);
    let old_fresh_key = Api::new(&fresh);
    assert_eq!(old_fresh_key.get("/api/devices?limit=1").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_foreign_backups_leave_the_store_as_it_was() {
    let (source, _fleet, _client) = relay_with_fleet(5, 62, "").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.ppbackup");
    source
        .cli(&["backup", good.to_str().expect("utf-8")])
        .expect("backup");
    let mut bytes = std::fs::read(&good).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let damaged = dir.path().join("damaged.ppbackup");
    std::fs::write(&damaged, &bytes).expect("write");
    let foreign = dir.path().join("foreign.ppbackup");
    std::fs::write(&foreign, b"{\"devices\": []}\n").expect("write");

    let mut target = RelayProcess::start("").expect("target relay");
    let before = device_ids(&Api::new(&target)).await;
    assert!(target.stop());
    for (file, words) in [
        (&damaged, "is damaged"),
        (&foreign, "not a PatchPilot relay backup"),
    ] {
        let err = target
            .cli(&["restore", file.to_str().expect("utf-8")])
            .expect_err("refused");
        let message = format!("{err:#}");
        assert!(message.contains(words), "{message}");
        assert!(
            message.contains("current store was not touched"),
            "{message}"
        );
    }
    target.launch().expect("the untouched relay starts");
    let api = Api::new(&target);
    assert_eq!(api.get("/api/devices").await.status, 200);
    assert_eq!(device_ids(&api).await, before);
}
