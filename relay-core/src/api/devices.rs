//! `GET /api/devices` and `GET /api/devices/:device_id`.

use axum::extract::State;
use axum::Json;
use serde_json::json;

use super::extract::{path_id, Cursor, Params};
use super::problem::{ApiError, ApiResult};
use super::AppState;
use crate::devices::{DeviceFilter, DeviceRecord, RecentResults};
use crate::exclusions::blocking;
use crate::ids::DeviceId;
use crate::inventory::{fold_case, OsFamily};
use crate::store::Table;

#[utoipa::path(get, path = "/api/devices", tag = "devices",
    params(
        super::openapi::Paging,
        ("status" = Option<String>, Query, description = "`online` or `offline`", pattern = "^(online|offline)$"),
        ("os_family" = Option<crate::inventory::OsFamily>, Query, description = "Only this OS family"),
        ("q" = Option<String>, Query, description = "Host name contains (case-insensitive)"),
        ("has_critical" = Option<bool>, Query, description = "Only devices with (or without) a critical update"),
    ),
    responses(
        (status = 200, description = "A page of devices", body = DeviceList),
        (status = 422, response = super::openapi::UnprocessableEntity),
    ),
    security(("api_key" = [])))]
pub async fn devices_list(
    State(relay): State<AppState>,
    params: Params,
) -> ApiResult<Json<DeviceList>> {
    let limit = params.limit()?;
    let after = params.cursor(|c| c.parse::<DeviceId>().ok())?;
    let filter = DeviceFilter {
        online: params.parsed("status", "online or offline", |s| match s {
            "online" => Some(true),
            "offline" => Some(false),
            _ => None,
        })?,
        os_family: params.parsed("os_family", "windows, macos or linux", OsFamily::parse)?,
        hostname_contains: params.get("q").map(fold_case),
        has_critical: params.bool("has_critical")?,
    };
    let page = relay.fleet.page(&filter, after, limit, relay.clock.now());
    Ok(Json(DeviceList {
        devices: page.devices,
        total: page.total,
        next_cursor: page.next.map(|d| Cursor::encode(&d.to_string())),
    }))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DeviceList {
    devices: Vec<crate::devices::DeviceSummary>,
    total: usize,
    next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/devices/{device_id}", tag = "devices",
    params(("device_id" = crate::ids::DeviceId, Path, description = "A `dev_` id")),
    responses(
        (status = 200, description = "The device with its updates, results and compliance", body = super::openapi::DeviceDetail),
        (status = 404, response = super::openapi::NotFound),
    ),
    security(("api_key" = [])))]
pub async fn devices_get(
    State(relay): State<AppState>,
    crate::api::RawId(id): crate::api::RawId,
) -> ApiResult<Json<serde_json::Value>> {
    let id: DeviceId = path_id(&id, "device")?;
    let device: DeviceRecord = relay
        .store
        .get(Table::Devices, &id.to_bytes())
        .map_err(crate::error::RelayError::from)?
        .ok_or_else(|| ApiError::NotFound("no such device".into()))?;
    let summary = relay
        .fleet
        .summary_of(id, relay.clock.now())
        .ok_or_else(|| ApiError::NotFound("no such device".into()))?;
    let updates = match device.update_set {
        Some(h) => relay
            .update_set(&h)
            .map_err(crate::error::RelayError::from)?,
        None => Vec::new(),
    };
    let active = relay.fleet.active_exclusions();
    let mut vulnerabilities: Vec<&str> = updates
        .iter()
        .flat_map(|u| u.cves.iter().map(|c| c.id.as_str()))
        .collect();
    vulnerabilities.sort_unstable();
    vulnerabilities.dedup();
    let update_rows: Vec<serde_json::Value> = updates
        .iter()
        .map(|u| {
            let exclusion = blocking(&active, u, device.os_family);
            json!({
                "update_id": u.update_id,
                "kb": u.kb,
                "package": u.package,
                "title": u.title,
                "severity": u.severity,
                "cves": u.cves.iter().map(|c| &c.id).collect::<Vec<_>>(),
                "released_at": u.released_at,
                "excluded": exclusion.is_some(),
                "exclusion_id": exclusion.map(|e| e.exclusion_id),
            })
        })
        .collect();
    let results: RecentResults = relay
        .store
        .get(Table::Results, &id.to_bytes())
        .map_err(crate::error::RelayError::from)?
        .unwrap_or_default();
    let reasons = relay.device_compliance(&device)?;
    let scheduled = relay.open_reboot(id)?;
    let seen_via = if device.seen_via_mdns {
        vec!["checkin", "mdns"]
    } else {
        vec!["checkin"]
    };

    let mut body = serde_json::to_value(&summary).unwrap_or_default();
    let extra = json!({
        "os_version": device.os_version,
        "agent_version": device.agent_version,
        "ip_addresses": device.ip_addresses,
        "enrolled_at": device.enrolled_at,
        "last_checkin": device.last_checkin,
        "seen_via": seen_via,
        "reboot_pending": device.reboot_pending,
        "reboot_pending_since": device.reboot_pending_since,
        "scheduled_reboot": scheduled.map(|s| super::reboots::schedule_json(&s)),
        "updates": update_rows,
        "recent_results": results.0,
        "vulnerabilities": vulnerabilities,
        "compliance": {"compliant": reasons.is_empty(), "reasons": reasons},
        "os_build": device.os_build,
        "installed_kbs": device.installed_kbs,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    Ok(Json(body))
}
