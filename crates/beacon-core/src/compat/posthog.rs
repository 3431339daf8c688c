//! PostHog's capture API (`/e`, `/i/v0/e`, `/capture`, `/track`, `/batch`, and
//! capture v1 at `/i/v1/analytics/events`): unwrapping the encodings its SDKs
//! use, finding the project token, and reshaping each event into a native one. Field mapping: docs/ingest/posthog.md.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{
    Native, NativeContext, Payload, event_time, object, rename, take, take_object, take_revenue,
};
use crate::encoding::{GZIP_MAGIC, gunzip_bounded};
use crate::reject::{Reason, Rejection};
use crate::validate::content_hash;

/// Most encoding layers unwrapped (e.g. a `data=` form holding base64 of gzip).
const MAX_LAYERS: usize = 4;

/// Base64 as browsers write it, padded or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Turn a body (already gunzipped when it said so) into JSON bytes. PostHog SDKs
/// send JSON, gzip (`compression=gzip-js`, or by `Content-Encoding`), base64
/// (`compression=base64`), or a form whose `data` field holds any of these; the
/// layers are recognised by their content, so a missing hint does no harm.
pub fn decode(body: &[u8], compression: Option<&str>, limit: usize) -> Result<Vec<u8>, Rejection> {
    if compression
        .is_some_and(|c| c.eq_ignore_ascii_case("lz64") || c.eq_ignore_ascii_case("lz-string"))
    {
        return Err(Rejection::new(
            Reason::InvalidEncoding,
            "lz-string compression is not supported; posthog-js sends gzip-js by default \
             (see docs/ingest/posthog.md)",
        ));
    }
    let mut data = body.to_vec();
    for _ in 0..MAX_LAYERS {
        let trimmed = data.trim_ascii();
        if trimmed.starts_with(&GZIP_MAGIC) {
            data = gunzip_bounded(trimmed, limit)?;
        } else if trimmed.starts_with(b"{") || trimmed.starts_with(b"[") || trimmed.is_empty() {
            return Ok(trimmed.to_vec());
        } else if let Some(field) = form_data(trimmed) {
            data = field;
        } else {
            // Form decoding turns an unescaped `+` into a space; base64 has no spaces.
            let text: Vec<u8> = trimmed
                .iter()
                .filter(|b| !b.is_ascii_whitespace() || **b == b' ')
                .map(|b| if *b == b' ' { b'+' } else { *b })
                .collect();
            data = BASE64.decode(&text).map_err(|_| {
                Rejection::new(
                    Reason::MalformedJson,
                    "the body is neither JSON, gzip, base64 nor a data= form",
                )
            })?;
        }
    }
    Err(Rejection::new(
        Reason::InvalidEncoding,
        format!("the body is wrapped in more than {MAX_LAYERS} encodings"),
    ))
}

/// The `data` field of an `application/x-www-form-urlencoded` body.
pub fn form_data(body: &[u8]) -> Option<Vec<u8>> {
    if !(body.starts_with(b"data=") || body.windows(6).any(|w| w == b"&data=")) {
        return None;
    }
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "data")
        .map(|(_, v)| v.into_owned().into_bytes())
}

/// Split a decoded body into its token, send time and events: one event, an
/// array of events, or `{api_key|token, batch: [...], sent_at}`. An array's
/// token is its first event's (posthog-js puts it in `properties.token`).
pub fn payload(body: Value) -> Result<Payload, Rejection> {
    match body {
        Value::Array(events) => {
            let key = events
                .iter()
                .filter_map(Value::as_object)
                .find_map(|e| key_of(e).transpose())
                .transpose()?;
            Ok(Payload {
                key,
                sent_at: None,
                events,
            })
        }
        Value::Object(mut obj) if obj.get("batch").is_some_and(Value::is_array) => {
            let key = key_of(&obj)?;
            let sent_at = take(&mut obj, "sent_at");
            let events = match obj.remove("batch") {
                Some(Value::Array(events)) => events,
                _ => Vec::new(),
            };
            Ok(Payload {
                key,
                sent_at,
                events,
            })
        }
        Value::Object(mut obj) => {
            let key = key_of(&obj)?;
            let sent_at = take(&mut obj, "sent_at");
            Ok(Payload {
                key,
                sent_at,
                events: vec![Value::Object(obj)],
            })
        }
        _ => Err(Rejection::new(
            Reason::MalformedJson,
            "expected an event, an array of events, or {\"api_key\": …, \"batch\": […]}",
        )),
    }
}

