//! The PostHog-compatible capture endpoints, classic and v1. `beacon_core::compat::posthog`
//! unwraps and reshapes the body; the shared submit path does the rest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Extension, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use beacon_core::compat::{parse_json, posthog, translate_all};
use serde_json::{Map, Value, json};

use super::answer::Protocol;
use super::{ApiError, Collector, Compat, RawSlot, Submission, bearer_key, body, submit};
use crate::pipeline::ItemResult;

/// Capture v1, which posthog-python and posthog-node use with `capture_mode="v1"`.
pub const V1_PATH: &str = "/i/v1/analytics/events";

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
    let request = Compat::new(Protocol::PostHog, &headers);
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
        posthog::translate(event, raw, sent_at.as_ref(), request.received_at)
    });
    let ip = c.client_ip(&headers, peer);
    request
        .submit(&c, key.as_deref(), translated, &decoded, Some(&ip))
        .await
}

/// `POST /i/v1/analytics/events`: a Bearer-keyed `{"created_at", "batch": […]}`
/// body, answered 200 with a `results` map from each event's `uuid` to `ok`
/// (stored, or already stored) or `drop` (refused for good, with the reason).
/// Whole-request problems get the classic statuses, so 429 and 503 are retried.
pub async fn capture_v1(
    State(c): State<Arc<Collector>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(slot): Extension<RawSlot>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request = Compat::new(Protocol::PostHog, &headers);
    let (raw, payload) = match request.read(&c, body, &slot, posthog::payload).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    // Each event's `uuid` keys its result; one without (no SDK sends that) by position.
    let keys: Vec<String> = payload
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| match e.get("uuid") {
            Some(Value::String(uuid)) => uuid.clone(),
            _ => i.to_string(),
        })
        .collect();
    let sdk = headers
        .get("posthog-sdk-info")
        .and_then(|v| v.to_str().ok());
    // v1 has no `sent_at`: its timestamps are taken as sent.
    let translated = translate_all(payload.events, c.pipeline.limits(), |event, raw| {
        posthog::translate(posthog::from_v1(event, sdk), raw, None, request.received_at)
    });
    let items = match translated {
        Ok(items) => items,
        Err(r) => return request.refuse(&c, ApiError::from_rejection(r), &raw).await,
    };
    let ip = c.client_ip(&headers, peer);
    let submission = Submission {
        key: bearer_key(&headers).or(payload.key.as_deref()),
        batch: beacon_core::Batch {
            write_key: None,
            items,
        },
        raw: &raw,
        received_at: request.received_at,
        user_agent: super::user_agent(&headers),
        ip: Some(&ip),
    };
    match submit(&c, submission).await {
        Ok(results) => v1_results(&keys, &results),
        Err(e) => request.protocol.refusal(e),
    }
}

/// The v1 answer: every event `ok` or `drop`, never `retry` (a whole request
/// Beacon cannot store now is answered 503, and the SDK sends it all again).
fn v1_results(keys: &[String], results: &[ItemResult]) -> Response {
    let mut map = Map::new();
    let (mut stored, mut dropped) = (0, 0);
    for (key, result) in keys.iter().zip(results) {
        let answer = match result {
            ItemResult::Accepted { .. } | ItemResult::Duplicate { .. } => {
                stored += 1;
                json!({"result": "ok"})
            }
            ItemResult::Rejected { rejection } => {
                dropped += 1;
                json!({"result": "drop", "details": format!("{}: {}", rejection.reason.as_str(), rejection.message)})
            }
        };
        map.insert(key.clone(), answer);
    }
    let body = json!({"results": map, "stored": stored, "dropped": dropped});
    (StatusCode::OK, Json(body)).into_response()
}
