//! `GET /api/openapi.json`: the OpenAPI 3.1 description of every route,
//! generated from the code. Each handler carries a `#[utoipa::path]`
//! annotation, each body type derives `utoipa::ToSchema`; this module lists
//! the annotated handlers in [`ApiDoc`], describes the bodies that handlers
//! build with `json!`, and adds what every route shares: the problem+json
//! error responses, the paging parameters and the two bearer schemes.
//!
//! A route added to the router without an annotation here fails the test
//! `every_route_is_documented` (see `docs/openapi.md`).

use std::sync::OnceLock;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response as OaResponse, ResponseBuilder};
use utoipa::openapi::schema::Type;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, ObjectBuilder, Ref, RefOr};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::problem::PROBLEM_JSON;
use crate::accounts::KeyView;
use crate::clock::Timestamp;
use crate::compliance::{Reason, SnapshotListing};
use crate::devices::DeviceSummary;
use crate::discovery::DiscoveredRecord;
use crate::exclusions::ExclusionKind;
use crate::ids::{DeliveryId, DeviceId, EventId, ExclusionId, ScheduleId, UserId, WebhookId};
use crate::inventory::{InstallResult, OsFamily, Severity};
use crate::reboots::RebootStatus;
use crate::vulns::Vulnerability;
use crate::webhooks::{DeliveryStatus, WebhookStatus};

/// The security scheme of `ppk_` API keys.
pub const API_KEY: &str = "api_key";
/// The security scheme of `ppa_` agent tokens.
pub const AGENT_TOKEN: &str = "agent_token";

/// The whole document. Add a new handler's `__path_` struct to `paths`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "PatchPilot relay API",
        description = "The relay's REST API (`/api`, `ppk_` keys), the agent protocol (`/agent/v1`, `ppa_` agent tokens) and the operational endpoints. Every error is RFC 9457 `application/problem+json`."
    ),
    paths(
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        super::ops::relay_info,
        openapi_json,
        super::devices::devices_list,
        super::devices::devices_get,
        super::discovered::discovered_list,
        super::vulns::vulnerabilities_list,
        super::compliance::snapshot_latest,
        super::compliance::snapshot_take,
        super::compliance::snapshots_list,
        super::compliance::snapshots_get,
        super::reboots::reboots_list,
        super::reboots::reboots_schedule,
        super::reboots::reboots_cancel,
        super::exclusions::exclusions_list,
        super::exclusions::exclusions_create,
        super::exclusions::exclusions_get,
        super::exclusions::exclusions_delete,
        super::accounts::keys_list,
        super::accounts::keys_create,
        super::accounts::keys_revoke,
        super::accounts::users_list,
        super::accounts::users_create,
        super::accounts::users_disable,
        super::webhooks::webhooks_list,
        super::webhooks::webhooks_create,
        super::webhooks::webhooks_get,
        super::webhooks::webhooks_update,
        super::webhooks::webhooks_delete,
        super::webhooks::webhooks_rotate_secret,
        super::webhooks::webhooks_test,
        super::webhooks::webhooks_deliveries,
        super::agent::enroll,
        super::agent::checkin,
        super::audit::audit_list,
        super::assessments::assessments_create,
        super::bundles::bundles_import,
        super::bundles::bundles_export,
    ),
    components(schemas(super::problem::Problem)),
    modifiers(&Shared),
    tags(
        (name = "ops", description = "Liveness, readiness, metrics, relay information, this document"),
        (name = "devices", description = "The fleet"),
        (name = "vulnerabilities", description = "CVEs open on the fleet"),
        (name = "compliance", description = "Compliance snapshots"),
        (name = "reboots", description = "Reboot management"),
        (name = "exclusions", description = "Patch exclusions"),
        (name = "accounts", description = "API keys and users (admin)"),
        (name = "webhooks", description = "Webhooks (admin)"),
        (name = "agent", description = "The agent protocol"),
        (name = "audit", description = "The audit trail of changes (admin)"),
        (name = "airgap", description = "Offline assessment from an imported catalog"),
        (name = "courier", description = "Courier bundles in and out (admin)"),
    )
)]
pub struct ApiDoc;

/// The document as JSON, built once.
pub fn document() -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        serde_json::to_vec(&doc).unwrap_or_default()
    })
}

