//! Whether a remote enforces [`SYNC_SCOPE`](setup::SYNC_SCOPE) on the sync account as the
//! installed rule and the cluster's scope want it, asked the only way that tells for sure: as
//! the sync account, dry-run writes the policy must refuse (an annotation; on a synced
//! namespace, an annotation and each label the rule does not manage; the managed labels of a
//! namespace the scope leaves out), and one it must let through (the managed labels of a
//! synced namespace).
//!
//! Attach waits for it before it stores the token on the primary (an apiserver loads a new or
//! updated policy a moment after it is written), and `check` asks it with the stored
//! credentials. A dry run stores nothing; admission policies run on it all the same.
//!
//! The policy also records the cluster's scope ([`recorded`]): what a forced detach leaves on
//! the remote tells a later detach or attach which namespaces it covers.

use std::time::Duration;

use k8s_openapi::api::{admissionregistration::v1::ValidatingAdmissionPolicy, core::v1::Namespace};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use mesh_core::{
    MESH_NAMESPACE,
    cluster::NamespaceScope,
    labels::{DEFAULT_MANAGED_LABELS, SyncRule},
    list,
};
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

/// What [`probe`] found: a [`Scope`], or a change of a synced namespace that the rule does
/// not manage and that went through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// As [`Scope`] says.
    Scope(Scope),
    /// `change` of namespace `namespace`, which the rule syncs, went through: the policy lets
    /// the sync account change more than the managed labels (it was written for a rule that
    /// managed more, or edited), or the rule's policy is not loaded yet.
    Unrefused {
        /// The synced namespace the change was tried on.
        namespace: String,
        /// What was changed, as `label istio.io/rev` or `annotation …`.
        change: String,
    },
}

/// The value the probe gives the labels it tries (never stored: a dry run).
const PROBE_VALUE: &str = "kubectl-mesh-probe";
/// Annotation the probe tries to add (never stored: a dry run).
const PROBE_ANNOTATION: &str = "kubectl-mesh.io/scope-probe";
/// A label key no rule is expected to manage, tried as well as the default managed labels the
/// rule leaves out: a policy that keeps no other label unchanged lets it through.
const PROBE_LABEL: &str = "kubectl-mesh.io/scope-probe";

