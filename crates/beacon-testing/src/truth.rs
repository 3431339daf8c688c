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

/// `events` in a realistic arrival order: a `late_fraction` of them arrive
/// late, by up to `max_delay_ms` of event time (an SDK flushing a batch, a
/// phone coming back online); the others keep their order.
pub fn arrive_late(events: &mut [Event], seed: u64, late_fraction: f64, max_delay_ms: i64) {
    let mut rng = Rng(seed ^ 0x1a7e);
    let mut keyed: Vec<(i64, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let late = (rng.next() % 10_000) as f64 / 10_000.0 < late_fraction;
            let delay = if late {
                1 + (rng.next() % max_delay_ms.max(1) as u64) as i64
            } else {
                0
            };
            (e.ts.timestamp_millis() + delay, i)
        })
        .collect();
    // Stable: events that are not late keep their relative order.
    keyed.sort_by_key(|(arrival, _)| *arrival);
    let order: Vec<Event> = keyed.iter().map(|(_, i)| events[*i].clone()).collect();
    events.clone_from_slice(&order);
}

/// Publish `events` to `BEACON_EVENTS` on their subjects with their dedupe ids;
/// returns the last stream sequence of each partition.
/// Publish one event as the pipeline stores it (its subject, its dedupe id);
/// the ack is the caller's to await.
pub async fn send(
    js: &async_nats::jetstream::Context,
    e: &Event,
) -> Result<
    async_nats::jetstream::context::PublishAckFuture,
    async_nats::jetstream::context::PublishError,
> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", e.dedupe_id().as_str());
    let payload = serde_json::to_vec(e).expect("serialize");
    js.publish_with_headers(
        event_subject(e.partition, &e.site, &e.name),
        headers,
        payload.into(),
    )
    .await
}

pub async fn publish(js: &async_nats::jetstream::Context, events: &[Event]) -> BTreeMap<u32, u64> {
    let mut last = BTreeMap::new();
    for chunk in events.chunks(2000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for e in chunk {
            acks.push((e.partition, send(js, e).await.expect("publish")));
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

/// An event of a user as sessions see it: its time, and its path if it is a page view.
type Moment = (i64, Option<String>);

/// What the rollups must hold for a set of events.
#[derive(Debug, Default)]
pub struct Truth {
    cells: BTreeMap<(String, Granularity, i64), Expected>,
    /// Granularities counted (those whose retention covers the data).
    granularities: Vec<Granularity>,
}

impl Truth {
    /// Compute the truth over `granularities`, with sessions split by
    /// `timeout_ms` in event time: each user's events sorted by time (page
    /// views at the same time by path), cut where they pause longer than the
    /// timeout. The order of `events` does not matter.
    pub fn of(events: &[Event], granularities: &[Granularity], timeout_ms: i64) -> Truth {
        let mut truth = Truth {
            granularities: granularities.to_vec(),
            ..Truth::default()
        };
        let mut users: HashMap<(String, String), Vec<Moment>> = HashMap::new();
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
            let page = (e.name == "pageview")
                .then(|| e.context.path.clone().unwrap_or_else(|| "(none)".into()));
            users
                .entry((e.site.clone(), e.user_key().to_owned()))
                .or_default()
                .push((ts, page));
        }
        for ((site, _), mut times) in users {
            times.sort();
            let mut rest = times.as_slice();
            while let Some(&(start, _)) = rest.first() {
                // The session runs while each event follows the one before
                // within the timeout.
                let len = 1 + rest
                    .windows(2)
                    .take_while(|w| w[1].0 - w[0].0 <= timeout_ms)
                    .count();
                let (session, after) = rest.split_at(len);
                rest = after;
                let end = session[len - 1].0;
                let pages: Vec<&String> = session.iter().filter_map(|(_, p)| p.as_ref()).collect();
                for g in granularities {
                    let cell = truth.cell(&site, *g, start);
                    cell.sessions += 1;
                    cell.duration_ms += end - start;
                    cell.session_pageviews += pages.len() as i64;
                    if pages.len() == 1 {
                        cell.bounces += 1;
                    }
                    if let (Some(first), Some(last)) = (pages.first(), pages.last()) {
                        *cell.entries.entry((*first).clone()).or_default() += 1;
                        *cell.exits.entry((*last).clone()).or_default() += 1;
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
