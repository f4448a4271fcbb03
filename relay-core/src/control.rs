//! The local control socket: the CLI's way to a running relay.
//!
//! sled lets one process hold the store, so `patchpilot-relay keys …` asks
//! the running relay over a Unix socket in the data directory instead of
//! opening the store. The socket is created 0600 inside the 0700 data
//! directory: whoever can open it is the appliance's administrator.
//!
//! | route | purpose |
//! | --- | --- |
//! | `POST /bootstrap` | first admin user and key, on a relay with no admin |
//! | `GET/POST /users`, `POST /users/:id/disable` | users |
//! | `GET/POST /keys`, `DELETE /keys/:id` | keys |
//! | `POST /enrollment-token` | rotate the site enrollment token |
//! | `POST /kev` | import a CISA KEV catalog (body: its JSON) |
//! | `POST /catalog` | import a WES-NG `definitions.zip` (body: the zip) |
//! | `POST /assess` | assess a machine: `systeminfo` text or `{os_build, installed_kbs}` |
//! | `GET /backup` | a consistent snapshot of the store, as a backup file |
//! | `GET /courier`, `POST /courier/trust`, `DELETE /courier/trust/:key` | courier keys and versions |
//! | `POST /bundles`, `GET /bundles/export` | courier bundles in and out |
//! | `GET /audit` | the audit trail (same filters as `GET /api/audit`) |
//!
//! Every change made here, and every backup taken, is written to the audit
//! trail with the caller's operating-system user id.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::{NewKey, NewUser};
use crate::api::problem::{ApiError, ApiResult};
use crate::api::JsonBody;
use crate::auth::Role;
use crate::error::RelayError;
use crate::ids::{KeyId, UserId};
use crate::relay::Relay;

pub const SOCKET_NAME: &str = "control.sock";

#[derive(Debug, Deserialize)]
pub struct Bootstrap {
    pub name: String,
    pub expires_in_days: i64,
}

/// Transparent rather than flattened: a flattened body loses the field path,
/// so a wrong-typed field was reported as `body` (a property-test finding).
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct LocalKey {
    pub key: NewKey,
}

pub fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/bootstrap", post(bootstrap))
        .route("/users", get(users_list).post(users_create))
        .route("/users/{user_id}/disable", post(users_disable))
        .route("/keys", get(keys_list).post(keys_create))
        .route("/keys/{key_id}", delete(keys_revoke))
        .route("/enrollment-token", post(enrollment_rotate))
        .route("/kev", post(kev_import))
        .route("/backup", get(backup_take))
        .route("/courier", get(courier_status))
        .route("/courier/trust", post(courier_trust_add))
        .route("/courier/trust/{key}", delete(courier_trust_remove))
        .route("/bundles", post(bundles_import))
        .route("/bundles/export", get(bundles_export))
        .route("/audit", get(audit_list))
        .route(
            "/catalog",
            post(catalog_import).layer(axum::extract::DefaultBodyLimit::max(256 << 20)),
        )
        .route("/assess", post(assess))
        .layer(axum::middleware::from_fn_with_state(
            relay.clone(),
            crate::api::audit::audit_cli,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(16 << 20))
        .with_state(relay)
}

async fn audit_list(
    State(relay): State<Arc<Relay>>,
    params: crate::api::Params,
) -> ApiResult<Json<serde_json::Value>> {
    crate::api::audit::audit_page(&relay, &params).map(Json)
}

/// Reads the control socket's peer credentials, for the audit trail.
impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for crate::api::audit::ControlPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Self {
            uid: stream.io().peer_cred().ok().map(|cred| cred.uid()),
        }
    }
}

/// Creates the first admin and their key. Refused once an admin exists.
///
/// # Errors
/// 409 when an admin exists; 422 for bad fields.
pub async fn bootstrap_admin(
    relay: &Relay,
    req: Bootstrap,
) -> Result<serde_json::Value, RelayError> {
    if relay.auth.has_admin() {
        return Err(RelayError::Conflict {
            detail: "an admin exists already; create keys with `keys create`".into(),
        });
    }
    let user = relay
        .create_user(NewUser {
            name: req.name,
            role: Role::Admin.as_str().into(),
        })
        .await?;
    let key = relay
        .create_key(
            NewKey {
                name: "bootstrap".into(),
                user_id: None,
                expires_in_days: Some(req.expires_in_days),
                expires_at: None,
                rate_limit: None,
            },
            user.user_id,
        )
        .await?;
    Ok(json!({"user": user, "key": key}))
}

async fn bootstrap(
    State(relay): State<Arc<Relay>>,
    JsonBody(req): JsonBody<Bootstrap>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    Ok((
        StatusCode::CREATED,
        Json(bootstrap_admin(&relay, req).await?),
    ))
}

async fn users_list(State(relay): State<Arc<Relay>>) -> Json<serde_json::Value> {
    Json(json!({"users": relay.users()}))
}

async fn users_create(
    State(relay): State<Arc<Relay>>,
    JsonBody(req): JsonBody<NewUser>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let user = relay.create_user(req).await?;
    Ok((StatusCode::CREATED, Json(json!(user))))
}

