//! The Plausible-compatible `POST /api/event`. The site comes from `domain`,
//! the visitor from a daily-salted hash of address and user agent; the address
//! itself never reaches the event.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::HeaderMap;
use axum::response::Response;
use beacon_core::compat::{plausible, translate_all};
use beacon_core::{Reason, Rejection};

use super::answer::Protocol;
use super::{ApiError, Collector, Compat, RawSlot, user_agent};

pub async fn event(
    State(c): State<Arc<Collector>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(slot): Extension<RawSlot>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let compat = Compat::new(Protocol::Plausible, &headers);
    let (raw, request) = match compat.read(&c, body, &slot, plausible::request).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    let Some((site, key)) = c.site_of_domain(&request.domains) else {
        let r = Rejection::new(
            Reason::UnknownSite,
            format!(
                "no site has the domain {:?}; list it in the site's `domains`",
                request.domains.join(",")
            ),
        );
        return compat.refuse(&c, ApiError::from_rejection(r), &raw).await;
    };
    let salt = match compat.salt(&c).await {
        Ok(salt) => salt,
        Err(refused) => return refused,
    };
    let agent = user_agent(&headers);
    let visitor = plausible::visitor_id(
        &salt,
        &site,
        &c.client_ip(&headers, peer),
        agent.unwrap_or_default(),
    );
    let translated = translate_all(vec![request.event], c.pipeline.limits(), |event, _| {
        plausible::translate(event, visitor.clone())
    });
    // Plausible's promise: the address is hashed, never stored.
    compat
        .submit(&c, Some(key.expose()), translated, &raw, None)
        .await
}
