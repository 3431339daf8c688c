//! Delivering one job to its target: a signed webhook POST or an e-mail. Each
//! failure says, where it is made, whether another attempt may succeed.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};

use crate::job::{Job, JobKind};
use crate::rule::{Rules, Target, Webhook, WebhookFormat};
use crate::settings::{SmtpSecurity, SmtpSettings};
use crate::signature::{SIGNATURE_HEADER, sign};

/// Headers every webhook request carries besides the signature.
pub const KEY_HEADER: &str = "Beacon-Idempotency-Key";
pub const ATTEMPT_HEADER: &str = "Beacon-Attempt";

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the receiver answered HTTP {0}")]
    Status(u16),
    #[error("the receiver did not answer in time")]
    Timeout,
    #[error("cannot reach the receiver: {0}")]
    Unreachable(String),
    #[error("SMTP: {message}")]
    Smtp { message: String, permanent: bool },
    #[error("rule {rule:?} has no {target} target in this process's config")]
    NoTarget { rule: String, target: String },
    #[error("{0}")]
    Format(#[from] crate::job::JobFormatError),
}

impl DeliveryError {
    /// Whether a later attempt may succeed. A receiver that refuses the request
    /// itself (4xx other than 408 and 429), a rule that is gone and a job that
    /// cannot be read go to the dead letters at once.
    pub fn is_retryable(&self) -> bool {
        match self {
            DeliveryError::Status(code) => *code >= 500 || *code == 408 || *code == 429,
            DeliveryError::Timeout | DeliveryError::Unreachable(_) => true,
            DeliveryError::Smtp { permanent, .. } => !permanent,
            DeliveryError::NoTarget { .. } | DeliveryError::Format(_) => false,
        }
    }
}

/// Delivers jobs for the rules it was given. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    rules: Arc<Rules>,
    http: reqwest::Client,
    mail: Option<Mailer>,
}

#[derive(Clone)]
struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

/// Why the delivery side cannot start (a config the checks let through).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("actions.smtp: {0}")]
    Smtp(String),
}

impl Deliverer {
    pub fn new(
        rules: Arc<Rules>,
        webhook_timeout: Duration,
        smtp: Option<&SmtpSettings>,
    ) -> Result<Deliverer, SetupError> {
        let http = reqwest::Client::builder()
            .timeout(webhook_timeout)
            .connect_timeout(webhook_timeout)
            // A receiver's redirect is not followed: the signature is for its URL.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("beacon-actions/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SetupError::Http(e.to_string()))?;
        let mail = smtp.map(mailer).transpose()?;
        Ok(Deliverer { rules, http, mail })
    }

    /// Deliver `job` once. `attempt` counts from 1.
    pub async fn deliver(&self, job: &Job, attempt: u64) -> Result<(), DeliveryError> {
        let no_target = || DeliveryError::NoTarget {
            rule: job.rule.clone(),
            target: job.target.clone(),
        };
        let rule = self.rules.get(&job.rule).ok_or_else(no_target)?;
        let target = rule
            .targets
            .iter()
            .find(|t| t.name() == job.target)
            .ok_or_else(no_target)?;
        match target {
            Target::Webhook(hook) => self.post(hook, job, attempt).await,
            Target::Email(to) => {
                let mail = self.mail.as_ref().ok_or_else(no_target)?;
                mail.send(to, job).await
            }
        }
    }

    async fn post(&self, hook: &Webhook, job: &Job, attempt: u64) -> Result<(), DeliveryError> {
        let body = webhook_body(job, hook.format);
        let mut request = self
            .http
            .post(hook.url.clone())
            .header("Content-Type", "application/json")
            .header(KEY_HEADER, &job.key)
            .header(ATTEMPT_HEADER, attempt.to_string());
        if let Some(secret) = &hook.secret {
            let now = chrono::Utc::now().timestamp();
            request = request.header(
                SIGNATURE_HEADER,
                sign(secret.expose().as_bytes(), now, &body),
            );
        }
        let response = request.body(body).send().await.map_err(|e| {
            if e.is_timeout() {
                DeliveryError::Timeout
            } else {
                // Without the URL: it may hold a token.
                DeliveryError::Unreachable(e.without_url().to_string())
            }
        })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status.as_u16()))
        }
    }
}

/// The exact bytes POSTed (and signed) for `job`.
pub fn webhook_body(job: &Job, format: WebhookFormat) -> Vec<u8> {
    let value = match format {
        WebhookFormat::Json => json!({
            "id": job.key, "rule": job.rule, "site": job.site, "kind": job.kind,
            "created_at": job.created_at, "data": job.data,
        }),
        WebhookFormat::Slack => json!({"text": job.headline()}),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

fn mailer(smtp: &SmtpSettings) -> Result<Mailer, SetupError> {
    let from = smtp
        .from
        .parse::<Mailbox>()
        .map_err(|e| SetupError::Smtp(format!("from: {e}")))?;
    let builder = match smtp.security {
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host),
        SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host),
        SmtpSecurity::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            &smtp.host,
        )),
    }
    .map_err(|e| SetupError::Smtp(e.to_string()))?;
    let mut builder = builder.port(smtp.port()).timeout(Some(smtp.timeout));
    if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(Mailer {
        transport: builder.build(),
        from,
    })
}

impl Mailer {
    async fn send(&self, to: &[Mailbox], job: &Job) -> Result<(), DeliveryError> {
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(job.headline())
            // The key lets a mail filter drop a redelivered copy.
            .message_id(Some(format!(
                "<{}@beacon>",
                job.msg_id().replace(['/', ' ', ':'], ".")
            )))
            .header(ContentType::TEXT_PLAIN);
        for mailbox in to {
            message = message.to(mailbox.clone());
        }
        let message = message
            .body(email_text(job))
            .map_err(|e| DeliveryError::Smtp {
                message: e.to_string(),
                permanent: true,
            })?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| DeliveryError::Smtp {
                permanent: e.is_permanent(),
                message: e.to_string(),
            })
    }
}

/// The plain-text body: for a report, each figure with the previous period's
/// and the change; for anything else, the headline and the job's data.
pub fn email_text(job: &Job) -> String {
    let mut text = format!("{}\n\n", job.headline());
    if job.kind == JobKind::Report
        && let Some(metrics) = job
            .data
            .pointer("/summary/metrics")
            .and_then(Value::as_object)
    {
        for (name, figure) in metrics {
            let show = |v: Option<&Value>| match v {
                Some(Value::Null) | None => "-".to_owned(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            let change = match figure.get("change").and_then(Value::as_f64) {
                Some(c) => format!("{:+.1} %", c * 100.0),
                None => "-".to_owned(),
            };
            text.push_str(&format!(
                "{name}: {} (previous period {}, change {change})\n",
                show(figure.get("value")),
                show(figure.get("previous")),
            ));
        }
        text.push_str(&format!("\nIdempotency key: {}\n", job.key));
        return text;
    }
    text.push_str(&serde_json::to_string_pretty(&job.data).unwrap_or_default());
    text.push_str(&format!("\n\nIdempotency key: {}\n", job.key));
    text
}
