//! Translators from other products' ingest formats (PostHog, Segment, Plausible)
//! and from Beacon's own tracker script to Beacon's native event, so their SDKs feed the one canonical pipeline.
//!
//! Each translator only reshapes. Values are moved across as raw JSON, so that
//! [`crate::validate::normalize`] judges them exactly as it judges native input:
//! ids, names, users, times, props and revenue have one set of rules and reasons.

pub mod plausible;
pub mod posthog;
pub mod segment;
pub mod tracker;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::body::{Item, check_batch_size, strip_secrets, translated_item};
use crate::limits::Limits;
use crate::reject::{Reason, Rejection};
use crate::validate::{kind_of, parse_ts};

/// A native event under construction. Fields hold the sender's JSON as it came,
/// so validation (not the translator) decides what is acceptable.
#[derive(Debug, Default, Serialize)]
pub struct Native {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub props: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revenue: Option<Value>,
    #[serde(skip_serializing_if = "NativeContext::is_empty")]
    pub context: NativeContext,
}

/// The native `context` fields a translator may fill.
#[derive(Debug, Default, Serialize)]
pub struct NativeContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<Value>,
    /// Campaign fields an SDK sends apart from the page URL (Segment's
    /// `context.campaign`); the URL's own `utm_*` are read at enrichment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_source: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_medium: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_campaign: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_term: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_content: Option<Value>,
}

impl NativeContext {
    fn is_empty(&self) -> bool {
        self.user_agent.is_none()
            && self.url.is_none()
            && self.referrer.is_none()
            && self.ip.is_none()
            && self.utm_source.is_none()
            && self.utm_medium.is_none()
            && self.utm_campaign.is_none()
            && self.utm_term.is_none()
            && self.utm_content.is_none()
    }
}

/// What a protocol's body carries besides its events.
#[derive(Debug, Default)]
pub struct Payload {
    /// The write key found in the body, if any.
    pub key: Option<String>,
    /// When the sender says it sent the body (for clock-skew correction).
    pub sent_at: Option<Value>,
    pub events: Vec<Value>,
}

/// Parse a decoded body as JSON, with the same reasons as native bodies.
pub fn parse_json(bytes: &[u8]) -> Result<Value, Rejection> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(Reason::EmptyBody, "the body holds no event"));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Rejection::new(
            Reason::InvalidUtf8,
            format!(
                "the body is not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    serde_json::from_str(text).map_err(|e| {
        Rejection::new(
            Reason::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Reshape every event of a payload into a batch item for the pipeline. Each
/// item keeps its original JSON (without write keys) for `BEACON_REJECTS`.
pub fn translate_all(
    events: Vec<Value>,
    limits: &Limits,
    mut translate: impl FnMut(Value, &[u8]) -> Result<Native, Rejection>,
) -> Result<Vec<Item<'static>>, Rejection> {
    check_batch_size(events.len(), limits)?;
    Ok(events
        .into_iter()
        .map(|mut event| {
            strip_secrets(&mut event);
            let raw = serde_json::to_vec(&event).unwrap_or_default();
            let value = translate(event, &raw).and_then(|native| {
                serde_json::to_value(native).map_err(|e| {
                    Rejection::new(
                        Reason::MalformedJson,
                        format!("cannot reshape the event: {e}"),
                    )
                })
            });
            translated_item(raw, value, limits)
        })
        .collect())
}

/// The event as a JSON object, or why not.
pub fn object(event: Value) -> Result<Map<String, Value>, Rejection> {
    match event {
        Value::Object(obj) => Ok(obj),
        other => Err(Rejection::new(
            Reason::NotAnObject,
            format!("an event must be a JSON object, not {}", kind_of(&other)),
        )),
    }
}

/// A field's properties object; absent or null is empty.
pub fn take_object(
    obj: &mut Map<String, Value>,
    field: &str,
) -> Result<Map<String, Value>, Rejection> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(inner)) => Ok(inner),
        Some(_) => Err(Rejection::new(
            Reason::InvalidProps,
            format!("{field} must be an object"),
        )),
    }
}

/// Remove `field` when it holds something other than null.
pub fn take(obj: &mut Map<String, Value>, field: &str) -> Option<Value> {
    obj.remove(field).filter(|v| !v.is_null())
}

