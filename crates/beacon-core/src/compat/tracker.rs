//! The body Beacon's own tracker script (`/js/beacon.js`) posts to
//! `/api/v1/track`: which site it is for, when the browser sent it, and its
//! events, each with an id minted in the browser so a retry dedupes.
//! Field mapping: docs/TRACKER.md.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Native, NativeContext, event_time, object, take, take_object};
use crate::reject::{Reason, Rejection};

/// How the page names its site: by site id (`data-site`) or by domain
/// (`data-domain`, as a Plausible snippet does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteRef {
    Id(String),
    Domain(String),
}

/// A tracker request, split into its parts.
#[derive(Debug)]
pub struct Request {
    pub site: SiteRef,
    /// The browser's clock when it sent the body (epoch ms or RFC 3339).
    pub sent_at: Option<Value>,
    pub events: Vec<Value>,
}

/// Read `{"site"|"domain": …, "sent_at": …, "events": […]}`.
pub fn request(body: Value) -> Result<Request, Rejection> {
    let mut body = object(body)?;
    let text = |v: Option<Value>| match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_ascii_lowercase()),
        _ => None,
    };
    let site = match (
        text(take(&mut body, "site")),
        text(take(&mut body, "domain")),
    ) {
        (Some(id), _) => SiteRef::Id(id),
        (None, Some(domain)) => SiteRef::Domain(domain),
        (None, None) => {
            return Err(Rejection::new(
                Reason::UnknownSite,
                "site is required: the script tag's data-site (a site id) or data-domain",
            ));
        }
    };
    let sent_at = take(&mut body, "sent_at");
    let events = match take(&mut body, "events") {
        Some(Value::Array(events)) if !events.is_empty() => events,
        Some(Value::Array(_)) | None => {
            return Err(Rejection::new(Reason::EmptyBody, "events holds no event"));
        }
        Some(_) => {
            return Err(Rejection::new(
                Reason::MalformedJson,
                "events must be an array",
            ));
        }
    };
    if let Some(field) = body.keys().next() {
        return Err(Rejection::new(
            Reason::UnknownField,
            format!(
                "unknown field {field:?}: a tracker body holds site or domain, sent_at and events"
            ),
        ));
    }
    Ok(Request {
        site,
        sent_at,
        events,
    })
}

/// Reshape one tracker event: `{id, name, ts, url, referrer, props, revenue}`.
/// `visitor` is the cookieless visitor id the collector computed; the event
/// time is corrected for the browser's clock (`ts` − `sent_at` before receipt),
/// so an event queued while offline keeps the time it happened.
pub fn translate(
    event: Value,
    visitor: String,
    sent_at: Option<&Value>,
    received_at: DateTime<Utc>,
) -> Result<Native, Rejection> {
    let mut obj = object(event)?;
    let props = take_object(&mut obj, "props")?;
    let ts = take(&mut obj, "ts");
    let ts = event_time(ts.as_ref(), sent_at, None, received_at)?;
    let native = Native {
        id: take(&mut obj, "id"),
        name: take(&mut obj, "name"),
        anonymous_id: Some(Value::String(visitor)),
        ts,
        props,
        revenue: take(&mut obj, "revenue"),
        context: NativeContext {
            url: take(&mut obj, "url"),
            referrer: take(&mut obj, "referrer"),
            ..NativeContext::default()
        },
        ..Native::default()
    };
    if let Some(field) = obj.keys().next() {
        return Err(Rejection::new(
            Reason::UnknownField,
            format!("unknown field {field:?} in a tracker event"),
        ));
    }
    Ok(native)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn received() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_request_names_its_site_by_id_or_domain() {
        let r = request(json!({"site": "Shop", "events": [{}]})).expect("ok");
        assert_eq!(r.site, SiteRef::Id("shop".into()));
        let r = request(json!({"domain": "shop.example", "sent_at": 5, "events": [{}, {}]}))
            .expect("ok");
        assert_eq!(
            (r.site, r.sent_at, r.events.len()),
            (SiteRef::Domain("shop.example".into()), Some(json!(5)), 2)
        );
        for (body, reason) in [
            (json!({"events": [{}]}), Reason::UnknownSite),
            (json!({"site": "s", "events": []}), Reason::EmptyBody),
            (json!({"site": "s", "events": {}}), Reason::MalformedJson),
            (
                json!({"site": "s", "events": [{}], "x": 1}),
                Reason::UnknownField,
            ),
            (json!([1]), Reason::NotAnObject),
        ] {
            assert_eq!(request(body).expect_err("bad").reason, reason);
        }
    }

    #[test]
    fn events_keep_their_id_and_the_browser_clock_is_corrected() {
        // The browser's clock is an hour fast; the event happened 30 s before sending.
        let event = json!({"id": "b-1", "name": "purchase", "ts": "2026-11-25T10:59:30Z",
            "url": "https://shop.example/?utm_source=nl", "referrer": "https://g.example/",
            "props": {"plan": "pro"}, "revenue": {"amount": "9.50", "currency": "EUR"}});
        let sent = json!("2026-11-25T11:00:00Z");
        let n = translate(event, "v1".into(), Some(&sent), received()).expect("ok");
        assert_eq!(
            serde_json::to_value(n).expect("json"),
            json!({"id": "b-1", "name": "purchase", "anonymous_id": "v1",
                "ts": "2026-11-25T09:59:30.000Z", "props": {"plan": "pro"},
                "revenue": {"amount": "9.50", "currency": "EUR"},
                "context": {"url": "https://shop.example/?utm_source=nl", "referrer": "https://g.example/"}})
        );
        let bad = translate(
            json!({"name": "x", "user_id": "u"}),
            "v".into(),
            None,
            received(),
        );
        assert_eq!(bad.expect_err("bad").reason, Reason::UnknownField);
    }
}
