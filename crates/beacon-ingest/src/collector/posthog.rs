//! The PostHog-compatible capture endpoints. `beacon_core::compat::posthog`
//! unwraps and reshapes the body; the shared submit path does the rest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use beacon_core::Batch;
use beacon_core::compat::{parse_json, posthog, translate_all};
use chrono::Utc;
use serde_json::Value;

use super::answer::Protocol;
use super::{ApiError, Collector, Submission, body, client_ip, refused, submit, user_agent};

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
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const P: Protocol = Protocol::PostHog;
    let received_at = Utc::now();
    let limit = c.settings.max_body_bytes;
    let raw = if method == Method::GET {
        Bytes::from(query.get("data").cloned().unwrap_or_default())
    } else {
        match body::read_body(&headers, body, limit).await {
            Ok(raw) => raw,
            Err(e) => return refused(&c, P, e, b"", received_at).await,
        }
    };
    let compression = query.get("compression").map(String::as_str);
    let decoded = match posthog::decode(&raw, compression, limit) {
        Ok(decoded) => decoded,
        // What cannot be decoded cannot be cleared of keys either: nothing is kept.
        Err(r) => return refused(&c, P, ApiError::from_rejection(r), b"", received_at).await,
    };
    let payload = match parse_json(&decoded).and_then(posthog::payload) {
        Ok(payload) => payload,
        Err(r) => return refused(&c, P, ApiError::from_rejection(r), &decoded, received_at).await,
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
    let items = match translated {
        Ok(items) => items,
        Err(r) => return refused(&c, P, ApiError::from_rejection(r), &decoded, received_at).await,
    };
    let ip = client_ip(&headers, peer);
    let submission = Submission {
        key: key.as_deref(),
        batch: Batch {
            write_key: None,
            items,
        },
        raw: &decoded,
        received_at,
        user_agent: user_agent(&headers),
        ip: Some(&ip),
    };
    match submit(&c, submission).await {
        Ok(results) => P.results(results),
        Err(e) => P.refusal(e),
    }
}
