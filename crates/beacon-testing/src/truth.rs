//! A deterministic event generator and an independent computation of what the
//! rollups must say about its events: the ground truth aggregation tests
//! compare Beacon's numbers with. It shares no counting code with the
//! aggregator on purpose.

use std::collections::{BTreeMap, HashMap, HashSet};

use beacon_core::event::{Context, Event, Revenue};
use beacon_core::partition_of;
use beacon_core::subject::event_subject;
use beacon_rollup::{DIMENSIONS, Granularity, View};
use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;

/// Shape of a generated data set.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub seed: u64,
    pub sites: usize,
    pub users: usize,
    pub events: usize,
    /// Events spread over this many days ending at `end_ms`.
    pub days: i64,
    pub end_ms: i64,
    pub partitions: u32,
}

/// SplitMix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const NAMES: [&str; 6] = [
    "pageview", "pageview", "pageview", "click", "signup", "purchase",
];
const BROWSERS: [&str; 4] = ["Chrome", "Firefox", "Safari", "Edge"];
const OSES: [&str; 3] = ["Windows", "Mac OSX", "Linux"];
const DEVICES: [&str; 2] = ["desktop", "mobile"];
const SOURCES: [&str; 4] = ["Google", "Direct", "twitter.com", "newsletter"];
const CURRENCIES: [&str; 3] = ["USD", "EUR", "JPY"];

/// Events in stream order: time moves forward; each user's events follow one
/// another with pauses of seconds to hours, so sessions split naturally.
pub fn generate(shape: Shape) -> Vec<Event> {
    let mut rng = Rng(shape.seed);
    let span = shape.days * 86_400_000;
    let start = shape.end_ms - span;
    let step = span / shape.events as i64;
    let mut next_seen: HashMap<usize, i64> = HashMap::new();
    let mut events = Vec::with_capacity(shape.events);
    for i in 0..shape.events {
        let now = start + i as i64 * step;
        // Pick a user whose pause is over, so per-user times only grow.
        let mut user = rng.below(shape.users);
        for _ in 0..4 {
            if next_seen.get(&user).is_none_or(|t| *t <= now) {
                break;
            }
            user = rng.below(shape.users);
        }
        let ts = now.max(next_seen.get(&user).copied().unwrap_or(now));
        let pause = match rng.below(10) {
            0 => 45 * 60_000 + rng.below(3_600_000) as i64,
            _ => 1_000 + rng.below(600_000) as i64,
        };
        next_seen.insert(user, ts + pause);
        let site = format!("site-{}", user % shape.sites);
        let name = NAMES[rng.below(NAMES.len())];
        let user_key = format!("u{user}");
        let revenue = (name == "purchase").then(|| Revenue {
            amount: Decimal::new(rng.below(100_000) as i64 + 1, 2),
            currency: CURRENCIES[rng.below(CURRENCIES.len())].to_owned(),
        });
        let path = format!("/page/{}", rng.below(12));
        let context = Context {
            path: Some(path),
            referrer_source: Some(SOURCES[user % SOURCES.len()].to_owned()),
            browser: Some(BROWSERS[user % BROWSERS.len()].to_owned()),
            os: Some(OSES[user % OSES.len()].to_owned()),
            device: Some(DEVICES[user % DEVICES.len()].to_owned()),
            country: (!user.is_multiple_of(5)).then(|| ["DE", "US", "JP"][user % 3].to_owned()),
            ..Context::default()
        };
        let time = Utc.timestamp_millis_opt(ts).single().expect("in range");
        events.push(Event {
            id: format!("e{}-{i}", shape.seed),
            partition: partition_of(&site, &user_key, shape.partitions),
            site,
            name: name.to_owned(),
            user_id: Some(user_key),
            anonymous_id: None,
            ts: time,
            received_at: time,
            props: Default::default(),
            revenue,
            context,
        });
    }
    events
}

