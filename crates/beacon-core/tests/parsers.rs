//! Property tests for every parser that input reaches: native bodies (one
//! event, an array, an envelope, NDJSON), gzip, and the PostHog, Segment and
//! Plausible translators, each followed by validation as the collector runs
//! them. Whatever arrives, nothing panics; a refusal carries a reason, and
//! what is accepted respects the limits. The case counts are bounded so the
//! suite stays quick.

use std::io::Write;

use beacon_core::compat::{self, parse_json, plausible, posthog, segment, translate_all};
use beacon_core::encoding::gunzip_bounded;
use beacon_core::{
    Event, IdSource, Item, Limits, Origin, Reason, Rejection, normalize, parse_body,
};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const CASES: u32 = 384;

fn received() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

fn origin() -> Origin<'static> {
    Origin {
        site: "shop",
        received_at: received(),
        user_agent: Some("Mozilla/5.0"),
        ip: Some("203.0.113.9"),
        id_source: IdSource::Random,
        partitions: 16,
    }
}

/// Field names the parsers look for, so arbitrary objects often hit them.
const FIELDS: &[&str] = &[
    "name",
    "event",
    "id",
    "uuid",
    "user_id",
    "anonymous_id",
    "distinct_id",
    "userId",
    "anonymousId",
    "ts",
    "timestamp",
    "sent_at",
    "sentAt",
    "offset",
    "props",
    "properties",
    "revenue",
    "amount",
    "currency",
    "context",
    "write_key",
    "api_key",
    "token",
    "writeKey",
    "batch",
    "type",
    "domain",
    "d",
    "n",
    "u",
    "url",
    "p",
    "r",
    "$current_url",
    "$set",
];

