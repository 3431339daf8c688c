//! Rules: what operators write (`[[actions.rules]]`, one flat table per rule),
//! checked once into typed rules with every problem named.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use beacon_core::{Event, Secret, Site};
use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

/// A rule as written in the config file. Which fields apply depends on `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Lowercase letters, digits, `-` and `_`; part of every idempotency key.
    pub id: String,
    pub site: String,
    pub kind: RuleKind,
    /// Event rules: the event name to match. Metric rules: count only this event.
    #[serde(default)]
    pub event: Option<String>,
    /// Event rules: properties that must equal these values.
    #[serde(default, rename = "where")]
    pub conditions: BTreeMap<String, Value>,
    /// Metric rules: `events` (the default) or `pageviews`.
    #[serde(default)]
    pub metric: Option<String>,
    /// Metric rules: the window counted, a whole number of minutes.
    #[serde(default, with = "humantime_serde::option")]
    pub window: Option<Duration>,
    /// Threshold rules: fire when the window's count is above this.
    #[serde(default)]
    pub above: Option<u64>,
    /// Threshold rules: fire when the window's count is below this.
    #[serde(default)]
    pub below: Option<u64>,
    /// Spike rules: fire when the window's count exceeds `factor` × the mean of
    /// the `baseline` windows before it …
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub baseline: Option<u32>,
    /// … and is at least `min`.
    #[serde(default)]
    pub min: Option<u64>,
    /// Report rules: `daily`, `weekly`, or `every 15m` (any whole number of minutes).
    #[serde(default)]
    pub schedule: Option<String>,
    /// Where to POST the job.
    #[serde(default)]
    pub webhook: Option<String>,
    /// The webhook's signing secret.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// `json` (the default) or `slack` (an incoming-webhook `{"text": …}` body).
    #[serde(default)]
    pub format: Option<WebhookFormat>,
    /// Addresses to e-mail (needs `[actions.smtp]`).
    #[serde(default)]
    pub email: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Event,
    Threshold,
    Spike,
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub site: String,
    pub trigger: Trigger,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone)]
pub enum Trigger {
    Event {
        name: String,
        conditions: BTreeMap<String, Value>,
    },
    Threshold {
        measure: Measure,
        bound: Bound,
    },
    Spike {
        measure: Measure,
        baseline: u32,
        factor: f64,
        min: u64,
    },
    Report {
        schedule: Schedule,
    },
}

/// What a metric rule counts, per window.
#[derive(Debug, Clone)]
pub struct Measure {
    pub metric: Metric,
    pub event: Option<String>,
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Events,
    Pageviews,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Events => "events",
            Metric::Pageviews => "pageviews",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Above(u64),
    Below(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// UTC days.
    Daily,
    /// UTC weeks from Monday.
    Weekly,
    /// Periods of this length, counted from the Unix epoch.
    Every(Duration),
}

#[derive(Debug, Clone)]
pub enum Target {
    Webhook(Webhook),
    Email(Vec<Mailbox>),
}

impl Target {
    /// The name a job carries to say which of its rule's targets it is for.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Webhook(_) => "webhook",
            Target::Email(_) => "email",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: Url,
    pub secret: Option<Secret>,
    pub format: WebhookFormat,
}

const MINUTE: u64 = 60;
/// The query service answers at most this many points per time series.
const MAX_POINTS: u64 = 1_500;

impl Schedule {
    fn parse(text: &str) -> Result<Schedule, String> {
        match text.trim() {
            "daily" => Ok(Schedule::Daily),
            "weekly" => Ok(Schedule::Weekly),
            other => {
                let every = other.strip_prefix("every ").ok_or_else(|| {
                    format!("schedule {other:?} is not daily, weekly or \"every <duration>\"")
                })?;
                let period = humantime_serde::re::humantime::parse_duration(every.trim())
                    .map_err(|e| format!("schedule {other:?}: {e}"))?;
                whole_minutes(period)
                    .map(|_| Schedule::Every(period))
                    .ok_or_else(|| format!("schedule {other:?} must be a whole number of minutes"))
            }
        }
    }