/// Publish `events` to `BEACON_EVENTS` on their subjects with their dedupe ids;
/// returns the last stream sequence of each partition.
pub async fn publish(js: &async_nats::jetstream::Context, events: &[Event]) -> BTreeMap<u32, u64> {
    let mut last = BTreeMap::new();
    for chunk in events.chunks(2000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for e in chunk {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.dedupe_id().as_str());
            let payload = serde_json::to_vec(e).expect("serialize");
            let ack = js
                .publish_with_headers(
                    event_subject(e.partition, &e.site, &e.name),
                    headers,
                    payload.into(),
                )
                .await
                .expect("publish");
            acks.push((e.partition, ack));
        }
        for (p, ack) in acks {
            let seq = ack.await.expect("stored").sequence;
            let entry = last.entry(p).or_insert(0);
            *entry = (*entry).max(seq);
        }
    }
    last
}

/// Expected figures of one cell.
#[derive(Debug, Default, Clone, PartialEq)]
struct Expected {
    events: BTreeMap<String, i64>,
    pageviews: i64,
    revenue: BTreeMap<String, Decimal>,
    dims: Vec<BTreeMap<String, i64>>,
    users: HashSet<String>,
    sessions: i64,
    bounces: i64,
    duration_ms: i64,
    session_pageviews: i64,
    entries: BTreeMap<String, i64>,
    exits: BTreeMap<String, i64>,
}

/// What the rollups must hold for a set of events.
#[derive(Debug, Default)]
pub struct Truth {
    cells: BTreeMap<(String, Granularity, i64), Expected>,
    /// Granularities counted (those whose retention covers the data).
    granularities: Vec<Granularity>,
}

struct Open {
    start: i64,
    last: i64,
    pages: Vec<String>,
}

impl Truth {
    /// Compute the truth over `granularities`, with sessions split by `timeout_ms`.
    pub fn of(events: &[Event], granularities: &[Granularity], timeout_ms: i64) -> Truth {
        let mut truth = Truth {
            granularities: granularities.to_vec(),
            ..Truth::default()
        };
        let mut sessions: HashMap<(String, String), Vec<Open>> = HashMap::new();
        for e in events {
            let ts = e.ts.timestamp_millis();
            for g in granularities {
                let cell = truth.cell(&e.site, *g, ts);
                *cell.events.entry(e.name.clone()).or_default() += 1;
                if e.name == "pageview" {
                    cell.pageviews += 1;
                }
                if let Some(r) = &e.revenue {
                    *cell.revenue.entry(r.currency.clone()).or_default() += r.amount;
                }
                for d in DIMENSIONS {
                    *cell.dims[d.index()].entry(d.of(e).to_owned()).or_default() += 1;
                }
                cell.users.insert(e.user_key().to_owned());
            }
            let list = sessions
                .entry((e.site.clone(), e.user_key().to_owned()))
                .or_default();
            match list.last_mut() {
                Some(open) if ts <= open.last + timeout_ms => open.last = open.last.max(ts),
                _ => list.push(Open {
                    start: ts,
                    last: ts,
                    pages: Vec::new(),
                }),
            }
            if e.name == "pageview"
                && let Some(open) = list.last_mut()
            {
                open.pages
                    .push(e.context.path.clone().unwrap_or_else(|| "(none)".into()));
            }
        }
        for ((site, _), list) in sessions {
            for s in list {
                for g in granularities {
                    let cell = truth.cell(&site, *g, s.start);
                    cell.sessions += 1;
                    cell.duration_ms += s.last - s.start;
                    cell.session_pageviews += s.pages.len() as i64;
                    if s.pages.len() == 1 {
                        cell.bounces += 1;
                    }
                    if let (Some(first), Some(last)) = (s.pages.first(), s.pages.last()) {
                        *cell.entries.entry(first.clone()).or_default() += 1;
                        *cell.exits.entry(last.clone()).or_default() += 1;
                    }
                }
            }
        }
        truth
    }

    fn cell(&mut self, site: &str, g: Granularity, ts: i64) -> &mut Expected {
        self.cells
            .entry((site.to_owned(), g, g.bucket_start(ts)))
            .or_insert_with(|| Expected {
                dims: vec![BTreeMap::new(); DIMENSIONS.len()],
                ..Expected::default()
            })
    }

