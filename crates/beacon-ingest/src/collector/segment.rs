//! The Segment-compatible endpoints `/v1/<call>`. `beacon_core::compat::segment`
//! reshapes the calls; the shared submit path does the rest.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use beacon_core::compat::segment::{self, Call};
use beacon_core::compat::translate_all;
use serde_json::json;

use super::answer::Protocol;
use super::{Collector, Compat, RawSlot, bearer_key};

pub async fn calls(
    State(c): State<Arc<Collector>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(call): Path<String>,
    Extension(slot): Extension<RawSlot>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(call) = Call::from_path(&call) else {
        let message = format!(
            "/v1/{call} is not a Segment call; use track, identify, page, screen, group, alias or batch"
        );
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"success": false, "code": "not_found", "message": message})),
        )
            .into_response();
    };
    let request = Compat::new(Protocol::Segment, &headers);
    let (raw, payload) = match request
        .read(&c, body, &slot, |value| segment::payload(value, call))
        .await
    {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    // The SDKs send the key as the Basic user; the body's `writeKey` is the fallback.
    let header_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(segment::basic_auth_user)
        .or_else(|| bearer_key(&headers).map(str::to_owned));
    let key = header_key.or(payload.key);
    let sent_at = payload.sent_at;
    let translated = translate_all(payload.events, c.pipeline.limits(), |event, _| {
        segment::translate(event, sent_at.as_ref(), request.received_at)
    });
    let ip = c.client_ip(&headers, peer);
    request
        .submit(&c, key.as_deref(), translated, &raw, Some(&ip))
        .await
}
