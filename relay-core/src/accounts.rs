//! Users and API keys: creation, listing, revocation, offboarding. Shared by
//! the REST API and the local control socket the CLI uses.

use serde::{Deserialize, Serialize};

use crate::auth::{KeyRecord, Role, Secret, UserRecord, KEY_PREFIX};
use crate::clock::Timestamp;
use crate::config::RateLimit;
use crate::error::{check_text, Checks, RelayError, RelayResult};
use crate::ids::{KeyId, UserId};
use crate::relay::Relay;
use crate::store::{Batch, Table};

/// A key as lists show it: never the secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub key_id: KeyId,
    pub name: String,
    pub prefix: String,
    pub user_id: UserId,
    pub role: Option<Role>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked: bool,
    pub revoked_at: Option<Timestamp>,
    pub rate_limit: Option<RateLimit>,
}

/// A key just created: the only time `key` is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewKey {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    #[schema(value_type = Option<crate::ids::UserId>)]
    pub user_id: Option<String>,
    #[schema(minimum = 1)]
    pub expires_in_days: Option<i64>,
    #[schema(value_type = Option<Timestamp>)]
    pub expires_at: Option<String>,
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewUser {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    #[schema(value_type = Role)]
    pub role: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub user_id: UserId,
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: Timestamp,
    pub disabled_at: Option<Timestamp>,
}

impl From<UserRecord> for UserView {
    fn from(u: UserRecord) -> Self {
        Self {
            user_id: u.user_id,
            name: u.name,
            role: u.role,
            disabled: u.disabled,
            created_at: u.created_at,
            disabled_at: u.disabled_at,
        }
    }
}

impl Relay {
    fn key_view(&self, k: KeyRecord) -> KeyView {
        KeyView {
            role: self.auth.user(k.user_id).map(|u| u.role),
            key_id: k.key_id,
            name: k.name,
            prefix: k.prefix,
            user_id: k.user_id,
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            revoked: k.revoked_at.is_some(),
            revoked_at: k.revoked_at,
            rate_limit: k.rate_limit,
        }
    }

    pub fn keys(&self) -> Vec<KeyView> {
        self.auth
            .keys()
            .into_iter()
            .map(|k| self.key_view(k))
            .collect()
    }

    pub fn users(&self) -> Vec<UserView> {
        self.auth.users().into_iter().map(UserView::from).collect()
    }

    /// Creates a user.
    ///
    /// # Errors
    /// 422 for a bad name or role, 409 for a name in use.
    pub async fn create_user(&self, req: NewUser) -> RelayResult<UserView> {
        let mut checks = Checks::new();
        let name = req.name.trim().to_string();
        check_text(&mut checks, "name", &name, 1, 100);
        let role = Role::parse(&req.role);
        checks.check(role.is_some(), "role", "must be admin, operator or viewer");
        checks.finish()?;
        let role =
            role.ok_or_else(|| RelayError::invalid("role", "must be admin, operator or viewer"))?;
        if self.auth.users().iter().any(|u| u.name == name) {
            return Err(RelayError::Conflict {
                detail: format!("a user named {name:?} exists"),
            });
        }
        let user = UserRecord {
            user_id: UserId::generate(),
            name,
            role,
            disabled: false,
            created_at: self.clock.now(),
            disabled_at: None,
        };
        let mut batch = Batch::new();
        batch.put(Table::Users, user.user_id.to_bytes().to_vec(), &user);
        self.store.writer().apply(batch)?;
        self.store.durable().await?;
        self.auth.put_user(user.clone());
        tracing::info!(user_id = %user.user_id, role = role.as_str(), "user created");
        Ok(user.into())
    }

    /// Disables a user: every key of theirs stops on its next request.
    ///
    /// # Errors
    /// 404 for an unknown user.
    pub async fn disable_user(&self, id: UserId) -> RelayResult<UserView> {
        let mut user = self.auth.user(id).ok_or(RelayError::NotFound("user"))?;
        if !user.disabled {
            // Checked under the writer lock, so two admins disabling each
            // other at once cannot both succeed.
            {
                let mut writer = self.store.writer();
                if user.role == Role::Admin && !self.auth.has_other_admin(id) {
                    return Err(RelayError::Conflict {
                        detail: "this is the last enabled admin: create another admin before disabling it"
                            .into(),
                    });
                }
                user.disabled = true;
                user.disabled_at = Some(self.clock.now());
                let mut batch = Batch::new();
                batch.put(Table::Users, id.to_bytes().to_vec(), &user);
                writer.apply(batch)?;
                self.auth.put_user(user.clone());
            }
            self.store.durable().await?;
            tracing::info!(user_id = %id, "user disabled");
        }
        Ok(user.into())
    }

