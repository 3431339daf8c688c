//! Property tests of everything a query's input reaches before any rollup is
//! read: the URL query string, the NATS request body, and the range, interval,
//! time zone, filter, dimension and limit parsers behind both. Whatever
//! arrives, the engine answers or refuses with a 4xx, never panics, and never
//! builds more than its bounds allow. Bounded case counts keep this quick.

use beacon_query::engine::{self, MAX_LIMIT};
use beacon_query::service::Request;
use beacon_query::{Params, QueryError};
use beacon_rollup::View;
use proptest::prelude::*;
use serde_json::{Value, json};

const NOW: i64 = 1_790_000_000_000;
const CASES: u32 = 384;

type Answer = fn(&View, &str, &Params, i64) -> Result<String, QueryError>;
const OPS: [Answer; 3] = [engine::timeseries, engine::summary, engine::breakdown];

/// Text that looks like a range, an interval, a zone, a dimension or a number,
/// with the sharp edges nearby.
fn param_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,20}",
        "-[0-9]{0,25}[mhdé]?",
        "--[0-9]{1,20}[mhd]",
        "[+-]?[0-9]{1,6}-[0-9]{2}-[0-9]{2}",
        "[+-]?[0-9]{4,6}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})",
        prop::sample::select(
            &[
                "now",
                "1m",
                "1h",
                "1d",
                "UTC",
                "Europe/Berlin",
                "Asia/Kolkata",
                "Pacific/Kiritimati",
                "name",
                "path",
                "entry_page",
                "events",
                "users,events",
                "pageviews",
                "-0d",
                "9999-12-31",
                "1970-01-01",
                "-100000d",
                "-100001d",
            ][..]
        )
        .prop_map(str::to_owned),
    ]
}

/// Every parameter the engine knows (its own lists, so a new one is fuzzed
/// too), and one it does not.
fn keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = engine::COMMON_PARAMS
        .iter()
        .chain(&engine::TIMESERIES_PARAMS)
        .chain(&engine::SUMMARY_PARAMS)
        .chain(&engine::BREAKDOWN_PARAMS)
        .copied()
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.push("bogus");
    keys
}

fn check(result: Result<String, QueryError>) -> Result<(), TestCaseError> {
    match result {
        Ok(json) => {
            let answer: Value = serde_json::from_str(&json).expect("answers are JSON");
            if let Some(points) = answer["points"].as_array() {
                prop_assert!(points.len() <= engine::MAX_POINTS);
            }
            if let Some(rows) = answer["rows"].as_array() {
                prop_assert!(rows.len() <= MAX_LIMIT as usize);
            }
        }
        Err(e) => {
            prop_assert!((400..500).contains(&e.status), "{e}");
            prop_assert!(!e.message.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// A URL query of known and unknown keys with hostile values.
    #[test]
    fn any_url_query_is_answered_or_refused(
        pairs in prop::collection::vec((prop::sample::select(keys()), param_text()), 0..6),
    ) {
        let query = serde_urlencoded::to_string(&pairs).expect("encodes");
        let view = View::default();
        match Params::from_query(&query) {
            Ok(params) => {
                for op in OPS {
                    check(op(&view, "shop", &params, NOW))?;
                }
            }
            Err(e) => prop_assert_eq!(e.status, 400),
        }
    }

    /// Arbitrary raw query strings (not produced by an encoder).
    #[test]
    fn any_raw_query_is_parsed_or_refused(query in "\\PC{0,80}") {
        if let Ok(params) = Params::from_query(&query) {
            for op in OPS {
                check(op(&View::default(), "shop", &params, NOW))?;
            }
        }
    }

    /// Arbitrary NATS request bodies: bytes, and JSON with any parameter values.
    #[test]
    fn any_nats_body_is_read_or_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..128),
        from in param_text(), to in param_text(), limit in any::<i64>(), tz in param_text(),
    ) {
        let _ = serde_json::from_slice::<Request>(&bytes);
        let body = json!({"key": "k", "site": "shop",
            "params": {"from": from, "to": to, "limit": limit, "tz": tz, "dimension": "name"}});
        if let Ok(request) = serde_json::from_slice::<Request>(body.to_string().as_bytes()) {
            check(engine::breakdown(&View::default(), "shop", &request.params, NOW))?;
        }
    }
}
