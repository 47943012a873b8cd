//! [`SharedState`]: what the admission handlers and the reconciler of one process both hold.

use std::sync::Arc;

use mesh_core::{labels::SyncRule, remote::Remotes};

use crate::{in_flight::InFlight, injectors::Injectors, metrics::Metrics, readiness::Readiness};

/// The sync rule, the remotes' registry and injectors, the pushes still in flight, the metrics
/// and readiness: built once by [`crate::app`] and cloned into the handlers and the reconciler,
/// so that what one learns the other reads. Cheap to clone.
#[derive(Clone, Default)]
pub struct SharedState {
    pub rule: Arc<SyncRule>,
    /// Kept current by the reconciler's watches, read by every push.
    pub remotes: Remotes,
    pub metrics: Arc<Metrics>,
    /// Pushed but not yet persisted on the primary: a sync reads the primary through it, or it
    /// would revert a push the apiserver has not stored yet.
    pub in_flight: InFlight,
    /// The remotes' sidecar injectors as the reconciler's watches see them, for the admission
    /// answers' warnings.
    pub injectors: Injectors,
    pub readiness: Readiness,
}

impl SharedState {
    /// A state with `rule` and `remotes`, everything else new.
    pub fn new(rule: Arc<SyncRule>, remotes: Remotes) -> Self {
        Self {
            rule,
            remotes,
            ..Self::default()
        }
    }
}
