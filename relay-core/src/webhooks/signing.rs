//! Delivery signatures, as the contract fixes them (Stripe's scheme):
//! `X-Patchpilot-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<raw body>"`, keyed with the whole secret string (`whsec_…`) as
//! ASCII bytes. During a rotation's grace period one `v1=` per secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The lowercase hex HMAC-SHA256 of `"<t>.<body>"` under `secret`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The whole header value for `secrets` (current first).
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a str>,
    t: i64,
    body: &[u8],
) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&sign(secret, t, body));
    }
    header
}

/// Checks a header as a receiver would: some `v1=` matches `secret` and
/// `t` is within `tolerance_s` of `now`. Used by the tests and the bench.
pub fn verify(header: &str, secret: &str, body: &[u8], now: i64, tolerance_s: i64) -> bool {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => candidates.push(v.to_string()),
            _ => {}
        }
    }
    let Some(t) = t else {
        return false;
    };
    if (now - t).abs() > tolerance_s {
        return false;
    }
    let Ok(expected) = hex::decode(sign(secret, t, body)) else {
        return false;
    };
    candidates.iter().any(|c| {
        hex::decode(c).is_ok_and(|given| {
            use subtle::ConstantTimeEq;
            given.ct_eq(&expected).into()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_computation() {
        // Python: hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256)
        assert_eq!(
            sign("whsec_test", 1_700_000_000, b"{}"),
            "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[test]
    fn every_secret_signs_during_rotation_and_each_verifies() {
        let body = br#"{"event_id":"evt_1"}"#;
        let header = signature_header(["whsec_new", "whsec_old"], 1_000, body);
        assert_eq!(header.matches("v1=").count(), 2);
        assert!(verify(&header, "whsec_new", body, 1_010, 300));
        assert!(verify(&header, "whsec_old", body, 1_010, 300));
        assert!(!verify(&header, "whsec_other", body, 1_010, 300));
        assert!(!verify(&header, "whsec_new", b"{}", 1_010, 300));
        assert!(!verify(&header, "whsec_new", body, 2_000, 300));
    }
}