/// The event time, corrected for the sender's clock as PostHog and Segment do:
/// the event happened `sent_at - timestamp` before the server received the
/// body. With no `sent_at`, an `offset` (milliseconds before sending) counts
/// back from the receive time; with neither, the timestamp is taken as is, and
/// with no timestamp at all the receive time applies (`None`).
///
/// The sender controls every operand, so the arithmetic is checked: a
/// correction that leaves the times chrono can represent refuses the event as
/// `timestamp_out_of_range` (one that merely lands far away is then refused
/// by the event-time window, as any timestamp would be).
pub fn event_time(
    timestamp: Option<&Value>,
    sent_at: Option<&Value>,
    offset: Option<&Value>,
    received_at: DateTime<Utc>,
) -> Result<Option<Value>, Rejection> {
    let at = |t: DateTime<Utc>| {
        Some(Value::String(
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ))
    };
    let out_of_range = |what: &str| {
        Rejection::new(
            Reason::TimestampOutOfRange,
            format!("the event time corrected for the sender's clock ({what}) is out of range"),
        )
    };
    let sent = sent_at
        .filter(|s| !s.is_null())
        .and_then(|s| parse_ts(s).ok());
    match (timestamp.filter(|t| !t.is_null()), sent) {
        (Some(timestamp), Some(sent)) => {
            let skew = parse_ts(timestamp)?.signed_duration_since(sent);
            received_at
                .checked_add_signed(skew)
                .map(at)
                .ok_or_else(|| out_of_range("received time + timestamp - sent_at"))
        }
        (Some(timestamp), None) => Ok(at(parse_ts(timestamp)?)),
        (None, _) => match offset.and_then(Value::as_i64) {
            None => Ok(None),
            Some(ms) => chrono::Duration::try_milliseconds(ms)
                .and_then(|d| received_at.checked_sub_signed(d))
                .map(at)
                .ok_or_else(|| out_of_range("received time - offset")),
        },
    }
}

/// Move `revenue` (with `currency`, USD when absent, as Segment specifies) out
/// of the properties into a native revenue object.
pub fn take_revenue(props: &mut Map<String, Value>) -> Option<Value> {
    let amount = take(props, "revenue")?;
    let currency = take(props, "currency").unwrap_or_else(|| Value::String("USD".to_owned()));
    Some(serde_json::json!({"amount": amount, "currency": currency}))
}

/// Move a property to Beacon's name for it, unless that name is already taken.
pub fn rename(props: &mut Map<String, Value>, from: &str, to: &str) {
    if props.contains_key(to) {
        return;
    }
    if let Some(value) = take(props, from) {
        props.insert(to.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn clock_skew_is_corrected_from_sent_at_or_offset() {
        let received = at("2026-11-25T10:00:10Z");
        // The client's clock is an hour behind; the event happened 5 s before sending.
        let ts = event_time(
            Some(&json!("2026-11-25T08:59:55Z")),
            Some(&json!("2026-11-25T09:00:00Z")),
            None,
            received,
        )
        .expect("valid");
        assert_eq!(ts, Some(json!("2026-11-25T10:00:05.000Z")));
        let ts = event_time(None, None, Some(&json!(2500)), received).expect("valid");
        assert_eq!(ts, Some(json!("2026-11-25T10:00:07.500Z")));
        let ts = event_time(
            Some(&json!("2026-11-25T09:00:00Z")),
            Some(&json!("bad")),
            None,
            received,
        );
        assert_eq!(ts.expect("valid"), Some(json!("2026-11-25T09:00:00.000Z")));
        assert_eq!(event_time(None, None, None, received).expect("valid"), None);
        // Operands the sender picks to overflow are refused, not a panic.
        for (ts, sent, offset) in [
            (None, None, Some(json!(i64::MAX))),
            (None, None, Some(json!(i64::MIN))),
            // About 507,000 years apart, each alone a valid time.
            (
                Some(json!(8_000_000_000_000_000i64)),
                Some(json!(-8_000_000_000_000_000i64)),
                None,
            ),
            (
                Some(json!(-8_000_000_000_000_000i64)),
                Some(json!(8_000_000_000_000_000i64)),
                None,
            ),
        ] {
            let refused = event_time(ts.as_ref(), sent.as_ref(), offset.as_ref(), received);
            assert_eq!(
                refused.map_err(|r| r.reason),
                Err(Reason::TimestampOutOfRange),
                "{ts:?} {sent:?} {offset:?}"
            );
        }
        assert_eq!(
            event_time(Some(&json!("nope")), None, None, received)
                .expect_err("refused")
                .reason,
            Reason::InvalidTimestamp
        );
    }

    #[test]
    fn revenue_moves_out_of_props() {
        let mut props = json!({"revenue": 19.99, "plan": "pro"})
            .as_object()
            .cloned()
            .expect("object");
        assert_eq!(
            take_revenue(&mut props),
            Some(json!({"amount": 19.99, "currency": "USD"}))
        );
        assert_eq!(Value::Object(props), json!({"plan": "pro"}));
    }

    #[test]
    fn translated_items_keep_their_original_without_keys() {
        let events = vec![json!({"event": "x", "token": "phc_secret"}), json!(7)];
        let items = translate_all(events, &Limits::default(), |event, _| {
            let mut obj = object(event)?;
            Ok(Native {
                name: take(&mut obj, "event"),
                ..Native::default()
            })
        })
        .expect("within limits");
        assert_eq!(&items[0].raw[..], br#"{"event":"x"}"#);
        assert_eq!(items[0].value.as_ref().ok(), Some(&json!({"name": "x"})));
        assert_eq!(
            items[1].value.as_ref().err().map(|r| r.reason),
            Some(Reason::NotAnObject)
        );
        let limits = Limits {
            max_batch_events: 1,
            ..Limits::default()
        };
        let refused = translate_all(vec![json!({}), json!({})], &limits, |_, _| {
            Ok(Native::default())
        });
        assert_eq!(refused.expect_err("too many").reason, Reason::BatchTooLarge);
    }
}
