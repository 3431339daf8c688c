//! Plausible's Events API (`POST /api/event`): which site a request is for, the
//! cookieless visitor id, and the event reshaped into a native one.
//! Field mapping: docs/ingest/plausible.md.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Native, NativeContext, object, take};
use crate::event::{ENGAGED_MS_PROP, ENGAGEMENT, SCROLL_DEPTH_PROP};
use crate::reject::{Reason, Rejection};

/// The domains a request names (Plausible allows a comma-separated list) and its event.
#[derive(Debug)]
pub struct Request {
    pub domains: Vec<String>,
    pub event: Value,
}

/// Read a request body. The tracker script sends one-letter field names
/// (`n`, `u`, `d`, `r`, `p`, `$`); the documented API spells them out.
pub fn request(body: Value) -> Result<Request, Rejection> {
    let mut event = object(body)?;
    let domains: Vec<String> = match take(&mut event, "domain").or_else(|| take(&mut event, "d")) {
        Some(Value::String(list)) => list
            .split(',')
            .map(|d| d.trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect(),
        _ => Vec::new(),
    };
    if domains.is_empty() {
        return Err(Rejection::new(
            Reason::UnknownSite,
            "domain is required: the site's domain as configured in Beacon",
        ));
    }
    Ok(Request {
        domains,
        event: Value::Object(event),
    })
}

/// Reshape the event; `visitor` is the anonymous id (see [`visitor_id`]).
/// The client address is never put on the event.
pub fn translate(event: Value, visitor: String) -> Result<Native, Rejection> {
    let mut event = object(event)?;
    let field = |event: &mut Map<String, Value>, long: &str, short: &str| {
        take(event, long).or_else(|| take(event, short))
    };
    let name = field(&mut event, "name", "n");
    let url = field(&mut event, "url", "u");
    let referrer = field(&mut event, "referrer", "r");
    let props = match field(&mut event, "props", "p") {
        // The tracker sends props as a JSON string.
        Some(Value::String(text)) => serde_json::from_str(&text).map_err(|e| {
            Rejection::new(
                Reason::InvalidProps,
                format!("props is not a JSON object: {e}"),
            )
        })?,
        Some(Value::Object(props)) => props,
        None => Map::new(),
        Some(_) => {
            return Err(Rejection::new(
                Reason::InvalidProps,
                "props must be an object",
            ));
        }
    };
    let mut props = props;
    // Plausible's script reports time on page (`e`, ms) and scroll depth (`sd`,
    // %) in an `engagement` event: Beacon's reserved engagement ping, whose
    // figures live in its props, so it is counted as engagement of its page.
    if name.as_ref().and_then(Value::as_str) == Some(ENGAGEMENT) {
        for (short, prop) in [("e", ENGAGED_MS_PROP), ("sd", SCROLL_DEPTH_PROP)] {
            if let Some(value) = take(&mut event, short) {
                props.insert(prop.to_owned(), value);
            }
        }
    }
    Ok(Native {
        name,
        anonymous_id: Some(Value::String(visitor)),
        props,
        revenue: field(&mut event, "revenue", "$"),
        context: NativeContext {
            url,
            referrer,
            ..NativeContext::default()
        },
        ..Native::default()
    })
}

/// Plausible's cookieless visitor: a hash of the day's secret salt, the site,
/// the client address and the user agent. The same visitor gets the same id all
/// day; once the salt is deleted the id can no longer be tied to an address.
pub fn visitor_id(salt: &[u8], site: &str, ip: &str, user_agent: &str) -> String {
    let mut hash = Sha256::new();
    for part in [salt, site.as_bytes(), ip.as_bytes(), user_agent.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("v{hex}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_documented_request_translates() {
        let r = request(
            json!({"name": "pageview", "url": "https://shop.example/a?utm_source=nl",
            "domain": "Shop.example, other.example", "referrer": "https://google.com/",
            "props": {"plan": "pro"}, "revenue": {"currency": "EUR", "amount": "9.5"}}),
        )
        .expect("ok");
        assert_eq!(r.domains, vec!["shop.example", "other.example"]);
        let n = serde_json::to_value(translate(r.event, "v1".into()).expect("ok")).expect("json");
        assert_eq!(
            n,
            json!({"name": "pageview", "anonymous_id": "v1", "props": {"plan": "pro"},
                "revenue": {"currency": "EUR", "amount": "9.5"},
                "context": {"url": "https://shop.example/a?utm_source=nl", "referrer": "https://google.com/"}})
        );
    }

    #[test]
    fn the_tracker_short_form_and_bad_input() {
        let r = request(
            json!({"n": "Signup", "u": "https://s.example/", "d": "s.example", "p": "{\"a\":1}"}),
        )
        .expect("ok");
        let n = serde_json::to_value(translate(r.event, "v".into()).expect("ok")).expect("json");
        assert_eq!(
            (n["name"].clone(), n["props"].clone()),
            (json!("Signup"), json!({"a": 1}))
        );
        assert_eq!(
            request(json!({"name": "x"})).expect_err("bad").reason,
            Reason::UnknownSite
        );
        let r = request(json!({"d": "s.example", "p": "{oops"})).expect("ok");
        assert_eq!(
            translate(r.event, "v".into()).expect_err("bad").reason,
            Reason::InvalidProps
        );
    }

    #[test]
    fn an_engagement_ping_carries_time_and_scroll_depth_as_props() {
        let r = request(
            json!({"n": "engagement", "u": "https://s.example/a", "d": "s.example",
            "e": 12500, "sd": 80, "h": 0}),
        )
        .expect("ok");
        let n = serde_json::to_value(translate(r.event, "v".into()).expect("ok")).expect("json");
        assert_eq!(n["name"], ENGAGEMENT);
        assert_eq!(
            n["props"],
            json!({(ENGAGED_MS_PROP): 12500, (SCROLL_DEPTH_PROP): 80})
        );
        // Only an engagement ping's `e` and `sd` mean that.
        let r = request(json!({"n": "pageview", "d": "s.example", "e": 1, "sd": 2})).expect("ok");
        let n = serde_json::to_value(translate(r.event, "v".into()).expect("ok")).expect("json");
        assert_eq!(n.get("props"), None);
    }

    #[test]
    fn visitors_are_stable_within_a_salt_and_differ_across() {
        let a = visitor_id(b"salt-1", "shop", "198.51.100.7", "Firefox");
        assert_eq!(a, visitor_id(b"salt-1", "shop", "198.51.100.7", "Firefox"));
        assert_eq!(a.len(), 33);
        assert_ne!(a, visitor_id(b"salt-2", "shop", "198.51.100.7", "Firefox"));
        assert_ne!(a, visitor_id(b"salt-1", "shop", "198.51.100.8", "Firefox"));
        assert_ne!(a, visitor_id(b"salt-1", "blog", "198.51.100.7", "Firefox"));
        assert!(!a.contains("198"));
    }
}
