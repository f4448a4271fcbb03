//! The relay's settings: every field has a documented default, unknown keys
//! are refused, and [`RelayConfig::validate`] names the key of any bad value.
//!
//! The appliance reads TOML into this shape; the library never touches files.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A setting that cannot be used, with the dotted key it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

fn bad(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub agents: AgentsConfig,
    pub limits: LimitsConfig,
    pub keys: KeysConfig,
    pub compliance: ComplianceConfig,
    pub reboot: RebootConfig,
    pub vulnerabilities: VulnerabilitiesConfig,
    pub events: EventsConfig,
    pub discovery: DiscoveryConfig,
    pub webhooks: WebhooksConfig,
    pub courier: CourierConfig,
    pub audit: AuditConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Plain-HTTP listener. Empty to turn it off. Default `127.0.0.1:8080`.
    pub http_listen: String,
    /// HTTPS listener (rustls, TLS 1.2 and 1.3). Empty to turn it off.
    /// Default `127.0.0.1:8443`; the appliance config listens on every
    /// address.
    pub https_listen: String,
    /// PEM certificate chain (leaf first) for HTTPS. Empty: a self-signed
    /// certificate generated on first start in `<data_dir>/tls/`.
    pub tls_cert_file: String,
    /// PEM private key matching `tls_cert_file` (both or neither).
    pub tls_key_file: String,
    /// A client must send a request's headers within this many seconds
    /// (also the idle time allowed between keep-alive requests). Default 10.
    pub header_read_timeout_s: u64,
    /// Open connections at most; further clients wait to be accepted.
    /// Default 1024.
    pub max_connections: usize,
    /// Largest request body under `/api`, in bytes. Default 1 MiB.
    pub api_body_limit: usize,
    /// Largest request body under `/agent`, in bytes. Default 8 MiB.
    pub agent_body_limit: usize,
    /// A request that takes longer than this is answered 408. Default 30.
    pub request_timeout_s: u64,
    /// Ask for an API key on `/metrics`. Default false.
    pub metrics_require_key: bool,
    /// How long shutdown waits for in-flight requests. Default 10.
    pub shutdown_grace_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_listen: "127.0.0.1:8080".into(),
            https_listen: "127.0.0.1:8443".into(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            header_read_timeout_s: 10,
            max_connections: 1024,
            api_body_limit: 1024 * 1024,
            agent_body_limit: 8 * 1024 * 1024,
            request_timeout_s: 30,
            metrics_require_key: false,
            shutdown_grace_s: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Where the sled store, the control socket and the enrollment token
    /// live. Default `./patchpilot-data`.
    pub data_dir: PathBuf,
    /// sled's page cache, in MiB (counted in on-disk bytes). Default 16.
    pub cache_capacity_mib: u64,
    /// Acknowledge writes only after an fsync. Default true. Turning it off
    /// opens a loss window of up to `flush_every_ms`; it exists for
    /// benchmarks and throwaway test relays.
    pub durable_acks: bool,
    /// sled's own background flush interval. Default 500.
    pub flush_every_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("patchpilot-data"),
            cache_capacity_mib: 16,
            durable_acks: true,
            flush_every_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// A device with no check-in for this long is offline. Default 900.
    pub offline_after_s: i64,
    /// The interval the relay asks agents to check in at. Default 300.
    pub checkin_interval_s: u64,
    /// Install results kept per device. Default 20.
    pub recent_results: usize,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            offline_after_s: 900,
            checkin_interval_s: 300,
            recent_results: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    pub read_per_minute: u32,
    pub read_burst: u32,
    pub write_per_minute: u32,
    pub write_burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            read_per_minute: 600,
            read_burst: 100,
            write_per_minute: 60,
            write_burst: 20,
        }
    }
}

