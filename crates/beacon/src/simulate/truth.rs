//! The exact ground truth of what a simulation sent, worked out from the events
//! themselves (no Beacon counting code): events by name and minute, events
//! per page, unique users, page views, revenue per currency, sessions and
//! bounces. `beacon verify` compares Beacon's answers with it.

use std::collections::{BTreeMap, HashMap, HashSet};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::traffic::SimEvent;

/// A session ends after this long without events from its user (Beacon's default).
pub const SESSION_TIMEOUT_MS: i64 = 30 * 60_000;

/// What `simulate --truth` writes: one truth per site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthFile {
    pub seed: u64,
    /// Names this run's events and users (`sim-<run>-<n>`, `<run>-u<n>`).
    pub run: String,
    pub sites: Vec<GroundTruth>,
}

/// One site's truth over the simulation's range, and what Beacon already
/// counted in that range before the simulation sent anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub site: String,
    /// The first minute of the simulated period (RFC 3339, UTC).
    pub from: String,
    /// The minute after its last event.
    pub to: String,
    /// What the simulation added: the events Beacon answered `accepted`.
    #[serde(flatten)]
    pub sent: Figures,
    /// Beacon's answers over `from`..`to` just before the simulation sent
    /// (other traffic of the site: the README tour's curl events, an earlier
    /// run's last minute). Verify expects `before` + `sent`.
    #[serde(default)]
    pub before: Figures,
}

/// The figures verify compares, for one site over one range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub events: u64,
    pub pageviews: u64,
    pub unique_users: u64,
    pub sessions: u64,
    /// Sessions with exactly one page view.
    pub bounces: u64,
    /// Exact sums per ISO currency, as decimal strings.
    pub revenue: BTreeMap<String, String>,
    pub events_by_name: BTreeMap<String, u64>,
    /// Events per page (`path`).
    pub events_by_path: BTreeMap<String, u64>,
    /// Minute (RFC 3339, UTC) → event name → count.
    pub events_by_minute: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Figures {
    /// The figures of both sets of events together. Unique users add up
    /// because a simulation's users are its own (`<run>-u<n>`).
    pub fn plus(&self, other: &Figures) -> Figures {
        let add = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            let mut sum = a.clone();
            for (k, v) in b {
                *sum.entry(k.clone()).or_default() += v;
            }
            sum
        };
        let mut revenue: BTreeMap<String, Decimal> = BTreeMap::new();
        for (currency, amount) in self.revenue.iter().chain(&other.revenue) {
            // Both sides were written from decimals; an unreadable one counts as
            // nothing and shows up as a difference.
            *revenue.entry(currency.clone()).or_default() +=
                amount.parse::<Decimal>().unwrap_or_default();
        }
        let mut events_by_minute = self.events_by_minute.clone();
        for (minute, names) in &other.events_by_minute {
            let sum = add(
                events_by_minute.get(minute).unwrap_or(&BTreeMap::new()),
                names,
            );
            events_by_minute.insert(minute.clone(), sum);
        }
        Figures {
            events: self.events + other.events,
            pageviews: self.pageviews + other.pageviews,
            unique_users: self.unique_users + other.unique_users,
            sessions: self.sessions + other.sessions,
            bounces: self.bounces + other.bounces,
            revenue: decimals(revenue),
            events_by_name: add(&self.events_by_name, &other.events_by_name),
            events_by_path: add(&self.events_by_path, &other.events_by_path),
            events_by_minute,
        }
    }
}

/// Sums per currency as the API writes them (no trailing zeros).
pub fn decimals(sums: BTreeMap<String, Decimal>) -> BTreeMap<String, String> {
    sums.into_iter()
        .map(|(c, a)| (c, a.normalize().to_string()))
        .collect()
}

/// `ms` as RFC 3339 in UTC, to the second: how truth files and the query API
/// name minutes.
pub fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The start of the minute `ms` falls in.
pub fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60_000
}

