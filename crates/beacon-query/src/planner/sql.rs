//! The SQL the planner runs over the event store's `events` view: the
//! selected events, the sessions they belong to (cut in SQL by the session
//! timeout, as the rollups cut them), and the figures per group key.
//!
//! Every value in the text comes from [`sql_literal`] or is a number the
//! planner computed; dimensions come from [`Dim::event_sql`]'s fixed table.

use crate::engine::{Metric, Span};
use crate::filter::{Dim, Filters, NONE, SqlContext, sql_literal};

/// What the figures are grouped by.
#[derive(Debug, Clone)]
pub enum Key {
    /// One group: the whole range.
    All,
    /// Time buckets starting at these instants (ascending; the first is the
    /// range's start): an event's key is its bucket's start, a session's the
    /// bucket it started in.
    Buckets(Vec<i64>),
    /// A dimension's values: a session counts under every value its
    /// selected events have (under its entry or exit page for those).
    Dim(Dim),
}

/// The parts of a question the SQL needs.
pub struct Plan<'a> {
    pub span: Span,
    pub filters: &'a Filters,
    pub ctx: &'a SqlContext,
    pub key: &'a Key,
    /// A pause longer than this (ms of event time) ends a session.
    pub timeout_ms: i64,
}

/// Whether a metric needs the sessions.
pub fn needs_sessions(metrics: &[Metric], filters: &Filters, key: &Key) -> bool {
    filters.needs_sessions()
        || matches!(key, Key::Dim(Dim::EntryPage | Dim::ExitPage))
        || metrics.iter().any(|m| {
            matches!(
                m,
                Metric::Sessions | Metric::BounceRate | Metric::AvgSessionDuration
            )
        })
}

/// The columns every CTE reads, with `t` the event time in Unix ms.
const COLUMNS: &str = "arrow_cast(ts, 'Int64') AS t, name, user_key, path, referrer_host, \
    referrer_source, channel, utm_source, utm_medium, utm_campaign, utm_term, utm_content, \
    country, region, city, browser, browser_version, os, os_version, device, bot, \
    revenue_amount, revenue_currency, props";

/// The start of the bucket holding `t`: a balanced tree of comparisons over
/// the starts, so any zone's days, hours and daylight saving are exact.
fn bucket_of(starts: &[i64]) -> String {
    match starts {
        [] => "NULL".to_owned(),
        [one] => one.to_string(),
        many => {
            let mid = many.len() / 2;
            format!(
                "CASE WHEN t < {} THEN {} ELSE {} END",
                many[mid],
                bucket_of(&many[..mid]),
                bucket_of(&many[mid..])
            )
        }
    }
}