/// As `client` (the sync account): a dry-run annotation of the remote's mesh namespace, an
/// edit the policy must refuse; then, on a namespace the rule (the installed rule within the
/// cluster's scope) syncs, a dry-run change of every label it manages, which the policy must
/// let through, and an annotation and a change of each label it does not manage, which the
/// policy must refuse; last the managed labels on a namespace only the scope leaves out,
/// which it must refuse. Another refusal (RBAC, another policy) is an error: it says nothing
/// about this policy.
pub async fn probe(client: &Client, rule: &SyncRule) -> Result<Found, kube::Error> {
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
    /// Changes of a synced namespace the policy must refuse, each described: it covers the
    /// namespace, and the rule manages none of them.
    unmanaged: Vec<(String, Value)>,
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
            unmanaged: unmanaged_changes(rule),
        })
    }

    async fn run(&self) -> Result<Found, kube::Error> {
        let annotation = json!({"metadata": {"annotations": {PROBE_ANNOTATION: PROBE_VALUE}}});
        if !refused_by_scope(self.dry_run(MESH_NAMESPACE, &annotation).await)? {
            return Ok(Found::Scope(Scope::NotEnforced));
        }
        // Where there is no namespace to try, the refusal above is all there is to know.
        if let Some(synced) = &self.synced {
            if refused_by_scope(self.dry_run(synced, &self.managed).await)? {
                return Ok(Found::Scope(Scope::Stale {
                    namespace: synced.clone(),
                }));
            }
            // At once: a slow remote costs one answer, not one per change.
            let tried = self.unmanaged.iter().map(|(_, c)| self.dry_run(synced, c));
            let answers = futures::future::join_all(tried).await;
            for ((change, _), answer) in self.unmanaged.iter().zip(answers) {
                if !refused_by_scope(answer)? {
                    return Ok(Found::Unrefused {
                        namespace: synced.clone(),
                        change: change.clone(),
                    });
                }
            }
        }
        if let Some(left_out) = &self.only_out_of_scope
            && !refused_by_scope(self.dry_run(left_out, &self.managed).await)?
        {
            return Ok(Found::Scope(Scope::Wider {
                namespace: left_out.clone(),
            }));
        }
        Ok(Found::Scope(Scope::Enforced))
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

/// The changes of a synced namespace the policy must refuse the sync account: an annotation,
/// and each label `rule` does not manage among the default managed labels (a policy written
/// before the rule dropped one still lets it through) and [`PROBE_LABEL`]. One label each: a
/// patch of several is refused when any one is.
fn unmanaged_changes(rule: &SyncRule) -> Vec<(String, Value)> {
    let annotation = (
        format!("annotation {PROBE_ANNOTATION}"),
        json!({"metadata": {"annotations": {PROBE_ANNOTATION: PROBE_VALUE}}}),
    );
    let labels = DEFAULT_MANAGED_LABELS
        .into_iter()
        .chain([PROBE_LABEL])
        .filter(|key| !rule.is_managed(key))
        .map(|key| {
            (
                format!("label {key}"),
                json!({"metadata": {"labels": {key: PROBE_VALUE}}}),
            )
        });
    std::iter::once(annotation).chain(labels).collect()
}

/// Whether [`SYNC_SCOPE`](setup::SYNC_SCOPE) refused a write; any other failure is an error.
fn refused_by_scope(result: Result<Namespace, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(false),
        Err(kube::Error::Api(s)) if s.message.contains(setup::SYNC_SCOPE) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Probes until the policy is enforced or `timeout` has passed; returns the last finding (a
/// change it must refuse that went through as [`Scope::NotEnforced`]).
pub async fn wait_enforced(
    client: &Client,
    rule: &SyncRule,
    timeout: Duration,
) -> Result<Scope, kube::Error> {
    let deadline = crate::poll::deadline(timeout);
    // The namespaces to try are picked once: only the policy is waited for.
    let probe = Probe::read(client, rule).await?;
    loop {
        let found = match probe.run().await? {
            Found::Scope(scope) => scope,
            Found::Unrefused { .. } => Scope::NotEnforced,
        };
        if found == Scope::Enforced || crate::poll::is_past(deadline) {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use mesh_core::fake_apiserver::{json_response, status};

    /// A remote with namespaces `default` and [`MESH_NAMESPACE`] whose sync scope policy
    /// refuses every change of the mesh namespace and, elsewhere, lets labels `allowed`
    /// through and, when `others_kept`, nothing else (the validation of that name).
    fn remote(allowed: &'static [&'static str], others_kept: bool) -> Client {
        let service = tower::service_fn(move |request: Request<kube::client::Body>| async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            let path = parts.uri.path();
            let (code, answer) = if path == "/api/v1/namespaces" {
                let items: Vec<Value> = ["default", MESH_NAMESPACE]
                    .map(|n| json!({"metadata": {"name": n}}))
                    .into();
                let list = json!({"apiVersion": "v1", "kind": "NamespaceList",
                    "metadata": {}, "items": items});
                (StatusCode::OK, list)
            } else {
                let name = path.rsplit('/').next().unwrap_or_default().to_owned();
                let patch: Value = serde_json::from_slice(&body).expect("a JSON patch");
                let metadata = &patch["metadata"];
                let labels = metadata["labels"].as_object().cloned().unwrap_or_default();
                let others_changed = metadata.get("annotations").is_some()
                    || labels.keys().any(|k| !allowed.contains(&k.as_str()));
                if name == MESH_NAMESPACE || (others_kept && others_changed) {
                    let message = format!(
                        "ValidatingAdmissionPolicy '{}' denied request",
                        setup::SYNC_SCOPE
                    );
                    status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &message)
                } else {
                    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": name, "labels": labels}});
                    (StatusCode::OK, ns)
                }
            };
            Ok::<_, std::convert::Infallible>(json_response(code, &answer))
        });
        Client::new(service, "default")
    }

    fn managing(keys: &[&str]) -> SyncRule {
        let excluded = mesh_core::labels::DEFAULT_EXCLUDED_NAMESPACES.map(String::from);
        SyncRule::new(keys.iter().map(|k| (*k).to_owned()), excluded)
    }

    const DEFAULT: &[&str] = &DEFAULT_MANAGED_LABELS;

    #[tokio::test]
    async fn a_policy_for_the_rule_is_enforced() {
        let rule = managing(&["istio-injection", "istio.io/rev"]);
        let found = probe(&remote(&["istio-injection", "istio.io/rev"], true), &rule).await;
        assert_eq!(found.unwrap(), Found::Scope(Scope::Enforced));
    }

    /// Installed again with fewer managed labels, and not re-attached: the policy still lets
    /// the dropped label through on every synced namespace. The mesh namespace refuses all,
    /// whatever the labels: only a synced namespace tells.
    #[tokio::test]
    async fn a_policy_for_a_rule_that_managed_more_is_found() {
        let rule = managing(&["istio-injection", "istio.io/rev"]);
        let found = probe(&remote(DEFAULT, true), &rule).await;
        assert_eq!(
            found.unwrap(),
            Found::Unrefused {
                namespace: "default".into(),
                change: "label istio.io/dataplane-mode".into(),
            }
        );
        // And attach does not take it for enforced.
        let waited = wait_enforced(&remote(DEFAULT, true), &rule, Duration::ZERO).await;
        assert_eq!(waited.unwrap(), Scope::NotEnforced);
    }

    /// A policy without its validation that other metadata is kept still refuses the mesh
    /// namespace (its excluded namespaces' validation): only a synced namespace tells.
    #[tokio::test]
    async fn a_policy_that_keeps_nothing_else_unchanged_is_found() {
        let rule = SyncRule::default();
        let found = probe(&remote(DEFAULT, false), &rule).await;
        assert_eq!(
            found.unwrap(),
            Found::Unrefused {
                namespace: "default".into(),
                change: format!("annotation {PROBE_ANNOTATION}"),
            }
        );
        let waited = wait_enforced(&remote(DEFAULT, false), &rule, Duration::ZERO).await;
        assert_eq!(waited.unwrap(), Scope::NotEnforced);
    }

    /// Where the rule manages every default label, a label no rule manages is tried still.
    #[test]
    fn a_label_the_rule_does_not_manage_is_always_tried() {
        let tried: Vec<String> = unmanaged_changes(&SyncRule::default())
            .into_iter()
            .map(|(change, _)| change)
            .collect();
        assert_eq!(
            tried,
            [
                format!("annotation {PROBE_ANNOTATION}"),
                format!("label {PROBE_LABEL}")
            ]
        );
    }
}
