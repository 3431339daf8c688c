//! The numbers: equal to a truth computed here from the generated events, and
//! the same whichever way and whichever node they are asked.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use beacon_core::event::Event;
use beacon_rollup::Granularity;
use beacon_testing::truth::Truth;
use chrono::{SecondsFormat, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::support::*;

const DAY: i64 = 86_400_000;

fn rfc(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .expect("time")
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn within(events: &[Event], site: &str, from: i64, to: i64) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.site == site && (from..to).contains(&e.ts.timestamp_millis()))
        .cloned()
        .collect()
}

fn users(events: &[Event]) -> f64 {
    events
        .iter()
        .map(Event::user_key)
        .collect::<HashSet<_>>()
        .len() as f64
}

fn close(got: &Value, want: f64, what: &str) {
    let got = got.as_f64().unwrap_or(-1.0);
    assert!(
        (got - want).abs() <= (want * 0.03).max(2.0),
        "{what}: {got} users, truly {want}"
    );
}

fn revenue(events: &[Event]) -> Value {
    let mut sums: BTreeMap<String, Decimal> = BTreeMap::new();
    for e in events {
        if let Some(r) = &e.revenue {
            *sums.entry(r.currency.clone()).or_default() += r.amount;
        }
    }
    sums.into_iter()
        .map(|(c, a)| (c, Value::from(a.normalize().to_string())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_nats_and_two_replicas_give_the_truth() {
    let s = setup(30_000).await;
    s.committed().await;
    // Both nodes start after the data exists: ready means loaded.
    let a = node(&s.client).await;
    let b = node(&s.client).await;
    a.ready().await;
    b.ready().await;

    let day = Granularity::Day.bucket_start(end_ms() - 36 * 3_600_000);
    let (from, to) = (rfc(day), rfc(day + DAY));
    let site = "site-0";
    let truth = Truth::of(&s.events, &[Granularity::Hour], 30 * 60_000);

    // Per hour of one day: every figure.
    let series = a
        .ok(&format!(
            "/api/v1/sites/{site}/timeseries?from={from}&to={to}&interval=1h"
        ))
        .await;
    let points = series["points"].as_array().expect("points");
    assert_eq!(points.len(), 24);
    for (h, point) in points.iter().enumerate() {
        let start = day + h as i64 * 3_600_000;
        let want = within(&s.events, site, start, start + 3_600_000);
        assert_eq!(point["start"], rfc(start));
        assert_eq!(point["events"], want.len() as i64, "hour {h}");
        let pageviews = want.iter().filter(|e| e.name == "pageview").count();
        assert_eq!(point["pageviews"], pageviews as i64, "hour {h}");
        assert_eq!(point["revenue"], revenue(&want), "hour {h}");
        close(&point["users"], users(&want), &format!("hour {h}"));
        let (sessions, bounces, duration) =
            truth.sessions(site, Granularity::Hour, start..start + 1);
        assert_eq!(point["sessions"], sessions, "hour {h}");
        if sessions > 0 {
            let rate = (bounces as f64 / sessions as f64 * 1e4).round() / 1e4;
            assert_eq!(point["bounce_rate"], rate, "hour {h}");
            let avg = (duration as f64 / sessions as f64).round() / 1e3;
            let got = point["avg_session_duration"].as_f64().expect("duration");
            assert!((got - avg).abs() < 0.002, "hour {h}: {got} vs {avg}");
        }
    }
    let whole = within(&s.events, site, day, day + DAY);
    assert_eq!(series["totals"]["events"], whole.len() as i64);
    close(&series["totals"]["users"], users(&whole), "day");

    // Whole days in New York: local midnights are 04:00 or 05:00 UTC.
    let tz: chrono_tz::Tz = "America/New_York".parse().expect("zone");
    let local_day = tz
        .timestamp_millis_opt(end_ms() - 3 * DAY)
        .single()
        .expect("time")
        .date_naive()
        .succ_opt()
        .expect("date");
    let local_start = tz
        .from_local_datetime(&local_day.and_hms_opt(0, 0, 0).expect("midnight"))
        .single()
        .expect("midnight")
        .timestamp_millis();
    let ny = a
        .ok(&format!(
            "/api/v1/sites/{site}/timeseries?from={local_day}&to={local_day}&interval=1d&tz=America/New_York&metrics=events"
        ))
        .await;
    let want = within(&s.events, site, local_start, local_start + DAY);
    assert_eq!(ny["points"][0]["events"], want.len() as i64, "{ny}");
    assert!(
        ny["from"].as_str().expect("from").ends_with("-05:00"),
        "{ny}"
    );

    // Top paths of the day, exactly.
    let breakdown = a
        .ok(&format!(
            "/api/v1/sites/{site}/breakdown?from={from}&to={to}&dimension=path&metric=events&metrics=events&limit=5"
        ))
        .await;
    let mut paths: BTreeMap<String, i64> = BTreeMap::new();
    for e in &whole {
        *paths
            .entry(e.context.path.clone().expect("path"))
            .or_default() += 1;
    }
    let mut ranked: Vec<(String, i64)> = paths.into_iter().collect();
    ranked.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    let rows: Vec<(String, i64)> = breakdown["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["value"].as_str().expect("value").to_owned(),
                r["count"].as_i64().expect("count"),
            )
        })
        .collect();
    assert_eq!(rows, ranked[..5].to_vec());
    assert_eq!(breakdown["total"], whole.len() as i64);
    let shown: i64 = rows.iter().map(|r| r.1).sum();
    assert_eq!(breakdown["other"], whole.len() as i64 - shown);

    // Filtered: clicks per browser, and events of one path by name.
    let clicks = a
        .ok(&format!(
            "/api/v1/sites/{site}/breakdown?from={from}&to={to}&dimension=browser&name=click&metric=events&metrics=events"
        ))
        .await;
    let safari_clicks = whole
        .iter()
        .filter(|e| e.name == "click" && e.context.browser.as_deref() == Some("Safari"))
        .count() as i64;
    let row = clicks["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["value"] == "Safari")
        .expect("a Safari row");
    assert_eq!(row["count"], safari_clicks);

    // Summary of the day against the day before.
    let summary = a
        .ok(&format!("/api/v1/sites/{site}/summary?from={from}&to={to}"))
        .await;
    let before = within(&s.events, site, day - DAY, day);
    assert_eq!(summary["metrics"]["events"]["value"], whole.len() as i64);
    assert_eq!(
        summary["metrics"]["events"]["previous"],
        before.len() as i64
    );
    let change = summary["metrics"]["events"]["change"]
        .as_f64()
        .expect("change");
    let expected = (whole.len() as f64 - before.len() as f64) / before.len() as f64;
    assert!((change - expected).abs() < 1e-3, "{change} vs {expected}");
    assert_eq!(summary["metrics"]["revenue"]["value"], revenue(&whole));

    // The same questions to the other replica and over NATS: the same answers.
    let questions = [
        (
            "timeseries",
            json!({"from": from, "to": to, "interval": "1h"}),
        ),
        (
            "timeseries",
            json!({"from": local_day.to_string(), "to": local_day.to_string(), "interval": "1d", "tz": "America/New_York", "metrics": "events"}),
        ),
        (
            "breakdown",
            json!({"from": from, "to": to, "dimension": "path", "metric": "events", "metrics": "events", "limit": 5}),
        ),
        (
            "breakdown",
            json!({"from": from, "to": to, "dimension": "name", "path": "/page/3", "metric": "events", "metrics": "events"}),
        ),
        ("summary", json!({"from": from, "to": to})),
    ];
    for (op, params) in questions {
        let query = serde_urlencoded::to_string(&params).expect("query");
        let path = format!("/api/v1/sites/{site}/{op}?{query}");
        let from_a = a.ok(&path).await;
        assert_eq!(from_a, b.ok(&path).await, "{path}: replicas differ");
        let over_nats = ask_nats(
            &s.client,
            op,
            json!({"key": READ_ALL, "site": site, "params": params}),
        )
        .await
        .expect("NATS answer");
        assert_eq!(from_a, over_nats, "{path}: HTTP and NATS differ");
    }

    // Discoverable as a micro service; both replicas answer PING.
    let inbox = s.client.new_inbox();
    let mut replies = s.client.subscribe(inbox.clone()).await.expect("subscribe");
    s.client
        .publish_with_reply("$SRV.PING.beacon-query", inbox, "".into())
        .await
        .expect("ping");
    let mut ids = HashSet::new();
    while let Ok(Some(m)) = tokio::time::timeout(
        Duration::from_secs(1),
        futures::StreamExt::next(&mut replies),
    )
    .await
    {
        let pong: Value = serde_json::from_slice(&m.payload).expect("pong");
        ids.insert(pong["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(ids.len(), 2, "two replicas answer PING");
    let info = s
        .client
        .request("$SRV.INFO.beacon-query", "".into())
        .await
        .expect("info");
    let info: Value = serde_json::from_slice(&info.payload).expect("info");
    let endpoints = info["endpoints"].as_array().expect("endpoints");
    // The ten operations (goals, funnel and retention among them) and SQL.
    assert_eq!(endpoints.len(), 11, "{info}");
    for e in endpoints {
        assert_eq!(e["queue_group"], "beacon-query", "{e}");
        assert!(
            e["subject"]
                .as_str()
                .expect("subject")
                .starts_with("beacon.query.v1.")
        );
    }
    s.stop_aggregator();
}
