//! Reading a request body: bounded in size before and after gzip.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use beacon_core::{Reason, Rejection};
use flate2::read::GzDecoder;
use http_body_util::LengthLimitError;

use super::error::ApiError;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The request body, decompressed, at most `limit` bytes either way.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::TooLarge(Rejection::new(
            Reason::BodyTooLarge,
            format!("the body is larger than {limit} bytes"),
        ))
    };
    let raw = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if caused_by_length_limit(&e) {
            too_large()
        } else {
            ApiError::BadRequest(Rejection::new(
                Reason::InvalidEncoding,
                format!("cannot read the body: {e}"),
            ))
        }
    })?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("") | Some("identity") => raw.starts_with(&GZIP_MAGIC),
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            return Err(ApiError::UnsupportedEncoding(Rejection::new(
                Reason::InvalidEncoding,
                format!("Content-Encoding {other:?} is not supported; send gzip or nothing"),
            )));
        }
    };
    if !gzip {
        return Ok(raw);
    }
    let mut inflated = Vec::with_capacity(raw.len() * 4);
    // One byte past the limit tells "exactly at the limit" from "over it" without
    // inflating a whole zip bomb.
    GzDecoder::new(&raw[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| {
            ApiError::BadRequest(Rejection::new(
                Reason::InvalidEncoding,
                format!("the body is not valid gzip: {e}"),
            ))
        })?;
    if inflated.len() > limit {
        return Err(too_large());
    }
    Ok(Bytes::from(inflated))
}

fn caused_by_length_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}
