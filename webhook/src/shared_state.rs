//! [`SharedState`]: what the admission handlers and the reconciler of one process both hold.

use std::sync::Arc;

use mesh_core::{labels::SyncRule, remote::Remotes};

use crate::{
    in_flight::InFlight, injectors::Injectors, metrics::Metrics, primary_view::PrimaryNamespaces,
    readiness::Readiness, remote_watch::Interner,
};

/// The sync rule, the remotes' registry and injectors, the primary's namespaces, the pushes
/// still in flight, the metrics and readiness: built once by [`crate::app`] and cloned into the
/// handlers and the reconciler, so that what one learns the other reads. Cheap to clone.
#[derive(Clone)]
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
    /// The primary's namespaces as the reconciler's watch keeps them, by `rule`: what every
    /// sync compares with, and what tells a review which namespaces exist already.
    pub(crate) primary: PrimaryNamespaces,
}

impl SharedState {
    /// A state with `rule` and `remotes`, everything else new.
    pub fn new(rule: Arc<SyncRule>, remotes: Remotes) -> Self {
        Self {
            primary: PrimaryNamespaces::new(rule.clone(), Interner::default()),
            rule,
            remotes,
            metrics: Arc::default(),
            in_flight: InFlight::default(),
            injectors: Injectors::default(),
            readiness: Readiness::default(),
        }
    }
}

impl Default for SharedState {
    fn default() -> Self {
        Self::new(Arc::default(), Remotes::default())
    }
}
