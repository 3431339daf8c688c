//! The official PostHog (classic and capture v1) and Segment SDKs, unchanged,
//! pointed at the collector:
//! page views, custom events with properties, identify and revenue arrive
//! exactly once with the right names, users, times and properties, also when
//! the SDK retries after a 503 (a lost response, or NATS away).
//!
//! The SDKs run from the project's `.venv`, whose python `scripts/test.sh`
//! passes in `BEACON_TEST_PYTHON`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use beacon_nats::RetryPolicy;
use beacon_testing::TestServer;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Value, json};

use super::support::{self, SHOP_KEY, Services, Setup, events, eventually, only};

fn python() -> PathBuf {
    match std::env::var_os("BEACON_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "the SDK tests need BEACON_TEST_PYTHON, a python with the official SDKs: \
             run scripts/test.sh, which installs them into .venv/ and sets it"
        ),
    }
}

/// Run tests/sdk/send.py with one SDK against `host`; fails the test if the SDK gave up.
async fn run_sdk(python: &Path, sdk: &str, host: &str, base: DateTime<Utc>) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/send.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args([sdk, host, SHOP_KEY, &base.to_rfc3339()])
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the SDK script");
    assert!(
        output.status.success(),
        "{sdk} SDK script failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What the proxy between SDK and collector does to the first request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Forward everything.
    None,
    /// Forward the first request, then answer it 503 as if the response was
    /// lost: the events are stored, and the SDK's retry must not store them again.
    LoseFirstResponse,
}

struct ProxyState {
    upstream: String,
    fault: Fault,
    http: reqwest::Client,
    /// Every status the collector answered, in order.
    statuses: Mutex<Vec<u16>>,
    /// The path of every request.
    paths: Mutex<Vec<String>>,
}

/// A small HTTP proxy in front of the collector that can lose a response.
struct Proxy {
    url: String,
    state: Arc<ProxyState>,
}

impl Proxy {
    async fn start(upstream: &str, fault: Fault) -> Proxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.to_owned(),
            fault,
            http: reqwest::Client::new(),
            statuses: Mutex::new(Vec::new()),
            paths: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Proxy {
            url: format!("http://{addr}"),
            state,
        }
    }

    fn statuses(&self) -> Vec<u16> {
        self.state.statuses.lock().expect("lock").clone()
    }

    /// Fail unless the SDK used the endpoint its mode calls for.
    fn assert_endpoint(&self, sdk: &str) {
        let paths = self.state.paths.lock().expect("lock").clone();
        let v1 = paths
            .iter()
            .filter(|p| *p == "/i/v1/analytics/events")
            .count();
        let expected = if sdk == "posthog-v1" { paths.len() } else { 0 };
        assert_eq!(v1, expected, "{sdk} posted to {paths:?}");
    }
}