    /// The period that ends last at or before `t` (Unix seconds): its start and end.
    pub fn last_period(self, t: i64) -> (i64, i64) {
        const DAY: i64 = 86_400;
        // 1970-01-01 was a Thursday: Mondays are 4 days off the epoch.
        let (len, offset) = match self {
            Schedule::Daily => (DAY, 0),
            Schedule::Weekly => (7 * DAY, 4 * DAY),
            Schedule::Every(d) => (d.as_secs() as i64, 0),
        };
        let end = (t - offset).div_euclid(len) * len + offset;
        (end - len, end)
    }
}

fn whole_minutes(d: Duration) -> Option<u64> {
    let secs = d.as_secs();
    (d.subsec_nanos() == 0 && secs >= MINUTE && secs.is_multiple_of(MINUTE))
        .then_some(secs / MINUTE)
}

/// The query interval that tiles `window` with the fewest points.
pub fn interval_for(window: Duration) -> (&'static str, u64) {
    let secs = window.as_secs();
    if secs.is_multiple_of(86_400) {
        ("1d", 86_400)
    } else if secs.is_multiple_of(3_600) {
        ("1h", 3_600)
    } else {
        ("1m", MINUTE)
    }
}

impl Trigger {
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Trigger::Event { name, conditions } => {
                event.name == *name
                    && conditions
                        .iter()
                        .all(|(key, want)| event.props.get(key) == Some(want))
            }
            _ => false,
        }
    }
}

/// Every checked rule, by id.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    by_id: BTreeMap<String, Rule>,
}

impl Rules {
    /// Check every rule; `Err` names each problem.
    pub fn new(configs: &[RuleConfig], sites: &[Site], smtp: bool) -> Result<Rules, Vec<String>> {
        let mut problems = Vec::new();
        let mut by_id = BTreeMap::new();
        let mut seen = HashSet::new();
        for config in configs {
            match check(config, sites, smtp) {
                Ok(rule) => {
                    if !seen.insert(rule.id.clone()) {
                        problems.push(format!("actions.rules: the id {:?} is used twice", rule.id));
                    }
                    by_id.insert(rule.id.clone(), rule);
                }
                Err(more) => problems.extend(
                    more.into_iter()
                        .map(|p| format!("actions.rules {:?}: {p}", config.id)),
                ),
            }
        }
        if problems.is_empty() {
            Ok(Rules { by_id })
        } else {
            Err(problems)
        }
    }

    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.by_id.values()
    }

    /// The sites that have event rules.
    pub fn event_sites(&self) -> Vec<String> {
        let mut sites: Vec<String> = self
            .iter()
            .filter(|r| matches!(r.trigger, Trigger::Event { .. }))
            .map(|r| r.site.clone())
            .collect();
        sites.sort();
        sites.dedup();
        sites
    }
}

