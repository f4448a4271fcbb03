//! mdns-bench: discovery on a simulated LAN. Starts the relay in one
//! network namespace and simulated agents in mDNS mode (no relay URL) in
//! others, then prints the time from agent start to visible in
//! `/api/devices` (median, max) and the relay's CPU and memory while the
//! agents announce and check in. Needs root and iproute2.

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use relay_tests::harness::RelayProcess;
use relay_tests::netns::{Host, Lan, HOST_IF};

/// Discovery benchmark on a simulated LAN.
#[derive(Debug, Parser)]
struct Cli {
    /// Agents in all.
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Agent hosts (namespaces); the agents are spread over them.
    #[arg(long, default_value_t = 10)]
    hosts: usize,
    /// Seconds between check-ins of each agent.
    #[arg(long, default_value_t = 5)]
    interval: u64,
    /// Seconds to measure the relay under announcements and check-ins.
    #[arg(long, default_value_t = 30)]
    measure: u64,
}

struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn devices(host: &Host, key: &str) -> anyhow::Result<Vec<(String, String)>> {
    let (code, body) = host.http(
        "GET",
        "http://127.0.0.1:8080/api/devices?limit=500",
        Some(key),
    )?;
    if code != 200 {
        bail!("/api/devices answered {code}");
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["devices"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["device_id"].as_str().unwrap_or_default().to_string(),
                        d["hostname"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.hosts == 0 || cli.hosts > 200 || cli.agents == 0 {
        bail!("--hosts must be 1..=200 and --agents at least 1");
    }
    let fleet_sim = std::env::current_exe()?.with_file_name("fleet-sim");
    let cache = relay_tests::profiles::default_cache_path();
    let warm = std::process::Command::new(&fleet_sim)
        .args(["--profiles-only", "--cache"])
        .arg(&cache)
        .stdout(Stdio::null())
        .status()
        .context("fleet-sim (build it with the tests package)")?;
    if !warm.success() {
        bail!("fleet-sim --profiles-only failed");
    }

    let mut lan = Lan::new()?;
    let relay_host = lan.add_host(1)?;
    let config = "[discovery]\nenabled = true\ninterfaces = [\"eth0\"]\n";
    let relay = RelayProcess::start_on(Some(relay_host.clone()), config)?;
    let pid = relay.pid().context("relay pid")?;
    let mut hosts = Vec::new();
    for k in 0..cli.hosts {
        hosts.push(lan.add_host(11 + k as u8)?);
    }

    let rss_idle = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let cpu_start = proc_cpu_ticks(pid).unwrap_or(0);
    let started = Instant::now();
    let mut spawned: HashMap<String, Instant> = HashMap::new();
    let mut agents = Agents(Vec::new());
    for (k, host) in hosts.iter().enumerate() {
        let n = cli.agents / cli.hosts + usize::from(k < cli.agents % cli.hosts);
        if n == 0 {
            continue;
        }
        let name = format!("BENCH-H{k:03}");
        let child = host
            .command(&fleet_sim)
            .args(["--mdns-interfaces", HOST_IF, "--hostname", &name])
            .args(["--enrollment-token", &relay.enrollment_token])
            .args(["--agents", &n.to_string(), "--seed", &k.to_string()])
            .args(["--duration", &(cli.measure + 120).to_string()])
            .args([
                "--interval",
                &cli.interval.to_string(),
                "--max-updates",
                "50",
            ])
            .arg("--cache")
            .arg(&cache)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        spawned.insert(name, Instant::now());
        agents.0.push(child);
    }

    let mut seen: HashMap<String, Duration> = HashMap::new();
    let mut rss_peak = 0;
    while seen.len() < cli.agents && started.elapsed() < Duration::from_secs(180) {
        for (id, hostname) in devices(&relay_host, &relay.admin_key)? {
            if let (false, Some(t0)) = (seen.contains_key(&id), spawned.get(&hostname)) {
                seen.insert(id, t0.elapsed());
            }
        }
        rss_peak = rss_peak.max(proc_status_kib(pid, "VmRSS:").unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    if seen.len() < cli.agents {
        bail!(
            "only {} of {} agents became visible",
            seen.len(),
            cli.agents
        );
    }
    let all_visible = started.elapsed();

    let window_start = Instant::now();
    let cpu_window = proc_cpu_ticks(pid).unwrap_or(0);
    while window_start.elapsed() < Duration::from_secs(cli.measure) {
        rss_peak = rss_peak.max(proc_status_kib(pid, "VmRSS:").unwrap_or(0));
        std::thread::sleep(Duration::from_millis(500));
    }
    let ticks = proc_cpu_ticks(pid).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    let cpu_discovery = (cpu_window.saturating_sub(cpu_start)) as f64 / 100.0;
    let cpu_steady = (ticks.saturating_sub(cpu_window)) as f64 / 100.0;
    let metrics = relay_host
        .http("GET", "http://127.0.0.1:8080/metrics", None)?
        .1;
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or("?")
            .trim()
            .to_string()
    };

    let mut times: Vec<Duration> = seen.into_values().collect();
    times.sort();
    println!(
        "agents:                         {} on {} hosts",
        cli.agents, cli.hosts
    );
    println!(
        "start -> visible, median:       {:.2?}",
        percentile(&times, 0.5)
    );
    println!(
        "start -> visible, p90:          {:.2?}",
        percentile(&times, 0.9)
    );
    println!(
        "start -> visible, max:          {:.2?}",
        percentile(&times, 1.0)
    );
    println!("all visible after:              {all_visible:.2?}");
    println!(
        "relay CPU while enrolling:      {cpu_discovery:.2} s over {all_visible:.1?} ({:.0} %)",
        100.0 * cpu_discovery / all_visible.as_secs_f64()
    );
    println!(
        "relay CPU steady ({} s):        {cpu_steady:.2} s ({:.1} % of one core)",
        cli.measure,
        100.0 * cpu_steady / cli.measure as f64
    );
    println!(
        "relay RSS idle / peak:          {} / {} KiB",
        rss_idle, rss_peak
    );
    println!(
        "relay VmHWM:                    {} KiB",
        proc_status_kib(pid, "VmHWM:").unwrap_or(0)
    );
    println!(
        "mDNS announcements handled:     {}",
        metric("patchpilot_mdns_announcements_total")
    );
    println!(
        "mDNS dropped / claims ignored:  {} / {}",
        metric("patchpilot_mdns_dropped_total"),
        metric("patchpilot_mdns_claims_ignored_total")
    );
    println!(
        "check-ins stored:               {}",
        metric("patchpilot_checkins_total")
    );
    println!(
        "devices online:                 {}",
        metric("patchpilot_devices_online")
    );
    drop(agents);
    drop(relay);
    drop(lan);
    Ok(())
}
