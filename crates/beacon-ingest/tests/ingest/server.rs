//! Servers Beacon cannot use are refused with one clear error.

use beacon_nats::{ConnectError, NatsConfig, ServerOptions, check_server, connect};
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
    let nats = TestServer::start_with(std::path::Path::new(&old), ServerOptions::default()).await;
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
    let nats = TestServer::start_with(
        &beacon_testing::server_binary(),
        ServerOptions {
            jetstream: false,
            ..ServerOptions::default()
        },
    )
    .await;
    let client = connect(&nats.nats_config(), "beacon-test")
        .await
        .expect("connects");
    let err = check_server(&client).await.expect_err("refused");
    assert!(matches!(err, ConnectError::NoJetStream { .. }), "{err}");
    assert!(err.to_string().contains("JetStream disabled"));
}

/// Start a server that demands credentials; `args` are nats-server flags.
async fn secured(args: &[&str]) -> TestServer {
    let options = ServerOptions {
        extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..ServerOptions::default()
    };
    TestServer::start_with(&beacon_testing::server_binary(), options).await
}

async fn usable(config: &NatsConfig) -> Result<(), ConnectError> {
    let client = connect(config, "beacon-test").await?;
    check_server(&client).await
}

#[tokio::test]
async fn user_password_and_token_credentials_are_passed_through() {
    let nats = secured(&["--user", "beacon", "--pass", "s3cret-pass"]).await;
    let good = NatsConfig {
        user: Some("beacon".into()),
        password: Some("s3cret-pass".into()),
        ..nats.nats_config()
    };
    usable(&good).await.expect("user and password accepted");
    let wrong = NatsConfig {
        password: Some("wrong".into()),
        ..good
    };
    assert!(matches!(
        usable(&wrong).await,
        Err(ConnectError::Connect { .. })
    ));
    assert!(
        usable(&nats.nats_config()).await.is_err(),
        "no credentials, no entry"
    );

    let nats = secured(&["--auth", "tok-0123456789abcdef"]).await;
    let good = NatsConfig {
        token: Some("tok-0123456789abcdef".into()),
        ..nats.nats_config()
    };
    usable(&good).await.expect("token accepted");
    assert!(
        usable(&NatsConfig {
            token: Some("nope".into()),
            ..good
        })
        .await
        .is_err()
    );
}

#[tokio::test]
async fn nkey_credentials_are_passed_through() {
    let user = nkeys::KeyPair::new_user();
    let other = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("nkey.conf");
    std::fs::write(
        &config,
        format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
            user.public_key()
        ),
    )
    .expect("config");
    let nats = secured(&["--config", config.to_str().expect("utf-8 path")]).await;
    let good = NatsConfig {
        nkey_seed: Some(user.seed().expect("seed").into()),
        ..nats.nats_config()
    };
    usable(&good).await.expect("nkey accepted");
    let stranger = NatsConfig {
        nkey_seed: Some(other.seed().expect("seed").into()),
        ..nats.nats_config()
    };
    assert!(usable(&stranger).await.is_err());
}