/// `api_key`, `token` or `properties.token`, whichever comes first.
fn key_of(event: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    let found = ["api_key", "token"]
        .iter()
        .find_map(|f| event.get(*f))
        .or_else(|| event.get("properties").and_then(|p| p.get("token")))
        .filter(|k| !k.is_null());
    match found {
        None => Ok(None),
        Some(Value::String(key)) => Ok(Some(key.clone())),
        Some(_) => Err(Rejection::new(
            Reason::MissingKey,
            "api_key must be a string",
        )),
    }
}

/// PostHog's reserved event names and Beacon's names for them.
const NAMES: &[(&str, &str)] = &[
    ("$pageview", "pageview"),
    ("$pageleave", "pageleave"),
    ("$screen", "screen"),
    ("$autocapture", "autocapture"),
    ("$identify", "identify"),
    ("$create_alias", "alias"),
    ("$set", "set"),
    ("$groupidentify", "group"),
];

/// PostHog's properties that Beacon keeps under its own names.
const PROPS: &[(&str, &str)] = &[
    ("$pathname", "path"),
    ("$browser", "browser"),
    ("$browser_version", "browser_version"),
    ("$os", "os"),
    ("$device_type", "device"),
    ("$screen_name", "screen"),
];

/// Reshape one PostHog event. `raw` (the event as sent, without keys) names an
/// event that has no `uuid` but a timestamp, so a resend of it dedupes.
pub fn translate(
    event: Value,
    raw: &[u8],
    sent_at: Option<&Value>,
    received_at: DateTime<Utc>,
) -> Result<Native, Rejection> {
    let mut obj = object(event)?;
    let mut props = take_object(&mut obj, "properties")?;
    // `capture` puts these at the top level, `$set` events too.
    for field in ["$set", "$set_once"] {
        if let Some(value) = take(&mut obj, field) {
            props.entry(field).or_insert(value);
        }
    }
    let event_name = take(&mut obj, "event");
    let posthog_name = event_name
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = event_name.map(
        |n| match NAMES.iter().find(|(from, _)| Some(*from) == n.as_str()) {
            Some((_, to)) => Value::String((*to).to_owned()),
            None => n,
        },
    );
    // posthog-js sends the distinct id inside the properties.
    let distinct = take(&mut obj, "distinct_id").or_else(|| take(&mut props, "distinct_id"));
    let (user_id, anonymous_id) = users(&posthog_name, distinct, &mut props);

    let timestamp = take(&mut obj, "timestamp");
    let ts = event_time(timestamp.as_ref(), sent_at, obj.get("offset"), received_at)?;
    let id = match take(&mut obj, "uuid") {
        Some(id) => Some(id),
        None if timestamp.is_some() => Some(Value::String(content_hash(raw))),
        None => None,
    };
    let context = NativeContext {
        url: take(&mut props, "$current_url"),
        referrer: take(&mut props, "$referrer").filter(|r| r.as_str() != Some("$direct")),
        user_agent: take(&mut props, "$raw_user_agent"),
        ip: take(&mut props, "$ip"),
        ..NativeContext::default()
    };
    for (from, to) in PROPS {
        rename(&mut props, from, to);
    }
    let revenue = take_revenue(&mut props);
    Ok(Native {
        id,
        name,
        user_id,
        anonymous_id,
        ts,
        props,
        revenue,
        context,
    })
}

