//! Connecting to NATS with any of the credentials NATS supports, and refusing
//! servers Beacon cannot work with.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, ServerAddr};
use beacon_core::Secret;
use serde::{Deserialize, Serialize};

/// The oldest nats-server Beacon supports (per-message TTLs, metadata, priority groups).
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 11);

/// How to reach NATS. With no `urls`, `beacon up` starts a local server instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs, e.g. `["nats://n1:4222", "nats://n2:4222"]`.
    pub urls: Vec<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// An nkey seed (`SU…`).
    pub nkey_seed: Option<Secret>,
    /// A `.creds` file (JWT + nkey) as issued by `nsc`.
    pub creds_file: Option<PathBuf>,
    /// CA certificate(s) to trust for TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: bool,
    /// The local server: binary to run (else PATH, then the project's tools folder).
    pub server_binary: Option<PathBuf>,
    /// The local server's port; 0 picks a free one.
    pub server_port: u16,
}

impl NatsConfig {
    /// Problems a person must fix before Beacon can connect, all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for url in &self.urls {
            if url.parse::<ServerAddr>().is_err() {
                problems.push(format!(
                    "nats.urls: {:?} is not a NATS URL (nats://host:port)",
                    printable_url(url)
                ));
            }
        }
        if self.user.is_some() != self.password.is_some() {
            problems.push("nats.user and nats.password go together".to_owned());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push("nats.tls_cert and nats.tls_key go together".to_owned());
        }
        let files = [
            ("nats.creds_file", &self.creds_file),
            ("nats.tls_ca", &self.tls_ca),
            ("nats.tls_cert", &self.tls_cert),
            ("nats.tls_key", &self.tls_key),
        ];
        for (name, path) in files {
            if let Some(path) = path
                && !path.is_file()
            {
                problems.push(format!("{name}: {} does not exist", path.display()));
            }
        }
        problems
    }
}

/// Why Beacon could not use a NATS server.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Holds the URL as [`printable_url`] shows it.
    #[error("invalid NATS URL {0:?}")]
    BadUrl(String),
    #[error("cannot read NATS credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {urls}: {source}")]
    Connect {
        urls: String,
        source: async_nats::ConnectError,
    },
    #[error(
        "nats-server {found} is too old: Beacon needs {}.{} or newer (scripts/install-nats-server.sh installs one)",
        MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
    )]
    TooOld { found: String },
    #[error(
        "nats-server at {urls} has JetStream disabled: start it with -js (or `jetstream {{}}` in its config)"
    )]
    NoJetStream { urls: String },
    #[error("cannot check JetStream on {urls}: {source}")]
    Account {
        urls: String,
        source: async_nats::jetstream::context::AccountError,
    },
}

/// Connect, reconnecting forever after a loss. Use [`check_server`] before relying on it.
pub async fn connect(config: &NatsConfig, name: &str) -> Result<Client, ConnectError> {
    let addrs = config
        .urls
        .iter()
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|_| ConnectError::BadUrl(printable_url(u)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::debug!("connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("lost the NATS connection; reconnecting")
                }
                other => tracing::debug!(%other, "NATS event"),
            }
        });
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(seed) = &config.nkey_seed {
        options = options.nkey(seed.expose().to_owned());
    }
    if let Some(path) = &config.creds_file {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: path.clone(),
                    source,
                })?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.require_tls {
        options = options.require_tls(true);
    }
    options
        .connect(addrs)
        .await
        .map_err(|source| ConnectError::Connect {
            urls: printable_urls(&config.urls),
            source,
        })
}

/// A URL as it may be printed or logged: any password in it replaced by `***`.
/// Text that does not parse as a URL is not shown at all, since it may hold one.
pub fn printable_url(url: &str) -> String {
    let with_scheme = if url.contains("://") {
        url.to_owned()
    } else {
        format!("nats://{url}")
    };
    match url::Url::parse(&with_scheme) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if url.contains("://") {
                parsed.to_string()
            } else {
                parsed.to_string().trim_start_matches("nats://").to_owned()
            }
        }
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// Several URLs as [`printable_url`] shows them, comma-separated.
pub fn printable_urls(urls: &[String]) -> String {
    urls.iter()
        .map(|u| printable_url(u))
        .collect::<Vec<_>>()
        .join(",")
}

