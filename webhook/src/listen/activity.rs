//! Requests in progress on one connection, and since when none is: hyper closes neither an
//! idle HTTP/2 connection nor one that never sent a byte, so the listener closes a connection
//! that stays without a request in progress for long (see [`Activity::idle_for`]), and makes
//! room for new connections by closing the one idle longest (see [`super::eviction`]).

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

#[derive(Clone, Copy, Debug)]
struct State {
    in_progress: usize,
    /// Whether a request ever started on the connection.
    served: bool,
    /// When the last request ended (or the connection was accepted).
    since: Instant,
}

/// What a connection is doing, as eviction weighs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Load {
    /// A request is in progress: never evicted.
    Busy,
    /// No request in progress since `since`; `served` once a request has started on it.
    Idle { served: bool, since: Instant },
}

/// The activity of one connection. Cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Activity {
    state: watch::Sender<State>,
    /// Told whenever the connection is left without a request in progress.
    idle: Arc<Notify>,
}

/// A request in progress; it ends when dropped.
pub(super) struct InProgress(Activity);

impl Activity {
    /// A connection accepted now, without a request yet; `idle` is notified (one permit)
    /// whenever a request ends with none left in progress.
    pub(super) fn new(idle: Arc<Notify>) -> Self {
        Self {
            state: watch::Sender::new(State {
                in_progress: 0,
                served: false,
                since: Instant::now(),
            }),
            idle,
        }
    }

    pub(super) fn start(&self) -> InProgress {
        self.state.send_modify(|s| {
            s.in_progress += 1;
            s.served = true;
        });
        InProgress(self.clone())
    }

    pub(super) fn load(&self) -> Load {
        let state = *self.state.borrow();
        if state.in_progress > 0 {
            Load::Busy
        } else {
            Load::Idle {
                served: state.served,
                since: state.since,
            }
        }
    }

    /// Resolves once no request has been in progress for `idle`, or, before any request came,
    /// the shorter of `first` and `idle` after the connection was accepted: a real client
    /// sends its first request as soon as it has connected, so one that sends none is held to
    /// the time a request's head gets, and never kept longer than an idle connection.
    pub(super) async fn idle_for(&self, first: Duration, idle: Duration) {
        let mut changes = self.state.subscribe();
        loop {
            let state = *changes.borrow_and_update();
            if state.in_progress == 0 {
                let limit = if state.served { idle } else { first.min(idle) };
                tokio::select! {
                    () = tokio::time::sleep_until(state.since + limit) => return,
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
        let mut idle = false;
        self.0.state.send_modify(|s| {
            s.in_progress -= 1;
            s.since = Instant::now();
            idle = s.in_progress == 0;
        });
        if idle {
            self.0.idle.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_without_a_request_for_the_whole_period() {
        let idle = Duration::from_secs(10);
        let activity = Activity::new(Arc::default());
        let started = Instant::now();
        let request = activity.start();
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(idle, idle).await }
        });
        // A request in progress for longer than the idle time does not make it idle.
        tokio::time::sleep(idle * 3).await;
        assert!(!waiting.is_finished());
        assert_eq!(activity.load(), Load::Busy);
        drop(request);
        let ended = Instant::now();
        assert_eq!(
            activity.load(),
            Load::Idle {
                served: true,
                since: ended
            }
        );
        waiting.await.expect("join");
        assert_eq!(Instant::now() - ended, idle);
        assert!(Instant::now() - started >= idle * 4);
    }

    #[tokio::test(start_paused = true)]
    async fn before_any_request_the_first_request_time_applies() {
        let (first, idle) = (Duration::from_secs(10), Duration::from_secs(120));
        let activity = Activity::new(Arc::default());
        let accepted = Instant::now();
        assert_eq!(
            activity.load(),
            Load::Idle {
                served: false,
                since: accepted
            }
        );
        activity.idle_for(first, idle).await;
        assert_eq!(Instant::now() - accepted, first);

        // Once a request has come, the idle time applies.
        drop(activity.start());
        let ended = Instant::now();
        activity.idle_for(first, idle).await;
        assert_eq!(Instant::now() - ended, idle);
    }

    /// A first-request time longer than the idle time does not keep a connection that never
    /// made a request open past the idle time.
    #[tokio::test(start_paused = true)]
    async fn before_any_request_the_idle_time_still_bounds_a_connection() {
        let (first, idle) = (Duration::from_secs(300), Duration::from_secs(30));
        let activity = Activity::new(Arc::default());
        let accepted = Instant::now();
        activity.idle_for(first, idle).await;
        assert_eq!(Instant::now() - accepted, idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_ending_with_none_left_notifies() {
        let notify = Arc::new(Notify::new());
        let activity = Activity::new(notify.clone());
        let (one, two) = (activity.start(), activity.start());
        drop(one);
        let notified = notify.notified();
        tokio::pin!(notified);
        assert!(futures::poll!(notified.as_mut()).is_pending());
        drop(two);
        notified.await;
    }
}
