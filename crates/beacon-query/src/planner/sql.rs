//! The SQL the planner runs over the event store's `events` view: the
//! selected events, the sessions they belong to (cut in SQL by the session
//! timeout, as the rollups cut them), and the figures per group key. The
//! selected events and sessions are steps, computed once per question in
//! one [`beacon_store::Engine::staged`] run; the figures' queries read them.
//!
//! Every value in the text comes from [`sql_literal`] or is a number the
//! planner computed; dimensions come from [`Dim::event_sql`]'s fixed table.

use beacon_store::Step;

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
    /// The range's rows, with `t` their event time in Unix ms.
    fn rows(&self) -> String {
        format!(
            "SELECT {COLUMNS} FROM events WHERE ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({})",
            self.span.from, self.span.to
        )
    }

    /// `r`: the range's rows, as a common table expression.
    fn range(&self) -> String {
        format!("r AS ({})", self.rows())
    }

    /// The steps computed once per question and read by the queries:
    /// `sel`, the selected events (`user_key`, `name`, revenue and their key
    /// `k`, and with sessions `sn`, their session's number within the user);
    /// when sessions are needed, before it `cut`, every traffic event of the
    /// users with a selected event, numbered by session, and `sess`, one row
    /// per session that counts (one with a selected event, passing the
    /// session filters). Only those users' events go through the window
    /// functions, and only the columns the cut needs: a session of any other
    /// user has no selected event, so it never counts.
    pub fn steps(&self, sessions: bool) -> Vec<Step> {
        let step = |name: &str, sql: String| Step {
            name: name.to_owned(),
            sql,
        };
        let event = self.filters.event_sql(self.ctx);
        let key_of_event = self.event_key();
        let traffic = "bot IS NULL AND name <> 'engagement'";
        if !sessions {
            return vec![step(
                "sel",
                // A derived table, not a CTE: a lone reader takes it in as its own CTE.
                format!(
                    "SELECT user_key, name, revenue_amount, revenue_currency, {key_of_event} AS k \
                     FROM ({}) r WHERE {traffic} AND ({event})",
                    self.rows()
                ),
            )];
        }
        // Entry and exit pages are read only where a filter or the key needs them.
        let pages = self.filters.needs_sessions()
            || matches!(self.key, Key::Dim(Dim::EntryPage | Dim::ExitPage));
        let page_key = if pages {
            format!(
                "CASE WHEN name = 'pageview' THEN lpad(CAST(t AS VARCHAR), 15, '0') || COALESCE(path, {}) END",
                sql_literal(NONE)
            )
        } else {
            "CAST(NULL AS VARCHAR)".to_owned()
        };
        let users = format!(
            "WITH {} SELECT user_key, max(CASE WHEN ({event}) THEN 1 ELSE 0 END) AS picked \
             FROM r WHERE {traffic} GROUP BY user_key",
            self.range()
        );
        let cut = format!(
            "WITH {range}, \
             traffic AS (SELECT t, name, user_key, {page_key} AS page_key, picked, \
                 CASE WHEN picked THEN {key_of_event} END AS ek, revenue_amount, revenue_currency \
               FROM (SELECT *, ({event}) AS picked FROM r WHERE {traffic})), \
             mine AS (SELECT * FROM traffic WHERE user_key IN (SELECT user_key FROM users WHERE picked = 1)), \
             gaps AS (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY user_key ORDER BY t) <= {timeout} THEN 0 ELSE 1 END AS opens FROM mine) \
             SELECT user_key, t, name, page_key, picked, ek, revenue_amount, revenue_currency, \
               sum(opens) OVER (PARTITION BY user_key ORDER BY t ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sn \
             FROM gaps",
            range = self.range(),
            timeout = self.timeout_ms,
        );
        let sess = format!(
            "SELECT * FROM (SELECT user_key, sn, min(t) AS s_start, max(t) AS s_end, \
                 sum(CASE WHEN name = 'pageview' THEN 1 ELSE 0 END) AS s_pageviews, \
                 substr(min(page_key), 16) AS entry_page, substr(max(page_key), 16) AS exit_page \
               FROM cut GROUP BY user_key, sn HAVING max(CASE WHEN picked THEN 1 ELSE 0 END) = 1) \
             WHERE {}",
            self.filters.session_sql()
        );
        let columns = "user_key, sn, name, revenue_amount, revenue_currency";
        // The selected events of the sessions that count, keyed as asked.
        let joined = |k: &str, and: &str| {
            format!(
                "SELECT c.user_key, c.sn, c.name, c.revenue_amount, c.revenue_currency, {k} AS k \
                 FROM cut c JOIN sess s ON c.user_key = s.user_key AND c.sn = s.sn \
                 WHERE c.picked{and}"
            )
        };
        // A session without a page view has no entry or exit page: like the
        // rollups, a breakdown by page leaves it out.
        let sel = match self.key {
            Key::Dim(Dim::EntryPage) => joined("s.entry_page", " AND s.entry_page IS NOT NULL"),
            Key::Dim(Dim::ExitPage) => joined("s.exit_page", " AND s.exit_page IS NOT NULL"),
            _ if self.filters.needs_sessions() => joined("c.ek", ""),
            // Every session holding a selected event counts: no join needed.
            _ => format!("SELECT {columns}, ek AS k FROM cut WHERE picked"),
        };
        vec![
            step("users", users),
            step("cut", cut),
            step("sess", sess),
            step("sel", sel),
        ]
    }

    /// The group key of a row of `sel`: its `k`, or one group for the whole
    /// range (so the totals read the same `sel` as the groups).
    fn sel_key(&self) -> &'static str {
        match self.key {
            Key::All => "'all'",
            _ => "k",
        }
    }

    /// An event's group key as SQL text over the range's rows.
    fn event_key(&self) -> String {
        match self.key {
            Key::All => "'all'".to_owned(),
            Key::Buckets(starts) => format!("CAST({} AS VARCHAR)", bucket_of(starts)),
            Key::Dim(d) => d.event_sql().unwrap_or_else(|| "NULL".to_owned()),
        }
    }

    /// Per key: events, page views, users (over the step `sel`).
    pub fn events_sql(&self) -> String {
        format!(
            "SELECT {k} AS k, count(*) AS events, sum(CASE WHEN name = 'pageview' THEN 1 ELSE 0 END) AS pageviews, \
             count(DISTINCT user_key) AS users FROM sel GROUP BY 1",
            k = self.sel_key()
        )
    }

    /// Per key: sessions, bounces, summed duration (ms) (over the steps
    /// `sess` and `sel`).
    pub fn sessions_sql(&self) -> String {
        let figures = "count(*) AS sessions, sum(CASE WHEN s_pageviews = 1 THEN 1 ELSE 0 END) AS bounces, \
             sum(s_end - s_start) AS duration_ms";
        // A session's own key (the range, its start's bucket, its entry or
        // exit page) is read from `sess` alone; a dimension's values from
        // its selected events, a session counting once under each.
        // Sessions without a page view have no entry or exit page (`NULL`).
        let own = |k: String| {
            format!("SELECT {k} AS k, {figures} FROM sess WHERE {k} IS NOT NULL GROUP BY 1")
        };
        match self.key {
            Key::All => own("'all'".to_owned()),
            Key::Buckets(starts) => format!(
                "SELECT CAST({} AS VARCHAR) AS k, {figures} \
                 FROM (SELECT s_start AS t, s_pageviews, s_start, s_end FROM sess) GROUP BY 1",
                bucket_of(starts)
            ),
            Key::Dim(Dim::EntryPage) => own("entry_page".to_owned()),
            Key::Dim(Dim::ExitPage) => own("exit_page".to_owned()),
            Key::Dim(_) => format!(
                "WITH keyed AS (SELECT DISTINCT user_key, sn, k FROM sel) SELECT keyed.k AS k, {figures} \
                 FROM keyed JOIN sess s ON keyed.user_key = s.user_key AND keyed.sn = s.sn GROUP BY keyed.k"
            ),
        }
    }

    /// Per key and currency: the revenue of the selected events (over `sel`).
    pub fn revenue_sql(&self) -> String {
        format!(
            "SELECT {k} AS k, revenue_currency AS currency, sum(revenue_amount) AS amount FROM sel \
             WHERE revenue_currency IS NOT NULL GROUP BY 1, 2",
            k = self.sel_key()
        )
    }

    /// Every user in range, over the step `users` (which, with sessions,
    /// holds each traffic user of the range once): for the whole range only.
    pub fn all_users_step_sql(&self, sessions: bool) -> Option<String> {
        (sessions && matches!(self.key, Key::All))
            .then(|| "SELECT 'all' AS k, count(*) AS users FROM users".to_owned())
    }

    /// Per key: every user in range (the denominator of conversion rates).
    pub fn all_users_sql(&self) -> String {
        format!(
            "WITH {} SELECT {} AS k, count(DISTINCT user_key) AS users FROM r \
             WHERE bot IS NULL AND name <> 'engagement' GROUP BY 1",
            self.range(),
            self.event_key()
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
            "WITH {} \
             SELECT {} AS k, sum({}) AS engaged_ms, sum({scroll}) AS scroll_sum, count({scroll}) AS scrolled \
             FROM r WHERE bot IS NULL AND name = 'engagement' AND ({}) GROUP BY 1",
            self.range(),
            self.event_key(),
            int("engaged_ms", 86_400_000),
            self.filters.event_sql(self.ctx),
            scroll = int("scroll_depth", 100),
        )
    }

    /// Per key and reason: the filtered (bot) events passing the filters.
    pub fn filtered_sql(&self) -> String {
        format!(
            "WITH {} \
             SELECT {} AS k, bot AS reason, count(*) AS n FROM r WHERE bot IS NOT NULL AND ({}) GROUP BY 1, 2",
            self.range(),
            self.event_key(),
            self.filters.event_sql(self.ctx),
        )
    }

    /// The property keys of the selected events, with events and users.
    pub fn properties_sql(&self) -> String {
        format!(
            "WITH {} SELECT key, count(*) AS events, count(DISTINCT user_key) AS users FROM \
             (SELECT unnest(map_keys(props)) AS key, user_key FROM r \
               WHERE bot IS NULL AND name <> 'engagement' AND ({}) AND props IS NOT NULL) \
             GROUP BY key",
            self.range(),
            self.filters.event_sql(self.ctx)
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