/// This document. It needs a key of any role, like the rest of `/api`: it
/// holds no fleet data, but it maps the attack surface of the appliance.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "ops",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json")),
    security(("api_key" = []))
)]
pub async fn openapi_json() -> Response {
    let mut response = (StatusCode::OK, document()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `limit` and `cursor` of every paged list.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items per page (default 50). Not a whole number: 400; outside
    /// 1..=500: 422.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page; any other value: 400.
    pub cursor: Option<String>,
}

// --- Bodies that handlers build with `json!` -------------------------------

/// `GET /healthz`, `GET /readyz`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthStatus {
    /// `ok` (liveness) or `ready` (readiness).
    #[schema(pattern = "^(ok|ready)$")]
    pub status: String,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KevCatalog {
    pub version: Option<String>,
    pub entries: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDrops {
    pub retention: u64,
    pub outbox_full: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInfo {
    pub count: u64,
    #[schema(pattern = "^(unknown|down|up|partial)$")]
    pub uplink: String,
    pub endpoints_unreachable: u64,
    pub outbox_depth: u64,
    pub retrying: u64,
    pub delivered: u64,
    pub attempts_failed: u64,
    pub deliveries_failed: u64,
    pub dropped: WebhookDrops,
}

/// `GET /api/relay`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayInfo {
    pub relay_id: String,
    pub version: String,
    pub uptime_s: u64,
    pub devices: u64,
    pub events_recorded: u64,
    pub events_pruned: u64,
    pub kev_catalog: KevCatalog,
    pub store_bytes: u64,
    pub update_sets: u64,
    pub updates_stored: u64,
    pub webhooks: WebhookInfo,
    /// SHA-256 of the certificate HTTPS serves (hex), null without HTTPS.
    pub tls_sha256: Option<String>,
}

/// One update of a device.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    pub update_id: String,
    pub kb: Option<String>,
    pub package: Option<String>,
    pub title: String,
    pub severity: Severity,
    pub cves: Vec<String>,
    pub released_at: Option<Timestamp>,
    pub excluded: bool,
    pub exclusion_id: Option<ExclusionId>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceComplianceState {
    pub compliant: bool,
    pub reasons: Vec<Reason>,
}

/// `GET /api/devices/{device_id}`: the list row and the details.
#[derive(Serialize, ToSchema)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub summary: DeviceSummary,
    pub os_version: String,
    pub agent_version: String,
    pub ip_addresses: Vec<String>,
    pub enrolled_at: Timestamp,
    pub last_checkin: Option<Timestamp>,
    /// `checkin`, and `mdns` when the device was also heard over mDNS.
    pub seen_via: Vec<String>,
    pub reboot_pending: bool,
    pub reboot_pending_since: Option<Timestamp>,
    pub scheduled_reboot: Option<RebootScheduleView>,
    pub updates: Vec<DeviceUpdate>,
    pub recent_results: Vec<InstallResult>,
    pub vulnerabilities: Vec<String>,
    pub compliance: DeviceComplianceState,
    pub os_build: Option<String>,
    pub installed_kbs: Vec<String>,
    /// The relay's own assessment from the imported catalog (Windows
    /// devices reporting `os_build`), null otherwise.
    pub assessment: Option<crate::catalog::Assessment>,
    /// Why there is no assessment, when one was expected.
    pub assessment_note: Option<String>,
}

/// What was read from a `systeminfo` text.
#[derive(Serialize, ToSchema)]
pub struct SysteminfoSource {
    pub host_name: Option<String>,
    pub os_name: String,
    pub os_version: String,
    /// `YYYY-MM-DD`, when readable.
    pub install_date: Option<String>,
    /// The language of the field names (`en`, `de`, …).
    pub language: Option<String>,
}

/// The answer of `POST /api/assessments`.
#[derive(Serialize, ToSchema)]
pub struct AssessmentAnswer {
    #[serde(flatten)]
    pub assessment: crate::catalog::Assessment,
    /// Present when the body was `systeminfo` text.
    pub systeminfo: Option<SysteminfoSource>,
}

/// `GET /api/discovered`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveredList {
    pub discovered: Vec<DiscoveredRecord>,
    pub total: u64,
    pub next_cursor: Option<String>,
}

/// `GET /api/vulnerabilities`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VulnerabilityList {
    pub vulnerabilities: Vec<Vulnerability>,
    pub total: u64,
    pub next_cursor: Option<String>,
}

/// `GET /api/compliance/snapshots`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotListing>,
    pub total: u64,
    pub next_cursor: Option<String>,
}

/// A reboot schedule.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebootScheduleView {
    pub schedule_id: ScheduleId,
    pub device_id: DeviceId,
    pub at: Timestamp,
    pub status: RebootStatus,
    pub message: String,
    pub force: bool,
    pub created_at: Timestamp,
    pub dispatched_at: Option<Timestamp>,
}

