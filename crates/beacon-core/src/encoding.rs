//! Undoing transport encodings (gzip) without letting a small body inflate into a
//! large one: every path that inflates input goes through here, with its bound.

use std::io::Read;

use flate2::read::MultiGzDecoder;

use crate::reject::{Reason, Rejection};

/// The two bytes every gzip stream starts with.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Inflate gzip, refusing output larger than `limit` bytes. Every member of a
/// multi-member stream is read (RFC 1952 allows several, and `cat a.gz b.gz`
/// makes one), and the bound applies to all of them together. Reading stops
/// one byte past the limit, which tells "exactly at the limit" from "over it"
/// without inflating a whole zip bomb.
pub fn gunzip_bounded(data: &[u8], limit: usize) -> Result<Vec<u8>, Rejection> {
    let mut inflated = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    MultiGzDecoder::new(data)
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| {
            Rejection::new(
                Reason::InvalidEncoding,
                format!("the body is not valid gzip: {e}"),
            )
        })?;
    if inflated.len() > limit {
        return Err(Rejection::new(
            Reason::BodyTooLarge,
            format!("the body is larger than {limit} bytes once decompressed"),
        ));
    }
    Ok(inflated)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn gzip_is_bounded() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&vec![b'a'; 10_000]).expect("compress");
        let data = gz.finish().expect("compress");
        assert_eq!(gunzip_bounded(&data, 10_000).expect("fits").len(), 10_000);
        assert_eq!(
            gunzip_bounded(&data, 9_999).expect_err("too big").reason,
            Reason::BodyTooLarge
        );
        // Two members: both are read, and the bound counts them together.
        let mut two = data.clone();
        two.extend_from_slice(&data);
        assert_eq!(gunzip_bounded(&two, 20_000).expect("fits").len(), 20_000);
        assert_eq!(
            gunzip_bounded(&two, 19_999).expect_err("too big").reason,
            Reason::BodyTooLarge
        );
        assert_eq!(
            gunzip_bounded(b"\x1f\x8bnope", 100)
                .expect_err("bad")
                .reason,
            Reason::InvalidEncoding
        );
    }
}
