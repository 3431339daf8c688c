//! Goals, funnels and retention against a real nats-server: answers equal to
//! a truth computed here from the events the test sent (bots and engagement
//! pings left out, as every figure does), the same over HTTP and NATS; the
//! goals and funnels API with and without a manage key; config goals
//! read-only; clear 400s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use beacon_core::event::{Context, Event, Revenue};
use beacon_core::goal::path_matches;
use beacon_core::{Goal, Site, partition_of};
use beacon_testing::TestServer;
use beacon_testing::truth::publish;
use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::support::*;

const SHOP: &str = "shop";
const APP: &str = "app";
/// A site with no manage keys.
const BARE: &str = "bare";
const READ: &str = "rk_analysis_read_00000";
const MANAGE: &str = "mk_analysis_manage_0000";
const DAY: i64 = 86_400_000;
const WINDOW: i64 = DAY;

fn goal(name: &str, event: Option<&str>, path: Option<&str>, props: &[(&str, &str)]) -> Goal {
    Goal {
        name: name.into(),
        event: event.map(Into::into),
        path: path.map(Into::into),
        props: props
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

fn config_goals() -> Vec<Goal> {
    vec![
        goal("Signup", Some("signup"), None, &[]),
        goal("Pricing", None, Some("/pricing*"), &[]),
        goal("Pro purchase", Some("purchase"), None, &[("plan", "pro")]),
    ]
}

fn analysis_sites() -> Vec<Site> {
    let site = |id: &str, write: &str, manage: Vec<&str>, goals: Vec<Goal>| Site {
        id: id.into(),
        write_keys: vec![write.into()],
        read_keys: vec![READ.into()],
        rate_limit: 0,
        rate_burst: 0,
        domains: vec![],
        keep_bots: false,
        manage_keys: manage.into_iter().map(Into::into).collect(),
        goals,
    };
    vec![
        site(SHOP, "wk_analysis_shop_00000", vec![MANAGE], config_goals()),
        site(APP, "wk_analysis_app_000000", vec![MANAGE], vec![]),
        site(BARE, "wk_analysis_bare_00000", vec![], vec![]),
    ]
}

/// SplitMix64: the same events on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Spec<'a> {
    site: &'a str,
    user: String,
    name: &'a str,
    ts: i64,
    path: Option<&'a str>,
    country: &'a str,
    plan: Option<&'a str>,
    revenue: Option<(&'a str, Decimal)>,
    bot: bool,
}

fn event(id: usize, s: Spec) -> Event {
    let mut props = serde_json::Map::new();
    if let Some(plan) = s.plan {
        props.insert("plan".into(), json!(plan));
    }
    Event {
        id: format!("a{id}"),
        site: s.site.into(),
        name: s.name.into(),
        partition: partition_of(s.site, &s.user, PARTITIONS),
        user_id: Some(s.user),
        anonymous_id: None,
        ts: Utc.timestamp_millis_opt(s.ts).single().expect("time"),
        received_at: Utc::now(),
        props,
        revenue: s.revenue.map(|(currency, amount)| Revenue {
            amount,
            currency: currency.into(),
        }),
        context: Context {
            path: s.path.map(Into::into),
            country: Some(s.country.into()),
            bot: s.bot.then(|| "crawler".into()),
            ..Context::default()
        },
    }
}

/// Midnight UTC twenty days ago: the first day of the data.
fn day0() -> i64 {
    let now = Utc::now().timestamp_millis();
    now - now.rem_euclid(DAY) - 20 * DAY
}

/// The shop's events: sixty users wandering over three days from day 10
/// (pages, signups, purchases with revenue in two currencies, a bot and
/// engagement pings that no figure counts), and hand-made users for the
/// funnel's edge cases.
fn shop_events() -> Vec<Event> {
    let start = day0() + 10 * DAY + 3_600_000;
    let mut rng = Rng(16);
    let mut events = Vec::new();
    let push = |events: &mut Vec<Event>, spec: Spec| {
        let id = events.len();
        events.push(event(id, spec));
    };
    let base = |user: String, name: &'static str, ts: i64| Spec {
        site: SHOP,
        user,
        name,
        ts,
        path: None,
        country: "DE",
        plan: None,
        revenue: None,
        bot: false,
    };
    for u in 0..60 {
        let user = format!("u{u}");
        let country = if u % 3 == 0 { "FR" } else { "DE" };
        let n = 2 + rng.below(8);
        for _ in 0..n {
            let ts = start + rng.below(3 * DAY as u64) as i64;
            let mut spec = base(user.clone(), "pageview", ts);
            spec.country = country;
            match rng.below(10) {
                0..=2 => spec.path = Some(["/", "/docs", "/blog/a"][rng.below(3) as usize]),
                3..=4 => spec.path = Some(["/pricing", "/pricing/team"][rng.below(2) as usize]),
                5..=6 => spec.name = "signup",
                7..=8 => {
                    spec.name = "purchase";
                    spec.plan = Some(["pro", "free"][rng.below(2) as usize]);
                    let cents = Decimal::new(100 + rng.below(9_900) as i64, 2);
                    spec.revenue = Some((["USD", "EUR"][rng.below(2) as usize], cents));
                }
                _ => {
                    spec.name = "engagement";
                    spec.path = Some("/pricing");
                }
            }
            push(&mut events, spec);
        }
    }
    // A bot that would complete every goal and step: never counted.
    for (i, (name, path)) in [
        ("pageview", Some("/pricing")),
        ("signup", None),
        ("purchase", None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut spec = base("bot".into(), name, start + i as i64 * 1000);
        spec.path = path;
        spec.plan = Some("pro");
        spec.bot = true;
        push(&mut events, spec);
    }
    // Out of order (signup before pricing, then purchase), too late (purchase
    // after the window), a skipped step (pricing then purchase), complete.
    let scripts: [(&str, &[(&str, i64)]); 4] = [
        (
            "out-of-order",
            &[("signup", 0), ("pricing", 60_000), ("purchase", 120_000)],
        ),
        (
            "too-late",
            &[("pricing", 0), ("signup", 60_000), ("purchase", DAY + 1)],
        ),
        ("skipper", &[("pricing", 0), ("purchase", 60_000)]),
        (
            "complete",
            &[("pricing", 0), ("signup", 30_000), ("purchase", 90_000)],
        ),
    ];
    for (user, steps) in scripts {
        for (what, at) in steps {
            let mut spec = base(user.into(), "pageview", start + at);
            match *what {
                "pricing" => spec.path = Some("/pricing"),
                name => {
                    spec.name = if name == "signup" {
                        "signup"
                    } else {
                        "purchase"
                    };
                    if name == "purchase" {
                        spec.plan = Some("pro");
                        spec.revenue = Some(("USD", Decimal::new(1000, 2)));
                    }
                }
            }
            push(&mut events, spec);
        }
    }
    events
}

/// The app's events for retention: forty users, each first seen on one of
/// days 0–9, then active on later days at random; some sign up and buy.
fn app_events() -> Vec<Event> {
    let mut rng = Rng(7);
    let mut events = Vec::new();
    for u in 0..40 {
        let user = format!("r{u}");
        let first = u as i64 % 10;
        for day in first..20 {
            let active = day == first || rng.below(10) < 4;
            if !active {
                continue;
            }
            let ts = day0() + day * DAY + rng.below(DAY as u64 - 10) as i64;
            let name = match rng.below(10) {
                0..=1 => "signup",
                2..=3 => "purchase",
                _ => "open",
            };
            let spec = Spec {
                site: APP,
                user: user.clone(),
                name,
                ts,
                path: None,
                country: "DE",
                plan: None,
                revenue: None,
                bot: false,
            };
            let id = 100_000 + events.len();
            events.push(event(id, spec));
        }
    }
    events
}

fn counted(e: &Event) -> bool {
    e.context.bot.is_none() && e.name != "engagement"
}

fn completes(goal: &Goal, e: &Event) -> bool {
    let target = match (&goal.event, &goal.path) {
        (Some(name), _) => e.name == *name,
        (_, Some(pattern)) => {
            e.name == "pageview"
                && e.context
                    .path
                    .as_deref()
                    .is_some_and(|p| path_matches(pattern, p))
        }
        _ => false,
    };
    target
        && goal
            .props
            .iter()
            .all(|(k, v)| e.props.get(k).and_then(Value::as_str) == Some(v.as_str()))
}

fn pct(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 10_000.0 / whole as f64).round() / 100.0
    }
}