/// A device in `GET /api/reboot-management`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebootRowView {
    pub device_id: DeviceId,
    pub hostname: String,
    pub reboot_pending: bool,
    pub reboot_pending_since: Option<Timestamp>,
    /// `updates_installed` or `scheduled`.
    #[schema(pattern = "^(updates_installed|scheduled)$")]
    pub reason: String,
    pub scheduled_reboot: Option<RebootScheduleView>,
}

/// `GET /api/reboot-management`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebootList {
    pub devices: Vec<RebootRowView>,
    pub total: u64,
    pub next_cursor: Option<String>,
}

/// A patch exclusion.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExclusionView {
    pub exclusion_id: ExclusionId,
    pub kind: ExclusionKind,
    pub value: String,
    pub os_family: Option<OsFamily>,
    pub reason: String,
    pub created_at: Timestamp,
    pub created_by: UserId,
    pub expires_at: Option<Timestamp>,
    pub active: bool,
}

/// `GET /api/patch-exclusions`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExclusionList {
    pub exclusions: Vec<ExclusionView>,
    pub total: u64,
    pub next_cursor: Option<String>,
}

/// Who made an audited change.
#[derive(Serialize, ToSchema)]
pub struct AuditActor {
    /// `api_key` or `cli`.
    #[schema(pattern = "^(api_key|cli)$")]
    pub kind: String,
    pub user_id: Option<UserId>,
    pub key_id: Option<crate::ids::KeyId>,
    /// The operating-system user id of a CLI caller, when known.
    pub os_uid: Option<u32>,
}

/// One entry of the audit trail.
#[derive(Serialize, ToSchema)]
pub struct AuditEntry {
    pub audit_id: crate::ids::AuditId,
    pub at: Timestamp,
    pub actor: AuditActor,
    /// The client address, `control socket` or `cli (relay not running)`.
    pub source: String,
    /// Method and route template, e.g. `DELETE /api/keys/{key_id}`.
    pub action: String,
    /// Ids in the path and ids the change created.
    pub targets: Vec<String>,
    pub status: u16,
    #[schema(pattern = "^(success|denied|refused)$")]
    pub outcome: String,
    pub request_id: Option<String>,
}

/// `GET /api/audit`: newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
    pub total: u64,
    pub next_cursor: Option<String>,
}

/// `GET /api/keys`: every key, on one page.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
    pub total: u64,
    pub next_cursor: Option<String>,
}

/// `GET /api/users`: every user, on one page.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserList {
    pub users: Vec<crate::accounts::UserView>,
    pub total: u64,
    pub next_cursor: Option<String>,
}

/// A webhook; never its secret.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookView {
    pub webhook_id: WebhookId,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub status: WebhookStatus,
    pub disabled_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub previous_secret_expires_at: Option<Timestamp>,
    pub endpoint_reachable: bool,
    pub backlog: u64,
}

/// A webhook just created: the only time but rotation that `secret` shows.
#[derive(Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    pub secret: String,
}

/// `GET /api/webhooks`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
    pub total: u64,
    pub next_cursor: Option<String>,
}

/// `POST /api/webhooks/{webhook_id}/rotate-secret`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotatedSecret {
    pub webhook_id: WebhookId,
    pub secret: String,
    pub previous_secret_expires_at: Option<Timestamp>,
}

/// `POST /api/webhooks/{webhook_id}/test`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueuedTestEvent {
    pub event_id: EventId,
    pub sequence: u64,
    #[serde(rename = "type")]
    #[schema(pattern = "^webhook\\.test$")]
    pub kind: String,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptView {
    pub delivery_id: DeliveryId,
    pub attempted_at: Timestamp,
    pub response_status: Option<u16>,
    pub error: Option<String>,
}

/// One event's delivery to one webhook.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryView {
    pub delivery_id: DeliveryId,
    pub event_id: EventId,
    pub sequence: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub attempt: u32,
    pub status: DeliveryStatus,
    pub response_status: Option<u16>,
    pub error: Option<String>,
    pub attempted_at: Option<Timestamp>,
    pub next_attempt_at: Option<Timestamp>,
    pub attempts: Vec<AttemptView>,
}

/// `GET /api/webhooks/{webhook_id}/deliveries`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
    pub total: u64,
    pub next_cursor: Option<String>,
}

// --- What every route shares -----------------------------------------------

