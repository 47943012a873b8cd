//! Calls to the primary after a sync (status, Events, a renewed token's Secret), each bounded
//! on its own: a primary that stopped answering holds no worker for long, and is told as such.

use std::time::Duration;

/// Bound of one call to the primary after a sync (status, Events, a renewed token's Secret).
/// The primary client's read timeout is long enough for its watches (`WATCH_READ_TIMEOUT`): a
/// write on a connection gone half-open would hold the worker that long.
const PRIMARY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// `write`, a call to the primary and nothing else (what else it awaited would be told as the
/// primary's silence), bounded by [`PRIMARY_WRITE_TIMEOUT`]; `None`, logged here, when the
/// primary did not answer in time.
pub(crate) async fn to_primary<T>(
    what: &'static str,
    write: impl std::future::Future<Output = T>,
) -> Option<T> {
    let done = tokio::time::timeout(PRIMARY_WRITE_TIMEOUT, write)
        .await
        .ok();
    if done.is_none() {
        tracing::warn!(write = what, "no answer from the primary in time, given up");
    }
    done
}