    /// Mints a key for `owner` (the caller's user unless the body names
    /// another).
    ///
    /// # Errors
    /// 422 for a bad name, user or expiry; 409 for a name the user already
    /// has; 404 for an unknown user.
    pub async fn create_key(&self, req: NewKey, owner: UserId) -> RelayResult<CreatedKey> {
        let now = self.clock.now();
        let mut checks = Checks::new();
        let name = req.name.trim().to_string();
        check_text(&mut checks, "name", &name, 1, 100);
        let user_id = match &req.user_id {
            Some(text) => text
                .parse::<UserId>()
                .map_err(|_| RelayError::invalid("user_id", "is not a user id"))?,
            None => owner,
        };
        let expires_at = self.key_expiry(&mut checks, &req, now);
        if let Some(limits) = &req.rate_limit {
            if let Err(err) = limits.validate("rate_limit.") {
                checks.fail(err.key, err.problem);
            }
        }
        checks.finish()?;
        let user = self
            .auth
            .user(user_id)
            .ok_or_else(|| RelayError::invalid("user_id", "no such user"))?;
        if user.disabled {
            return Err(RelayError::invalid("user_id", "the user is disabled"));
        }
        let taken = self
            .auth
            .keys()
            .iter()
            .any(|k| k.user_id == user_id && k.revoked_at.is_none() && k.name == name);
        if taken {
            return Err(RelayError::Conflict {
                detail: format!("the user already has a key named {name:?}"),
            });
        }

        let secret = Secret::generate(KEY_PREFIX);
        let key = KeyRecord {
            key_id: KeyId::generate(),
            name,
            user_id,
            prefix: secret.display_prefix(),
            hash: secret.hash(),
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
            rate_limit: req.rate_limit,
        };
        let mut batch = Batch::new();
        batch.put(Table::Keys, key.key_id.to_bytes().to_vec(), &key);
        batch.put(Table::KeyHashes, key.hash.to_vec(), &key.key_id);
        self.store.writer().apply(batch)?;
        self.store.durable().await?;
        self.auth.put_key(key.clone());
        tracing::info!(key_id = %key.key_id, user_id = %user_id, "API key created");
        Ok(CreatedKey {
            view: self.key_view(key),
            key: secret.expose().to_string(),
        })
    }

    fn key_expiry(&self, checks: &mut Checks, req: &NewKey, now: Timestamp) -> Timestamp {
        let max_days = self.config.keys.max_expiry_days;
        let ceiling = now.plus_seconds(max_days * Timestamp::SECONDS_PER_DAY);
        let expires = match (req.expires_in_days, &req.expires_at) {
            (Some(_), Some(_)) => {
                checks.fail("expires_at", "give expires_at or expires_in_days, not both");
                return now;
            }
            (None, None) => {
                checks.fail(
                    "expires_in_days",
                    "an expiry is required (expires_in_days or expires_at)",
                );
                return now;
            }
            (Some(days), None) => {
                if !(1..=max_days).contains(&days) {
                    checks.fail(
                        "expires_in_days",
                        format!("must be between 1 and {max_days}"),
                    );
                    return now;
                }
                now.plus_seconds(days * Timestamp::SECONDS_PER_DAY)
            }
            (None, Some(at)) => match Timestamp::parse(at) {
                Ok(t) => t,
                Err(err) => {
                    checks.fail("expires_at", err.to_string());
                    return now;
                }
            },
        };
        if expires <= now {
            checks.fail("expires_at", "must be in the future");
        } else if expires > ceiling {
            checks.fail(
                "expires_at",
                format!("must be at most {max_days} days ahead"),
            );
        }
        expires
    }

    /// Revokes a key; it stops working at once.
    ///
    /// # Errors
    /// 404 for an unknown key.
    pub async fn revoke_key(&self, id: KeyId) -> RelayResult<()> {
        let mut batch = Batch::new();
        if let Some(key) = self.stage_revoke_key(&mut batch, id, self.clock.now())? {
            self.store.writer().apply(batch)?;
            self.store.durable().await?;
            self.auth.put_key(key);
            tracing::info!(key_id = %id, "API key revoked");
        }
        Ok(())
    }

    /// Adds a key's revocation to `batch` and returns the revoked record
    /// (`None` when it was revoked already). The caller puts the record
    /// into the auth cache once the batch is applied.
    ///
    /// # Errors
    /// 404 for an unknown key.
    pub fn stage_revoke_key(
        &self,
        batch: &mut Batch,
        id: KeyId,
        now: Timestamp,
    ) -> RelayResult<Option<KeyRecord>> {
        let mut key = self.auth.key(id).ok_or(RelayError::NotFound("key"))?;
        if key.revoked_at.is_some() {
            return Ok(None);
        }
        key.revoked_at = Some(now);
        batch.put(Table::Keys, id.to_bytes().to_vec(), &key);
        Ok(Some(key))
    }

    /// Writes the last-use times gathered in memory (at most once a minute,
    /// so that reads do not wear the SD card).
    ///
    /// # Errors
    /// A storage failure.
    pub fn persist_last_used(&self) -> RelayResult<()> {
        let used = self.auth.take_last_used();
        if used.is_empty() {
            return Ok(());
        }
        let mut writer = self.store.writer();
        let mut batch = Batch::new();
        for (id, at) in used {
            if let Some(mut key) = writer
                .store()
                .get::<KeyRecord>(Table::Keys, &id.to_bytes())?
            {
                key.last_used_at = Some(at);
                batch.put(Table::Keys, id.to_bytes().to_vec(), &key);
            }
        }
        writer.apply(batch)?;
        Ok(())
    }
}
