//! Requests in progress on one connection, and since when none is: hyper closes neither an
//! idle HTTP/2 connection nor one that never sent a byte, so the listener closes a connection
//! that stays without a request in progress for the idle timeout.

use std::time::Duration;

use tokio::{sync::watch, time::Instant};

#[derive(Clone, Copy, Debug)]
struct State {
    in_progress: usize,
    /// When the last request ended (or the connection opened).
    since: Instant,
}

/// The activity of one connection. Cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Activity(watch::Sender<State>);

/// A request in progress; it ends when dropped.
pub(super) struct InProgress(watch::Sender<State>);

impl Activity {
    pub(super) fn new() -> Self {
        Self(watch::Sender::new(State {
            in_progress: 0,
            since: Instant::now(),
        }))
    }

    pub(super) fn start(&self) -> InProgress {
        self.0.send_modify(|s| s.in_progress += 1);
        InProgress(self.0.clone())
    }

    /// Resolves once no request has been in progress for `idle`.
    pub(super) async fn idle_for(&self, idle: Duration) {
        let mut changes = self.0.subscribe();
        loop {
            let state = *changes.borrow_and_update();
            if state.in_progress == 0 {
                tokio::select! {
                    () = tokio::time::sleep_until(state.since + idle) => return,
                    _ = changes.changed() => {}
                }
            } else if changes.changed().await.is_err() {
                // Unreachable while `self` holds the sender; never idle then.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.send_modify(|s| {
            s.in_progress -= 1;
            s.since = Instant::now();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_without_a_request_for_the_whole_period() {
        let idle = Duration::from_secs(10);
        let activity = Activity::new();
        let started = Instant::now();
        let request = activity.start();
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(idle).await }
        });
        // A request in progress for longer than the idle time does not make it idle.
        tokio::time::sleep(idle * 3).await;
        assert!(!waiting.is_finished());
        drop(request);
        let ended = Instant::now();
        waiting.await.expect("join");
        assert_eq!(Instant::now() - ended, idle);
        assert!(Instant::now() - started >= idle * 4);
    }
}