/// The goals report's figures, from the events.
fn goals_truth(events: &[Event], goals: &[Goal], country: Option<&str>) -> Value {
    let selected: Vec<&Event> = events
        .iter()
        .filter(|e| counted(e) && country.is_none_or(|c| e.context.country.as_deref() == Some(c)))
        .collect();
    let users: BTreeSet<&str> = selected.iter().map(|e| e.user_key()).collect();
    let list: Vec<Value> = goals
        .iter()
        .map(|g| {
            let hits: Vec<&&Event> = selected.iter().filter(|e| completes(g, e)).collect();
            let converting: BTreeSet<&str> = hits.iter().map(|e| e.user_key()).collect();
            let mut revenue: BTreeMap<String, Decimal> = BTreeMap::new();
            for e in &hits {
                if let Some(r) = &e.revenue {
                    *revenue.entry(r.currency.clone()).or_default() += r.amount;
                }
            }
            let revenue: serde_json::Map<String, Value> = revenue
                .into_iter()
                .map(|(c, a)| (c, json!(a.normalize().to_string())))
                .collect();
            json!({
                "name": g.name,
                "conversions": hits.len(),
                "converting_users": converting.len(),
                "conversion_rate": pct(converting.len(), users.len()),
                "revenue": revenue,
            })
        })
        .collect();
    json!({"users": users.len(), "goals": list})
}

