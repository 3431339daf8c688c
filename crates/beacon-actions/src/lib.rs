//! Beacon's actions service: rules on events ([`matcher`]) and on metrics and
//! schedules ([`evaluate`]) put jobs on the JetStream work queue
//! `BEACON_ACTIONS` ([`queue`]); workers ([`worker`]) deliver them as signed
//! webhooks or e-mail ([`deliver`], [`signature`]) with retries, and move what
//! keeps failing to the dead letters. Run any number of copies: they share one
//! consumer per input, and job ids keep firing to once per rule and window.

pub mod deliver;
pub mod evaluate;
pub mod job;
pub mod matcher;
pub mod queue;
pub mod rule;
pub mod settings;
pub mod signature;
pub mod worker;

use std::sync::Arc;

use beacon_core::Site;
use futures::FutureExt;
use tokio::sync::watch;

pub use self::deliver::{Deliverer, DeliveryError};
pub use self::job::{JOB_VERSION, Job, JobKind};
pub use self::queue::{ACTIONS_STREAM, JobCounts, counts, provision, replay_dead};
pub use self::rule::{RuleConfig, Rules};
pub use self::settings::{ActionsSettings, SmtpSecurity, SmtpSettings};

/// Why the actions service stopped.
#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    #[error("invalid actions config:\n{}", .0.join("\n"))]
    Config(Vec<String>),
    #[error("{0}")]
    Setup(#[from] deliver::SetupError),
    #[error("NATS: {action}: {message}")]
    Nats {
        action: &'static str,
        message: String,
    },
    #[error("{0}")]
    Stopped(&'static str),
}

impl ActionsError {
    pub(crate) fn nats(action: &'static str, e: impl std::fmt::Display) -> ActionsError {
        ActionsError::Nats {
            action,
            message: e.to_string(),
        }
    }
}

/// Run the matcher, the evaluator and the workers until `shutdown` turns
/// true. If one fails, the others are stopped and the error returned. The
/// `BEACON_ACTIONS` stream must exist ([`provision`]).
pub async fn run(
    client: async_nats::Client,
    settings: ActionsSettings,
    sites: &[Site],
    shutdown: watch::Receiver<bool>,
) -> Result<(), ActionsError> {
    let rules = Arc::new(
        Rules::new(&settings.rules, sites, settings.smtp.is_some())
            .map_err(ActionsError::Config)?,
    );
    let deliverer = Deliverer::new(
        rules.clone(),
        settings.webhook_timeout,
        settings.smtp.as_ref(),
    )?;
    let js = async_nats::jetstream::new(client.clone());
    let query = evaluate::Query::new(client, sites);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // A failed part ends the others through this second signal, so the
    // workers still finish the jobs in their hands.
    let (fail, failed) = watch::channel(false);
    let either = |failed: watch::Receiver<bool>| {
        let shutdown = shutdown.clone();
        async move {
            futures::future::select(stopped(shutdown).boxed(), stopped(failed).boxed()).await;
        }
    };
    let guard = |result: Result<(), ActionsError>| {
        if result.is_err() {
            let _ = fail.send(true);
        }
        result
    };
    let matcher = matcher::run(js.clone(), rules.clone(), either(failed.clone())).map(guard);
    let evaluator = evaluate::run(
        js.clone(),
        query,
        rules.clone(),
        settings.clone(),
        either(failed.clone()),
    )
    .map(guard);
    let workers = worker::run(js, settings, deliverer, either(failed)).map(guard);
    let (a, b, c) = tokio::join!(matcher, evaluator, workers);
    a.and(b).and(c)
}
