//! Raw JSON → canonical event: every check, with a reason for every refusal.
//!
//! The native event shape is the canonical input; the SDK-compatible endpoints
//! translate their formats into it, so one set of rules serves every path.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use iso_currency::Currency;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::enrich::{Campaign, Clues, Enricher};
use crate::event::{Event, Revenue};
use crate::limits::Limits;
use crate::partition::partition_of;
use crate::reject::{Reason, Rejection};

/// Fields a native event may carry.
pub const EVENT_FIELDS: &[&str] = &[
    "id",
    "site",
    "name",
    "user_id",
    "anonymous_id",
    "ts",
    "props",
    "revenue",
    "context",
];
/// Fields of an event's optional `context`.
pub const CONTEXT_FIELDS: &[&str] = &[
    "user_agent",
    "url",
    "referrer",
    "ip",
    "country",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
];

/// Where an event comes from: facts about the request or message, not the event.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The site the write key (or the ingest subject) grants.
    pub site: &'a str,
    /// When Beacon received it; the reference for the event-time window.
    pub received_at: DateTime<Utc>,
    /// The sender's `User-Agent`, used when the event names none.
    pub user_agent: Option<&'a str>,
    /// The sender's address, used when the event names none.
    pub ip: Option<&'a str>,
    /// How to name events that come without an id.
    pub id_source: IdSource<'a>,
    /// Partition count of `BEACON_EVENTS`.
    pub partitions: u32,
}

/// How an event without an id gets one.
#[derive(Debug, Clone, Copy)]
pub enum IdSource<'a> {
    /// For HTTP. An event with a timestamp but no id is named by a hash of its
    /// site and content, so a resend of the same event dedupes; one with neither
    /// gets a fresh UUIDv7 (a resend of it cannot be told from a new event).
    Random,
    /// `<prefix>-<index in batch>`: stable across redeliveries of the same message,
    /// so a message redelivered after a crash dedupes instead of counting twice.
    Derived(&'a str),
}

/// Validate and normalize the `index`-th event of a batch, enriched without
/// a GeoIP database (see [`normalize_with`]).
pub fn normalize(
    value: Value,
    index: usize,
    origin: &Origin<'_>,
    limits: &Limits,
) -> Result<Event, Rejection> {
    static PLAIN: std::sync::LazyLock<Enricher> = std::sync::LazyLock::new(Enricher::default);
    normalize_with(value, index, origin, limits, &PLAIN)
}

