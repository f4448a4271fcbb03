//! fleet-sim: enrolls N simulated agents (built from real Windows and Linux
//! machine states) against a relay and runs their check-ins.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

use relay_tests::mdns;
use relay_tests::profiles::{self, Profile};
use relay_tests::sim::{self, RunOptions};
use relay_tests::{Behaviour, Fleet, RelayClient, RetryPolicy};

/// Simulate a fleet of PatchPilot agents against a relay.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Relay base URL (loopback only unless --allow-non-loopback).
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "PATCHPILOT_RELAY_URL"
    )]
    relay_url: String,

    /// Enrollment token (--enrollment-token-file wins when both are given).
    #[arg(long, env = "PATCHPILOT_ENROLLMENT_TOKEN")]
    enrollment_token: Option<String>,

    /// File holding the enrollment token.
    #[arg(long)]
    enrollment_token_file: Option<PathBuf>,

    /// Number of agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,

    /// Seed for identities and behaviour.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// Check-ins per agent (default 3 unless --duration is given).
    #[arg(long)]
    checkins: Option<u32>,

    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<u64>,

    /// Fixed seconds between check-ins (default: the relay's next_checkin_s).
    #[arg(long)]
    interval: Option<u64>,

    /// Never wait longer than this many seconds between check-ins.
    #[arg(long, default_value_t = 30)]
    max_interval: u64,

    /// Shared data directory (systeminfo files, catalog).
    #[arg(long, env = "PATCHPILOT_SHARED_DATA")]
    data_dir: Option<PathBuf>,

    /// Profile cache file (default: `<target dir>/fleet-profiles-v1.json`).
    #[arg(long)]
    cache: Option<PathBuf>,

    /// Report at most this many (newest) updates per check-in.
    #[arg(long)]
    max_updates: Option<usize>,

    /// Chance per check-in that an agent installs something.
    #[arg(long, default_value_t = 0.5)]
    install_probability: f64,

    /// Chance that an install fails.
    #[arg(long, default_value_t = 0.1)]
    install_failure_rate: f64,

    /// Chance that a due reboot fails.
    #[arg(long, default_value_t = 0.05)]
    reboot_failure_rate: f64,

    /// Retries after a 429 (waiting Retry-After).
    #[arg(long, default_value_t = 3)]
    max_retries: u32,

    /// Print the profiles and exit (no network).
    #[arg(long)]
    profiles_only: bool,

    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,

    /// Allow a relay URL that is not loopback.
    #[arg(long)]
    allow_non_loopback: bool,

    /// mDNS mode: find the relay by `_pprelay._tcp` alone (no --relay-url)
    /// and announce each agent as `_ppagent._tcp`, on these interfaces only
    /// (comma-separated names; `lo` for loopback). Run it inside a network
    /// namespace: never on a real LAN from a test machine.
    #[arg(long, value_delimiter = ',')]
    mdns_interfaces: Vec<String>,

    /// Seconds to wait for the relay's mDNS answer.
    #[arg(long, default_value_t = 30)]
    resolve_timeout: u64,

    /// Give every agent this host name.
    #[arg(long)]
    hostname: Option<String>,

    /// Pad each agent's TXT record with this many bytes.
    #[arg(long, default_value_t = 0)]
    txt_pad: usize,

    /// mDNS mode without a relay: announce --agents unknown instances and
    /// nothing else, until stopped.
    #[arg(long)]
    announce_only: bool,

    /// With --announce-only: claim this device id in the TXT record.
    #[arg(long)]
    claim_device_id: Option<String>,

    /// Instance name prefix for --announce-only.
    #[arg(long, default_value = "unknown-agent")]
    instance_prefix: String,
}