    pub fn total_events(&self, g: Granularity) -> i64 {
        self.cells
            .iter()
            .filter(|((_, cg, _), _)| *cg == g)
            .map(|(_, c)| c.events.values().sum::<i64>())
            .sum()
    }

    /// Every difference between the rollups in `view` and the truth. Counts,
    /// revenue and sessions must match exactly; unique users of a cell within
    /// `user_error` (relative) of the true count, or ±1 for tiny cells.
    pub fn differences(&self, view: &View, user_error: f64) -> Vec<String> {
        let mut diffs = Vec::new();
        for ((site, g, start), want) in &self.cells {
            let got = view.total(site, *g, *start..*start + 1);
            let at = format!("{site} {} {start}", g.label());
            let events: BTreeMap<String, i64> =
                got.events.iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if events != want.events {
                diffs.push(format!("{at}: events {events:?} != {:?}", want.events));
            }
            if got.pageviews != want.pageviews {
                diffs.push(format!(
                    "{at}: pageviews {} != {}",
                    got.pageviews, want.pageviews
                ));
            }
            if got.revenue != want.revenue {
                diffs.push(format!(
                    "{at}: revenue {:?} != {:?}",
                    got.revenue, want.revenue
                ));
            }
            for d in DIMENSIONS {
                let dim: BTreeMap<String, i64> = got.dims[d.index()]
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
                if dim != want.dims[d.index()] {
                    diffs.push(format!(
                        "{at}: {} {dim:?} != {:?}",
                        d.name(),
                        want.dims[d.index()]
                    ));
                }
            }
            let s = &got.sessions;
            let sessions = (s.started, s.bounces, s.duration_ms, s.pageviews);
            let expected = (
                want.sessions,
                want.bounces,
                want.duration_ms,
                want.session_pageviews,
            );
            if sessions != expected {
                diffs.push(format!(
                    "{at}: sessions (started, bounces, duration, pageviews) {sessions:?} != {expected:?}"
                ));
            }
            let entries: BTreeMap<String, i64> =
                s.entries.iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let exits: BTreeMap<String, i64> =
                s.exits.iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if entries != want.entries || exits != want.exits {
                diffs.push(format!(
                    "{at}: entries/exits {entries:?}/{exits:?} != {:?}/{:?}",
                    want.entries, want.exits
                ));
            }
            let users = view.unique_users(site, *g, *start..*start + 1);
            let n = want.users.len() as f64;
            if (users - n).abs() > (n * user_error).max(1.0) {
                diffs.push(format!("{at}: unique users {users:.0} vs {n}"));
            }
        }
        for g in &self.granularities {
            for site in view.sites() {
                for (start, _) in view.buckets(site, *g, i64::MIN..i64::MAX) {
                    if !self.cells.contains_key(&(site.to_owned(), *g, start)) {
                        diffs.push(format!(
                            "{site} {} {start}: a cell the truth does not have",
                            g.label()
                        ));
                    }
                }
            }
        }
        diffs
    }

    /// Distinct users of `site` over everything, for the overall sketch check.
    pub fn users_of(&self, site: &str, g: Granularity) -> usize {
        let mut all: HashSet<&str> = HashSet::new();
        for ((s, cg, _), c) in &self.cells {
            if s == site && *cg == g {
                all.extend(c.users.iter().map(String::as_str));
            }
        }
        all.len()
    }

    /// Sessions started, bounces and total duration (ms) of `site`'s
    /// sessions that started in the `g` buckets starting in `range`.
    pub fn sessions(
        &self,
        site: &str,
        g: Granularity,
        range: std::ops::Range<i64>,
    ) -> (i64, i64, i64) {
        self.cells
            .iter()
            .filter(|((s, cg, start), _)| s == site && *cg == g && range.contains(start))
            .fold((0, 0, 0), |(n, b, d), (_, c)| {
                (n + c.sessions, b + c.bounces, d + c.duration_ms)
            })
    }
}
