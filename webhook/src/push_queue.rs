//! One push at a time per namespace, and only the newest change waiting for its turn.
//!
//! Each review of a managed-label change pushes to every remote. Without this, a caller that
//! repeats reviews (an apiserver retrying, or a flood of forged ones) turns each into writes
//! on every remote. Here a namespace has at most one push running; a push still waiting when
//! a newer change of the same namespace arrives is dropped, since the newer one carries the
//! primary's latest word. A flood of N reviews of one namespace costs two pushes, not N.
//!
//! Entries live only while a review of their namespace is being answered.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

/// Pushes being made or waiting, by namespace. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct PushQueue {
    namespaces: Arc<Mutex<HashMap<String, Entry>>>,
}

/// A namespace's slot and the reviews holding a place in it, counted under the map's lock:
/// the last to leave removes the entry. (Counting the slot's references instead misses it
/// when two leave at once: each sees the other's not yet dropped.)
struct Entry {
    slot: Arc<Slot>,
    places: usize,
}

#[derive(Default)]
struct Slot {
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Tickets handed out so far.
    issued: AtomicU64,
    /// Tickets of the reviews holding a place (waiting or pushing): the newest of them is the
    /// one to push. A review whose request went away while it waited leaves, and supersedes
    /// nothing: the change before it would otherwise be pushed by nobody.
    holders: Mutex<BTreeSet<u64>>,
}

impl Slot {
    fn holders(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.holders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a review waiting to push gets.
pub enum Turn {
    /// Push now; the namespace is this review's until the [`Ticket`] is dropped.
    Go(Ticket),
    /// A newer change of the namespace arrived while this one waited; it pushes instead.
    Superseded,
    /// The deadline passed while an earlier push of the namespace was still running.
    TimedOut,
}

/// Holds a namespace's turn; dropping it lets the next review push.
pub struct Ticket {
    _turn: OwnedMutexGuard<()>,
    _place: Place,
}

/// A review's place in its namespace's queue; the last one to leave removes the entry.
struct Place {
    queue: PushQueue,
    namespace: String,
    slot: Arc<Slot>,
    ticket: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.slot.holders().remove(&self.ticket);
        let mut namespaces = self.queue.lock();
        if let Some(entry) = namespaces.get_mut(&self.namespace) {
            entry.places -= 1;
            if entry.places == 0 {
                namespaces.remove(&self.namespace);
            }
        }
    }
}

impl PushQueue {
    /// Waits until `namespace` may be pushed, up to `deadline`.
    pub async fn turn(&self, namespace: &str, deadline: Instant) -> Turn {
        let (place, ticket) = {
            let mut namespaces = self.lock();
            let entry = namespaces
                .entry(namespace.to_owned())
                .or_insert_with(|| Entry {
                    slot: Arc::default(),
                    places: 0,
                });
            entry.places += 1;
            let slot = entry.slot.clone();
            let ticket = slot.issued.fetch_add(1, Ordering::SeqCst) + 1;
            slot.holders().insert(ticket);
            let place = Place {
                queue: self.clone(),
                namespace: namespace.to_owned(),
                slot,
                ticket,
            };
            (place, ticket)
        };
        let turn = place.slot.turn.clone().lock_owned();
        let Ok(turn) = tokio::time::timeout_at(deadline, turn).await else {
            return Turn::TimedOut;
        };
        if place.slot.holders().last() != Some(&ticket) {
            return Turn::Superseded;
        }
        Turn::Go(Ticket {
            _turn: turn,
            _place: place,
        })
    }

    /// Namespaces with a push running or waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map holds plain data; a panic elsewhere cannot leave it half-updated.
        self.namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// The turn of `namespace` in `queue`, which must go at once.
    async fn goes(queue: &PushQueue, namespace: &str) -> Ticket {
        let Turn::Go(ticket) = queue.turn(namespace, soon()).await else {
            panic!("{namespace} must go at once");
        };
        ticket
    }

    /// Tickets handed out for `namespace`.
    fn issued(queue: &PushQueue, namespace: &str) -> u64 {
        queue.lock()[namespace].slot.issued.load(Ordering::SeqCst)
    }

    /// Waits until `namespace` has handed out `tickets`.
    async fn until_issued(queue: &PushQueue, namespace: &str, tickets: u64) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while issued(queue, namespace) < tickets {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("tickets issued");
    }

    /// A newer review whose request went away while it waited (its future dropped) superseded
    /// the one waiting before it all the same: that change was pushed by nobody.
    #[tokio::test]
    async fn a_newer_review_that_went_away_supersedes_nothing() {
        let queue = PushQueue::default();
        let running = goes(&queue, "shop").await;
        let waits = |queue: &PushQueue| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.turn("shop", soon()).await })
        };
        let first = waits(&queue);
        until_issued(&queue, "shop", 2).await;
        let gone = waits(&queue);
        until_issued(&queue, "shop", 3).await;
        gone.abort();
        assert!(gone.await.is_err(), "the newer review went away");
        drop(running);
        assert!(matches!(first.await.expect("join"), Turn::Go(_)));
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_namespace_alone_goes_at_once_and_leaves_nothing_behind() {
        let queue = PushQueue::default();
        let ticket = goes(&queue, "shop").await;
        assert_eq!(queue.len(), 1);
        drop(ticket);
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn other_namespaces_do_not_wait() {
        let queue = PushQueue::default();
        let _shop = goes(&queue, "shop").await;
        assert!(matches!(queue.turn("bank", soon()).await, Turn::Go(_)));
    }

    #[tokio::test]
    async fn of_a_flood_only_the_running_push_and_the_newest_go() {
        let queue = PushQueue::default();
        let running = goes(&queue, "shop").await;
        let waiting: Vec<_> = (0..20)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.turn("shop", soon()).await })
            })
            .collect();
        // Every waiter has taken its ticket before the running push ends.
        tokio::time::timeout(Duration::from_secs(5), async {
            while issued(&queue, "shop") < 21 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("waiters queued");
        drop(running);
        let mut went = 0;
        for waiter in waiting {
            match waiter.await.expect("join") {
                Turn::Go(_) => went += 1,
                Turn::Superseded => {}
                Turn::TimedOut => panic!("nobody waits past the deadline here"),
            }
        }
        assert_eq!(went, 1, "only the newest waiter pushes");
        assert!(queue.is_empty());
    }

    /// The last two places of a namespace leaving at once on two threads left its entry
    /// behind, each seeing the other's reference to the slot not yet dropped: forged names
    /// would then grow the map. That moment, held here with a reference of the test's own (no
    /// schedule makes two threads meet there on demand): the entry still goes.
    #[tokio::test]
    async fn the_last_place_to_leave_removes_the_entry_whatever_still_holds_the_slot() {
        let queue = PushQueue::default();
        let ticket = goes(&queue, "shop").await;
        let leaving = queue.lock()["shop"].slot.clone();
        drop(ticket);
        assert!(queue.is_empty(), "{} entries left", queue.len());
        drop(leaving);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_deadline() {
        let queue = PushQueue::default();
        let _running = goes(&queue, "shop").await;
        let deadline = Instant::now() + Duration::from_secs(2);
        assert!(matches!(queue.turn("shop", deadline).await, Turn::TimedOut));
        assert_eq!(queue.len(), 1, "the running push keeps its entry");
    }
}
