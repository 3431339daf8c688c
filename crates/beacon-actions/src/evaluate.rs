//! Metric rules and reports: once a window (or report period) has closed and
//! settled, ask the query service (`beacon.query.v1.*`, request-reply) for its
//! figures and enqueue a job when the rule fires. Every copy of the service
//! does this; the job's id (rule + window) makes JetStream keep one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use beacon_core::Site;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::ActionsError;
use crate::job::{JOB_VERSION, Job, JobKind};
use crate::queue::enqueue;
use crate::rule::{Bound, Measure, Rule, Rules, Trigger, interval_for};
use crate::settings::ActionsSettings;

/// The query service's subjects: `<prefix>.<operation>`.
const QUERY_PREFIX: &str = "beacon.query.v1";

/// Why a window could not be evaluated (it is tried again on the next tick,
/// while within `grace`).
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error("the query service did not answer: {0}")]
    Unanswered(String),
    #[error("the query service refused: {code} {message}")]
    Refused { code: String, message: String },
    #[error("unexpected answer from the query service: {0}")]
    Answer(String),
    #[error("{0}")]
    Enqueue(#[from] crate::queue::EnqueueError),
}

/// Asks the query service for a site's figures with the site's read key.
#[derive(Clone)]
pub struct Query {
    client: async_nats::Client,
    keys: Arc<HashMap<String, String>>,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query").finish_non_exhaustive()
    }
}

impl Query {
    pub fn new(client: async_nats::Client, sites: &[Site]) -> Query {
        let keys = sites
            .iter()
            .filter_map(|s| Some((s.id.clone(), s.read_keys.first()?.expose().to_owned())))
            .collect();
        Query {
            client,
            keys: Arc::new(keys),
        }
    }

    async fn ask(&self, op: &str, site: &str, params: Value) -> Result<Value, EvaluateError> {
        let body = json!({"key": self.keys.get(site), "site": site, "params": params});
        let request = async_nats::Request::new()
            .payload(Bytes::from(body.to_string()))
            .timeout(Some(Duration::from_secs(10)));
        let reply = self
            .client
            .send_request(format!("{QUERY_PREFIX}.{op}"), request)
            .await
            .map_err(|e| EvaluateError::Unanswered(e.to_string()))?;
        if let Some(code) = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
        {
            let message = reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error"))
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default();
            return Err(EvaluateError::Refused {
                code: code.as_str().to_owned(),
                message,
            });
        }
        serde_json::from_slice(&reply.payload).map_err(|e| EvaluateError::Answer(e.to_string()))
    }
}