/// The problem+json responses, by status: component name and meaning.
pub const PROBLEMS: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "The request is malformed: body not JSON or not UTF-8, a query parameter of the wrong type, a cursor this list did not hand out",
    ),
    (
        401,
        "Unauthorized",
        "No credential, or one that is unknown, expired, revoked or disabled",
    ),
    (403, "Forbidden", "The key's role does not allow this"),
    (
        404,
        "NotFound",
        "No such resource (a malformed id is simply not found)",
    ),
    (
        405,
        "MethodNotAllowed",
        "The route does not take this method; `Allow` lists those it takes",
    ),
    (
        409,
        "Conflict",
        "The request conflicts with the current state",
    ),
    (413, "PayloadTooLarge", "The body is past the route's limit"),
    (
        415,
        "UnsupportedMediaType",
        "The body is not sent as `Content-Type: application/json`",
    ),
    (
        422,
        "UnprocessableEntity",
        "Well-formed JSON with invalid values; `errors` names each field",
    ),
    (
        429,
        "TooManyRequests",
        "The key's rate limit, or too many failed authentications from this address",
    ),
    (
        503,
        "ServiceUnavailable",
        "The relay is starting or shutting down",
    ),
];

fn problem_component(status: u16, description: &str) -> OaResponse {
    let content = Content::new(Some(Ref::from_schema_name("Problem")));
    let mut builder = ResponseBuilder::new()
        .description(description)
        .content(PROBLEM_JSON, content);
    let integer = || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
    };
    let string = || ObjectBuilder::new().schema_type(Type::String);
    match status {
        401 => {
            builder = builder.header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(string())
                    .description(Some("`Bearer`"))
                    .build(),
            );
        }
        405 => {
            builder = builder.header(
                "Allow",
                HeaderBuilder::new()
                    .schema(string())
                    .description(Some("The methods the route takes"))
                    .build(),
            );
        }
        429 | 503 => {
            builder = builder.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(integer())
                    .description(Some("Seconds to wait before retrying"))
                    .build(),
            );
        }
        _ => {}
    }
    builder.build()
}

macro_rules! problem_responses {
    ($($name:ident = $status:literal),* $(,)?) => {
        $(
            #[doc = concat!("The shared problem+json ", stringify!($status), " response.")]
            pub struct $name;

            impl<'r> utoipa::ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<OaResponse>) {
                    let description = PROBLEMS
                        .iter()
                        .find(|(s, _, _)| *s == $status)
                        .map_or("", |(_, _, d)| *d);
                    (stringify!($name), RefOr::T(problem_component($status, description)))
                }
            }
        )*
    };
}

problem_responses!(
    BadRequest = 400,
    Unauthorized = 401,
    Forbidden = 403,
    NotFound = 404,
    MethodNotAllowed = 405,
    Conflict = 409,
    PayloadTooLarge = 413,
    UnsupportedMediaType = 415,
    UnprocessableEntity = 422,
    TooManyRequests = 429,
    ServiceUnavailable = 503,
);

/// The problem response component of `status`, as a reference.
fn problem_ref(status: u16) -> Option<RefOr<OaResponse>> {
    PROBLEMS
        .iter()
        .find(|(s, _, _)| *s == status)
        .map(|(_, name, _)| RefOr::Ref(Ref::from_response_name(*name)))
}

/// Adds the responses every operation of a kind can give, without touching
/// those its annotation already names.
fn add_problems(op: &mut Operation, statuses: &[u16]) {
    for status in statuses {
        let key = status.to_string();
        if op.responses.responses.contains_key(&key) {
            continue;
        }
        if let Some(r) = problem_ref(*status) {
            op.responses.responses.insert(key, r);
        }
    }
}

/// Security schemes, shared problem responses, and the errors each kind of
/// route gives whatever its handler does.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ppk_")
                    .description(Some(
                        "An API key (`ppk_…`) as `Authorization: Bearer <key>`. Roles: viewer < operator < admin.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            AGENT_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ppa_")
                    .description(Some(
                        "The agent token (`ppa_…`) returned by `POST /agent/v1/enroll`.",
                    ))
                    .build(),
            ),
        );
        for (status, name, description) in PROBLEMS {
            components.responses.insert(
                (*name).to_string(),
                RefOr::T(problem_component(*status, description)),
            );
        }

        for (path, item) in doc.paths.paths.iter_mut() {
            let api = path.starts_with("/api/");
            let agent = path.starts_with("/agent/v1/");
            let ops = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
            ];
            for op in ops.into_iter().flatten() {
                if api {
                    // require_key: no key, a bad one, rate limits, not ready.
                    add_problems(op, &[401, 429, 503]);
                }
                if agent {
                    add_problems(op, &[503]);
                }
                if op.request_body.is_some() {
                    add_problems(op, &[400, 413, 415, 422]);
                }
                let has_query = op.parameters.as_ref().is_some_and(|ps| {
                    ps.iter().any(|p| {
                        matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query)
                    })
                });
                if has_query {
                    add_problems(op, &[400]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