/// Validate and normalize the `index`-th event of a batch, enriched by `enricher`.
pub fn normalize_with(
    value: Value,
    index: usize,
    origin: &Origin<'_>,
    limits: &Limits,
    enricher: &Enricher,
) -> Result<Event, Rejection> {
    let Value::Object(mut obj) = value else {
        return Err(Rejection::new(
            Reason::NotAnObject,
            format!("an event must be a JSON object, not {}", kind_of(&value)),
        ));
    };
    check_known_fields(&obj, EVENT_FIELDS, "")?;

    let id = match take_string(&mut obj, "id", limits.max_name_chars, Reason::InvalidId)? {
        Some(id) if id.chars().all(|c| c.is_ascii_graphic()) => id,
        Some(_) => {
            return Err(Rejection::new(
                Reason::InvalidId,
                "id must be printable ASCII without spaces (a UUID or ULID is best)",
            ));
        }
        None => match origin.id_source {
            IdSource::Random if obj.get("ts").is_some_and(|ts| !ts.is_null()) => {
                content_id(origin.site, &obj)
            }
            IdSource::Random => uuid::Uuid::now_v7().to_string(),
            IdSource::Derived(prefix) => format!("{prefix}-{index}"),
        },
    };

    if let Some(site) = take_string(
        &mut obj,
        "site",
        limits.max_name_chars,
        Reason::SiteMismatch,
    )? && site != origin.site
    {
        return Err(Rejection::new(
            Reason::SiteMismatch,
            format!(
                "event is for site {site:?} but the key is for site {:?}",
                origin.site
            ),
        ));
    }

    let name = take_string(&mut obj, "name", limits.max_name_chars, Reason::InvalidName)?
        .ok_or_else(|| Rejection::new(Reason::MissingName, "name is required"))?;
    check_name(&name)?;

    let user_id = take_user(&mut obj, "user_id", limits)?;
    let anonymous_id = take_user(&mut obj, "anonymous_id", limits)?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(Rejection::new(
            Reason::MissingUser,
            "one of user_id or anonymous_id is required",
        ));
    }

    let ts = match obj.remove("ts") {
        None | Some(Value::Null) => origin.received_at,
        Some(raw) => parse_ts(&raw)?,
    };
    check_ts_window(ts, origin.received_at, limits)?;

    let props = match obj.remove("props") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(props)) => {
            check_props(&props, limits)?;
            props
        }
        Some(other) => {
            return Err(Rejection::new(
                Reason::InvalidProps,
                format!("props must be an object, not {}", kind_of(&other)),
            ));
        }
    };

    let revenue = match obj.remove("revenue") {
        None | Some(Value::Null) => None,
        Some(raw) => Some(parse_revenue(&raw)?),
    };

    let context_in = match obj.remove("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(c)) => {
            check_known_fields(&c, CONTEXT_FIELDS, "context.")?;
            c
        }
        Some(other) => {
            return Err(Rejection::new(
                Reason::InvalidContext,
                format!("context must be an object, not {}", kind_of(&other)),
            ));
        }
    };
    let context_str = |field: &str| -> Result<Option<&str>, Rejection> {
        match context_in.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.chars().count() <= limits.max_value_chars => Ok(Some(s)),
            Some(Value::String(_)) => Err(Rejection::new(
                Reason::InvalidContext,
                format!(
                    "context.{field} is longer than {} characters",
                    limits.max_value_chars
                ),
            )),
            Some(other) => Err(Rejection::new(
                Reason::InvalidContext,
                format!("context.{field} must be a string, not {}", kind_of(other)),
            )),
        }
    };
    let country = context_str("country")?;
    if let Some(c) = country
        && !(c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        return Err(Rejection::new(
            Reason::InvalidContext,
            "context.country must be a two-letter ISO 3166 code",
        ));
    }
    let sent = |field: &str| -> Result<Option<String>, Rejection> {
        Ok(context_str(field)?
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned))
    };
    let campaign = Campaign {
        source: sent("utm_source")?,
        medium: sent("utm_medium")?,
        name: sent("utm_campaign")?,
        term: sent("utm_term")?,
        content: sent("utm_content")?,
        paid_click: false,
    };
    let clues = Clues {
        user_agent: context_str("user_agent")?.or(origin.user_agent),
        url: context_str("url")?,
        path: props.get("path").and_then(Value::as_str),
        referrer: context_str("referrer")?,
        country,
        ip: context_str("ip")?.or(origin.ip),
        campaign,
    };
    let context = enricher.enrich(origin.site, &clues, limits.keep_ip);

    let partition = partition_of(
        origin.site,
        user_id
            .as_deref()
            .or(anonymous_id.as_deref())
            .unwrap_or(&id),
        origin.partitions,
    );
    Ok(Event {
        id,
        site: origin.site.to_owned(),
        name,
        user_id,
        anonymous_id,
        ts,
        received_at: origin.received_at,
        partition,
        props,
        revenue,
        context,
    })
}

/// `h` + 128-bit XXH3 of the site and the event's JSON (keys in a fixed order).
fn content_id(site: &str, obj: &Map<String, Value>) -> String {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(site.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&serde_json::to_vec(obj).unwrap_or_default());
    content_hash(&bytes)
}

/// `h` + 128-bit XXH3 of `bytes`: an id that a resend of the same content repeats.
pub fn content_hash(bytes: &[u8]) -> String {
    format!("h{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_known_fields(
    obj: &Map<String, Value>,
    known: &[&str],
    prefix: &str,
) -> Result<(), Rejection> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(field) => Err(Rejection::new(
            if prefix.is_empty() {
                Reason::UnknownField
            } else {
                Reason::InvalidContext
            },
            format!(
                "unknown field {prefix}{field:?}; known fields are {}",
                known.join(", ")
            ),
        )),
    }
}

/// Take an optional string field, bounded in length; empty counts as absent.
fn take_string(
    obj: &mut Map<String, Value>,
    field: &str,
    max_chars: usize,
    reason: Reason,
) -> Result<Option<String>, Rejection> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim().to_owned();
            if s.chars().count() > max_chars {
                Err(Rejection::new(
                    reason,
                    format!("{field} is longer than {max_chars} characters"),
                ))
            } else {
                Ok((!s.is_empty()).then_some(s))
            }
        }
        Some(other) => Err(Rejection::new(
            reason,
            format!("{field} must be a string, not {}", kind_of(&other)),
        )),
    }
}

