//! Splitting a request or message body into events: one JSON object, a JSON
//! array, an envelope `{"write_key": …, "batch": […]}`, or NDJSON.
//!
//! Whole-body problems (not UTF-8, not JSON, too many events) refuse the body;
//! a bad line of NDJSON or an oversized element refuses only that event, so the
//! rest of the batch is never lost with it.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::limits::Limits;
use crate::reject::{Reason, Rejection};

/// The events of one body, in order, plus a write key carried inside it.
#[derive(Debug)]
pub struct Batch<'a> {
    pub write_key: Option<String>,
    pub items: Vec<Item<'a>>,
}

/// One event of a batch: its original bytes (kept for `BEACON_REJECTS`) and its
/// parsed JSON, or why it could not be read.
#[derive(Debug)]
pub struct Item<'a> {
    pub raw: Cow<'a, [u8]>,
    pub value: Result<Value, Rejection>,
}

/// Whole-body failures carry the same reasons as per-event ones.
pub type BodyError = Rejection;

/// Parse `body`. `ndjson` says the sender declared NDJSON; otherwise it is
/// recognised by its shape (several JSON values one after another).
pub fn parse_body<'a>(
    body: &'a [u8],
    ndjson: bool,
    limits: &Limits,
) -> Result<Batch<'a>, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(Reason::EmptyBody, "the body holds no event"));
    }
    let batch = if ndjson {
        parse_lines(body, limits)
    } else {
        let text = match std::str::from_utf8(body) {
            Ok(text) => text,
            // Several lines: NDJSON, where a bad line refuses only itself.
            Err(_) if body.trim_ascii().contains(&b'\n') => {
                return finish(parse_lines(body, limits), limits);
            }
            Err(e) => {
                return Err(Rejection::new(
                    Reason::InvalidUtf8,
                    format!(
                        "the body is not valid UTF-8 (first bad byte at offset {})",
                        e.valid_up_to()
                    ),
                ));
            }
        };
        let mut values = serde_json::Deserializer::from_str(text).into_iter::<&RawValue>();
        match values.next() {
            Some(Ok(first)) if text[values.byte_offset()..].trim().is_empty() => {
                parse_single(first, limits)?
            }
            Some(Ok(_)) => parse_lines(body, limits),
            Some(Err(e)) => {
                return Err(Rejection::new(
                    Reason::MalformedJson,
                    format!("the body is not valid JSON: {e}"),
                ));
            }
            None => return Err(Rejection::new(Reason::EmptyBody, "the body holds no event")),
        }
    };
    finish(batch, limits)
}

fn finish<'a>(batch: Batch<'a>, limits: &Limits) -> Result<Batch<'a>, BodyError> {
    check_batch_size(batch.items.len(), limits)?;
    Ok(batch)
}

