//! Retries with exponential backoff and a timeout per attempt, shared by the
//! network backends.

use std::future::Future;
use std::time::Duration;

/// How hard to try.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled each time after.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Bound on one attempt.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

/// Why the last attempt failed.
#[derive(Debug)]
pub enum LastFailure<E> {
    Failed(E),
    TimedOut(Duration),
}

/// Every attempt failed, or one failed with an error not worth retrying.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub last: LastFailure<E>,
    pub attempts: u32,
}

/// Runs `op` until it succeeds, fails with an error `is_transient` rejects, or
/// the attempts run out. Timeouts count as transient.
pub async fn with_retries<T, E, F, Fut>(
    policy: &RetryPolicy,
    mut op: F,
    is_transient: impl Fn(&E) -> bool,
) -> Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = match tokio::time::timeout(policy.attempt_timeout, op()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if !is_transient(&e) => return Err(GaveUp { last: LastFailure::Failed(e), attempts: attempt }),
            Ok(Err(e)) => LastFailure::Failed(e),
            Err(_) => LastFailure::TimedOut(policy.attempt_timeout),
        };
        if attempt >= policy.attempts {
            return Err(GaveUp { last, attempts: attempt });
        }
        tokio::time::sleep(backoff(policy, attempt)).await;
    }
}

/// Exponential backoff with jitter, so that many clients throttled together do
/// not come back together.
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy.base_delay.saturating_mul(1 << (attempt - 1).min(16));
    let capped = exp.min(policy.max_delay);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    // Between half and the whole of the capped delay.
    capped / 2 + capped.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            attempt_timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let result = with_retries(
            &fast(),
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 2 { Err("503") } else { Ok(n) }
            },
            |_| true,
        )
        .await;
        assert_eq!(result.unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_failures_stop_at_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(
            &fast(),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("403")
            },
            |e| *e != "403",
        )
        .await;
        let gave_up = result.unwrap_err();
        assert_eq!(gave_up.attempts, 1);
        assert!(matches!(gave_up.last, LastFailure::Failed("403")));
    }

    #[tokio::test]
    async fn hanging_attempts_time_out_and_the_count_is_bounded() {
        let policy = RetryPolicy { attempt_timeout: Duration::from_millis(10), ..fast() };
        let result: Result<(), GaveUp<&str>> =
            with_retries(&policy, std::future::pending::<Result<(), &str>>, |_| true).await;
        let gave_up = result.unwrap_err();
        assert_eq!(gave_up.attempts, 4);
        assert!(matches!(gave_up.last, LastFailure::TimedOut(_)));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy =
            RetryPolicy { base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1), ..fast() };
        assert!(backoff(&policy, 1) <= Duration::from_millis(100));
        assert!(backoff(&policy, 1) >= Duration::from_millis(50));
        assert!(backoff(&policy, 10) <= Duration::from_secs(1));
        assert!(backoff(&policy, 10) >= Duration::from_millis(500));
    }
}
