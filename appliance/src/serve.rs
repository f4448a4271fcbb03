//! `patchpilot-relay serve`: open the store, bind the listeners, run until
//! SIGTERM or SIGINT, then drain requests and flush the store.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use relay_core::clock::Clock;
use relay_core::{Lifecycle, Relay, RelayConfig};
use tokio::sync::watch;

/// Runs the relay until a stop signal.
///
/// # Errors
/// The store cannot be opened or a listener cannot be bound.
pub async fn run(config: RelayConfig) -> anyhow::Result<()> {
    let dir = &config.store.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    set_mode(dir, 0o700)?;
    let relay = match Relay::open(config.clone(), Clock::system()).map_err(anyhow::Error::new) {
        Ok(relay) => relay,
        Err(err) if format!("{err:#}").contains("could not acquire lock") => anyhow::bail!(
            "another relay is already using the data directory {}",
            config.store.data_dir.display()
        ),
        Err(err) => return Err(err.context("cannot open the store")),
    };
    tracing::info!(relay_id = %relay.relay_id, data_dir = %config.store.data_dir.display(), devices = relay.fleet.len(), "store opened");
    first_start(&relay).await?;
    import_configured_kev(&relay).await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    let limits = relay_core::server::Limits::from_config(&config.server);
    let mut http_port = 0;
    if !config.server.http_listen.is_empty() {
        let listener = bind(&config.server.http_listen, "server.http_listen").await?;
        http_port = listener.local_addr()?.port();
        tracing::info!(address = %listener.local_addr()?, "listening for HTTP");
        servers.push(tokio::spawn(relay_core::server::serve(
            listener,
            None,
            relay_core::api::router(relay.clone()),
            limits.clone(),
            stop_rx.clone(),
        )));
    }
    let mut tls_endpoint = None;
    if !config.server.https_listen.is_empty() {
        let identity =
            relay_core::tls::TlsIdentity::for_config(&config).context("cannot set up TLS")?;
        let tls = identity.server_config().context("cannot set up TLS")?;
        let listener = bind(&config.server.https_listen, "server.https_listen").await?;
        let port = listener.local_addr()?.port();
        tracing::info!(
            address = %listener.local_addr()?,
            fingerprint = %identity.fingerprint_colons(),
            certificate = %identity.cert_path.display(),
            "listening for HTTPS"
        );
        relay.set_tls_fingerprint(identity.fingerprint.clone());
        servers.push(tokio::spawn(relay_core::server::serve(
            listener,
            Some(tls),
            relay_core::api::router(relay.clone()),
            limits,
            stop_rx.clone(),
        )));
        tls_endpoint = Some((port, identity.fingerprint));
    }
    let control = control_socket(&relay, &config, stop_rx.clone())?;
    servers.push(tokio::spawn(async move {
        if let Ok(Err(err)) = control.await {
            tracing::warn!(error = %err, "control socket stopped with an error");
        }
    }));
    let presence = tokio::spawn(relay_core::presence::run(relay.clone(), stop_rx.clone()));
    let mdns = start_discovery(&relay, http_port, tls_endpoint, stop_rx.clone())?;
    let outbox = tokio::spawn(relay_core::webhooks::outbox::run(
        relay.clone(),
        stop_rx.clone(),
    ));
    let tasks = tokio::spawn(relay_core::tasks::run(relay.clone(), stop_rx));

    let watchdog = crate::systemd::spawn_watchdog(stop_tx.subscribe());

    relay.set_lifecycle(Lifecycle::Ready);
    crate::systemd::ready();
    tracing::info!("relay ready");
    wait_for_signal().await;

    tracing::info!("stopping: draining requests");
    crate::systemd::stopping();
    relay.set_lifecycle(Lifecycle::Stopping);
    let _ = stop_tx.send(true);
    if let Some(watchdog) = watchdog {
        let _ = watchdog.await;
    }
    if let Some(mdns) = mdns {
        mdns.shutdown();
    }
    let grace = Duration::from_secs(config.server.shutdown_grace_s);
    let drained = tokio::time::timeout(grace, async {
        for server in servers {
            let _ = server.await;
        }
        let _ = tasks.await;
        let _ = presence.await;
        let _ = outbox.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_s = grace.as_secs(),
            "requests still running at the shutdown deadline"
        );
    }
    relay
        .store
        .sync_now()
        .await
        .context("final store flush failed")?;
    let _ = std::fs::remove_file(crate::settings::socket_path(&config));
    tracing::info!("relay stopped");
    Ok(())
}

/// Starts mDNS when the config asks for it (never with the built-in
/// defaults). The relay advertises its HTTPS port and certificate
/// fingerprint when HTTPS is on, its plain-HTTP port otherwise.
fn start_discovery(
    relay: &Arc<Relay>,
    http_port: u16,
    tls: Option<(u16, String)>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<relay_core::discovery::MdnsDiscovery>> {
    let config = &relay.config.discovery;
    if !config.enabled {
        return Ok(None);
    }
    let (port, fingerprint) = match tls {
        Some((port, fingerprint)) => (port, Some(fingerprint)),
        None => (http_port, None),
    };
    if port == 0 && config.advertise_port == 0 {
        tracing::warn!("mDNS not started: no listener and no discovery.advertise_port");
        return Ok(None);
    }
    let discovery = relay_core::discovery::MdnsDiscovery::start(
        relay.clone(),
        port,
        fingerprint.as_deref(),
        stop,
    )
    .context("cannot start mDNS discovery")?;
    Ok(Some(discovery))
}

async fn bind(address: &str, key: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let addr: SocketAddr = address.parse().with_context(|| key.to_string())?;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key})"))
}

fn control_socket(
    relay: &Arc<Relay>,
    config: &RelayConfig,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let path = crate::settings::socket_path(config);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot create the control socket {}", path.display()))?;
    set_mode(&path, 0o600)?;
    let app = relay_core::control::router(relay.clone());
    let app = app.into_make_service_with_connect_info::<relay_core::api::audit::ControlPeer>();
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await
    }))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// On a fresh store: mint the site enrollment token and leave it in a
/// root-only file for the technician. It is never logged.
async fn first_start(relay: &Relay) -> anyhow::Result<()> {
    if relay.has_enrollment_token() {
        return Ok(());
    }
    let token = relay.rotate_enrollment_token().await?;
    let path = write_enrollment_token(&relay.config.store.data_dir, token.expose())?;
    tracing::info!(file = %path.display(), "site enrollment token created");
    Ok(())
}

/// Writes the enrollment token file (0600) and returns its path.
///
/// # Errors
/// The file cannot be written.
pub fn write_enrollment_token(data_dir: &Path, token: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("enrollment-token");
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{token}")?;
    file.sync_all()?;
    Ok(path)
}

async fn import_configured_kev(relay: &Relay) {
    let Some(path) = relay.config.vulnerabilities.kev_file.clone() else {
        return;
    };
    let catalog = match std::fs::read(&path)
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(relay_core::vulns::parse_kev(&b)?))
    {
        Ok(c) => c,
        Err(err) => {
            tracing::warn!(file = %path.display(), error = %err, "KEV catalog not imported");
            return;
        }
    };
    let current = relay
        .kev
        .read()
        .map(|k| k.version.clone())
        .unwrap_or_default();
    if current.is_some() && current == catalog.version {
        return;
    }
    if let Err(err) = relay.import_kev(catalog).await {
        tracing::warn!(file = %path.display(), error = %err, "KEV catalog not imported");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
