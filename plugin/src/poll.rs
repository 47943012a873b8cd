//! Waiting for a cluster to reach a state by looking again and again under one deadline: the
//! rule every wait of attach, detach and rotate follows, and its one timeout error.
//!
//! They look with `get` rather than use `kube::runtime::wait::await_condition`: a watch needs
//! `list` and `watch`, which those commands neither check beforehand nor need otherwise, so a
//! caller with exactly the rights they ask for would be refused halfway through.

use std::ops::ControlFlow;
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
/// `timeout`; then the timeout error says what `late` makes of the last look's finding.
pub async fn until<T, S>(
    timeout: Duration,
    every: Duration,
    mut look: impl AsyncFnMut() -> Result<ControlFlow<T, S>>,
    late: impl FnOnce(S) -> Late,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match look().await? {
            ControlFlow::Break(found) => return Ok(found),
            ControlFlow::Continue(last) => last,
        };
        if Instant::now() >= deadline {
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

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_millis(10);

    fn late(looks: u32) -> Late {
        Late {
            what: format!("the answer after {looks} looks"),
            hint: "ask again".into(),
        }
    }

    #[tokio::test]
    async fn returns_what_the_look_found() {
        let mut looks = 0;
        let found = until(
            Duration::from_secs(5),
            EVERY,
            async || {
                looks += 1;
                Ok(if looks == 3 {
                    ControlFlow::Break("found")
                } else {
                    ControlFlow::Continue(looks)
                })
            },
            late,
        )
        .await;
        assert_eq!(found.ok(), Some("found"));
        assert_eq!(looks, 3);
    }

    #[tokio::test]
    async fn times_out_with_the_last_finding() {
        let mut looks = 0;
        let late = until(
            Duration::from_millis(50),
            EVERY,
            async || {
                looks += 1;
                Ok(ControlFlow::<(), u32>::Continue(looks))
            },
            late,
        )
        .await
        .expect_err("never found");
        let text = format!("{late}; {}", late.hint());
        assert_eq!(
            text,
            format!("timed out after 0s waiting for the answer after {looks} looks; ask again")
        );
        assert!(looks > 1, "looked again before giving up");
    }

    #[tokio::test]
    async fn a_failed_look_ends_the_wait() {
        let mut looks = 0;
        let failed = until(
            Duration::from_secs(5),
            EVERY,
            async || {
                looks += 1;
                Err::<ControlFlow<(), u32>, _>(Error::NotImplemented("look"))
            },
            late,
        )
        .await;
        assert!(matches!(failed, Err(Error::NotImplemented("look"))));
        assert_eq!(looks, 1);
    }
}
