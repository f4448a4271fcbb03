//! HTTP client for the agent protocol: one shared reqwest client, a bound on
//! requests in flight, and 429 back-off honouring `Retry-After`.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::protocol::{CheckinRequest, CheckinResponse, EnrollRequest, EnrollResponse};
use crate::stats::{Event, Stats};

/// How 429 answers are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = never retry).
    pub max_retries: u32,
    /// Upper bound of one wait, whatever `Retry-After` says.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            max_wait: Duration::from_secs(30),
        }
    }
}

/// A failed protocol call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The relay answered with a non-2xx status (body: the problem+json text).
    Status { status: u16, body: String },
    /// Connection, timeout or other transport failure.
    Transport(String),
    /// A 2xx answer whose body is not the expected JSON.
    Decode(String),
    /// A check-in was attempted before enrolling.
    NotEnrolled,
}

impl CallError {
    /// Short label for error counts: the status code, or the error kind.
    pub fn label(&self) -> String {
        match self {
            CallError::Status { status, .. } => status.to_string(),
            CallError::Transport(_) => "transport".to_owned(),
            CallError::Decode(_) => "decode".to_owned(),
            CallError::NotEnrolled => "not-enrolled".to_owned(),
        }
    }

    /// The HTTP status, if the relay answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Status { status, body } => write!(f, "HTTP {status}: {body}"),
            CallError::Transport(e) => write!(f, "transport error: {e}"),
            CallError::Decode(e) => write!(f, "cannot decode answer: {e}"),
            CallError::NotEnrolled => f.write_str("agent is not enrolled"),
        }
    }
}

impl std::error::Error for CallError {}

/// Cheap to clone; all clones share the connection pool and the in-flight bound.
#[derive(Debug, Clone)]
pub struct RelayClient {
    http: reqwest::Client,
    base: Url,
    in_flight: Arc<Semaphore>,
    retry: RetryPolicy,
    stats: Option<Arc<Stats>>,
}