/// User ids may be strings or integers (SDKs send both); integers become strings.
/// JSON `-0` is the integer 0 (the JSON parser reads it as a negative zero float).
fn take_user(
    obj: &mut Map<String, Value>,
    field: &str,
    limits: &Limits,
) -> Result<Option<String>, Rejection> {
    if let Some(Value::Number(n)) = obj.get(field) {
        let text = if n.is_i64() || n.is_u64() {
            Some(n.to_string())
        } else {
            n.as_f64()
                .filter(|f| *f == 0.0 && f.is_sign_negative())
                .map(|_| "0".to_owned())
        };
        if let Some(text) = text {
            obj.insert(field.to_owned(), Value::String(text));
        }
    }
    let user = take_string(obj, field, limits.max_name_chars, Reason::InvalidUser)?;
    if user
        .as_deref()
        .is_some_and(|u| u.chars().any(char::is_control))
    {
        return Err(Rejection::new(
            Reason::InvalidUser,
            format!("{field} contains control characters"),
        ));
    }
    Ok(user)
}

fn check_name(name: &str) -> Result<(), Rejection> {
    if name.chars().any(char::is_control) {
        return Err(Rejection::new(
            Reason::InvalidName,
            "name contains control characters",
        ));
    }
    if !name.chars().any(char::is_alphanumeric) {
        return Err(Rejection::new(
            Reason::InvalidName,
            format!("name {name:?} has no letter or digit"),
        ));
    }
    Ok(())
}

/// RFC 3339 text or integer milliseconds since the Unix epoch.
pub fn parse_ts(raw: &Value) -> Result<DateTime<Utc>, Rejection> {
    let parsed = match raw {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
        _ => None,
    };
    parsed.ok_or_else(|| {
        Rejection::new(
            Reason::InvalidTimestamp,
            format!("ts must be RFC 3339 text or integer epoch milliseconds, got {raw}"),
        )
    })
}

fn check_ts_window(
    ts: DateTime<Utc>,
    reference: DateTime<Utc>,
    limits: &Limits,
) -> Result<(), Rejection> {
    let ahead = ts.signed_duration_since(reference);
    let skew = chrono::Duration::from_std(limits.max_future_skew).unwrap_or(chrono::Duration::MAX);
    let age = chrono::Duration::from_std(limits.max_age).unwrap_or(chrono::Duration::MAX);
    if ahead > skew {
        return Err(Rejection::new(
            Reason::TimestampInFuture,
            format!(
                "ts {ts} is more than {} s ahead of the server clock",
                skew.num_seconds()
            ),
        ));
    }
    if -ahead > age {
        return Err(Rejection::new(
            Reason::TimestampTooOld,
            format!("ts {ts} is more than {} s old", age.num_seconds()),
        ));
    }
    Ok(())
}

fn check_props(props: &Map<String, Value>, limits: &Limits) -> Result<(), Rejection> {
    if props.len() > limits.max_props {
        return Err(Rejection::new(
            Reason::InvalidProps,
            format!(
                "{} props; at most {} are allowed",
                props.len(),
                limits.max_props
            ),
        ));
    }
    check_value("props", &Value::Object(props.clone()), 0, limits)
}