async fn forward(
    State(state): State<Arc<ProxyState>>,
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    body: Bytes,
) -> Response {
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    state
        .paths
        .lock()
        .expect("lock")
        .push(uri.path().to_owned());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let answer = state
        .http
        .request(method, format!("{}{path}", state.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("the collector answers");
    let status = answer.status();
    let retry_after = answer.headers().get(header::RETRY_AFTER).cloned();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer.bytes().await.expect("answer body");
    let first = {
        let mut seen = state.statuses.lock().expect("lock");
        seen.push(status.as_u16());
        seen.len() == 1
    };
    if first && state.fault == Fault::LoseFirstResponse {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(json!({"detail": "the proxy lost this response"})),
        )
            .into_response();
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in [
        (header::RETRY_AFTER, retry_after),
        (header::CONTENT_TYPE, content_type),
    ] {
        if let Some(value) = value {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Collector settings for SDK runs: short waits, so retries take seconds.
fn quick_setup() -> Setup {
    let mut setup = Setup::default();
    setup.collector.retry_after = Duration::from_secs(1);
    setup.retry = RetryPolicy {
        deadline: Duration::from_millis(1500),
        attempt_timeout: Duration::from_millis(500),
        ..RetryPolicy::default()
    };
    setup
}

/// An hour ago, in whole seconds: far enough from the receive time that a
/// time taken from the wrong place shows.
fn base_time() -> DateTime<Utc> {
    (Utc::now() - chrono::Duration::hours(1)).trunc_subsecs(0)
}

fn assert_time(event: &Value, expected: DateTime<Utc>) {
    let ts = DateTime::parse_from_rfc3339(event["ts"].as_str().expect("ts")).expect("rfc 3339");
    // Clock-skew correction adds the sender-to-collector delay: milliseconds here.
    let off = (ts.with_timezone(&Utc) - expected).num_milliseconds().abs();
    assert!(
        off < 5_000,
        "{} is {off} ms from {expected}: {event}",
        event["ts"]
    );
}

fn check_posthog(stored: &[Value], base: DateTime<Utc>) {
    assert_eq!(stored.len(), 6, "{stored:#?}");
    let at = |s: i64| base + chrono::Duration::seconds(s);
    let id = |n: u8| format!("00000000-0000-4000-8000-00000000000{n}");

    let pageview = only(stored, &id(1));
    assert_eq!(
        (pageview["name"].clone(), pageview["user_id"].clone()),
        (json!("pageview"), json!("ph-anon-1"))
    );
    assert_eq!(pageview["context"]["path"], "/pricing");
    assert_eq!(pageview["context"]["referrer_host"], "google.com");
    assert_eq!(pageview["context"]["referrer_source"], "newsletter");
    assert_eq!(pageview["props"]["$lib"], "posthog-python");
    assert_time(pageview, at(0));

    let click = only(stored, &id(2));
    assert_eq!(click["name"], "signup_clicked");
    assert_eq!(
        (
            click["props"]["plan"].clone(),
            click["props"]["seats"].clone()
        ),
        (json!("pro"), json!(3))
    );
    assert_time(click, at(1));

    for (n, name, seconds) in [(3, "identify", 2), (4, "alias", 3)] {
        let link = only(stored, &id(n));
        assert_eq!(
            (
                link["name"].clone(),
                link["user_id"].clone(),
                link["anonymous_id"].clone()
            ),
            (json!(name), json!("ph-user-1"), json!("ph-anon-1"))
        );
        assert_time(link, at(seconds));
    }
    let set = only(stored, &id(5));
    assert_eq!(
        (set["name"].clone(), set["props"]["$set"].clone()),
        (json!("set"), json!({"name": "Ada"}))
    );

    let purchase = only(stored, &id(6));
    assert_eq!(
        (purchase["name"].clone(), purchase["user_id"].clone()),
        (json!("purchase"), json!("ph-user-1"))
    );
    assert_eq!(
        purchase["revenue"],
        json!({"amount": "19.99", "currency": "EUR"})
    );
    assert_eq!(purchase["props"]["sku"], "pro-annual");
    assert_time(purchase, at(5));
}

fn check_segment(stored: &[Value], base: DateTime<Utc>) {
    assert_eq!(stored.len(), 5, "{stored:#?}");
    let at = |s: i64| base + chrono::Duration::seconds(s);

    let page = only(stored, "seg-1");
    assert_eq!(
        (page["name"].clone(), page["anonymous_id"].clone()),
        (json!("pageview"), json!("seg-anon-1"))
    );
    assert_eq!(
        (
            page["props"]["name"].clone(),
            page["props"]["locale"].clone()
        ),
        (json!("Pricing"), json!("de-DE"))
    );
    assert_eq!(page["context"]["path"], "/pricing");
    assert_eq!(page["context"]["referrer_source"], "Hacker News");
    assert_eq!(page["context"]["browser"], "Firefox");
    assert_time(page, at(0));

    let click = only(stored, "seg-2");
    assert_eq!(
        (click["name"].clone(), click["props"]["plan"].clone()),
        (json!("Signup Clicked"), json!("pro"))
    );
    assert_time(click, at(1));

    for (id, name, seconds) in [("seg-3", "identify", 2), ("seg-4", "alias", 3)] {
        let link = only(stored, id);
        assert_eq!(
            (
                link["name"].clone(),
                link["user_id"].clone(),
                link["anonymous_id"].clone()
            ),
            (json!(name), json!("seg-user-1"), json!("seg-anon-1"))
        );
        assert_time(link, at(seconds));
    }
    assert_eq!(
        only(stored, "seg-3")["props"]["traits"]["email"],
        "ada@example.com"
    );

    let order = only(stored, "seg-5");
    assert_eq!(
        (order["name"].clone(), order["user_id"].clone()),
        (json!("Order Completed"), json!("seg-user-1"))
    );
    assert_eq!(
        order["revenue"],
        json!({"amount": "19.99", "currency": "EUR"})
    );
    assert_time(order, at(4));
}

/// The SDK sends through a proxy that loses the first response; its retry must
/// be recognised as the same events.
async fn lost_response(sdk: &str, check: fn(&[Value], DateTime<Utc>)) {
    let python = python();
    let nats = TestServer::start().await;
    let svc = support::start(&nats, quick_setup()).await;
    let proxy = Proxy::start(&svc.url, Fault::LoseFirstResponse).await;
    let base = base_time();
    run_sdk(&python, sdk, &proxy.url, base).await;
    let statuses = proxy.statuses();
    assert!(statuses.len() >= 2, "the SDK did not retry: {statuses:?}");
    proxy.assert_endpoint(sdk);
    check(&events(&svc.js).await, base);
    svc.shutdown().await;
}

/// NATS is away when the SDK first sends: the collector answers 503 (never
/// 2xx), and once NATS is back the SDK's retry stores every event once.
async fn nats_away(sdk: &str, check: fn(&[Value], DateTime<Utc>)) {
    let python = python();
    let mut nats = TestServer::start().await;
    let svc: Services = support::start(&nats, quick_setup()).await;
    let proxy = Proxy::start(&svc.url, Fault::None).await;
    let base = base_time();
    nats.stop().await;
    let sending = tokio::spawn({
        let (sdk, url) = (sdk.to_owned(), proxy.url.clone());
        async move { run_sdk(&python, &sdk, &url, base).await }
    });
    eventually("the collector answers 503 while NATS is away", || async {
        proxy.statuses().contains(&503)
    })
    .await;
    nats.resume().await;
    sending.await.expect("the SDK script ran");
    let statuses = proxy.statuses();
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );
    proxy.assert_endpoint(sdk);
    check(&events(&svc.js).await, base);
    svc.shutdown().await;
}

#[tokio::test]
async fn posthog_sdk_events_arrive_once_when_a_response_is_lost() {
    lost_response("posthog", check_posthog).await;
}

#[tokio::test]
async fn posthog_sdk_retries_after_503_while_nats_is_away() {
    nats_away("posthog", check_posthog).await;
}

#[tokio::test]
async fn posthog_v1_sdk_events_arrive_once_when_a_response_is_lost() {
    lost_response("posthog-v1", check_posthog).await;
}

#[tokio::test]
async fn posthog_v1_sdk_retries_after_503_while_nats_is_away() {
    nats_away("posthog-v1", check_posthog).await;
}

#[tokio::test]
async fn segment_sdk_events_arrive_once_when_a_response_is_lost() {
    lost_response("segment", check_segment).await;
}

#[tokio::test]
async fn segment_sdk_retries_after_503_while_nats_is_away() {
    nats_away("segment", check_segment).await;
}
