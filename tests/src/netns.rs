//! A simulated LAN for discovery tests: network namespaces joined by veth
//! pairs to a bridge that lives in a namespace of its own.
//!
//! Every namespace is named after this process and a counter, so tests run
//! in parallel without meeting, and all of them are deleted when the [`Lan`]
//! is dropped (also when a test panics). Nothing is added to the host's own
//! namespace: mDNS never runs on the machine's real interfaces. The test
//! talks to a relay inside the LAN with `curl` run in the relay's namespace.

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::Duration;

use anyhow::{bail, Context};

/// The interface name of each host's end of its veth pair.
pub const HOST_IF: &str = "eth0";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Installs iproute2 and curl when missing (CI runs as root).
///
/// # Errors
/// They are missing and cannot be installed.
pub fn ensure_tools() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let missing = |tool: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        };
        if missing("ip") || missing("curl") {
            let _ = Command::new("apt-get").arg("update").status();
            let _ = Command::new("apt-get")
                .args(["install", "-y", "iproute2", "curl"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
        }
    });
    run(&["ip", "-V"]).context("iproute2 (`ip`) is needed for the LAN harness")?;
    run(&["curl", "--version"]).context("curl is needed for the LAN harness")?;
    Ok(())
}

/// One host on the LAN: a namespace with `eth0` on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
}

impl Host {
    /// A command run inside this host's namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// Replaces the host's IPv4 address (an agent whose address changes).
    ///
    /// # Errors
    /// `ip` fails.
    pub fn change_addr(&mut self, addr: Ipv4Addr) -> anyhow::Result<()> {
        let old = format!("{}/24", self.addr);
        let new = format!("{addr}/24");
        run(&["ip", "-n", &self.ns, "addr", "add", &new, "dev", HOST_IF])?;
        run(&["ip", "-n", &self.ns, "addr", "del", &old, "dev", HOST_IF])?;
        self.addr = addr;
        Ok(())
    }

    /// An HTTP request with curl from inside the namespace: (status, body).
    ///
    /// # Errors
    /// curl cannot run or gets no answer.
    pub fn http(
        &self,
        method: &str,
        url: &str,
        bearer: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", &self.ns, "curl", "-s", "-m", "10", "-X", method,
        ]);
        cmd.args(["-w", "\n%{http_code}"]);
        if let Some(key) = bearer {
            cmd.args(["-H", &format!("Authorization: Bearer {key}")]);
        }
        let out = cmd.arg(url).stdin(Stdio::null()).output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let code: u16 = code.trim().parse().unwrap_or(0);
        if code == 0 {
            bail!("no answer from {url}");
        }
        Ok((code, body.to_string()))
    }
}

/// A bridge namespace and the hosts attached to it.
pub struct Lan {
    prefix: String,
    bridge: String,
    hosts: Vec<String>,
}

impl Lan {
    /// Creates the bridge namespace.
    ///
    /// # Errors
    /// The tools are missing or `ip` fails (not root, no netns support).
    pub fn new() -> anyhow::Result<Self> {
        ensure_tools()?;
        let prefix = format!(
            "pplan{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let bridge = format!("{prefix}-br");
        run(&["ip", "netns", "add", &bridge])?;
        let lan = Self {
            prefix,
            bridge: bridge.clone(),
            hosts: Vec::new(),
        };
        run(&["ip", "-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        // Without snooping the bridge floods multicast to every port.
        run(&[
            "ip",
            "-n",
            &bridge,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        run(&["ip", "-n", &bridge, "link", "set", "br0", "up"])?;
        Ok(lan)
    }

    /// Adds host number `k` (1..=250) at 10.77.0.k/24.
    ///
    /// # Errors
    /// `ip` fails.
    pub fn add_host(&mut self, k: u8) -> anyhow::Result<Host> {
        let ns = format!("{}-h{k}", self.prefix);
        run(&["ip", "netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        let port = format!("p{k}");
        run(&[
            "ip",
            "-n",
            &ns,
            "link",
            "add",
            HOST_IF,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.bridge,
        ])?;
        run(&[
            "ip",
            "-n",
            &self.bridge,
            "link",
            "set",
            &port,
            "master",
            "br0",
        ])?;
        run(&["ip", "-n", &self.bridge, "link", "set", &port, "up"])?;
        // Link-local IPv6 without waiting for duplicate address detection.
        let dad = format!("net.ipv6.conf.{HOST_IF}.accept_dad=0");
        let _ = run(&["ip", "netns", "exec", &ns, "sysctl", "-q", "-w", &dad]);
        let addr = Ipv4Addr::new(10, 77, 0, k);
        let cidr = format!("{addr}/24");
        run(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", HOST_IF])?;
        run(&["ip", "-n", &ns, "link", "set", HOST_IF, "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "224.0.0.0/4",
            "dev",
            HOST_IF,
        ])?;
        Ok(Host { ns, addr })
    }

    /// Waits until `host` has an IPv6 link-local address (mDNS announces it).
    pub fn wait_link_local(&self, host: &Host) -> bool {
        for _ in 0..50 {
            let out = run(&["ip", "-n", &host.ns, "-6", "addr", "show", "dev", HOST_IF]);
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("fe80::")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.bridge)) {
            // Processes still inside keep nothing alive: deleting the name
            // removes the veth pairs once those processes are gone.
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}
