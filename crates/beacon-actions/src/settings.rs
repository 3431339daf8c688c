//! The `[actions]` settings: how jobs are retried and delivered, how metric
//! rules are timed, the SMTP server for reports, and the rules themselves.

use std::collections::BTreeMap;
use std::time::Duration;

use beacon_core::{Secret, Site};
use serde::{Deserialize, Serialize};

use crate::rule::{RuleConfig, Rules};

/// Settings operators choose; defaults as documented in docs/CONFIG.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionsSettings {
    /// Jobs one process delivers at once.
    pub concurrency: usize,
    /// Deliveries of a job before it goes to the dead-letter subject.
    pub max_attempts: u32,
    /// Wait before the second attempt; it doubles for each further one.
    #[serde(with = "humantime_serde")]
    pub first_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long a delivered job may go unacknowledged before JetStream hands it
    /// to another worker (a worker that died mid-delivery). Workers send
    /// in-progress acks while a slow receiver answers.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// A webhook receiver must answer within this.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Metric rules and reports look at a window only this long after it
    /// closed, so the rollups have counted its last events.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// A window closed longer ago than this is not evaluated any more (a
    /// process that starts late does not fire old windows). Keep it below
    /// `streams.duplicate_window`: that window is what stops two copies firing
    /// the same window twice.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    pub smtp: Option<SmtpSettings>,
    pub rules: Vec<RuleConfig>,
    /// Per site, the keys that may create, change and delete its rules
    /// through the API (`[actions.rule_keys]`, `shop = ["ak_…"]`).
    pub rule_keys: BTreeMap<String, Vec<Secret>>,
}

impl Default for ActionsSettings {
    fn default() -> Self {
        ActionsSettings {
            concurrency: 32,
            max_attempts: 8,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            ack_wait: Duration::from_secs(30),
            webhook_timeout: Duration::from_secs(10),
            settle: Duration::from_secs(10),
            grace: Duration::from_secs(300),
            smtp: None,
            rules: Vec::new(),
            rule_keys: BTreeMap::new(),
        }
    }
}

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    #[default]
    Starttls,
    /// No encryption at all: only for a relay on the same machine or a test sink.
    None,
}

/// The SMTP server report e-mails go through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    /// Default: 465 with `tls`, 587 with `starttls`, 25 with `none`.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// The sender, e.g. `Beacon <beacon@example.com>`.
    pub from: String,
    #[serde(default = "default_smtp_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_smtp_timeout() -> Duration {
    Duration::from_secs(30)
}

impl SmtpSettings {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            SmtpSecurity::Tls => 465,
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::None => 25,
        })
    }
}

impl ActionsSettings {
    /// Everything wrong with these settings and their rules, all at once.
    pub fn problems(&self, sites: &[Site]) -> Vec<String> {
        let mut problems = Vec::new();
        if self.concurrency == 0 {
            problems.push("actions.concurrency must be at least 1".to_owned());
        }
        if self.max_attempts == 0 {
            problems.push("actions.max_attempts must be at least 1".to_owned());
        }
        if self.first_backoff.is_zero() || self.max_backoff < self.first_backoff {
            problems.push(
                "actions.first_backoff must be positive and at most actions.max_backoff".to_owned(),
            );
        }
        if self.ack_wait < Duration::from_secs(1) {
            problems.push("actions.ack_wait must be at least 1s".to_owned());
        }
        if self.webhook_timeout.is_zero() {
            problems.push("actions.webhook_timeout must be positive".to_owned());
        }
        if self.grace <= self.settle {
            problems.push("actions.grace must be longer than actions.settle".to_owned());
        }
        if let Some(smtp) = &self.smtp {
            if smtp.host.trim().is_empty() {
                problems.push("actions.smtp.host is empty".to_owned());
            }
            if smtp.from.parse::<lettre::message::Mailbox>().is_err() {
                problems.push(format!(
                    "actions.smtp.from: {:?} is not an e-mail address",
                    smtp.from
                ));
            }
            if smtp.username.is_some() != smtp.password.is_some() {
                problems
                    .push("actions.smtp: set both username and password, or neither".to_owned());
            }
        }
        for (site, keys) in &self.rule_keys {
            if !sites.iter().any(|s| s.id == *site) {
                problems.push(format!(
                    "actions.rule_keys: site {site:?} is not configured in [[sites]]"
                ));
            }
            for key in keys {
                let key = key.expose();
                if key.len() < 16 || !key.chars().all(|c| c.is_ascii_graphic()) {
                    problems.push(format!(
                        "actions.rule_keys.{site}: keys must be at least 16 printable ASCII characters without spaces"
                    ));
                }
                let taken = sites.iter().any(|s| {
                    s.write_keys
                        .iter()
                        .chain(&s.read_keys)
                        .any(|k| k.expose() == key)
                });
                if taken {
                    problems.push(format!(
                        "actions.rule_keys.{site}: a rule key cannot also be a write or read key"
                    ));
                }
            }
        }
        if let Err(more) = Rules::new(&self.rules, sites, self.smtp.is_some()) {
            problems.extend(more);
        }
        problems
    }
}