impl RateLimit {
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let fields = [
            ("read_per_minute", self.read_per_minute),
            ("read_burst", self.read_burst),
            ("write_per_minute", self.write_per_minute),
            ("write_burst", self.write_burst),
        ];
        for (name, value) in fields {
            if value == 0 || value > 1_000_000 {
                return Err(bad(
                    &format!("{prefix}{name}"),
                    "must be between 1 and 1000000",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Per-key read requests a minute (a key may carry its own). Default 600.
    pub read_per_minute: u32,
    /// Per-key read burst. Default 100.
    pub read_burst: u32,
    /// Per-key writes (POST, PUT, PATCH, DELETE) a minute. Default 60.
    pub write_per_minute: u32,
    /// Per-key write burst. Default 20.
    pub write_burst: u32,
    /// Failed authentications per minute from one address before it gets
    /// 429. Default 20.
    pub auth_failures_per_minute: u32,
    /// Addresses and keys the limiters remember at most. Default 10000.
    pub max_tracked: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let per_key = RateLimit::default();
        Self {
            read_per_minute: per_key.read_per_minute,
            read_burst: per_key.read_burst,
            write_per_minute: per_key.write_per_minute,
            write_burst: per_key.write_burst,
            auth_failures_per_minute: 20,
            max_tracked: 10_000,
        }
    }
}

impl LimitsConfig {
    /// The default limits of a key without its own.
    pub fn per_key(&self) -> RateLimit {
        RateLimit {
            read_per_minute: self.read_per_minute,
            read_burst: self.read_burst,
            write_per_minute: self.write_per_minute,
            write_burst: self.write_burst,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// The longest expiry a key may be given, in days. Default 365.
    pub max_expiry_days: i64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            max_expiry_days: 365,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComplianceConfig {
    /// How often a snapshot is taken, in seconds. Default 3600.
    pub interval_s: u64,
    /// A critical update missing longer than this after release fails the
    /// policy. Default 14.
    pub critical_max_age_days: i64,
    /// A device must have checked in within this many days. Default 7.
    pub checkin_max_age_days: i64,
    /// A reboot may be pending at most this many days. Default 3.
    pub reboot_max_pending_days: i64,
    /// Snapshots older than this are pruned. Default 90.
    pub snapshot_retention_days: i64,
}

impl Default for ComplianceConfig {
    fn default() -> Self {
        Self {
            interval_s: 3600,
            critical_max_age_days: 14,
            checkin_max_age_days: 7,
            reboot_max_pending_days: 3,
            snapshot_retention_days: 90,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebootConfig {
    /// A reboot not handed to its agent this long after `at` is missed.
    /// Default 7200.
    pub dispatch_grace_s: i64,
    /// The furthest ahead a reboot may be scheduled, in days. Default 30.
    pub max_ahead_days: i64,
}

impl Default for RebootConfig {
    fn default() -> Self {
        Self {
            dispatch_grace_s: 7200,
            max_ahead_days: 30,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VulnerabilitiesConfig {
    /// A CISA KEV JSON file imported at start when it has changed. Empty:
    /// keep what the store holds (see `patchpilot-relay kev import`).
    pub kev_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Events older than this are pruned. Default 30.
    pub retention_days: i64,
    /// At most this many events are kept; the oldest go first. Default 200000.
    pub max_events: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            max_events: 200_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit entries older than this are pruned. Default 365.
    pub retention_days: i64,
    /// At most this many entries are kept; the oldest go first.
    /// Default 100000.
    pub max_records: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 365,
            max_records: 100_000,
        }
    }
}

/// Which interfaces mDNS may use.
///
/// `"loopback"` (the built-in default, for tests and development), `"all"`
/// (every non-loopback interface that is up: the appliance), or a list of
/// interface names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Interfaces {
    Named(Vec<String>),
    Keyword(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Run mDNS at all. Default false: with no config file the relay never
    /// touches the network beyond its HTTP listener.
    pub enabled: bool,
    /// `"loopback"`, `"all"` or a list of interface names. Default
    /// `"loopback"`.
    pub interfaces: Interfaces,
    /// Instance name advertised for the relay. Default: `PatchPilot relay`
    /// followed by the end of the relay id.
    pub instance_name: String,
    /// Host name advertised (without `.local.`). Default `patchpilot-relay`.
    pub advertise_host: String,
    /// Port advertised. Default 0: the port of `server.http_listen`.
    pub advertise_port: u16,
    /// After an agent's mDNS goodbye, how long a check-in has to arrive
    /// before the device is marked offline. Default 5.
    pub goodbye_grace_s: u64,
    /// Unknown agents remembered in `/api/discovered` at most. Default 1000.
    pub max_discovered: usize,
    /// Announcements waiting to be handled at most; past it they are
    /// dropped and counted. Default 1024.
    pub queue: usize,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interfaces: Interfaces::Keyword("loopback".into()),
            instance_name: String::new(),
            advertise_host: "patchpilot-relay".into(),
            advertise_port: 0,
            goodbye_grace_s: 5,
            max_discovered: 1000,
            queue: 1024,
        }
    }
}

/// The webhook outbox. Destinations are checked against `allow_hosts` and
/// `deny_hosts`; a pattern is a host name or address, or `*.example.com`
/// for every name under a domain.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Undelivered events older than this are dropped (and counted).
    /// Default 30; at most `events.retention_days`.
    pub retention_days: i64,
    /// Events a webhook may have waiting (queued plus retrying); past it
    /// the oldest are dropped and counted. Default 200000; at most
    /// `events.max_events`.
    pub max_outbox: u64,
    /// How often an unreachable endpoint is probed with a TCP connect,
    /// in seconds. Default 5.
    pub probe_interval_s: u64,
    /// The first retry delay, in seconds; it doubles per attempt. Default 10.
    pub retry_base_s: u64,
    /// The longest retry delay, in seconds. Default 3600.
    pub retry_cap_s: u64,
    /// A delivery not answered 2xx within this many seconds failed.
    /// Default 10.
    pub timeout_s: u64,
    /// At most this many webhooks. Default 50.
    pub max_webhooks: usize,
    /// When not empty, only these hosts may receive webhooks.
    pub allow_hosts: Vec<String>,
    /// These hosts never receive webhooks (checked after `allow_hosts`).
    pub deny_hosts: Vec<String>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            max_outbox: 200_000,
            probe_interval_s: 5,
            retry_base_s: 10,
            retry_cap_s: 3600,
            timeout_s: 10,
            max_webhooks: 50,
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
        }
    }
}

/// Courier bundles (air-gapped sites).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CourierConfig {
    /// The largest inbound bundle accepted, in bytes; larger ones are
    /// refused whole (413 over the API). Default 268435456 (256 MiB).
    pub max_bundle_bytes: u64,
}

impl Default for CourierConfig {
    fn default() -> Self {
        Self {
            max_bundle_bytes: 256 << 20,
        }
    }
}

impl DiscoveryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        match &self.interfaces {
            Interfaces::Keyword(k) if k == "all" || k == "loopback" => {}
            Interfaces::Keyword(k) => {
                return Err(bad(
                    "discovery.interfaces",
                    format!("`{k}` is not \"all\", \"loopback\" or a list of names"),
                ))
            }
            Interfaces::Named(names) if names.is_empty() => {
                return Err(bad("discovery.interfaces", "the list is empty"))
            }
            Interfaces::Named(names) => {
                for name in names {
                    let ok = (1..=15).contains(&name.len())
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
                    if !ok {
                        return Err(bad(
                            "discovery.interfaces",
                            format!("`{name}` is not an interface name"),
                        ));
                    }
                }
            }
        }
        if self.instance_name.len() > 63 {
            return Err(bad("discovery.instance_name", "at most 63 bytes"));
        }
        let host_ok = (1..=63).contains(&self.advertise_host.len())
            && self
                .advertise_host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !host_ok {
            return Err(bad(
                "discovery.advertise_host",
                "1 to 63 letters, digits or hyphens",
            ));
        }
        in_range(
            "discovery.goodbye_grace_s",
            self.goodbye_grace_s as i64,
            0,
            3600,
        )?;
        in_range(
            "discovery.max_discovered",
            self.max_discovered as i64,
            1,
            100_000,
        )?;
        in_range("discovery.queue", self.queue as i64, 16, 1_000_000)?;
        Ok(())
    }
}

impl WebhooksConfig {
    fn validate(&self, events: &EventsConfig) -> Result<(), ConfigError> {
        in_range(
            "webhooks.retention_days",
            self.retention_days,
            1,
            events.retention_days,
        )?;
        in_range(
            "webhooks.max_outbox",
            self.max_outbox as i64,
            1,
            events.max_events as i64,
        )?;
        in_range(
            "webhooks.probe_interval_s",
            self.probe_interval_s as i64,
            1,
            300,
        )?;
        in_range("webhooks.retry_base_s", self.retry_base_s as i64, 1, 3600)?;
        in_range(
            "webhooks.retry_cap_s",
            self.retry_cap_s as i64,
            self.retry_base_s as i64,
            86_400,
        )?;
        in_range("webhooks.timeout_s", self.timeout_s as i64, 1, 60)?;
        in_range("webhooks.max_webhooks", self.max_webhooks as i64, 1, 1000)?;
        for (key, list) in [
            ("webhooks.allow_hosts", &self.allow_hosts),
            ("webhooks.deny_hosts", &self.deny_hosts),
        ] {
            if let Some(bad_pattern) = list.iter().find(|p| !valid_host_pattern(p)) {
                return Err(bad(
                    key,
                    format!("`{bad_pattern}` is not a host name, address or *.domain"),
                ));
            }
        }
        Ok(())
    }
}

fn valid_host_pattern(pattern: &str) -> bool {
    let body = pattern.strip_prefix("*.").unwrap_or(pattern);
    !body.is_empty()
        && body.len() <= 253
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

impl RelayConfig {
    /// Checks every value that serde's types alone cannot.
    ///
    /// # Errors
    /// The first bad setting, named by its dotted key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.store.validate()?;
        self.discovery.validate()?;
        self.limits.per_key().validate("limits.")?;
        positive(
            "limits.auth_failures_per_minute",
            self.limits.auth_failures_per_minute as i64,
        )?;
        positive("limits.max_tracked", self.limits.max_tracked as i64)?;
        in_range(
            "agents.offline_after_s",
            self.agents.offline_after_s,
            10,
            30 * 86_400,
        )?;
        in_range(
            "agents.checkin_interval_s",
            self.agents.checkin_interval_s as i64,
            5,
            86_400,
        )?;
        in_range(
            "agents.recent_results",
            self.agents.recent_results as i64,
            1,
            1000,
        )?;
        in_range("keys.max_expiry_days", self.keys.max_expiry_days, 1, 36_500)?;
        in_range(
            "compliance.interval_s",
            self.compliance.interval_s as i64,
            10,
            30 * 86_400,
        )?;
        in_range(
            "compliance.critical_max_age_days",
            self.compliance.critical_max_age_days,
            0,
            3650,
        )?;
        in_range(
            "compliance.checkin_max_age_days",
            self.compliance.checkin_max_age_days,
            1,
            3650,
        )?;
        in_range(
            "compliance.reboot_max_pending_days",
            self.compliance.reboot_max_pending_days,
            0,
            3650,
        )?;
        in_range(
            "compliance.snapshot_retention_days",
            self.compliance.snapshot_retention_days,
            1,
            3650,
        )?;
        in_range(
            "reboot.dispatch_grace_s",
            self.reboot.dispatch_grace_s,
            60,
            7 * 86_400,
        )?;
        in_range("reboot.max_ahead_days", self.reboot.max_ahead_days, 1, 365)?;
        in_range("events.retention_days", self.events.retention_days, 1, 3650)?;
        in_range(
            "events.max_events",
            self.events.max_events as i64,
            100,
            100_000_000,
        )?;
        self.webhooks.validate(&self.events)?;
        in_range(
            "courier.max_bundle_bytes",
            i64::try_from(self.courier.max_bundle_bytes).unwrap_or(i64::MAX),
            1024,
            4 << 30,
        )?;
        in_range("audit.retention_days", self.audit.retention_days, 1, 36_500)?;
        in_range(
            "audit.max_records",
            i64::try_from(self.audit.max_records).unwrap_or(i64::MAX),
            100,
            100_000_000,
        )?;
        Ok(())
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, value, example) in [
            ("server.http_listen", &self.http_listen, "127.0.0.1:8080"),
            ("server.https_listen", &self.https_listen, "0.0.0.0:8443"),
        ] {
            if !value.is_empty() && value.parse::<SocketAddr>().is_err() {
                return Err(bad(
                    name,
                    format!("`{value}` is not an address:port such as {example}"),
                ));
            }
        }
        if !self.http_listen.is_empty() && self.http_listen == self.https_listen {
            return Err(bad(
                "server.https_listen",
                "HTTP and HTTPS cannot share one address and port".to_string(),
            ));
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err(bad(
                if self.tls_cert_file.is_empty() {
                    "server.tls_cert_file"
                } else {
                    "server.tls_key_file"
                },
                "name both the certificate and the key file, or neither".to_string(),
            ));
        }
        in_range(
            "server.header_read_timeout_s",
            self.header_read_timeout_s as i64,
            1,
            3600,
        )?;
        in_range(
            "server.max_connections",
            self.max_connections as i64,
            1,
            1_000_000,
        )?;
        in_range(
            "server.api_body_limit",
            self.api_body_limit as i64,
            1024,
            64 << 20,
        )?;
        in_range(
            "server.agent_body_limit",
            self.agent_body_limit as i64,
            1024,
            256 << 20,
        )?;
        in_range(
            "server.request_timeout_s",
            self.request_timeout_s as i64,
            1,
            3600,
        )?;
        in_range(
            "server.shutdown_grace_s",
            self.shutdown_grace_s as i64,
            0,
            600,
        )?;
        Ok(())
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad("store.data_dir", "must not be empty"));
        }
        in_range(
            "store.cache_capacity_mib",
            self.cache_capacity_mib as i64,
            1,
            65_536,
        )?;
        in_range(
            "store.flush_every_ms",
            self.flush_every_ms as i64,
            1,
            60_000,
        )?;
        Ok(())
    }
}

