//! The tracker's side of the collector: the script it serves, `POST
//! /api/v1/track` (sites by id or domain, the page's origin checked, ids kept
//! so a retry dedupes), and the browser-facing protocol gaps: Plausible's
//! engagement pings, a site that takes any domain, PostHog capture v1.

use beacon_testing::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

use super::support::{self, SHOP_KEY, Setup, events, only};

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// A page view stamped by a browser whose clock is far behind (`sent_at` says so too).
fn pageview(id: &str, path: &str) -> Value {
    json!({"id": id, "name": "pageview", "ts": 1_000_000, "url": format!("https://shop.example{path}?utm_source=nl"),
        "referrer": "https://www.google.com/"})
}

#[tokio::test]
async fn the_script_is_served_cached_and_gzipped_at_both_paths() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let get = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let mut request = svc.http.get(format!("{}{path}", svc.url));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let plain = get("/js/beacon.js", vec![]).await.expect("answer");
    assert_eq!(plain.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header(&plain, "content-type").starts_with("text/javascript"));
    assert_eq!(header(&plain, "cache-control"), "public, max-age=3600");
    let etag = header(&plain, "etag");
    let script = plain.text().await.expect("body");
    assert!(script.contains("/api/v1/track") && !script.contains("\n//"));

    let gzipped = get("/js/script.js", vec![("accept-encoding", "gzip".into())])
        .await
        .expect("answer");
    assert_eq!(header(&gzipped, "content-encoding"), "gzip");
    let bytes = gzipped.bytes().await.expect("body");
    assert!(bytes.len() < 2048, "{} bytes gzipped", bytes.len());
    let mut unzipped = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut unzipped)
        .expect("gunzip");
    assert_eq!(
        unzipped, script,
        "the Plausible path serves the same script"
    );

    let revalidated = get("/js/beacon.js", vec![("if-none-match", etag)])
        .await
        .expect("answer");
    assert_eq!(revalidated.status(), 304);
    svc.shutdown().await;
}

#[tokio::test]
async fn tracker_events_are_stored_once_for_the_site_whose_domain_sent_them() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let track = |origin: &'static str, body: Value| {
        let svc = &svc;
        async move {
            svc.send(
                Method::POST,
                "/api/v1/track",
                &[
                    ("origin", origin),
                    ("user-agent", CHROME),
                    ("content-type", "text/plain"),
                ],
                body.to_string(),
            )
            .await
        }
    };
    // The browser's clock is far behind: the event time follows the collector's.
    let body = json!({"site": "shop", "sent_at": 1_000_500,
        "events": [pageview("t-1", "/pricing"),
            {"id": "t-2", "name": "Signup", "ts": 1_000_400, "url": "https://shop.example/pricing",
             "props": {"plan": "pro"}, "revenue": {"amount": "19.99", "currency": "EUR"}}]});
    let (status, answer) = track("https://www.shop.example", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    // The same request again (a retry after a lost answer) stores nothing new.
    let (status, answer) = track("https://www.shop.example", body).await;
    assert_eq!(
        (status, answer["duplicates"].clone()),
        (200, json!(2)),
        "{answer}"
    );

    // By domain, as a Plausible snippet's data-domain names it.
    let by_domain =
        json!({"domain": "shop.example", "sent_at": 1_000_000, "events": [pageview("t-3", "/")]});
    assert_eq!(track("https://elsewhere.example", by_domain).await.0, 200);

    // Another website's page may not send for the shop, nor name a domain no site has.
    for (origin, body) in [
        (
            "https://evilshop.example",
            json!({"site": "shop", "events": [pageview("t-4", "/")]}),
        ),
        (
            "https://shop.example",
            json!({"site": "nope", "events": [pageview("t-5", "/")]}),
        ),
        (
            "https://shop.example",
            json!({"domain": "nope.example", "events": [pageview("t-6", "/")]}),
        ),
    ] {
        let (status, answer) = track(origin, body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["reason"], "unknown_site", "{answer}");
    }
    // A field the tracker never sends refuses that event only.
    let odd = json!({"site": "shop", "events": [{"id": "t-7", "name": "x", "user_id": "u"}]});
    let (status, answer) = track("https://shop.example", odd).await;
    assert_eq!(
        (status, answer["results"][0]["reason"].clone()),
        (400, json!("unknown_field"))
    );

    let stored = events(&svc.js).await;
    assert_eq!(stored.len(), 3, "{stored:#?}");
    let view = only(&stored, "t-1");
    let signup = only(&stored, "t-2");
    assert_eq!(view["site"], "shop");
    assert_eq!(view["context"]["path"], "/pricing");
    assert_eq!(view["context"]["referrer_source"], "nl");
    assert_eq!(view["context"]["browser"], "Chrome");
    assert!(view["user_id"].is_null());
    let visitor = view["anonymous_id"].as_str().expect("a visitor id");
    assert!(visitor.starts_with('v') && visitor.len() == 33, "{visitor}");
    assert_eq!(signup["anonymous_id"], visitor, "one visitor, one id");
    assert_eq!(
        signup["revenue"],
        json!({"amount": "19.99", "currency": "EUR"})
    );
    // ts − sent_at before the receive time: 500 ms and 100 ms before it.
    let at = |e: &Value, field: &str| {
        chrono::DateTime::parse_from_rfc3339(e[field].as_str().expect("time")).expect("rfc 3339")
    };
    let before = |e: &Value| (at(e, "received_at") - at(e, "ts")).num_milliseconds();
    assert!((400..=600).contains(&before(view)), "{view}");
    assert!((0..=200).contains(&before(signup)), "{signup}");
    svc.shutdown().await;
}

