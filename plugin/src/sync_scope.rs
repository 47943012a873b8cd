//! Whether a remote enforces [`SYNC_SCOPE`](setup::SYNC_SCOPE) on the sync account as the
//! installed rule and the cluster's scope want it, asked the only way that tells for sure: as
//! the sync account, dry-run writes the policy must refuse (an annotation; the managed labels
//! of a namespace the scope leaves out), and one it must let through (the managed labels of a
//! synced namespace).
//!
//! Attach waits for it before it stores the token on the primary (an apiserver loads a new or
//! updated policy a moment after it is written), and `check` asks it with the stored
//! credentials. A dry run stores nothing; admission policies run on it all the same.
//!
//! The policy also records the cluster's scope ([`recorded`]): what a forced detach leaves on
//! the remote tells a later detach or attach which namespaces it covers.

use std::time::{Duration, Instant};

use k8s_openapi::api::{admissionregistration::v1::ValidatingAdmissionPolicy, core::v1::Namespace};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use mesh_core::{MESH_NAMESPACE, cluster::NamespaceScope, labels::SyncRule, list};
use serde_json::{Value, json};

use crate::remote_setup as setup;

/// The remote's sync scope policy, as a later command finds it.
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    /// Made by the attach of this cluster from this primary, with the scope it records (none
    /// from an older attach).
    Ours(Option<NamespaceScope>),
    /// Made by another primary's attach: that primary holds the cluster now.
    Others,
    /// Not there.
    Gone,
}

/// Reads the remote's sync scope policy: whether the attach of `cluster` from the primary
/// whose id is `primary` made it, and the scope it records.
pub async fn recorded(
    client: &Client,
    cluster: &str,
    primary: &str,
) -> Result<Recorded, kube::Error> {
    let policy = Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .get_opt(setup::SYNC_SCOPE)
        .await?;
    Ok(match policy {
        None => Recorded::Gone,
        Some(p) if setup::is_ours_from(&p.metadata, cluster, primary) => {
            Recorded::Ours(setup::recorded_scope(&p))
        }
        Some(_) => Recorded::Others,
    })
}

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The policy refuses an annotation and lets the managed labels through.
    Enforced,
    /// The annotation would have gone through: the sync account may change anything.
    NotEnforced,
    /// The policy refuses the managed labels of the rule, on namespace `namespace`: it was
    /// written for another rule (the rule changed since attach), or not loaded yet.
    Stale {
        /// The synced namespace the labels were tried on.
        namespace: String,
    },
    /// The policy lets the managed labels through on namespace `namespace`, which the
    /// cluster's scope leaves out: it was written for a wider scope (the MeshCluster was
    /// edited by hand, or attached before the remote enforced scopes), or not loaded yet.
    Wider {
        /// The out-of-scope namespace the labels were tried on.
        namespace: String,
    },
}

/// The value the probe gives the managed labels (never stored: a dry run).
const PROBE_VALUE: &str = "kubectl-mesh-probe";
/// Annotation the probe tries to add (never stored: a dry run).
const PROBE_ANNOTATION: &str = "kubectl-mesh.io/scope-probe";

/// As `client` (the sync account): a dry-run annotation of the remote's mesh namespace, an
/// edit the policy must refuse; then a dry-run change of every label `rule` (the installed
/// rule within the cluster's scope) manages on a namespace it syncs, which the policy must let
/// through, and on one only the scope leaves out, which it must refuse. Another refusal (RBAC,
/// another policy) is an error: it says nothing about this policy.
pub async fn probe(client: &Client, rule: &SyncRule) -> Result<Scope, kube::Error> {
    Probe::read(client, rule).await?.run().await
}

/// The writes [`probe`] tries, on namespaces picked once from every namespace of the remote.
struct Probe {
    namespaces: Api<Namespace>,
    /// A namespace the rule syncs: the policy must let the managed labels through.
    synced: Option<String>,
    /// A namespace only the cluster's scope leaves out (not merely excluded by the installed
    /// rule, which the policy need not refuse): the policy must refuse them.
    only_out_of_scope: Option<String>,
    /// Every label the rule manages, set to [`PROBE_VALUE`].
    managed: Value,
}

impl Probe {
    async fn read(client: &Client, rule: &SyncRule) -> Result<Self, kube::Error> {
        let namespaces = Api::<Namespace>::all(client.clone());
        let (mut synced, mut only_out_of_scope) = (None, None);
        // Every namespace, in pages: on a remote with many, the ones to try may come late.
        list::in_pages(&namespaces, &ListParams::default(), |ns| {
            let name = ns.name_any();
            if rule.covers(&ns) {
                synced.get_or_insert(name);
            } else if rule.is_out_of_scope(&name) || !rule.is_excluded(&name) {
                only_out_of_scope.get_or_insert(name);
            }
        })
        .await?;
        let labels: serde_json::Map<String, Value> = rule
            .managed_keys()
            .map(|k| (k.to_owned(), PROBE_VALUE.into()))
            .collect();
        Ok(Self {
            namespaces,
            synced,
            only_out_of_scope,
            managed: json!({"metadata": {"labels": labels}}),
        })
    }

    async fn run(&self) -> Result<Scope, kube::Error> {
        let annotation = json!({"metadata": {"annotations": {PROBE_ANNOTATION: PROBE_VALUE}}});
        if !refused_by_scope(self.dry_run(MESH_NAMESPACE, &annotation).await)? {
            return Ok(Scope::NotEnforced);
        }
        // Where there is no namespace to try, the refusal above is all there is to know.
        if let Some(synced) = &self.synced
            && refused_by_scope(self.dry_run(synced, &self.managed).await)?
        {
            return Ok(Scope::Stale {
                namespace: synced.clone(),
            });
        }
        if let Some(left_out) = &self.only_out_of_scope
            && !refused_by_scope(self.dry_run(left_out, &self.managed).await)?
        {
            return Ok(Scope::Wider {
                namespace: left_out.clone(),
            });
        }
        Ok(Scope::Enforced)
    }

    async fn dry_run(&self, name: &str, patch: &Value) -> Result<Namespace, kube::Error> {
        let params = PatchParams {
            dry_run: true,
            ..PatchParams::default()
        };
        self.namespaces
            .patch(name, &params, &Patch::Merge(patch))
            .await
    }
}

/// Whether [`SYNC_SCOPE`](setup::SYNC_SCOPE) refused a write; any other failure is an error.
fn refused_by_scope(result: Result<Namespace, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(false),
        Err(kube::Error::Api(s)) if s.message.contains(setup::SYNC_SCOPE) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Probes until the policy is enforced or `timeout` has passed; returns the last finding.
pub async fn wait_enforced(
    client: &Client,
    rule: &SyncRule,
    timeout: Duration,
) -> Result<Scope, kube::Error> {
    let deadline = Instant::now() + timeout;
    // The namespaces to try are picked once: only the policy is waited for.
    let probe = Probe::read(client, rule).await?;
    loop {
        let found = probe.run().await?;
        if found == Scope::Enforced || Instant::now() >= deadline {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