async fn users_disable(
    State(relay): State<Arc<Relay>>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<Json<serde_json::Value>> {
    let id: UserId = id
        .parse()
        .map_err(|_| ApiError::NotFound("no such user".into()))?;
    Ok(Json(json!(relay.disable_user(id).await?)))
}

async fn keys_list(State(relay): State<Arc<Relay>>) -> Json<serde_json::Value> {
    Json(json!({"keys": relay.keys()}))
}

async fn keys_create(
    State(relay): State<Arc<Relay>>,
    JsonBody(req): JsonBody<LocalKey>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let owner = match &req.key.user_id {
        Some(id) => id
            .parse::<UserId>()
            .map_err(|_| ApiError::from(RelayError::invalid("user_id", "is not a user id")))?,
        None => {
            return Err(
                RelayError::invalid("user_id", "name the user the key is for (--user)").into(),
            )
        }
    };
    let created = relay.create_key(req.key, owner).await?;
    Ok((StatusCode::CREATED, Json(json!(created))))
}

async fn keys_revoke(
    State(relay): State<Arc<Relay>>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<StatusCode> {
    let id: KeyId = id
        .parse()
        .map_err(|_| ApiError::NotFound("no such key".into()))?;
    relay.revoke_key(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn enrollment_rotate(State(relay): State<Arc<Relay>>) -> ApiResult<Json<serde_json::Value>> {
    let token = relay.rotate_enrollment_token().await?;
    Ok(Json(json!({"enrollment_token": token.expose()})))
}

async fn kev_import(
    State(relay): State<Arc<Relay>>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let catalog = crate::vulns::parse_kev(&body).map_err(|e| {
        ApiError::Invalid(vec![crate::error::FieldError::new("body", e.to_string())])
    })?;
    let version = catalog.version.clone();
    let entries = relay.import_kev(catalog).await?;
    Ok(Json(json!({"entries": entries, "version": version})))
}

async fn catalog_import(
    State(relay): State<Arc<Relay>>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    match relay.import_catalog(body.to_vec(), None).await {
        Ok(summary) => Ok(Json(json!(summary))),
        Err(crate::catalog::CatalogError::Store(err)) => Err(RelayError::Store(err).into()),
        Err(err) => Err(ApiError::Invalid(vec![crate::error::FieldError::new(
            "catalog",
            err.to_string(),
        )])),
    }
}

async fn assess(
    State(relay): State<Arc<Relay>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    crate::api::assessments::assess_body(&relay, content_type, &body)
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
pub struct TrustRequest {
    pub public_key: String,
    pub name: String,
}

async fn courier_status(State(relay): State<Arc<Relay>>) -> ApiResult<Json<serde_json::Value>> {
    let status = relay.courier_status().map_err(crate::api::courier_error)?;
    Ok(Json(json!(status)))
}

async fn courier_trust_add(
    State(relay): State<Arc<Relay>>,
    JsonBody(req): JsonBody<TrustRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let record = relay.trust_add(&req.public_key, &req.name).await?;
    Ok((StatusCode::CREATED, Json(json!(record))))
}

async fn courier_trust_remove(
    State(relay): State<Arc<Relay>>,
    crate::api::RawId(key): crate::api::RawId,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!(relay.trust_remove(&key).await?)))
}

async fn bundles_import(
    State(relay): State<Arc<Relay>>,
    request: axum::extract::Request,
) -> ApiResult<Json<serde_json::Value>> {
    let bytes = crate::api::read_bundle(request, relay.config.courier.max_bundle_bytes).await?;
    let report = relay
        .import_bundle(bytes, None)
        .await
        .map_err(crate::api::courier_error)?;
    Ok(Json(json!(report)))
}

async fn bundles_export(State(relay): State<Arc<Relay>>) -> ApiResult<Response> {
    crate::api::export_response(relay).await
}

/// Streams a consistent snapshot of the store. The snapshot is written
/// under the writer lock to an unlinked file in the data directory, then
/// sent at the client's pace, so a slow reader never holds up check-ins.
async fn backup_take(State(relay): State<Arc<Relay>>) -> ApiResult<Response> {
    let snapshot = relay.clone();
    let taken = tokio::task::spawn_blocking(move || snapshot_to_file(&snapshot))
        .await
        .map_err(|_| ApiError::Internal)?;
    let (file, summary) = taken.map_err(|err| {
        tracing::error!(error = %err, cause = ?std::error::Error::source(&err), "backup failed");
        ApiError::Internal
    })?;
    tracing::info!(
        records = summary.records,
        bytes = summary.bytes,
        "backup taken"
    );

    let stream = futures_util::stream::unfold(tokio::fs::File::from_std(file), |mut file| async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), file))
            }
            Err(err) => Some((Err(err), file)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, summary.bytes.to_string()),
            (header::ETAG, format!("\"sha256:{}\"", summary.sha256)),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

fn snapshot_to_file(
    relay: &Relay,
) -> Result<(std::fs::File, crate::store::BackupSummary), crate::store::BackupError> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let write_err = crate::store::BackupError::Write;
    let path = relay
        .config
        .store
        .data_dir
        .join(format!(".backup-{}", crate::ids::next_ulid()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(write_err)?;
    // Unlinked at once: the open handle keeps the data, and nothing is left
    // behind if the relay dies mid-way.
    std::fs::remove_file(&path).map_err(write_err)?;
    let header = crate::store::BackupHeader {
        relay_id: relay.relay_id.clone(),
        created_at: relay.clock.now().unix(),
        record_version: crate::store::RECORD_VERSION,
    };
    let summary = relay.store.write_backup(&header, &mut file)?;
    file.seek(SeekFrom::Start(0)).map_err(write_err)?;
    Ok((file, summary))
}
