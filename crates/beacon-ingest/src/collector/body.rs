//! Reading a request body: bounded in size before and after gzip, and in the
//! time the client may take to send it.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use beacon_core::encoding::{GZIP_MAGIC, gunzip_bounded};
use beacon_core::{Reason, Rejection};
use http_body_util::LengthLimitError;

use super::CollectorSettings;
use super::error::ApiError;
use super::guard::RawSlot;

/// The request body, decompressed, at most `max_body_bytes` either way, read
/// within `body_read_timeout` (a client that trickles it in is cut off). It is
/// also left in `slot`, so a later panic can still record it.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    settings: &CollectorSettings,
    slot: &RawSlot,
) -> Result<Bytes, ApiError> {
    let raw = decoded(headers, body, settings).await?;
    slot.keep(&raw);
    Ok(raw)
}

async fn decoded(
    headers: &HeaderMap,
    body: Body,
    settings: &CollectorSettings,
) -> Result<Bytes, ApiError> {
    let limit = settings.max_body_bytes;
    let too_large = || {
        ApiError::TooLarge(Rejection::new(
            Reason::BodyTooLarge,
            format!("the body is larger than {limit} bytes"),
        ))
    };
    let read = tokio::time::timeout(
        settings.body_read_timeout,
        axum::body::to_bytes(body, limit),
    );
    let raw = read
        .await
        .map_err(|_| ApiError::Timeout(settings.body_read_timeout))?
        .map_err(|e| {
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
    gunzip_bounded(&raw, limit)
        .map(Bytes::from)
        .map_err(ApiError::from_rejection)
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