/// Any JSON value, with a bias toward the shapes and numbers that matter.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just(i64::MAX),
            Just(i64::MIN),
            Just(0),
            Just(-1),
            Just(8_000_000_000_000_000)
        ]
        .prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
        prop_oneof![
            Just("2026-11-25T09:59:00Z"),
            Just("-0"),
            Just("1_000"),
            Just("+262143-12-31T23:59:59Z"),
            Just("USD"),
            Just("https://shop.example/a?utm_source=x"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(FIELDS).prop_map(str::to_owned),
                        "\\PC{0,8}"
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An event accepted by validation respects the limits.
fn check_accepted(event: &Event, limits: &Limits) -> Result<(), TestCaseError> {
    prop_assert!(event.name.chars().count() <= limits.max_name_chars);
    prop_assert!(event.user_id.is_some() || event.anonymous_id.is_some());
    prop_assert!(event.partition < 16);
    let ahead = event.ts.signed_duration_since(received());
    prop_assert!(ahead <= chrono::Duration::from_std(limits.max_future_skew).expect("skew"));
    prop_assert!(-ahead <= chrono::Duration::from_std(limits.max_age).expect("age"));
    if let Some(revenue) = &event.revenue {
        prop_assert!(
            revenue.amount.abs() <= rust_decimal::Decimal::from(beacon_core::validate::MAX_REVENUE)
        );
    }
    Ok(())
}

fn check_refusal(r: &Rejection) -> Result<(), TestCaseError> {
    prop_assert!(!r.message.is_empty());
    prop_assert!(!r.reason.as_str().is_empty());
    prop_assert!(r.reason != Reason::InternalError);
    Ok(())
}

/// Validate every item as the pipeline does, checking each outcome.
fn validate_all(items: Vec<Item<'_>>, limits: &Limits) -> Result<(), TestCaseError> {
    prop_assert!(items.len() <= limits.max_batch_events);
    for (i, item) in items.into_iter().enumerate() {
        prop_assert!(item.raw.len() <= limits.max_event_bytes || item.value.is_err());
        match item.value.and_then(|v| normalize(v, i, &origin(), limits)) {
            Ok(event) => check_accepted(&event, limits)?,
            Err(r) => check_refusal(&r)?,
        }
    }
    Ok(())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("compress");
    gz.finish().expect("compress")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Arbitrary bytes as a native body, declared NDJSON or not.
    #[test]
    fn native_bytes(body in prop::collection::vec(any::<u8>(), 0..512), ndjson: bool) {
        let limits = Limits::default();
        match parse_body(&body, ndjson, &limits) {
            Ok(batch) => {
                prop_assert!(!batch.items.is_empty());
                validate_all(batch.items, &limits)?;
            }
            Err(r) => check_refusal(&r)?,
        }
    }

    /// Arbitrary JSON as one event, an array, an envelope or NDJSON lines.
    #[test]
    fn native_json(values in prop::collection::vec(json_value(), 0..5), shape in 0u8..4) {
        let limits = Limits { max_batch_events: 4, ..Limits::default() };
        let body = match shape {
            0 => values.first().cloned().unwrap_or(Value::Null).to_string(),
            1 => Value::Array(values).to_string(),
            2 => json!({"write_key": "k", "batch": values}).to_string(),
            _ => values.iter().map(Value::to_string).collect::<Vec<_>>().join("\n"),
        };
        match parse_body(body.as_bytes(), shape == 3, &limits) {
            Ok(batch) => validate_all(batch.items, &limits)?,
            Err(r) => check_refusal(&r)?,
        }
    }

    /// Arbitrary bytes, and gzip of arbitrary bytes (one or two members), inflate
    /// within the bound or are refused as encoding or size problems.
    #[test]
    fn gzip_is_bounded(data in prop::collection::vec(any::<u8>(), 0..2048), members in 1usize..3,
                       garbage in prop::collection::vec(any::<u8>(), 0..64), limit in 0usize..4096) {
        let mut compressed = Vec::new();
        for _ in 0..members {
            compressed.extend(gzip(&data));
        }
        match gunzip_bounded(&compressed, limit) {
            Ok(out) => {
                prop_assert!(out.len() <= limit);
                prop_assert_eq!(out, data.repeat(members));
            }
            Err(r) => {
                prop_assert_eq!(r.reason, Reason::BodyTooLarge);
                prop_assert!(data.len() * members > limit);
            }
        }
        let mut broken = vec![0x1f, 0x8b];
        broken.extend(garbage);
        if let Err(r) = gunzip_bounded(&broken, limit) {
            prop_assert!(matches!(r.reason, Reason::InvalidEncoding | Reason::BodyTooLarge));
        }
    }

    /// PostHog: arbitrary bodies in any compression, then payload, translation and validation.
    #[test]
    fn posthog_any_body(body in prop::collection::vec(any::<u8>(), 0..256),
                        compression in prop::option::of(prop::sample::select(&["gzip-js", "base64", "lz64", "bogus"][..]))) {
        if let Ok(decoded) = posthog::decode(&body, compression, 1 << 16) {
            prop_assert!(decoded.len() <= 1 << 16);
            let _ = parse_json(&decoded).and_then(posthog::payload);
        }
    }

    #[test]
    fn posthog_any_json(body in json_value()) {
        let limits = Limits { max_batch_events: 8, ..Limits::default() };
        match posthog::payload(body) {
            Ok(p) => {
                let sent_at = p.sent_at.clone();
                match translate_all(p.events, &limits, |e, raw| posthog::translate(e, raw, sent_at.as_ref(), received())) {
                    Ok(items) => validate_all(items, &limits)?,
                    Err(r) => check_refusal(&r)?,
                }
            }
            Err(r) => check_refusal(&r)?,
        }
    }

    /// PostHog's clock-skew fields at any magnitude.
    #[test]
    fn posthog_any_clock(ts in any::<i64>(), sent in any::<i64>(), offset in any::<i64>(), which in 0u8..3) {
        let limits = Limits::default();
        let mut event = json!({"event": "x", "distinct_id": "u"});
        match which {
            0 => event["offset"] = offset.into(),
            1 => event["timestamp"] = ts.into(),
            _ => { event["timestamp"] = ts.into(); event["offset"] = offset.into(); }
        }
        let body = json!({"api_key": "k", "sent_at": sent, "batch": [event]});
        let p = posthog::payload(body).expect("a payload");
        let sent_at = p.sent_at.clone();
        let items = translate_all(p.events, &limits, |e, raw| posthog::translate(e, raw, sent_at.as_ref(), received()))
            .expect("within limits");
        validate_all(items, &limits)?;
    }

    #[test]
    fn segment_any_json(body in json_value(), call in prop::sample::select(&[
        segment::Call::Track, segment::Call::Identify, segment::Call::Page, segment::Call::Screen,
        segment::Call::Group, segment::Call::Alias, segment::Call::Batch][..])) {
        let limits = Limits { max_batch_events: 8, ..Limits::default() };
        match segment::payload(body, call) {
            Ok(p) => {
                let sent_at = p.sent_at.clone();
                match translate_all(p.events, &limits, |e, _| segment::translate(e, sent_at.as_ref(), received())) {
                    Ok(items) => validate_all(items, &limits)?,
                    Err(r) => check_refusal(&r)?,
                }
            }
            Err(r) => check_refusal(&r)?,
        }
    }

    #[test]
    fn segment_any_clock(ts in any::<i64>(), sent in any::<i64>()) {
        let limits = Limits::default();
        let body = json!({"writeKey": "k", "event": "x", "userId": "u", "timestamp": ts, "sentAt": sent});
        let p = segment::payload(body, segment::Call::Track).expect("a payload");
        let sent_at = p.sent_at.clone();
        let items = translate_all(p.events, &limits, |e, _| segment::translate(e, sent_at.as_ref(), received()))
            .expect("within limits");
        validate_all(items, &limits)?;
    }

    #[test]
    fn plausible_any_json(body in json_value(), ip in "\\PC{0,40}", agent in "\\PC{0,40}") {
        let limits = Limits::default();
        match plausible::request(body) {
            Ok(request) => {
                let visitor = plausible::visitor_id(&[7; 32], "shop", &ip, &agent);
                let items = translate_all(vec![request.event], &limits, |e, _| plausible::translate(e, visitor.clone()))
                    .expect("one event");
                validate_all(items, &limits)?;
            }
            Err(r) => check_refusal(&r)?,
        }
    }

    /// The clock-skew arithmetic alone, at every magnitude: a time or a clear refusal.
    #[test]
    fn event_time_is_total(ts in any::<i64>(), sent in any::<i64>(), offset in any::<i64>()) {
        for (t, s, o) in [
            (Some(json!(ts)), Some(json!(sent)), None),
            (None, None, Some(json!(offset))),
            (Some(json!(ts)), None, Some(json!(offset))),
        ] {
            match compat::event_time(t.as_ref(), s.as_ref(), o.as_ref(), received()) {
                Ok(Some(Value::String(_)) | None) => {}
                Ok(Some(other)) => prop_assert!(false, "not a time: {other}"),
                Err(r) => prop_assert!(matches!(r.reason, Reason::TimestampOutOfRange | Reason::InvalidTimestamp)),
            }
        }
    }
}
