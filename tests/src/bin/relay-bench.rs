//! `relay-bench`: the relay's performance figures, measured in one run on
//! loopback and printed as ratios against baselines from the same run.
//!
//! - `GET /api/devices?limit=50` at 10,000 devices beside a bare axum handler
//! - durable check-ins per second beside the same with durability off
//! - the relay's RSS with 10,000 devices
//! - p99 latency of a reconnect storm: every device checks in once, spread
//!   over a window (60 s by default)
//!
//! Run: `cargo run --release -p relay-tests --bin relay-bench`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::{Rng, SeedableRng};
use relay_tests::harness::{free_port, RelayProcess};
use relay_tests::{profiles, Behaviour, Fleet, RelayClient};

#[derive(Parser)]
struct Args {
    /// Devices enrolled for the list and storm figures.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Seconds each throughput measurement runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Agents checking in concurrently in the check-in rate figures.
    #[arg(long, default_value_t = 256)]
    checkin_agents: usize,
    /// Seconds the reconnect storm is spread over.
    #[arg(long, default_value_t = 60)]
    storm_seconds: u64,
    /// Internal: serve the bare axum baseline on this port.
    #[arg(long, hide = true)]
    bare_server: Option<u16>,
}

const LIMITS: &str = "[limits]\nread_per_minute = 1000000\nread_burst = 1000000\nwrite_per_minute = 1000000\nwrite_burst = 1000000\n";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(port) = args.bare_server {
        return runtime.block_on(bare_server(port));
    }
    runtime.block_on(run(args))
}