impl Plan<'_> {
    /// The CTEs: `r` (the range's rows), `traffic` (what counts as traffic),
    /// and when sessions are needed `sess` (one row per session with a
    /// selected event passing the session filters); then `sel`, the
    /// selected events with their key `k`.
    pub fn with(&self, sessions: bool) -> String {
        let span = self.span;
        let event = self.filters.event_sql(self.ctx);
        let key_of_event = self.event_key();
        let mut out = format!(
            "WITH r AS (SELECT {COLUMNS} FROM events WHERE ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({})), \
             traffic AS (SELECT *, ({event}) AS picked, {key_of_event} AS ek FROM r WHERE bot IS NULL AND name <> 'engagement')",
            span.from, span.to
        );
        if !sessions {
            out.push_str(", sel AS (SELECT *, ek AS k FROM traffic WHERE picked)");
            return out;
        }
        let page_key = format!(
            "CASE WHEN name = 'pageview' THEN lpad(CAST(t AS VARCHAR), 15, '0') || COALESCE(path, {}) END",
            sql_literal(NONE)
        );
        out.push_str(&format!(
            ", gaps AS (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY user_key ORDER BY t) <= {timeout} THEN 0 ELSE 1 END AS opens FROM traffic), \
             numbered AS (SELECT *, sum(opens) OVER (PARTITION BY user_key ORDER BY t ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sn, {page_key} AS page_key FROM gaps), \
             whole AS (SELECT user_key, sn, min(t) AS s_start, max(t) AS s_end, \
                 sum(CASE WHEN name = 'pageview' THEN 1 ELSE 0 END) AS s_pageviews, \
                 substr(min(page_key), 16) AS entry_page, substr(max(page_key), 16) AS exit_page, \
                 max(CASE WHEN picked THEN 1 ELSE 0 END) AS s_picked \
               FROM numbered GROUP BY user_key, sn), \
             sess AS (SELECT * FROM whole WHERE s_picked = 1 AND {session}), \
             sel AS (SELECT n.*, {key_of_selected} AS k FROM numbered n JOIN sess s ON n.user_key = s.user_key AND n.sn = s.sn WHERE n.picked)",
            timeout = self.timeout_ms,
            session = self.filters.session_sql(),
            key_of_selected = match self.key {
                Key::Dim(Dim::EntryPage) => "COALESCE(s.entry_page, '(none)')".to_owned(),
                Key::Dim(Dim::ExitPage) => "COALESCE(s.exit_page, '(none)')".to_owned(),
                _ => "n.ek".to_owned(),
            },
        ));
        out
    }

    /// An event's group key as SQL text over the range's rows.
    fn event_key(&self) -> String {
        match self.key {
            Key::All => "'all'".to_owned(),
            Key::Buckets(starts) => format!("CAST({} AS VARCHAR)", bucket_of(starts)),
            Key::Dim(d) => d.event_sql().unwrap_or_else(|| "NULL".to_owned()),
        }
    }

    /// Per key: events, page views, users.
    pub fn events_sql(&self, sessions: bool) -> String {
        format!(
            "{} SELECT k, count(*) AS events, sum(CASE WHEN name = 'pageview' THEN 1 ELSE 0 END) AS pageviews, \
             count(DISTINCT user_key) AS users FROM sel GROUP BY k",
            self.with(sessions)
        )
    }

    /// Per key: sessions, bounces, summed duration (ms).
    pub fn sessions_sql(&self) -> String {
        let keyed = match self.key {
            Key::All => "SELECT user_key, sn, 'all' AS k FROM sess".to_owned(),
            Key::Buckets(starts) => format!(
                "SELECT user_key, sn, CAST({} AS VARCHAR) AS k FROM (SELECT user_key, sn, s_start AS t FROM sess)",
                bucket_of(starts)
            ),
            Key::Dim(Dim::EntryPage) => {
                "SELECT user_key, sn, COALESCE(entry_page, '(none)') AS k FROM sess".to_owned()
            }
            Key::Dim(Dim::ExitPage) => {
                "SELECT user_key, sn, COALESCE(exit_page, '(none)') AS k FROM sess".to_owned()
            }
            Key::Dim(_) => "SELECT DISTINCT user_key, sn, k FROM sel".to_owned(),
        };
        format!(
            "{}, keyed AS ({keyed}) SELECT keyed.k AS k, count(*) AS sessions, \
             sum(CASE WHEN s.s_pageviews = 1 THEN 1 ELSE 0 END) AS bounces, sum(s.s_end - s.s_start) AS duration_ms \
             FROM keyed JOIN sess s ON keyed.user_key = s.user_key AND keyed.sn = s.sn GROUP BY keyed.k",
            self.with(true)
        )
    }

    /// Per key and currency: the revenue of the selected events.
    pub fn revenue_sql(&self, sessions: bool) -> String {
        format!(
            "{} SELECT k, revenue_currency AS currency, sum(revenue_amount) AS amount FROM sel \
             WHERE revenue_currency IS NOT NULL GROUP BY k, revenue_currency",
            self.with(sessions)
        )
    }

    /// Per key: every user in range (the denominator of conversion rates).
    pub fn all_users_sql(&self) -> String {
        format!(
            "{} SELECT ek AS k, count(DISTINCT user_key) AS users FROM traffic GROUP BY ek",
            self.with(false)
        )
    }

    /// Per key: the engagement pings passing the filters, their engaged
    /// time (each capped at a day) and scroll depths, as the rollups read them.
    pub fn engagement_sql(&self) -> String {
        let int = |prop: &str, max: i64| {
            format!(
                "CASE WHEN TRY_CAST(props[{p}] AS BIGINT) BETWEEN 0 AND {max} THEN TRY_CAST(props[{p}] AS BIGINT) END",
                p = sql_literal(prop)
            )
        };
        format!(
            "WITH r AS (SELECT {COLUMNS} FROM events WHERE ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({})) \
             SELECT {} AS k, sum({}) AS engaged_ms, sum({scroll}) AS scroll_sum, count({scroll}) AS scrolled \
             FROM r WHERE bot IS NULL AND name = 'engagement' AND ({}) GROUP BY 1",
            self.span.from,
            self.span.to,
            self.event_key(),
            int("engaged_ms", 86_400_000),
            self.filters.event_sql(self.ctx),
            scroll = int("scroll_depth", 100),
        )
    }

    /// Per key and reason: the filtered (bot) events passing the filters.
    pub fn filtered_sql(&self) -> String {
        format!(
            "WITH r AS (SELECT {COLUMNS} FROM events WHERE ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({})) \
             SELECT {} AS k, bot AS reason, count(*) AS n FROM r WHERE bot IS NOT NULL AND ({}) GROUP BY 1, 2",
            self.span.from,
            self.span.to,
            self.event_key(),
            self.filters.event_sql(self.ctx),
        )
    }

    /// The property keys of the selected events, with events and users.
    pub fn properties_sql(&self) -> String {
        format!(
            "{} SELECT key, count(*) AS events, count(DISTINCT user_key) AS users FROM \
             (SELECT unnest(map_keys(props)) AS key, user_key FROM sel WHERE props IS NOT NULL) \
             GROUP BY key",
            self.with(false)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_found_by_halving() {
        assert_eq!(bucket_of(&[10]), "10");
        assert_eq!(
            bucket_of(&[10, 20, 30]),
            "CASE WHEN t < 20 THEN 10 ELSE CASE WHEN t < 30 THEN 20 ELSE 30 END END"
        );
    }
}
