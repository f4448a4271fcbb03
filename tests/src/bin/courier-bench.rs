//! Courier figures for one fleet, in one run: a relay whose webhook cannot
//! reach its endpoint enrolls and checks in a simulated fleet; then the
//! export (size, time), the MSP's verify and replay, an inbound bundle with
//! the full Microsoft catalog, the KEV list and the confirmation (size,
//! build time, import time, the relay's peak memory), and the empty export
//! that follows.
//!
//! `cargo run --release -p relay-tests --bin courier-bench -- --devices 1000`

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use relay_tests::harness::{free_port, relay_binary, RelayProcess};
use relay_tests::receiver::Receiver;
use relay_tests::{profiles, Fleet, RelayClient};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Simulated devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Check-in rounds before the export.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// Runs the binary as the MSP would and parses its JSON answer.
fn msp(args: &[&str]) -> anyhow::Result<(Value, Duration)> {
    let started = Instant::now();
    let out = Command::new(relay_binary()?).args(args).output()?;
    let took = started.elapsed();
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        took,
    ))
}

fn peak_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("a UTF-8 path")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = profiles::default_data_dir();
    let work = tempfile::tempdir()?;
    let relay = RelayProcess::start(
        "[limits]\nread_per_minute = 1000000\nread_burst = 100000\nwrite_per_minute = 1000000\nwrite_burst = 100000\n[webhooks]\nprobe_interval_s = 1\n[compliance]\ninterval_s = 2592000\n",
    )?;
    let http = reqwest::Client::new();
    let closed = format!("http://127.0.0.1:{}/hook", free_port()?);
    let created: Value = http
        .post(format!("{}/api/webhooks", relay.base_url))
        .bearer_auth(&relay.admin_key)
        .json(&json!({"url": closed, "events": ["*"]}))
        .send()
        .await?
        .json()
        .await?;
    ensure!(created["secret"].is_string(), "webhook: {created}");

    let profiles = profiles::load_profiles(&data)?;
    let client = RelayClient::new(&relay.base_url, 32)?;
    let mut fleet = Fleet::new(&profiles, args.devices, 1)?;
    let enrolled = fleet.enroll_all(&client, &relay.enrollment_token).await?;
    ensure!(
        enrolled.failed == 0,
        "enrollment failed: {:?}",
        enrolled.errors
    );
    for _ in 0..args.rounds {
        fleet.checkin_round(&client).await?;
    }
    let snapshot = http
        .post(format!("{}/api/compliance/snapshot", relay.base_url))
        .bearer_auth(&relay.admin_key)
        .json(&json!({}))
        .send()
        .await?;
    ensure!(
        snapshot.status().is_success(),
        "snapshot: {}",
        snapshot.status()
    );

    // Export over the API.
    let started = Instant::now();
    let export = http
        .get(format!("{}/api/bundles/export", relay.base_url))
        .bearer_auth(&relay.admin_key)
        .send()
        .await?;
    ensure!(export.status() == 200, "export: {}", export.status());
    let bytes = export.bytes().await?;
    let export_time = started.elapsed();
    let first = work.path().join("out-1.tar");
    std::fs::write(&first, &bytes)?;
    let relay_key = String::from_utf8(relay.cli(&["relay-key"])?.stdout)?
        .trim()
        .to_string();

    let (verified, verify_time) =
        msp(&["bundle", "verify", path_str(&first)?, "--trust", &relay_key])?;
    let events = verified["events"].as_u64().unwrap_or(0);
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let rx = Receiver::start(any, None).await?;
    let (replayed, replay_time) = msp(&[
        "bundle",
        "replay",
        path_str(&first)?,
        "--trust",
        &relay_key,
        "--to",
        &rx.url("/hook"),
    ])?;
    ensure!(
        replayed["accepted"].as_u64() == Some(events),
        "replay: {replayed}"
    );

    // Inbound: the full catalog, the KEV list and the confirmation.
    let key = work.path().join("msp.key");
    let out = Command::new(relay_binary()?)
        .args(["bundle", "keygen", "-o", path_str(&key)?])
        .output()?;
    ensure!(out.status.success(), "keygen failed");
    relay.cli(&[
        "trust",
        "add",
        &format!("{}.pub", key.display()),
        "--name",
        "bench",
    ])?;
    let changes = work.path().join("changes.json");
    let version = verified["summary"]["export_version"].as_u64().unwrap_or(0);
    std::fs::write(&changes, json!({"confirm_export": version}).to_string())?;
    let inbound = work.path().join("in-1.tar");
    let (_, build_time) = msp(&[
        "bundle",
        "build",
        "--key",
        path_str(&key)?,
        "--catalog",
        path_str(&data.join("msrc-catalog/definitions.zip"))?,
        "--kev",
        path_str(&data.join("kev/known_exploited_vulnerabilities.json"))?,
        "--changes",
        path_str(&changes)?,
        "--version",
        "1",
        "-o",
        path_str(&inbound)?,
    ])?;
    let inbound_bytes = std::fs::read(&inbound)?;
    let rss_before = relay.rss_kib().unwrap_or(0);
    let started = Instant::now();
    let imported = http
        .post(format!("{}/api/bundles", relay.base_url))
        .bearer_auth(&relay.admin_key)
        .header("content-type", "application/octet-stream")
        .body(inbound_bytes.clone())
        .timeout(Duration::from_secs(600))
        .send()
        .await?;
    let import_status = imported.status();
    let import_body: Value = imported.json().await.unwrap_or(Value::Null);
    let import_time = started.elapsed();
    ensure!(
        import_status == 200,
        "import: {import_status} {import_body}"
    );

    let second = work.path().join("out-2.tar");
    let started = Instant::now();
    relay.cli(&["export-bundle", path_str(&second)?])?;
    let second_time = started.elapsed();
    let (empty, _) = msp(&[
        "bundle",
        "verify",
        path_str(&second)?,
        "--trust",
        &relay_key,
    ])?;

    println!(
        "courier figures, {} devices, {} check-in rounds",
        args.devices, args.rounds
    );
    println!(
        "export:  {} bytes, {} events, parts {}, {:.2} s",
        bytes.len(),
        events,
        verified["parts"],
        export_time.as_secs_f64()
    );
    println!("verify:  {:.2} s (MSP process)", verify_time.as_secs_f64());
    println!(
        "replay:  {} events in {:.2} s, every one accepted",
        events,
        replay_time.as_secs_f64()
    );
    println!(
        "inbound: {} bytes (catalog {} rows, KEV {} entries), built in {:.2} s, imported in {:.2} s",
        inbound_bytes.len(),
        import_body["applied"]["catalog"]["rows"],
        import_body["applied"]["kev_entries"],
        build_time.as_secs_f64(),
        import_time.as_secs_f64()
    );
    println!(
        "relay memory: {} KiB before the import, {} KiB peak",
        rss_before,
        peak_kib(relay.pid())
    );
    println!(
        "next export: {} bytes, {} events, parts {}, {:.2} s",
        std::fs::metadata(&second)?.len(),
        empty["events"],
        empty["parts"],
        second_time.as_secs_f64()
    );
    Ok(())
}
