//! What `/readyz` reports: set once the serving certificate is loaded and once the reconciler
//! has listed the primary, unset again when shutting down; read by the HTTP handlers. Apart so that neither of them depends on
//! the other.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// What `/readyz` waits for: a serving certificate, and the primary's Namespaces,
/// MeshClusters and Secrets listed once (which proves the primary client works and fills the
/// registry the webhook pushes to).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<ReadyFlags>);

#[derive(Debug, Default)]
struct ReadyFlags {
    tls: AtomicBool,
    primary: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_tls_loaded(&self) {
        self.0.tls.store(true, Ordering::Release);
    }

    pub fn set_primary_synced(&self) {
        self.0.primary.store(true, Ordering::Release);
    }

    /// Shutting down: not ready any more, so that the Service stops sending calls here, while
    /// the calls already on their way are still answered.
    pub fn set_draining(&self) {
        self.0.draining.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.missing().is_empty()
    }

    /// What is still awaited, for the answer of `/readyz`.
    pub(crate) fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.0.tls.load(Ordering::Acquire) {
            missing.push("serving certificate");
        }
        if !self.0.primary.load(Ordering::Acquire) {
            missing.push("primary cluster state");
        }
        if self.0.draining.load(Ordering::Acquire) {
            missing.push("not shutting down");
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_shutting_down_is_not_ready_any_more() {
        let readiness = Readiness::default();
        readiness.set_tls_loaded();
        readiness.set_primary_synced();
        assert!(readiness.is_ready());
        readiness.set_draining();
        assert!(!readiness.is_ready());
        assert_eq!(readiness.missing(), ["not shutting down"]);
    }
}
