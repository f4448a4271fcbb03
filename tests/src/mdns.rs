//! The agent side of discovery for the fleet simulator: find the relay by
//! `_pprelay._tcp` alone, and announce each enrolled agent as
//! `_ppagent._tcp` with its device id, on named interfaces only.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

pub const RELAY_SERVICE: &str = "_pprelay._tcp.local.";
pub const AGENT_SERVICE: &str = "_ppagent._tcp.local.";
/// A DNS label is at most 63 bytes.
pub const MAX_LABEL: usize = 63;

/// The relay as found over mDNS.
#[derive(Debug, Clone)]
pub struct FoundRelay {
    pub url: String,
    pub relay_id: String,
    pub proto: String,
    pub tls: bool,
    /// The certificate fingerprint advertised in `tls_sha256`, to pin.
    pub tls_sha256: Option<String>,
}

/// An mdns-sd daemon restricted to `interfaces` ("lo" for loopback) before
/// it sends or browses anything.
///
/// # Errors
/// The daemon cannot start.
pub fn daemon(interfaces: &[String]) -> anyhow::Result<ServiceDaemon> {
    if interfaces.is_empty() {
        bail!("name the interfaces mDNS may use");
    }
    let daemon = ServiceDaemon::new().context("mDNS daemon")?;
    daemon.disable_interface(IfKind::All)?;
    let kinds: Vec<IfKind> = interfaces
        .iter()
        .flat_map(|name| match name.as_str() {
            "lo" | "loopback" => vec![IfKind::LoopbackV4, IfKind::LoopbackV6],
            other => vec![IfKind::Name(other.to_string())],
        })
        .collect();
    daemon.enable_interface(kinds)?;
    Ok(daemon)
}

/// Browses `_pprelay._tcp` until a relay speaking protocol 1 resolves.
///
/// # Errors
/// None within `timeout`.
pub fn find_relay(daemon: &ServiceDaemon, timeout: Duration) -> anyhow::Result<FoundRelay> {
    let events = daemon.browse(RELAY_SERVICE)?;
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(event) = events.recv_timeout(left) else {
            break;
        };
        let ServiceEvent::ServiceResolved(service) = event else {
            continue;
        };
        if service.get_property_val_str("proto") != Some("1") {
            continue;
        }
        // IPv4 first; an IPv6 link-local address would need its scope in a
        // URL, so it is not used.
        let mut addrs: Vec<IpAddr> = service
            .get_addresses()
            .iter()
            .map(|a| a.to_ip_addr())
            .filter(|a| match a {
                IpAddr::V4(_) => true,
                IpAddr::V6(v6) => !v6.is_unicast_link_local(),
            })
            .collect();
        addrs.sort_by_key(|a| !a.is_ipv4());
        let Some(addr) = addrs.first() else {
            continue;
        };
        let host = match addr {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let _ = daemon.stop_browse(RELAY_SERVICE);
        let tls = service.get_property_val_str("tls") == Some("1");
        let scheme = if tls { "https" } else { "http" };
        return Ok(FoundRelay {
            url: format!("{scheme}://{host}:{}", service.get_port()),
            relay_id: service
                .get_property_val_str("relay_id")
                .unwrap_or_default()
                .to_string(),
            proto: "1".into(),
            tls,
            tls_sha256: service
                .get_property_val_str("tls_sha256")
                .map(str::to_string),
        });
    }
    bail!("no relay answered on _pprelay._tcp within {timeout:?}")
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The instance name of an agent: its host name, cut so that a short
/// machine-id suffix keeps two agents with the same host name apart and the
/// whole stays within one DNS label.
pub fn instance_name(hostname: &str, machine_id: &str) -> String {
    let suffix: String = machine_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let room = MAX_LABEL - suffix.len() - 1;
    format!("{}-{suffix}", truncate_utf8(hostname, room))
}

/// A host name usable as an mDNS host label: letters, digits and hyphens,
/// at most 63 bytes.
pub fn host_label(hostname: &str) -> String {
    let clean: String = hostname
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(MAX_LABEL)
        .collect();
    let clean = clean.trim_matches('-');
    if clean.is_empty() {
        "agent".into()
    } else {
        clean.to_string()
    }
}

/// One announced agent.
#[derive(Debug, Clone)]
pub struct AgentAd {
    pub instance: String,
    pub hostname: String,
    pub txt: Vec<(String, String)>,
}

/// Registers `ad` on the daemon's interfaces; the addresses follow the
/// interfaces (so an address change is announced).
///
/// # Errors
/// The record is refused (e.g. a TXT string past 255 bytes).
pub fn announce(daemon: &ServiceDaemon, ad: &AgentAd) -> anyhow::Result<String> {
    let host = format!("{}.local.", host_label(&ad.hostname));
    let info = ServiceInfo::new(AGENT_SERVICE, &ad.instance, &host, (), 9, &ad.txt[..])
        .with_context(|| format!("agent record {}", ad.instance))?
        .enable_addr_auto();
    let fullname = info.get_fullname().to_string();
    // The daemon's command queue is bounded: wait for room in a flood.
    for _ in 0..500 {
        match daemon.register(info.clone()) {
            Ok(()) => return Ok(fullname),
            Err(mdns_sd::Error::Again) => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => return Err(err.into()),
        }
    }
    bail!("the mDNS daemon stayed busy registering {fullname}")
}

/// Unregisters every name (sending goodbyes) and waits briefly for them to
/// go out.
pub fn goodbye_all(daemon: &ServiceDaemon, fullnames: &[String]) {
    let mut waits = Vec::new();
    for name in fullnames {
        for _ in 0..200 {
            match daemon.unregister(name) {
                Ok(rx) => {
                    waits.push(rx);
                    break;
                }
                Err(mdns_sd::Error::Again) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
    }
    for rx in waits {
        let _ = rx.recv_timeout(Duration::from_secs(2));
    }
}

/// The TXT of an agent: `device_id` (once enrolled), `os`, `v`, and
/// `pad` filler up to `pad_bytes` when asked (to test size limits).
pub fn agent_txt(
    device_id: Option<&str>,
    os: &str,
    version: &str,
    pad_bytes: usize,
) -> Vec<(String, String)> {
    let mut txt = Vec::new();
    if let Some(id) = device_id {
        txt.push(("device_id".to_string(), id.to_string()));
    }
    txt.push(("os".to_string(), os.to_string()));
    txt.push(("v".to_string(), version.to_string()));
    let mut left = pad_bytes;
    let mut i = 0;
    while left > 0 {
        let n = left.min(240);
        txt.push((format!("pad{i}"), "x".repeat(n)));
        left -= n;
        i += 1;
    }
    txt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_fit_one_label_and_keep_same_hosts_apart() {
        let long = "Ä".repeat(60);
        let a = instance_name(&long, "1234abcd-0000");
        assert!(a.len() <= MAX_LABEL, "{}", a.len());
        let b = instance_name("PC", "aaaa1111");
        let c = instance_name("PC", "bbbb2222");
        assert_ne!(b, c);
        assert_eq!(host_label(&"x".repeat(100)).len(), MAX_LABEL);
    }

    #[test]
    fn padding_reaches_the_requested_size() {
        let txt = agent_txt(Some("dev_1"), "windows", "1", 1000);
        let pad: usize = txt
            .iter()
            .filter(|(k, _)| k.starts_with("pad"))
            .map(|(_, v)| v.len())
            .sum();
        assert_eq!(pad, 1000);
    }
}