fn rfc3339(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The window a rule looks at now: the last one that ended at least `settle`
/// ago, as (start, end) in Unix seconds.
fn due(rule: &Rule, now: i64, settle: Duration) -> Option<(i64, i64)> {
    let at = now - settle.as_secs() as i64;
    match &rule.trigger {
        Trigger::Threshold { measure, .. } | Trigger::Spike { measure, .. } => {
            let w = measure.window.as_secs() as i64;
            let end = at.div_euclid(w) * w;
            Some((end - w, end))
        }
        Trigger::Report { schedule } => Some(schedule.last_period(at)),
        Trigger::Event { .. } => None,
    }
}

/// The counts of `windows` consecutive windows ending at `end`, oldest first.
async fn counts(
    query: &Query,
    site: &str,
    measure: &Measure,
    end: i64,
    windows: u64,
) -> Result<Vec<u64>, EvaluateError> {
    let w = measure.window.as_secs() as i64;
    let (interval, step) = interval_for(measure.window);
    let mut params = json!({
        "from": rfc3339(end - w * windows as i64), "to": rfc3339(end),
        "interval": interval, "metrics": measure.metric.name(),
    });
    if let Some(name) = &measure.event {
        params["name"] = json!(name);
    }
    let answer = query.ask("timeseries", site, params).await?;
    let points = answer
        .get("points")
        .and_then(Value::as_array)
        .ok_or_else(|| EvaluateError::Answer("no points".to_owned()))?;
    let per_window = (w as u64 / step) as usize;
    let values: Vec<u64> = points
        .iter()
        .map(|p| {
            p.get(measure.metric.name())
                .and_then(Value::as_u64)
                .unwrap_or(0)
        })
        .collect();
    if values.len() != per_window * windows as usize {
        return Err(EvaluateError::Answer(format!(
            "{} points where {} were expected",
            values.len(),
            per_window * windows as usize
        )));
    }
    Ok(values.chunks(per_window).map(|c| c.iter().sum()).collect())
}

/// Evaluate `rule` for the window `(start, end)`: the job to enqueue, if it fires.
async fn evaluate(
    query: &Query,
    rule: &Rule,
    (start, end): (i64, i64),
) -> Result<Option<(JobKind, Value)>, EvaluateError> {
    let window = json!({"from": rfc3339(start), "to": rfc3339(end)});
    match &rule.trigger {
        Trigger::Threshold { measure, bound } => {
            let value = counts(query, &rule.site, measure, end, 1).await?[0];
            let (fires, condition) = match *bound {
                Bound::Above(n) => (value > n, format!("above {n}")),
                Bound::Below(n) => (value < n, format!("below {n}")),
            };
            Ok(fires.then(|| {
                let mut data = json!({
                    "metric": measure.metric.name(), "event": measure.event,
                    "value": value, "condition": condition,
                    "window_seconds": measure.window.as_secs(),
                });
                merge(&mut data, &window);
                (JobKind::Threshold, data)
            }))
        }
        Trigger::Spike {
            measure,
            baseline,
            factor,
            min,
        } => {
            let all = counts(query, &rule.site, measure, end, u64::from(*baseline) + 1).await?;
            let (before, now) = all.split_at(all.len() - 1);
            let value = now[0];
            let mean = before.iter().sum::<u64>() as f64 / before.len() as f64;
            let fires = value >= *min && value as f64 > factor * mean;
            Ok(fires.then(|| {
                let mut data = json!({
                    "metric": measure.metric.name(), "event": measure.event, "value": value,
                    "baseline_mean": (mean * 100.0).round() / 100.0, "baseline_windows": baseline,
                    "factor": factor, "window_seconds": measure.window.as_secs(),
                });
                merge(&mut data, &window);
                (JobKind::Spike, data)
            }))
        }
        Trigger::Report { .. } => {
            let params = json!({"from": rfc3339(start), "to": rfc3339(end)});
            let summary = query.ask("summary", &rule.site, params).await?;
            let mut data = window;
            data["summary"] = summary;
            Ok(Some((JobKind::Report, data)))
        }
        Trigger::Event { .. } => Ok(None),
    }
}

fn merge(data: &mut Value, extra: &Value) {
    if let (Some(data), Some(extra)) = (data.as_object_mut(), extra.as_object()) {
        data.extend(extra.clone());
    }
}

/// Evaluate metric rules and reports once a second until `stop` resolves.
pub async fn run(
    js: async_nats::jetstream::Context,
    query: Query,
    rules: Arc<Rules>,
    settings: ActionsSettings,
    stop: impl Future<Output = ()>,
) -> Result<(), ActionsError> {
    let timed: Vec<&Rule> = rules
        .iter()
        .filter(|r| !matches!(r.trigger, Trigger::Event { .. }))
        .collect();
    if timed.is_empty() {
        stop.await;
        return Ok(());
    }
    // The last window each rule was evaluated for, in this process.
    let mut done: HashMap<String, i64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick() => {}
        }
        let now = Utc::now().timestamp();
        for rule in &timed {
            let Some(window) = due(rule, now, settings.settle) else {
                continue;
            };
            if done.get(&rule.id).is_some_and(|&end| end >= window.1) {
                continue;
            }
            if now - window.1 > settings.grace.as_secs() as i64 {
                // Too late to be sure no other copy fired it already.
                tracing::debug!(rule = %rule.id, "window closed too long ago; not evaluated");
                done.insert(rule.id.clone(), window.1);
                continue;
            }
            match evaluate(&query, rule, window).await {
                Ok(fired) => {
                    if let Some((kind, data)) = fired {
                        let key = format!("{}/{}", rule.id, rfc3339(window.0));
                        let mut failed = None;
                        for target in &rule.targets {
                            let job = Job {
                                v: JOB_VERSION,
                                key: key.clone(),
                                rule: rule.id.clone(),
                                site: rule.site.clone(),
                                kind,
                                target: target.name().to_owned(),
                                created_at: Utc::now(),
                                data: data.clone(),
                            };
                            if let Err(e) = enqueue(&js, &job).await {
                                failed = Some(e);
                            }
                        }
                        if let Some(e) = failed {
                            tracing::warn!(rule = %rule.id, error = %e, "cannot enqueue; trying again");
                            continue;
                        }
                        tracing::info!(rule = %rule.id, %key, "rule fired");
                    }
                    done.insert(rule.id.clone(), window.1);
                }
                Err(e) => {
                    tracing::warn!(rule = %rule.id, error = %e, "cannot evaluate; trying again");
                }
            }
        }
    }
}
