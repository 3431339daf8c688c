//! Typed calls to the `beacon-query` NATS service: events published with the
//! client come back in its answers; refusals come back as kinds.

use std::time::Duration;

use beacon_client::{Event, Params, Publisher, QueryClient, QueryErrorKind};
use beacon_query::QueryNode;
use beacon_testing::TestServer;
use tokio::sync::watch;

use super::support::{self, PARTITIONS, READ_KEY, SITE, WRITE_KEY, wait_stored};

#[tokio::test]
async fn published_events_come_back_through_typed_queries() {
    let nats = TestServer::start().await;
    let services = support::start(&nats).await;
    let client = nats.client().await;
    let (stop, shutdown) = watch::channel(false);
    let mut stopped = shutdown.clone();
    tokio::spawn(beacon_aggregate::run(
        client.clone(),
        beacon_aggregate::AggregatorSettings {
            commit_interval: Duration::from_millis(100),
            ..Default::default()
        },
        beacon_aggregate::StoreSettings::default(),
        PARTITIONS,
        1,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    let node = QueryNode::new(client.clone(), &support::sites(), PARTITIONS, shutdown);
    tokio::spawn(node.run());

    let publisher = Publisher::builder(client.clone(), SITE)
        .build()
        .expect("publisher");
    let mut events: Vec<Event> = (0..6)
        .map(|i| {
            Event::new("pageview")
                .user(format!("u-{}", i % 3))
                .prop("path", "/pricing")
        })
        .collect();
    events.push(Event::new("purchase").user("u-0").revenue("19.99", "USD"));
    publisher.publish_batch(&events).await.expect("published");
    wait_stored(&services.js, 7).await;

    let query = QueryClient::new(client.clone(), READ_KEY);
    support::eventually("the node counts every event", || async {
        let summary = query.summary(SITE, &Params::range("-1h", "now")).await;
        summary.is_ok_and(|s| s.metrics.get("events").is_some_and(|m| m.value == 7))
    })
    .await;
    assert_eq!(query.sites().await.expect("sites"), vec![SITE.to_owned()]);
    let summary = query
        .summary(SITE, &Params::range("-1h", "now"))
        .await
        .expect("summary");
    assert_eq!(summary.metrics["users"].value, 3);
    assert_eq!(summary.metrics["revenue"].value["USD"], "19.99");

    let by_name = query
        .breakdown(
            SITE,
            &Params {
                dimension: Some("name".into()),
                metric: Some("events".into()),
                ..Params::range("-1h", "now")
            },
        )
        .await
        .expect("breakdown");
    let rows: Vec<(String, f64)> = by_name
        .rows
        .iter()
        .map(|r| (r.value.clone(), r.count))
        .collect();
    assert_eq!(
        rows,
        vec![("pageview".to_owned(), 6.0), ("purchase".to_owned(), 1.0)]
    );
    assert_eq!((by_name.other, by_name.total), (Some(0), Some(7)));
    // Ranked by visitors (the default), under a filter: the event store answers.
    let visitors = query
        .breakdown(
            SITE,
            &Params {
                dimension: Some("name".into()),
                filters: Some("props.path==/pricing|/checkout".into()),
                ..Params::range("-1h", "now")
            },
        )
        .await
        .expect("visitors");
    assert_eq!(visitors.metric, "users");
    assert_eq!(visitors.source.as_deref(), Some("store"));
    let rows: Vec<(String, f64)> = visitors
        .rows
        .iter()
        .map(|r| (r.value.clone(), r.count))
        .collect();
    assert_eq!(rows, vec![("pageview".to_owned(), 3.0)]);
    assert_eq!(visitors.total, None);
    let series = query
        .timeseries(
            SITE,
            &Params {
                interval: Some("1m".into()),
                metrics: Some("events".into()),
                ..Params::range("-10m", "now")
            },
        )
        .await
        .expect("timeseries");
    assert_eq!(series.totals.events, Some(7));
    assert_eq!(
        series.points.iter().filter_map(|p| p.events).sum::<i64>(),
        7
    );
    let live = query.live(SITE).await.expect("live");
    assert_eq!(live.site, SITE);
    assert!(query.status().await.expect("status").is_object());

    // Refusals, as kinds.
    let write_key = QueryClient::new(client.clone(), WRITE_KEY);
    let error = write_key
        .sites()
        .await
        .expect_err("a write key never reads");
    assert_eq!(error.kind(), QueryErrorKind::Unauthorized);
    assert!(!error.is_retryable());
    let error = query
        .summary("nowhere", &Params::default())
        .await
        .expect_err("no such site");
    assert_eq!(error.kind(), QueryErrorKind::NotFound);
    let error = query
        .breakdown(SITE, &Params::default())
        .await
        .expect_err("a breakdown needs a dimension");
    assert_eq!(error.kind(), QueryErrorKind::BadRequest);
    let _ = stop.send(true);
}

#[tokio::test]
async fn without_a_query_node_a_call_is_retryable() {
    let nats = TestServer::start().await;
    let query =
        QueryClient::new(nats.client().await, READ_KEY).with_timeout(Duration::from_secs(2));
    let error = query.sites().await.expect_err("nobody answers");
    assert_eq!(error.kind(), QueryErrorKind::Unavailable);
    assert!(error.is_retryable());
}
