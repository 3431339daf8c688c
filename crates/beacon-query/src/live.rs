//! What is happening right now, read from the stream rather than the rollups:
//! an ordered consumer on `BEACON_EVENTS` from five minutes back keeps, per
//! site, the newest events, the events of each recent second and the users
//! active in the last five minutes. The stream holds each event once, so a
//! retried publish is not seen twice here either.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::context::Context;
use beacon_core::Event;
use beacon_core::subject::EVENTS_PREFIX;
use beacon_nats::EVENTS_STREAM;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Window of "active users".
pub const ACTIVE_MS: i64 = 5 * 60_000;
/// Seconds averaged for "events per second now".
const RATE_SECONDS: i64 = 10;
/// Newest events kept per site for the feed.
pub const FEED_SIZE: usize = 50;
/// Uncounted events remembered per partition for the freshness figure.
const UNCOUNTED_KEPT: usize = 100_000;

/// One event of the feed, as shown to dashboards.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedEvent {
    /// Its `BEACON_EVENTS` sequence: the SSE event id.
    pub seq: u64,
    pub id: String,
    pub name: String,
    pub user: String,
    pub ts: String,
    pub received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revenue: Option<beacon_core::event::Revenue>,
}

impl FeedEvent {
    fn new(seq: u64, event: &Event) -> Self {
        let c = &event.context;
        FeedEvent {
            seq,
            id: event.id.clone(),
            name: event.name.clone(),
            user: event.user_key().to_owned(),
            ts: event.ts.to_rfc3339(),
            received_at: event.received_at.to_rfc3339(),
            path: c.path.clone(),
            referrer_source: c.referrer_source.clone(),
            browser: c.browser.clone(),
            os: c.os.clone(),
            device: c.device.clone(),
            country: c.country.clone(),
            revenue: event.revenue.clone(),
        }
    }
}

/// The fields of a stored event the live counts need, borrowed where the
/// JSON allows (the rest of the event is skipped, not decoded).
#[derive(Debug, Deserialize)]
struct Glance<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    site: Cow<'a, str>,
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    anonymous_id: Option<Cow<'a, str>>,
    received_at: chrono::DateTime<chrono::Utc>,
    partition: u32,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(default)]
    context: GlanceContext,
}

/// Whether a stored event is filtered traffic.
#[derive(Debug, Default, Deserialize)]
struct GlanceContext {
    #[serde(default)]
    bot: Option<String>,
}

#[derive(Debug, Default)]
struct SiteLive {
    /// The newest events as stored (sequence, payload): decoded only when asked for.
    feed: VecDeque<(u64, Bytes)>,
    /// (second, events received in it), oldest first.
    seconds: VecDeque<(i64, u64)>,
    /// User hash → last time seen (received, Unix ms).
    users: HashMap<u64, i64>,
    /// When the window was last cut to five minutes (Unix ms): also done
    /// while nobody asks, so memory stays bounded.
    pruned_ms: i64,
}

impl SiteLive {
    fn record(&mut self, event: (u64, Bytes), user: u64, received_ms: i64) {
        let second = received_ms.div_euclid(1000);
        // Seconds stay in order: events arrive nearly in order of receipt, so
        // the place is almost always at the back.
        let at = self.seconds.partition_point(|(s, _)| *s < second);
        match self.seconds.get_mut(at) {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.seconds.insert(at, (second, 1)),
        }
        let seen = self.users.entry(user).or_insert(received_ms);
        *seen = (*seen).max(received_ms);
        self.feed.push_back(event);
        while self.feed.len() > FEED_SIZE {
            self.feed.pop_front();
        }
        if received_ms > self.pruned_ms + 10_000 {
            self.prune(received_ms);
        }
    }

    fn prune(&mut self, now_ms: i64) {
        self.pruned_ms = now_ms;
        let oldest_second = (now_ms - ACTIVE_MS).div_euclid(1000);
        while self
            .seconds
            .front()
            .is_some_and(|(s, _)| *s < oldest_second)
        {
            self.seconds.pop_front();
        }
        self.users.retain(|_, seen| *seen >= now_ms - ACTIVE_MS);
    }
}

/// The live figures of one site.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveFigures {
    pub site: String,
    /// Distinct users with an event received in the last five minutes.
    pub active_users: u64,
    /// Events received per second, averaged over the last ten seconds.
    pub events_per_second: f64,
    pub events_last_minute: u64,
    pub events_last_5_minutes: u64,
    /// The newest events, newest last.
    pub recent: Vec<FeedEvent>,
    /// `BEACON_EVENTS` sequence of the newest event seen.
    pub last_seq: u64,
}

/// (sequence, received ms) of events seen, oldest first.
type Uncounted = VecDeque<(u64, i64)>;