fn check(c: &RuleConfig, sites: &[Site], smtp: bool) -> Result<Rule, Vec<String>> {
    let mut problems = Vec::new();
    let id_ok = !c.id.is_empty()
        && c.id.len() <= 64
        && c.id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !id_ok {
        problems.push("id must be 1 to 64 lowercase letters, digits, '-' or '_'".to_owned());
    }
    let site = sites.iter().find(|s| s.id == c.site);
    if site.is_none() {
        problems.push(format!("site {:?} is not configured in [[sites]]", c.site));
    }
    let unused = |field: &str, set: bool, problems: &mut Vec<String>| {
        if set {
            problems.push(format!("{field} does not apply to a {:?} rule", c.kind));
        }
    };
    let windowed = matches!(c.kind, RuleKind::Threshold | RuleKind::Spike);
    unused(
        "where",
        !c.conditions.is_empty() && c.kind != RuleKind::Event,
        &mut problems,
    );
    unused("metric", c.metric.is_some() && !windowed, &mut problems);
    unused("window", c.window.is_some() && !windowed, &mut problems);
    let threshold = c.kind == RuleKind::Threshold;
    unused("above", c.above.is_some() && !threshold, &mut problems);
    unused("below", c.below.is_some() && !threshold, &mut problems);
    let spike = c.kind == RuleKind::Spike;
    unused("factor", c.factor.is_some() && !spike, &mut problems);
    unused("baseline", c.baseline.is_some() && !spike, &mut problems);
    unused("min", c.min.is_some() && !spike, &mut problems);
    unused(
        "schedule",
        c.schedule.is_some() && c.kind != RuleKind::Report,
        &mut problems,
    );
    unused(
        "event",
        c.event.is_some() && c.kind == RuleKind::Report,
        &mut problems,
    );

    let measure = |problems: &mut Vec<String>, baseline: u64| {
        let metric = match c.metric.as_deref() {
            None | Some("events") => Metric::Events,
            Some("pageviews") => Metric::Pageviews,
            Some(other) => {
                problems.push(format!("metric {other:?} is not events or pageviews"));
                Metric::Events
            }
        };
        let window = match c.window {
            Some(w) if whole_minutes(w).is_some() => {
                let (_, step) = interval_for(w);
                if (baseline + 1) * w.as_secs() / step > MAX_POINTS {
                    problems.push(format!(
                        "window × (baseline + 1) spans more than {MAX_POINTS} query points; use a shorter baseline"
                    ));
                }
                w
            }
            Some(_) => {
                problems.push("window must be a whole number of minutes".to_owned());
                Duration::from_secs(MINUTE)
            }
            None => {
                problems.push("window is required (e.g. \"10m\")".to_owned());
                Duration::from_secs(MINUTE)
            }
        };
        if c.event.as_deref().is_some_and(str::is_empty) {
            problems.push("event is empty".to_owned());
        }
        Measure {
            metric,
            event: c.event.clone(),
            window,
        }
    };
    let trigger = match c.kind {
        RuleKind::Event => match c.event.as_deref() {
            Some(name) if !name.is_empty() => Trigger::Event {
                name: name.to_owned(),
                conditions: c.conditions.clone(),
            },
            _ => {
                problems.push("event (the name to match) is required".to_owned());
                Trigger::Event {
                    name: String::new(),
                    conditions: BTreeMap::new(),
                }
            }
        },
        RuleKind::Threshold => {
            let bound = match (c.above, c.below) {
                (Some(n), None) => Bound::Above(n),
                (None, Some(n)) => Bound::Below(n),
                _ => {
                    problems.push("set exactly one of above or below".to_owned());
                    Bound::Above(0)
                }
            };
            Trigger::Threshold {
                measure: measure(&mut problems, 0),
                bound,
            }
        }
        RuleKind::Spike => {
            let baseline = c.baseline.unwrap_or(6);
            let factor = c.factor.unwrap_or(3.0);
            if baseline == 0 {
                problems.push("baseline must be at least 1 window".to_owned());
            }
            if !(factor.is_finite() && factor >= 1.0) {
                problems.push("factor must be a number of at least 1".to_owned());
            }
            Trigger::Spike {
                measure: measure(&mut problems, u64::from(baseline)),
                baseline,
                factor,
                min: c.min.unwrap_or(10),
            }
        }
        RuleKind::Report => match c.schedule.as_deref().map(Schedule::parse) {
            Some(Ok(schedule)) => Trigger::Report { schedule },
            Some(Err(e)) => {
                problems.push(e);
                Trigger::Report {
                    schedule: Schedule::Daily,
                }
            }
            None => {
                problems.push(
                    "schedule is required (daily, weekly or \"every <duration>\")".to_owned(),
                );
                Trigger::Report {
                    schedule: Schedule::Daily,
                }
            }
        },
    };
    if (windowed || c.kind == RuleKind::Report) && site.is_some_and(|s| s.read_keys.is_empty()) {
        problems.push(format!(
            "site {:?} has no read_keys: metric rules and reports read its numbers with one",
            c.site
        ));
    }

    let mut targets = Vec::new();
    if let Some(url) = &c.webhook {
        match Url::parse(url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {
                let format = c.format.unwrap_or_default();
                if c.secret.is_none() && format == WebhookFormat::Json {
                    problems.push("secret is required to sign a json webhook".to_owned());
                }
                if c.secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
                    problems.push("secret must be at least 16 characters".to_owned());
                }
                targets.push(Target::Webhook(Webhook {
                    url,
                    secret: c.secret.clone(),
                    format,
                }));
            }
            // The URL may hold a token: name the problem, not the URL.
            _ => problems.push("webhook is not an http:// or https:// URL".to_owned()),
        }
    } else if c.secret.is_some() || c.format.is_some() {
        problems.push("secret and format belong to a webhook, and none is set".to_owned());
    }
    if !c.email.is_empty() {
        if !smtp {
            problems.push("email needs an [actions.smtp] server".to_owned());
        }
        let mut to = Vec::new();
        for address in &c.email {
            match address.parse::<Mailbox>() {
                Ok(mailbox) => to.push(mailbox),
                Err(_) => problems.push(format!("email: {address:?} is not an e-mail address")),
            }
        }
        targets.push(Target::Email(to));
    }
    if c.webhook.is_none() && c.email.is_empty() {
        problems.push("set a webhook, an email, or both".to_owned());
    }
    if problems.is_empty() {
        Ok(Rule {
            id: c.id.clone(),
            site: c.site.clone(),
            trigger,
            targets,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            id: "shop".into(),
            write_keys: vec![Secret::new("wk_0123456789abcdef")],
            read_keys: vec![Secret::new("rk_0123456789abcdef")],
            rate_limit: 0,
            rate_burst: 0,
            domains: vec![],
            keep_bots: false,
            manage_keys: vec![],
            goals: vec![],
        }
    }

    fn rule(kind: RuleKind) -> RuleConfig {
        RuleConfig {
            id: "r1".into(),
            site: "shop".into(),
            kind,
            event: None,
            conditions: BTreeMap::new(),
            metric: None,
            window: None,
            above: None,
            below: None,
            factor: None,
            baseline: None,
            min: None,
            schedule: None,
            webhook: Some("http://127.0.0.1:9/hook".into()),
            secret: Some(Secret::new("0123456789abcdef0123")),
            format: None,
            email: vec![],
        }
    }

    #[test]
    fn every_problem_of_a_rule_is_named() {
        let mut bad = rule(RuleKind::Threshold);
        bad.id = "Bad Id".into();
        bad.site = "nope".into();
        bad.window = Some(Duration::from_secs(90));
        bad.above = Some(1);
        bad.below = Some(1);
        bad.schedule = Some("daily".into());
        bad.email = vec!["ops@example.com".into()];
        let problems = Rules::new(&[bad], &[site()], false).expect_err("refused");
        let all = problems.join("\n");
        for expected in [
            "id must be",
            "site \"nope\" is not configured",
            "whole number of minutes",
            "exactly one of above or below",
            "schedule does not apply",
            "needs an [actions.smtp]",
        ] {
            assert!(all.contains(expected), "{expected:?} missing from:\n{all}");
        }
    }

    #[test]
    fn an_event_rule_matches_its_name_and_properties() {
        let mut c = rule(RuleKind::Event);
        c.event = Some("purchase".into());
        c.conditions.insert("plan".into(), Value::from("pro"));
        let rules = Rules::new(&[c], &[site()], false).expect("valid");
        let trigger = &rules.get("r1").expect("rule").trigger;
        let event = |name: &str, plan: &str| -> Event {
            serde_json::from_value(serde_json::json!({
                "id": "e1", "site": "shop", "name": name, "ts": "2026-11-25T10:00:00Z",
                "received_at": "2026-11-25T10:00:00Z", "partition": 0, "props": {"plan": plan}
            }))
            .expect("event")
        };
        assert!(trigger.matches(&event("purchase", "pro")));
        assert!(!trigger.matches(&event("purchase", "free")));
        assert!(!trigger.matches(&event("signup", "pro")));
    }

    #[test]
    fn periods_end_on_their_boundaries() {
        // 2026-11-25 (a Wednesday) 10:00 UTC.
        let t = 1_795_600_800;
        let day = Schedule::Daily.last_period(t);
        assert_eq!(day.1 % 86_400, 0);
        assert!(day.1 <= t && t - day.1 < 86_400);
        let (start, end) = Schedule::Weekly.last_period(t);
        assert_eq!(end - start, 7 * 86_400);
        // Ends on a Monday 00:00 UTC.
        let monday = chrono::DateTime::from_timestamp(end, 0).expect("time");
        assert_eq!(monday.format("%a %H:%M").to_string(), "Mon 00:00");
        assert_eq!(
            Schedule::Every(Duration::from_secs(60)).last_period(125),
            (60, 120)
        );
    }

    #[test]
    fn a_long_spike_baseline_is_refused() {
        let mut c = rule(RuleKind::Spike);
        c.window = Some(Duration::from_secs(600));
        c.baseline = Some(1_000);
        let problems = Rules::new(&[c], &[site()], false).expect_err("refused");
        assert!(
            problems.join(" ").contains("1500 query points"),
            "{problems:?}"
        );
    }
}
