//! SIGKILL during a check-in load: no acknowledged check-in is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use relay_tests::harness::RelayProcess;
use serde_json::json;

use crate::support::Api;

const AGENTS: usize = 16;
const KILLS: usize = 6;

async fn enroll(client: &reqwest::Client, relay: &RelayProcess, i: usize) -> (String, String) {
    let body = json!({"enrollment_token": relay.enrollment_token, "machine_id": format!("crash-{i}"), "hostname": format!("CRASH-{i:02}"),
        "os_family": "linux", "os_name": "Debian GNU/Linux 12", "os_version": "12", "agent_version": "0"});
    let r: serde_json::Value = client
        .post(format!("{}/agent/v1/enroll", relay.base_url))
        .json(&body)
        .send()
        .await
        .expect("enroll")
        .json()
        .await
        .expect("json");
    (
        r["device_id"].as_str().expect("id").into(),
        r["agent_token"].as_str().expect("token").into(),
    )
}

fn checkin_body(i: usize, seq: u64) -> serde_json::Value {
    // Each check-in carries a distinct state: its sequence as the agent
    // version and as the version of one available package.
    json!({"hostname": format!("CRASH-{i:02}"), "os_family": "linux", "os_name": "Debian GNU/Linux 12", "os_version": "12",
        "agent_version": seq.to_string(),
        "available_updates": [{"update_id": format!("openssl:{seq}"), "kb": null, "package": "openssl", "title": format!("openssl {seq}"),
            "severity": "important", "cves": [{"id": "CVE-2024-5535", "cvss": 9.1}], "released_at": null}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_checkins_survive_sigkill() {
    let mut relay = RelayProcess::start("").expect("relay");
    let client = reqwest::Client::new();
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        agents.push(enroll(&client, &relay, i).await);
    }
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..AGENTS).map(|_| AtomicU64::new(0)).collect());
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut total_acked = 0u64;

    for round in 0..KILLS {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (i, (_, token)) in agents.iter().enumerate() {
            let (client, url, token) = (
                client.clone(),
                format!("{}/agent/v1/checkin", relay.base_url),
                token.clone(),
            );
            let (acked, stop, count) = (acked.clone(), stop.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                let mut seq = acked[i].load(Ordering::SeqCst) + 1;
                while !stop.load(Ordering::SeqCst) {
                    let sent = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&checkin_body(i, seq))
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 200 => {
                            acked[i].store(seq, Ordering::SeqCst);
                            count.fetch_add(1, Ordering::SeqCst);
                            seq += 1;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..900))).await;
        relay.kill();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("load task");
        }
        total_acked += count.load(Ordering::SeqCst);

        relay.launch().expect("the relay restarts after SIGKILL");
        let api = Api::new(&relay);
        for (i, (device, _)) in agents.iter().enumerate() {
            let d = api.get(&format!("/api/devices/{device}")).await;
            let stored: u64 = d.body["agent_version"]
                .as_str()
                .expect("version")
                .parse()
                .expect("number");
            let want = acked[i].load(Ordering::SeqCst);
            assert!(
                stored >= want,
                "round {round}: device {i} lost acknowledged check-in {want} (store has {stored})"
            );
            let updates = d.body["updates"].as_array().expect("updates");
            assert_eq!(
                updates[0]["update_id"],
                format!("openssl:{stored}"),
                "the state matches the version"
            );
        }
    }
    assert!(
        total_acked > 100,
        "the load acknowledged only {total_acked} check-ins"
    );
    eprintln!("crash test: {KILLS} SIGKILLs, {total_acked} acknowledged check-ins, none lost");
}
