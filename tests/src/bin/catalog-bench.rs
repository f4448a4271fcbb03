//! `catalog-bench`: the figures of the offline assessment, measured in one
//! process on this machine.
//!
//! - full catalog import: parse + validate `definitions.zip`, then stage it
//!   into a fresh store and make it durable; wall time of each step and the
//!   peak RSS of the process (`VmHWM`), which does nothing else
//! - start-up load of the stored catalog
//! - assessment time per device: `systeminfo` parse + assessment of every
//!   file of the shared data, repeated
//!
//! Run: `cargo run --release -p relay-tests --bin catalog-bench`.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use relay_core::catalog;
use relay_core::store::{Batch, Store, StoreOptions};
use relay_tests::catalog::{assess, decode_text, parse_systeminfo};
use relay_tests::profiles;

#[derive(Parser)]
struct Args {
    /// Times each systeminfo file is assessed.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
}

/// Peak and current resident set size of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = profiles::default_data_dir();
    let zip_path = data.join("msrc-catalog/definitions.zip");
    let (_, rss_start) = rss_kib();

    let started = Instant::now();
    let bytes = std::fs::read(&zip_path).with_context(|| zip_path.display().to_string())?;
    let parsed = catalog::parse_definitions(&bytes)?;
    let parse_s = started.elapsed().as_secs_f64();
    let summary = parsed.summary();

    let dir = tempfile::tempdir()?;
    let store = Store::open(&StoreOptions {
        path: dir.path().join("store"),
        cache_capacity_bytes: 64 << 20,
        flush_every_ms: 500,
        durable_acks: true,
    })?;
    let stored = Instant::now();
    let meta = {
        let mut writer = store.writer();
        let mut batch = Batch::new();
        let meta = catalog::stage_catalog(writer.store(), &mut batch, &parsed)?;
        writer.apply(batch)?;
        meta
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(store.sync_now())?;
    let store_s = stored.elapsed().as_secs_f64();
    drop(bytes);
    let (peak_import, _) = rss_kib();

    let loading = Instant::now();
    let loaded = catalog::load(&store)?.context("the catalog was stored")?;
    let load_s = loading.elapsed().as_secs_f64();
    anyhow::ensure!(loaded == parsed, "the stored catalog loads back equal");
    drop(parsed);
    let (_, rss_loaded) = rss_kib();

    println!(
        "catalog {}: {} rows, {} products, {} KBs, {} CVEs",
        summary.catalog_version, summary.rows, summary.products, summary.kbs, summary.cves
    );
    println!(
        "import: parse+validate {parse_s:.2} s, store+fsync {store_s:.2} s ({:.1} MiB in {} chunks), total {:.2} s",
        meta.bytes as f64 / 1048576.0,
        meta.chunks,
        parse_s + store_s
    );
    println!(
        "peak RSS during import: {:.0} MiB (process start {:.0} MiB)",
        peak_import as f64 / 1024.0,
        rss_start as f64 / 1024.0
    );
    println!(
        "load at start: {load_s:.2} s; RSS with the catalog loaded: {:.0} MiB; store on disk {:.1} MiB",
        rss_loaded as f64 / 1024.0,
        store.size_on_disk() as f64 / 1048576.0
    );

    let dir = data.join("windows-systeminfo");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
            Ok((name.unwrap_or_default(), decode_text(&std::fs::read(f)?)))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut total = 0.0;
    for (name, text) in &texts {
        let timer = Instant::now();
        let mut answer = None;
        for _ in 0..args.rounds {
            let info = parse_systeminfo(text)?;
            answer = Some(assess(&loaded, &info)?);
        }
        let per = timer.elapsed().as_secs_f64() * 1000.0 / args.rounds as f64;
        total += per;
        let a = answer.context("assessed")?;
        println!(
            "  {name}: {per:.2} ms ({} installed, {} missing, {} open CVEs)",
            a.installed_kbs.len(),
            a.missing.len(),
            a.cves.len()
        );
    }
    println!(
        "assessment per device: mean {:.2} ms over {} machines ({} rounds each)",
        total / texts.len() as f64,
        texts.len(),
        args.rounds
    );
    Ok(())
}
