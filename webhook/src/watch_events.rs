//! The loop every primary watch of the reconciler runs: each event handed on until the watch
//! ends or the process shuts down; a failed watch only logged, since the watcher's backoff
//! retries it.

use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

/// Hands each event of `events` to `handle` until the stream ends or `shutdown`.
pub(crate) async fn for_each_event<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    shutdown: &CancellationToken,
    mut handle: impl FnMut(watcher::Event<K>),
) {
    let mut events = std::pin::pin!(events);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = shutdown.cancelled() => return,
        };
        match event {
            None => return,
            Some(Ok(event)) => handle(event),
            Some(Err(error)) => tracing::warn!(error = %error, "watch failed, retrying"),
        }
    }
}