fn positive(key: &str, value: i64) -> Result<(), ConfigError> {
    if value <= 0 {
        return Err(bad(key, "must be at least 1"));
    }
    Ok(())
}

fn in_range(key: &str, value: i64, min: i64, max: i64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(bad(key, format!("{value} is outside {min}..={max}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RelayConfig::default()
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn mdns_is_off_without_a_config_file() {
        let config = RelayConfig::default();
        assert!(!config.discovery.enabled);
        assert_eq!(
            config.discovery.interfaces,
            Interfaces::Keyword("loopback".into())
        );
    }

    #[test]
    fn discovery_interfaces_take_a_keyword_or_names() {
        let config: RelayConfig =
            toml::from_str("[discovery]\ninterfaces = [\"eth0\", \"wlan0\"]\n").expect("parses");
        config.validate().expect("names are valid");
        let config: RelayConfig =
            toml::from_str("[discovery]\ninterfaces = \"everything\"\n").expect("parses");
        assert_eq!(
            config.validate().expect_err("bad keyword").key,
            "discovery.interfaces"
        );
        let config: RelayConfig = toml::from_str("[discovery]\ninterfaces = []\n").expect("parses");
        assert!(config.validate().is_err());
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let mut config = RelayConfig::default();
        config.limits.write_burst = 0;
        let err = config.validate().expect_err("zero burst is invalid");
        assert_eq!(err.key, "limits.write_burst");

        let mut config = RelayConfig::default();
        config.server.http_listen = "localhost".into();
        assert_eq!(
            config.validate().expect_err("bad addr").key,
            "server.http_listen"
        );
    }
}