fn parse_single<'a>(raw: &'a RawValue, limits: &Limits) -> Result<Batch<'a>, BodyError> {
    let text = raw.get();
    if text.starts_with('[') {
        let elements: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
            Rejection::new(
                Reason::MalformedJson,
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        let items = elements
            .into_iter()
            .map(|e| item(e.get().as_bytes(), limits))
            .collect();
        return Ok(Batch {
            write_key: None,
            items,
        });
    }
    if !text.starts_with('{') {
        return Ok(Batch {
            write_key: None,
            items: vec![item(text.as_bytes(), limits)],
        });
    }
    let mut obj: Map<String, Value> = serde_json::from_str(text).map_err(|e| {
        Rejection::new(
            Reason::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let write_key = match obj.remove("write_key") {
        None => None,
        Some(Value::String(key)) => Some(key),
        Some(_) => {
            return Err(Rejection::new(
                Reason::MissingKey,
                "write_key must be a string",
            ));
        }
    };
    match obj.remove("batch") {
        Some(Value::Array(events)) if obj.is_empty() => {
            let items = events
                .into_iter()
                .map(|event| {
                    let raw = serde_json::to_vec(&event).unwrap_or_default();
                    sized(Cow::Owned(raw), Ok(event), limits)
                })
                .collect();
            Ok(Batch { write_key, items })
        }
        Some(Value::Array(_)) => Err(Rejection::new(
            Reason::UnknownField,
            "an envelope holds only write_key and batch",
        )),
        Some(other) => {
            // Not an envelope: a single event that happens to have a `batch` field.
            obj.insert("batch".to_owned(), other);
            Ok(single_object(text, obj, write_key, limits))
        }
        None => Ok(single_object(text, obj, write_key, limits)),
    }
}

fn single_object<'a>(
    text: &'a str,
    obj: Map<String, Value>,
    write_key: Option<String>,
    limits: &Limits,
) -> Batch<'a> {
    let event = sized(
        Cow::Borrowed(text.as_bytes()),
        Ok(Value::Object(obj)),
        limits,
    );
    Batch {
        write_key,
        items: vec![event],
    }
}

/// Body fields that hold a write key in one protocol or another: Beacon's own,
/// PostHog's (`api_key`, `token`, also inside `properties`) and Segment's.
pub const SECRET_FIELDS: &[&str] = &["write_key", "api_key", "token", "writeKey"];

/// A whole body as it may be kept in `BEACON_REJECTS`: without any write key it
/// carries, at any depth (secrets are never stored). A body that seems to hold
/// one but cannot be parsed to remove it is withheld entirely (`None`).
pub fn without_write_key(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mentions = |name: &str| raw.windows(name.len()).any(|w| w == name.as_bytes());
    // A JSON key may spell any of its characters as `\uXXXX` (`"write\u005fkey"`):
    // only a body with neither a plain secret name nor such an escape skips the parse.
    if !mentions("\\u") && !SECRET_FIELDS.iter().any(|name| mentions(name)) {
        return Some(Cow::Borrowed(raw));
    }
    let mut value = serde_json::from_slice::<Value>(raw).ok()?;
    strip_secrets(&mut value);
    serde_json::to_vec(&value).ok().map(Cow::Owned)
}

/// Remove every [`SECRET_FIELDS`] key from `value`, at any depth.
pub fn strip_secrets(value: &mut Value) {
    match value {
        Value::Object(obj) => {
            obj.retain(|k, _| !SECRET_FIELDS.contains(&k.as_str()));
            obj.values_mut().for_each(strip_secrets);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_secrets),
        _ => {}
    }
}

/// An event that arrived in another protocol's format, reshaped into a native
/// event (or refused while reshaping). `raw` is the original, kept for rejects;
/// the same size bound applies to it as to a native event.
pub fn translated_item(
    raw: Vec<u8>,
    value: Result<Value, Rejection>,
    limits: &Limits,
) -> Item<'static> {
    sized(Cow::Owned(raw), value, limits)
}

/// Refuse a batch with no event (`[]`, `{"batch": []}`) or with more events
/// than one body may carry.
pub fn check_batch_size(events: usize, limits: &Limits) -> Result<(), BodyError> {
    if events == 0 {
        return Err(Rejection::new(
            Reason::EmptyBody,
            "the batch holds no event",
        ));
    }
    if events > limits.max_batch_events {
        return Err(Rejection::new(
            Reason::BatchTooLarge,
            format!(
                "{events} events in one body; at most {} are allowed",
                limits.max_batch_events
            ),
        ));
    }
    Ok(())
}

fn parse_lines<'a>(body: &'a [u8], limits: &Limits) -> Batch<'a> {
    let items = body
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|line| !line.is_empty())
        .map(|line| item(line, limits))
        .collect();
    Batch {
        write_key: None,
        items,
    }
}

/// Parse one event's bytes, refusing only this event when they are bad.
fn item<'a>(raw: &'a [u8], limits: &Limits) -> Item<'a> {
    if raw.len() > limits.max_event_bytes {
        return too_large(Cow::Borrowed(raw), limits);
    }
    let value = match std::str::from_utf8(raw) {
        Err(e) => Err(Rejection::new(
            Reason::InvalidUtf8,
            format!(
                "the event is not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )),
        Ok(text) => serde_json::from_str(text).map_err(|e| {
            Rejection::new(
                Reason::MalformedJson,
                format!("the event is not valid JSON: {e}"),
            )
        }),
    };
    Item {
        raw: Cow::Borrowed(raw),
        value,
    }
}

fn sized<'a>(raw: Cow<'a, [u8]>, value: Result<Value, Rejection>, limits: &Limits) -> Item<'a> {
    if raw.len() > limits.max_event_bytes {
        too_large(raw, limits)
    } else {
        Item { raw, value }
    }
}

