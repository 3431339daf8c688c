//! The canonical event: what every ingest path produces and `BEACON_EVENTS` stores.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The reserved name of an engagement ping: how long a page was in view and how
/// far it was scrolled. It is stored like any event but counted as engagement of
/// its page, never as an event, page view or visit.
pub const ENGAGEMENT: &str = "engagement";
/// Property of an engagement ping: milliseconds the page was visible and focused since the last ping.
pub const ENGAGED_MS_PROP: &str = "engaged_ms";
/// Property of an engagement ping: deepest scroll position reached, 0–100 (% of the page).
pub const SCROLL_DEPTH_PROP: &str = "scroll_depth";

/// One validated, normalized and enriched event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Client-chosen unique id (generated when absent); with `site` it is the dedupe key.
    pub id: String,
    pub site: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    /// When the event happened (client time, checked against the configured window).
    pub ts: DateTime<Utc>,
    /// When Beacon first received it.
    pub received_at: DateTime<Utc>,
    pub partition: u32,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub props: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenue: Option<Revenue>,
    #[serde(default, skip_serializing_if = "Context::is_empty")]
    pub context: Context,
}

impl Event {
    /// The JetStream `Nats-Msg-Id`: a retried publish of the same event is stored once.
    pub fn dedupe_id(&self) -> String {
        format!("{}:{}", self.site, self.id)
    }

    /// The user key events are partitioned and counted by.
    pub fn user_key(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.anonymous_id.as_deref())
            .unwrap_or(&self.id)
    }
}

/// Revenue as an exact decimal (never a float) in an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revenue {
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
}

/// What Beacon derived from the request and the event: page, referrer, device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
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
    /// ISO 3166-2 subdivision code or name, when the GeoIP database has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Campaign fields from the page URL's `utm_*` parameters (or what the SDK sent).
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
    /// The visit's channel (Direct, Organic Search, Paid Social, …) by documented rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Why this event is filtered traffic (`crawler`, `headless`, `monitor`, …);
    /// absent for human traffic. Filtered events are stored but not counted,
    /// unless the site keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<String>,
    /// Only present when the operator chose to keep client addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

impl Context {
    pub fn is_empty(&self) -> bool {
        *self == Context::default()
    }
}
