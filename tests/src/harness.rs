//! Starts the real `patchpilot-relay` binary on a free loopback port with a
//! private data directory, for black-box tests and benchmarks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The relay binary, built on demand if the test run did not build it.
///
/// # Errors
/// The binary is missing and cannot be built.
pub fn relay_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe
        .parent()
        .context("test binary has no folder")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("patchpilot-relay");
    if !bin.exists() {
        let release = dir.ends_with("release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "appliance", "--bin", "patchpilot-relay"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .context("cannot run cargo to build the relay")?;
        if !status.success() || !bin.exists() {
            bail!("the relay binary {} could not be built", bin.display());
        }
    }
    Ok(bin)
}

/// A loopback port nobody is listening on right now.
///
/// # Errors
/// No port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// A relay process owned by a test.
pub struct RelayProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    pub port: u16,
    pub base_url: String,
    pub admin_key: String,
    pub admin_user: String,
    pub enrollment_token: String,
    pub log_path: PathBuf,
    /// The LAN host the relay runs on (see `netns`), if any.
    pub host: Option<crate::netns::Host>,
    /// The HTTPS port when the relay was started with [`Self::start_https`].
    pub https_port: Option<u16>,
    /// `PATCHPILOT_LOG` for the process (default: the test's own, else info).
    log_filter: Option<String>,
}

impl RelayProcess {
    /// Starts a relay whose config is the defaults plus `extra_toml`.
    ///
    /// # Errors
    /// The relay does not become ready within 30 s.
    pub fn start(extra_toml: &str) -> anyhow::Result<Self> {
        Self::start_on(None, extra_toml)
    }

    /// Like [`Self::start`], with HTTPS on a free loopback port as well
    /// (self-signed certificate unless `extra_toml` names one) and the log
    /// at `log_filter` when given.
    ///
    /// # Errors
    /// The relay does not become ready within 30 s.
    pub fn start_https(extra_toml: &str, log_filter: Option<&str>) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut extra: toml::Table = toml::from_str(extra_toml).context("extra config")?;
        merge(
            &mut extra,
            toml::from_str(&format!("[server]\nhttps_listen = \"127.0.0.1:{port}\"\n"))?,
        );
        Self::start_full(None, &toml::to_string(&extra)?, log_filter, Some(port))
    }

    /// Starts a relay inside the namespace of `host` (listening on
    /// `0.0.0.0:8080` there), or on loopback when `host` is `None`.
    ///
    /// # Errors
    /// The relay does not become ready within 30 s.
    pub fn start_on(host: Option<crate::netns::Host>, extra_toml: &str) -> anyhow::Result<Self> {
        Self::start_full(host, extra_toml, None, None)
    }

    fn start_full(
        host: Option<crate::netns::Host>,
        extra_toml: &str,
        log_filter: Option<&str>,
        https_port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (port, listen, base_url) = match &host {
            Some(h) => (
                8080,
                "0.0.0.0:8080".to_string(),
                format!("http://{}:8080", h.addr),
            ),
            None => {
                let port = free_port()?;
                (
                    port,
                    format!("127.0.0.1:{port}"),
                    format!("http://127.0.0.1:{port}"),
                )
            }
        };
        let mut config: toml::Table = toml::from_str(&format!(
            "[server]\nhttp_listen = \"{listen}\"\nhttps_listen = \"\"\n[store]\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ))?;
        merge(
            &mut config,
            toml::from_str(extra_toml).context("extra config")?,
        );
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, toml::to_string(&config)?)?;
        let mut relay = Self {
            child: None,
            log_path: dir.path().join("relay.log"),
            dir,
            config_path,
            port,
            base_url,
            host,
            admin_key: String::new(),
            admin_user: String::new(),
            enrollment_token: String::new(),
            https_port,
            log_filter: log_filter.map(str::to_string),
        };
        relay.launch()?;
        let out = relay.cli(&["init-admin", "--name", "test-admin"])?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        relay.admin_key = text
            .lines()
            .find_map(|l| l.strip_prefix("API key (shown once, store it now): "))
            .context("init-admin printed no key")?
            .trim()
            .to_string();
        relay.admin_user = text
            .lines()
            .find_map(|l| l.strip_prefix("admin user: "))
            .context("init-admin printed no user")?
            .trim()
            .to_string();
        relay.enrollment_token =
            std::fs::read_to_string(relay.data_dir().join("enrollment-token"))?
                .trim()
                .to_string();
        Ok(relay)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// (Re)starts the process and waits until `/readyz` answers 200.
    ///
    /// # Errors
    /// The process exits or is not ready within 30 s.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = match &self.host {
            Some(h) => h.command(&relay_binary()?),
            None => Command::new(relay_binary()?),
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env(
                "PATCHPILOT_LOG",
                self.log_filter.clone().unwrap_or_else(|| {
                    std::env::var("PATCHPILOT_LOG").unwrap_or_else(|_| "info".into())
                }),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the relay")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("the relay exited with {status}: {}", self.log_tail());
            }
            if self.get_status("/readyz") == Some(200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the relay did not become ready: {}", self.log_tail())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A bare blocking GET, for readiness polling.
    pub fn get_status(&self, path: &str) -> Option<u16> {
        if let Some(h) = &self.host {
            let url = format!("http://127.0.0.1:{}{path}", self.port);
            return h.http("GET", &url, None).ok().map(|(code, _)| code);
        }
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().ok()?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// Runs the CLI against this relay's config.
    ///
    /// # Errors
    /// The CLI exits non-zero.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = Command::new(relay_binary()?)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "CLI {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the process dies at once, as in a power cut of the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit. Returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
