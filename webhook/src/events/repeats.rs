//! Repeats held back: the first of a key is told at once, the others within a window only
//! counted, so that a label fought over or a dark cluster does not write to the primary at
//! every sync or review. Pure: time is given.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    hash::Hash,
    time::{Duration, Instant},
};

/// How many windows a key holding repeats not yet told outlives its last occurrence.
const HELD_KEPT_FOR: u32 = 10;

/// Holds back repeats of the same key within a window: the first is reported at once, the
/// others are only counted, and the first report after the window carries their count.
/// Pure: time is given.
#[derive(Debug)]
pub(super) struct Throttle<K> {
    window: Duration,
    seen: HashMap<K, Seen>,
    pruned_at: Option<Instant>,
}

#[derive(Debug)]
struct Seen {
    reported_at: Instant,
    last: Instant,
    /// Repeats held since `reported_at`.
    held: u32,
}

/// What to do with one occurrence.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Report it, saying that `held` repeats since the last report were not.
    Report {
        held: u32,
    },
    Hold,
}

impl<K: Hash + Eq> Throttle<K> {
    pub(super) fn new(window: Duration) -> Self {
        Self {
            window,
            seen: HashMap::new(),
            pruned_at: None,
        }
    }

    pub(super) fn check(&mut self, key: K, now: Instant) -> Verdict {
        self.prune(now);
        match self.seen.entry(key) {
            Entry::Vacant(entry) => {
                entry.insert(Seen {
                    reported_at: now,
                    last: now,
                    held: 0,
                });
                Verdict::Report { held: 0 }
            }
            Entry::Occupied(mut entry) => {
                let seen = entry.get_mut();
                seen.last = now;
                if now.saturating_duration_since(seen.reported_at) < self.window {
                    seen.held = seen.held.saturating_add(1);
                    Verdict::Hold
                } else {
                    seen.reported_at = now;
                    Verdict::Report {
                        held: std::mem::take(&mut seen.held),
                    }
                }
            }
        }
    }

    /// A report of `key` that [`Throttle::check`] let through, carrying `held` repeats, was
    /// not published: the window stays taken (a primary refusing Events must not get one per
    /// occurrence), and the next report counts it and what it carried, even when the key was
    /// forgotten while the report waited to be published.
    pub(super) fn unpublished(&mut self, key: K, held: u32, now: Instant) {
        let seen = self.seen.entry(key).or_insert(Seen {
            reported_at: now,
            last: now,
            held: 0,
        });
        seen.held = seen.held.saturating_add(held).saturating_add(1);
    }

    /// Whether [`Throttle::check`] would hold `key` now.
    fn holds(&self, key: &K, now: Instant) -> bool {
        self.seen
            .get(key)
            .is_some_and(|seen| now.saturating_duration_since(seen.reported_at) < self.window)
    }

    /// Forgets keys quiet for a window, once per window: the map holds only what is recent.
    /// A key holding repeats not yet told is kept [`HELD_KEPT_FOR`] windows, so that its next
    /// report after a quiet spell still counts them.
    fn prune(&mut self, now: Instant) {
        if self
            .pruned_at
            .is_some_and(|at| now.saturating_duration_since(at) < self.window)
        {
            return;
        }
        let window = self.window;
        self.seen.retain(|_, seen| {
            let quiet = now.saturating_duration_since(seen.last);
            quiet < window || (seen.held > 0 && quiet < window * HELD_KEPT_FOR)
        });
        self.pruned_at = Some(now);
    }
}

/// What [`PushFailures::offer`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Offer {
    /// Queued; `start_task`: no task publishes the queue, the caller must start one.
    Queued { start_task: bool },
    /// A repeat within the window, counted in the next Event of its key.
    Held,
    /// The queue is full.
    Dropped,
}

/// The push failure Events waiting to be published, by at most one task at a time: a slow
/// primary makes them wait here, bounded, instead of in a task per review. Pure: time is given.
pub(super) struct PushFailures<K, T> {
    pending: VecDeque<T>,
    capacity: usize,
    /// A task publishes `pending` (it stops, under the lock, when it finds none).
    publishing: bool,
    throttle: Throttle<K>,
}

