//! A webhook receiver for tests and benchmarks: a small HTTP/1.1 server on
//! tokio that keeps every delivery's headers and raw body and answers as
//! scripted (a status, `Retry-After`, a slow answer, or a connection closed
//! in the middle of the response).
//!
//! Signatures are checked with [`hmac_sha256_hex`], an HMAC written here
//! from SHA-256 (RFC 2104), independent of the `hmac` crate the relay signs
//! with.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the receiver answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(u16),
    /// 429 or 503 with this `Retry-After` value.
    RetryAfter(u16, String),
    /// Waits this long, then answers 200.
    Slow(Duration),
    /// Sends part of a status line and closes the connection.
    Hangup,
}

/// One request as received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    pub event: String,
    pub delivery: String,
    pub signature: String,
    /// The raw body, exactly as received.
    pub body: String,
    /// Milliseconds since the receiver started.
    pub at_ms: u64,
    /// The status answered (0 for a hangup).
    pub answered: u16,
}

impl Receipt {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn event_id(&self) -> String {
        self.json()["event_id"].as_str().unwrap_or("").to_string()
    }

    pub fn sequence(&self) -> u64 {
        self.json()["sequence"].as_u64().unwrap_or(0)
    }

    /// Whether some `v1=` of the signature is the HMAC of `"<t>.<body>"`
    /// under `secret`.
    pub fn signed_by(&self, secret: &str) -> bool {
        let mut t = None;
        let mut v1 = Vec::new();
        for part in self.signature.split(',') {
            match part.split_once('=') {
                Some(("t", v)) => t = Some(v.to_string()),
                Some(("v1", v)) => v1.push(v.to_string()),
                _ => {}
            }
        }
        let Some(t) = t else {
            return false;
        };
        let expected = hmac_sha256_hex(secret.as_bytes(), format!("{t}.{}", self.body).as_bytes());
        v1.contains(&expected)
    }
}

/// HMAC-SHA256 (RFC 2104) over SHA-256, as lowercase hex.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize();
    hex::encode(outer)
}

struct Inner {
    receipts: Mutex<Vec<Receipt>>,
    script: Mutex<VecDeque<Reply>>,
    log: Option<Mutex<std::fs::File>>,
    started: Instant,
}

/// A running receiver; clones share it.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

impl Receiver {
    /// Listens on `addr` (port 0 for any). With `log`, every receipt is
    /// also appended there as a JSON line.
    ///
    /// # Errors
    /// The address cannot be bound or the log cannot be opened.
    pub async fn start(addr: SocketAddr, log: Option<&Path>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let log = match log {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        };
        let inner = Arc::new(Inner {
            receipts: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            log,
            started: Instant::now(),
        });
        let receiver = Self {
            addr: listener.local_addr()?,
            inner,
        };
        let accepting = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = accepting.clone();
                tokio::spawn(async move { conn.serve(stream).await });
            }
        });
        Ok(receiver)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Queues replies for the next requests; after them, 200.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(replies);
    }

    pub fn receipts(&self) -> Vec<Receipt> {
        self.inner
            .receipts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn count(&self) -> usize {
        self.inner
            .receipts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Waits until `pred` holds over the receipts, or `timeout` passes.
    /// Checks every 50 ms (not per arrival, so that a large backlog does
    /// not make the waiting quadratic), under the lock, without copying.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Receipt]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let receipts = self
                    .inner
                    .receipts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if pred(&receipts) {
                    return true;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
    }

    async fn serve(&self, mut stream: TcpStream) {
        let mut buf = Vec::with_capacity(8192);
        loop {
            let Some((head, body)) = read_request(&mut stream, &mut buf).await else {
                return;
            };
            let reply = self
                .inner
                .script
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
                .unwrap_or(Reply::Status(200));
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default()
            };
            let answered = match &reply {
                Reply::Status(s) | Reply::RetryAfter(s, _) => *s,
                Reply::Slow(_) => 200,
                Reply::Hangup => 0,
            };
            let receipt = Receipt {
                event: header("x-patchpilot-event"),
                delivery: header("x-patchpilot-delivery"),
                signature: header("x-patchpilot-signature"),
                body: String::from_utf8_lossy(&body).into_owned(),
                at_ms: self.inner.started.elapsed().as_millis() as u64,
                answered,
            };
            // Recorded before answering: a delivery counts as received
            // once it is here, whatever happens to the answer.
            self.record(receipt);
            let response = match reply {
                Reply::Status(s) => format!("HTTP/1.1 {s} X\r\ncontent-length: 0\r\n\r\n"),
                Reply::RetryAfter(s, after) => {
                    format!("HTTP/1.1 {s} X\r\nretry-after: {after}\r\ncontent-length: 0\r\n\r\n")
                }
                Reply::Slow(d) => {
                    tokio::time::sleep(d).await;
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string()
                }
                Reply::Hangup => {
                    let _ = stream.write_all(b"HTTP/1.1 20").await;
                    return;
                }
            };
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn record(&self, receipt: Receipt) {
        if let Some(log) = &self.inner.log {
            let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(line) = serde_json::to_string(&receipt) {
                let _ = writeln!(file, "{line}");
            }
        }
        self.inner
            .receipts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(receipt);
    }
}

/// Reads one request (head and `Content-Length` body) from a keep-alive
/// connection; `None` when it closes.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some((head, body))
}

/// Receipts from a log written by a receiver in another process.
pub fn read_log(path: &Path) -> Vec<Receipt> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
