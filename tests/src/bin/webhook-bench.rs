//! Webhook outbox benchmark. In one run, against one loopback receiver:
//! bare sequential HTTP POSTs (the ceiling for one delivery in flight),
//! then the relay's signed deliveries of a backlog of queued events, and the
//! outbox's memory and disk use while that backlog waits.
//!
//! `cargo run --release -p relay-tests --bin webhook-bench -- --events 100000`

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use relay_tests::harness::{free_port, RelayProcess};
use relay_tests::receiver::Receiver;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Events queued while the endpoint is unreachable, then delivered.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Bare POSTs for the baseline.
    #[arg(long, default_value_t = 10_000)]
    bare: usize,
    /// The relay's sled cache (`store.cache_capacity_mib`; default 16).
    #[arg(long, default_value_t = 16)]
    cache_mib: u64,
    /// Concurrent producers queuing events.
    #[arg(long, default_value_t = 32)]
    producers: usize,
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn call(
    client: &reqwest::Client,
    relay: &RelayProcess,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let r = client
        .request(method, format!("{}{path}", relay.base_url))
        .bearer_auth(&relay.admin_key)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{path}: {status} {body}");
    Ok(body)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let rx = Receiver::start(any, None).await?;

    // 1. Bare POSTs of a delivery-sized body, one in flight.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let body = json!({"event_id": "evt_01HXYZ8K3M4N5P6Q7R8S9T0VWX", "sequence": 1, "type": "webhook.test",
        "occurred_at": "2026-04-26T09:14:22Z", "relay_id": "rly_01HXYZ8K3M4N5P6Q7R8S9T0VWX",
        "data": {"webhook_id": "whk_01HXYZ8K3M4N5P6Q7R8S9T0VWX", "message": "test event from the PatchPilot relay"}})
    .to_string();
    let started = Instant::now();
    for _ in 0..args.bare {
        let r = client
            .post(rx.url("/bare"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "bare POST answered {}", r.status());
    }
    let bare_rate = args.bare as f64 / started.elapsed().as_secs_f64();

    // 2. A relay whose webhook cannot reach its endpoint yet.
    let relay = RelayProcess::start(&format!(
        "[limits]\nread_per_minute = 1000000\nread_burst = 100000\nwrite_per_minute = 1000000\nwrite_burst = 100000\n[events]\nmax_events = 1000000\n[store]\ncache_capacity_mib = {}\n",
        args.cache_mib
    ))?;
    let api = reqwest::Client::new();
    let closed = format!("http://127.0.0.1:{}/hook", free_port()?);
    let created = call(
        &api,
        &relay,
        reqwest::Method::POST,
        "/api/webhooks",
        json!({"url": closed, "events": ["*"]}),
    )
    .await?;
    let id = created["webhook_id"]
        .as_str()
        .context("webhook id")?
        .to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = relay.rss_kib().unwrap_or(0);
    let disk_before = dir_bytes(&relay.data_dir());

    let queued = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for _ in 0..args.producers {
        let (api, next, url, key, total) = (
            api.clone(),
            next.clone(),
            format!("{}/api/webhooks/{id}/test", relay.base_url),
            relay.admin_key.clone(),
            args.events,
        );
        producers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < total {
                let r = api
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({}))
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 202, "test event answered {}", r.status());
            }
            Ok(())
        }));
    }
    for p in producers {
        p.await??;
    }
    let queue_rate = args.events as f64 / queued.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = call(
        &api,
        &relay,
        reqwest::Method::GET,
        "/api/relay",
        Value::Null,
    )
    .await;
    let depth = info
        .as_ref()
        .map(|i| i["webhooks"]["outbox_depth"].clone())
        .unwrap_or_default();
    let rss_queued = relay.rss_kib().unwrap_or(0);
    let disk_queued = dir_bytes(&relay.data_dir());

    // 3. The endpoint comes up: drain the backlog.
    let drained = Instant::now();
    call(
        &api,
        &relay,
        reqwest::Method::PATCH,
        &format!("/api/webhooks/{id}"),
        json!({"url": rx.url("/hook")}),
    )
    .await?;
    let all = rx
        .wait_until(Duration::from_secs(1800), |r| {
            r.iter().filter(|x| x.event == "webhook.test").count() >= args.events
        })
        .await;
    anyhow::ensure!(
        all,
        "only {} of {} deliveries arrived",
        rx.count() - args.bare,
        args.events
    );
    let delivery_rate = args.events as f64 / drained.elapsed().as_secs_f64();
    let rss_after = relay.rss_kib().unwrap_or(0);

    println!(
        "bare HTTP POSTs (one in flight):   {bare_rate:>9.0} /s  ({} requests)",
        args.bare
    );
    println!(
        "signed webhook deliveries:         {delivery_rate:>9.0} /s  ({} events, {:.0} % of bare)",
        args.events,
        100.0 * delivery_rate / bare_rate
    );
    println!(
        "events queued through the API:     {queue_rate:>9.0} /s  ({} producers, durable acks)",
        args.producers
    );
    println!(
        "outbox depth reported:             {depth}  (sled cache {} MiB)",
        args.cache_mib
    );
    println!("relay RSS:    before {rss_before} KiB, {} events queued {rss_queued} KiB (+{} KiB), after drain {rss_after} KiB", args.events, rss_queued.saturating_sub(rss_before));
    println!(
        "data dir:     before {} KiB, {} events queued {} KiB (+{} KiB, {:.0} B/event)",
        disk_before / 1024,
        args.events,
        disk_queued / 1024,
        disk_queued.saturating_sub(disk_before) / 1024,
        disk_queued.saturating_sub(disk_before) as f64 / args.events as f64
    );
    Ok(())
}
