//! Waiting for a cluster to reach a state by looking again and again under one deadline: the
//! rule every wait of attach, detach and rotate follows, and its one timeout error.
//!
//! They look with `get` rather than use `kube::runtime::wait::await_condition`: a watch needs
//! `list` and `watch`, which those commands neither check beforehand nor need otherwise, so a
//! caller with exactly the rights they ask for would be refused halfway through.

use std::ops::ControlFlow::{self, Break, Continue};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// What a wait says when its time is up.
#[derive(Debug)]
pub struct Late {
    /// What was awaited, e.g. "Namespace shop to be deleted".
    pub what: String,
    /// What to do about it.
    pub hint: String,
}

/// Calls `look` every `every` until it breaks with the awaited value or fails, for at most
/// `timeout`; then the timeout error says what `late` makes of the last look's finding. A
/// timeout too long for the clock to count ([`deadline`]) waits as long as it takes.
pub async fn until<T, S>(
    timeout: Duration,
    every: Duration,
    mut look: impl AsyncFnMut() -> Result<ControlFlow<T, S>>,
    late: impl FnOnce(S) -> Late,
) -> Result<T> {
    let deadline = deadline(timeout);
    loop {
        let last = match look().await? {
            Break(found) => return Ok(found),
            Continue(last) => last,
        };
        if is_past(deadline) {
            let Late { what, hint } = late(last);
            return Err(Error::Timeout {
                what,
                after: format!("{}s", timeout.as_secs()),
                hint,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// When a wait of `timeout` from now ends; `None`, no end, when that is past what the clock can
/// count to (`--timeout 1e19`: a deadline that far is none, and adding it to now panics).
pub fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Whether the wait of that [`deadline`] is over.
pub fn is_past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// [`deadline`] as the instant a timer waits until: one too far for the clock is some 30
/// years ahead, as tokio takes one (no run lasts that long).
pub fn timer_deadline(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout).unwrap_or(now + FAR_AHEAD)
}

const FAR_AHEAD: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    /// `Instant + --timeout 1e19` panicked: in a rollback, after a failed step, nothing was
    /// put back. A deadline past the clock is none, and a timer's far ahead.
    #[tokio::test]
    async fn a_timeout_too_long_for_the_clock_is_no_deadline_and_a_far_timer() {
        let forever = Duration::MAX;
        assert_eq!(deadline(forever), None);
        assert!(!is_past(deadline(forever)));
        assert!(is_past(deadline(Duration::ZERO)));
        let timer = timer_deadline(forever);
        assert!(timer > tokio::time::Instant::now() + FAR_AHEAD / 2);
    }

    /// Waits up to `timeout` on a look whose n-th call (from 1) answers `answer(n)`; gives the
    /// wait's result and how many looks it took.
    async fn wait(
        timeout: Duration,
        answer: impl Fn(u32) -> Result<ControlFlow<&'static str, u32>>,
    ) -> (Result<&'static str>, u32) {
        let mut looks = 0;
        let look = async || {
            looks += 1;
            answer(looks)
        };
        let late = |looks| Late {
            what: format!("the answer after {looks} looks"),
            hint: "ask again".into(),
        };
        let result = until(timeout, Duration::from_millis(10), look, late).await;
        (result, looks)
    }

    #[tokio::test]
    async fn returns_what_the_look_found() {
        let answer = |n| Ok(if n == 3 { Break("found") } else { Continue(n) });
        let (found, looks) = wait(Duration::from_secs(5), answer).await;
        assert_eq!((found.ok(), looks), (Some("found"), 3));
    }

    #[tokio::test]
    async fn times_out_with_the_last_finding() {
        let (late, looks) = wait(Duration::from_millis(50), |n| Ok(Continue(n))).await;
        let late = late.expect_err("never found");
        assert_eq!(
            format!("{late}; {}", late.hint()),
            format!("timed out after 0s waiting for the answer after {looks} looks; ask again")
        );
        assert!(looks > 1, "looked again before giving up");
    }

    /// A timeout past what the clock can count to (`--timeout 1e19`) is no deadline: the wait
    /// goes on until found, where adding it to now panicked.
    #[tokio::test]
    async fn a_timeout_too_long_for_the_clock_waits_until_found() {
        let answer = |n| Ok(if n == 3 { Break("found") } else { Continue(n) });
        let (found, looks) = wait(Duration::MAX, answer).await;
        assert_eq!((found.ok(), looks), (Some("found"), 3));
    }

    #[tokio::test]
    async fn a_failed_look_ends_the_wait() {
        let (failed, looks) = wait(Duration::from_secs(5), |_| Err(Error::Exit(7))).await;
        assert!(matches!(failed, Err(Error::Exit(7))));
        assert_eq!(looks, 1);
    }
}
