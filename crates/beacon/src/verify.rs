//! `beacon verify --truth FILE`: ask Beacon's query API the questions a
//! ground-truth file answers and print every difference once, as an aligned
//! table. Beacon's answers must equal what it counted in the range before the
//! simulation plus what the simulation sent: counts, page views, sessions,
//! bounces and revenue exactly, unique users within the sketch's error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::Value;

use crate::config::Config;
use crate::simulate::truth::{Figures, GroundTruth, TruthFile, utc};

/// HyperLogLog at lg_k 14 errs by 0.8 % (one standard error); allow three.
const USER_TOLERANCE: f64 = 0.025;
/// Minutes asked per time series (the API's limit is 1,500 points).
const MINUTES_PER_ASK: i64 = 1440;
/// Rows asked per breakdown (the API's limit).
const ROWS: usize = 1000;

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

/// The query API of one site, with its read key.
pub struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    /// The API at `url` (default: the collector's address, which `beacon up`
    /// shares with the query API), reading with `key` or the site's first
    /// read key in the config.
    pub fn new(
        config: &Config,
        url: Option<&str>,
        key: Option<&str>,
        site: &str,
    ) -> anyhow::Result<Api> {
        let key = match key {
            Some(k) => k.to_owned(),
            None => config
                .sites
                .iter()
                .find(|s| s.id == site)
                .and_then(|s| s.read_keys.first().map(|k| k.expose().to_owned()))
                .with_context(|| format!("no read key for site {site:?}: pass --key"))?,
        };
        Ok(Api {
            client: reqwest::Client::new(),
            base: crate::send::collector_url(config, url),
            key,
        })
    }

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

    /// Wait (bounded) until the query node's own view counts every stored
    /// event: the status measures lag against what the node answers with, so
    /// lag 0 there means the answers are complete (the aggregators' positions
    /// alone run a few milliseconds ahead of a node's view).
    pub async fn wait_counted(&self, wait: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let status = self.get("/api/v1/status").await?;
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

    /// Beacon's figures for `site` over `from`..`to` (RFC 3339 minutes), and
    /// its bounce rate as answered. Bounces are not a metric of the API: they
    /// are worked back from the rate (four decimals), which is exact below
    /// 10,000 sessions.
    pub async fn figures(
        &self,
        site: &str,
        from: &str,
        to: &str,
    ) -> anyhow::Result<(Figures, Option<f64>)> {
        let summary = self
            .get(&format!(
                "/api/v1/sites/{site}/summary?from={from}&to={to}&metrics=events,pageviews,sessions,bounce_rate,users,revenue"
            ))
            .await?;
        let value = |m: &str| summary["metrics"][m]["value"].clone();
        let count = |m: &str| value(m).as_u64().unwrap_or(0);
        let sessions = count("sessions");
        let bounce_rate = value("bounce_rate").as_f64();
        let mut figures = Figures {
            events: count("events"),
            pageviews: count("pageviews"),
            unique_users: value("users").as_f64().unwrap_or(0.0).round() as u64,
            sessions,
            bounces: (bounce_rate.unwrap_or(0.0) * sessions as f64).round() as u64,
            revenue: serde_json::from_value(value("revenue")).unwrap_or_default(),
            ..Figures::default()
        };
        figures.events_by_path = self.breakdown(site, "path", from, to).await?;
        figures.events_by_name = self.breakdown(site, "name", from, to).await?;
        let (from_ms, to_ms) = (ms(from)?, ms(to)?);
        let mut start = from_ms;
        while start < to_ms {
            let end = (start + MINUTES_PER_ASK * 60_000).min(to_ms);
            for name in figures.events_by_name.keys() {
                let series = self
                    .get(&format!(
                        "/api/v1/sites/{site}/timeseries?interval=1m&metrics=events&name={name}&from={}&to={}",
                        utc(start),
                        utc(end)
                    ))
                    .await?;
                for point in series["points"].as_array().into_iter().flatten() {
                    let (Some(minute), Some(n)) =
                        (point["start"].as_str(), point["events"].as_u64())
                    else {
                        continue;
                    };
                    if n > 0 {
                        figures
                            .events_by_minute
                            .entry(minute.to_owned())
                            .or_default()
                            .insert(name.clone(), n);
                    }
                }
            }
            start = end;
        }
        Ok((figures, bounce_rate))
    }

    async fn breakdown(
        &self,
        site: &str,
        dimension: &str,
        from: &str,
        to: &str,
    ) -> anyhow::Result<BTreeMap<String, u64>> {
        let answer = self
            .get(&format!(
                "/api/v1/sites/{site}/breakdown?dimension={dimension}&metric=events&metrics=events&limit={ROWS}&from={from}&to={to}"
            ))
            .await?;
        Ok(answer["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["value"].as_str()?.to_owned(), r["count"].as_u64()?)))
            .collect())
    }
}

/// One figure where Beacon and the expectation differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub site: String,
    pub what: String,
    pub beacon: String,
    pub expected: String,
}