/// Per step: users reaching it and the median ms from the step before.
fn funnel_truth(
    events: &[Event],
    steps: &[&dyn Fn(&Event) -> bool],
    window: i64,
) -> Vec<(usize, Option<f64>)> {
    let mut by_user: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| counted(e)) {
        by_user.entry(e.user_key()).or_default().push(e);
    }
    let mut reached = vec![0usize; steps.len()];
    let mut gaps: Vec<Vec<f64>> = vec![Vec::new(); steps.len()];
    for list in by_user.values() {
        let ms = |e: &Event| e.ts.timestamp_millis();
        let Some(start) = list.iter().filter(|e| steps[0](e)).map(|e| ms(e)).min() else {
            continue;
        };
        reached[0] += 1;
        let mut previous = start;
        for (k, step) in steps.iter().enumerate().skip(1) {
            let next = list
                .iter()
                .filter(|e| step(e) && ms(e) > previous && ms(e) <= start + window)
                .map(|e| ms(e))
                .min();
            let Some(t) = next else { break };
            reached[k] += 1;
            gaps[k].push((t - previous) as f64);
            previous = t;
        }
    }
    reached
        .into_iter()
        .zip(gaps)
        .map(|(n, mut g)| {
            g.sort_by(f64::total_cmp);
            let median = match g.len() {
                0 => None,
                n if n % 2 == 1 => Some(g[n / 2]),
                n => Some((g[n / 2 - 1] + g[n / 2]) / 2.0),
            };
            (n, median)
        })
        .collect()
}

/// A retention table from the events: `(cohort start ms, users, returned)`.
fn retention_truth(
    events: &[Event],
    from: i64,
    to: i64,
    period_ms: i64,
    offset: i64,
    max_k: i64,
    (cohort_event, return_event): (Option<&str>, Option<&str>),
) -> Vec<(i64, i64, Vec<i64>)> {
    let index = |ms: i64| (ms + offset).div_euclid(period_ms);
    let mut first: BTreeMap<&str, i64> = BTreeMap::new();
    for e in events.iter().filter(|e| counted(e)) {
        if cohort_event.is_some_and(|n| e.name != n) {
            continue;
        }
        let t = e.ts.timestamp_millis();
        let entry = first.entry(e.user_key()).or_insert(t);
        *entry = (*entry).min(t);
    }
    let mut active: BTreeSet<(&str, i64)> = BTreeSet::new();
    for e in events.iter().filter(|e| counted(e)) {
        let t = e.ts.timestamp_millis();
        if t >= from && t < to && return_event.is_none_or(|n| e.name == n) {
            active.insert((e.user_key(), index(t)));
        }
    }
    let (first_c, last_c) = (index(from), index(to - 1));
    (first_c..=last_c)
        .map(|c| {
            let members: Vec<&str> = first
                .iter()
                .filter(|(_, t)| **t >= from && **t < to && index(**t) == c)
                .map(|(u, _)| *u)
                .collect();
            let shown = (last_c - c).min(max_k);
            let returned: Vec<i64> = (0..=shown)
                .map(|k| match k {
                    0 => members.len() as i64,
                    k => members
                        .iter()
                        .filter(|u| active.contains(&(**u, c + k)))
                        .count() as i64,
                })
                .collect();
            (c * period_ms - offset, members.len() as i64, returned)
        })
        .collect()
}