/// Reshape a capture v1 event into the classic shape [`translate`] reads. v1
/// lifts `$session_id`/`$window_id` out of the properties, moves a few flags
/// into `options`, and leaves `$lib` to the `PostHog-Sdk-Info` header
/// (`posthog-python/7.91.1`): all put back where a classic body has them, so an
/// SDK's events are stored the same whichever mode it sends in.
pub fn from_v1(event: Value, sdk_info: Option<&str>) -> Value {
    let Value::Object(mut obj) = event else {
        return event;
    };
    obj.remove("options");
    let mut props = match obj.remove("properties") {
        Some(Value::Object(props)) => props,
        Some(other) if !other.is_null() => {
            // Not an object: left for `translate` to refuse as it would any body.
            obj.insert("properties".to_owned(), other);
            return Value::Object(obj);
        }
        _ => Map::new(),
    };
    for (field, prop) in [("session_id", "$session_id"), ("window_id", "$window_id")] {
        if let Some(value) = take(&mut obj, field) {
            props.entry(prop).or_insert(value);
        }
    }
    if let Some((lib, version)) = sdk_info.and_then(|s| s.trim().split_once('/')) {
        props
            .entry("$lib")
            .or_insert_with(|| Value::String(lib.to_owned()));
        props
            .entry("$lib_version")
            .or_insert_with(|| Value::String(version.to_owned()));
    }
    obj.insert("properties".to_owned(), Value::Object(props));
    Value::Object(obj)
}

