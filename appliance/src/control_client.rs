//! The CLI's side of the control socket. With a relay running, requests go
//! over `<data_dir>/control.sock`; with none, the CLI opens the store itself
//! and runs the very same handlers in-process.

use std::path::Path;

use anyhow::{bail, Context};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use relay_core::{Relay, RelayConfig};
use tower::ServiceExt;

/// Sends one request to the relay's control API and returns the status and
/// JSON body.
///
/// # Errors
/// Neither the socket nor the store can be reached, or the answer is not JSON.
pub async fn call(
    config: &RelayConfig,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let request = build(method, path, body)?;
    send(config, path, request).await
}

/// [`call`] with a raw body of the given content type (a catalog archive,
/// a `systeminfo` text).
///
/// # Errors
/// As [`call`].
pub async fn call_raw(
    config: &RelayConfig,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "relay")
        .header("content-type", content_type)
        .body(Body::from(body))?;
    send(config, path, request).await
}

/// Whether a relay answers on the control socket.
pub async fn relay_running(config: &RelayConfig) -> bool {
    tokio::net::UnixStream::connect(crate::settings::socket_path(config))
        .await
        .is_ok()
}

async fn send(
    config: &RelayConfig,
    path: &str,
    request: Request<Body>,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let socket = crate::settings::socket_path(config);
    match tokio::net::UnixStream::connect(&socket).await {
        Ok(stream) => over_socket(stream, request).await,
        Err(_) => {
            // Only the first-boot steps (the site enrollment token, the
            // first admin) may create a store; anything else on a data dir
            // without one is a wrong --config/--data-dir.
            let first_boot = matches!(path, "/bootstrap" | "/enrollment-token");
            if !first_boot && !config.store.data_dir.join("store").exists() {
                bail!(
                    "no relay is running and there is no store at {} (check --config / --data-dir)",
                    config.store.data_dir.display()
                );
            }
            in_process(config, request, &socket).await
        }
    }
}

/// Sends a binary body (a courier bundle) to the relay's control API and
/// returns the status and JSON body.
///
/// # Errors
/// Neither the socket nor the store can be reached, or the answer is not JSON.
pub async fn call_bytes(
    config: &RelayConfig,
    path: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let socket = crate::settings::socket_path(config);
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "relay")
        .header("content-type", "application/octet-stream")
        .body(Body::from(bytes))?;
    match tokio::net::UnixStream::connect(&socket).await {
        Ok(stream) => over_socket(stream, request).await,
        Err(_) => {
            if !config.store.data_dir.join("store").exists() {
                bail!(
                    "no relay is running and there is no store at {} (check --config / --data-dir)",
                    config.store.data_dir.display()
                );
            }
            in_process(config, request, &socket).await
        }
    }
}

/// Fetches a binary answer (a backup) from the relay's control API into
/// `out`, which must not exist: written to `out.partial`, fsynced, renamed.
///
/// # Errors
/// The relay cannot be reached or refuses, or `out` cannot be written.
pub async fn download(config: &RelayConfig, path: &str, out: &Path) -> anyhow::Result<()> {
    let socket = crate::settings::socket_path(config);
    let request = build(Method::GET, path, None)?;
    let partial = partial_path(out);
    let mut file = create_private(&partial)?;
    let saved = match tokio::net::UnixStream::connect(&socket).await {
        Ok(stream) => {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .context("the control socket did not answer")?;
            tokio::spawn(connection);
            let response = sender.send_request(request).await?;
            save(response, &mut file).await
        }
        Err(_) => {
            let relay = open_in_process(config, &socket)?;
            let response = relay_core::control::router(relay.clone())
                .oneshot(request)
                .await?;
            let saved = save(response, &mut file).await;
            // What the answer recorded (an export's version) must last.
            relay.store.sync_now().await?;
            saved
        }
    };
    let finished = saved.and_then(|()| {
        file.sync_all()?;
        std::fs::rename(&partial, out)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), out.display()))
    });
    if finished.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    finished
}

fn partial_path(out: &Path) -> std::path::PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    name.into()
}

fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

async fn save<B>(response: axum::http::Response<B>, file: &mut std::fs::File) -> anyhow::Result<()>
where
    B: hyper::body::Body<Data = axum::body::Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    use std::io::Write;
    let (parts, mut body) = response.into_parts();
    if !parts.status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        return expect_ok(parts.status, parse(&bytes)).map(drop);
    }
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            file.write_all(&data)?;
        }
    }
    Ok(())
}

pub(crate) fn open_in_process(
    config: &RelayConfig,
    socket: &Path,
) -> anyhow::Result<std::sync::Arc<Relay>> {
    match Relay::open(config.clone(), relay_core::clock::Clock::system())
        .map_err(anyhow::Error::new)
    {
        Ok(relay) => {
            relay.set_lifecycle(relay_core::Lifecycle::Ready);
            Ok(relay)
        }
        Err(err) if format!("{err:#}").contains("could not acquire lock") => bail!(
            "the store at {} is held by a running relay whose control socket {} does not answer",
            config.store.data_dir.display(),
            socket.display()
        ),
        Err(err) => bail!(
            "cannot reach a running relay at {} nor open its store: {err:#}",
            socket.display()
        ),
    }
}

fn build(
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Request<Body>> {
    let builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "relay");
    let request = match body {
        Some(json) => builder
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&json)?))?,
        None => builder.body(Body::empty())?,
    };
    Ok(request)
}

async fn over_socket(
    stream: tokio::net::UnixStream,
    request: Request<Body>,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("the control socket did not answer")?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .context("the control request failed")?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, parse(&bytes)))
}

async fn in_process(
    config: &RelayConfig,
    request: Request<Body>,
    socket: &Path,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let relay = open_in_process(config, socket)?;
    let response = relay_core::control::router(relay.clone())
        .oneshot(request)
        .await
        .context("the control request failed")?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    relay.store.sync_now().await?;
    Ok((status, parse(&bytes)))
}

fn parse(bytes: &[u8]) -> serde_json::Value {
    if bytes.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into()))
}

/// Turns a non-2xx answer into an error carrying the relay's own words.
///
/// # Errors
/// When `status` is not a success.
pub fn expect_ok(status: StatusCode, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    if status.is_success() {
        return Ok(body);
    }
    let detail = body
        .get("detail")
        .and_then(|d| d.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    let fields = body
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    format!(
                        "\n  {}: {}",
                        e["field"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect::<String>()
        })
        .unwrap_or_default();
    bail!("the relay refused: {detail}{fields}")
}
