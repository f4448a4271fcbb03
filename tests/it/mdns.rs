//! Discovery on a simulated LAN: the relay in one network namespace, agent
//! processes (the fleet simulator in mDNS mode) in others, joined by veth
//! pairs to a bridge. mDNS runs only on those veth interfaces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use relay_core::events::{EventRecord, EventType};
use relay_core::store::{Store, StoreOptions, Table};
use relay_tests::harness::RelayProcess;
use relay_tests::netns::{Host, Lan, HOST_IF};
use serde_json::Value;

const DISCOVERY: &str = "enabled = true\ninterfaces = [\"eth0\"]\ngoodbye_grace_s = 1\n";

fn fleet_sim() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fleet-sim"))
}

fn profile_cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        // Build the profile cache once, before agents start in parallel.
        let status = Command::new(fleet_sim())
            .arg("--profiles-only")
            .stdout(Stdio::null())
            .status()
            .expect("fleet-sim runs");
        assert!(status.success(), "fleet-sim --profiles-only failed");
        relay_tests::profiles::default_cache_path()
    })
}

/// A process on the LAN, killed when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    /// SIGTERM: the simulator sends its mDNS goodbyes and exits.
    fn terminate(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A relay and its LAN. Fields drop in order: processes before the LAN.
struct Site {
    agents: Vec<Proc>,
    logs: tempfile::TempDir,
    relay: RelayProcess,
    relay_host: Host,
    lan: Lan,
}

impl Site {
    fn new(extra: &str) -> Self {
        Self::with_discovery("", extra)
    }

    /// A site whose `[discovery]` section gets `discovery` added.
    fn with_discovery(discovery: &str, extra: &str) -> Self {
        let mut lan = Lan::new().expect("the LAN harness needs root and iproute2");
        let relay_host = lan.add_host(1).expect("relay host");
        let config = format!("[discovery]\n{DISCOVERY}{discovery}\n{extra}");
        let relay =
            RelayProcess::start_on(Some(relay_host.clone()), &config).expect("relay starts");
        Site {
            agents: Vec::new(),
            logs: tempfile::tempdir().expect("tempdir"),
            relay,
            relay_host,
            lan,
        }
    }

    fn host(&mut self, k: u8) -> Host {
        self.lan.add_host(k).expect("agent host")
    }

    /// Simulated agents in mDNS mode on `host`: no relay URL.
    fn agents(&mut self, host: &Host, n: usize, seed: u64, extra: &[&str]) -> usize {
        let mut cmd = host.command(&fleet_sim());
        cmd.args(["--mdns-interfaces", HOST_IF, "--resolve-timeout", "30"])
            .args(["--enrollment-token", &self.relay.enrollment_token])
            .args(["--agents", &n.to_string(), "--seed", &seed.to_string()])
            .args([
                "--duration",
                "300",
                "--interval",
                "2",
                "--max-updates",
                "20",
            ])
            .args(["--install-probability", "0"])
            .arg("--cache")
            .arg(profile_cache())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(self.log_file());
        self.agents
            .push(Proc(cmd.spawn().expect("fleet-sim starts")));
        self.agents.len() - 1
    }

    /// Announcements only (unknown instances, or a claim), no relay.
    fn announcer(&mut self, host: &Host, n: usize, extra: &[&str]) -> usize {
        let mut cmd = host.command(&fleet_sim());
        cmd.args(["--announce-only", "--mdns-interfaces", HOST_IF])
            .args(["--agents", &n.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(self.log_file());
        self.agents
            .push(Proc(cmd.spawn().expect("fleet-sim starts")));
        self.agents.len() - 1
    }

    fn log_file(&self) -> std::fs::File {
        let path = self
            .logs
            .path()
            .join(format!("agent-{}.log", self.agents.len()));
        std::fs::File::create(path).expect("agent log")
    }

    fn agent_logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.agents.len() {
            let path = self.logs.path().join(format!("agent-{i}.log"));
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(8)..].join("\n");
            out += &format!("--- agent {i}\n{tail}\n");
        }
        out
    }

    fn take_agent(&mut self, i: usize) -> Proc {
        // Keep indices stable: swap in a finished placeholder.
        let placeholder = Proc(Command::new("true").spawn().expect("`true` runs"));
        std::mem::replace(&mut self.agents[i], placeholder)
    }

    fn get(&self, path: &str) -> Value {
        let url = format!("http://127.0.0.1:8080{path}");
        let (code, body) = self
            .relay_host
            .http("GET", &url, Some(&self.relay.admin_key))
            .expect("the relay answers");
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    fn metric(&self, name: &str) -> u64 {
        let url = "http://127.0.0.1:8080/metrics";
        let (_, body) = self.relay_host.http("GET", url, None).expect("metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Polls `check` every 200 ms until it holds or `secs` pass.
    fn wait_for(&self, secs: u64, what: &str, check: impl Fn(&Site) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out waiting for {what}\n--- relay\n{}\n{}",
            self.relay.log_tail(),
            self.agent_logs()
        );
    }

    fn devices(&self) -> Vec<Value> {
        self.get("/api/devices?limit=500")["devices"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn online(&self) -> usize {
        self.devices()
            .iter()
            .filter(|d| d["status"] == "online")
            .count()
    }

    /// Stops the relay and reads its event log from the store.
    fn stop_and_read_events(&mut self) -> Vec<EventRecord> {
        assert!(self.relay.stop(), "the relay stops cleanly");
        read_events(&self.relay.data_dir())
    }
}

fn read_events(data_dir: &Path) -> Vec<EventRecord> {
    let store = Store::open(&StoreOptions {
        path: data_dir.join("store"),
        cache_capacity_bytes: 4 << 20,
        flush_every_ms: 500,
        durable_acks: true,
    })
    .expect("the stopped relay's store opens");
    store
        .scan::<EventRecord>(Table::Events)
        .expect("events decode")
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

fn count_by_device(events: &[EventRecord], kind: EventType) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for e in events.iter().filter(|e| e.event_type == kind) {
        let data: Value = serde_json::from_str(&e.data).expect("event data is JSON");
        let key = data["device_id"]
            .as_str()
            .or(data["instance"].as_str())
            .unwrap_or_default()
            .to_string();
        *out.entry(key).or_default() += 1;
    }
    out
}

#[test]
fn agents_find_the_relay_by_mdns_alone_and_are_matched_to_their_devices() {
    // As on the appliance: HTTPS on the LAN with the self-signed
    // certificate, whose fingerprint the agents learn from the relay's TXT
    // record and pin.
    let mut site = Site::new("[server]\nhttps_listen = \"0.0.0.0:8443\"\n");
    let a = site.host(11);
    let b = site.host(12);
    let c = site.host(13);
    // Two agents with the same host name, one with a name far past a DNS
    // label, one ordinary.
    site.agents(&a, 2, 1, &["--hostname", "SAME-HOST"]);
    let long = "VERY-LONG-HOSTNAME-".repeat(6);
    site.agents(&b, 1, 2, &["--hostname", &long]);
    site.agents(&c, 1, 3, &[]);

    site.wait_for(60, "4 devices online", |s| s.online() == 4);
    site.wait_for(30, "every device seen via mDNS", |s| {
        s.devices().iter().all(|d| {
            let id = d["device_id"].as_str().unwrap_or_default();
            s.get(&format!("/api/devices/{id}"))["seen_via"]
                == serde_json::json!(["checkin", "mdns"])
        })
    });
    let same = site
        .devices()
        .iter()
        .filter(|d| d["hostname"] == "SAME-HOST")
        .count();
    assert_eq!(same, 2, "two agents with one host name stay two devices");
    assert!(site
        .devices()
        .iter()
        .any(|d| d["hostname"] == long.as_str()));
    assert_eq!(site.get("/api/discovered")["total"], 0);
    let logs = site.agent_logs();
    assert!(
        logs.contains("found over mDNS at https://"),
        "the agents did not take the advertised HTTPS endpoint: {logs}"
    );

    let events = site.stop_and_read_events();
    let online = count_by_device(&events, EventType::DeviceOnline);
    assert_eq!(online.len(), 4);
    assert!(online.values().all(|n| *n == 1), "{online:?}");
    assert!(count_by_device(&events, EventType::DeviceDiscovered).is_empty());
}

#[test]
fn unknown_agents_are_listed_as_discovered_and_never_become_devices() {
    let mut site = Site::new("");
    let x = site.host(21);
    assert!(site.lan.wait_link_local(&x), "link-local IPv6 on the veth");
    site.announcer(
        &x,
        3,
        &["--txt-pad", "1100", "--instance-prefix", "stranger"],
    );

    site.wait_for(30, "3 discovered agents", |s| {
        s.get("/api/discovered")["total"] == 3
    });
    let first = site.get("/api/discovered?limit=2");
    assert_eq!(first["discovered"].as_array().map(Vec::len), Some(2));
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let second = site.get(&format!("/api/discovered?limit=2&cursor={cursor}"));
    assert_eq!(second["discovered"].as_array().map(Vec::len), Some(1));
    assert!(second["next_cursor"].is_null());

    let entry = &first["discovered"][0];
    assert_eq!(entry["instance"], "stranger-0");
    let addresses: Vec<&str> = entry["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(addresses.contains(&"10.77.0.21"), "{addresses:?}");
    assert!(
        addresses
            .iter()
            .any(|a| a.starts_with("fe80::") && a.contains('%')),
        "link-local IPv6 with its scope: {addresses:?}"
    );
    let pad: usize = entry["txt"]
        .as_object()
        .expect("txt")
        .iter()
        .filter(|(k, _)| k.starts_with("pad"))
        .map(|(_, v)| v.as_str().map_or(0, str::len))
        .sum();
    assert_eq!(pad, 1100, "a TXT record near the size limit arrives whole");
    assert_eq!(site.get("/api/devices")["total"], 0);
    let (code, _) = site
        .relay_host
        .http(
            "GET",
            "http://127.0.0.1:8080/api/discovered?cursor=%%%",
            Some(&site.relay.admin_key),
        )
        .expect("answer");
    assert_eq!(code, 400);

    // Re-announcements do not raise the event again.
    std::thread::sleep(Duration::from_secs(3));
    let events = site.stop_and_read_events();
    let discovered = count_by_device(&events, EventType::DeviceDiscovered);
    assert_eq!(discovered.len(), 3);
    assert!(discovered.values().all(|n| *n == 1), "{discovered:?}");
}

#[test]
fn a_claim_from_another_address_is_ignored_and_a_silent_agent_goes_offline() {
    let mut site = Site::new("[agents]\noffline_after_s = 10\n");
    let a = site.host(31);
    let spoofer = site.host(32);
    let agent = site.agents(&a, 1, 7, &[]);
    site.wait_for(60, "the device online", |s| s.online() == 1);
    let device = site.devices()[0].clone();
    let id = device["device_id"].as_str().expect("id").to_string();

    site.announcer(
        &spoofer,
        1,
        &[
            "--claim-device-id",
            &id,
            "--hostname",
            "IMPOSTOR",
            "--instance-prefix",
            "impostor",
        ],
    );
    site.wait_for(30, "the claim to be ignored", |s| {
        s.metric("patchpilot_mdns_claims_ignored_total") >= 1
    });
    let detail = site.get(&format!("/api/devices/{id}"));
    assert_eq!(detail["hostname"], device["hostname"], "never renamed");
    assert_eq!(site.get("/api/discovered")["total"], 0);
    assert_eq!(site.get("/api/devices")["total"], 1);

    // The agent vanishes without a goodbye; the impostor keeps announcing
    // the device's id, which must not keep it online.
    drop(site.take_agent(agent));
    let started = Instant::now();
    site.wait_for(30, "the silent device offline", |s| s.online() == 0);
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "not before offline_after"
    );
    let log = std::fs::read_to_string(&site.relay.log_path).unwrap_or_default();
    assert!(
        log.contains("claims an enrolled device"),
        "the claim is logged"
    );

    let events = site.stop_and_read_events();
    assert_eq!(
        count_by_device(&events, EventType::DeviceOffline).get(&id),
        Some(&1)
    );
}

#[test]
fn a_goodbye_takes_a_device_offline_before_offline_after() {
    let mut site = Site::new("[agents]\noffline_after_s = 600\n");
    let a = site.host(41);
    let agent = site.agents(&a, 1, 9, &[]);
    site.wait_for(60, "the device online", |s| s.online() == 1);
    let id = site.devices()[0]["device_id"]
        .as_str()
        .expect("id")
        .to_string();
    site.wait_for(30, "the device seen via mDNS", |s| {
        s.get(&format!("/api/devices/{id}"))["seen_via"][1] == "mdns"
    });

    site.take_agent(agent).terminate();
    site.wait_for(20, "offline after the goodbye", |s| s.online() == 0);
    let events = site.stop_and_read_events();
    let offline: Vec<&EventRecord> = events
        .iter()
        .filter(|e| e.event_type == EventType::DeviceOffline)
        .collect();
    assert_eq!(offline.len(), 1);
    assert!(
        offline[0].data.contains("mdns_goodbye"),
        "{}",
        offline[0].data
    );
}

#[test]
fn the_fleet_and_its_presence_survive_a_relay_restart() {
    let mut site = Site::new("[agents]\noffline_after_s = 20\n");
    let a = site.host(51);
    let b = site.host(52);
    site.agents(&a, 2, 11, &[]);
    let leaving = site.agents(&b, 1, 12, &[]);
    site.wait_for(60, "3 devices online", |s| s.online() == 3);
    site.wait_for(30, "every device seen via mDNS", |s| {
        s.devices().iter().all(|d| {
            let id = d["device_id"].as_str().unwrap_or_default();
            s.get(&format!("/api/devices/{id}"))["seen_via"][1] == "mdns"
        })
    });
    let before: Vec<String> = site
        .devices()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap_or_default().to_string())
        .collect();

    // One agent dies; the relay goes down before offline_after passes and
    // stays down until it has; the other agents keep running throughout.
    drop(site.take_agent(leaving));
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(site.online(), 3, "not yet past offline_after");
    assert!(site.relay.stop(), "clean stop");
    std::thread::sleep(Duration::from_secs(10));
    site.relay.launch().expect("the relay restarts");

    let after: Vec<String> = site
        .devices()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(before, after, "the same devices come back from the store");
    assert_eq!(site.online(), 2, "presence re-derived at start-up");
    assert!(site.devices().iter().all(|d| {
        let id = d["device_id"].as_str().unwrap_or_default();
        site.get(&format!("/api/devices/{id}"))["seen_via"][1] == "mdns"
    }));
    // The live agents keep checking in: they stay online.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(site.online(), 2);

    let events = site.stop_and_read_events();
    let offline: Vec<&EventRecord> = events
        .iter()
        .filter(|e| e.event_type == EventType::DeviceOffline)
        .collect();
    assert_eq!(offline.len(), 1, "only the agent that died went offline");
    assert!(offline[0].data.contains("no_checkin_while_relay_down"));
    let online = count_by_device(&events, EventType::DeviceOnline);
    assert_eq!(online.len(), 3);
    assert!(
        online.values().all(|n| *n == 1),
        "no second device.online: {online:?}"
    );
}

#[test]
fn a_flood_of_announcements_costs_bounded_work_and_memory() {
    let mut site = Site::with_discovery("max_discovered = 50\nqueue = 64\n", "");
    let x = site.host(61);
    let rss_before = site.relay.rss_kib().unwrap_or(0);
    site.announcer(&x, 600, &["--instance-prefix", "flood", "--txt-pad", "600"]);
    site.wait_for(60, "the discovered list full", |s| {
        s.get("/api/discovered")["total"] == 50
    });
    site.wait_for(60, "the flood past the ceiling", |s| {
        s.metric("patchpilot_mdns_discovered_full_total")
            + s.metric("patchpilot_mdns_dropped_total")
            >= 100
    });
    assert_eq!(site.get("/api/discovered")["total"], 50);
    assert_eq!(site.relay.get_status("/readyz"), Some(200));
    let rss_after = site.relay.rss_kib().unwrap_or(0);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
