//! Retrying under one deadline: exponential backoff with full jitter, so many
//! producers that failed together do not come back together.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{PublishError, PublishErrorKind};

/// How a call is retried: every attempt bounded by `attempt_timeout`, waits
/// growing from `first_backoff` by `multiplier` up to `max_backoff` (each one
/// drawn at random between half and all of that), and no new attempt once
/// `deadline` has passed since the call began.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub attempt_timeout: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(2),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// One attempt only.
    pub fn never() -> Self {
        RetryPolicy {
            deadline: Duration::ZERO,
            ..RetryPolicy::default()
        }
    }

    /// The wait after failed attempt number `attempt` (1 for the first).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(63) as i32;
        let grown = self.first_backoff.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = grown.min(self.max_backoff.as_secs_f64());
        // "Equal jitter": never less than half the step, so the growth still
        // shows, never in lockstep with other clients.
        let jittered = capped * (0.5 + rand::random::<f64>() * 0.5);
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max_backoff)
    }
}

/// One failed attempt: the error, and how long the other side asked us to
/// wait before the next one (HTTP `Retry-After`), if it did.
pub(crate) type Failed = (PublishError, Option<Duration>);

/// Run `attempt` until it succeeds, fails permanently, or the policy's
/// deadline leaves no room for another try. Each attempt is cut off at
/// `attempt_timeout`, the first one always gets it whole.
pub(crate) async fn retrying<T, Fut>(
    policy: &RetryPolicy,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, PublishError>
where
    Fut: Future<Output = Result<T, Failed>>,
{
    let deadline = Instant::now() + policy.deadline;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let limit = if attempts == 1 {
            policy.attempt_timeout
        } else {
            policy
                .attempt_timeout
                .min(deadline.saturating_duration_since(Instant::now()))
        };
        let (error, asked) = match tokio::time::timeout(limit, attempt()).await {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(failed)) => failed,
            Err(_) => (
                PublishError::new(
                    PublishErrorKind::Unavailable,
                    format!("no acknowledgement within {limit:?}"),
                ),
                None,
            ),
        };
        if !error.is_retryable() {
            return Err(error.after(attempts));
        }
        let wait = asked.unwrap_or_else(|| policy.backoff(attempts));
        if Instant::now() + wait >= deadline {
            return Err(error.after(attempts));
        }
        tracing::debug!(%error, attempts, ?wait, "retrying a publish");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_and_stay_capped() {
        let policy = RetryPolicy {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = policy.backoff(1_000);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }
}
