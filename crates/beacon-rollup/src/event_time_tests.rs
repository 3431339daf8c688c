//! Session figures against a truth computed from sorted event times: for any
//! arrival order, and wherever commits, owner changes and crashes fall.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use super::{Delta, Granularity, Outcome, PartitionState, RollupSettings, Working};
use beacon_core::event::{Context, Event};

const NOW: i64 = 1_790_000_000_000;
const MIN: i64 = 60_000;
const TIMEOUT: i64 = 30 * MIN;
const PATHS: [&str; 3] = ["/a", "/b", "/c"];

/// One generated event: user, minutes after the start of the window, and the
/// page when it is a page view.
type Spec = (u8, i64, Option<usize>);

fn event(i: usize, &(user, minute, page): &Spec) -> Event {
    let ts = Utc
        .timestamp_millis_opt(NOW - 12 * 60 * MIN + minute * MIN)
        .single()
        .expect("valid");
    Event {
        id: format!("e{i}"),
        site: "shop".into(),
        name: if page.is_some() { "pageview" } else { "click" }.into(),
        user_id: Some(format!("u{user}")),
        anonymous_id: None,
        ts,
        received_at: ts,
        partition: 0,
        props: Default::default(),
        revenue: None,
        context: Context {
            path: page.map(|p| PATHS[p].to_owned()),
            ..Context::default()
        },
    }
}

/// The session figures of one bucket.
#[derive(Debug, Default, PartialEq)]
struct Figures {
    started: i64,
    bounces: i64,
    duration_ms: i64,
    pageviews: i64,
    entries: BTreeMap<String, i64>,
    exits: BTreeMap<String, i64>,
}

/// The truth, independently: each user's events sorted by time, cut where
/// they pause longer than the timeout.
fn truth(events: &[Event]) -> BTreeMap<(Granularity, i64), Figures> {
    let mut users: BTreeMap<&str, Vec<(i64, Option<&str>)>> = BTreeMap::new();
    for e in events {
        let page = (e.name == "pageview").then(|| e.context.path.as_deref().unwrap_or("(none)"));
        users
            .entry(e.user_key())
            .or_default()
            .push((e.ts.timestamp_millis(), page));
    }
    let mut out: BTreeMap<(Granularity, i64), Figures> = BTreeMap::new();
    for (_, mut times) in users {
        times.sort();
        let mut sessions: Vec<Vec<(i64, Option<&str>)>> = Vec::new();
        for t in times {
            match sessions.last_mut() {
                Some(s) if t.0 - s[s.len() - 1].0 <= TIMEOUT => s.push(t),
                _ => sessions.push(vec![t]),
            }
        }
        for s in sessions {
            let (start, end) = (s[0].0, s[s.len() - 1].0);
            let pages: Vec<&str> = s.iter().filter_map(|(_, p)| *p).collect();
            for g in Granularity::ALL {
                let f = out.entry((g, g.bucket_start(start))).or_default();
                f.started += 1;
                f.bounces += i64::from(pages.len() == 1);
                f.duration_ms += end - start;
                f.pageviews += pages.len() as i64;
                if let (Some(first), Some(last)) = (pages.first(), pages.last()) {
                    *f.entries.entry((*first).to_owned()).or_default() += 1;
                    *f.exits.entry((*last).to_owned()).or_default() += 1;
                }
            }
        }
    }
    out
}

/// The session figures the state holds, bucket by bucket.
fn figures(state: &PartitionState) -> BTreeMap<(Granularity, i64), Figures> {
    let map = |b: &super::Bounded| b.iter().map(|(k, v)| (k.to_owned(), v)).collect();
    state
        .cells
        .iter()
        .map(|(k, c)| {
            let s = &c.counters.sessions;
            let f = Figures {
                started: s.started,
                bounces: s.bounces,
                duration_ms: s.duration_ms,
                pageviews: s.pageviews,
                entries: map(&s.entries),
                exits: map(&s.exits),
            };
            ((k.granularity, k.start), f)
        })
        .filter(|(_, f)| *f != Figures::default())
        .collect()
}

/// What happens after an event: nothing, a commit, a commit and a new owner
/// loading the log, or a crash (the pending delta is lost; the new owner reads
/// the events after the committed sequence again).
#[derive(Debug, Clone, Copy)]
enum Step {
    Go,
    Commit,
    Handover,
    Crash,
}

fn commit(w: &mut Working, log: &mut Vec<Delta>) {
    let d = w.take_delta();
    w.committed(&d, NOW);
    log.push(d);
}

fn load(log: &[Delta]) -> PartitionState {
    let mut state = PartitionState::default();
    for d in log {
        state.apply(d);
    }
    state
}

