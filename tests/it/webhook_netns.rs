//! The uplink goes down and comes back: a receiver in a network namespace
//! of this test's own, reachable from the relay only over a veth pair that
//! the test takes down and brings back up. Needs root and iproute2 (CI runs
//! as root; `ip` is installed with apt-get when missing).

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_tests::harness::RelayProcess;
use relay_tests::receiver::read_log;

use crate::support::Api;
use crate::webhooks::{create, FAST};

const EVENTS: usize = 1000;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ensure_ip() {
    if Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return;
    }
    let quiet = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        quiet(&["update", "-qq"]) && quiet(&["install", "-y", "-qq", "iproute2"]),
        "iproute2 is needed and could not be installed"
    );
}

/// A namespace with one end of a veth pair; the other end stays in the
/// test's namespace. Both go when this is dropped, also on failure.
struct Link {
    ns: String,
    host_if: String,
    peer_if: String,
    subnet: String,
    host_addr: String,
    peer_addr: String,
    receiver: Option<Child>,
}

impl Link {
    fn new() -> Self {
        ensure_ip();
        let pid = std::process::id();
        let tag = pid % 100_000;
        // 10.213.N.0/30 with N from the pid: distinct per concurrent run.
        let n = pid % 250;
        let link = Self {
            ns: format!("ppwh-{pid}"),
            host_if: format!("ppwh{tag}h"),
            peer_if: format!("ppwh{tag}p"),
            subnet: format!("10.213.{n}.0/30"),
            host_addr: format!("10.213.{n}.1"),
            peer_addr: format!("10.213.{n}.2"),
            receiver: None,
        };
        let peer_if = link.peer_if.clone();
        ip(&["netns", "add", &link.ns]);
        // While the link is down nothing for this subnet may follow the
        // default route out of the machine: a catch-all unreachable route
        // of our own, below the veth's own route.
        ip(&[
            "route",
            "add",
            "unreachable",
            &link.subnet,
            "metric",
            "4000",
        ]);
        ip(&[
            "link",
            "add",
            &link.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &link.ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", link.host_addr),
            "dev",
            &link.host_if,
        ]);
        ip(&["link", "set", &link.host_if, "up"]);
        ip(&[
            "-n",
            &link.ns,
            "addr",
            "add",
            &format!("{}/30", link.peer_addr),
            "dev",
            &peer_if,
        ]);
        ip(&["-n", &link.ns, "link", "set", &peer_if, "up"]);
        ip(&["-n", &link.ns, "link", "set", "lo", "up"]);
        link
    }

    /// Takes the namespace's end down or up: the relay's side loses its
    /// carrier, as when a site's uplink drops.
    fn set(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns, "link", "set", &self.peer_if, state]);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(mut child) = self.receiver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args([
                "route",
                "del",
                "unreachable",
                &self.subnet,
                "metric",
                "4000",
            ])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_while_the_link_is_down_all_arrive_when_it_is_up() {
    let mut link = Link::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("received.jsonl");
    let listen: SocketAddr = format!("{}:8099", link.peer_addr).parse().expect("addr");
    link.receiver = Some(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &link.ns,
                env!("CARGO_BIN_EXE_webhook-receiver"),
            ])
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::null())
            .spawn()
            .expect("the receiver starts in the namespace"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "the receiver never listened");
        std::thread::sleep(Duration::from_millis(50));
    }

    let relay = RelayProcess::start(FAST).expect("relay");
    let api = Api::new(&relay);
    let url = format!("http://{listen}/hook");
    let (id, secret) = create(&api, &url, serde_json::json!(["*"])).await;
    let first = crate::webhooks::test_event(&api, &id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read_log(&log).iter().any(|r| r.event_id() == first) {
        assert!(
            Instant::now() < deadline,
            "the link works before it goes down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    link.set(false);
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for _ in 0..8 {
        let (client, post, key) = (
            reqwest::Client::new(),
            format!("{}/api/webhooks/{id}/test", relay.base_url),
            relay.admin_key.clone(),
        );
        let (acked, next) = (acked.clone(), next.clone());
        producers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < EVENTS {
                let r: serde_json::Value = client
                    .post(&post)
                    .bearer_auth(&key)
                    .json(&serde_json::json!({}))
                    .send()
                    .await
                    .expect("the relay answers")
                    .json()
                    .await
                    .expect("json");
                let event = r["event_id"].as_str().expect("acknowledged").to_string();
                acked.lock().expect("lock").push(event);
            }
        }));
    }
    for p in producers {
        p.await.expect("producer");
    }
    let acked: HashSet<String> = acked.lock().expect("lock").iter().cloned().collect();
    assert_eq!(acked.len(), EVENTS);

    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = read_log(&log).len();
    assert_eq!(before, 1, "nothing arrives while the link is down");
    let info = api.get("/api/relay").await.body;
    assert_eq!(info["webhooks"]["uplink"], "down", "{info}");
    assert!(info["webhooks"]["outbox_depth"].as_u64().expect("depth") >= EVENTS as u64);
    // A request already sent on a pooled connection when the link dropped
    // times out and counts as one attempt; after that, none are spent.
    let pending = |body: serde_json::Value| -> Vec<(String, u64)> {
        body["deliveries"]
            .as_array()
            .expect("list")
            .iter()
            .map(|d| {
                (
                    d["event_id"].to_string(),
                    d["attempt"].as_u64().expect("attempt"),
                )
            })
            .collect()
    };
    let path = format!("/api/webhooks/{id}/deliveries?status=pending");
    let held = pending(api.get(&path).await.body);
    assert!(held.iter().all(|(_, a)| *a <= 1), "{held:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pending(api.get(&path).await.body),
        held,
        "no attempt is spent while unreachable"
    );
    assert_eq!(read_log(&log).len(), 1);

    link.set(true);
    let up = Instant::now();
    let mut first_at = None;
    let all = loop {
        let got = read_log(&log);
        if first_at.is_none() && got.len() > before {
            first_at = Some(up.elapsed());
        }
        let ids: HashSet<String> = got.iter().map(|r| r.event_id()).collect();
        if acked.iter().all(|e| ids.contains(e)) {
            break got;
        }
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "{} of {EVENTS} arrived within 60 s of the link coming back",
            acked.iter().filter(|e| ids.contains(*e)).count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let resumed = first_at.expect("something arrived");
    let drained = up.elapsed();
    assert!(
        resumed < Duration::from_secs(10),
        "the backlog moved after {resumed:?}"
    );
    let mut verified = 0;
    for r in &all {
        assert!(
            r.signed_by(&secret),
            "signature of {} verifies",
            r.event_id()
        );
        verified += 1;
    }
    // Order of first arrivals: a duplicate can come late, e.g. the request
    // that timed out on the dead connection, retransmitted by TCP.
    let mut seen = HashSet::new();
    let sequences: Vec<u64> = all
        .iter()
        .filter(|r| seen.insert(r.event_id()))
        .map(|r| r.sequence())
        .collect();
    let in_order = sequences.windows(2).all(|w| w[0] < w[1]);
    let unique: HashSet<String> = all.iter().map(|r| r.event_id()).collect();
    eprintln!(
        "link-down test: {EVENTS} queued while down; first arrival {resumed:?} after link up, all in {drained:?}; {verified} signatures verified, {} duplicates, in order: {in_order}",
        all.len() - unique.len()
    );
    assert!(in_order, "first attempts go out in event order");
}