impl<K: Hash + Eq, T> PushFailures<K, T> {
    pub(super) fn new(window: Duration, capacity: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            capacity,
            publishing: false,
            throttle: Throttle::new(window),
        }
    }

    /// Queues the Event `make` builds from the count of repeats held before it, unless it is
    /// a repeat or the queue is full.
    pub(super) fn offer(&mut self, key: K, now: Instant, make: impl FnOnce(u32) -> T) -> Offer {
        // A repeat is held even when full, so that the next Event still counts it.
        if self.pending.len() >= self.capacity && !self.throttle.holds(&key, now) {
            return Offer::Dropped;
        }
        match self.throttle.check(key, now) {
            Verdict::Hold => Offer::Held,
            Verdict::Report { held } => {
                self.pending.push_back(make(held));
                let start_task = !std::mem::replace(&mut self.publishing, true);
                Offer::Queued { start_task }
            }
        }
    }

    /// See [`Throttle::unpublished`].
    pub(super) fn unpublished(&mut self, key: K, held: u32, now: Instant) {
        self.throttle.unpublished(key, held, now);
    }

    /// The next Event for the publishing task; `None` ends it.
    pub(super) fn next(&mut self) -> Option<T> {
        let next = self.pending.pop_front();
        self.publishing = next.is_some();
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_held_and_counted() {
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let mut throttle = Throttle::new(Duration::from_secs(60));
        assert_eq!(throttle.check("a", at(0)), Verdict::Report { held: 0 });
        assert_eq!(throttle.check("a", at(3)), Verdict::Hold);
        assert_eq!(throttle.check("b", at(3)), Verdict::Report { held: 0 });
        assert_eq!(throttle.check("a", at(59)), Verdict::Hold);
        assert_eq!(throttle.check("a", at(60)), Verdict::Report { held: 2 });
        assert_eq!(throttle.check("a", at(61)), Verdict::Hold);
        // A report not published is counted, with what it carried, in the next one.
        throttle.unpublished("b", 0, at(61));
        assert_eq!(throttle.check("b", at(62)), Verdict::Hold);
        assert_eq!(throttle.check("b", at(63)), Verdict::Report { held: 2 });
        throttle.unpublished("b", 2, at(63));
        assert_eq!(throttle.check("b", at(123)), Verdict::Report { held: 3 });
        // Quiet for a window: forgotten, so the map holds only what is recent; ten windows
        // when it holds repeats not yet told.
        assert_eq!(throttle.check("c", at(200)), Verdict::Report { held: 0 });
        assert_eq!(throttle.seen.len(), 2);
        assert_eq!(throttle.check("a", at(600)), Verdict::Report { held: 1 });
        assert_eq!(throttle.check("d", at(1200)), Verdict::Report { held: 0 });
        assert_eq!(throttle.seen.len(), 1);
        // A report that waited past its key's window to be refused still counts.
        assert_eq!(throttle.check("e", at(1300)), Verdict::Report { held: 0 });
        throttle.unpublished("d", 0, at(1300));
        assert_eq!(throttle.check("d", at(1360)), Verdict::Report { held: 1 });
    }

    #[test]
    fn push_failures_wait_bounded_for_one_task() {
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let mut queue = PushFailures::new(Duration::from_secs(60), 2);
        let key = |cluster: &str| (cluster.to_owned(), "shop".to_owned());
        let mut offer = |cluster, now| queue.offer(key(cluster), now, |held| (cluster, held));
        assert_eq!(offer("a", at(0)), Offer::Queued { start_task: true });
        assert_eq!(offer("a", at(1)), Offer::Held);
        assert_eq!(offer("b", at(1)), Offer::Queued { start_task: false });
        assert_eq!(offer("c", at(1)), Offer::Dropped);
        // Held, not dropped, when full: the next Event of its key counts it.
        assert_eq!(offer("a", at(2)), Offer::Held);
        assert_eq!(queue.next(), Some(("a", 0)));
        assert_eq!(queue.next(), Some(("b", 0)));
        assert_eq!(queue.next(), None);
        // The task ended: the next failure starts another, and tells what was held.
        let mut offer = |cluster, now| queue.offer(key(cluster), now, |held| (cluster, held));
        assert_eq!(offer("a", at(60)), Offer::Queued { start_task: true });
        assert_eq!(offer("c", at(60)), Offer::Queued { start_task: false });
        assert_eq!(queue.next(), Some(("a", 2)));
    }
}
