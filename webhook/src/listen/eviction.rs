//! The open connections of one listener, and which one closes when a new one needs room.
//!
//! Past [`super::Limits::max_connections`] the listener keeps accepting: the new connection
//! takes the place of the one idle longest (no request in progress), those that never made a
//! request first, and accepting waits only while every connection has a request in progress.
//! Connections that merely stay open (no ClientHello, no HTTP/2 preface, no request) thus cannot
//! keep a caller out, however many strangers open them, while a request in progress is never cut.
//! Eviction rather than a cap per peer address: the apiserver may call from few addresses (one
//! per replica, or one behind a proxy) and need many connections, while strangers on a hostile
//! network may come from many; a per-peer cap would fail the first and not stop the second.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};

use super::activity::{Activity, Load};

/// The connection to close to make room, among `(id, load)`: never one with a request in
/// progress; of the others, one that never made a request before one that did, and the one idle
/// longest first (the oldest id on a tie).
pub(super) fn victim(loads: impl IntoIterator<Item = (u64, Load)>) -> Option<(u64, Load)> {
    loads
        .into_iter()
        .filter_map(|(id, load)| match load {
            Load::Busy => None,
            Load::Idle { served, since } => Some(((served, since, id), load)),
        })
        .min_by_key(|(key, _)| *key)
        .map(|((_, _, id), load)| (id, load))
}

/// Evicted connections that may be closing in order at once, of `max` open: past it, they
/// close at once. Each takes at most [`super::IDLE_CLOSE_GRACE`] to close.
pub(super) fn max_closing(max: usize) -> usize {
    max / 16 + 1
}

/// How an evicted connection closes.
#[derive(Debug)]
pub(super) enum Eviction {
    /// At once: it never made a request, or too many evicted ones are closing already.
    Now,
    /// In order (an HTTP/2 GOAWAY, which a client that made requests may rely on), briefly;
    /// the permit bounds how many evicted connections are closing at once.
    InOrder(OwnedSemaphorePermit),
}

/// The open connections, at most `max`.
#[derive(Clone, Debug)]
pub(super) struct Open(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    max: usize,
    table: Mutex<Table>,
    /// Notified when a connection closes or is left without a request in progress.
    changed: Arc<Notify>,
    /// Evicted connections closing in order, at most [`max_closing`].
    closing: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    activity: Activity,
    evict: oneshot::Sender<Eviction>,
}

/// A connection given a place: its activity (from now), what tells it it was evicted, and the
/// place itself, given back when dropped.
pub(super) struct Admitted {
    pub(super) activity: Activity,
    pub(super) evicted: oneshot::Receiver<Eviction>,
    pub(super) place: Place,
}

/// A connection's place among the open ones, given back when dropped.
#[derive(Debug)]
pub(super) struct Place {
    open: Arc<Shared>,
    id: u64,
}

/// What [`Open::admit`] did.
pub(super) enum Admission {
    /// There was room.
    Admitted(Admitted),
    /// There was room once the connection idle longest was told to close.
    Evicted(Admitted),
    /// Every connection has a request in progress.
    Full,
}

impl Open {
    pub(super) fn new(max: usize) -> Self {
        let max = max.max(1);
        Self(Arc::new(Shared {
            max,
            table: Mutex::new(Table::default()),
            changed: Arc::default(),
            closing: Arc::new(Semaphore::new(max_closing(max))),
        }))
    }

    /// Whether [`Open::admit`] would admit a connection now.
    pub(super) fn has_room(&self) -> bool {
        let table = self.0.table.lock().expect("connection table");
        table.entries.len() < self.0.max
            || table
                .entries
                .values()
                .any(|entry| entry.activity.load() != Load::Busy)
    }

    /// Resolves once [`Open::has_room`] (or maybe soon after, when another took it).
    pub(super) async fn room(&self) {
        while !self.has_room() {
            self.0.changed.notified().await;
        }
    }