/// The baseline: an axum handler answering a fixed JSON body of the size of
/// a 50-device page.
async fn bare_server(port: u16) -> anyhow::Result<()> {
    let device = serde_json::json!({"device_id": "dev_01HXYZ8K3M4N5P6Q7R8S9T0VWX", "hostname": "FINANCE-LAPTOP-04",
        "os_family": "windows", "os_name": "Windows 11 Pro", "status": "online", "last_seen": "2026-04-26T09:14:22Z",
        "updates_available": 7, "critical_count": 1});
    let body =
        serde_json::json!({"devices": vec![device; 50], "total": 10000, "next_cursor": "ZGV2XzAx"})
            .to_string();
    let app = axum::Router::new().route(
        "/api/devices",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Requests per second of `GET url` with `concurrency` connections.
async fn get_rate(url: &str, key: &str, concurrency: usize, seconds: u64) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key, done, stop) = (
            client.clone(),
            url.to_string(),
            key.to_string(),
            done.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(resp) = client.get(&url).bearer_auth(&key).send().await else {
                    continue;
                };
                let ok = resp.status().is_success();
                if resp.bytes().await.is_ok() && ok {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    Ok(measure(seconds, &stop, &done, tasks).await)
}

/// Lets the load `tasks` run for `seconds`, stops them, and returns the
/// completed requests per second.
async fn measure(
    seconds: u64,
    stop: &AtomicBool,
    done: &AtomicU64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> f64 {
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let count = done.load(Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    count as f64 / elapsed
}

fn small_checkin(seq: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"hostname": "BENCH", "os_family": "linux", "os_name": "Debian GNU/Linux 12",
        "os_version": "12", "agent_version": seq.to_string(), "ip_addresses": ["127.0.0.1"],
        "available_updates": [{"update_id": format!("openssl:{seq}"), "kb": null, "package": "openssl",
            "title": "openssl", "severity": "important", "cves": [{"id": "CVE-2024-5535", "cvss": 9.1}], "released_at": null}]}))
    .unwrap_or_default()
}

/// Check-ins per second, each with a distinct body (so sled writes).
async fn checkin_rate(relay: &RelayProcess, agents: usize, seconds: u64) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(agents)
        .build()?;
    let mut tokens = Vec::new();
    for i in 0..agents {
        let body = serde_json::json!({"enrollment_token": relay.enrollment_token, "machine_id": format!("bench-{i}"),
            "hostname": format!("BENCH-{i}"), "os_family": "linux", "os_name": "Debian", "os_version": "12", "agent_version": "0"});
        let r: serde_json::Value = client
            .post(format!("{}/agent/v1/enroll", relay.base_url))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        tokens.push(r["agent_token"].as_str().context("token")?.to_string());
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(1));
    let url = format!("{}/agent/v1/checkin", relay.base_url);
    let mut tasks = Vec::new();
    for token in tokens {
        let (client, url, done, stop, seq) = (
            client.clone(),
            url.clone(),
            done.clone(),
            stop.clone(),
            seq.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let body = small_checkin(seq.fetch_add(1, Ordering::Relaxed));
                let sent = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    Ok(measure(seconds, &stop, &done, tasks).await)
}

/// Every agent checks in once at a random moment within `window`.
async fn storm(
    fleet: &Fleet,
    base_url: &str,
    window: Duration,
) -> anyhow::Result<(Vec<f64>, usize)> {
    let client = reqwest::Client::new();
    let behaviour = Behaviour::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(60);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for agent in fleet.agents() {
        let at = Duration::from_secs_f64(rng.gen_range(0.0..window.as_secs_f64()));
        let body = agent.checkin_body(&behaviour);
        let token = agent.agent_token().context("enrolled")?.to_string();
        let (client, url) = (client.clone(), format!("{base_url}/agent/v1/checkin"));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((started + at).into()).await;
            let t0 = Instant::now();
            let ok = client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = match ok {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (t0.elapsed().as_secs_f64() * 1000.0, ok)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (ms, ok) = t.await?;
        if ok {
            latencies.push(ms);
        } else {
            failed += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, failed))
}

async fn timed_get(url: &str, key: &str) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.bytes().await?;
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

async fn timed_post(url: &str, key: &str) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .json(&serde_json::json!({}))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.bytes().await?;
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "relay-bench: {} devices, {} s per measurement, {} connections",
        args.devices, args.seconds, args.concurrency
    );

    let port = free_port()?;
    let mut bare = std::process::Command::new(std::env::current_exe()?)
        .args(["--bare-server", &port.to_string()])
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bare_rps = get_rate(
        &format!("http://127.0.0.1:{port}/api/devices?limit=50"),
        "x",
        args.concurrency,
        args.seconds,
    )
    .await;
    let _ = bare.kill();
    let _ = bare.wait();
    let bare_rps = bare_rps?;

    let relay = RelayProcess::start(LIMITS)?;
    let idle_rss = relay.rss_kib().unwrap_or(0);
    let client = RelayClient::new(&relay.base_url, 64)?;
    let profiles = profiles::load_profiles(&profiles::default_data_dir())?;
    let mut fleet = Fleet::new(&profiles, args.devices, 42)?;
    let t0 = Instant::now();
    let enrolled = fleet.enroll_all(&client, &relay.enrollment_token).await?;
    let enroll_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let round = fleet.checkin_round(&client).await?;
    let seed_s = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        enrolled.failed == 0 && round.failed == 0,
        "seeding failed: {:?} {:?}",
        enrolled.errors,
        round.errors
    );
    let rss_10k = relay.rss_kib().unwrap_or(0);
    println!(
        "seeded {} devices: enroll {enroll_s:.1} s, first check-ins {seed_s:.1} s",
        args.devices
    );

    let list_rps = get_rate(
        &format!("{}/api/devices?limit=50", relay.base_url),
        &relay.admin_key,
        args.concurrency,
        args.seconds,
    )
    .await?;
    let rss_after_reads = relay.rss_kib().unwrap_or(0);
    let vulns_ms = timed_get(
        &format!("{}/api/vulnerabilities?limit=50", relay.base_url),
        &relay.admin_key,
    )
    .await?;
    let snapshot_ms = timed_post(
        &format!("{}/api/compliance/snapshot", relay.base_url),
        &relay.admin_key,
    )
    .await?;

    let (latencies, failed) = storm(
        &fleet,
        &relay.base_url,
        Duration::from_secs(args.storm_seconds),
    )
    .await?;
    let rss_storm = relay.rss_kib().unwrap_or(0);
    drop(relay);

    let durable = RelayProcess::start(LIMITS)?;
    let durable_rate = checkin_rate(&durable, args.checkin_agents, args.seconds).await?;
    drop(durable);
    let loose = RelayProcess::start(&format!("{LIMITS}[store]\ndurable_acks = false\n"))?;
    let loose_rate = checkin_rate(&loose, args.checkin_agents, args.seconds).await?;
    drop(loose);

    println!();
    println!("GET /api/devices?limit=50 at {} devices: {list_rps:.0} req/s; bare axum handler: {bare_rps:.0} req/s; ratio {:.2} (aim >= 0.35)", args.devices, list_rps / bare_rps);
    println!("check-ins/s durable (fsync, group commit): {durable_rate:.0}; durability off: {loose_rate:.0}; ratio {:.2} (aim >= 0.5)", durable_rate / loose_rate);
    println!("relay RSS: idle {:.1} MiB; {} devices {:.1} MiB; after list load {:.1} MiB; after storm {:.1} MiB (aim < 48 MiB)",
        idle_rss as f64 / 1024.0, args.devices, rss_10k as f64 / 1024.0, rss_after_reads as f64 / 1024.0, rss_storm as f64 / 1024.0);
    println!("single requests at {} devices: GET /api/vulnerabilities?limit=50 {vulns_ms:.0} ms; POST /api/compliance/snapshot {snapshot_ms:.0} ms", args.devices);
    println!("reconnect storm: {} check-ins over {} s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, failed {failed} (aim p99 < 250 ms)",
        latencies.len() + failed, args.storm_seconds, percentile(&latencies, 0.5), percentile(&latencies, 0.99), percentile(&latencies, 1.0));
    Ok(())
}