struct World {
    _nats: TestServer,
    client: async_nats::Client,
    node: Node,
    shop: Vec<Event>,
    app: Vec<Event>,
}

impl Node {
    /// GET `path` with query parameters and `key`: status and JSON body.
    async fn query(&self, path: &str, params: &[(&str, &str)], key: Option<&str>) -> (u16, Value) {
        let query = serde_urlencoded::to_string(params).expect("query");
        let mut request = self.http.get(format!("http://{}{path}?{query}", self.addr));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// A request with a JSON body (PUT, DELETE): status and JSON body.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("http://{}{path}", self.addr));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// Wait (bounded) until the store holds `n` events of `site`.
    async fn holds(&self, site: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let response = self
                .http
                .post(format!("http://{}/api/v1/sites/{site}/sql", self.addr))
                .bearer_auth(READ)
                .json(&json!({"sql": "SELECT count(*) AS n FROM events"}))
                .send()
                .await
                .expect("request");
            let body: Value = response.json().await.expect("JSON body");
            if body["rows"][0]["n"].as_u64() == Some(n as u64) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store never held {n} events of {site}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn world() -> World {
    let nats = TestServer::start().await;
    let (client, js) = nats.provisioned(PARTITIONS).await;
    let (shop, app) = (shop_events(), app_events());
    publish(&js, &shop).await;
    publish(&js, &app).await;
    let node = node_of(&client, &analysis_sites()).await;
    node.holds(SHOP, shop.len()).await;
    node.holds(APP, app.len()).await;
    World {
        _nats: nats,
        client,
        node,
        shop,
        app,
    }
}

fn shop_range() -> (String, String) {
    let from = day0() + 10 * DAY;
    let to = from + 5 * DAY;
    (rfc(from), rfc(to))
}

fn rfc(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The report's goals without what the truth does not compute.
fn figures(answer: &Value) -> Value {
    let goals: Vec<Value> = answer["goals"]
        .as_array()
        .expect("goals")
        .iter()
        .map(|g| {
            json!({
                "name": g["name"],
                "conversions": g["conversions"],
                "converting_users": g["converting_users"],
                "conversion_rate": g["conversion_rate"],
                "revenue": g["revenue"],
            })
        })
        .collect();
    json!({"users": answer["users"], "goals": goals})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goals_report_conversions_users_rates_and_revenue_equal_the_truth() {
    let w = world().await;
    let (from, to) = shop_range();
    let path = format!("/api/v1/sites/{SHOP}/goals/report");
    let (status, answer) = w
        .node
        .query(&path, &[("from", &from), ("to", &to)], Some(READ))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        figures(&answer),
        goals_truth(&w.shop, &config_goals(), None)
    );
    assert_eq!(answer["source"], "store");
    assert_eq!(answer["range"], json!({"from": from, "to": to}));
    assert!(answer["fresh_through"].is_string(), "{answer}");
    assert_eq!(answer["goals"][1]["source"], "config");
    // Every goal converts someone, and not everyone: the rates mean something.
    for g in answer["goals"].as_array().expect("goals") {
        let rate = g["conversion_rate"].as_f64().expect("rate");
        assert!(rate > 0.0 && rate < 100.0, "{g}");
    }

    // Goal filters choose the goals; the others select the events.
    let filters = "goal==Signup|Pro purchase;country==FR";
    let (status, filtered) = w
        .node
        .query(
            &path,
            &[("from", &from), ("to", &to), ("filters", filters)],
            Some(READ),
        )
        .await;
    assert_eq!(status, 200, "{filtered}");
    let chosen = [config_goals()[0].clone(), config_goals()[2].clone()];
    assert_eq!(
        figures(&filtered),
        goals_truth(&w.shop, &chosen, Some("FR"))
    );

    // Compared with the same range, the figures repeat; with the period
    // before (no events then), they are zero.
    let (status, same) = w
        .node
        .query(
            &path,
            &[
                ("from", &from),
                ("to", &to),
                ("compare", "custom"),
                ("compare_from", &from),
                ("compare_to", &to),
            ],
            Some(READ),
        )
        .await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(figures(&same["comparison"]), figures(&answer));
    let (_, before) = w
        .node
        .query(
            &path,
            &[("from", &from), ("to", &to), ("compare", "previous_period")],
            Some(READ),
        )
        .await;
    assert_eq!(before["comparison"]["users"], 0, "{before}");
    assert_eq!(before["comparison"]["range"]["to"], json!(from));

    // The same over NATS.
    let nats = ask_nats(
        &w.client,
        "goals",
        json!({"key": READ, "site": SHOP, "params": {"from": from, "to": to}}),
    )
    .await
    .expect("NATS answer");
    assert_eq!(figures(&nats), figures(&answer));

    // A goal filter works on the other operations too (from the store).
    let (status, summary) = w
        .node
        .query(
            &format!("/api/v1/sites/{SHOP}/summary"),
            &[
                ("from", &from),
                ("to", &to),
                ("filters", "goal==Pro purchase"),
                ("metrics", "events,users"),
            ],
            Some(READ),
        )
        .await;
    assert_eq!(status, 200, "{summary}");
    let pro = &goals_truth(&w.shop, &[config_goals()[2].clone()], None)["goals"][0];
    assert_eq!(
        summary["metrics"]["events"]["value"], pro["conversions"],
        "{summary}"
    );
    assert_eq!(
        summary["metrics"]["users"]["value"], pro["converting_users"],
        "{summary}"
    );

    // Dates are read in `tz`: a day in Berlin starts before UTC's.
    let date = rfc(day0() + 10 * DAY)[..10].to_owned();
    let (status, berlin) = w
        .node
        .query(
            &path,
            &[("from", &date), ("to", &date), ("tz", "Europe/Berlin")],
            Some(READ),
        )
        .await;
    assert_eq!(status, 200, "{berlin}");
    let midnight = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d")
        .expect("date")
        .and_hms_opt(0, 0, 0)
        .expect("midnight");
    let local = chrono::TimeZone::from_local_datetime(&chrono_tz::Europe::Berlin, &midnight)
        .single()
        .expect("one midnight");
    assert_eq!(
        berlin["range"]["from"],
        json!(rfc(local.timestamp_millis()))
    );

    // An unknown goal in a filter is a 400 naming it.
    let (status, body) = w
        .node
        .query(&path, &[("filters", "goal==Nope")], Some(READ))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("unknown goal \"Nope\""),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_step_funnel_with_a_window_equals_the_truth() {
    let w = world().await;
    let (from, to) = shop_range();
    let steps = "path:/pricing*;event:signup;goal:Pro purchase";
    let path = format!("/api/v1/sites/{SHOP}/funnel");
    let (status, answer) = w
        .node
        .query(
            &path,
            &[
                ("from", &from),
                ("to", &to),
                ("steps", steps),
                ("window", "1d"),
            ],
            Some(READ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let pricing = |e: &Event| {
        e.name == "pageview"
            && e.context
                .path
                .as_deref()
                .is_some_and(|p| p.starts_with("/pricing"))
    };
    let signup = |e: &Event| e.name == "signup";
    let pro = |e: &Event| {
        e.name == "purchase" && e.props.get("plan").and_then(Value::as_str) == Some("pro")
    };
    let truth = funnel_truth(&w.shop, &[&pricing, &signup, &pro], WINDOW);
    let got = answer["steps"].as_array().expect("steps");
    assert_eq!(got.len(), 3);
    let start = truth[0].0;
    for (k, (step, (users, median))) in got.iter().zip(&truth).enumerate() {
        assert_eq!(step["users"], json!(users), "step {k}: {answer}");
        let from_start = pct(*users, start);
        assert_eq!(step["conversion_from_start"], json!(from_start), "step {k}");
        if k > 0 {
            let previous = truth[k - 1].0;
            assert_eq!(
                step["conversion_from_previous"],
                json!(pct(*users, previous))
            );
            let seconds = median.map(|ms| (ms).round() / 1000.0);
            assert_eq!(
                step["median_seconds_from_previous"],
                json!(seconds),
                "step {k}"
            );
        } else {
            assert_eq!(step["median_seconds_from_previous"], Value::Null);
        }
    }
    assert_eq!(got[0]["step"], "path:/pricing*");
    assert_eq!(got[2]["step"], "goal:Pro purchase");
    // The data is not degenerate: each step loses users and some finish.
    assert!(
        truth[0].0 > truth[1].0 && truth[1].0 > truth[2].0 && truth[2].0 > 0,
        "{truth:?}"
    );
    assert_eq!(answer["source"], "store");
    assert_eq!(answer["range"], json!({"from": from, "to": to}));

    // The hand-made users: only the complete one finishes among them.
    let hand: Vec<Event> = w
        .shop
        .iter()
        .filter(|e| ["out-of-order", "too-late", "skipper", "complete"].contains(&e.user_key()))
        .cloned()
        .collect();
    let hand_truth = funnel_truth(&hand, &[&pricing, &signup, &pro], WINDOW);
    assert_eq!(
        hand_truth.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [4, 2, 1]
    );

    // A wider window lets the late purchase in: the answer moves with it.
    let (_, wide) = w
        .node
        .query(
            &path,
            &[
                ("from", &from),
                ("to", &to),
                ("steps", steps),
                ("window", "7d"),
            ],
            Some(READ),
        )
        .await;
    let wide_truth = funnel_truth(&w.shop, &[&pricing, &signup, &pro], 7 * DAY);
    assert_eq!(wide["steps"][2]["users"], json!(wide_truth[2].0));

    // Filters select the events the funnel is made of.
    let (_, fr) = w
        .node
        .query(
            &path,
            &[
                ("from", &from),
                ("to", &to),
                ("steps", steps),
                ("filters", "country==FR"),
            ],
            Some(READ),
        )
        .await;
    let fr_events: Vec<Event> = w
        .shop
        .iter()
        .filter(|e| e.context.country.as_deref() == Some("FR"))
        .cloned()
        .collect();
    let fr_truth = funnel_truth(&fr_events, &[&pricing, &signup, &pro], WINDOW);
    for (k, (users, _)) in fr_truth.iter().enumerate() {
        assert_eq!(fr["steps"][k]["users"], json!(users), "FR step {k}: {fr}");
    }

    // The same over NATS, steps and all.
    let nats = ask_nats(
        &w.client,
        "funnel",
        json!({"key": READ, "site": SHOP,
               "params": {"from": from, "to": to, "steps": steps, "window": "1d"}}),
    )
    .await
    .expect("NATS answer");
    assert_eq!(nats["steps"], answer["steps"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_tables_by_day_and_by_week_equal_the_truth() {
    let w = world().await;
    let path = format!("/api/v1/sites/{APP}/retention");
    // Cohorts of days 2 to 11 (users first seen on days 0 and 1 are in none).
    let (from, to) = (day0() + 2 * DAY, day0() + 12 * DAY);
    let (status, daily) = w
        .node
        .query(
            &path,
            &[("from", &rfc(from)), ("to", &rfc(to)), ("period", "day")],
            Some(READ),
        )
        .await;
    assert_eq!(status, 200, "{daily}");
    let truth = retention_truth(&w.app, from, to, DAY, 0, 31, (None, None));
    check_table(&daily, &truth);
    assert_eq!(daily["range"], json!({"from": rfc(from), "to": rfc(to)}));
    assert!(
        truth
            .iter()
            .any(|(_, _, r)| r.len() > 2 && r[1] > 0 && r[1] < r[0]),
        "{truth:?}"
    );

    // Weeks (from Monday), with a cohort event and a return event; the range
    // is widened to whole weeks.
    let week = 7 * DAY;
    let offset = 3 * DAY;
    let monday = |ms: i64| (ms + offset).div_euclid(week) * week - offset;
    let to = monday(day0() + 20 * DAY - 1) + week;
    let (status, weekly) = w
        .node
        .query(
            &path,
            &[
                ("from", &rfc(day0() + DAY)),
                ("to", &rfc(day0() + 20 * DAY)),
                ("period", "week"),
                ("cohort_event", "signup"),
                ("return_event", "purchase"),
            ],
            Some(READ),
        )
        .await;
    assert_eq!(status, 200, "{weekly}");
    let widened_from = monday(day0() + DAY);
    assert_eq!(
        weekly["range"],
        json!({"from": rfc(widened_from), "to": rfc(to)})
    );
    let truth = retention_truth(
        &w.app,
        widened_from,
        to,
        week,
        offset,
        12,
        (Some("signup"), Some("purchase")),
    );
    check_table(&weekly, &truth);
    assert!(truth.iter().map(|(_, n, _)| n).sum::<i64>() > 0);

    let nats = ask_nats(
        &w.client,
        "retention",
        json!({"key": READ, "site": APP, "params": {
            "from": rfc(day0() + 2 * DAY), "to": rfc(day0() + 12 * DAY), "period": "day"}}),
    )
    .await
    .expect("NATS answer");
    assert_eq!(nats["cohorts"], daily["cohorts"]);
}

fn check_table(answer: &Value, truth: &[(i64, i64, Vec<i64>)]) {
    let cohorts = answer["cohorts"].as_array().expect("cohorts");
    assert_eq!(cohorts.len(), truth.len(), "{answer}");
    for (got, (start, users, returned)) in cohorts.iter().zip(truth) {
        assert_eq!(got["cohort"], json!(rfc(*start)[..10]), "{answer}");
        assert_eq!(got["users"], json!(users), "{got}");
        assert_eq!(got["returned"], json!(returned), "{got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goals_and_funnels_change_only_with_a_manage_key_and_config_goals_stay() {
    let w = world().await;
    let n = &w.node;
    let goals = format!("/api/v1/sites/{SHOP}/goals");
    let docs = json!({"path": "/docs"});
    use reqwest::Method;

    // Listing takes a read key and shows the config's goals as such.
    let (status, list) = n.query(&goals, &[], Some(READ)).await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["goals"]
        .as_array()
        .expect("goals")
        .iter()
        .map(|g| g["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["Signup", "Pricing", "Pro purchase"]);
    assert!(
        list["goals"]
            .as_array()
            .expect("goals")
            .iter()
            .all(|g| g["source"] == "config")
    );

    // Changes: 401 without a key, 403 with a read key, 403 saying how on a
    // site without manage keys; then made with the manage key.
    let one = format!("{goals}/Docs");
    let (status, _) = n.send(Method::PUT, &one, Some(docs.clone()), None).await;
    assert_eq!(status, 401);
    let (status, body) = n
        .send(Method::PUT, &one, Some(docs.clone()), Some(READ))
        .await;
    assert_eq!(status, 403, "{body}");
    let bare = format!("/api/v1/sites/{BARE}/goals/Docs");
    let (status, body) = n
        .send(Method::PUT, &bare, Some(docs.clone()), Some(READ))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("manage_keys"),
        "{body}"
    );
    let (status, body) = n
        .send(Method::PUT, &one, Some(docs.clone()), Some(MANAGE))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = n
        .send(Method::PUT, &one, Some(docs.clone()), Some(MANAGE))
        .await;
    assert_eq!(status, 200, "a second PUT replaces");
    let (status, body) = n.query(&one, &[], Some(READ)).await;
    assert_eq!(
        (status, &body["goal"]["source"]),
        (200, &json!("api")),
        "{body}"
    );

    // Config goals are read-only; bad goals are 400s that say why.
    let signup = format!("{goals}/Signup");
    let (status, _) = n
        .send(
            Method::PUT,
            &signup,
            Some(json!({"event": "x"})),
            Some(MANAGE),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = n.send(Method::DELETE, &signup, None, Some(MANAGE)).await;
    assert_eq!(status, 409);
    let (status, body) = n
        .send(
            Method::PUT,
            &format!("{goals}/Both"),
            Some(json!({"event": "a", "path": "/a"})),
            Some(MANAGE),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("exactly one"),
        "{body}"
    );

    // The API's goal is in the report, counted like the others.
    let (from, to) = shop_range();
    let (_, report) = n
        .query(
            &format!("{goals}/report"),
            &[("from", &from), ("to", &to), ("filters", "goal==Docs")],
            Some(READ),
        )
        .await;
    let api_goal = goal("Docs", None, Some("/docs"), &[]);
    assert_eq!(figures(&report), goals_truth(&w.shop, &[api_goal], None));
    assert_eq!(report["goals"][0]["source"], "api");

    // Deleted once; the second time there is nothing to delete.
    let (status, _) = n.send(Method::DELETE, &one, None, Some(READ)).await;
    assert_eq!(status, 403);
    let (status, _) = n.send(Method::DELETE, &one, None, Some(MANAGE)).await;
    assert_eq!(status, 200);
    let (status, _) = n.send(Method::DELETE, &one, None, Some(MANAGE)).await;
    assert_eq!(status, 404);

    // A saved funnel answers as its steps do.
    let steps = ["path:/pricing*", "event:signup", "goal:Pro purchase"];
    let saved = format!("/api/v1/sites/{SHOP}/funnels/checkout");
    let body = json!({"steps": steps, "window": "1d"});
    let (status, _) = n
        .send(Method::PUT, &saved, Some(body.clone()), Some(READ))
        .await;
    assert_eq!(status, 403);
    let (status, put) = n.send(Method::PUT, &saved, Some(body), Some(MANAGE)).await;
    assert_eq!(status, 201, "{put}");
    let (status, listed) = n
        .query(&format!("/api/v1/sites/{SHOP}/funnels"), &[], Some(READ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["funnels"][0]["name"], "checkout");
    let funnel = format!("/api/v1/sites/{SHOP}/funnel");
    let range = [("from", from.as_str()), ("to", to.as_str())];
    let (_, by_name) = n
        .query(
            &funnel,
            &[range[0], range[1], ("funnel", "checkout")],
            Some(READ),
        )
        .await;
    let joined = steps.join(";");
    let (_, by_steps) = n
        .query(
            &funnel,
            &[range[0], range[1], ("steps", &joined)],
            Some(READ),
        )
        .await;
    assert_eq!(by_name["steps"], by_steps["steps"], "{by_name}");
    let (status, _) = n
        .send(
            Method::PUT,
            &saved,
            Some(json!({"steps": ["event:a"]})),
            Some(MANAGE),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = n.send(Method::DELETE, &saved, None, Some(MANAGE)).await;
    assert_eq!(status, 200);
}

/// A path, its query parameters, and what the 400's message says.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_steps_windows_periods_and_names_are_clear_400s() {
    let w = world().await;
    let funnel = format!("/api/v1/sites/{SHOP}/funnel");
    let retention = format!("/api/v1/sites/{APP}/retention");
    let cases: Vec<Case> = vec![
        (&funnel, vec![], "steps is required"),
        (&funnel, vec![("steps", "event:a")], "2 to 8 steps"),
        (&funnel, vec![("steps", "event:a;click:b")], "unknown kind"),
        (&funnel, vec![("steps", "event:a;event:")], "names nothing"),
        (
            &funnel,
            vec![("steps", "event:a;goal:Nope")],
            "unknown goal \"Nope\"",
        ),
        (
            &funnel,
            vec![("steps", "event:a;event:b"), ("window", "1w")],
            "window: ",
        ),
        (
            &funnel,
            vec![("steps", "event:a;event:b"), ("window", "0m")],
            "window: ",
        ),
        (
            &funnel,
            vec![("funnel", "nope")],
            "no saved funnel \"nope\"",
        ),
        (
            &funnel,
            vec![("steps", "event:a;event:b"), ("period", "day")],
            "period",
        ),
        (&retention, vec![("period", "month")], "period: \"month\""),
        (&retention, vec![("periods", "0")], "periods: 0"),
        (&retention, vec![("cohort_event", "")], "cohort_event"),
        (
            &retention,
            vec![("filters", "colour==red")],
            "unknown dimension",
        ),
    ];
    for (path, params, says) in cases {
        let (status, body) = w.node.query(path, &params, Some(READ)).await;
        assert_eq!(status, 400, "{path} {params:?}: {body}");
        let error = body["error"].as_str().expect("error");
        assert!(error.contains(says), "{path} {params:?}: {error}");
    }
    // Over NATS the same message, with the status as the error code.
    let err = ask_nats(
        &w.client,
        "funnel",
        json!({"key": READ, "site": SHOP, "params": {"steps": "event:a"}}),
    )
    .await
    .expect_err("400");
    assert_eq!(err.0, "400");
    assert!(err.1.contains("2 to 8 steps"), "{err:?}");
}
