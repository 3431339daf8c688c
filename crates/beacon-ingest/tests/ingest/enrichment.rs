//! Enrichment through the real collector: GeoIP from the database the set-up
//! installs (client addresses set through a trusted proxy's
//! `X-Forwarded-For`), running without one, campaigns and channels, and bots
//! flagged by reason unless their site keeps them.

use std::path::PathBuf;
use std::sync::Arc;

use beacon_core::Enricher;
use beacon_ingest::EnrichSettings;
use beacon_ingest::enrich::{self, geoip_path};
use beacon_testing::TestServer;
use serde_json::{Value, json};

use super::support::{self, BLOG_KEY, SHOP_KEY, Setup, events};

/// The database `scripts/install-geoip.sh` installs (`BEACON_TEST_GEOIP_DB`,
/// as scripts/test.sh sets it, or tools/geoip/country.mmdb).
fn installed_db() -> PathBuf {
    std::env::var_os("BEACON_TEST_GEOIP_DB")
        .map(PathBuf::from)
        .or_else(|| geoip_path(&EnrichSettings::default()))
        .expect("no GeoIP database: run scripts/install-geoip.sh (or set BEACON_TEST_GEOIP_DB)")
}

/// Post one native event from `client` (through the trusted proxy on
/// 127.0.0.1) and return what was stored for it.
async fn stored_from(svc: &support::Services, key: &str, client: &str, event: Value) -> Value {
    let id = event["id"].as_str().expect("an id").to_owned();
    let (status, answer) = svc
        .post_with(key, &[("x-forwarded-for", client)], event.to_string())
        .await;
    assert_eq!(status, 200, "{answer}");
    let stored = events(&svc.js).await;
    support::only(&stored, &id).clone()
}

fn behind_proxy() -> Setup {
    let mut setup = Setup::default();
    setup.collector.trusted_proxies = vec!["127.0.0.0/8".into()];
    setup
}

#[tokio::test]
async fn known_public_addresses_get_their_country_and_the_address_is_dropped() {
    let nats = TestServer::start().await;
    let mut setup = behind_proxy();
    let db = enrich::open_geoip(&installed_db()).expect("the installed database opens");
    setup.enricher = Enricher::new(Some(Arc::new(db)), []);
    let svc = support::start(&nats, setup).await;
    let cases = [
        ("g4", "8.8.8.8", Some("US")),
        ("g6", "2001:4860:4860::8888", Some("US")),
        ("ripe", "193.0.6.139", Some("NL")),
        ("private", "10.1.2.3", None),
    ];
    for (id, client, country) in cases {
        let e = stored_from(
            &svc,
            SHOP_KEY,
            client,
            json!({"id": id, "name": "x", "user_id": "u"}),
        )
        .await;
        assert_eq!(e["context"]["country"].as_str(), country, "{client}: {e}");
        assert!(
            e["context"].get("ip").is_none(),
            "the address is not kept: {e}"
        );
    }
    // A country the sender names wins over the lookup.
    let named = stored_from(
        &svc,
        SHOP_KEY,
        "8.8.8.8",
        json!({"id": "named", "name": "x", "user_id": "u", "context": {"country": "fr"}}),
    )
    .await;
    assert_eq!(named["context"]["country"], "FR");
    svc.shutdown().await;
}

#[tokio::test]
async fn without_a_database_events_are_still_accepted() {
    let nats = TestServer::start().await;
    let mut setup = behind_proxy();
    let missing = EnrichSettings {
        geoip_db: Some("/nonexistent/GeoLite2-City.mmdb".into()),
        ..EnrichSettings::default()
    };
    setup.enricher = enrich::load(&missing, &setup.sites);
    assert!(setup.enricher.geo().is_none());
    let garbage = std::env::temp_dir().join(format!("beacon-not-mmdb-{}", std::process::id()));
    std::fs::write(&garbage, b"not a database").expect("write");
    let err = enrich::open_geoip(&garbage).expect_err("not a MaxMind DB");
    assert!(err.to_string().contains("not a MaxMind DB"), "{err}");
    std::fs::remove_file(&garbage).expect("remove");
    let svc = support::start(&nats, setup).await;
    let e = stored_from(
        &svc,
        SHOP_KEY,
        "8.8.8.8",
        json!({"id": "a", "name": "x", "user_id": "u"}),
    )
    .await;
    assert!(e["context"].get("country").is_none(), "{e}");
    svc.shutdown().await;
}

#[tokio::test]
async fn campaigns_channels_operating_systems_and_bots_are_stored() {
    let nats = TestServer::start().await;
    let mut setup = behind_proxy();
    setup.sites[1].keep_bots = true;
    setup.enricher = enrich::load(
        &EnrichSettings {
            geoip_db: Some("".into()),
            ..EnrichSettings::default()
        },
        &setup.sites,
    );
    let svc = support::start(&nats, setup).await;
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    let e = stored_from(
        &svc,
        SHOP_KEY,
        "8.8.8.8",
        json!({"id": "c", "name": "pageview", "user_id": "u", "context": {
            "user_agent": iphone,
            "url": "https://shop.example/?utm_source=facebook&utm_medium=paid_social&utm_campaign=spring",
            "utm_content": "hero"}}),
    )
    .await;
    let c = &e["context"];
    assert_eq!(
        (
            &c["utm_source"],
            &c["utm_medium"],
            &c["utm_campaign"],
            &c["utm_content"]
        ),
        (
            &json!("facebook"),
            &json!("paid_social"),
            &json!("spring"),
            &json!("hero")
        )
    );
    assert_eq!(c["channel"], "Paid Social");
    assert_eq!(
        (&c["os"], &c["os_version"]),
        (&json!("iOS"), &json!("17.4"))
    );
    assert!(c.get("bot").is_none(), "{e}");

    let crawler = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    let bot = |id: &str| json!({"id": id, "name": "pageview", "user_id": "u", "context": {"user_agent": crawler}});
    let filtered = stored_from(&svc, SHOP_KEY, "8.8.8.8", bot("b1")).await;
    assert_eq!(
        filtered["context"]["bot"], "crawler",
        "stored, flagged: {filtered}"
    );
    // The blog keeps its bots: the same crawler is ordinary traffic there.
    let kept = stored_from(&svc, BLOG_KEY, "8.8.8.8", bot("b2")).await;
    assert!(kept["context"].get("bot").is_none(), "{kept}");
    svc.shutdown().await;
}
