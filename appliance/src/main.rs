//! `patchpilot-relay`: the appliance binary. CLI, config, logging and the
//! wiring of `relay-core`; no behaviour of its own beyond that.

mod backup;
mod catalog_cli;
mod control_client;
mod courier;
mod serve;
mod settings;
mod systemd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use axum::http::Method;
use clap::{Parser, Subcommand};
use serde_json::json;

/// The PatchPilot relay: the on-site appliance that keeps the fleet's patch
/// state and serves the PatchPilot API on the LAN.
#[derive(Parser)]
#[command(name = "patchpilot-relay", version)]
struct Cli {
    /// TOML config file (default: the built-in config).
    #[arg(long, global = true, env = "PATCHPILOT_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `store.data_dir`.
    #[arg(long, global = true, env = "PATCHPILOT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log format: text or json (to stderr), or journald (structured
    /// fields straight into the systemd journal).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PATCHPILOT_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
    Journald,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve,
    /// Create the first admin user and key on a fresh relay.
    InitAdmin {
        /// The admin's name.
        #[arg(long, default_value = "admin")]
        name: String,
        /// Days until the key expires.
        #[arg(long, default_value_t = 90)]
        expires_in_days: i64,
    },
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage API keys (works while the relay runs).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Mint a new site enrollment token; the old one stops working.
    RotateEnrollmentToken,
    /// Import a CISA KEV catalog (known_exploited_vulnerabilities.json).
    ImportKev { file: PathBuf },
    /// Import the Microsoft update catalog (WES-NG definitions.zip) for
    /// offline assessment; through the running relay when there is one.
    ImportCatalog { file: PathBuf },
    /// Assess a Windows machine from its `systeminfo` output (any common
    /// language) against the imported catalog; prints the missing updates
    /// and open CVEs (`--json` for the full answer).
    Assess {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check a config file and print the settings in force.
    CheckConfig,
    /// Show the audit trail of changes, newest first.
    Audit {
        /// Entries to show (1..=500).
        #[arg(long, default_value_t = 50)]
        limit: u16,
        /// Only entries by this user (usr_…).
        #[arg(long)]
        user: Option<String>,
        /// Only entries at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
    /// Show the HTTPS certificate and its SHA-256 fingerprint for pinning,
    /// creating the self-signed certificate if there is none yet.
    Tls {
        /// Replace the generated self-signed certificate with a new one
        /// (takes effect when the relay restarts).
        #[arg(long)]
        regenerate: bool,
    },
    /// Write a consistent backup of the store to FILE (while the relay runs,
    /// through its control socket).
    Backup { file: PathBuf },
    /// Check a backup file without restoring it.
    VerifyBackup { file: PathBuf },
    /// Replace the store with a backup. The relay must be stopped; a damaged
    /// or foreign file is refused and the current store is left as it was.
    Restore { file: PathBuf },
    /// Keys trusted to sign inbound courier bundles.
    #[command(subcommand)]
    Trust(courier::TrustCommand),
    /// Print the relay's public courier key (the MSP verifies exports with it).
    RelayKey,
    /// Apply a signed inbound courier bundle, all of it or nothing.
    ImportBundle { file: PathBuf },
    /// Write the signed outbound courier bundle of everything the MSP has
    /// not confirmed to OUT.
    ExportBundle { out: PathBuf },
    /// The MSP's side of the courier: keys, building, verifying and
    /// replaying bundles. Needs no relay.
    #[command(subcommand)]
    Bundle(courier::BundleCommand),
}

#[derive(Subcommand)]
enum UsersCommand {
    List,
    Create {
        #[arg(long)]
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
    },
    Disable {
        user_id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    List,
    Create {
        /// The user the key belongs to (usr_…).
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 90)]
        expires_in_days: i64,
    },
    Revoke {
        key_id: String,
    },
}

/// `patchpilot-relay tls`: print the certificate clients should pin.
fn tls_command(config: &relay_core::RelayConfig, regenerate: bool) -> anyhow::Result<()> {
    use relay_core::tls::{TlsIdentity, GENERATED_CERT, GENERATED_KEY};
    if regenerate {
        if !config.server.tls_cert_file.is_empty() {
            anyhow::bail!(
                "the config names its own certificate ({}): replace that file instead",
                config.server.tls_cert_file
            );
        }
        let dir = config.store.data_dir.join("tls");
        for name in [GENERATED_CERT, GENERATED_KEY] {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err).context("cannot remove the old certificate"),
            }
        }
    }
    if config.server.tls_cert_file.is_empty() {
        let dir = &config.store.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    let identity = TlsIdentity::for_config(config)?;
    let origin = match identity.source {
        relay_core::tls::Source::Configured => "from the config",
        relay_core::tls::Source::Generated { created_now: true } => "self-signed, created now",
        relay_core::tls::Source::Generated { created_now: false } => "self-signed",
    };
    println!("certificate: {} ({origin})", identity.cert_path.display());
    println!("sha256 fingerprint: {}", identity.fingerprint_colons());
    println!("names: {}", identity.names.join(", "));
    println!("expires: {}", identity.not_after);
    let port = config
        .server
        .https_listen
        .parse::<std::net::SocketAddr>()
        .map_or(8443, |addr| addr.port());
    println!(
        "pin with curl: curl --insecure --pinnedpubkey 'sha256//{}' https://<relay>:{port}/…",
        identity.spki_sha256
    );
    if regenerate {
        println!("restart the relay to serve the new certificate");
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PATCHPILOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(journald) => {
                let journald = journald.with_syslog_identifier("patchpilot-relay".into());
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journald)
                    .init();
                return;
            }
            Err(err) => eprintln!("patchpilot-relay: no journal ({err}); logging text to stderr"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    // Everything the relay and its CLI create (store, certificate, tokens,
    // backups, bundles) is readable by its owner only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Command::Bundle(command) = cli.command {
        // The MSP's side: no config, no store.
        return finish(
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(courier::bundle(command))),
        );
    }
    let config = match settings::load(cli.config.as_deref(), cli.data_dir.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("patchpilot-relay: {err:#}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("patchpilot-relay: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    finish(runtime.block_on(dispatch(cli.command, config)))
}

fn finish(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("patchpilot-relay: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, config: relay_core::RelayConfig) -> anyhow::Result<()> {
    use control_client::{call, expect_ok};
    let (method, path, body) = match command {
        Command::Serve => return serve::run(config).await,
        Command::Backup { file } => return backup::backup(&config, &file).await,
        Command::VerifyBackup { file } => return backup::verify(&file),
        Command::ImportCatalog { file } => return catalog_cli::import(&config, &file).await,
        Command::Assess { file, json } => return catalog_cli::assess(&config, &file, json).await,
        Command::Restore { file } => return backup::restore(&config, &file).await,
        Command::Trust(command) => return courier::trust(&config, command).await,
        Command::RelayKey => return courier::relay_key(&config).await,
        Command::ImportBundle { file } => return courier::import(&config, &file).await,
        Command::ExportBundle { out } => return courier::export(&config, &out).await,
        Command::Bundle(command) => return courier::bundle(command).await,
        Command::CheckConfig => {
            // Configured certificate files are part of the config: a pair
            // that `serve` would refuse fails the check too.
            if !config.server.tls_cert_file.is_empty() {
                relay_core::tls::TlsIdentity::from_files(
                    std::path::Path::new(&config.server.tls_cert_file),
                    std::path::Path::new(&config.server.tls_key_file),
                    relay_core::tls::Source::Configured,
                )
                .context("server.tls_cert_file / server.tls_key_file")?;
            }
            println!("{}", toml::to_string_pretty(&config)?);
            return Ok(());
        }
        Command::Tls { regenerate } => return tls_command(&config, regenerate),
        Command::InitAdmin {
            name,
            expires_in_days,
        } => {
            let (status, body) = call(
                &config,
                Method::POST,
                "/bootstrap",
                Some(json!({"name": name, "expires_in_days": expires_in_days})),
            )
            .await?;
            let body = expect_ok(status, body)?;
            println!(
                "admin user: {}",
                body["user"]["user_id"].as_str().unwrap_or("")
            );
            println!(
                "API key (shown once, store it now): {}",
                body["key"]["key"].as_str().unwrap_or("")
            );
            return Ok(());
        }
        Command::RotateEnrollmentToken => {
            let (status, body) = call(&config, Method::POST, "/enrollment-token", None).await?;
            let body = expect_ok(status, body)?;
            let token = body["enrollment_token"].as_str().unwrap_or("");
            let path = serve::write_enrollment_token(&config.store.data_dir, token)?;
            println!(
                "new enrollment token written to {} (0600): {token}",
                path.display()
            );
            return Ok(());
        }
        Command::ImportKev { file } => {
            let text =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let value: serde_json::Value = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            (Method::POST, "/kev".to_string(), Some(value))
        }
        Command::Users(UsersCommand::List) => (Method::GET, "/users".into(), None),
        Command::Users(UsersCommand::Create { name, role }) => (
            Method::POST,
            "/users".into(),
            Some(json!({"name": name, "role": role})),
        ),
        Command::Users(UsersCommand::Disable { user_id }) => {
            (Method::POST, format!("/users/{user_id}/disable"), None)
        }
        Command::Audit { limit, user, since } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(user.map(|u| ("user_id", u)));
            query.extend(since.map(|s| ("since", s)));
            let query = serde_urlencoded::to_string(&query)?;
            (Method::GET, format!("/audit?{query}"), None)
        }
        Command::Keys(KeysCommand::List) => (Method::GET, "/keys".into(), None),
        Command::Keys(KeysCommand::Create {
            user,
            name,
            expires_in_days,
        }) => (
            Method::POST,
            "/keys".into(),
            Some(json!({"user_id": user, "name": name, "expires_in_days": expires_in_days})),
        ),
        Command::Keys(KeysCommand::Revoke { key_id }) => {
            (Method::DELETE, format!("/keys/{key_id}"), None)
        }
    };
    let (status, body) = call(&config, method, &path, body).await?;
    let body = expect_ok(status, body)?;
    if !body.is_null() {
        println!("{}", serde_json::to_string_pretty(&body)?);
    }
    Ok(())
}
