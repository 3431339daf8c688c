//! Sessions: a user's events belong to one session until they pause for longer
//! than the timeout. Each event's effect on its session is returned as counter
//! changes for the bucket the session started in, so session figures are right
//! at every commit, without waiting for sessions to end.

use serde::{Deserialize, Serialize};

use super::cell::SessionCounters;

/// Where a user's current session stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSession {
    /// Event time of the session's first event (Unix ms).
    pub start_ms: i64,
    /// Latest event time seen in the session.
    pub last_ms: i64,
    pub pageviews: u32,
    /// The page of the latest page view: the exit page so far.
    pub exit: Option<String>,
}

/// One event's effect: the session it belongs to afterwards, and the changes to
/// the counters of the buckets where that session started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub session: UserSession,
    pub counters: SessionCounters,
}

/// Advance `prev` (the user's session before this event, if any) by an event at
/// `ts_ms`; `page` is the path when the event is a page view. Events are taken
/// in stream order: one later than `last_ms + timeout` opens a new session,
/// anything else joins the current one (an earlier time does not shorten it).
pub fn advance(
    prev: Option<&UserSession>,
    ts_ms: i64,
    page: Option<&str>,
    timeout_ms: i64,
) -> Step {
    let mut counters = SessionCounters::default();
    let mut session = match prev {
        Some(s) if ts_ms <= s.last_ms.saturating_add(timeout_ms) => s.clone(),
        _ => {
            counters.started = 1;
            UserSession {
                start_ms: ts_ms,
                last_ms: ts_ms,
                pageviews: 0,
                exit: None,
            }
        }
    };
    if ts_ms > session.last_ms {
        counters.duration_ms = ts_ms - session.last_ms;
        session.last_ms = ts_ms;
    }
    if let Some(page) = page {
        session.pageviews += 1;
        counters.pageviews = 1;
        match session.pageviews {
            1 => {
                counters.bounces = 1;
                counters.entries.add(page, 1);
            }
            2 => counters.bounces = -1,
            _ => {}
        }
        if session.exit.as_deref() != Some(page) {
            if let Some(old) = &session.exit {
                counters.exits.add(old, -1);
            }
            counters.exits.add(page, 1);
            session.exit = Some(page.to_owned());
        }
    }
    Step { session, counters }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::Tally;

    const MIN: i64 = 60_000;

    fn run(events: &[(i64, Option<&str>)]) -> (SessionCounters, UserSession) {
        let mut total = SessionCounters::default();
        let mut session: Option<UserSession> = None;
        for (ts, page) in events {
            let step = advance(session.as_ref(), *ts, *page, 30 * MIN);
            total.merge(&step.counters);
            session = Some(step.session);
        }
        total.exits.truncate(100);
        (total, session.expect("a session"))
    }

    #[test]
    fn one_page_view_is_a_bounce_two_are_not() {
        let (c, _) = run(&[(0, Some("/"))]);
        assert_eq!((c.started, c.bounces, c.duration_ms), (1, 1, 0));
        let (c, s) = run(&[(0, Some("/")), (5 * MIN, Some("/pricing")), (6 * MIN, None)]);
        assert_eq!(
            (c.started, c.bounces, c.pageviews, c.duration_ms),
            (1, 0, 2, 6 * MIN)
        );
        assert_eq!(c.entries.get("/"), 1);
        assert_eq!((c.exits.get("/"), c.exits.get("/pricing")), (0, 1));
        assert_eq!(s.exit.as_deref(), Some("/pricing"));
    }

    #[test]
    fn a_pause_longer_than_the_timeout_starts_a_new_session() {
        let (c, s) = run(&[
            (0, Some("/")),
            (30 * MIN, Some("/a")),
            (61 * MIN, Some("/b")),
        ]);
        assert_eq!((c.started, c.bounces, c.pageviews), (2, 1, 3));
        assert_eq!(s.start_ms, 61 * MIN);
        // An event only without a page view is a session, never a bounce.
        let (c, _) = run(&[(0, None)]);
        assert_eq!((c.started, c.bounces), (1, 0));
    }
}