pub async fn run(config: Config, args: VerifyArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.truth)
        .with_context(|| format!("cannot read {}", args.truth.display()))?;
    let file: TruthFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a ground-truth file", args.truth.display()))?;
    let mut differences = Vec::new();
    let (mut events, mut minutes) = (0, 0);
    for (i, truth) in file.sites.iter().enumerate() {
        let api = Api::new(
            &config,
            args.url.as_deref(),
            args.key.as_deref(),
            &truth.site,
        )?;
        if i == 0 {
            api.wait_counted(args.wait).await?;
        }
        differences.extend(compare(&api, truth).await?);
        events += truth.sent.events;
        minutes += truth.sent.events_by_minute.len();
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
    print!("{}", table(&differences));
    bail!(
        "{} differences from {}",
        differences.len(),
        args.truth.display()
    )
}

fn ms(rfc3339: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(rfc3339)
        .with_context(|| format!("{rfc3339:?} is not a time"))?
        .timestamp_millis())
}

/// Every difference between Beacon's answers over the truth's range and what
/// it counted there before plus what the simulation sent.
async fn compare(api: &Api, truth: &GroundTruth) -> anyhow::Result<Vec<Difference>> {
    if truth.sent.events == 0 && truth.before == Figures::default() {
        return Ok(Vec::new());
    }
    let (got, bounce_rate) = api.figures(&truth.site, &truth.from, &truth.to).await?;
    Ok(differences(
        &truth.site,
        &truth.before.plus(&truth.sent),
        &got,
        bounce_rate,
    ))
}

/// Each figure that differs, once.
fn differences(
    site: &str,
    want: &Figures,
    got: &Figures,
    bounce_rate: Option<f64>,
) -> Vec<Difference> {
    let mut diffs = Vec::new();
    let mut differ = |what: String, beacon: String, expected: String| {
        if beacon != expected {
            diffs.push(Difference {
                site: site.to_owned(),
                what,
                beacon,
                expected,
            });
        }
    };
    for (metric, g, w) in [
        ("events", got.events, want.events),
        ("pageviews", got.pageviews, want.pageviews),
        ("sessions", got.sessions, want.sessions),
    ] {
        differ(metric.into(), g.to_string(), w.to_string());
    }
    if want.sessions > 0 {
        let rate = (want.bounces as f64 / want.sessions as f64 * 1e4).round() / 1e4;
        differ(
            "bounce rate".into(),
            bounce_rate.map_or("none".into(), |r| r.to_string()),
            rate.to_string(),
        );
    }
    let users = want.unique_users as f64;
    if (got.unique_users as f64 - users).abs() > (users * USER_TOLERANCE).max(2.0) {
        differ(
            format!("unique users (±{:.1} %)", USER_TOLERANCE * 100.0),
            got.unique_users.to_string(),
            want.unique_users.to_string(),
        );
    }
    let money = |r: &BTreeMap<String, String>| {
        if r.is_empty() {
            return "none".to_owned();
        }
        r.iter()
            .map(|(c, a)| format!("{a} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    differ("revenue".into(), money(&got.revenue), money(&want.revenue));
    let paths: BTreeSet<&String> = want
        .events_by_path
        .keys()
        .chain(got.events_by_path.keys())
        .collect();
    for path in paths {
        let count = |m: &BTreeMap<String, u64>| m.get(path).copied().unwrap_or(0).to_string();
        differ(
            format!("events on page {path}"),
            count(&got.events_by_path),
            count(&want.events_by_path),
        );
    }
    let cells: BTreeSet<(&String, &String)> = [want, got]
        .iter()
        .flat_map(|f| {
            f.events_by_minute
                .iter()
                .flat_map(|(minute, names)| names.keys().map(move |name| (minute, name)))
        })
        .collect();
    for (minute, name) in cells {
        let count = |f: &Figures| {
            f.events_by_minute
                .get(minute)
                .and_then(|m| m.get(name))
                .copied()
                .unwrap_or(0)
                .to_string()
        };
        differ(
            format!("{name} events in minute {minute}"),
            count(got),
            count(want),
        );
    }
    diffs
}

/// The differences as a table whose columns line up.
fn table(diffs: &[Difference]) -> String {
    let width = |f: fn(&Difference) -> &str, title: &str| {
        diffs
            .iter()
            .map(|d| f(d).chars().count())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let site = width(|d| &d.site, "SITE");
    let what = width(|d| &d.what, "DIFFERENCE");
    let beacon = width(|d| &d.beacon, "BEACON");
    let mut out = format!(
        "{:<site$}  {:<what$}  {:>beacon$}  EXPECTED\n",
        "SITE", "DIFFERENCE", "BEACON"
    );
    for d in diffs {
        out.push_str(&format!(
            "{:<site$}  {:<what$}  {:>beacon$}  {}\n",
            d.site, d.what, d.beacon, d.expected
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_difference_is_named_once_and_the_columns_line_up() {
        let mut want = Figures {
            events: 10,
            ..Figures::default()
        };
        want.events_by_path.insert("/a".into(), 4);
        want.events_by_path.insert("/b".into(), 6);
        let mut got = want.clone();
        got.events = 11;
        got.events_by_path.insert("/a".into(), 5);
        got.events_by_path.insert("/c".into(), 1);
        let diffs = differences("web", &want, &got, None);
        let named: Vec<&str> = diffs.iter().map(|d| d.what.as_str()).collect();
        assert_eq!(
            named,
            ["events", "events on page /a", "events on page /c"],
            "{diffs:?}"
        );
        let text = table(&diffs);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let column = |l: &str| l.find("EXPECTED").or_else(|| l.rfind(' ').map(|i| i + 1));
        assert!(
            lines.iter().all(|l| column(l) == column(lines[0])),
            "{text}"
        );
    }
}
