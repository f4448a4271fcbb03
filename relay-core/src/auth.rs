//! API keys and users. A key is `ppk_` and 40 random alphanumerics (about
//! 238 bits); the store keeps only its SHA-256 and a display prefix. Keys
//! take their user's role; disabling the user stops all of them at once.
//!
//! Presented secrets are looked up by their SHA-256, so the time a check
//! takes depends on the hash, not on how much of a real key was guessed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;
use crate::config::RateLimit;
use crate::ids::{KeyId, UserId};

pub const KEY_PREFIX: &str = "ppk_";
pub const AGENT_TOKEN_PREFIX: &str = "ppa_";
pub const ENROLLMENT_TOKEN_PREFIX: &str = "ppe_";
const SECRET_LEN: usize = 40;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Role::Viewer, Role::Operator, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub user_id: UserId,
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: Timestamp,
    pub disabled_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: KeyId,
    pub name: String,
    pub user_id: UserId,
    pub prefix: String,
    pub hash: [u8; 32],
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub rate_limit: Option<RateLimit>,
}

/// A freshly minted secret. Its `Debug` never shows the value.
pub struct Secret(String);

impl Secret {
    pub fn generate(prefix: &str) -> Self {
        let body: String = rand::rngs::OsRng
            .sample_iter(&Alphanumeric)
            .take(SECRET_LEN)
            .map(char::from)
            .collect();
        Self(format!("{prefix}{body}"))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> [u8; 32] {
        hash_secret(&self.0)
    }

    /// `ppk_ab12…`: enough to recognise a key, useless to an attacker.
    pub fn display_prefix(&self) -> String {
        let shown: String = self.0.chars().take(KEY_PREFIX.len() + 4).collect();
        format!("{shown}…")
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Who is calling, once a key has been accepted.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: UserId,
    pub key_id: KeyId,
    pub role: Role,
    pub rate_limit: Option<RateLimit>,
}

impl Principal {
    pub fn allows(&self, needed: Role) -> bool {
        self.role >= needed
    }
}

/// Why a presented key was not accepted. All map to 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no API key was presented")]
    Missing,
    #[error("the API key is not valid")]
    Unknown,
    #[error("the API key has expired")]
    Expired,
    #[error("the API key has been revoked")]
    Revoked,
    #[error("the API key's user is disabled")]
    UserDisabled,
}

#[derive(Default)]
struct Tables {
    keys: HashMap<KeyId, KeyRecord>,
    by_hash: HashMap<[u8; 32], KeyId>,
    users: HashMap<UserId, UserRecord>,
    /// Last use not yet written to the store (0: nothing new). Atomics, so
    /// that the request path needs only the read lock.
    last_used: HashMap<KeyId, Arc<AtomicI64>>,
}

/// Keys and users held in memory for the request path. The store is the
/// truth; writers refresh this after every change.
#[derive(Default)]
pub struct AuthCache {
    tables: RwLock<Tables>,
}

impl AuthCache {
    pub fn load(users: Vec<UserRecord>, keys: Vec<KeyRecord>) -> Self {
        let cache = Self::default();
        for user in users {
            cache.put_user(user);
        }
        for key in keys {
            cache.put_key(key);
        }
        cache
    }

    pub fn put_user(&self, user: UserRecord) {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        t.users.insert(user.user_id, user);
    }

    pub fn put_key(&self, key: KeyRecord) {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        t.by_hash.insert(key.hash, key.key_id);
        t.last_used.entry(key.key_id).or_default();
        t.keys.insert(key.key_id, key);
    }

    pub fn user(&self, id: UserId) -> Option<UserRecord> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .users
            .get(&id)
            .cloned()
    }

    pub fn key(&self, id: KeyId) -> Option<KeyRecord> {
        let t = self.tables.read().unwrap_or_else(|p| p.into_inner());
        t.keys.get(&id).cloned().map(|mut k| {
            k.last_used_at = pending_use(&t, id).or(k.last_used_at);
            k
        })
    }

    pub fn users(&self) -> Vec<UserRecord> {
        let t = self.tables.read().unwrap_or_else(|p| p.into_inner());
        let mut users: Vec<_> = t.users.values().cloned().collect();
        users.sort_by_key(|u| u.user_id);
        users
    }

    pub fn keys(&self) -> Vec<KeyRecord> {
        let t = self.tables.read().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<_> = t
            .keys
            .values()
            .cloned()
            .map(|mut k| {
                k.last_used_at = pending_use(&t, k.key_id).or(k.last_used_at);
                k
            })
            .collect();
        keys.sort_by_key(|k| k.key_id);
        keys
    }

