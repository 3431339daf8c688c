//! Every bad parameter and key case gets its status and a message that says
//! what is wrong, over HTTP and over NATS; a node still loading says so.

use beacon_query::{Op, Params, QueryNode};
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_keys_get_their_status_and_reason() {
    let s = setup(500).await;
    s.committed().await;
    let n = node(&s.client).await;
    n.ready().await;
    let site = "/api/v1/sites/site-0";
    let cases: Vec<(String, Option<&str>, u16, &str)> = vec![
        (format!("{site}/summary"), None, 401, "read key is required"),
        (format!("{site}/summary"), Some(WRITE), 401, "write key"),
        (
            format!("{site}/summary"),
            Some("rk_not_a_key_at_all"),
            401,
            "unknown read key",
        ),
        (
            format!("{site}/summary"),
            Some(READ_ONE),
            403,
            "does not grant access",
        ),
        (
            "/api/v1/sites/nope/summary".into(),
            Some(READ_ALL),
            404,
            "no site",
        ),
        (
            format!("{site}/cohorts"),
            Some(READ_ALL),
            404,
            "no operation",
        ),
        (
            format!("{site}/timeseries?interval=5m"),
            Some(READ_ALL),
            400,
            "not one of 1m, 1h, 1d",
        ),
        (
            format!("{site}/timeseries?interval=1m&from=-3d"),
            Some(READ_ALL),
            400,
            "range too large for interval 1m",
        ),
        (
            format!("{site}/summary?compare=custom&compare_from=-2d"),
            Some(READ_ALL),
            400,
            "compare=custom needs compare_from and compare_to",
        ),
        (
            format!("{site}/timeseries?metrics=events,visits"),
            Some(READ_ALL),
            400,
            "unknown metric \"visits\"",
        ),
        (
            format!("{site}/timeseries?filters=colour==red"),
            Some(READ_ALL),
            400,
            "unknown dimension \"colour\"",
        ),
        (
            format!("{site}/timeseries?filters=path~=%28"),
            Some(READ_ALL),
            400,
            "bad regular expression",
        ),
        (
            format!("{site}/timeseries?dimension=path"),
            Some(READ_ALL),
            400,
            "dimension does not apply to timeseries",
        ),
        (
            format!("{site}/summary?tz=Mars/Olympus"),
            Some(READ_ALL),
            400,
            "unknown time zone",
        ),
        (
            format!("{site}/summary?from=yesterday"),
            Some(READ_ALL),
            400,
            "is not a time",
        ),
        (
            format!("{site}/summary?from=-1h&to=-2h"),
            Some(READ_ALL),
            400,
            "must be before",
        ),
        (
            format!("{site}/summary?colour=red"),
            Some(READ_ALL),
            400,
            "unknown field `colour`",
        ),
        (
            format!("{site}/breakdown"),
            Some(READ_ALL),
            400,
            "dimension is required",
        ),
        (
            format!("{site}/breakdown?dimension=colour"),
            Some(READ_ALL),
            400,
            "unknown dimension",
        ),
        (
            format!("{site}/breakdown?dimension=path&limit=0"),
            Some(READ_ALL),
            400,
            "limit must be",
        ),
        (
            format!("{site}/breakdown?dimension=path&limit=many"),
            Some(READ_ALL),
            400,
            "bad query parameters",
        ),
        (
            format!("{site}/breakdown?dimension=path&filters=browser%3D%3D"),
            Some(READ_ALL),
            400,
            "empty value",
        ),
        (
            format!("{site}/breakdown?dimension=props.a%20b"),
            Some(READ_ALL),
            400,
            "a property key is 1 to 64 characters",
        ),
        (
            format!("{site}/live?from=-1h"),
            Some(READ_ALL),
            400,
            "live takes no parameters",
        ),
        ("/api/v1/sites".into(), None, 401, "read key is required"),
        ("/api/v1/status".into(), Some(WRITE), 401, "write key"),
    ];
    for (path, key, status, reason) in cases {
        let (got, body) = n.get(&path, key).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["status"], status, "{path}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(reason),
            "{path}: {message:?} lacks {reason:?}"
        );
    }
    let (_, sites) = n.get("/api/v1/sites", Some(READ_ONE)).await;
    assert_eq!(sites, json!({"sites": ["site-1"]}));

    // Over NATS: the same checks, as service errors.
    let nats_cases = [
        (
            "summary",
            json!({"key": "rk_not_a_key_at_all", "site": "site-0"}),
            "401",
            "unknown read key",
        ),
        (
            "summary",
            json!({"key": READ_ONE, "site": "site-0"}),
            "403",
            "does not grant",
        ),
        (
            "summary",
            json!({"key": READ_ALL, "site": "nope"}),
            "404",
            "no site",
        ),
        (
            "summary",
            json!({"key": READ_ALL}),
            "400",
            "site is required",
        ),
        (
            "timeseries",
            json!({"key": READ_ALL, "site": "site-0", "params": {"interval": "2h"}}),
            "400",
            "not one of",
        ),
        (
            "timeseries",
            json!({"key": READ_ALL, "site": "site-0", "colour": 1}),
            "400",
            "bad request body",
        ),
    ];
    for (op, body, code, reason) in nats_cases {
        let (got, message) = ask_nats(&s.client, op, body.clone())
            .await
            .expect_err("refused");
        assert_eq!(got, code, "{body}: {message}");
        assert!(
            message.contains(reason),
            "{body}: {message:?} lacks {reason:?}"
        );
    }
    s.stop_aggregator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_has_not_loaded_the_rollups_says_so() {
    let s = setup(10).await;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    // Not running: it never loads.
    let idle = QueryNode::new(s.client.clone(), &sites(), PARTITIONS, shutdown);
    let err = idle
        .answer(
            Op::Summary,
            Some(READ_ALL),
            Some("site-0"),
            &Params::default(),
        )
        .await
        .expect_err("not ready");
    assert_eq!(err.status, 503, "{err}");
    assert!(err.message.contains("still loading"), "{err}");
    s.stop_aggregator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes_and_parameters() {
    let s = setup(10).await;
    let n = node(&s.client).await;
    let (status, doc) = n.get("/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    let mut served: Vec<&str> = beacon_query::http::ROUTES.to_vec();
    documented.sort_unstable();
    served.sort_unstable();
    assert_eq!(documented, served);
    let resolve = |p: &Value| -> Value {
        match p["$ref"].as_str() {
            Some(r) => {
                let name = r.rsplit('/').next().expect("ref name");
                doc["components"]["parameters"][name].clone()
            }
            None => p.clone(),
        }
    };
    use beacon_query::engine::{
        BREAKDOWN_PARAMS, COMMON_PARAMS, SUMMARY_PARAMS, TIMESERIES_PARAMS,
    };
    let expected: [(&str, Vec<&str>); 3] = [
        (
            "timeseries",
            [&COMMON_PARAMS[..], &TIMESERIES_PARAMS[..]].concat(),
        ),
        (
            "summary",
            [&COMMON_PARAMS[..], &SUMMARY_PARAMS[..]].concat(),
        ),
        (
            "breakdown",
            [&COMMON_PARAMS[..], &BREAKDOWN_PARAMS[..]].concat(),
        ),
    ];
    use beacon_query::analysis::{FUNNEL_PARAMS, RETENTION_PARAMS};
    let common: Vec<&str> = COMMON_PARAMS.into_iter().filter(|p| *p != "tz").collect();
    let analysis = [
        (
            "goals/report",
            [
                &common[..],
                &beacon_query::analysis::goals::COMPARE_PARAMS[..],
            ]
            .concat(),
        ),
        ("funnel", [&common[..], &FUNNEL_PARAMS[..]].concat()),
        ("retention", [&common[..], &RETENTION_PARAMS[..]].concat()),
    ];
    for (op, mut want) in expected.into_iter().chain(analysis) {
        let get = &paths[&format!("/api/v1/sites/{{site}}/{op}")]["get"];
        let mut got: Vec<String> = get["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .map(resolve)
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().expect("name").to_owned())
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{op}");
    }
    s.stop_aggregator();
}