#[tokio::test]
async fn browsers_may_read_retry_after_across_origins() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let answer = svc
        .http
        .post(format!("{}/api/v1/track", svc.url))
        .header("origin", "https://shop.example")
        .body(
            json!({"site": "shop", "sent_at": 1_000_000, "events": [pageview("c-1", "/")]})
                .to_string(),
        )
        .send()
        .await
        .expect("answer");
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert_eq!(header("access-control-allow-origin"), "*");
    assert!(header("access-control-expose-headers").contains("retry-after"));
    svc.shutdown().await;
}

#[tokio::test]
async fn plausible_engagement_is_the_reserved_ping_and_a_star_site_takes_any_domain() {
    let nats = TestServer::start().await;
    let mut setup = Setup::default();
    // A copy of the shop's settings, so a field added to sites needs no change here.
    let mut any = setup.sites[0].clone();
    any.id = "default".into();
    any.write_keys = vec!["wk_test_default_0000000".into()];
    any.domains = vec![beacon_core::site::ANY_DOMAIN.into()];
    setup.sites.push(any);
    let svc = support::start(&nats, setup).await;
    let send = |body: Value| {
        let svc = &svc;
        async move {
            svc.send(
                Method::POST,
                "/api/event",
                &[("user-agent", CHROME), ("content-type", "text/plain")],
                body.to_string(),
            )
            .await
        }
    };
    // What Plausible's own script sends when a page is left.
    let ping = json!({"n": "engagement", "u": "https://shop.example/a", "d": "shop.example",
        "r": null, "sd": 64, "e": 8200, "h": 0});
    assert_eq!(send(ping).await.0, 202);
    // A domain no site lists goes to the site that takes any.
    let unlisted = json!({"n": "pageview", "u": "https://new.example/", "d": "new.example"});
    assert_eq!(send(unlisted).await.0, 202);

    let stored = events(&svc.js).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        (
            stored[0]["site"].clone(),
            stored[0]["name"].clone(),
            stored[0]["props"].clone()
        ),
        (
            json!("shop"),
            json!(beacon_core::ENGAGEMENT),
            json!({(beacon_core::ENGAGED_MS_PROP): 8200, (beacon_core::SCROLL_DEPTH_PROP): 64})
        )
    );
    assert_eq!(stored[1]["site"], "default");
    svc.shutdown().await;
}

#[tokio::test]
async fn posthog_capture_v1_answers_a_result_per_uuid() {
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let body = json!({"created_at": "2026-11-25T10:00:00Z", "batch": [
        {"event": "$pageview", "uuid": "v1-1", "distinct_id": "d-1", "timestamp": chrono::Utc::now().to_rfc3339(),
         "session_id": "s-1", "options": {}, "properties": {"$current_url": "https://shop.example/a"}},
        {"event": "", "uuid": "v1-2", "distinct_id": "d-1", "options": {}, "properties": {}}]});
    let bearer = format!("Bearer {SHOP_KEY}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
        ("posthog-sdk-info", "posthog-node/5.0.0"),
    ];
    let (status, answer) = svc
        .send(
            Method::POST,
            "/i/v1/analytics/events",
            &headers,
            body.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"]["v1-1"], json!({"result": "ok"}));
    assert_eq!(answer["results"]["v1-2"]["result"], "drop");
    assert!(
        answer["results"]["v1-2"]["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("missing_name")),
        "{answer}"
    );
    // Sent again: already stored, still ok.
    let (_, again) = svc
        .send(
            Method::POST,
            "/i/v1/analytics/events",
            &headers,
            body.to_string(),
        )
        .await;
    assert_eq!(again["results"]["v1-1"], json!({"result": "ok"}));
    let (status, refused) = svc
        .send(
            Method::POST,
            "/i/v1/analytics/events",
            &[("authorization", "Bearer wk_not_a_known_key_00")],
            body.to_string(),
        )
        .await;
    assert_eq!(
        (status, refused["code"].clone()),
        (401, json!("unknown_key"))
    );

    let stored = events(&svc.js).await;
    assert_eq!(stored.len(), 1);
    let view = only(&stored, "v1-1");
    assert_eq!(
        (
            view["props"]["$session_id"].clone(),
            view["props"]["$lib"].clone()
        ),
        (json!("s-1"), json!("posthog-node"))
    );
    svc.shutdown().await;
}

/// The request docs/TRACKER.md shows is answered as it says.
#[tokio::test]
async fn the_documented_tracker_request_is_stored() {
    let doc = include_str!("../../../../docs/TRACKER.md");
    let start = doc.find("-d '").expect("the curl example") + 4;
    let body = &doc[start..start + doc[start..].find('\'').expect("its end")];
    let origin = doc[doc.find("-H 'Origin: ").expect("its origin") + 12..]
        .split('\'')
        .next()
        .expect("origin")
        .to_owned();
    let nats = TestServer::start().await;
    let svc = support::start(&nats, Setup::default()).await;
    let (status, answer) = svc
        .send(
            Method::POST,
            "/api/v1/track",
            &[("origin", origin.as_str())],
            body.to_owned(),
        )
        .await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (200, json!(1)),
        "{answer}"
    );
    let stored = events(&svc.js).await;
    let view = only(&stored, "9f1c0e4b2a7d4e21b0c3d5e6f7a8b9c0");
    assert_eq!(view["context"]["path"], "/pricing");
    svc.shutdown().await;
}
