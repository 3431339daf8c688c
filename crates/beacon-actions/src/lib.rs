//! Beacon's actions service: rules on events ([`matcher`]) and on metrics and
//! schedules ([`evaluate`]) put jobs on the JetStream work queue
//! `BEACON_ACTIONS` ([`queue`]); workers ([`worker`]) deliver them as signed
//! webhooks or e-mail ([`deliver`], [`signature`]) with retries, and move what
//! keeps failing to the dead letters. Run any number of copies: they share one
//! consumer per input, and job ids keep firing to once per rule and window.

pub mod api;
pub mod deliver;
pub mod evaluate;
pub mod job;
pub mod matcher;
pub mod queue;
pub mod rule;
pub mod settings;
pub mod signature;
pub mod store;
pub mod worker;

use std::sync::Arc;

use beacon_core::Site;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

pub use self::deliver::{Deliverer, DeliveryError};
pub use self::job::{JOB_VERSION, Job, JobKind};
pub use self::queue::{ACTIONS_STREAM, JobCounts, counts, provision, replay_dead};
pub use self::rule::{RuleConfig, Rules};
pub use self::settings::{ActionsSettings, SmtpSecurity, SmtpSettings};
pub use self::store::RULES_BUCKET;

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
/// true, with the configured rules and those made through the API. When the
/// API changes a rule, the three stop (the workers finish the jobs in hand)
/// and start again with the new set. If one fails, the others are stopped and
/// the error returned. The `BEACON_ACTIONS` stream must exist ([`provision`]);
/// the rule bucket is created with `replicas` when missing.
pub async fn run(
    client: async_nats::Client,
    settings: ActionsSettings,
    sites: &[Site],
    replicas: usize,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ActionsError> {
    Rules::new(&settings.rules, sites, settings.smtp.is_some()).map_err(ActionsError::Config)?;
    let js = async_nats::jetstream::new(client.clone());
    let bucket = store::open(&js, replicas)
        .await
        .map_err(|e| ActionsError::nats("opening the rule store", e))?;
    loop {
        // Watch before reading, so no change slips in between.
        let mut changes = bucket
            .watch_all()
            .await
            .map_err(|e| ActionsError::nats("watching the rule store", e))?;
        let stored = store::all(&bucket)
            .await
            .map_err(|e| ActionsError::nats("reading the rule store", e))?;
        let rules = with_stored(&settings, sites, stored);
        let (restart, restarted) = watch::channel(false);
        let watcher = tokio::spawn(async move {
            let _ = changes.next().await;
            let _ = restart.send(true);
        });
        let result = run_rules(
            client.clone(),
            settings.clone(),
            rules,
            sites,
            shutdown.clone(),
            restarted,
        )
        .await;
        watcher.abort();
        result?;
        if *shutdown.borrow() {
            return Ok(());
        }
        tracing::info!("action rules changed; reloading them");
    }
}

/// The configured rules plus every stored one that is still valid (a site
/// may have gone from the config since it was made).
fn with_stored(settings: &ActionsSettings, sites: &[Site], stored: Vec<RuleConfig>) -> Arc<Rules> {
    let smtp = settings.smtp.is_some();
    let mut all = settings.rules.clone();
    for rule in stored {
        if all.iter().any(|r| r.id == rule.id) {
            tracing::warn!(rule = %rule.id, "a stored rule has the id of another; skipped");
            continue;
        }
        match Rules::new(std::slice::from_ref(&rule), sites, smtp) {
            Ok(_) => all.push(rule),
            Err(problems) => {
                tracing::warn!(rule = %rule.id, problems = %problems.join("; "), "a stored rule is no longer valid; skipped");
            }
        }
    }
    // Each rule was checked alone and ids are distinct, so the set is valid;
    // should it not be, the configured rules (checked at start) still run.
    let rules = Rules::new(&all, sites, smtp).or_else(|problems| {
        tracing::error!(problems = %problems.join("; "), "the stored rules are left out");
        Rules::new(&settings.rules, sites, smtp)
    });
    Arc::new(rules.unwrap_or_default())
}

async fn run_rules(
    client: async_nats::Client,
    settings: ActionsSettings,
    rules: Arc<Rules>,
    sites: &[Site],
    shutdown: watch::Receiver<bool>,
    restarted: watch::Receiver<bool>,
) -> Result<(), ActionsError> {
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
    // A failed part ends the others through this signal, so the workers
    // still finish the jobs in their hands.
    let (fail, failed) = watch::channel(false);
    let either = |failed: watch::Receiver<bool>| {
        let (shutdown, restarted) = (shutdown.clone(), restarted.clone());
        async move {
            futures::future::select_all([
                stopped(shutdown).boxed(),
                stopped(failed).boxed(),
                stopped(restarted).boxed(),
            ])
            .await;
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
