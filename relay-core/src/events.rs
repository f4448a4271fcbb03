//! Events: every state change that matters, recorded with a rising sequence
//! number in the same atomic write as the change itself. The webhook outbox
//! delivers them; `/api/events` style readers page through them.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::EventId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "device.discovered")]
    DeviceDiscovered,
    #[serde(rename = "device.enrolled")]
    DeviceEnrolled,
    #[serde(rename = "device.online")]
    DeviceOnline,
    #[serde(rename = "device.offline")]
    DeviceOffline,
    #[serde(rename = "patch.installed")]
    PatchInstalled,
    #[serde(rename = "patch.failed")]
    PatchFailed,
    #[serde(rename = "reboot.scheduled")]
    RebootScheduled,
    #[serde(rename = "reboot.completed")]
    RebootCompleted,
    #[serde(rename = "reboot.failed")]
    RebootFailed,
    #[serde(rename = "compliance.drift_detected")]
    ComplianceDriftDetected,
    #[serde(rename = "vulnerability.detected")]
    VulnerabilityDetected,
    #[serde(rename = "webhook.test")]
    WebhookTest,
    #[serde(rename = "bundle.imported")]
    BundleImported,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::DeviceDiscovered => "device.discovered",
            EventType::DeviceEnrolled => "device.enrolled",
            EventType::DeviceOnline => "device.online",
            EventType::DeviceOffline => "device.offline",
            EventType::PatchInstalled => "patch.installed",
            EventType::PatchFailed => "patch.failed",
            EventType::RebootScheduled => "reboot.scheduled",
            EventType::RebootCompleted => "reboot.completed",
            EventType::RebootFailed => "reboot.failed",
            EventType::ComplianceDriftDetected => "compliance.drift_detected",
            EventType::VulnerabilityDetected => "vulnerability.detected",
            EventType::WebhookTest => "webhook.test",
            EventType::BundleImported => "bundle.imported",
        }
    }
}

/// An event as stored. `data` is the JSON text of the payload's `data`.
///
/// The type is stored by its stable name so that adding event types never
/// changes how older records decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub event_id: EventId,
    pub sequence: u64,
    #[serde(with = "event_type_name")]
    pub event_type: EventType,
    pub occurred_at: Timestamp,
    pub data: String,
}

mod event_type_name {
    use super::EventType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &EventType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EventType, D::Error> {
        let name = String::deserialize(d)?;
        serde_json::from_value(serde_json::Value::String(name)).map_err(serde::de::Error::custom)
    }
}

impl EventRecord {
    /// The body a webhook receiver gets for this event.
    pub fn payload(&self, relay_id: &str) -> serde_json::Value {
        let data: serde_json::Value =
            serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "event_id": self.event_id,
            "sequence": self.sequence,
            "type": self.event_type.as_str(),
            "occurred_at": self.occurred_at,
            "relay_id": relay_id,
            "data": data,
        })
    }
}
