//! Servers Beacon cannot use are refused with one clear error.

use beacon_nats::{ConnectError, check_server, connect};
use beacon_testing::TestServer;

#[tokio::test]
async fn a_server_older_than_2_11_is_refused_by_version() {
    let Some(old) = std::env::var_os("BEACON_TEST_OLD_NATS_SERVER") else {
        // scripts/test.sh always provides one; a bare `cargo test` may not.
        eprintln!(
            "SKIPPED: set BEACON_TEST_OLD_NATS_SERVER to a nats-server older than 2.11 (scripts/test.sh does)"
        );
        return;
    };
    let nats = TestServer::start_with(std::path::Path::new(&old), true).await;
    let client = connect(&nats.nats_config(), "beacon-test")
        .await
        .expect("connects");
    let err = check_server(&client).await.expect_err("refused");
    let found = client.server_info().version;
    assert!(matches!(err, ConnectError::TooOld { .. }));
    let text = err.to_string();
    assert!(text.contains(&found) && text.contains("2.11"), "{text}");
}

#[tokio::test]
async fn a_server_without_jetstream_is_refused() {
    let nats = TestServer::start_with(&beacon_testing::server_binary(), false).await;
    let client = connect(&nats.nats_config(), "beacon-test")
        .await
        .expect("connects");
    let err = check_server(&client).await.expect_err("refused");
    assert!(matches!(err, ConnectError::NoJetStream { .. }), "{err}");
    assert!(err.to_string().contains("JetStream disabled"));
}
