//! Typed identifiers: a type prefix and a ULID (`dev_01HXYZ…`).
//!
//! Every resource id is its own type, so mixing a device id with a key id is
//! a compile error. Ids are generated from one monotonic ULID source, so ids
//! minted later sort after ids minted earlier: list paging relies on that.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::{Generator, Ulid};

static GENERATOR: Mutex<Option<Generator>> = Mutex::new(None);

/// A new ULID, strictly greater than every ULID this process made before.
pub fn next_ulid() -> Ulid {
    let mut guard = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let generator = guard.get_or_insert_with(Generator::new);
    // Overflow needs 2^80 ids within one millisecond; fall back to a fresh
    // random ULID rather than fail.
    generator.generate().unwrap_or_else(|_| Ulid::new())
}

/// Parses `<prefix><26 upper-case Crockford base32 characters>`.
fn parse_prefixed(prefix: &str, text: &str) -> Option<Ulid> {
    let body = text.strip_prefix(prefix)?;
    if body.len() != 26 || !body.bytes().all(is_crockford_upper) {
        return None;
    }
    Ulid::from_string(body).ok()
}

fn is_crockford_upper(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'A'..=b'H' | b'J' | b'K' | b'M' | b'N' | b'P'..=b'T' | b'V'..=b'Z')
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Ulid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id, later than every id minted before it.
            pub fn generate() -> Self {
                Self(next_ulid())
            }

            pub fn from_ulid(ulid: Ulid) -> Self {
                Self(ulid)
            }

            pub fn ulid(&self) -> Ulid {
                self.0
            }

            /// Big-endian bytes: sort in the same order as the ids.
            pub fn to_bytes(&self) -> [u8; 16] {
                self.0 .0.to_be_bytes()
            }

            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Ulid(u128::from_be_bytes(bytes)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_prefixed($prefix, s).map(Self).ok_or(InvalidId)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    self.0 .0.serialize(s)
                }
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "[0-9A-HJKMNP-TV-Z]{26}$")))
                    .examples([concat!($prefix, "01HXYZ8K3M4N5P6Q7R8S9T0VWX")])
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed(stringify!($name))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let text = String::deserialize(d)?;
                    text.parse().map_err(|_| {
                        serde::de::Error::custom(concat!("expected a ", $prefix, " id"))
                    })
                } else {
                    u128::deserialize(d).map(|raw| Self(Ulid(raw)))
                }
            }
        }
    };
}

/// A string that is not an id of the expected type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed identifier")]
pub struct InvalidId;

define_id!(/// An enrolled device.
    DeviceId, "dev_");
define_id!(/// A user of the API.
    UserId, "usr_");
define_id!(/// An API key.
    KeyId, "key_");
define_id!(/// A patch exclusion.
    ExclusionId, "exc_");
define_id!(/// A reboot schedule.
    ScheduleId, "rbt_");
define_id!(/// A webhook endpoint.
    WebhookId, "whk_");
define_id!(/// A recorded event.
    EventId, "evt_");
define_id!(/// One delivery attempt of a webhook.
    DeliveryId, "dlv_");
define_id!(/// A compliance snapshot.
    SnapshotId, "snap_");
define_id!(/// An entry of the audit trail.
    AuditId, "aud_");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let id = DeviceId::generate();
        let text = id.to_string();
        assert!(text.starts_with("dev_"));
        assert_eq!(text.len(), 30);
        assert_eq!(text.parse::<DeviceId>(), Ok(id));
    }

    #[test]
    fn malformed_ids_are_rejected() {
        let good = DeviceId::generate().to_string();
        assert!(good.to_lowercase().parse::<DeviceId>().is_err());
        assert!(good.replace("dev_", "usr_").parse::<DeviceId>().is_err());
        assert!("dev_".parse::<DeviceId>().is_err());
        assert!("dev_../../etc/passwd".parse::<DeviceId>().is_err());
        assert!(format!("{good}0").parse::<DeviceId>().is_err());
        assert!("dev_01HXYZ8K3M4N5P6Q7R8S9T0VWU"
            .parse::<DeviceId>()
            .is_err());
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let ids: Vec<DeviceId> = (0..1000).map(|_| DeviceId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.windows(2).all(|w| w[0].to_bytes() < w[1].to_bytes()));
    }

    #[test]
    fn binary_encoding_round_trips() {
        let id = KeyId::generate();
        let bytes = postcard::to_allocvec(&id).expect("encoding an id cannot fail");
        let back: KeyId = postcard::from_bytes(&bytes).expect("decoding what was encoded");
        assert_eq!(back, id);
    }
}
