//! Whether a remote enforces [`SYNC_SCOPE`](setup::SYNC_SCOPE) on the sync account, asked the
//! only way that tells for sure: as the sync account, a dry-run write the policy must refuse.
//!
//! Attach waits for it before it stores the token on the primary (an apiserver loads a new
//! policy a moment after it is created), and `check` asks it with the stored credentials. A
//! dry run stores nothing; admission policies run on it all the same.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use mesh_core::MESH_NAMESPACE;

use crate::remote_setup as setup;

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The policy refused the probe.
    Enforced,
    /// The probe's write would have gone through: the sync account may change anything.
    NotEnforced,
}

/// Annotation the probe tries to add (never stored: a dry run).
const PROBE_ANNOTATION: &str = "kubectl-mesh.io/scope-probe";

/// As `client` (the sync account), a dry-run annotation of the remote's mesh namespace: an
/// edit the policy must refuse. Another refusal (RBAC, another policy) is an error: it says
/// nothing about this policy.
pub async fn probe(client: &Client) -> Result<Scope, kube::Error> {
    let params = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let patch = serde_json::json!({
        "metadata": {"annotations": {PROBE_ANNOTATION: "dry-run"}}
    });
    match Api::<Namespace>::all(client.clone())
        .patch(MESH_NAMESPACE, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Scope::NotEnforced),
        Err(kube::Error::Api(s)) if s.message.contains(setup::SYNC_SCOPE) => Ok(Scope::Enforced),
        Err(e) => Err(e),
    }
}

/// Probes until the policy is enforced or `timeout` has passed; returns the last finding.
pub async fn wait_enforced(client: &Client, timeout: Duration) -> Result<Scope, kube::Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = probe(client).await?;
        if found == Scope::Enforced || Instant::now() >= deadline {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
