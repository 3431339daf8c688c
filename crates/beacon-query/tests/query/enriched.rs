//! The enriched dimensions, engagement and filtered traffic, answered by a
//! query node from rollups an aggregator counted in a real nats-server.

use beacon_core::event::{Context, Event};
use beacon_core::{ENGAGED_MS_PROP, ENGAGEMENT, SCROLL_DEPTH_PROP, partition_of};
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use crate::support::*;

const SITE: &str = "quiet";

fn event(id: &str, user: &str, name: &str, ts_ms: i64, context: Context) -> Event {
    let time = Utc.timestamp_millis_opt(ts_ms).single().expect("time");
    Event {
        id: id.into(),
        site: SITE.into(),
        name: name.into(),
        user_id: Some(user.into()),
        anonymous_id: None,
        ts: time,
        received_at: Utc::now(),
        partition: partition_of(SITE, user, PARTITIONS),
        props: Default::default(),
        revenue: None,
        context,
    }
}

fn rows(answer: &Value) -> Vec<(String, i64)> {
    answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["value"].as_str().expect("value").to_owned(),
                r["count"].as_i64().expect("count"),
            )
        })
        .collect()
}

#[tokio::test]
async fn new_dimensions_engagement_and_filtered_traffic_are_answered() {
    let s = setup(10).await;
    let t = Utc::now().timestamp_millis() - 30 * 60_000;
    let campaign = Context {
        path: Some("/a".into()),
        channel: Some("Paid Social".into()),
        utm_source: Some("facebook".into()),
        utm_medium: Some("paid_social".into()),
        utm_campaign: Some("spring".into()),
        country: Some("US".into()),
        region: Some("US-CA".into()),
        city: Some("San Francisco".into()),
        ..Context::default()
    };
    let direct = Context {
        path: Some("/b".into()),
        channel: Some("Direct".into()),
        ..Context::default()
    };
    let bot = |reason: &str| Context {
        path: Some("/a".into()),
        bot: Some(reason.into()),
        ..Context::default()
    };
    let mut events = vec![
        event("p1", "u1", "pageview", t, campaign.clone()),
        event("p2", "u1", "pageview", t + 1_000, campaign.clone()),
        event("p3", "u1", "pageview", t + 2_000, campaign.clone()),
        event("p4", "u2", "pageview", t + 3_000, direct),
        event("b1", "crawler-1", "pageview", t, bot("crawler")),
        event("b2", "crawler-2", "pageview", t, bot("crawler")),
        event("b3", "headless-1", "pageview", t, bot("headless")),
    ];
    for (i, (ms, depth)) in [(10_000, 50), (20_000, 70)].into_iter().enumerate() {
        let mut ping = event(
            &format!("e{i}"),
            "u1",
            ENGAGEMENT,
            t + 4_000,
            campaign.clone(),
        );
        ping.props.insert(ENGAGED_MS_PROP.into(), json!(ms));
        ping.props.insert(SCROLL_DEPTH_PROP.into(), json!(depth));
        events.push(ping);
    }
    beacon_testing::truth::publish(&s.js, &events).await;
    s.committed().await;
    let n = node(&s.client).await;
    n.ready().await;
    let base = format!("/api/v1/sites/{SITE}");
    let summary = n
        .until(&format!("{base}/summary?from=-2h"), |b| {
            b["metrics"]["events"]["value"] == 4
        })
        .await;
    let m = &summary["metrics"];
    assert_eq!(
        m["pageviews"]["value"], 4,
        "bots and pings are not page views"
    );
    assert_eq!(m["users"]["value"], 2, "nor users");
    assert_eq!(m["sessions"]["value"], 2);
    assert_eq!(
        m["avg_engaged_time"]["value"], 7.5,
        "30 s over 4 page views"
    );
    assert_eq!(m["avg_scroll_depth"]["value"], 60.0);
    assert_eq!(m["filtered"]["value"], json!({"crawler": 2, "headless": 1}));

    let node = &n;
    let breakdown = |dimension: &str| {
        let path =
            format!("{base}/breakdown?from=-2h&dimension={dimension}&metric=events&metrics=events");
        async move { rows(&node.ok(&path).await) }
    };
    let owned = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
        v.iter().map(|(s, c)| ((*s).to_owned(), *c)).collect()
    };
    assert_eq!(
        breakdown("channel").await,
        owned(&[("Paid Social", 3), ("Direct", 1)])
    );
    assert_eq!(
        breakdown("utm_source").await,
        owned(&[("facebook", 3), ("(none)", 1)])
    );
    assert_eq!(
        breakdown("utm_medium").await,
        owned(&[("paid_social", 3), ("(none)", 1)])
    );
    assert_eq!(
        breakdown("utm_campaign").await,
        owned(&[("spring", 3), ("(none)", 1)])
    );
    assert_eq!(breakdown("utm_term").await, owned(&[("(none)", 4)]));
    assert_eq!(breakdown("utm_content").await, owned(&[("(none)", 4)]));
    assert_eq!(
        breakdown("region").await,
        owned(&[("US-CA", 3), ("(none)", 1)])
    );
    assert_eq!(
        breakdown("city").await,
        owned(&[("San Francisco", 3), ("(none)", 1)])
    );
    assert_eq!(
        breakdown("name").await,
        owned(&[("pageview", 4)]),
        "no engagement event"
    );

    // A new dimension filters like the old ones, and the new figures, which
    // the rollups do not keep per value, come from the event store.
    let filtered = n
        .ok(&format!(
            "{base}/summary?from=-2h&channel=Paid%20Social&metrics=events"
        ))
        .await;
    assert_eq!(filtered["metrics"]["events"]["value"], 3);
    for metric in ["avg_engaged_time", "avg_scroll_depth", "filtered"] {
        let (status, body) = n
            .get(
                &format!("{base}/summary?from=-2h&utm_source=facebook&metrics={metric}"),
                Some(READ_ALL),
            )
            .await;
        assert_eq!(status, 200, "{metric}: {body}");
        assert_eq!(body["source"], "store", "{metric}: {body}");
    }
    s.stop_aggregator();
}
