//! The bytes of `/mutate` bodies the process holds at once. Each body is bounded by itself
//! ([`super::BODY_LIMIT`]), but a client without a certificate (`--client-ca-file` is
//! optional) could open every allowed connection, and streams on each, and send a megabyte on
//! all of them: a [`BodyBudget`] makes the sum bounded too. A body takes from it as its bytes
//! arrive (what it announces only decides the 413: announcing costs a client nothing) and
//! gives back when its request is answered; a body whose bytes the budget cannot cover is
//! refused at once rather than waited for, since the apiserver then fails open and the
//! reconciler converges the remotes anyway.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::time::Instant;

/// How often a budget that keeps refusing is logged: under a flood, every request is refused.
const WARNING_INTERVAL_MS: u64 = 60_000;

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the request body is over {0} bytes")]
    TooLarge(usize),
    #[error("cannot read the request body: {0}")]
    Unreadable(String),
    #[error("the webhook is reading too many reviews at once")]
    OverBudget,
}

/// Bytes that bodies being read or handled may hold in all. Only atomics: it is taken on
/// every review.
#[derive(Debug)]
pub struct BodyBudget {
    capacity: usize,
    in_use: AtomicUsize,
    /// When a refusal may next be logged, in milliseconds since `origin`.
    next_warning: AtomicU64,
    origin: Instant,
}

/// Bytes taken from a [`BodyBudget`], given back when dropped: whether the request is
/// answered, its body fails or times out, or its client leaves and the handler is dropped.
#[derive(Debug)]
pub struct Held<'a> {
    budget: &'a BodyBudget,
    bytes: usize,
}

impl BodyBudget {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            in_use: AtomicUsize::new(0),
            next_warning: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Reads `body`, at most `limit` bytes, holding the memory of the bytes received in the
    /// budget until the returned [`Held`] is dropped. Refused before any byte is read when it
    /// announces more than the limit; refused as soon as its bytes arrive when the budget has
    /// not enough left for them.
    pub async fn read(&self, mut body: Body, limit: usize) -> Result<(Bytes, Held<'_>), Refused> {
        let hint = body.size_hint();
        let announced = usize::try_from(hint.lower()).unwrap_or(usize::MAX);
        if announced > limit {
            return Err(Refused::TooLarge(limit));
        }
        let most = hint.upper().map_or(limit, |upper| {
            usize::try_from(upper).unwrap_or(limit).min(limit)
        });
        let mut held = Held {
            budget: self,
            bytes: 0,
        };
        let mut joined = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| Refused::Unreadable(error.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let received = joined.len() + data.len();
            if received > limit {
                return Err(Refused::TooLarge(limit));
            }
            if received > joined.capacity() {
                // Frames are copied into one buffer whose capacity, not length, is held: that
                // is the memory it takes. Kept as they come, hyper's frames would pin its read
                // buffers (one byte can keep kilobytes alive). The buffer is exact for a first
                // frame (most bodies are one), then grows to powers of two, never past the
                // announced length: under twice what arrived, with few copies.
                let capacity = match joined.capacity() {
                    0 => received,
                    _ => received.next_power_of_two().min(most).max(received),
                };
                held.cover(capacity)?;
                joined.reserve_exact(capacity - joined.len());
            }
            joined.extend_from_slice(&data);
        }
        Ok((Bytes::from(joined), held))
    }

    /// Whether a refusal should be logged now: once per interval, whichever request asks first.
    pub fn warning_due(&self) -> bool {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_warning.load(Ordering::Relaxed);
        now >= due
            && self
                .next_warning
                .compare_exchange(
                    due,
                    now.saturating_add(WARNING_INTERVAL_MS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Resolves once exactly `bytes` are held; fails the test past a few seconds.
    #[cfg(test)]
    pub(crate) async fn until_in_use(&self, bytes: usize) {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while self.in_use() != bytes {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        });
        if waited.await.is_err() {
            panic!("{} bytes held, never {bytes}", self.in_use());
        }
    }

    fn try_take(&self, bytes: usize) -> bool {
        // One counter, so Relaxed read-modify-writes are enough to never pass the capacity.
        self.in_use
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |in_use| {
                in_use
                    .checked_add(bytes)
                    .filter(|&total| total <= self.capacity)
            })
            .is_ok()
    }
}

impl Held<'_> {
    /// Holds `bytes` more: what the body becomes once parsed.
    pub fn also(&mut self, bytes: usize) -> Result<(), Refused> {
        self.cover(self.bytes.saturating_add(bytes))
    }

    /// Holds `bytes` in all, taking what is missing.
    fn cover(&mut self, bytes: usize) -> Result<(), Refused> {
        let more = bytes.saturating_sub(self.bytes);
        if more == 0 {
            return Ok(());
        }
        if !self.budget.try_take(more) {
            return Err(Refused::OverBudget);
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.in_use.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bodies_hold_the_memory_of_what_they_received_until_dropped() {
        let budget = BodyBudget::new(10);
        let (first, held) = budget.read(Body::from("123456"), 8).await.expect("read");
        assert_eq!(first, "123456");
        assert_eq!(budget.in_use(), 6);
        // Refused once bytes arrive that the rest cannot cover, announced or not.
        assert!(matches!(
            budget.read(Body::from("12345"), 8).await,
            Err(Refused::OverBudget)
        ));
        let chunks = ["12", "345"].map(|c| Ok::<_, std::io::Error>(Bytes::from(c)));
        let streamed = Body::from_stream(futures::stream::iter(chunks));
        assert!(matches!(
            budget.read(streamed, 8).await,
            Err(Refused::OverBudget)
        ));
        assert_eq!(budget.in_use(), 6);
        drop(held);
        assert_eq!(budget.in_use(), 0);
        let chunks = ["12", "345"].map(|c| Ok::<_, std::io::Error>(Bytes::from(c)));
        let streamed = Body::from_stream(futures::stream::iter(chunks));
        let (joined, held) = budget.read(streamed, 8).await.expect("read");
        assert_eq!(joined, "12345");
        // Its buffer: 2 bytes for the first frame, then grown to a power of two.
        assert_eq!(budget.in_use(), 8);
        drop(held);
        assert!(matches!(
            budget.read(Body::from("123456789"), 8).await,
            Err(Refused::TooLarge(8))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_logged_once_per_interval() {
        let budget = BodyBudget::new(0);
        assert!(budget.warning_due());
        assert!(!budget.warning_due());
        tokio::time::advance(Duration::from_millis(WARNING_INTERVAL_MS - 1)).await;
        assert!(!budget.warning_due());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(budget.warning_due());
        assert!(!budget.warning_due());
    }
}
