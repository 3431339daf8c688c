//! The two shapes of an event on the wire: [`Event`], what a producer sends
//! (Beacon's native ingest format), and [`StoredEvent`], the canonical event
//! Beacon stores in `BEACON_EVENTS` and subscribers receive.
//!
//! These are the client's own small types rather than Beacon's server crates,
//! so a producer compiles none of the collector; the crate's tests check that
//! they match what the collector accepts and what the normalizer stores.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An event to send. Its `id` is minted when it is built (a UUIDv7), so every
/// retry of the same `Event` carries the same id and Beacon stores it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// With the site, the dedupe key. Printable ASCII without spaces, at most 200 characters.
    pub id: String,
    /// What happened: `pageview`, `signup`, `purchase`, …
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    /// When it happened; Beacon uses the receive time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub props: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenue: Option<Revenue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
}

/// Revenue as an exact decimal written as text (`"19.99"`), never a float.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revenue {
    pub amount: String,
    /// ISO 4217, e.g. `USD`.
    pub currency: String,
}

/// What a producer may tell Beacon about the request behind an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Two-letter country code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// A fresh event id: a UUIDv7, so ids also sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Event {
    /// A new event named `name`, with a fresh id and the current time.
    pub fn new(name: impl Into<String>) -> Self {
        Event {
            id: new_id(),
            name: name.into(),
            user_id: None,
            anonymous_id: None,
            ts: Some(Utc::now()),
            props: Map::new(),
            revenue: None,
            context: None,
        }
    }

    /// Use an id of your own, e.g. one derived from the business record
    /// (`order-1042-paid`), so that even a producer restarted from scratch
    /// sends the same id again.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    pub fn anonymous(mut self, anonymous_id: impl Into<String>) -> Self {
        self.anonymous_id = Some(anonymous_id.into());
        self
    }

    pub fn at(mut self, ts: DateTime<Utc>) -> Self {
        self.ts = Some(ts);
        self
    }

    pub fn prop(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.props.insert(key.into(), value.into());
        self
    }

    /// `amount` as decimal text (`"19.99"`), `currency` as ISO 4217.
    pub fn revenue(mut self, amount: impl Into<String>, currency: impl Into<String>) -> Self {
        self.revenue = Some(Revenue {
            amount: amount.into(),
            currency: currency.into(),
        });
        self
    }

    pub fn context(mut self, context: Context) -> Self {
        self.context = Some(context);
        self
    }

    /// The first problem Beacon would certainly refuse this event for, found
    /// before sending it; the collector checks the rest.
    pub fn problem(&self) -> Option<String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_ID_CHARS
            && self.id.bytes().all(|b| b.is_ascii_graphic());
        if !id_ok {
            return Some(format!(
                "the id {:?} is not 1 to {MAX_ID_CHARS} printable ASCII characters without spaces",
                self.id
            ));
        }
        if !self.name.chars().any(char::is_alphanumeric) {
            return Some("the name needs at least one letter or digit".to_owned());
        }
        let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
        if blank(&self.user_id) && blank(&self.anonymous_id) {
            return Some("a user_id or an anonymous_id is required".to_owned());
        }
        None
    }
}

/// Longest event id Beacon accepts.
pub const MAX_ID_CHARS: usize = 200;

/// A canonical event as Beacon stores it in `BEACON_EVENTS`: the sent event,
/// validated, with the receive time, partition and enrichment.
///
/// Fields Beacon may add later are ignored rather than refused, so an older
/// client keeps reading a newer server's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: String,
    pub site: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    pub ts: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub partition: u32,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub props: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenue: Option<Revenue>,
    #[serde(default, skip_serializing_if = "StoredContext::is_empty")]
    pub context: StoredContext,
}

/// What Beacon derived for a stored event: page, referrer, device, place, campaign.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_term: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Why Beacon classed this event as filtered traffic (`crawler`, …); absent for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

impl StoredContext {
    pub fn is_empty(&self) -> bool {
        *self == StoredContext::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_gets_its_own_id_and_keeps_it() {
        let a = Event::new("signup").user("u-1");
        let b = Event::new("signup").user("u-1");
        assert_ne!(a.id, b.id);
        assert_eq!(a.clone().id, a.id);
        assert_eq!(a.problem(), None);
    }

    #[test]
    fn obvious_problems_are_found_before_sending() {
        assert!(Event::new("signup").problem().is_some(), "no user");
        assert!(Event::new("...").user("u").problem().is_some());
        assert!(
            Event::new("a")
                .user("u")
                .with_id("has space")
                .problem()
                .is_some()
        );
        assert!(Event::new("a").anonymous("x").problem().is_none());
    }

    #[test]
    fn unknown_stored_fields_are_ignored() {
        let json = r#"{"id":"e","site":"s","name":"n","ts":"2026-11-25T10:00:00Z",
            "received_at":"2026-11-25T10:00:01Z","partition":3,"future":1,
            "context":{"path":"/","new_field":"x"}}"#;
        let event: StoredEvent = serde_json::from_str(json).expect("reads");
        assert_eq!(event.partition, 3);
        assert_eq!(event.context.path.as_deref(), Some("/"));
    }
}
