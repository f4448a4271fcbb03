//! `GET /api/vulnerabilities`.

use axum::extract::State;
use axum::Json;
use serde_json::json;

use super::extract::{Cursor, Params};
use super::problem::{ApiError, ApiResult};
use super::AppState;
use crate::ids::DeviceId;
use crate::inventory::{normalize_cve, Severity};
use crate::vulns::VulnFilter;

#[utoipa::path(get, path = "/api/vulnerabilities", tag = "vulnerabilities",
    params(
        super::openapi::Paging,
        ("severity" = Option<crate::inventory::Severity>, Query, description = "Only this severity"),
        ("device_id" = Option<crate::ids::DeviceId>, Query, description = "Only CVEs open on this device"),
        ("known_exploited" = Option<bool>, Query, description = "Only CVEs in (or not in) the KEV catalog"),
        ("min_cvss" = Option<f64>, Query, description = "Only CVEs scored at least this (0 to 10)", minimum = 0, maximum = 10),
    ),
    responses(
        (status = 200, description = "A page of open CVEs", body = super::openapi::VulnerabilityList),
        (status = 422, response = super::openapi::UnprocessableEntity),
    ),
    security(("api_key" = [])))]
pub async fn vulnerabilities_list(
    State(relay): State<AppState>,
    params: Params,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = params.limit()?;
    let after = params.cursor(normalize_cve)?;
    let min_cvss = params.parsed("min_cvss", "a number from 0 to 10", |s| {
        // Range-checked before narrowing: 10.000000000000002 rounds to 10.0
        // as an f32 but is out of range (a schemathesis finding).
        s.parse::<f64>()
            .ok()
            .filter(|v| (0.0..=10.0).contains(v))
            .map(|v| v as f32)
    })?;
    let filter = VulnFilter {
        severity: params.parsed(
            "severity",
            "critical, important, moderate, low or unknown",
            Severity::parse,
        )?,
        device_id: params.parsed("device_id", "a device id", |s| s.parse::<DeviceId>().ok())?,
        known_exploited: params.bool("known_exploited")?,
        min_cvss,
    };
    let all = relay.vulnerabilities(&filter)?;
    let start = match &after {
        Some(cve) => match all.iter().position(|v| &v.cve_id == cve) {
            Some(i) => i + 1,
            None => {
                return Err(ApiError::BadRequest(
                    "the cursor's CVE is no longer open; start again".into(),
                ))
            }
        },
        None => 0,
    };
    let rows: Vec<_> = all.iter().skip(start).take(limit).collect();
    let page = rows
        .iter()
        .map(|row| relay.expand_vulnerability(row))
        .collect::<Result<Vec<_>, _>>()?;
    let next = (start + page.len() < all.len())
        .then(|| page.last().map(|v| Cursor::encode(&v.cve_id)))
        .flatten();
    Ok(Json(json!({
        "vulnerabilities": page,
        "total": all.len(),
        "next_cursor": next,
    })))
}
