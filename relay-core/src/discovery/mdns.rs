//! The mdns-sd daemon: restricted to the configured interfaces before it
//! advertises or browses anything, with a bounded queue to the handler.

use std::sync::Arc;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::{mpsc, watch};

use super::{relay_txt, Announcement, DiscoveryMetrics, AGENT_SERVICE, RELAY_SERVICE};
use crate::config::Interfaces;
use crate::relay::Relay;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the mDNS daemon could not start")]
    Daemon(#[source] mdns_sd::Error),
    #[error("the relay's mDNS service could not be registered")]
    Register(#[source] mdns_sd::Error),
    #[error("browsing for agents failed")]
    Browse(#[source] mdns_sd::Error),
}

/// What the mDNS thread hands to the handler.
enum Heard {
    Agent(Box<Announcement>),
    Gone(String),
}

/// A running discovery: the daemon and its tasks.
pub struct MdnsDiscovery {
    daemon: ServiceDaemon,
    fullname: String,
}

impl MdnsDiscovery {
    /// Starts the daemon on the configured interfaces, advertises the relay
    /// on `port` and browses for agents until `stop` turns true.
    ///
    /// # Errors
    /// The daemon cannot start, or the relay's service cannot be
    /// registered or the browse started.
    pub fn start(
        relay: Arc<Relay>,
        port: u16,
        tls_fingerprint: Option<&str>,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, DiscoveryError> {
        let config = &relay.config.discovery;
        let daemon = ServiceDaemon::new().map_err(DiscoveryError::Daemon)?;
        select_interfaces(&daemon, &config.interfaces).map_err(DiscoveryError::Daemon)?;

        let instance = if config.instance_name.is_empty() {
            let id = &relay.relay_id;
            format!("PatchPilot relay {}", &id[id.len().saturating_sub(8)..])
        } else {
            config.instance_name.clone()
        };
        let host = format!("{}.local.", config.advertise_host);
        let port = if config.advertise_port == 0 {
            port
        } else {
            config.advertise_port
        };
        let txt = relay_txt(&relay.relay_id, tls_fingerprint);
        let info = ServiceInfo::new(RELAY_SERVICE, &instance, &host, (), port, &txt[..])
            .map_err(DiscoveryError::Register)?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_string();
        daemon.register(info).map_err(DiscoveryError::Register)?;
        let events = daemon
            .browse(AGENT_SERVICE)
            .map_err(DiscoveryError::Browse)?;
        tracing::info!(instance = %instance, port, interfaces = ?config.interfaces, "mDNS announced");

        let (tx, rx) = mpsc::channel(config.queue);
        tokio::spawn(forward(events, tx, relay.clone(), stop.clone()));
        tokio::spawn(handle(rx, relay));
        Ok(Self { daemon, fullname })
    }

    /// Sends the relay's goodbye and stops the daemon.
    pub fn shutdown(self) {
        if let Err(err) = self.daemon.unregister(&self.fullname) {
            tracing::debug!(error = %err, "mDNS unregister failed");
        }
        if let Err(err) = self.daemon.shutdown() {
            tracing::debug!(error = %err, "mDNS shutdown failed");
        }
        tracing::info!("mDNS stopped");
    }
}

/// Restricts the daemon to the configured interfaces. Selections apply in
/// order, the last match winning: everything off first.
fn select_interfaces(daemon: &ServiceDaemon, interfaces: &Interfaces) -> mdns_sd::Result<()> {
    daemon.disable_interface(IfKind::All)?;
    match interfaces {
        Interfaces::Keyword(k) if k == "all" => {
            daemon.enable_interface(IfKind::All)?;
            daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        }
        Interfaces::Keyword(_) => {
            daemon.enable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        }
        Interfaces::Named(names) => {
            let kinds: Vec<IfKind> = names.iter().map(IfKind::from).collect();
            daemon.enable_interface(kinds)?;
        }
    }
    Ok(())
}

/// Moves events from the mDNS thread into the bounded queue, dropping (and
/// counting) what does not fit so that a flood costs bounded memory.
async fn forward(
    events: mdns_sd::Receiver<ServiceEvent>,
    tx: mpsc::Sender<Heard>,
    relay: Arc<Relay>,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = &relay.discovery.metrics;
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = events.recv_async() => match event {
                Ok(e) => e,
                Err(_) => break,
            },
        };
        let heard = match event {
            ServiceEvent::ServiceResolved(service) => {
                let addresses = service
                    .get_addresses()
                    .iter()
                    .map(|a| (a.to_ip_addr(), a.to_string()))
                    .collect();
                let txt = service
                    .get_properties()
                    .iter()
                    .map(|p| (p.key().to_string(), p.val_str().to_string()))
                    .collect();
                match Announcement::try_new(
                    service.get_fullname(),
                    service.get_hostname(),
                    addresses,
                    service.get_port(),
                    txt,
                ) {
                    Ok(a) => Heard::Agent(Box::new(a)),
                    Err(err) => {
                        DiscoveryMetrics::count(&metrics.refused);
                        tracing::debug!(fullname = service.get_fullname(), error = %err, "announcement refused");
                        continue;
                    }
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => Heard::Gone(fullname),
            _ => continue,
        };
        if tx.try_send(heard).is_err() {
            DiscoveryMetrics::count(&metrics.dropped);
        }
    }
}

async fn handle(mut rx: mpsc::Receiver<Heard>, relay: Arc<Relay>) {
    while let Some(heard) = rx.recv().await {
        let relay = relay.clone();
        // sled is synchronous: the writes run off the async workers.
        let outcome = tokio::task::spawn_blocking(move || match heard {
            Heard::Agent(a) => relay.on_announcement(&a),
            Heard::Gone(fullname) => {
                relay.on_goodbye(&fullname);
                Ok(())
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "announcement not handled"),
            Err(err) => tracing::error!(error = %err, "announcement handler panicked"),
        }
    }
}