    /// Gives a new connection a place, evicting the connection idle longest if there is no
    /// free one.
    pub(super) fn admit(&self) -> Admission {
        let mut table = self.0.table.lock().expect("connection table");
        let mut evicted = false;
        if table.entries.len() >= self.0.max {
            let loads = table
                .entries
                .iter()
                .map(|(id, entry)| (*id, entry.activity.load()));
            let Some((id, load)) = victim(loads) else {
                return Admission::Full;
            };
            let entry = table.entries.remove(&id).expect("victim is open");
            let how = match load {
                Load::Idle { served: true, .. } => self
                    .0
                    .closing
                    .clone()
                    .try_acquire_owned()
                    .map_or(Eviction::Now, Eviction::InOrder),
                _ => Eviction::Now,
            };
            // Gone already if its connection just ended.
            let _ = entry.evict.send(how);
            evicted = true;
        }
        let id = table.next_id;
        table.next_id += 1;
        let activity = Activity::new(self.0.changed.clone());
        let (evict, evicted_rx) = oneshot::channel();
        table.entries.insert(
            id,
            Entry {
                activity: activity.clone(),
                evict,
            },
        );
        let admitted = Admitted {
            activity,
            evicted: evicted_rx,
            place: Place {
                open: self.0.clone(),
                id,
            },
        };
        if evicted {
            Admission::Evicted(admitted)
        } else {
            Admission::Admitted(admitted)
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.table.lock().expect("connection table").entries.len()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // Not there any more if it was evicted.
        let removed = self
            .open
            .table
            .lock()
            .expect("connection table")
            .entries
            .remove(&self.id);
        if removed.is_some() {
            self.open.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    fn idle(served: bool, ago: u64) -> Load {
        Load::Idle {
            served,
            since: Instant::now() - Duration::from_secs(ago),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_victim_is_idle_never_served_first_then_idle_longest() {
        tokio::time::advance(Duration::from_secs(1000)).await;
        assert_eq!(victim([]), None);
        assert_eq!(victim([(1, Load::Busy), (2, Load::Busy)]), None);
        // Never served before served, however long the served one has been idle.
        let loads = [
            (1, Load::Busy),
            (2, idle(true, 500)),
            (3, idle(false, 1)),
            (4, idle(false, 5)),
        ];
        assert_eq!(victim(loads).map(|(id, _)| id), Some(4));
        // Among served ones, the one idle longest.
        let loads = [(1, idle(true, 5)), (2, idle(true, 50)), (3, Load::Busy)];
        assert_eq!(victim(loads).map(|(id, _)| id), Some(2));
        // A tie: the oldest connection.
        let loads = [(7, idle(false, 5)), (3, idle(false, 5))];
        assert_eq!(victim(loads).map(|(id, _)| id), Some(3));
    }

    fn admitted(admission: Admission) -> Admitted {
        match admission {
            Admission::Admitted(admitted) => admitted,
            Admission::Evicted(_) => panic!("evicted one"),
            Admission::Full => panic!("full"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_the_idle_longest_makes_room_and_busy_ones_never() {
        let open = Open::new(3);
        let served = admitted(open.admit());
        drop(served.activity.start());
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut silent = admitted(open.admit());
        tokio::time::advance(Duration::from_secs(1)).await;
        let busy = admitted(open.admit());
        let request = busy.activity.start();
        assert_eq!(open.len(), 3);
        assert!(open.has_room());

        // The one that never made a request goes first, at once.
        let Admission::Evicted(mut newer) = open.admit() else {
            panic!("no eviction")
        };
        assert!(matches!(silent.evicted.try_recv(), Ok(Eviction::Now)));
        assert_eq!(open.len(), 3);
        drop(silent.place);
        assert_eq!(open.len(), 3);

        // Then, the newer one busy, the served one idle longest, in order.
        let newer_request = newer.activity.start();
        let mut served = served;
        let Admission::Evicted(newest) = open.admit() else {
            panic!("no eviction")
        };
        assert!(matches!(
            served.evicted.try_recv(),
            Ok(Eviction::InOrder(_))
        ));
        assert!(newer.evicted.try_recv().is_err());

        // Every connection busy: no room until a request ends.
        let requests = (newer_request, newest.activity.start());
        assert!(!open.has_room());
        assert!(matches!(open.admit(), Admission::Full));
        let waiting = tokio::spawn({
            let open = open.clone();
            async move { open.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(request);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("room once a request ended")
            .expect("join");
        drop(requests);

        // A connection closing gives its place back.
        drop(busy.place);
        assert_eq!(open.len(), 2);
        assert!(matches!(open.admit(), Admission::Admitted(_)));
    }
}
