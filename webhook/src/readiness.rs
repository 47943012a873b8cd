//! What `/readyz` reports: set once the serving certificate is loaded and once the reconciler
//! has listed the primary; read by the HTTP handlers. Apart so that neither of them depends on
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
}

impl Readiness {
    pub fn set_tls_loaded(&self) {
        self.0.tls.store(true, Ordering::Release);
    }

    pub fn set_primary_synced(&self) {
        self.0.primary.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.tls.load(Ordering::Acquire) && self.0.primary.load(Ordering::Acquire)
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
        missing
    }
}
