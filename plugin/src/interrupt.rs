//! The interruptions a command that writes on several clusters must not die of half-way:
//! Ctrl-C, or the end of the job or terminal it runs in (SIGTERM from `timeout`, a CI runner
//! or systemd; SIGHUP when an SSH session drops). Their default action would leave what the
//! run changed so far behind; the commands put it back instead (attach, scope), or stop
//! between two of their steps, saying what is done and that a re-run finishes it (detach,
//! rotate: [`Listener`]).

/// Ends on the first interruption. Once it is polled, those signals no longer end the
/// process, for as long as it runs: whatever waits must select on this future (one received
/// while nothing does is kept for the next poll). If they cannot be listened to, it never
/// ends, and they keep their default actions.
pub async fn signalled() {
    on_signal(interruption()).await;
}

/// The interruptions, listened to from [`Listener::start`] on, for a command that stops only
/// between its steps (detach, rotate): whatever a step writes is written whole, and the waits
/// between the writes end at once. Clones share one listening.
#[derive(Clone, Debug)]
pub struct Listener {
    received: tokio::sync::watch::Receiver<bool>,
}

impl Listener {
    /// Listens from now on (the handlers are in place when it returns): from here, those
    /// signals no longer end the process. Must be called within the runtime.
    pub fn start() -> Self {
        let (tx, received) = tokio::sync::watch::channel(false);
        let mut signal = Box::pin(signalled());
        // Polled once here, where the handlers are registered; the rest is left to a task.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if signal.as_mut().poll(&mut cx).is_ready() {
            tx.send_replace(true);
        } else {
            tokio::spawn(async move {
                signal.await;
                tx.send_replace(true);
            });
        }
        Self { received }
    }

    /// Whether an interruption came.
    pub fn received(&self) -> bool {
        *self.received.borrow()
    }

    /// Ends on the first interruption (at once when one came already).
    pub async fn signalled(&self) {
        let mut received = self.received.clone();
        if received.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `wait` to its end, or `None` once an interruption comes (at once when one came
    /// already): for what only waits, and leaves nothing half-done when cut short.
    pub async fn unless<T>(&self, wait: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.signalled() => None,
            done = wait => Some(done),
        }
    }
}

/// `listening` (the signals' registration, then the wait for one) as a future that ends only
/// on a signal. Had the registration failed, it would end at once, and a second `select!`
/// would poll it again after that (a panic); it never ends then, and the signals keep their
/// default actions.
async fn on_signal(listening: impl Future<Output = std::io::Result<()>>) {
    if listening.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Ctrl-C, SIGTERM or SIGHUP.
async fn interruption() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted,
            _ = terminate.recv() => Ok(()),
            _ = hangup.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed registration ended the wait at once: the `select!` after attach's steps then
    /// polled the finished future again, and panicked.
    #[tokio::test]
    async fn a_failed_signal_registration_never_ends_the_wait() {
        let failed = async { Err(std::io::Error::other("no signal handlers")) };
        let waiting = on_signal(failed);
        tokio::pin!(waiting);
        for _ in 0..2 {
            let polled = tokio::time::timeout(std::time::Duration::from_millis(10), &mut waiting);
            assert!(polled.await.is_err(), "ended without a signal");
        }
        let signalled = on_signal(async { Ok(()) });
        tokio::time::timeout(std::time::Duration::from_secs(1), signalled)
            .await
            .expect("a signal ends it");
    }

    /// A listener catches a signal sent before anything waits on it (the process lives on),
    /// keeps it for every later look, and cuts a wait short, one already under way or not.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_listener_keeps_a_signal_for_every_later_look() {
        let listener = Listener::start();
        assert!(!listener.received());
        let short = std::time::Duration::from_millis(20);
        assert_eq!(listener.unless(async { 1 }).await, Some(1));
        let waiting = listener.unless(std::future::pending::<()>());
        let hangup = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .expect("kill");
        assert!(hangup.success());
        let cut = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert_eq!(cut.expect("cut short by the signal"), None);
        assert!(listener.received() && listener.clone().received());
        assert_eq!(listener.unless(async { 1 }).await, None, "after the signal");
        tokio::time::timeout(short, listener.signalled())
            .await
            .expect("at once");
    }
}