/// Walk a value, bounding depth, key length and string length; `path` names the culprit.
fn check_value(path: &str, value: &Value, depth: usize, limits: &Limits) -> Result<(), Rejection> {
    let nested = |depth: usize| {
        if depth > limits.max_depth {
            Err(Rejection::new(
                Reason::PropsTooDeep,
                format!("{path} is nested deeper than {} levels", limits.max_depth),
            ))
        } else {
            Ok(())
        }
    };
    match value {
        Value::String(s) if s.chars().count() > limits.max_value_chars => Err(Rejection::new(
            Reason::InvalidProps,
            format!(
                "{path} is longer than {} characters",
                limits.max_value_chars
            ),
        )),
        Value::Object(map) => {
            nested(depth + 1)?;
            for (key, child) in map {
                if key.is_empty() || key.chars().count() > limits.max_name_chars {
                    return Err(Rejection::new(
                        Reason::InvalidProps,
                        format!(
                            "{path} has a key that is empty or longer than {} characters",
                            limits.max_name_chars
                        ),
                    ));
                }
                check_value(&format!("{path}.{key}"), child, depth + 1, limits)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            nested(depth + 1)?;
            items.iter().enumerate().try_for_each(|(i, child)| {
                check_value(&format!("{path}[{i}]"), child, depth + 1, limits)
            })
        }
        _ => Ok(()),
    }
}

/// `{"amount": "19.99" | 19.99, "currency": "USD"}` → exact decimal and ISO currency.
///
/// Text amounts are exact as written and follow one grammar, [`is_amount_text`]:
/// an optional `-`, digits, and optionally `.` and more digits (`"19.99"`,
/// `"-5"`, `"0.5"`; not `"1_000"`, `"1e3"`, `"+1"`, `".5"` or `"1,000"`).
/// A JSON number is read through its shortest round-trip form, which is what
/// the sender wrote for up to 15 significant digits.
pub fn parse_revenue(raw: &Value) -> Result<Revenue, Rejection> {
    let bad = |msg: String| Rejection::new(Reason::InvalidRevenue, msg);
    let Value::Object(obj) = raw else {
        return Err(bad(format!(
            "revenue must be an object {{\"amount\": \"19.99\", \"currency\": \"USD\"}}, not {}",
            kind_of(raw)
        )));
    };
    if let Some(field) = obj.keys().find(|k| *k != "amount" && *k != "currency") {
        return Err(bad(format!(
            "unknown field revenue.{field:?}; known fields are amount, currency"
        )));
    }
    let amount = match obj.get("amount") {
        Some(Value::String(s)) if is_amount_text(s.trim()) => Decimal::from_str(s.trim()).ok(),
        Some(Value::Number(n)) => Decimal::from_str(&n.to_string()).ok(),
        _ => None,
    }
    .ok_or_else(|| bad("revenue.amount must be a decimal number, e.g. \"19.99\"".to_owned()))?;
    // Rollups add amounts up exactly; a bound keeps any sum far from Decimal's limit.
    if amount.abs() > Decimal::from(MAX_REVENUE) {
        return Err(bad(format!(
            "revenue.amount must be between -{MAX_REVENUE} and {MAX_REVENUE}"
        )));
    }
    let currency = obj
        .get("currency")
        .and_then(Value::as_str)
        .map(|c| c.trim().to_ascii_uppercase())
        .and_then(|c| Currency::from_code(&c))
        .ok_or_else(|| {
            bad("revenue.currency must be an ISO 4217 code such as \"USD\"".to_owned())
        })?;
    Ok(Revenue {
        amount: amount.normalize(),
        currency: currency.code().to_owned(),
    })
}

/// Whether `text` is an amount as Beacon accepts it in text: `-?[0-9]+(\.[0-9]+)?`,
/// at most 40 characters. Stricter than `Decimal::from_str`, which also takes
/// `_` separators and other forms senders do not mean as numbers.
pub fn is_amount_text(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (digits, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    text.len() <= 40 && all_digits(whole) && fraction.is_none_or(all_digits)
}

/// Largest revenue amount one event may carry (in either direction, refunds included).
pub const MAX_REVENUE: i64 = 1_000_000_000_000;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn origin() -> Origin<'static> {
        Origin {
            site: "shop",
            received_at: DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
                .expect("valid time")
                .with_timezone(&Utc),
            user_agent: None,
            ip: Some("198.51.100.7"),
            id_source: IdSource::Random,
            partitions: 16,
        }
    }

    fn check(value: Value) -> Result<Event, Rejection> {
        normalize(value, 0, &origin(), &Limits::default())
    }

    fn reason(value: Value) -> Reason {
        check(value).expect_err("event is refused").reason
    }

    #[test]
    fn a_full_event_normalizes() {
        let event = check(json!({
            "id": "01JD8Y2Z6V6Q4K7Y3XW9B1N2M3", "name": "purchase", "user_id": 42,
            "ts": "2026-11-25T09:59:00.123Z", "props": {"path": "/checkout", "plan": "pro"},
            "revenue": {"amount": "19.990", "currency": "usd"},
            "context": {"referrer": "https://news.ycombinator.com/item?id=1", "country": "de"}
        }))
        .expect("valid event");
        assert_eq!(event.user_id.as_deref(), Some("42"));
        assert_eq!(
            event.revenue,
            Some(Revenue {
                amount: Decimal::new(1999, 2),
                currency: "USD".into()
            })
        );
        assert_eq!(event.context.path.as_deref(), Some("/checkout"));
        assert_eq!(
            event.context.referrer_source.as_deref(),
            Some("Hacker News")
        );
        assert_eq!(event.context.country.as_deref(), Some("DE"));
        assert_eq!(event.context.ip, None, "IP is dropped by default");
        assert_eq!(event.partition, partition_of("shop", "42", 16));
        assert_eq!(event.dedupe_id(), "shop:01JD8Y2Z6V6Q4K7Y3XW9B1N2M3");
    }

    #[test]
    fn missing_ids_are_random_over_http_and_stable_over_nats() {
        let a = check(json!({"name": "x", "user_id": "u"})).expect("valid");
        let b = check(json!({"name": "x", "user_id": "u"})).expect("valid");
        assert_ne!(a.id, b.id);
        // With a timestamp, a resend is recognisably the same event.
        let sent =
            json!({"name": "x", "user_id": "u", "ts": "2026-11-25T09:00:00Z", "props": {"a": 1}});
        let c = check(sent.clone()).expect("valid");
        assert_eq!(c.id, check(sent).expect("valid").id);
        let other = check(
            json!({"name": "x", "user_id": "u", "ts": "2026-11-25T09:00:00Z", "props": {"a": 2}}),
        )
        .expect("valid");
        assert_ne!(c.id, other.id);
        let nats = Origin {
            id_source: IdSource::Derived("ingest-7"),
            ..origin()
        };
        let c = normalize(
            json!({"name": "x", "user_id": "u"}),
            3,
            &nats,
            &Limits::default(),
        )
        .expect("valid");
        assert_eq!(c.id, "ingest-7-3");
    }

    #[test]
    fn epoch_millis_and_missing_ts() {
        let e =
            check(json!({"name": "x", "user_id": "u", "ts": 1_795_600_740_000i64})).expect("valid");
        assert_eq!(e.ts.timestamp_millis(), 1_795_600_740_000);
        let e = check(json!({"name": "x", "user_id": "u"})).expect("valid");
        assert_eq!(e.ts, origin().received_at);
    }

    #[test]
    fn each_rule_has_its_reason() {
        assert_eq!(reason(json!([1])), Reason::NotAnObject);
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "colour": 1})),
            Reason::UnknownField
        );
        assert_eq!(reason(json!({"user_id": "u"})), Reason::MissingName);
        assert_eq!(
            reason(json!({"name": 5, "user_id": "u"})),
            Reason::InvalidName
        );
        assert_eq!(
            reason(json!({"name": ". * > ..", "user_id": "u"})),
            Reason::InvalidName
        );
        assert_eq!(
            reason(json!({"name": "a\u{0}b", "user_id": "u"})),
            Reason::InvalidName
        );
        assert_eq!(
            reason(json!({"name": "x".repeat(201), "user_id": "u"})),
            Reason::InvalidName
        );
        assert_eq!(reason(json!({"name": "x"})), Reason::MissingUser);
        assert_eq!(
            reason(json!({"name": "x", "user_id": ["u"]})),
            Reason::InvalidUser
        );
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "id": "has space"})),
            Reason::InvalidId
        );
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "site": "blog"})),
            Reason::SiteMismatch
        );
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "ts": "yesterday"})),
            Reason::InvalidTimestamp
        );
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "ts": 1.5})),
            Reason::InvalidTimestamp
        );
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "ts": "2026-11-25T11:00:00Z"})),
            Reason::TimestampInFuture
        );
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "ts": "2020-01-01T00:00:00Z"})),
            Reason::TimestampTooOld
        );
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "props": "p"})),
            Reason::InvalidProps
        );
        assert_eq!(
            reason(
                json!({"name": "x", "user_id": "u", "props": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}})
            ),
            Reason::PropsTooDeep
        );
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "props": {"a": "v".repeat(5000)}})),
            Reason::InvalidProps
        );
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "revenue": 10})),
            Reason::InvalidRevenue
        );
        assert_eq!(
            reason(
                json!({"name": "x", "user_id": "u", "revenue": {"amount": "ten", "currency": "USD"}})
            ),
            Reason::InvalidRevenue
        );
        assert_eq!(
            reason(
                json!({"name": "x", "user_id": "u", "revenue": {"amount": "1", "currency": "XYZ"}})
            ),
            Reason::InvalidRevenue
        );
        assert_eq!(
            reason(
                json!({"name": "x", "user_id": "u", "revenue": {"amount": "79228162514264337593543950335", "currency": "USD"}})
            ),
            Reason::InvalidRevenue
        );
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "context": {"country": "Germany"}})),
            Reason::InvalidContext
        );
        assert_eq!(
            reason(json!({"name": "x", "user_id": "u", "context": {"os": "x"}})),
            Reason::InvalidContext
        );
    }

    #[test]
    fn names_with_subject_characters_are_kept_as_sent() {
        let e = check(json!({"name": "Sign up.clicked > now", "user_id": "u"})).expect("valid");
        assert_eq!(e.name, "Sign up.clicked > now");
        assert_eq!(
            crate::subject::event_subject(e.partition, &e.site, &e.name),
            format!("beacon.events.{}.shop.Sign_up_clicked___now", e.partition)
        );
    }

    #[test]
    fn amounts_in_text_follow_one_grammar() {
        for good in ["19.99", "-5", "0.5", "007", " 12.50 ", "1000000000000"] {
            let r = parse_revenue(&json!({"amount": good, "currency": "EUR"}));
            assert!(r.is_ok(), "{good}: {r:?}");
        }
        for bad in [
            "1_000", "1e3", "+1", ".5", "5.", "1,000", "--1", "", "-", "0x10", "NaN", "1 000",
        ] {
            let r = parse_revenue(&json!({"amount": bad, "currency": "EUR"}));
            assert_eq!(
                r.map_err(|e| e.reason),
                Err(Reason::InvalidRevenue),
                "{bad}"
            );
        }
    }

    #[test]
    fn negative_zero_is_the_user_id_zero() {
        let value: Value = serde_json::from_str(r#"{"name":"x","user_id":-0}"#).expect("json");
        assert_eq!(check(value).expect("valid").user_id.as_deref(), Some("0"));
        let value: Value = serde_json::from_str(r#"{"name":"x","user_id":1.5}"#).expect("json");
        assert_eq!(reason(value), Reason::InvalidUser);
    }

    #[test]
    fn numeric_revenue_keeps_its_written_digits() {
        let r = parse_revenue(&json!({"amount": 0.1, "currency": "EUR"})).expect("valid");
        assert_eq!(r.amount.to_string(), "0.1");
    }

    proptest! {
        /// Whatever JSON arrives, normalize answers (accepts or refuses) without panicking,
        /// and what it accepts respects every limit.
        #[test]
        fn never_panics_and_accepted_events_respect_limits(
            name in ".{0,300}", user in proptest::option::of(".{0,250}"),
            depth in 0usize..12, ts_offset in -40i64*86_400..40*86_400,
        ) {
            let mut nested = json!(1);
            for _ in 0..depth { nested = json!({"k": nested}); }
            let received = origin().received_at;
            let ts = (received + chrono::Duration::seconds(ts_offset)).to_rfc3339();
            let value = json!({"name": name, "user_id": user, "props": {"n": nested}, "ts": ts});
            let limits = Limits::default();
            if let Ok(event) = normalize(value, 0, &origin(), &limits) {
                prop_assert!(event.name.chars().count() <= limits.max_name_chars);
                prop_assert!(event.name.chars().any(char::is_alphanumeric));
                prop_assert!(event.user_id.is_some());
                prop_assert!(depth < limits.max_depth);
                prop_assert!(event.partition < 16);
                let ahead = event.ts.signed_duration_since(received);
                prop_assert!(ahead <= chrono::Duration::minutes(10));
                prop_assert!(-ahead <= chrono::Duration::days(30));
            }
        }

        #[test]
        fn canonical_events_round_trip_through_json(amount in -1_000_000i64..1_000_000, scale in 0u32..6) {
            let value = json!({"name": "purchase", "user_id": "u",
                "revenue": {"amount": Decimal::new(amount, scale).to_string(), "currency": "JPY"}});
            let event = check(value).expect("valid");
            let text = serde_json::to_string(&event).expect("serializes");
            let back: Event = serde_json::from_str(&text).expect("parses");
            prop_assert_eq!(back, event);
        }
    }
}