impl Cli {
    fn behaviour(&self) -> anyhow::Result<Behaviour> {
        for (name, p) in [
            ("--install-probability", self.install_probability),
            ("--install-failure-rate", self.install_failure_rate),
            ("--reboot-failure-rate", self.reboot_failure_rate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name} must be within 0..=1, got {p}");
            }
        }
        Ok(Behaviour {
            install_probability: self.install_probability,
            install_failure_rate: self.install_failure_rate,
            reboot_failure_rate: self.reboot_failure_rate,
            max_reported_updates: self.max_updates,
            ..Behaviour::default()
        })
    }

    fn enrollment_token(&self) -> anyhow::Result<String> {
        let token = match (&self.enrollment_token, &self.enrollment_token_file) {
            (_, Some(path)) => {
                std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?
            }
            (Some(t), None) => t.clone(),
            (None, None) => bail!("give --enrollment-token or --enrollment-token-file"),
        };
        let token = token.trim().to_owned();
        if token.is_empty() {
            bail!("the enrollment token is empty");
        }
        Ok(token)
    }

    fn run_options(&self, enrollment_token: String) -> RunOptions {
        let checkins = match (self.checkins, self.duration) {
            (None, None) => Some(3),
            (c, _) => c,
        };
        RunOptions {
            checkins,
            duration: self.duration.map(Duration::from_secs),
            interval: self.interval.map(Duration::from_secs),
            max_interval: Duration::from_secs(self.max_interval),
            enrollment_token,
        }
    }

    fn client(&self) -> anyhow::Result<RelayClient> {
        let client = if self.allow_non_loopback {
            RelayClient::new_any_host(&self.relay_url, self.concurrency)?
        } else {
            RelayClient::new(&self.relay_url, self.concurrency)
                .context("use --allow-non-loopback to target another host")?
        };
        Ok(client.with_retry(RetryPolicy {
            max_retries: self.max_retries,
            ..RetryPolicy::default()
        }))
    }
}

fn load_profiles(cli: &Cli) -> anyhow::Result<Vec<Profile>> {
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(profiles::default_data_dir);
    let cache = cli
        .cache
        .clone()
        .unwrap_or_else(profiles::default_cache_path);
    let started = Instant::now();
    let loaded = profiles::load_profiles_cached(&data_dir, &cache)
        .with_context(|| format!("load profiles from {}", data_dir.display()))?;
    eprintln!(
        "loaded {} profiles in {:.2?} (cache {})",
        loaded.len(),
        started.elapsed(),
        cache.display()
    );
    Ok(loaded)
}

fn print_profiles(profiles: &[Profile]) {
    println!(
        "{:<50} {:<48} {:>7} {:>6}",
        "source", "product / os", "updates", "cves"
    );
    for p in profiles {
        let product = p
            .product
            .clone()
            .unwrap_or_else(|| format!("{} {}", p.os_name, p.os_version));
        println!(
            "{:<50} {:<48} {:>7} {:>6}",
            p.source,
            product,
            p.updates.len(),
            p.distinct_cves()
        );
    }
}

fn progress_bar(total: Option<u64>) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(n) => (
            ProgressBar::new(n),
            "{spinner} {msg:10} [{elapsed_precise}] {wide_bar} {pos}/{len} eta {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {msg:10} [{elapsed_precise}] {pos}",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Flips the stop flag on Ctrl-C or SIGTERM.
fn stop_on_ctrl_c() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term => {},
        }
        eprintln!("stopping after the current check-ins ...");
        let _ = tx.send(true);
    });
    rx
}

