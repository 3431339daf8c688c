//! The client's own wire types against Beacon's: what it sends passes Beacon's
//! validation unchanged, and what Beacon stores reads back field for field.

use beacon_client::{Context, Event, StoredEvent};
use beacon_core::{IdSource, Limits, Origin, normalize};
use serde_json::json;

fn origin() -> Origin<'static> {
    Origin {
        site: "shop",
        received_at: chrono::Utc::now(),
        user_agent: None,
        ip: None,
        id_source: IdSource::Random,
        partitions: 16,
    }
}

#[test]
fn a_full_event_passes_beacons_validation_as_sent() {
    let event = Event::new("purchase")
        .user("u-123")
        .anonymous("a-9f2")
        .prop("path", "/checkout")
        .prop("plan", "pro")
        .prop("items", json!([{"sku": "a", "qty": 2}]))
        .revenue("19.99", "USD")
        .context(Context {
            user_agent: Some(
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0".into(),
            ),
            url: Some("https://shop.example/checkout?utm_source=news".into()),
            referrer: Some("https://www.google.com/".into()),
            ip: Some("203.0.113.9".into()),
            country: Some("DE".into()),
        });
    let sent = serde_json::to_value(&event).expect("json");
    let stored = normalize(sent, 0, &origin(), &Limits::default()).expect("Beacon accepts it");
    assert_eq!(stored.id, event.id);
    assert_eq!(stored.name, "purchase");
    assert_eq!(stored.user_id.as_deref(), Some("u-123"));
    assert_eq!(stored.anonymous_id.as_deref(), Some("a-9f2"));
    assert_eq!(
        stored.ts.timestamp_millis(),
        event.ts.expect("ts").timestamp_millis()
    );
    assert_eq!(stored.props, event.props);
    let revenue = stored.revenue.clone().expect("revenue");
    assert_eq!(revenue.amount.to_string(), "19.99");
    assert_eq!(stored.context.country.as_deref(), Some("DE"));
    assert_eq!(stored.context.browser.as_deref(), Some("Firefox"));

    // And the stored form reads back into the client's StoredEvent, losslessly.
    let stored_json = serde_json::to_value(&stored).expect("json");
    let read: StoredEvent = serde_json::from_value(stored_json.clone()).expect("reads");
    assert_eq!(read.id, event.id);
    assert_eq!(read.partition, stored.partition);
    assert_eq!(serde_json::to_value(&read).expect("json"), stored_json);
}

#[test]
fn every_field_beacon_stores_is_read() {
    // Compare the field lists serde knows for Beacon's types and the client's.
    assert_eq!(
        fields::<beacon_core::Event>(),
        fields::<StoredEvent>(),
        "a field of Beacon's stored event is missing here, or the reverse"
    );
    assert_eq!(
        fields::<beacon_core::Context>(),
        fields::<beacon_client::StoredContext>()
    );
    assert_eq!(
        fields::<beacon_core::Revenue>(),
        fields::<beacon_client::Revenue>()
    );
}

/// The field names of a struct, as its `Deserialize` implementation lists them.
fn fields<T: serde::de::DeserializeOwned>() -> Vec<&'static str> {
    struct Names(Vec<&'static str>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Names {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0.extend_from_slice(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut names = Names(Vec::new());
    let _ = T::deserialize(&mut names);
    let mut list = names.0;
    list.sort_unstable();
    list
}

#[test]
fn event_name_filters_use_beacons_subject_tokens() {
    // The subscriber filters on `beacon.events.*.<site>.<token>`: its tokens
    // must be the ones Beacon's subjects carry.
    for name in [
        "purchase",
        "sign up.clicked*>",
        "購入",
        "",
        &"x".repeat(100),
    ] {
        let subject = beacon_core::subject::event_subject(3, "shop", name);
        let token = subject.rsplit('.').next().expect("token");
        assert_eq!(
            beacon_client::subscribe::subject_token(name),
            token,
            "{name}"
        );
    }
}
