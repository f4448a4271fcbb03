//! Courier commands. On the site: `trust`, `relay-key`, `import-bundle`,
//! `export-bundle` (through the control socket, or the store itself when
//! no relay runs). At the MSP's office: `bundle keygen|build|verify|replay`,
//! which need no relay at all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use relay_core::clock::Clock;
use relay_core::courier::{format, msp};
use relay_core::RelayConfig;
use serde_json::json;

use crate::control_client::{call, call_bytes, download, expect_ok};

/// `patchpilot-relay trust …`
#[derive(Subcommand)]
pub enum TrustCommand {
    /// Trust a public key (64 hex digits, or a `.pub` file) for inbound bundles.
    Add {
        key: String,
        /// A name to recognise the key by (the MSP's office, a person).
        #[arg(long)]
        name: String,
    },
    /// The trusted keys and the relay's own public key.
    List,
    /// Stop trusting a key, named by its hex or its fingerprint.
    Remove { key: String },
}

/// `patchpilot-relay bundle …`: the MSP's side; no relay needed.
#[derive(Subcommand)]
pub enum BundleCommand {
    /// Make a signing key: writes FILE (secret, 0600) and FILE.pub.
    Keygen {
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Build and sign an inbound bundle.
    Build {
        /// The secret key file made by `bundle keygen`.
        #[arg(long)]
        key: PathBuf,
        /// A CISA KEV catalog (known_exploited_vulnerabilities.json).
        #[arg(long)]
        kev: Option<PathBuf>,
        /// The Microsoft update catalog (WES-NG's definitions.zip).
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Changes made at the office (exclusions, reboots, revocations,
        /// the confirmation of an export); see docs/courier.md.
        #[arg(long)]
        changes: Option<PathBuf>,
        /// The bundle's version: higher than any bundle sent to the site.
        #[arg(long)]
        version: u64,
        /// Only this relay (its relay id) may apply the bundle.
        #[arg(long)]
        relay: Option<String>,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Verify an export against the relay's public key and summarise it.
    Verify {
        file: PathBuf,
        /// The relay's public key (64 hex digits, or a file holding them).
        #[arg(long)]
        trust: String,
    },
    /// Verify an export, then post each of its events, with the headers
    /// and body of the original delivery, to a webhook endpoint.
    Replay {
        file: PathBuf,
        #[arg(long)]
        trust: String,
        /// The endpoint to post to.
        #[arg(long)]
        to: String,
        /// Only the deliveries meant for this webhook (whk_…).
        #[arg(long)]
        webhook: Option<String>,
        /// A file holding the webhook's secret (whsec_…): sign each event
        /// anew at replay time, for receivers whose timestamp tolerance an
        /// export's age exceeds. Without it the original signatures go out.
        #[arg(long)]
        resign_secret_file: Option<PathBuf>,
        /// Seconds to wait for each answer.
        #[arg(long, default_value_t = 10)]
        timeout_s: u64,
    },
}

/// A key given inline or as a file holding it.
fn key_text(arg: &str) -> anyhow::Result<String> {
    let path = Path::new(arg);
    if arg.len() != 64 && path.exists() {
        // `bundle keygen` writes FILE (the secret) beside FILE.pub: both are
        // 64 hex digits, so the sibling is what tells them apart.
        let mut public = path.as_os_str().to_owned();
        public.push(".pub");
        if Path::new(&public).exists() {
            bail!(
                "{arg} is a secret signing key (its public half is {arg}.pub): give the .pub file"
            );
        }
        return std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .with_context(|| format!("cannot read {}", path.display()));
    }
    Ok(arg.trim().to_string())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `bytes` to a new file `out` (0600 when `private`).
fn write_new(out: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist)", out.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn print(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs a `trust` command against the relay.
///
/// # Errors
/// The relay refuses or cannot be reached.
pub async fn trust(config: &RelayConfig, command: TrustCommand) -> anyhow::Result<()> {
    use axum::http::Method;
    let (status, body) = match command {
        TrustCommand::Add { key, name } => {
            let body = json!({"public_key": key_text(&key)?, "name": name});
            call(config, Method::POST, "/courier/trust", Some(body)).await?
        }
        TrustCommand::List => call(config, Method::GET, "/courier", None).await?,
        TrustCommand::Remove { key } => {
            let path = format!("/courier/trust/{}", key.trim());
            call(config, Method::DELETE, &path, None).await?
        }
    };
    print(&expect_ok(status, body)?)
}

/// Prints the relay's own public key, for the MSP's `bundle verify`.
///
/// # Errors
/// The relay cannot be reached.
pub async fn relay_key(config: &RelayConfig) -> anyhow::Result<()> {
    let (status, body) = call(config, axum::http::Method::GET, "/courier", None).await?;
    let body = expect_ok(status, body)?;
    println!("{}", body["relay_public_key"].as_str().unwrap_or(""));
    eprintln!(
        "fingerprint: {}",
        body["relay_key_fingerprint"].as_str().unwrap_or("")
    );
    Ok(())
}

/// Applies an inbound bundle.
///
/// # Errors
/// The bundle is refused (the message names why) or the relay cannot be reached.
pub async fn import(config: &RelayConfig, file: &Path) -> anyhow::Result<()> {
    let bytes = read(file)?;
    let (status, body) = call_bytes(config, "/bundles", bytes).await?;
    print(&expect_ok(status, body)?)
}

/// Writes the next export to `out`.
///
/// # Errors
/// `out` exists, or the relay cannot be reached.
pub async fn export(config: &RelayConfig, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} exists already; name a new file", out.display());
    }
    download(config, "/bundles/export", out).await?;
    let bytes = read(out)?;
    let files = format::unpack(&bytes, u64::MAX)?;
    let manifest = format::manifest_of(&files)?;
    let summary: serde_json::Value = files
        .get("export.json")
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    print(&json!({
        "file": out.display().to_string(),
        "bytes": bytes.len(),
        "signer": manifest.signer,
        "summary": summary,
    }))
}

/// Runs a `bundle` command (the MSP's side).
///
/// # Errors
/// Files cannot be read or written, or a bundle does not verify.
pub async fn bundle(command: BundleCommand) -> anyhow::Result<()> {
    match command {
        BundleCommand::Keygen { out } => keygen(&out),
        BundleCommand::Build {
            key,
            kev,
            catalog,
            changes,
            version,
            relay,
            out,
        } => {
            if key.extension().is_some_and(|e| e == "pub") {
                bail!(
                    "{} is a public key: sign with the secret key file `bundle keygen` wrote beside it",
                    key.display()
                );
            }
            let key = format::parse_secret_key(&std::fs::read_to_string(&key)?)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{} is not a courier secret key", key.display()))?;
            let files = msp::InboundFiles {
                kev: kev.as_deref().map(read).transpose()?,
                catalog: catalog.as_deref().map(read).transpose()?,
                changes: changes.as_deref().map(read).transpose()?,
            };
            let bytes = msp::build_inbound(&key, version, relay, files, Clock::system().now())?;
            write_new(&out, &bytes, false)?;
            print(
                &json!({"file": out.display().to_string(), "bytes": bytes.len(), "version": version}),
            )
        }
        BundleCommand::Verify { file, trust } => {
            let export = read_export(&file, &trust)?;
            print(&json!({
                "verified": true,
                "summary": export.summary,
                "events": export.events.len(),
                "parts": export.parts.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            }))
        }
        BundleCommand::Replay {
            file,
            trust,
            to,
            webhook,
            resign_secret_file,
            timeout_s,
        } => {
            let export = read_export(&file, &trust)?;
            let secret = match &resign_secret_file {
                Some(path) => {
                    let secret = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                        .trim()
                        .to_string();
                    if !secret.starts_with("whsec_") || secret.len() < 30 {
                        bail!(
                            "{} does not hold a webhook secret (whsec_…, as the relay showed it)",
                            path.display()
                        );
                    }
                    Some(secret)
                }
                None => None,
            };
            let report = msp::replay(
                &export,
                &to,
                webhook.as_deref(),
                secret.as_deref(),
                Duration::from_secs(timeout_s),
            )
            .await?;
            print(&json!(report))?;
            if !report.refused.is_empty() {
                bail!(
                    "{} of {} events were not accepted",
                    report.refused.len(),
                    report.sent
                );
            }
            Ok(())
        }
    }
}

fn read_export(file: &Path, trust: &str) -> anyhow::Result<msp::Export> {
    let key = format::parse_public_key(&key_text(trust)?).map_err(anyhow::Error::msg)?;
    let bytes = read(file)?;
    msp::read_export(&bytes, &key).with_context(|| format!("{} does not verify", file.display()))
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let key = format::generate_key();
    let public = format::key_hex(&key.verifying_key());
    let mut public_path = out.as_os_str().to_owned();
    public_path.push(".pub");
    write_new(
        out,
        format!("{}\n", format::secret_hex(&key)).as_bytes(),
        true,
    )?;
    write_new(
        Path::new(&public_path),
        format!("{public}\n").as_bytes(),
        false,
    )?;
    println!("{public}");
    eprintln!(
        "secret key: {} (0600, keep it offline); public key: {}; fingerprint {}",
        out.display(),
        Path::new(&public_path).display(),
        format::fingerprint(&public)
    );
    Ok(())
}
