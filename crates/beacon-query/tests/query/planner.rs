//! The planner against a real nats-server: every metric under single,
//! double, OR, negated, contains, regex and property filters equals a truth
//! computed here from the generated events; property breakdowns and the
//! `properties` operation; the rollups and the event store give the same
//! answers where both can; comparisons; a bad filter is a 400 over HTTP and
//! NATS alike.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use beacon_core::event::Event;
use beacon_testing::truth::{Shape, generate};
use chrono::{SecondsFormat, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::support::*;

const TIMEOUT_MS: i64 = 30 * 60_000;

/// Events over three days with a `plan` property on a third of them.
fn events() -> Vec<Event> {
    let mut events = generate(Shape {
        seed: 16,
        sites: 2,
        users: 300,
        events: 6_000,
        days: 3,
        end_ms: end_ms(),
        partitions: PARTITIONS,
    });
    for (i, e) in events.iter_mut().enumerate() {
        if i % 3 == 0 {
            let plan = if i % 2 == 0 { "pro" } else { "free" };
            e.props.insert("plan".into(), json!(plan));
        }
        if i % 7 == 0 {
            e.props.insert("ab:test".into(), json!(1));
        }
    }
    events
}

/// The figures of a range under a predicate, computed from the events.
#[derive(Debug, Default, PartialEq)]
struct Truth {
    events: i64,
    pageviews: i64,
    users: i64,
    sessions: i64,
    bounces: i64,
    duration_ms: i64,
    revenue: BTreeMap<String, Decimal>,
}

fn truth(all: &[Event], site: &str, from: i64, to: i64, pick: &dyn Fn(&Event) -> bool) -> Truth {
    let mine: Vec<&Event> = all
        .iter()
        .filter(|e| e.site == site)
        .filter(|e| (from..to).contains(&e.ts.timestamp_millis()))
        .collect();
    let mut t = Truth::default();
    let mut users = BTreeSet::new();
    for e in mine.iter().filter(|e| pick(e)) {
        t.events += 1;
        t.pageviews += i64::from(e.name == "pageview");
        users.insert(e.user_key());
        if let Some(r) = &e.revenue {
            *t.revenue.entry(r.currency.clone()).or_default() += r.amount;
        }
    }
    t.users = users.len() as i64;
    let mut by_user: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in &mine {
        by_user.entry(e.user_key()).or_default().push(e);
    }
    for (_, mut list) in by_user {
        list.sort_by_key(|e| e.ts);
        let mut sessions: Vec<Vec<&Event>> = Vec::new();
        for e in list {
            match sessions.last_mut() {
                Some(s)
                    if e.ts.timestamp_millis() - s[s.len() - 1].ts.timestamp_millis()
                        <= TIMEOUT_MS =>
                {
                    s.push(e)
                }
                _ => sessions.push(vec![e]),
            }
        }
        for s in sessions.iter().filter(|s| s.iter().any(|e| pick(e))) {
            t.sessions += 1;
            let pages = s.iter().filter(|e| e.name == "pageview").count();
            t.bounces += i64::from(pages == 1);
            t.duration_ms += s[s.len() - 1].ts.timestamp_millis() - s[0].ts.timestamp_millis();
        }
    }
    t
}

fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .expect("time")
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn rate(x: i64, of: i64) -> Value {
    if of == 0 {
        Value::Null
    } else {
        json!(((x as f64 / of as f64) * 10_000.0).round() / 10_000.0)
    }
}

fn assert_figures(answer: &Value, want: &Truth, what: &str) {
    let m = &answer["metrics"];
    let get = |name: &str| m[name]["value"].clone();
    assert_eq!(get("events"), json!(want.events), "{what}: events");
    assert_eq!(get("pageviews"), json!(want.pageviews), "{what}: pageviews");
    assert_eq!(get("users"), json!(want.users), "{what}: users");
    assert_eq!(get("visitors"), json!(want.users), "{what}: visitors");
    assert_eq!(get("sessions"), json!(want.sessions), "{what}: sessions");
    assert_eq!(
        get("bounce_rate"),
        rate(want.bounces, want.sessions),
        "{what}: bounce_rate"
    );
    let duration = if want.sessions == 0 {
        Value::Null
    } else {
        json!(((want.duration_ms as f64 / 1000.0 / want.sessions as f64) * 1000.0).round() / 1000.0)
    };
    assert_eq!(
        get("avg_session_duration"),
        duration,
        "{what}: avg_session_duration"
    );
    let revenue: BTreeMap<String, Decimal> = get("revenue")
        .as_object()
        .expect("revenue")
        .iter()
        .map(|(c, v)| {
            (
                c.clone(),
                v.as_str().expect("decimal text").parse().expect("decimal"),
            )
        })
        .collect();
    assert_eq!(revenue, want.revenue, "{what}: revenue");
}

/// A node whose rollups and event store both hold every event.
async fn ready() -> (Setup, Node, Vec<Event>) {
    let s = setup_with(events()).await;
    let node = node(&s.client).await;
    node.ready().await;
    s.committed().await;
    let n = s.events.iter().filter(|e| e.site == "site-0").count();
    node.until(
        "/api/v1/sites/site-0/summary?metrics=events&from=-10d",
        |b| b["metrics"]["events"]["value"] == json!(n),
    )
    .await;
    // The store follows the stream on its own, and may still be behind the
    // rollups: a filter every event passes makes the store answer.
    node.until(
        "/api/v1/sites/site-0/summary?metrics=events&from=-10d&filters=name~%3D.",
        |b| b["source"] == "store" && b["metrics"]["events"]["value"] == json!(n),
    )
    .await;
    let events = s.events.clone();
    (s, node, events)
}

const ALL_METRICS: &str =
    "events,pageviews,users,visitors,sessions,bounce_rate,avg_session_duration,revenue";

#[tokio::test]
async fn every_metric_under_every_kind_of_filter_equals_the_truth() {
    let (_s, node, all) = ready().await;
    let end = end_ms();
    let (from, to) = (end - 2 * 86_400_000 + 123_456, end - 3_600_000 + 7_000);
    type Pick = Box<dyn Fn(&Event) -> bool>;
    let prop = |e: &Event, k: &str| e.props.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let country = |e: &Event| e.context.country.clone().unwrap_or_else(|| "(none)".into());
    let cases: Vec<(&str, Pick)> = vec![
        ("country==DE", Box::new(move |e| country(e) == "DE")),
        (
            "country==DE;browser==Safari",
            Box::new(move |e| country(e) == "DE" && e.context.browser.as_deref() == Some("Safari")),
        ),
        (
            "country==DE|US",
            Box::new(move |e| ["DE", "US"].contains(&country(e).as_str())),
        ),
        ("country!=DE", Box::new(move |e| country(e) != "DE")),
        (
            "path*=PAGE/1",
            Box::new(|e| {
                e.context
                    .path
                    .as_deref()
                    .is_some_and(|p| p.contains("page/1"))
            }),
        ),
        (
            "path~=^/page/[0-3]$",
            Box::new(|e| {
                e.context
                    .path
                    .as_deref()
                    .is_some_and(|p| ["/page/0", "/page/1", "/page/2", "/page/3"].contains(&p))
            }),
        ),
        (
            "props.plan==pro",
            Box::new(move |e| prop(e, "plan").as_deref() == Some("pro")),
        ),
        (
            "name==purchase;props.plan!=free",
            Box::new(move |e| e.name == "purchase" && prop(e, "plan").as_deref() != Some("free")),
        ),
    ];
    for (filters, pick) in cases {
        let want = truth(&all, "site-0", from, to, &pick);
        assert!(want.events > 0, "{filters}: the data must select something");
        let q = format!(
            "/api/v1/sites/site-0/summary?metrics={ALL_METRICS}&from={}&to={}&filters={}",
            rfc3339(from),
            rfc3339(to),
            urlencode(filters)
        );
        let answer = node.ok(&q).await;
        assert_eq!(answer["source"], "store", "{filters}");
        assert_eq!(
            answer["range"],
            json!({"from": rfc3339(from).replace(".000Z", "Z"), "to": rfc3339(to).replace(".000Z", "Z")}),
            "{filters}: {answer}"
        );
        assert_figures(&answer, &want, filters);
        // The previous period of the same length, also from the events.
        let before = truth(&all, "site-0", 2 * from - to, from, &pick);
        assert_eq!(
            answer["metrics"]["events"]["previous"],
            json!(before.events),
            "{filters}: previous"
        );
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn properties_and_property_breakdowns_equal_the_truth() {
    let (s, node, all) = ready().await;
    let end = end_ms();
    let (from, to) = (end - 3 * 86_400_000 - 3_600_000, end + 1);
    let mine: Vec<&Event> = all
        .iter()
        .filter(|e| e.site == "site-0" && (from..to).contains(&e.ts.timestamp_millis()))
        .collect();
    let range = format!("from={}&to={}", rfc3339(from), rfc3339(to));
    // The breakdown by a property: (none) for events without it.
    let b = node
        .ok(&format!(
            "/api/v1/sites/site-0/breakdown?dimension=props.plan&metrics=users,events&{range}"
        ))
        .await;
    assert_eq!(b["source"], "store");
    assert_eq!(b["metric"], "users");
    assert_eq!(b["total_rows"], 3, "{b}");
    for row in b["rows"].as_array().expect("rows") {
        let value = row["value"].as_str().expect("value");
        let picked: Vec<&&Event> = mine
            .iter()
            .filter(|e| {
                e.props
                    .get("plan")
                    .and_then(|v| v.as_str())
                    .unwrap_or("(none)")
                    == value
            })
            .collect();
        let users: BTreeSet<&str> = picked.iter().map(|e| e.user_key()).collect();
        assert_eq!(row["events"], json!(picked.len()), "{value}");
        assert_eq!(row["users"], json!(users.len()), "{value}");
    }
    // Ranked by users, the default.
    let users: Vec<i64> = b["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["users"].as_i64().expect("users"))
        .collect();
    assert!(users.windows(2).all(|w| w[0] >= w[1]), "{users:?}");
    // The property keys seen.
    let p = node
        .ok(&format!("/api/v1/sites/site-0/properties?{range}"))
        .await;
    for key in ["plan", "ab:test"] {
        let with: Vec<&&Event> = mine.iter().filter(|e| e.props.contains_key(key)).collect();
        let users: BTreeSet<&str> = with.iter().map(|e| e.user_key()).collect();
        let row = p["properties"]
            .as_array()
            .expect("properties")
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("{key} in {p}"));
        assert_eq!(row["events"], json!(with.len()), "{key}");
        assert_eq!(row["users"], json!(users.len()), "{key}");
    }
    // The same over NATS.
    let over_nats = ask_nats(
        &s.client,
        "properties",
        json!({"key": READ_ALL, "site": "site-0", "params": {"from": rfc3339(from), "to": rfc3339(to)}}),
    )
    .await
    .expect("answer");
    assert_eq!(over_nats["properties"], p["properties"]);
}

/// Question `q` (after `/api/v1/sites/site-0/`) answered by the rollups, and
/// again by the store (a filter that selects every event, `name!=~none~`, which
/// only the store can apply), over the same exact range.
async fn from_both(node: &Node, q: &str) -> (Value, Value) {
    let everything = format!("filters={}", urlencode("name!=~none~"));
    let rollups = node.ok(&format!("/api/v1/sites/site-0/{q}")).await;
    let store = node
        .ok(&format!("/api/v1/sites/site-0/{q}&{everything}"))
        .await;
    assert_eq!(rollups["source"], "rollups", "{q}");
    assert_eq!(store["source"], "store", "{q}");
    assert_eq!(rollups["range"], store["range"], "{q}");
    assert!(store["fresh_through"].is_string(), "{q}: {store}");
    (rollups, store)
}

#[tokio::test]
async fn the_rollups_and_the_store_agree_where_both_answer() {
    let (_s, node, all) = ready().await;
    // The store has read every event: it is fresh through the newest arrival.
    let newest = all
        .iter()
        .map(|e| e.received_at.timestamp_millis())
        .max()
        .expect("events");
    let end = end_ms();
    let range = format!("from={}&to={}", rfc3339(end - 2 * 86_400_000), rfc3339(end));
    let pairs = [
        format!("summary?metrics=events,pageviews,users,revenue&{range}"),
        format!("summary?metrics=events,pageviews&country=DE&{range}"),
        format!("timeseries?metrics=events,pageviews,revenue&interval=1h&{range}"),
        format!("breakdown?dimension=path&metric=events&metrics=events&limit=20&{range}"),
        format!("breakdown?dimension=name&metric=events&metrics=events&{range}"),
    ];
    for q in pairs {
        let (rollups, store) = from_both(&node, &q).await;
        assert_eq!(store["fresh_through"], rfc3339(newest), "{q}");
        for field in ["points", "rows", "other", "total", "total_rows"] {
            assert_eq!(rollups[field], store[field], "{q}: {field}");
        }
        if let Some(metrics) = rollups["metrics"].as_object()
            && rollups["points"].is_null()
        {
            for (name, figure) in metrics {
                let (a, b) = (&figure["value"], &store["metrics"][name]["value"]);
                if name == "users" {
                    let (a, b) = (a.as_f64().expect("users"), b.as_f64().expect("users"));
                    assert!((a - b).abs() <= b * 0.03, "{q}: users {a} vs {b}");
                } else {
                    assert_eq!(a, b, "{q}: {name}");
                }
            }
        }
    }
}

/// Sessions per bucket and per entry page, and a series' totals, cut by the
/// store's staged run, equal the rollups' over a range holding every event
/// (so no session crosses its edges).
#[tokio::test]
async fn the_stores_sessions_per_group_equal_the_rollups() {
    let (_s, node, _all) = ready().await;
    let end = end_ms();
    let range = format!("from={}&to={}", rfc3339(end - 4 * 86_400_000), rfc3339(end));
    let metrics = "sessions,bounce_rate,avg_session_duration";
    for q in [
        format!("timeseries?metrics={metrics}&interval=1h&{range}"),
        format!(
            "breakdown?dimension=entry_page&metric=sessions&metrics=sessions&limit=1000&{range}"
        ),
        format!(
            "breakdown?dimension=exit_page&metric=sessions&metrics=sessions&limit=1000&{range}"
        ),
    ] {
        let (rollups, store) = from_both(&node, &q).await;
        for field in ["points", "totals"] {
            assert_eq!(rollups[field], store[field], "{q}: {field}");
        }
        // Sessions without a page view have no entry or exit page in either.
        assert_eq!(rollups["rows"], store["rows"], "{q}: rows");
        let rows = store["rows"].as_array().map_or(0, Vec::len) as i64;
        let some = store["totals"]["sessions"].as_i64().unwrap_or(0) + rows;
        assert!(some > 0, "{q}: the data has sessions");
    }
}

#[tokio::test]
async fn comparisons_and_ranges_the_rollups_cannot_cover() {
    let (_s, node, all) = ready().await;
    let end = end_ms();
    let (from, to) = (end - 86_400_000, end);
    let q = format!(
        "/api/v1/sites/site-0/summary?metrics=events,users&from={}&to={}&compare=previous_period&filters={}",
        rfc3339(from),
        rfc3339(to),
        urlencode("browser==Chrome|Safari")
    );
    let pick = |e: &Event| matches!(e.context.browser.as_deref(), Some("Chrome" | "Safari"));
    let answer = node.ok(&q).await;
    let before = truth(&all, "site-0", from - 86_400_000, from, &pick);
    assert_eq!(
        answer["comparison"]["metrics"]["events"],
        json!(before.events)
    );
    assert_eq!(
        answer["comparison"]["metrics"]["users"],
        json!(before.users)
    );
    assert_eq!(
        answer["comparison"]["range"]["from"],
        json!(rfc3339(from - 86_400_000).replace(".000Z", "Z"))
    );
    // A custom comparison of a breakdown.
    let b = node
        .ok(&format!(
            "/api/v1/sites/site-0/breakdown?dimension=browser&from={}&to={}&compare=custom&compare_from={}&compare_to={}",
            rfc3339(from),
            rfc3339(to),
            rfc3339(from - 2 * 86_400_000),
            rfc3339(from - 86_400_000)
        ))
        .await;
    let rows = b["comparison"]["rows"].as_array().expect("rows");
    let chrome = rows
        .iter()
        .find(|r| r["value"] == "Chrome")
        .expect("Chrome");
    let want = truth(
        &all,
        "site-0",
        from - 2 * 86_400_000,
        from - 86_400_000,
        &|e| e.context.browser.as_deref() == Some("Chrome"),
    );
    assert_eq!(chrome["users"], json!(want.users));
    assert_eq!(chrome["events"], json!(want.events));
    // A filtered series compared with the day before: its points and totals.
    let series = node
        .ok(&format!(
            "/api/v1/sites/site-0/timeseries?metrics=events&interval=1h&from={}&to={}&compare=previous_period&filters={}",
            rfc3339(from),
            rfc3339(to),
            urlencode("browser==Chrome|Safari")
        ))
        .await;
    let comparison = &series["comparison"];
    assert_eq!(comparison["points"].as_array().map(Vec::len), Some(24));
    assert_eq!(
        comparison["totals"]["events"],
        json!(before.events),
        "{comparison}"
    );
    // A range older than the kept minute buckets is answered, not refused.
    let old = node
        .ok("/api/v1/sites/site-0/summary?metrics=events&from=-30d")
        .await;
    let n = all.iter().filter(|e| e.site == "site-0").count();
    assert_eq!(old["metrics"]["events"]["value"], json!(n), "{old}");
}

/// `filters` is refused with a 400 saying `expected`, over HTTP (a summary)
/// and over NATS (a breakdown); the HTTP message, for more checks.
async fn refused(
    node: &Node,
    client: &async_nats::Client,
    filters: &str,
    expected: &str,
) -> String {
    let (status, body) = node
        .get(
            &format!(
                "/api/v1/sites/site-0/summary?filters={}",
                urlencode(filters)
            ),
            Some(READ_ALL),
        )
        .await;
    assert_eq!(status, 400, "{filters}: {body}");
    let message = body["error"].as_str().expect("error").to_owned();
    assert!(message.contains(expected), "{message}");
    let (code, nats_message) = ask_nats(
        client,
        "breakdown",
        json!({"key": READ_ALL, "site": "site-0", "params": {"dimension": "path", "filters": filters}}),
    )
    .await
    .expect_err("refused");
    assert_eq!(code, "400", "{filters}");
    assert!(nats_message.contains(expected), "{nats_message}");
    message
}

#[tokio::test]
async fn a_bad_filter_is_a_400_naming_it_over_http_and_nats() {
    let s = setup_with(Vec::new()).await;
    let node = node(&s.client).await;
    node.ready().await;
    for (filters, expected) in [
        ("colour==red", "unknown dimension"),
        ("country<>DE", "unknown operator"),
        ("country==", "empty value"),
        ("path~=(", "bad regular expression"),
    ] {
        let message = refused(&node, &s.client, filters, expected).await;
        assert!(message.contains(filters), "{message}");
    }
    s.stop_aggregator();
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn filters_past_their_caps_are_a_400_naming_the_cap_over_http_and_nats() {
    let s = setup_with(Vec::new()).await;
    let node = node(&s.client).await;
    node.ready().await;
    let values = (0..101)
        .map(|i| format!("C{i}"))
        .collect::<Vec<_>>()
        .join("|");
    let many_values = format!("country=={values}");
    let many_filters = vec!["path==/"; 21].join(";");
    let long = format!("path=={}", "a".repeat(4096));
    for (filters, expected) in [
        (many_values.as_str(), "at most 100 values"),
        (many_filters.as_str(), "at most 20 filters"),
        (long.as_str(), "at most 4096 bytes"),
    ] {
        refused(&node, &s.client, filters, expected).await;
    }
    // At the caps, a question is answered.
    let at_caps = (0..100)
        .map(|i| format!("C{i}"))
        .collect::<Vec<_>>()
        .join("|");
    let (status, body) = node
        .get(
            &format!(
                "/api/v1/sites/site-0/summary?filters={}",
                urlencode(&format!("country=={at_caps}"))
            ),
            Some(READ_ALL),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.stop_aggregator();
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn entry_pages_series_and_conversion_rates_equal_the_truth() {
    let (_s, node, all) = ready().await;
    let end = end_ms();
    let (from, to) = (end - 86_400_000, end);
    let mine: Vec<&Event> = all
        .iter()
        .filter(|e| e.site == "site-0" && (from..to).contains(&e.ts.timestamp_millis()))
        .collect();

    // entry_page selects whole sessions: those whose first page view is /page/3.
    let mut by_user: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in &mine {
        by_user.entry(e.user_key()).or_default().push(e);
    }
    let (mut events, mut sessions, mut users) = (0i64, 0i64, BTreeSet::new());
    for (user, mut list) in by_user {
        list.sort_by_key(|e| e.ts);
        let mut cut: Vec<Vec<&Event>> = Vec::new();
        for e in list {
            match cut.last_mut() {
                Some(s)
                    if e.ts.timestamp_millis() - s[s.len() - 1].ts.timestamp_millis()
                        <= TIMEOUT_MS =>
                {
                    s.push(e)
                }
                _ => cut.push(vec![e]),
            }
        }
        for s in cut {
            let entry = s
                .iter()
                .filter(|e| e.name == "pageview")
                .map(|e| (e.ts, e.context.path.clone().unwrap_or_default()))
                .min();
            if entry.is_some_and(|(_, p)| p == "/page/3") {
                sessions += 1;
                events += s.len() as i64;
                users.insert(user);
            }
        }
    }
    assert!(sessions > 0, "the data has such sessions");
    let range = format!("from={}&to={}", rfc3339(from), rfc3339(to));
    let entry = node
        .ok(&format!(
            "/api/v1/sites/site-0/summary?metrics=events,users,sessions&{range}&filters={}",
            urlencode("entry_page==/page/3")
        ))
        .await;
    assert_eq!(
        entry["metrics"]["events"]["value"],
        json!(events),
        "{entry}"
    );
    assert_eq!(entry["metrics"]["sessions"]["value"], json!(sessions));
    assert_eq!(entry["metrics"]["users"]["value"], json!(users.len()));

    // A filtered series by hour: each point from the events of its hour.
    let series = node
        .ok(&format!(
            "/api/v1/sites/site-0/timeseries?metrics=events,users,conversion_rate&interval=1h&{range}&filters={}",
            urlencode("country==DE")
        ))
        .await;
    assert_eq!(series["source"], "store");
    let points = series["points"].as_array().expect("points");
    assert_eq!(points.len(), 24, "{series}");
    for (i, point) in points.iter().enumerate() {
        let start = from + i as i64 * 3_600_000;
        let hour: Vec<&&Event> = mine
            .iter()
            .filter(|e| (start..start + 3_600_000).contains(&e.ts.timestamp_millis()))
            .collect();
        let de: Vec<&&&Event> = hour
            .iter()
            .filter(|e| e.context.country.as_deref() == Some("DE"))
            .collect();
        let de_users: BTreeSet<&str> = de.iter().map(|e| e.user_key()).collect();
        let all_users: BTreeSet<&str> = hour.iter().map(|e| e.user_key()).collect();
        assert_eq!(point["start"], json!(rfc3339(start).replace(".000Z", "Z")));
        assert_eq!(point["events"], json!(de.len()), "{point}");
        assert_eq!(point["users"], json!(de_users.len()), "{point}");
        let rate = if all_users.is_empty() {
            Value::Null
        } else {
            json!((de_users.len() as f64 * 10_000.0 / all_users.len() as f64).round() / 100.0)
        };
        assert_eq!(point["conversion_rate"], rate, "{point}");
    }
}

/// The dashboard's lists (unfiltered, ranked by visitors) come from days the
/// node keeps: the same rows as the store's SQL gives for the same question
/// (here forced by a filter every event passes), over whole days, whole hours
/// and partial hours at the edges, asked twice; and an event arriving late
/// into a kept day is counted.
#[tokio::test]
async fn lists_by_visitors_from_kept_days_equal_the_stores_sql() {
    let (s, node, all) = ready().await;
    let end = end_ms();
    const DAY: i64 = 86_400_000;
    // Partial hours at both edges, whole hours, whole days.
    let range = format!(
        "from={}&to={}",
        rfc3339(end - 3 * DAY + 77 * 60_000),
        rfc3339(end - 7 * 60_000)
    );
    // A few hours, off the hour, without a whole day.
    let hours = format!(
        "from={}&to={}",
        rfc3339(end - 5 * 3_600_000 + 13 * 60_000),
        rfc3339(end - 7 * 60_000)
    );
    let list_over = |dim: &str, range: &str| {
        format!(
            "/api/v1/sites/site-0/breakdown?dimension={dim}&metric=users&metrics=users,events,pageviews&limit=1000&{range}"
        )
    };
    let list = |dim: &str| list_over(dim, &range);
    let everything = format!("filters={}", urlencode("name!=~none~"));
    for dim in ["path", "name"] {
        let sql = node
            .ok(&format!("{}&{everything}", list_over(dim, &hours)))
            .await;
        let kept = node.ok(&list_over(dim, &hours)).await;
        assert!(
            sql["rows"].as_array().is_some_and(|r| !r.is_empty()),
            "{dim}"
        );
        assert_eq!(kept["rows"], sql["rows"], "{dim} over hours");
    }
    for dim in ["path", "browser", "country", "props.plan", "name"] {
        let sql = node.ok(&format!("{}&{everything}", list(dim))).await;
        let first = node.ok(&list(dim)).await;
        let kept = node.ok(&list(dim)).await;
        let rows = sql["rows"].as_array().expect("rows");
        assert!(rows.len() > 1, "{dim}: {sql}");
        assert_eq!(first["source"], "store", "{dim}");
        for answer in [&first, &kept] {
            for field in ["rows", "total_rows", "range", "metric", "metrics"] {
                assert_eq!(answer[field], sql[field], "{dim}: {field}");
            }
        }
    }
    assert!(node.node.kept_day_bytes() > 0, "days were kept");

    // An event two days back: in a kept whole day, after it was counted.
    let mut late = all
        .iter()
        .find(|e| e.site == "site-0" && e.name == "pageview")
        .expect("a page view")
        .clone();
    late.id = "late-into-a-kept-day".into();
    late.ts = chrono::Utc
        .timestamp_millis_opt(end - 2 * DAY)
        .single()
        .expect("time");
    late.context.path = Some("/arrived-late".into());
    beacon_testing::truth::publish(&s.js, &[late]).await;
    let answer = node
        .until(&list("path"), |b| {
            b["rows"]
                .as_array()
                .is_some_and(|rows| rows.iter().any(|r| r["value"] == "/arrived-late"))
        })
        .await;
    let row = answer["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["value"] == "/arrived-late"))
        .expect("the late path");
    assert_eq!(row["users"], 1);
    assert_eq!(row["events"], 1);
    let sql = node.ok(&format!("{}&{everything}", list("path"))).await;
    assert_eq!(answer["rows"], sql["rows"]);
}

/// The dashboard's lists are counted in the background: asked as the
/// dashboard asks them (the last 7 days and today, in UTC), they merge kept
/// periods and count none, and still equal the store's SQL.
#[tokio::test]
async fn the_dashboards_lists_are_counted_ahead_and_first_asks_count_nothing() {
    let (_s, node, _all) = ready().await;
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 86_400_000;
    let everything = format!("filters={}", urlencode("name!=~none~"));
    // Two whole passes begun after every event was in the store.
    let two_passes = || async {
        let start = node.node.count_ahead_passes();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while node.node.count_ahead_passes() < start + 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "counting ahead never passed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    two_passes().await;
    let mut asked = false;
    // A pass and an ask in different UTC hours see different periods (the
    // hour that left the recent two hours): then wait for the next pass.
    for _ in 0..3 {
        let now = chrono::Utc::now().timestamp_millis();
        let today = now - now.rem_euclid(DAY);
        let next_hour = now - now.rem_euclid(HOUR) + HOUR;
        let counted = node.node.breakdown_periods_counted();
        let mut answers = Vec::new();
        for from in [today - 6 * DAY, today] {
            for dim in ["path", "browser", "country", "name"] {
                let list = format!(
                    "/api/v1/sites/site-0/breakdown?dimension={dim}&metric=users\
                     &metrics=users,events,pageviews&limit=1000&from={}&to={}",
                    rfc3339(from),
                    rfc3339(next_hour)
                );
                answers.push((node.ok(&list).await, list));
            }
        }
        if chrono::Utc::now().timestamp_millis() >= next_hour {
            two_passes().await;
            continue;
        }
        assert_eq!(
            node.node.breakdown_periods_counted(),
            counted,
            "a list the dashboard shows counted periods on its first ask"
        );
        for (answer, list) in &answers {
            let sql = node.ok(&format!("{list}&{everything}")).await;
            assert!(
                sql["rows"].as_array().is_some_and(|r| !r.is_empty()),
                "{list}"
            );
            assert_eq!(answer["rows"], sql["rows"], "{list}");
        }
        asked = true;
        break;
    }
    assert!(asked, "an hour turned during each of three tries");
    // A list the dashboard does not show is counted when first asked.
    let counted = node.node.breakdown_periods_counted();
    let now = chrono::Utc::now().timestamp_millis();
    node.ok(&format!(
        "/api/v1/sites/site-0/breakdown?dimension=utm_term&metric=users&from={}&to={}",
        rfc3339(now - now.rem_euclid(DAY) - 6 * DAY),
        rfc3339(now - now.rem_euclid(HOUR) + HOUR)
    ))
    .await;
    assert!(node.node.breakdown_periods_counted() > counted);
}
