//! Segment's HTTP tracking API (`/v1/track|identify|page|screen|group|alias|batch`):
//! finding the write key and reshaping each call into a native event.
//! Field mapping: docs/ingest/segment.md.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Native, NativeContext, Payload, event_time, object, take, take_object, take_revenue};
use crate::reject::{Reason, Rejection};

/// The endpoint a body was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
    /// Many calls; each says its own `type`.
    Batch,
}

impl Call {
    /// The call an endpoint path names (`track`, `identify`, …).
    pub fn from_path(path: &str) -> Option<Call> {
        Some(match path {
            "track" => Call::Track,
            "identify" => Call::Identify,
            "page" => Call::Page,
            "screen" => Call::Screen,
            "group" => Call::Group,
            "alias" => Call::Alias,
            "batch" | "import" => Call::Batch,
            _ => return None,
        })
    }

    fn type_name(self) -> Option<&'static str> {
        Some(match self {
            Call::Track => "track",
            Call::Identify => "identify",
            Call::Page => "page",
            Call::Screen => "screen",
            Call::Group => "group",
            Call::Alias => "alias",
            Call::Batch => return None,
        })
    }
}

/// The write key of an `Authorization: Basic` header: Segment's SDKs send it
/// as the user name, with an empty password.
pub fn basic_auth_user(header: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(user, _)| user);
    (!user.is_empty()).then(|| user.to_owned())
}

/// Split a body into write key, send time and calls. `/v1/batch` takes
/// `{batch: [...], sentAt, writeKey}`; the other endpoints take one call.
pub fn payload(body: Value, call: Call) -> Result<Payload, Rejection> {
    let Value::Object(mut obj) = body else {
        return Err(Rejection::new(
            Reason::MalformedJson,
            "the body must be a JSON object",
        ));
    };
    let key = match take(&mut obj, "writeKey") {
        None => None,
        Some(Value::String(key)) => Some(key),
        Some(_) => {
            return Err(Rejection::new(
                Reason::MissingKey,
                "writeKey must be a string",
            ));
        }
    };
    let sent_at = take(&mut obj, "sentAt");
    let events = match call {
        Call::Batch => match obj.remove("batch") {
            Some(Value::Array(calls)) => calls,
            _ => {
                return Err(Rejection::new(
                    Reason::MalformedJson,
                    "a batch body is {\"batch\": [...]}",
                ));
            }
        },
        _ => {
            if let Some(kind) = call.type_name() {
                obj.entry("type")
                    .or_insert_with(|| Value::String(kind.to_owned()));
            }
            vec![Value::Object(obj)]
        }
    };
    Ok(Payload {
        key,
        sent_at,
        events,
    })
}

