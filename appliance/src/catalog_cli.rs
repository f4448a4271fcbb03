//! `import-catalog` and `assess`: the update catalog from the command line.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::Method;
use indicatif::{ProgressBar, ProgressStyle};
use relay_core::RelayConfig;

use crate::control_client::{call_raw, expect_ok, open_in_process, relay_running};

/// Imports `file`: over the control socket when a relay runs (a spinner
/// while it works), else straight into the store with a progress bar of the
/// rows read. Quiet when stderr is not a terminal.
pub async fn import(config: &RelayConfig, file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let summary = if relay_running(config).await {
        let spinner = tty.then(|| {
            let s = ProgressBar::new_spinner().with_message("the relay is importing the catalog");
            s.enable_steady_tick(Duration::from_millis(120));
            s
        });
        let answer = call_raw(config, Method::POST, "/catalog", "application/zip", bytes).await;
        if let Some(s) = spinner {
            s.finish_and_clear();
        }
        let (status, body) = answer?;
        expect_ok(status, body)?
    } else {
        if !config.store.data_dir.join("store").exists() {
            anyhow::bail!(
                "no relay is running and there is no store at {} (check --config / --data-dir)",
                config.store.data_dir.display()
            );
        }
        let relay = open_in_process(config, &crate::settings::socket_path(config))?;
        let bar = tty.then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} parsing {bytes}/{total_bytes} {wide_bar} {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let progress = bar.clone().map(|bar| {
            Box::new(move |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            }) as Box<dyn FnMut(u64, u64) + Send>
        });
        let result = relay.import_catalog(bytes, progress).await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let summary = result.map_err(|e| anyhow::anyhow!("the catalog was refused: {e}"))?;
        relay.store.sync_now().await?;
        serde_json::to_value(summary)?
    };
    println!(
        "catalog {} imported: {} rows, {} products, {} KBs, {} CVEs in {:.1} s",
        summary["catalog_version"].as_str().unwrap_or("?"),
        summary["rows"],
        summary["products"],
        summary["kbs"],
        summary["cves"],
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Assesses a `systeminfo` file (through the running relay, or offline
/// against the data directory's catalog) and prints the result.
pub async fn assess(config: &RelayConfig, file: &Path, json: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (status, body) = call_raw(config, Method::POST, "/assess", "text/plain", bytes).await?;
    let body = expect_ok(status, body)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let missing = body["missing"].as_array().map_or(&[][..], Vec::as_slice);
    let cves = body["cves"].as_array().map_or(&[][..], Vec::as_slice);
    let exploited = cves
        .iter()
        .filter(|c| c["known_exploited"].as_bool() == Some(true))
        .count();
    println!(
        "{} (build {}), catalog {}",
        body["product"].as_str().unwrap_or("?"),
        body["build"],
        body["catalog_version"].as_str().unwrap_or("?")
    );
    println!(
        "installed: {}",
        body["installed_kbs"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default()
    );
    println!("missing updates: {}", missing.len());
    for m in missing {
        println!(
            "  {:<10} {:<10} {:>3} CVEs  {}",
            m["kb"].as_str().unwrap_or(""),
            m["severity"].as_str().unwrap_or(""),
            m["cves"].as_array().map_or(0, Vec::len),
            m["title"].as_str().unwrap_or("")
        );
    }
    println!("open CVEs: {} ({} known exploited)", cves.len(), exploited);
    for c in cves
        .iter()
        .filter(|c| c["known_exploited"].as_bool() == Some(true))
    {
        println!(
            "  {} {} known exploited",
            c["cve_id"].as_str().unwrap_or(""),
            c["severity"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
