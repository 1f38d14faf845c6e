//! Retrying a call that failed because of the replica, not the request.
//!
//! A replica that is stopped (SIGTERM, a scale-down) needs none: it reports NOT_SERVING and goes
//! on serving for a grace, so discovery takes it out before it stops accepting, and it finishes
//! the calls it holds (see `mesh::server::shutdown`). One that crashes, is killed (SIGKILL, the
//! OOM killer) or loses its host gives no notice: a call the balancer sends it before discovery
//! sees its health watch break comes back UNAVAILABLE. Sent again, the call goes to another
//! replica. Retries draw on a budget (tower's, a share of recent successes), so
//! that when every replica is down the worker does not multiply its load: it falls back to the
//! unit's own backoff instead.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// Retries allowed: 20% of the calls of the last 10 s, plus a reserve of one a second (ten).
pub fn budget() -> Arc<TpsBudget> {
    Arc::new(TpsBudget::new(Duration::from_secs(10), 1, 0.2))
}

/// Whether a failure is the replica's, so that another replica may well succeed.
pub fn is_retryable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

/// Runs `call`, again while it fails with a retryable status and the budget allows.
pub async fn with_retries<T, F, Fut>(budget: &TpsBudget, mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    loop {
        match call().await {
            Ok(value) => {
                budget.deposit();
                return Ok(value);
            }
            Err(status) if is_retryable(&status) && budget.withdraw() => {
                tracing::debug!(%status, "retrying on another replica");
            }
            Err(status) => return Err(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn unavailable_is_retried_until_success() {
        let budget = budget();
        let calls = AtomicU32::new(0);
        let result = with_retries(&budget, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(tonic::Status::unavailable("replica going away")),
                _ => Ok("done"),
            }
        })
        .await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(&budget(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::invalid_argument("bad request"))
        })
        .await;
        assert_eq!(result.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn retries_stop_when_the_budget_is_spent() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(&budget(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::unavailable("everything is down"))
        })
        .await;
        assert_eq!(result.unwrap_err().code(), tonic::Code::Unavailable);
        let calls = calls.load(Ordering::SeqCst);
        // The first call and the reserve of ten retries, then no more.
        assert_eq!(calls, 11, "bounded retries");
    }
}
