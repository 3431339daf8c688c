//! Webhook signatures: `Beacon-Signature: t=<unix seconds>,v1=<hex>` where the
//! hex is HMAC-SHA256 with the rule's secret over `<t>.<body>`. The time is
//! signed too, so a receiver can refuse an old request replayed at it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "Beacon-Signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(digest))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not t=<seconds>,v1=<hex>")]
    Malformed,
    #[error("the signature was made {0} s away from now, more than allowed")]
    Stale(i64),
    #[error("the signature does not match the body and secret")]
    Mismatch,
}

/// Check a `Beacon-Signature` header as a receiver should: the MAC over the
/// exact body (compared in constant time), and a time within `tolerance`
/// seconds of `now`.
pub fn verify(
    header: &str,
    secret: &[u8],
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut given = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => given = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(timestamp), Some(given)) = (timestamp, given) else {
        return Err(SignatureError::Malformed);
    };
    let skew = now.saturating_sub(timestamp).saturating_abs();
    if skew > tolerance {
        return Err(SignatureError::Stale(skew));
    }
    mac(secret, timestamp, body)
        .verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let header = sign(b"s3cret-s3cret-s3cret", 1_000, b"{\"a\":1}");
        assert_eq!(
            verify(&header, b"s3cret-s3cret-s3cret", b"{\"a\":1}", 1_010, 300),
            Ok(())
        );
        assert_eq!(
            verify(&header, b"s3cret-s3cret-s3cret", b"{\"a\":2}", 1_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, b"another-secret-xx", b"{\"a\":1}", 1_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, b"s3cret-s3cret-s3cret", b"{\"a\":1}", 2_000, 300),
            Err(SignatureError::Stale(1_000))
        );
        assert_eq!(
            verify("v1=00", b"k", b"", 0, 300),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn the_documented_example_holds() {
        // docs/ACTIONS.md shows this pair; receivers test their code against it.
        assert_eq!(
            sign(
                b"whsec_0123456789abcdef",
                1_795_600_800,
                b"{\"id\":\"r/1\"}"
            ),
            DOCUMENTED
        );
    }

    const DOCUMENTED: &str =
        "t=1795600800,v1=e6b91b1b68246dd81a090bf9b474159699ac9f23d2e31917ddb2d859813dbb95";
}