/// Shared live state of every site, written by [`tail`].
#[derive(Debug, Clone)]
pub struct Live {
    sites: Arc<Mutex<HashMap<String, SiteLive>>>,
    /// Per partition, (sequence, received ms) of events seen and perhaps not
    /// yet counted by the rollups, oldest first.
    uncounted: Arc<Mutex<HashMap<u32, Uncounted>>>,
    last_seq: Arc<Mutex<u64>>,
    changed: watch::Sender<u64>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            sites: Arc::default(),
            uncounted: Arc::default(),
            last_seq: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Live {
    /// Notified on each new event (of any site).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn record(&self, seq: u64, payload: &Bytes) -> Result<(), serde_json::Error> {
        // Only what the counts need is read here; the feed is decoded on demand.
        let event: Glance = serde_json::from_slice(payload)?;
        let received_ms = event.received_at.timestamp_millis();
        let user_key = event
            .user_id
            .as_deref()
            .or(event.anonymous_id.as_deref())
            .unwrap_or(&event.id);
        let user = beacon_rollup::cell::user_hash(user_key);
        // Bots and engagement pings are not activity, as in the rollups:
        // they only matter to how far behind the numbers are.
        let activity = event.context.bot.is_none() && event.name != beacon_core::ENGAGEMENT;
        if activity {
            let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
            let site = match sites.get_mut(event.site.as_ref()) {
                Some(site) => site,
                None => sites.entry(event.site.to_string()).or_default(),
            };
            site.record((seq, payload.clone()), user, received_ms);
        }
        {
            let mut uncounted = self.uncounted.lock().unwrap_or_else(|e| e.into_inner());
            let queue = uncounted.entry(event.partition).or_default();
            // The oldest entries are what matter; a full queue keeps them.
            if queue.len() < UNCOUNTED_KEPT {
                queue.push_back((seq, received_ms));
            }
        }
        *self.last_seq.lock().unwrap_or_else(|e| e.into_inner()) = seq;
        self.changed.send_replace(seq);
        Ok(())
    }

    /// How long the oldest event seen in the stream but not yet counted has
    /// waited (0 when the rollups count everything seen); `counted(p)` is the
    /// sequence partition `p`'s rollups reach.
    pub fn behind_ms(&self, counted: impl Fn(u32) -> u64, now_ms: i64) -> i64 {
        let mut uncounted = self.uncounted.lock().unwrap_or_else(|e| e.into_inner());
        let mut behind = 0;
        for (p, queue) in uncounted.iter_mut() {
            let through = counted(*p);
            while queue.front().is_some_and(|(seq, _)| *seq <= through) {
                queue.pop_front();
            }
            if let Some((_, received)) = queue.front() {
                behind = behind.max(now_ms - received);
            }
        }
        behind.max(0)
    }

    /// `site`'s live figures at `now_ms`.
    pub fn figures(&self, site: &str, now_ms: i64) -> LiveFigures {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let last_seq = *self.last_seq.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = sites.get_mut(site) else {
            return LiveFigures {
                site: site.to_owned(),
                active_users: 0,
                events_per_second: 0.0,
                events_last_minute: 0,
                events_last_5_minutes: 0,
                recent: Vec::new(),
                last_seq,
            };
        };
        s.prune(now_ms);
        let now_second = now_ms.div_euclid(1000);
        let since = |secs: i64| -> u64 {
            s.seconds
                .iter()
                .filter(|(sec, _)| *sec > now_second - secs && *sec <= now_second)
                .map(|(_, n)| n)
                .sum()
        };
        LiveFigures {
            site: site.to_owned(),
            active_users: s.users.len() as u64,
            events_per_second: since(RATE_SECONDS) as f64 / RATE_SECONDS as f64,
            events_last_minute: since(60),
            events_last_5_minutes: since(ACTIVE_MS / 1000),
            recent: s
                .feed
                .iter()
                .filter_map(|(seq, payload)| {
                    let event: Event = serde_json::from_slice(payload).ok()?;
                    Some(FeedEvent::new(*seq, &event))
                })
                .collect(),
            last_seq,
        }
    }
}

/// Follow `BEACON_EVENTS` from five minutes back into `live` until `shutdown`.
pub async fn tail(js: Context, live: Live, mut shutdown: watch::Receiver<bool>) {
    let client = js.client();
    let mut last = 0;
    loop {
        let connected = beacon_nats::connects(&client);
        let (mut messages, mut silence) = match open(&js).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "live feed: cannot read events; retrying");
                if pause(&mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                m = messages.next() => m,
                _ = shutdown.wait_for(|s| *s) => return,
                // A restarted server forgot the feed's consumer: reopen it now.
                _ = beacon_nats::reconnected(&client, connected) => break,
                at = silence.stalled() => {
                    tracing::warn!(seq = at, "live feed went silent with events waiting; reopening");
                    break;
                }
            };
            match next {
                Some(Ok(message)) => {
                    let Ok(info) = message.info() else { continue };
                    let seq = info.stream_sequence;
                    silence.heard(seq);
                    if seq <= last {
                        continue;
                    }
                    last = seq;
                    if let Err(e) = live.record(seq, &message.payload) {
                        tracing::debug!(seq, error = %e, "live feed: unreadable event");
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "live feed: resuming"),
                None => break,
            }
        }
    }
}

/// Events from five minutes back, as they are stored, and the feed's watch
/// (which counts the stream's end at opening as brought: what came before the
/// five minutes never comes).
async fn open(
    js: &Context,
) -> Result<
    (
        async_nats::jetstream::consumer::pull::Ordered,
        beacon_nats::Silence,
    ),
    Box<dyn std::error::Error + Send + Sync>,
> {
    let start = time::OffsetDateTime::now_utc() - time::Duration::milliseconds(ACTIVE_MS);
    let stream = js.get_stream(EVENTS_STREAM).await?;
    let filter = format!("{EVENTS_PREFIX}.>");
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await?;
    let end = stream.cached_info().state.last_sequence;
    let silence = beacon_nats::Silence::new(stream, filter, end);
    Ok((consumer.messages().await?, silence))
}

/// Wait a second; true if shutdown came first.
async fn pause(shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    }
}
