//! `beacon verify --truth FILE`: ask Beacon's query API the questions a
//! ground-truth file answers and print every difference. Counts, page views,
//! sessions, bounces and revenue must match exactly; unique users within the
//! sketch's error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::Value;

use crate::config::Config;
use crate::simulate::truth::{GroundTruth, TruthFile, utc};

/// HyperLogLog at lg_k 14 errs by 0.8 % (one standard error); allow three.
const USER_TOLERANCE: f64 = 0.025;
/// Minutes asked per time series (the API's limit is 1,500 points).
const MINUTES_PER_ASK: i64 = 1440;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The ground-truth file `beacon simulate --truth` wrote.
    #[arg(long)]
    pub truth: PathBuf,
    /// Beacon's URL (default: from collector.listen).
    #[arg(long, env = "BEACON_URL")]
    pub url: Option<String>,
    /// Read key (default: the site's first read key in the config).
    #[arg(long, env = "BEACON_READ_KEY")]
    pub key: Option<String>,
    /// How long to wait for Beacon to count everything it has stored.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub wait: Duration,
}

struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let response = self
            .client
            .get(&url)
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let body: Value = response.json().await.context("a JSON answer")?;
        if !status.is_success() {
            bail!("{url} answered {status}: {}", body["error"]);
        }
        Ok(body)
    }
}

pub async fn run(config: Config, args: VerifyArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.truth)
        .with_context(|| format!("cannot read {}", args.truth.display()))?;
    let file: TruthFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a ground-truth file", args.truth.display()))?;
    let base = crate::send::collector_url(&config, args.url.as_deref());
    let mut differences = Vec::new();
    let (mut events, mut minutes) = (0, 0);
    for (i, truth) in file.sites.iter().enumerate() {
        let key = match &args.key {
            Some(k) => k.clone(),
            None => config
                .sites
                .iter()
                .find(|s| s.id == truth.site)
                .and_then(|s| s.read_keys.first().map(|k| k.expose().to_owned()))
                .with_context(|| format!("no read key for site {:?}: pass --key", truth.site))?,
        };
        let api = Api {
            client: reqwest::Client::new(),
            base: base.clone(),
            key,
        };
        if i == 0 {
            wait_counted(&api, args.wait).await?;
        }
        let prefix = if file.sites.len() > 1 {
            format!("{}: ", truth.site)
        } else {
            String::new()
        };
        differences.extend(
            compare(&api, truth)
                .await?
                .into_iter()
                .map(|d| format!("{prefix}{d}")),
        );
        events += truth.events;
        minutes += truth.events_by_minute.len();
    }
    if differences.is_empty() {
        println!(
            "OK: Beacon's answers match {} ({events} events, {minutes} minutes{})",
            args.truth.display(),
            if file.sites.len() > 1 {
                format!(", {} sites", file.sites.len())
            } else {
                String::new()
            }
        );
        return Ok(());
    }
    for d in &differences {
        println!("{d}");
    }
    bail!(
        "{} differences from {}",
        differences.len(),
        args.truth.display()
    )
}

/// Wait (bounded) until no partition lags behind the stream.
async fn wait_counted(api: &Api, wait: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let status = api.get("/api/v1/status").await?;
        if status["ready"] == true && status["lag"] == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "Beacon has not counted everything after {wait:?} (lag {} events)",
                status["lag"]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ms(rfc3339: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(rfc3339)
        .with_context(|| format!("{rfc3339:?} is not a time"))?
        .timestamp_millis())
}

/// Every difference between Beacon's answers and `truth`.
async fn compare(api: &Api, truth: &GroundTruth) -> anyhow::Result<Vec<String>> {
    let mut diffs = Vec::new();
    if truth.events == 0 {
        return Ok(diffs);
    }
    let site = &truth.site;
    let (from, to) = (ms(&truth.from)?, ms(&truth.to)?);

    // Totals over the whole range.
    let summary = api
        .get(&format!(
            "/api/v1/sites/{site}/summary?from={}&to={}&metrics=events,pageviews,sessions,bounce_rate,users,revenue",
            truth.from, truth.to
        ))
        .await?;
    let value = |m: &str| summary["metrics"][m]["value"].clone();
    for (metric, want) in [
        ("events", truth.events),
        ("pageviews", truth.pageviews),
        ("sessions", truth.sessions),
    ] {
        if value(metric).as_u64() != Some(want) {
            diffs.push(format!("{metric}: Beacon {} , truth {want}", value(metric)));
        }
    }
    let bounce_rate = (truth.bounces as f64 / truth.sessions.max(1) as f64 * 1e4).round() / 1e4;
    if truth.sessions > 0 && value("bounce_rate").as_f64() != Some(bounce_rate) {
        diffs.push(format!(
            "bounce rate: Beacon {}, truth {bounce_rate} ({} bounces of {} sessions)",
            value("bounce_rate"),
            truth.bounces,
            truth.sessions
        ));
    }
    let users = value("users").as_f64().unwrap_or(-1.0);
    let want = truth.unique_users as f64;
    if (users - want).abs() > (want * USER_TOLERANCE).max(2.0) {
        diffs.push(format!(
            "unique users: Beacon {users}, truth {want} (more than {:.1} % apart)",
            USER_TOLERANCE * 100.0
        ));
    }
    let revenue: BTreeMap<String, String> =
        serde_json::from_value(value("revenue")).unwrap_or_default();
    if revenue != truth.revenue {
        diffs.push(format!(
            "revenue: Beacon {revenue:?}, truth {:?}",
            truth.revenue
        ));
    }

    // Events per page.
    let pages = api
        .get(&format!(
            "/api/v1/sites/{site}/breakdown?dimension=path&limit=1000&from={}&to={}",
            truth.from, truth.to
        ))
        .await?;
    let got: BTreeMap<String, u64> = pages["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["value"].as_str()?.to_owned(), r["count"].as_u64()?)))
        .collect();
    for path in truth.events_by_path.keys().chain(got.keys()) {
        let (b, t) = (got.get(path), truth.events_by_path.get(path));
        if b != t {
            diffs.push(format!(
                "events on page {path}: Beacon {}, truth {}",
                b.copied().unwrap_or(0),
                t.copied().unwrap_or(0)
            ));
        }
    }

    // Events by name and minute.
    let names: Vec<&String> = truth.events_by_name.keys().collect();
    let mut start = from;
    while start < to {
        let end = (start + MINUTES_PER_ASK * 60_000).min(to);
        for name in &names {
            let series = api
                .get(&format!(
                    "/api/v1/sites/{site}/timeseries?interval=1m&metrics=events&name={name}&from={}&to={}",
                    utc(start),
                    utc(end)
                ))
                .await?;
            for point in series["points"].as_array().into_iter().flatten() {
                let minute = point["start"].as_str().unwrap_or_default();
                let got = point["events"].as_u64().unwrap_or(0);
                let want = truth
                    .events_by_minute
                    .get(minute)
                    .and_then(|m| m.get(name.as_str()))
                    .copied()
                    .unwrap_or(0);
                if got != want {
                    diffs.push(format!(
                        "{name} events in minute {minute}: Beacon {got}, truth {want}"
                    ));
                }
            }
        }
        start = end;
    }
    Ok(diffs)
}
