//! SIGKILL while events are produced and delivered: every acknowledged
//! event reaches the receiver at least once; duplicates are counted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use relay_tests::harness::RelayProcess;

use crate::support::Api;
use crate::webhooks::{create, receiver, FAST};

const KILLS: usize = 10;
const PRODUCERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_delivered_despite_sigkill() {
    let mut relay = RelayProcess::start(FAST).expect("relay");
    let rx = receiver().await;
    let (id, secret) = create(
        &Api::new(&relay),
        &rx.url("/hook"),
        serde_json::json!(["*"]),
    )
    .await;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4242);

    for round in 0..KILLS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..PRODUCERS {
            let (client, url, key) = (
                reqwest::Client::new(),
                format!("{}/api/webhooks/{id}/test", relay.base_url),
                relay.admin_key.clone(),
            );
            let (acked, stop) = (acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let sent = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&serde_json::json!({}))
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    let Ok(reply) = sent else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    if reply.status() == 202 {
                        let body: serde_json::Value = reply.json().await.expect("json");
                        let event = body["event_id"].as_str().expect("event id").to_string();
                        acked.lock().expect("lock").insert(event);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1200))).await;
        relay.kill();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("producer");
        }
        relay
            .launch()
            .unwrap_or_else(|e| panic!("round {round}: the relay restarts after SIGKILL: {e}"));
    }

    let want = acked.lock().expect("lock").clone();
    let all_in = rx
        .wait_until(Duration::from_secs(60), |r| {
            let got: HashSet<String> = r.iter().map(|x| x.event_id()).collect();
            want.iter().all(|e| got.contains(e))
        })
        .await;
    let receipts = rx.receipts();
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for r in &receipts {
        *per_event.entry(r.event_id()).or_default() += 1;
    }
    let missing = want.iter().filter(|e| !per_event.contains_key(*e)).count();
    assert!(
        all_in && missing == 0,
        "{missing} acknowledged events never arrived"
    );
    assert!(
        receipts.iter().all(|r| r.signed_by(&secret)),
        "every delivery verifies"
    );
    assert!(
        want.len() > 200,
        "the load acknowledged only {} events",
        want.len()
    );
    let duplicates = receipts.len() - per_event.len();
    eprintln!(
        "webhook kill test: {KILLS} SIGKILLs, {} acknowledged events, {} received ({} unacknowledged but recorded), {} deliveries, {duplicates} duplicates ({:.2} %), 0 missing",
        want.len(),
        per_event.len(),
        per_event.len() - want.len(),
        receipts.len(),
        100.0 * duplicates as f64 / receipts.len().max(1) as f64
    );
}