fn too_large<'a>(raw: Cow<'a, [u8]>, limits: &Limits) -> Item<'a> {
    let message = format!(
        "the event is {} bytes; at most {} are allowed",
        raw.len(),
        limits.max_event_bytes
    );
    Item {
        raw,
        value: Err(Rejection::new(Reason::EventTooLarge, message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(body: &[u8]) -> Vec<Option<Reason>> {
        let batch = parse_body(body, false, &Limits::default()).expect("body parses");
        batch
            .items
            .iter()
            .map(|i| i.value.as_ref().err().map(|r| r.reason))
            .collect()
    }

    #[test]
    fn one_event_an_array_and_ndjson() {
        assert_eq!(reasons(br#"{"name":"a"}"#), vec![None]);
        assert_eq!(reasons(br#"[{"name":"a"},{"name":"b"}]"#), vec![None, None]);
        assert_eq!(
            reasons(b"{\"name\":\"a\"}\n\n{\"name\":\"b\"}\r\n"),
            vec![None, None]
        );
    }

    #[test]
    fn a_bad_ndjson_line_refuses_only_itself() {
        let body = b"{\"name\":\"a\"}\n{\"name\":\n{\"name\":\"\xff\"}\n{\"name\":\"b\"}";
        assert_eq!(
            reasons(body),
            vec![
                None,
                Some(Reason::MalformedJson),
                Some(Reason::InvalidUtf8),
                None
            ]
        );
    }

    #[test]
    fn envelopes_carry_the_write_key() {
        let batch = parse_body(
            br#"{"write_key":"wk","batch":[{"name":"a"}]}"#,
            false,
            &Limits::default(),
        )
        .expect("envelope parses");
        assert_eq!(batch.write_key.as_deref(), Some("wk"));
        assert_eq!(batch.items.len(), 1);
        let single = parse_body(
            br#"{"write_key":"wk","name":"a"}"#,
            false,
            &Limits::default(),
        )
        .expect("event parses");
        assert_eq!(single.write_key.as_deref(), Some("wk"));
        assert_eq!(
            single.items[0].value.as_ref().ok(),
            Some(&serde_json::json!({"name": "a"}))
        );
    }

    #[test]
    fn write_keys_can_be_taken_out_of_bodies() {
        let envelope = br#"{"write_key":"wk_secret","batch":[{"name":"a"}]}"#;
        let kept = without_write_key(envelope).expect("parsable");
        assert!(!String::from_utf8_lossy(&kept).contains("wk_secret"));
        assert!(without_write_key(br#"{"write_key":"wk_secret", broken"#).is_none());
        assert_eq!(without_write_key(b"[1]").as_deref(), Some(&b"[1]"[..]));
        // Other protocols' keys, nested too (PostHog puts `token` in properties).
        let posthog = br#"[{"api_key":"phc_secret","properties":{"token":"phc_secret","a":1}}]"#;
        let kept = without_write_key(posthog).expect("parsable");
        assert_eq!(&kept[..], br#"[{"properties":{"a":1}}]"#);
        // A key spelled with escapes is the same key to a JSON reader.
        let escaped = br#"{"write\u005fkey":"wk_secret","name":"a","bad":1}"#;
        let kept = without_write_key(escaped).expect("parsable");
        assert_eq!(&kept[..], br#"{"bad":1,"name":"a"}"#);
        assert!(without_write_key(br#"{"writ\u0065_key":"wk_secret", broken"#).is_none());
    }

    #[test]
    fn whole_body_failures() {
        let limits = Limits {
            max_batch_events: 2,
            ..Limits::default()
        };
        let fail = |b: &[u8]| {
            parse_body(b, false, &limits)
                .expect_err("body is refused")
                .reason
        };
        assert_eq!(fail(b"  \n"), Reason::EmptyBody);
        assert_eq!(fail(b"{\"name\": "), Reason::MalformedJson);
        assert_eq!(fail(b"[\xff]"), Reason::InvalidUtf8);
        assert_eq!(fail(b"[1,2,3]"), Reason::BatchTooLarge);
        assert_eq!(fail(&b"[".repeat(100_000)), Reason::MalformedJson);
    }

    #[test]
    fn oversized_events_are_refused_alone() {
        let limits = Limits {
            max_event_bytes: 40,
            ..Limits::default()
        };
        let body = format!(r#"[{{"name":"a"}},{{"name":"{}"}}]"#, "x".repeat(100));
        let batch = parse_body(body.as_bytes(), false, &limits).expect("body parses");
        assert!(batch.items[0].value.is_ok());
        assert_eq!(
            batch.items[1].value.as_ref().err().map(|r| r.reason),
            Some(Reason::EventTooLarge)
        );
    }
}