    pub fn has_admin(&self) -> bool {
        let t = self.tables.read().unwrap_or_else(|p| p.into_inner());
        t.users
            .values()
            .any(|u| u.role == Role::Admin && !u.disabled)
    }

    /// Checks a presented `Authorization` value.
    ///
    /// # Errors
    /// Why the key is not accepted.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        now: Timestamp,
    ) -> Result<Principal, AuthError> {
        let secret = presented.ok_or(AuthError::Missing)?;
        if !secret.starts_with(KEY_PREFIX) {
            return Err(AuthError::Unknown);
        }
        let hash = hash_secret(secret);
        let t = self.tables.read().unwrap_or_else(|p| p.into_inner());
        let key_id = *t.by_hash.get(&hash).ok_or(AuthError::Unknown)?;
        let key = t.keys.get(&key_id).ok_or(AuthError::Unknown)?;
        if key.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if key.expires_at <= now {
            return Err(AuthError::Expired);
        }
        let user = t.users.get(&key.user_id).ok_or(AuthError::Unknown)?;
        if user.disabled {
            return Err(AuthError::UserDisabled);
        }
        let principal = Principal {
            user_id: user.user_id,
            key_id,
            role: user.role,
            rate_limit: key.rate_limit,
        };
        if let Some(used) = t.last_used.get(&key_id) {
            used.store(now.0, Ordering::Relaxed);
        }
        Ok(principal)
    }

    /// Last-use times not yet written to the store; taken, so each is
    /// written once.
    pub fn take_last_used(&self) -> HashMap<KeyId, Timestamp> {
        let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
        let taken: HashMap<KeyId, Timestamp> = t
            .last_used
            .iter()
            .filter_map(|(id, at)| match at.swap(0, Ordering::Relaxed) {
                0 => None,
                secs => Some((*id, Timestamp(secs))),
            })
            .collect();
        for (id, at) in &taken {
            if let Some(k) = t.keys.get_mut(id) {
                k.last_used_at = Some(*at);
            }
        }
        taken
    }
}

fn pending_use(t: &Tables, id: KeyId) -> Option<Timestamp> {
    match t.last_used.get(&id).map(|a| a.load(Ordering::Relaxed)) {
        Some(0) | None => None,
        Some(secs) => Some(Timestamp(secs)),
    }
}

/// Pulls the secret out of `Authorization: Bearer …` (scheme in any case).
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(role: Role) -> (AuthCache, Secret, UserId) {
        let user = UserRecord {
            user_id: UserId::generate(),
            name: "alice".into(),
            role,
            disabled: false,
            created_at: Timestamp(0),
            disabled_at: None,
        };
        let secret = Secret::generate(KEY_PREFIX);
        let key = KeyRecord {
            key_id: KeyId::generate(),
            name: "k".into(),
            user_id: user.user_id,
            prefix: secret.display_prefix(),
            hash: secret.hash(),
            created_at: Timestamp(0),
            expires_at: Timestamp(1000),
            revoked_at: None,
            last_used_at: None,
            rate_limit: None,
        };
        let uid = user.user_id;
        (AuthCache::load(vec![user], vec![key]), secret, uid)
    }

    #[test]
    fn keys_are_long_random_and_never_shown_in_debug() {
        let s = Secret::generate(KEY_PREFIX);
        assert_eq!(s.expose().len(), 44);
        assert!(s.expose()[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(!format!("{s:?}").contains(&s.expose()[4..]));
        assert_eq!(s.display_prefix().chars().count(), 9);
    }

    #[test]
    fn a_valid_key_authenticates_with_its_users_role() {
        let (cache, secret, _) = setup(Role::Operator);
        let p = cache
            .authenticate(Some(secret.expose()), Timestamp(10))
            .expect("valid");
        assert_eq!(p.role, Role::Operator);
        assert!(p.allows(Role::Viewer) && !p.allows(Role::Admin));
    }

    #[test]
    fn expired_unknown_and_disabled_keys_are_refused() {
        let (cache, secret, uid) = setup(Role::Admin);
        assert_eq!(
            cache
                .authenticate(Some(secret.expose()), Timestamp(1000))
                .err(),
            Some(AuthError::Expired)
        );
        assert_eq!(
            cache.authenticate(Some("ppk_nope"), Timestamp(1)).err(),
            Some(AuthError::Unknown)
        );
        assert_eq!(
            cache.authenticate(None, Timestamp(1)).err(),
            Some(AuthError::Missing)
        );
        let mut user = cache.user(uid).expect("user");
        user.disabled = true;
        cache.put_user(user);
        assert_eq!(
            cache
                .authenticate(Some(secret.expose()), Timestamp(1))
                .err(),
            Some(AuthError::UserDisabled)
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer(Some("bEaReR ppk_x")), Some("ppk_x"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer")), None);
    }
}