/// Whether `url`'s host is loopback (`localhost`, 127.0.0.0/8, `::1`).
pub fn is_loopback_url(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Longest problem body kept in a [`CallError`].
const MAX_ERROR_BODY: usize = 2048;

impl RelayClient {
    /// A client for the relay at `base_url` (loopback only), with at most
    /// `max_in_flight` requests at a time.
    pub fn new(base_url: &str, max_in_flight: usize) -> anyhow::Result<RelayClient> {
        let client = RelayClient::new_any_host(base_url, max_in_flight)?;
        if !is_loopback_url(&client.base) {
            bail!("refusing non-loopback relay URL {base_url}");
        }
        Ok(client)
    }

    /// Like [`RelayClient::new`] without the loopback check.
    pub fn new_any_host(base_url: &str, max_in_flight: usize) -> anyhow::Result<RelayClient> {
        Self::build(base_url, max_in_flight, None)
    }

    /// An HTTPS client that accepts exactly the certificate whose SHA-256
    /// fingerprint (hex, colons allowed) is `pin`, as an agent does with the
    /// fingerprint the relay advertises over mDNS.
    pub fn new_pinned(
        base_url: &str,
        max_in_flight: usize,
        pin: &str,
    ) -> anyhow::Result<RelayClient> {
        let tls = crate::pinning::client_config(pin)?;
        Self::build(base_url, max_in_flight, Some(tls))
    }

    fn build(
        base_url: &str,
        max_in_flight: usize,
        tls: Option<rustls::ClientConfig>,
    ) -> anyhow::Result<RelayClient> {
        let base = Url::parse(base_url).with_context(|| format!("bad relay URL {base_url:?}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("relay URL must be http(s): {base_url}");
        }
        let permits = max_in_flight.max(1);
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(permits)
            .user_agent(concat!("patchpilot-fleet-sim/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder.build().context("build HTTP client")?;
        Ok(RelayClient {
            http,
            base,
            in_flight: Arc::new(Semaphore::new(permits)),
            retry: RetryPolicy::default(),
            stats: None,
        })
    }

    /// Replaces the 429 retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> RelayClient {
        self.retry = retry;
        self
    }

    /// Counts 429 retries into `stats`.
    pub fn with_stats(mut self, stats: Arc<Stats>) -> RelayClient {
        self.stats = Some(stats);
        self
    }

    /// The relay's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `POST /agent/v1/enroll`.
    pub async fn enroll(&self, req: &EnrollRequest<'_>) -> Result<EnrollResponse, CallError> {
        self.post("agent/v1/enroll", None, req).await
    }

    /// `POST /agent/v1/checkin` with the agent token.
    pub async fn checkin(
        &self,
        agent_token: &str,
        req: &CheckinRequest<'_>,
    ) -> Result<CheckinResponse, CallError> {
        self.post("agent/v1/checkin", Some(agent_token), req).await
    }

    /// `POST /agent/v1/checkin` with a pre-built JSON body. `make_body` runs
    /// once a request slot is free (and again for a retry), so that bodies of
    /// waiting agents are not held in memory.
    pub async fn checkin_with<F>(
        &self,
        agent_token: &str,
        make_body: F,
    ) -> Result<CheckinResponse, CallError>
    where
        F: Fn() -> Vec<u8> + Sync,
    {
        self.post_with("agent/v1/checkin", Some(agent_token), || Ok(make_body()))
            .await
    }

    /// POSTs `body` as JSON, retrying 429s, and decodes a 2xx JSON answer.
    pub async fn post<B: Serialize + ?Sized + Sync, T: DeserializeOwned>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &B,
    ) -> Result<T, CallError> {
        self.post_with(path, bearer, || {
            serde_json::to_vec(body).map_err(|e| CallError::Decode(e.to_string()))
        })
        .await
    }

    /// Like [`RelayClient::post`] with the body built by `make_body`.
    pub async fn post_with<T, F>(
        &self,
        path: &str,
        bearer: Option<&str>,
        make_body: F,
    ) -> Result<T, CallError>
    where
        T: DeserializeOwned,
        F: Fn() -> Result<Vec<u8>, CallError> + Sync,
    {
        let url = self
            .base
            .join(path)
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let mut attempt = 0;
        loop {
            let (status, headers, bytes) = self.send_once(&url, bearer, &make_body).await?;
            if status == StatusCode::TOO_MANY_REQUESTS && attempt < self.retry.max_retries {
                attempt += 1;
                if let Some(stats) = &self.stats {
                    stats.count(Event::Retry429);
                }
                tokio::time::sleep(self.retry_wait(&headers, attempt)).await;
                continue;
            }
            return decode(status, &bytes);
        }
    }

    async fn send_once<F>(
        &self,
        url: &Url,
        bearer: Option<&str>,
        make_body: &F,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), CallError>
    where
        F: Fn() -> Result<Vec<u8>, CallError> + Sync,
    {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let mut req = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(make_body()?);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(transport)?;
        Ok((status, headers, bytes.to_vec()))
    }

    /// `Retry-After` seconds (capped), else exponential back-off from 1 s.
    fn retry_wait(&self, headers: &HeaderMap, attempt: u32) -> Duration {
        let header = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let backoff = Duration::from_secs(1u64 << attempt.min(6));
        header.unwrap_or(backoff).min(self.retry.max_wait)
    }
}

fn transport(e: reqwest::Error) -> CallError {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    let mut message = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    CallError::Transport(message)
}

fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, CallError> {
    if !status.is_success() {
        let mut body = String::from_utf8_lossy(bytes).into_owned();
        if body.len() > MAX_ERROR_BODY {
            let cut = (0..=MAX_ERROR_BODY)
                .rev()
                .find(|i| body.is_char_boundary(*i))
                .unwrap_or(0);
            body.truncate(cut);
        }
        return Err(CallError::Status {
            status: status.as_u16(),
            body,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| CallError::Decode(format!("HTTP {status}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_by_default() -> anyhow::Result<()> {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1/",
            "http://[::1]:80",
            "http://127.1.2.3",
        ] {
            assert!(RelayClient::new(ok, 4).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://example.com",
            "ftp://127.0.0.1/",
        ] {
            assert!(RelayClient::new(bad, 4).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn retry_wait_honours_header_and_cap() -> anyhow::Result<()> {
        let client = RelayClient::new("http://127.0.0.1:1", 1)?.with_retry(RetryPolicy {
            max_retries: 2,
            max_wait: Duration::from_secs(10),
        });
        let mut h = HeaderMap::new();
        assert_eq!(client.retry_wait(&h, 1), Duration::from_secs(2));
        h.insert(RETRY_AFTER, "3".parse()?);
        assert_eq!(client.retry_wait(&h, 1), Duration::from_secs(3));
        h.insert(RETRY_AFTER, "3600".parse()?);
        assert_eq!(client.retry_wait(&h, 1), Duration::from_secs(10));
        Ok(())
    }

    #[test]
    fn decodes_errors_and_bodies() {
        let err = decode::<EnrollResponse>(StatusCode::UNAUTHORIZED, br#"{"status":401}"#);
        assert_eq!(
            err.as_ref().map_err(CallError::label).err().as_deref(),
            Some("401")
        );
        let bad = decode::<EnrollResponse>(StatusCode::CREATED, b"nope");
        assert!(matches!(bad, Err(CallError::Decode(_))));
        let ok = decode::<EnrollResponse>(
            StatusCode::CREATED,
            br#"{"device_id":"dev_1","agent_token":"ppa_x"}"#,
        );
        assert_eq!(ok.map(|r| r.device_id), Ok("dev_1".to_owned()));
    }
}