/// Count `events` in order with `steps` between them; the committed state,
/// checked to equal what loading the log gives.
fn run(events: &[Event], steps: &[Step], settings: RollupSettings) -> PartitionState {
    let mut log = Vec::new();
    let mut w = Working::new(PartitionState::default(), settings, NOW);
    let mut crashed = HashSet::new();
    let mut i = 0;
    while i < events.len() {
        w.apply_event(&events[i], i as u64 + 1);
        match steps.get(i).copied().unwrap_or(Step::Go) {
            Step::Go => {}
            Step::Commit => commit(&mut w, &mut log),
            Step::Handover => {
                commit(&mut w, &mut log);
                w = Working::new(load(&log), settings, NOW);
            }
            Step::Crash if crashed.insert(i) => {
                w = Working::new(load(&log), settings, NOW);
                // Resume at the event after the committed sequence (1-based).
                i = w.state.through_seq as usize;
                continue;
            }
            Step::Crash => {}
        }
        i += 1;
    }
    commit(&mut w, &mut log);
    assert_eq!(
        load(&log),
        w.state,
        "loading the log gives the owner's state"
    );
    w.state
}

fn specs() -> impl Strategy<Value = Vec<Spec>> {
    // Four users over ten hours: gaps near the timeout are common, and
    // several events fall on one minute.
    prop::collection::vec(
        (0u8..4, 0i64..600, prop::option::of(0usize..PATHS.len())),
        1..60,
    )
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            6 => Just(Step::Go),
            2 => Just(Step::Commit),
            1 => Just(Step::Handover),
            1 => Just(Step::Crash),
        ],
        60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn sessions_equal_the_truth_in_any_arrival_order(specs in specs()) {
        let events: Vec<Event> = specs.iter().enumerate().map(|(i, s)| event(i, s)).collect();
        let want = truth(&events);
        let shuffled = run(&events, &[], RollupSettings::default());
        prop_assert_eq!(&figures(&shuffled), &want);
        prop_assert_eq!(shuffled.session_late, 0);
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.ts);
        prop_assert_eq!(&figures(&run(&sorted, &[], RollupSettings::default())), &want);
    }

    #[test]
    fn sessions_equal_the_truth_through_commits_handovers_and_crashes(
        specs in specs(),
        steps in steps(),
    ) {
        let events: Vec<Event> = specs.iter().enumerate().map(|(i, s)| event(i, s)).collect();
        let state = run(&events, &steps, RollupSettings::default());
        prop_assert_eq!(figures(&state), truth(&events));
        prop_assert_eq!(state.applied, events.len() as u64);
    }
}

#[test]
fn a_page_view_at_noon_then_one_at_ten_are_two_bounced_sessions() {
    let noon = (0, 12 * 60, Some(1));
    let ten = (0, 10 * 60, Some(0));
    let events = [event(0, &noon), event(1, &ten)];
    let state = run(&events, &[Step::Commit], RollupSettings::default());
    let day = figures(&state)
        .into_iter()
        .find(|((g, _), _)| *g == Granularity::Day)
        .map(|(_, f)| f)
        .expect("a day bucket");
    assert_eq!(
        (day.started, day.bounces, day.duration_ms, day.pageviews),
        (2, 2, 0, 2)
    );
    let both = BTreeMap::from([("/a".to_owned(), 1), ("/b".to_owned(), 1)]);
    assert_eq!((day.entries, day.exits), (both.clone(), both));
}

#[test]
fn events_behind_the_memory_count_everywhere_but_in_sessions() {
    let settings = RollupSettings {
        session_memory: Duration::from_secs(2 * 3600),
        ..RollupSettings::default()
    };
    let mut w = Working::new(PartitionState::default(), settings, NOW);
    let at = |user, minute| event(0, &(user, minute, Some(0)));
    assert_eq!(w.apply_event(&at(0, 600), 1), Outcome::Counted);
    // Three hours behind its user's newest event: too old to place.
    assert_eq!(w.apply_event(&at(0, 420), 2), Outcome::SessionLate);
    // A user with no remembered sessions: placed only if no session of it
    // that was forgotten (up to two hours behind the newest event) could
    // have held it.
    assert_eq!(w.apply_event(&at(1, 600 - 91), 3), Outcome::SessionLate);
    assert_eq!(w.apply_event(&at(1, 600 - 90), 4), Outcome::Counted);
    let d = w.take_delta();
    w.committed(&d, NOW);
    assert_eq!((w.state.applied, w.state.session_late), (4, 2));
    let events: i64 = w
        .state
        .cells
        .iter()
        .filter(|(k, _)| k.granularity == Granularity::Day)
        .map(|(_, c)| c.counters.total_events())
        .sum();
    assert_eq!(events, 4, "late events still count as events");
    let started: i64 = figures(&w.state)
        .iter()
        .filter(|((g, _), _)| *g == Granularity::Day)
        .map(|(_, f)| f.started)
        .sum();
    assert_eq!(started, 2);
}