/// How many times `client` has connected so far (the first connect included).
pub fn connects(client: &Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Resolves once `client` has connected again after the `seen`-th connect.
///
/// Consumers a server held only in memory (every ordered consumer) are gone
/// after it restarts, and the client library notices that only after two
/// missed idle heartbeats (15 s each). Readers that must not freeze that long
/// reopen their feed as soon as this resolves.
pub async fn reconnected(client: &Client, seen: u64) {
    // The connection count is a plain counter: looking at it is free.
    while connects(client) <= seen {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Refuse servers older than 2.11 or without JetStream, naming what was found.
pub async fn check_server(client: &Client) -> Result<(), ConnectError> {
    let info = client.server_info();
    let urls = format!("{}:{}", info.host, info.port);
    if !version_supported(&info.version) {
        return Err(ConnectError::TooOld {
            found: info.version,
        });
    }
    let js = async_nats::jetstream::new(client.clone());
    use async_nats::jetstream::context::AccountErrorKind;
    match js.query_account().await {
        Ok(_) => Ok(()),
        // No responder for the JetStream API, or an API error saying it is off.
        Err(e)
            if matches!(
                e.kind(),
                AccountErrorKind::JetStream(_)
                    | AccountErrorKind::JetStreamUnavailable
                    | AccountErrorKind::TimedOut
            ) =>
        {
            Err(ConnectError::NoJetStream { urls })
        }
        Err(source) => Err(ConnectError::Account { urls, source }),
    }
}

/// Whether a server version string (e.g. `2.12.8`, `2.11.0-RC.1`) is 2.11 or newer.
pub fn version_supported(version: &str) -> bool {
    match semver::Version::parse(version.trim_start_matches('v')) {
        Ok(v) => (v.major, v.minor) >= MIN_SERVER_VERSION,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_supported("2.11.0"));
        assert!(version_supported("2.12.8"));
        assert!(version_supported("v3.0.0"));
        assert!(!version_supported("2.10.26"));
        assert!(!version_supported("2.9.25"));
        assert!(!version_supported("garbage"));
    }

    #[test]
    fn printed_urls_hold_no_password() {
        assert_eq!(
            printable_url("nats://beacon:s3cret@n1:4222"),
            "nats://beacon:***@n1:4222"
        );
        assert_eq!(printable_url("tls://n1:4222"), "tls://n1:4222");
        assert_eq!(printable_url("u:s3cret@n1:4222"), "u:***@n1:4222");
        assert!(!printable_url("nats://u:s3cret@[::bad").contains("s3cret"));
        let config = NatsConfig {
            password: Some("s3cret".into()),
            token: Some("t0ken".into()),
            nkey_seed: Some("SUAEXAMPLE".into()),
            ..NatsConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(
            ["s3cret", "t0ken", "SUAEXAMPLE"]
                .iter()
                .all(|s| !shown.contains(s)),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn a_failed_connection_names_the_url_without_its_password() {
        // Nothing listens on port 1 of loopback: the connection is refused at once.
        let config = NatsConfig {
            urls: vec!["nats://beacon:s3cret@127.0.0.1:1".into()],
            ..NatsConfig::default()
        };
        let error = connect(&config, "test")
            .await
            .expect_err("nothing listens there");
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("127.0.0.1:1"), "{shown}");
    }

    #[test]
    fn config_problems_are_all_reported() {
        let config = NatsConfig {
            urls: vec!["nats://ok:4222".into(), "::bad::".into()],
            user: Some("u".into()),
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..NatsConfig::default()
        };
        let problems = config.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
