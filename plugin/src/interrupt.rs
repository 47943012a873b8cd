//! The interruptions a command that writes on several clusters must not die of half-way:
//! Ctrl-C, or the end of the job or terminal it runs in (SIGTERM from `timeout`, a CI runner
//! or systemd; SIGHUP when an SSH session drops). Their default action would leave what the
//! run changed so far behind; the commands (attach, scope) put it back instead.

/// Ends on the first interruption. Once it is polled, those signals no longer end the
/// process, for as long as it runs: whatever waits must select on this future (one received
/// while nothing does is kept for the next poll). If they cannot be listened to, it never
/// ends, and they keep their default actions.
pub async fn signalled() {
    on_signal(interruption()).await;
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
}
