//! Shared fixtures: the real profiles (loaded once), a started relay, and a
//! small JSON API client.

use std::sync::OnceLock;

use relay_tests::harness::RelayProcess;
use relay_tests::{profiles, Fleet, Profile, RelayClient};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

pub fn real_profiles() -> &'static [Profile] {
    static PROFILES: OnceLock<Vec<Profile>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        profiles::load_profiles(&profiles::default_data_dir())
            .expect("the shared data yields fleet profiles")
    })
}

pub struct Api {
    client: reqwest::Client,
    pub base: String,
    pub key: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Api {
    pub fn new(relay: &RelayProcess) -> Self {
        Self::with_key(relay, &relay.admin_key)
    }

    pub fn with_key(relay: &RelayProcess, key: &str) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: relay.base_url.clone(),
            key: key.to_string(),
        }
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if !self.key.is_empty() {
            req = req.bearer_auth(&self.key);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the relay answers");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Every item of a paged list, following `next_cursor`.
    pub async fn all(&self, path: &str, key: &str, limit: usize) -> Vec<Value> {
        let mut items = Vec::new();
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{path}{sep}limit={limit}");
        loop {
            let reply = self.get(&url).await;
            assert_eq!(reply.status, 200, "{url}: {}", reply.text);
            items.extend(reply.body[key].as_array().expect("a list").iter().cloned());
            match reply.body["next_cursor"].as_str() {
                Some(c) => url = format!("{path}{sep}limit={limit}&cursor={c}"),
                None => return items,
            }
        }
    }
}

/// A relay with `n` enrolled agents that have each checked in once.
pub async fn relay_with_fleet(
    n: usize,
    seed: u64,
    extra: &str,
) -> (RelayProcess, Fleet, RelayClient) {
    let relay = RelayProcess::start(extra).expect("the relay starts");
    let client = RelayClient::new(&relay.base_url, 16).expect("client");
    let mut fleet = Fleet::new(real_profiles(), n, seed).expect("fleet");
    let enrolled = fleet
        .enroll_all(&client, &relay.enrollment_token)
        .await
        .expect("enroll");
    assert_eq!(enrolled.failed, 0, "{:?}", enrolled.errors);
    let round = fleet.checkin_round(&client).await.expect("checkin");
    assert_eq!(round.failed, 0, "{:?}", round.errors);
    (relay, fleet, client)
}