/// Who the event is about. `$identify` links `$anon_distinct_id` to the new
/// distinct id, `$create_alias` links the old distinct id to `alias`; other
/// events are the distinct id's, also linked to the device's first (anonymous)
/// id when posthog-js says it differs, and anonymous when `$is_identified` is false.
fn users(
    name: &str,
    distinct: Option<Value>,
    props: &mut Map<String, Value>,
) -> (Option<Value>, Option<Value>) {
    match name {
        "$identify" => (distinct, take(props, "$anon_distinct_id")),
        "$create_alias" => (take(props, "alias"), distinct),
        _ if props.get("$is_identified") == Some(&Value::Bool(false)) => (None, distinct),
        _ => {
            let device = props
                .get("$device_id")
                .filter(|d| Some(*d) != distinct.as_ref())
                .cloned();
            (distinct, device)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde_json::json;

    use super::*;

    fn received() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn native(event: Value, sent_at: Option<Value>) -> Value {
        let raw = serde_json::to_vec(&event).expect("json");
        let n = translate(event, &raw, sent_at.as_ref(), received()).expect("translates");
        serde_json::to_value(n).expect("json")
    }

    #[test]
    fn a_v1_event_is_stored_as_its_classic_twin() {
        let v1 = json!({"event": "$pageview", "uuid": "u-1", "distinct_id": "d-1",
            "timestamp": "2026-11-25T09:00:00Z", "session_id": "s-1",
            "options": {"cookieless_mode": false}, "properties": {"$pathname": "/a"}});
        let classic = json!({"event": "$pageview", "uuid": "u-1", "distinct_id": "d-1",
            "timestamp": "2026-11-25T09:00:00Z",
            "properties": {"$pathname": "/a", "$session_id": "s-1",
                "$lib": "posthog-python", "$lib_version": "7.91.1"}});
        assert_eq!(from_v1(v1, Some("posthog-python/7.91.1")), classic);
        assert_eq!(
            native(classic.clone(), None)["props"]["$lib"],
            "posthog-python"
        );
        // Properties that are not an object stay for translate to refuse.
        let bad = from_v1(json!({"event": "x", "properties": 3}), None);
        assert_eq!(bad["properties"], 3);
        assert_eq!(from_v1(json!(7), None), json!(7));
    }

    #[test]
    fn every_encoding_unwraps_to_the_same_json() {
        let json = br#"[{"event":"x"}]"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(json).expect("compress");
        let gzip = gz.finish().expect("compress");
        let b64 = BASE64.encode(json);
        let b64_gzip = BASE64.encode(&gzip);
        let form = format!(
            "data={}",
            url::form_urlencoded::byte_serialize(b64.as_bytes()).collect::<String>()
        );
        let unescaped_form = format!("data={b64_gzip}&ver=1");
        for body in [
            &json[..],
            &gzip,
            b64.as_bytes(),
            form.as_bytes(),
            unescaped_form.as_bytes(),
        ] {
            assert_eq!(
                decode(body, None, 1 << 20).expect("decodes"),
                json,
                "{body:?}"
            );
        }
        assert_eq!(
            decode(b"%%%", None, 100).expect_err("bad").reason,
            Reason::MalformedJson
        );
        assert_eq!(
            decode(json, Some("lz64"), 100).expect_err("lz").reason,
            Reason::InvalidEncoding
        );
    }

    #[test]
    fn the_token_comes_from_the_envelope_or_the_events() {
        let p = payload(json!({"api_key": "phc_1", "batch": [{"event": "a"}], "sent_at": "2026-11-25T10:00:00Z"})).expect("ok");
        assert_eq!((p.key.as_deref(), p.events.len()), (Some("phc_1"), 1));
        assert!(p.sent_at.is_some());
        let p = payload(json!([{"event": "a", "properties": {"token": "phc_2"}}])).expect("ok");
        assert_eq!(p.key.as_deref(), Some("phc_2"));
        let p = payload(json!({"event": "a", "token": "phc_3"})).expect("ok");
        assert_eq!(p.key.as_deref(), Some("phc_3"));
        assert_eq!(
            payload(json!({"event": "a", "api_key": 5}))
                .expect_err("bad")
                .reason,
            Reason::MissingKey
        );
        assert_eq!(
            payload(json!("a")).expect_err("bad").reason,
            Reason::MalformedJson
        );
    }

    #[test]
    fn a_pageview_maps_onto_beacon_names() {
        let n = native(
            json!({"event": "$pageview", "uuid": "0190-a", "properties": {"distinct_id": "u-1",
                "$current_url": "https://shop.example/cart", "$referrer": "$direct", "$browser": "Firefox",
                "$device_id": "dev-1", "plan": "pro"}, "timestamp": "2026-11-25T08:59:58Z"}),
            Some(json!("2026-11-25T09:00:00Z")),
        );
        assert_eq!(
            n,
            json!({"id": "0190-a", "name": "pageview", "user_id": "u-1", "anonymous_id": "dev-1",
                "ts": "2026-11-25T09:59:58.000Z",
                "props": {"browser": "Firefox", "$device_id": "dev-1", "plan": "pro"},
                "context": {"url": "https://shop.example/cart"}})
        );
    }

    #[test]
    fn identify_and_alias_carry_both_ids() {
        let n = native(
            json!({"event": "$identify", "distinct_id": "u-1", "properties": {"$anon_distinct_id": "anon-1"}}),
            None,
        );
        assert_eq!(
            (
                n["name"].clone(),
                n["user_id"].clone(),
                n["anonymous_id"].clone()
            ),
            (json!("identify"), json!("u-1"), json!("anon-1"))
        );
        let n = native(
            json!({"event": "$create_alias", "distinct_id": "anon-2", "properties": {"alias": "u-2"}}),
            None,
        );
        assert_eq!(
            (
                n["name"].clone(),
                n["user_id"].clone(),
                n["anonymous_id"].clone()
            ),
            (json!("alias"), json!("u-2"), json!("anon-2"))
        );
        let n = native(
            json!({"event": "x", "distinct_id": "anon-3", "properties": {"$is_identified": false}}),
            None,
        );
        assert_eq!(
            (n["user_id"].clone(), n["anonymous_id"].clone()),
            (json!(null), json!("anon-3"))
        );
    }

    #[test]
    fn revenue_and_set_and_ids_without_uuid() {
        let event = json!({"event": "purchase", "distinct_id": "u", "$set": {"plan": "pro"},
            "properties": {"revenue": "19.99", "currency": "EUR"}, "timestamp": "2026-11-25T09:59:00Z"});
        let n = native(event.clone(), None);
        assert_eq!(n["revenue"], json!({"amount": "19.99", "currency": "EUR"}));
        assert_eq!(n["props"], json!({"$set": {"plan": "pro"}}));
        assert!(n["id"].as_str().is_some_and(|id| id.starts_with('h')));
        assert_eq!(
            native(event, None)["id"],
            n["id"],
            "a resend gets the same id"
        );
    }
}