/// Reshape one Segment call into a native event.
pub fn translate(
    call: Value,
    sent_at: Option<&Value>,
    received_at: DateTime<Utc>,
) -> Result<Native, Rejection> {
    let mut obj = object(call)?;
    let kind = take(&mut obj, "type")
        .and_then(|t| t.as_str().map(str::to_ascii_lowercase))
        .ok_or_else(|| Rejection::new(Reason::MissingName, "type is required in a batch"))?;
    let mut props = take_object(&mut obj, "properties")?;
    let mut anonymous_id = take(&mut obj, "anonymousId");
    let name = match kind.as_str() {
        "track" => take(&mut obj, "event"),
        "page" | "screen" => {
            for field in ["name", "category"] {
                if let Some(value) = take(&mut obj, field) {
                    props.entry(field).or_insert(value);
                }
            }
            Some(Value::String(
                if kind == "page" { "pageview" } else { "screen" }.to_owned(),
            ))
        }
        "identify" | "group" | "alias" => {
            if let Some(traits) = take(&mut obj, "traits") {
                props.insert("traits".to_owned(), traits);
            }
            if let Some(group) = take(&mut obj, "groupId") {
                props.insert("group_id".to_owned(), group);
            }
            // An alias says the previous id (usually anonymous) is now `userId`.
            if let Some(previous) = take(&mut obj, "previousId") {
                anonymous_id = Some(previous);
            }
            Some(Value::String(kind.clone()))
        }
        other => {
            return Err(Rejection::new(
                Reason::InvalidName,
                format!(
                    "unknown Segment call type {other:?}; known: track, identify, page, screen, group, alias"
                ),
            ));
        }
    };
    let mut context = take_object(&mut obj, "context")?;
    let mut page = take_object(&mut context, "page")?;
    if let Some(path) = take(&mut page, "path") {
        props.entry("path").or_insert(path);
    }
    if let Some(locale) = take(&mut context, "locale") {
        props.entry("locale").or_insert(locale);
    }
    // analytics.js and the server SDKs put utm_* under context.campaign, with
    // the campaign's name as `name`. One that is not an object is ignored:
    // the event still counts, without a campaign.
    let mut campaign = take_object(&mut context, "campaign").unwrap_or_default();
    let native_context = NativeContext {
        url: take(&mut page, "url").or_else(|| props.get("url").cloned()),
        referrer: take(&mut page, "referrer").or_else(|| props.get("referrer").cloned()),
        user_agent: take(&mut context, "userAgent"),
        ip: take(&mut context, "ip"),
        utm_source: take(&mut campaign, "source"),
        utm_medium: take(&mut campaign, "medium"),
        utm_campaign: take(&mut campaign, "name"),
        utm_term: take(&mut campaign, "term"),
        utm_content: take(&mut campaign, "content"),
    };
    let ts = event_time(obj.get("timestamp"), sent_at, None, received_at)?;
    let revenue = take_revenue(&mut props);
    Ok(Native {
        id: take(&mut obj, "messageId"),
        name,
        user_id: take(&mut obj, "userId"),
        anonymous_id,
        ts,
        props,
        revenue,
        context: native_context,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn native(call: Value, kind: Call) -> Value {
        let received = DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let mut p = payload(call, kind).expect("payload");
        let event = p.events.remove(0);
        serde_json::to_value(translate(event, p.sent_at.as_ref(), received).expect("translates"))
            .expect("json")
    }

    #[test]
    fn a_track_with_revenue_and_context() {
        let n = native(
            json!({"event": "Order Completed", "userId": "u-1", "anonymousId": "a-1", "messageId": "m-1",
                "properties": {"revenue": 19.99, "currency": "EUR", "sku": "x"},
                "context": {"ip": "198.51.100.7", "userAgent": "Mozilla/5.0", "locale": "de-DE",
                    "page": {"url": "https://shop.example/done", "referrer": "https://google.com/", "path": "/done"}},
                "timestamp": "2026-11-25T08:59:50Z", "sentAt": "2026-11-25T09:00:00Z", "writeKey": "wk"}),
            Call::Track,
        );
        assert_eq!(
            n,
            json!({"id": "m-1", "name": "Order Completed", "user_id": "u-1", "anonymous_id": "a-1",
                "ts": "2026-11-25T09:59:50.000Z", "props": {"sku": "x", "path": "/done", "locale": "de-DE"},
                "revenue": {"amount": 19.99, "currency": "EUR"},
                "context": {"user_agent": "Mozilla/5.0", "url": "https://shop.example/done",
                    "referrer": "https://google.com/", "ip": "198.51.100.7"}})
        );
    }

    #[test]
    fn the_campaign_becomes_utm_fields() {
        let n = native(
            json!({"event": "Signed Up", "userId": "u-1",
                "context": {"campaign": {"source": "news", "medium": "email", "name": "spring",
                    "term": "shoes", "content": "hero"}}}),
            Call::Track,
        );
        assert_eq!(
            n["context"],
            json!({"utm_source": "news", "utm_medium": "email", "utm_campaign": "spring",
                "utm_term": "shoes", "utm_content": "hero"})
        );
        let odd = native(
            json!({"event": "x", "userId": "u", "context": {"campaign": "spring"}}),
            Call::Track,
        );
        assert!(odd.get("context").is_none(), "{odd}");
    }

    #[test]
    fn page_identify_and_alias() {
        let n = native(
            json!({"name": "Home", "anonymousId": "a-1", "properties": {"url": "https://s.example/"}}),
            Call::Page,
        );
        assert_eq!(
            (n["name"].clone(), n["props"]["name"].clone()),
            (json!("pageview"), json!("Home"))
        );
        assert_eq!(n["context"]["url"], json!("https://s.example/"));
        let n = native(
            json!({"userId": "u-1", "anonymousId": "a-1", "traits": {"plan": "pro"}}),
            Call::Identify,
        );
        assert_eq!(
            (
                n["name"].clone(),
                n["user_id"].clone(),
                n["anonymous_id"].clone()
            ),
            (json!("identify"), json!("u-1"), json!("a-1"))
        );
        assert_eq!(n["props"]["traits"], json!({"plan": "pro"}));
        let n = native(json!({"userId": "u-2", "previousId": "a-2"}), Call::Alias);
        assert_eq!(
            (
                n["name"].clone(),
                n["user_id"].clone(),
                n["anonymous_id"].clone()
            ),
            (json!("alias"), json!("u-2"), json!("a-2"))
        );
    }

    #[test]
    fn the_write_key_is_the_basic_auth_user() {
        // base64("wk_segment:")
        assert_eq!(
            basic_auth_user("Basic d2tfc2VnbWVudDo=").as_deref(),
            Some("wk_segment")
        );
        assert_eq!(basic_auth_user("Bearer d2tfc2VnbWVudDo="), None);
        assert_eq!(basic_auth_user("Basic %%%"), None);
    }

    #[test]
    fn batches_say_each_type() {
        let p = payload(
            json!({"batch": [{"type": "track", "event": "a", "userId": "u"}], "writeKey": "wk"}),
            Call::Batch,
        )
        .expect("ok");
        assert_eq!((p.key.as_deref(), p.events.len()), (Some("wk"), 1));
        assert_eq!(
            payload(json!({"batch": 1}), Call::Batch)
                .expect_err("bad")
                .reason,
            Reason::MalformedJson
        );
        let untyped = translate(json!({"event": "a"}), None, Utc::now());
        assert_eq!(untyped.expect_err("bad").reason, Reason::MissingName);
        let unknown = translate(json!({"type": "launch"}), None, Utc::now());
        assert_eq!(unknown.expect_err("bad").reason, Reason::InvalidName);
    }
}
