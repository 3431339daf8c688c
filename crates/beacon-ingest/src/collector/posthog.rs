//! The PostHog-compatible capture endpoints. `beacon_core::compat::posthog`
//! unwraps and reshapes the body; the shared submit path does the rest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Extension, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use beacon_core::compat::{parse_json, posthog, translate_all};
use chrono::Utc;
use serde_json::Value;

use super::answer::Protocol;
use super::{ApiError, Collector, Compat, RawSlot, body};

/// Every path PostHog's SDKs post events to (and GET with `data=`).
pub const PATHS: &[&str] = &[
    "/e",
    "/e/",
    "/i/v0/e",
    "/i/v0/e/",
    "/capture",
    "/capture/",
    "/track",
    "/track/",
    "/batch",
    "/batch/",
];

pub async fn capture(
    State(c): State<Arc<Collector>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(slot): Extension<RawSlot>,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received_at = Utc::now();
    let request = Compat {
        protocol: Protocol::PostHog,
        received_at,
        headers: &headers,
    };
    let limit = c.settings.max_body_bytes;
    let raw = if method == Method::GET {
        Bytes::from(query.get("data").cloned().unwrap_or_default())
    } else {
        match body::read_body(&headers, body, &c.settings, &slot).await {
            Ok(raw) => raw,
            Err(e) => return request.refuse(&c, e, b"").await,
        }
    };
    let compression = query.get("compression").map(String::as_str);
    let decoded = match posthog::decode(&raw, compression, limit) {
        Ok(decoded) => {
            let decoded = Bytes::from(decoded);
            slot.keep(&decoded);
            decoded
        }
        // What cannot be decoded cannot be cleared of keys either: nothing is kept.
        Err(r) => return request.refuse(&c, ApiError::from_rejection(r), b"").await,
    };
    let payload = match parse_json(&decoded).and_then(posthog::payload) {
        Ok(payload) => payload,
        Err(r) => {
            return request
                .refuse(&c, ApiError::from_rejection(r), &decoded)
                .await;
        }
    };
    // posthog-js says when it sent the body in `_` (epoch milliseconds).
    let sent_at = payload.sent_at.or_else(|| {
        query
            .get("_")
            .and_then(|t| t.parse::<i64>().ok())
            .map(Value::from)
    });
    let key = payload
        .key
        .or_else(|| query.get("token").or(query.get("api_key")).cloned());
    let translated = translate_all(payload.events, c.pipeline.limits(), |event, raw| {
        posthog::translate(event, raw, sent_at.as_ref(), received_at)
    });
    let ip = c.client_ip(&headers, peer);
    request
        .submit(&c, key.as_deref(), translated, &decoded, Some(&ip))
        .await
}
