//! The MSP's side of the courier, with no relay involved: build and sign
//! inbound bundles, verify outbound ones, replay their events to a webhook
//! endpoint.

use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::format::{self, BundleBuilder, Kind, Manifest};
use super::inbound::{parse_catalog, parse_changes, CATALOG_ENTRY, CHANGES_ENTRY, KEV_ENTRY};
use super::outbound::{ExportSummary, ExportedEvent, EVENTS_ENTRY, PART_NAMES, SUMMARY_ENTRY};
use super::CourierError;
use crate::clock::Timestamp;

/// The files an inbound bundle is built from.
#[derive(Debug, Default)]
pub struct InboundFiles {
    pub kev: Option<Vec<u8>>,
    /// WES-NG's `definitions.zip`.
    pub catalog: Option<Vec<u8>>,
    pub changes: Option<Vec<u8>>,
}

/// Checks the files as the relay will, then signs them into a bundle.
///
/// # Errors
/// A file the relay would refuse, named.
pub fn build_inbound(
    key: &SigningKey,
    version: u64,
    relay_id: Option<String>,
    files: InboundFiles,
    now: Timestamp,
) -> Result<Vec<u8>, CourierError> {
    let mut builder = BundleBuilder::new(Kind::In, relay_id, version, now);
    if let Some(kev) = files.kev {
        crate::vulns::parse_kev(&kev).map_err(|e| CourierError::Contents {
            entry: KEV_ENTRY.into(),
            problem: e.to_string(),
        })?;
        builder.add(KEV_ENTRY, kev);
    }
    if let Some(catalog) = files.catalog {
        parse_catalog(&catalog)?;
        builder.add(CATALOG_ENTRY, catalog);
    }
    if let Some(changes) = files.changes {
        parse_changes(&changes)?;
        builder.add(CHANGES_ENTRY, changes);
    }
    if builder.manifest(&key.verifying_key()).entries.is_empty() {
        return Err(CourierError::Nothing);
    }
    Ok(builder.finish(key)?)
}

/// A verified outbound bundle.
#[derive(Debug)]
pub struct Export {
    pub manifest: Manifest,
    pub summary: ExportSummary,
    pub events: Vec<ExportedEvent>,
    /// The state parts carried, by entry name, as JSON.
    pub parts: Vec<(String, serde_json::Value)>,
}

/// Verifies an export against the relay's public key and parses it.
///
/// # Errors
/// A bundle that does not verify or whose entries are malformed.
pub fn read_export(bytes: &[u8], relay_key: &VerifyingKey) -> Result<Export, CourierError> {
    let verified = format::verify(bytes, u64::MAX, Kind::Out, &[*relay_key])?;
    let entry = |name: &str, problem: String| CourierError::Contents {
        entry: name.to_string(),
        problem,
    };
    let summary_bytes = verified
        .entries
        .get(SUMMARY_ENTRY)
        .ok_or_else(|| entry(SUMMARY_ENTRY, "is missing".into()))?;
    let summary: ExportSummary =
        serde_json::from_slice(summary_bytes).map_err(|e| entry(SUMMARY_ENTRY, e.to_string()))?;
    let mut events = Vec::new();
    if let Some(packed) = verified.entries.get(EVENTS_ENTRY) {
        let lines = gunzip(packed).map_err(|e| entry(EVENTS_ENTRY, e))?;
        for (i, line) in lines.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let event: ExportedEvent = serde_json::from_slice(line)
                .map_err(|e| entry(EVENTS_ENTRY, format!("line {}: {e}", i + 1)))?;
            events.push(event);
        }
    }
    if events.len() != summary.events {
        return Err(entry(
            EVENTS_ENTRY,
            format!(
                "holds {} events, the summary says {}",
                events.len(),
                summary.events
            ),
        ));
    }
    let mut parts = Vec::new();
    for name in PART_NAMES {
        if let Some(packed) = verified.entries.get(name) {
            let bytes = gunzip(packed).map_err(|e| entry(name, e))?;
            let value = serde_json::from_slice(&bytes).map_err(|e| entry(name, e.to_string()))?;
            parts.push((name.to_string(), value));
        }
    }
    Ok(Export {
        manifest: verified.manifest,
        summary,
        events,
        parts,
    })
}

const SIGNATURE_HEADER: &str = "X-Patchpilot-Signature";

/// The most a gzipped export entry may unpack to.
const MAX_UNPACKED: u64 = 4 << 30;

fn gunzip(packed: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(packed)
        .take(MAX_UNPACKED + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("is not valid gzip: {e}"))?;
    if out.len() as u64 > MAX_UNPACKED {
        return Err(format!("unpacks past {MAX_UNPACKED} bytes"));
    }
    Ok(out)
}

/// How a replay went.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplayReport {
    pub sent: usize,
    pub accepted: usize,
    /// `(event_id, what happened)` for each delivery not answered 2xx.
    pub refused: Vec<(String, String)>,
}

/// Posts each event, in sequence order, with its original headers and body
/// to `url` (one endpoint for all; filter with `webhook` when the export
/// carries several webhooks' deliveries).
///
/// # Errors
/// The HTTP client cannot be built.
/// With `resign`, the webhook's secret: each signature is then made anew
/// at the time of the replay (same scheme), for receivers that refuse a
/// signature older than their tolerance.
pub async fn replay(
    export: &Export,
    url: &str,
    webhook: Option<&str>,
    resign: Option<&str>,
    timeout: Duration,
) -> Result<ReplayReport, reqwest::Error> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!(
            "PatchPilot-Courier-Replay/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()?;
    let mut report = ReplayReport::default();
    for event in export
        .events
        .iter()
        .filter(|e| webhook.is_none_or(|w| w == e.webhook_id))
    {
        let mut request = client.post(url);
        for (name, value) in &event.headers {
            let value = match resign {
                Some(secret) if name.eq_ignore_ascii_case(SIGNATURE_HEADER) => {
                    let now = crate::clock::Clock::system().now().unix();
                    crate::webhooks::signing::signature_header([secret], now, event.body.as_bytes())
                }
                _ => value.clone(),
            };
            request = request.header(name.as_str(), value);
        }
        report.sent += 1;
        match request.body(event.body.clone()).send().await {
            Ok(response) if response.status().is_success() => report.accepted += 1,
            Ok(response) => report.refused.push((
                event.event_id.clone(),
                format!("answered {}", response.status().as_u16()),
            )),
            Err(err) => report
                .refused
                .push((event.event_id.clone(), format!("not delivered: {err}"))),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_changes_file_is_refused_when_building() {
        let key = format::generate_key();
        let files = InboundFiles {
            kev: None,
            catalog: None,
            changes: Some(br#"{"exclusions": {"create": [{"kind": 1}]}}"#.to_vec()),
        };
        let err = build_inbound(&key, 1, None, files, Timestamp(0)).expect_err("refused");
        assert!(
            err.to_string().contains("exclusions.create[0].kind"),
            "{err}"
        );
        let err = build_inbound(&key, 1, None, InboundFiles::default(), Timestamp(0))
            .expect_err("refused");
        assert!(matches!(err, CourierError::Nothing));
    }
}