impl Figures {
    /// The figures of `events` (those Beacon accepted for one site), in any
    /// order: sessions are cut in event time, as they happened.
    pub fn of(events: &[&SimEvent]) -> Figures {
        let mut events = events.to_vec();
        events.sort_by(|a, b| (a.ts_ms, &a.id).cmp(&(b.ts_ms, &b.id)));
        let mut figures = Figures {
            events: events.len() as u64,
            ..Figures::default()
        };
        let mut users = HashSet::new();
        let mut revenue: BTreeMap<String, Decimal> = BTreeMap::new();
        // Per user: (last event time, page views in the open session).
        let mut open: HashMap<&str, (i64, u64)> = HashMap::new();
        for e in events {
            users.insert(e.user.as_str());
            *figures.events_by_name.entry(e.name.to_owned()).or_default() += 1;
            *figures.events_by_path.entry(e.path.clone()).or_default() += 1;
            *figures
                .events_by_minute
                .entry(utc(minute_of(e.ts_ms)))
                .or_default()
                .entry(e.name.to_owned())
                .or_default() += 1;
            if let Some((amount, currency)) = &e.revenue {
                *revenue.entry((*currency).to_owned()).or_default() += amount;
            }
            let pageview = e.name == "pageview";
            figures.pageviews += u64::from(pageview);
            match open.get_mut(e.user.as_str()) {
                Some((seen, views)) if e.ts_ms <= *seen + SESSION_TIMEOUT_MS => {
                    *seen = e.ts_ms;
                    *views += u64::from(pageview);
                }
                previous => {
                    if let Some((_, 1)) = previous {
                        figures.bounces += 1;
                    }
                    figures.sessions += 1;
                    open.insert(e.user.as_str(), (e.ts_ms, u64::from(pageview)));
                }
            }
        }
        figures.bounces += open.values().filter(|(_, views)| *views == 1).count() as u64;
        figures.unique_users = users.len() as u64;
        figures.revenue = decimals(revenue);
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, name: &'static str, ts_ms: i64) -> SimEvent {
        SimEvent {
            site: 0,
            id: format!("{user}-{ts_ms}"),
            name,
            user: user.into(),
            ts_ms,
            path: "/".into(),
            props: vec![],
            revenue: (name == "purchase").then(|| (Decimal::new(1999, 2), "EUR")),
            referrer: None,
            user_agent: "",
            country: "DE",
        }
    }

    #[test]
    fn sessions_split_after_the_timeout_and_bounces_have_one_page_view() {
        let t = 1_790_000_000_000;
        let events = [
            event("a", "pageview", t),
            event("b", "pageview", t + 1_000),
            event("a", "pageview", t + 60_000),
            event("a", "purchase", t + 120_000),
            // A pause longer than the timeout: a new session, one page view.
            event("a", "pageview", t + 120_000 + SESSION_TIMEOUT_MS + 1),
            event("c", "signup", t + 120_000 + SESSION_TIMEOUT_MS + 2),
        ];
        let figures = Figures::of(&events.iter().collect::<Vec<_>>());
        assert_eq!(figures.sessions, 4);
        assert_eq!(figures.bounces, 2); // b, and a's second session; c viewed no page
        assert_eq!(figures.unique_users, 3);
        assert_eq!(figures.pageviews, 4);
        assert_eq!(figures.revenue["EUR"], "19.99");
        assert_eq!(
            figures
                .events_by_minute
                .values()
                .map(|m| m.values().sum::<u64>())
                .sum::<u64>(),
            6
        );
    }

    #[test]
    fn sessions_follow_event_time_whatever_the_order_given() {
        // The example: page views at 12:00 and then 10:00 are two
        // sessions, both bounces.
        let t = 1_790_000_000_000;
        let late = event("a", "pageview", t + 2 * 3_600_000);
        let early = event("a", "pageview", t);
        let figures = Figures::of(&[&late, &early]);
        assert_eq!((figures.sessions, figures.bounces), (2, 2));
        let shuffled = [
            event("a", "pageview", t + 60_000),
            event("a", "pageview", t),
            event("a", "pageview", t + 2 * SESSION_TIMEOUT_MS),
            event("a", "pageview", t + SESSION_TIMEOUT_MS),
        ];
        // Every gap is within the timeout once sorted: one session.
        let figures = Figures::of(&shuffled.iter().collect::<Vec<_>>());
        assert_eq!((figures.sessions, figures.bounces), (1, 0));
    }

    #[test]
    fn figures_add_up() {
        let t = 1_790_000_000_000;
        let a = Figures::of(&[&event("a", "purchase", t)]);
        let b = Figures::of(&[&event("b", "purchase", t), &event("b", "pageview", t)]);
        let sum = a.plus(&b);
        assert_eq!(sum.events, 3);
        assert_eq!(sum.revenue["EUR"], "39.98");
        assert_eq!(sum.events_by_minute[&utc(minute_of(t))]["purchase"], 2);
        assert_eq!(sum.events_by_path["/"], 3);
        assert_eq!(sum.unique_users, 2);
    }
}