async fn simulate(cli: &Cli, profiles: &[Profile]) -> anyhow::Result<()> {
    let token = cli.enrollment_token()?;
    let options = cli.run_options(token.clone());
    let mut fleet = Fleet::with_behaviour(profiles, cli.agents, cli.seed, cli.behaviour()?)?;
    if let Some(name) = &cli.hostname {
        for agent in fleet.agents_mut() {
            agent.set_hostname(name.clone());
        }
    }
    let daemon = match cli.mdns_interfaces.is_empty() {
        true => None,
        false => Some(mdns::daemon(&cli.mdns_interfaces)?),
    };
    let client = match &daemon {
        None => cli.client()?,
        Some(d) => {
            let timeout = Duration::from_secs(cli.resolve_timeout);
            let found = tokio::task::block_in_place(|| mdns::find_relay(d, timeout))?;
            eprintln!("relay {} found over mDNS at {}", found.relay_id, found.url);
            match (&found.tls, &found.tls_sha256) {
                (true, Some(pin)) => RelayClient::new_pinned(&found.url, cli.concurrency, pin)?,
                (true, None) => bail!("the relay advertises TLS without a fingerprint to pin"),
                (false, _) => RelayClient::new_any_host(&found.url, cli.concurrency)?,
            }
        }
    }
    .with_stats(fleet.stats().clone());
    let started = Instant::now();

    let bar = progress_bar(None);
    bar.set_message("enrolling");
    let enrolled = fleet.enroll_all(&client, &token).await?;
    bar.finish_and_clear();
    eprintln!(
        "enrolled {}/{} agents in {:.2?}",
        enrolled.ok,
        cli.agents,
        started.elapsed()
    );

    // An agent announces its device id once it has checked in.
    let announced = match &daemon {
        Some(d) => {
            let first = fleet.checkin_round(&client).await?;
            eprintln!("first check-in: {} ok, {} failed", first.ok, first.failed);
            announce_fleet(cli, d, &fleet)?
        }
        None => Vec::new(),
    };

    let total = options.checkins.map(|n| u64::from(n) * cli.agents as u64);
    let bar = progress_bar(total);
    bar.set_message("check-ins");
    sim::run(&mut fleet, &client, options, stop_on_ctrl_c(), bar.clone()).await?;
    bar.finish_and_clear();
    if let Some(d) = &daemon {
        mdns::goodbye_all(d, &announced);
        let _ = d.shutdown();
    }

    let summary = fleet.summary();
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{summary}elapsed:           {:.2?}", started.elapsed());
    }
    let errors = summary.enroll_errors + summary.checkin_errors;
    if errors > 0 {
        bail!("{errors} calls failed");
    }
    Ok(())
}

/// Announces every enrolled agent with its device id.
fn announce_fleet(
    cli: &Cli,
    daemon: &mdns_sd::ServiceDaemon,
    fleet: &Fleet,
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for agent in fleet.agents().iter().filter(|a| a.device_id().is_some()) {
        let ad = mdns::AgentAd {
            instance: mdns::instance_name(agent.hostname(), agent.machine_id()),
            hostname: agent.hostname().to_string(),
            txt: mdns::agent_txt(
                agent.device_id(),
                agent.os_family().as_str(),
                relay_tests::protocol::AGENT_VERSION,
                cli.txt_pad,
            ),
        };
        names.push(mdns::announce(daemon, &ad)?);
    }
    eprintln!("announced {} agents on _ppagent._tcp", names.len());
    Ok(names)
}

/// --announce-only: unknown (or claiming) instances and nothing else.
async fn announce_only(cli: &Cli) -> anyhow::Result<()> {
    if cli.mdns_interfaces.is_empty() {
        bail!("--announce-only needs --mdns-interfaces");
    }
    let daemon = mdns::daemon(&cli.mdns_interfaces)?;
    let mut names = Vec::new();
    for i in 0..cli.agents {
        let hostname = cli
            .hostname
            .clone()
            .unwrap_or_else(|| format!("{}-{i}", cli.instance_prefix));
        let ad = mdns::AgentAd {
            instance: format!("{}-{i}", cli.instance_prefix),
            hostname,
            txt: mdns::agent_txt(cli.claim_device_id.as_deref(), "windows", "1", cli.txt_pad),
        };
        names.push(mdns::announce(&daemon, &ad)?);
    }
    eprintln!("announced {} instances", names.len());
    let mut stop = stop_on_ctrl_c();
    let until = cli.duration.map(Duration::from_secs);
    match until {
        Some(d) => {
            let _ = tokio::time::timeout(d, stop.changed()).await;
        }
        None => {
            let _ = stop.changed().await;
        }
    }
    mdns::goodbye_all(&daemon, &names);
    let _ = daemon.shutdown();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.announce_only {
        return announce_only(&cli).await;
    }
    let profiles = load_profiles(&cli)?;
    if cli.profiles_only {
        print_profiles(&profiles);
        return Ok(());
    }
    simulate(&cli, &profiles).await
}
