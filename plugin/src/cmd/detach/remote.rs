//! Detach on the remote: every object attach created there for this cluster and primary is
//! deleted by name, in an order that never leaves a token without its confinement, and, with
//! `--strip-labels`, the managed labels go once the tokens are revoked, through the same sync
//! engine the webhook uses.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    core::v1::{Namespace, Secret, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client, Resource,
    api::DeleteParams,
    core::{ClusterResourceScope, NamespaceResourceScope},
};
use mesh_core::{
    MESH_NAMESPACE,
    failure::Failure,
    labels::SyncRule,
    sync::{SyncMode, sync_remote},
};
use serde::de::DeserializeOwned;

use super::super::attach::wait_namespace_gone;
use crate::{
    Error, Result,
    access::{self, Target},
    interrupt::Listener,
    namespace_contents::why_keep,
    output::Progress,
    remote_setup as setup,
};

use super::stages::{Kept, LabelsOutcome, NamespaceOutcome, Stage, Stages};

/// Which remote objects a detach deletes: attach's for this cluster, from this primary.
#[derive(Clone, Copy)]
pub(super) struct Ours<'a> {
    pub(super) cluster: &'a str,
    /// UID of the primary's kube-system namespace.
    pub(super) primary: &'a str,
}

/// Deletes the remote's objects of cluster `name`, in the order [`super`] explains, stage by
/// stage ([`Stages`]); with `strip`, also the labels that rule manages.
pub(super) async fn clean_remote(
    client: &Client,
    target: &Target,
    ours: Ours<'_>,
    strip: Option<&SyncRule>,
    timeout: Duration,
    stages: &mut Stages,
) -> Result<()> {
    let progress = stages.progress();
    let Ours {
        cluster: name,
        primary,
    } = ours;
    let fail = |doing: &str| {
        let doing = doing.to_owned();
        move |e: kube::Error| access::request_error(target, &doing, e)
    };
    let remove = Remover {
        client,
        target,
        ours,
        progress,
    };
    let stall = stages.stall();
    let (remove, stall) = (&remove, &stall);

    // A stage that deletes one of the remote's admission policies, `what` it is.
    let policy_stage = |stage, policy: &'static str, what: &'static str| async move {
        remove.policy(policy, &format!("delete the {what}")).await?;
        let deleted = || format!("{name}: {what} {policy} deleted");
        stall.after(stage, deleted).await;
        Ok(())
    };

    stages
        .run(
            Stage::Guard,
            policy_stage(Stage::Guard, setup::GUARD, "guard"),
        )
        .await?;
    stages
        .run(Stage::Tokens, async {
            // With the standbys an interrupted `rotate` may have left.
            for (i, secret) in setup::token_secrets().iter().enumerate() {
                remove
                    .in_mesh_namespace::<Secret>(secret, "delete the token Secrets")
                    .await?;
                let deleted = || format!("{name}: Secret {MESH_NAMESPACE}/{secret} deleted");
                stall.after_nth(i, Stage::Tokens, deleted).await;
            }
            // The sync account's right to renew a time-bound token (`attach --token-ttl`).
            let renewal = "delete the token renewal rights";
            remove
                .in_mesh_namespace::<RoleBinding>(setup::TOKEN_RENEWAL, renewal)
                .await?;
            remove
                .in_mesh_namespace::<Role>(setup::TOKEN_RENEWAL, renewal)
                .await?;
            // The apiserver may accept a deleted token from its cache for a few seconds more;
            // RBAC takes away what it may do at once.
            for account in setup::IDENTITIES {
                remove
                    .cluster::<ClusterRoleBinding>(account, "delete ClusterRoleBindings")
                    .await?;
            }
            Ok(())
        })
        .await?;

    if let Some(rule) = strip {
        let listener = stages.listener().clone();
        let stripped =
            strip_managed_labels(client, target, rule, name, timeout, &listener, progress);
        stages.run(Stage::Labels, stripped).await?;
    }

    // The sync scope outlives the token it confines.
    let sync_scope = policy_stage(Stage::SyncScope, setup::SYNC_SCOPE, "sync scope");
    stages.run(Stage::SyncScope, sync_scope).await?;
    stages
        .run(Stage::Identities, async {
            for (i, account) in setup::IDENTITIES.iter().enumerate() {
                remove
                    .cluster::<ClusterRole>(account, "delete ClusterRoles")
                    .await?;
                remove
                    .in_mesh_namespace::<ServiceAccount>(account, "delete ServiceAccounts")
                    .await?;
                let deleted = || format!("{name}: ServiceAccount {account} deleted");
                stall.after_nth(i, Stage::Identities, deleted).await;
            }
            Ok(())
        })
        .await?;

    // The namespace: only if attach created it. A MeshCluster that records it was there
    // before attach leaves it out of the stages; otherwise (without one: a re-run after the
    // primary side is done) its own labels say so, as attach labels only a namespace it
    // creates.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let read = fail("read the mesh namespace");
    if !stages.planned(Stage::RemoteNamespace) {
        if namespaces
            .get_opt(MESH_NAMESPACE)
            .await
            .map_err(read)?
            .is_some()
        {
            let kept = Kept::ExistedBefore.said();
            progress.info(format!("{name}: Namespace {MESH_NAMESPACE} kept ({kept})"));
        }
        return Ok(());
    }
    let outcome = stages
        .run(Stage::RemoteNamespace, async {
            let Some(ns) = namespaces.get_opt(MESH_NAMESPACE).await.map_err(read)? else {
                return Ok(NamespaceOutcome::Gone);
            };
            if !setup::is_ours_from(&ns.metadata, name, primary) {
                let kept = match setup::primary_of(&ns.metadata) {
                    Some(other) if setup::is_ours(&ns.metadata, name) => {
                        Kept::OtherPrimary(other.to_owned())
                    }
                    _ => Kept::ExistedBefore,
                };
                let why = kept.said();
                progress.info(format!("{name}: Namespace {MESH_NAMESPACE} kept ({why})"));
                return Ok(NamespaceOutcome::Kept(kept));
            }
            // An earlier detach asked for its deletion: this one waits for it too.
            if ns.metadata.deletion_timestamp.is_some() {
                return Ok(NamespaceOutcome::Deleting);
            }
            let others = why_keep(client, MESH_NAMESPACE, Some(primary))
                .await
                .map_err(fail("delete the mesh namespace"))?;
            if let Some(why) = others {
                progress.warn(format!("{name}: Namespace {MESH_NAMESPACE} kept: {why}"));
                return Ok(NamespaceOutcome::Kept(Kept::Holds(why)));
            }
            delete(&namespaces, MESH_NAMESPACE, name, progress)
                .await
                .map_err(fail("delete the mesh namespace"))?;
            let deleted = || format!("{name}: Namespace {MESH_NAMESPACE} deleted");
            stall.after(Stage::RemoteNamespace, deleted).await;
            Ok(NamespaceOutcome::Deleting)
        })
        .await?;
    if outcome == NamespaceOutcome::Deleting {
        // Cut short by an interruption: its deletion is asked, and a re-run waits again.
        let gone = wait_namespace_gone(client, MESH_NAMESPACE, timeout);
        stages.wait_end(Stage::RemoteNamespace, gone).await?;
    }
    Ok(())
}

/// A kind of object detach reads and deletes through a typed `Api`.
pub(super) trait Object:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug
{
}

impl<K> Object for K where K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug
{}

/// Deletes by name what attach created on one remote for one primary ([`delete_ours`]); a
/// refused request says what was being done.
struct Remover<'a> {
    client: &'a Client,
    target: &'a Target,
    ours: Ours<'a>,
    progress: Progress,
}

impl Remover<'_> {
    /// The cluster-scoped `object` of kind `K`.
    async fn cluster<K>(&self, object: &str, doing: &str) -> Result<()>
    where
        K: Object + Resource<Scope = ClusterResourceScope>,
    {
        self.delete(Api::<K>::all(self.client.clone()), object, doing)
            .await
    }

    /// The ValidatingAdmissionPolicyBinding `name`, then the policy of that name.
    async fn policy(&self, name: &str, doing: &str) -> Result<()> {
        self.cluster::<ValidatingAdmissionPolicyBinding>(name, doing)
            .await?;
        self.cluster::<ValidatingAdmissionPolicy>(name, doing).await
    }

    /// The `object` of kind `K` in the mesh namespace.
    async fn in_mesh_namespace<K>(&self, object: &str, doing: &str) -> Result<()>
    where
        K: Object + Resource<Scope = NamespaceResourceScope>,
    {
        let api = Api::<K>::namespaced(self.client.clone(), MESH_NAMESPACE);
        self.delete(api, object, doing).await
    }

    async fn delete<K>(&self, api: Api<K>, object: &str, doing: &str) -> Result<()>
    where
        K: Object,
    {
        let Ours { cluster, primary } = self.ours;
        delete_ours(api, object, cluster, primary, self.progress)
            .await
            .map_err(|e| access::request_error(self.target, doing, e))
    }
}

/// Deletes the object `object` when attach created it for cluster `name`; one that is not
/// (another cluster's, or not kubectl-mesh's) is kept and said so. By name, never by
/// selector: labels are anyone's to copy.
async fn delete_ours<K>(
    api: Api<K>,
    object: &str,
    name: &str,
    primary: &str,
    progress: Progress,
) -> Result<(), kube::Error>
where
    K: Object,
{
    let Some(found) = api.get_opt(object).await? else {
        return Ok(());
    };
    if !setup::is_ours_from(found.meta(), name, primary) {
        let kind = K::kind(&());
        let why = match setup::primary_of(found.meta()) {
            Some(other) if setup::is_ours(found.meta(), name) => {
                format!("another primary (kube-system uid {other}) attached this cluster since")
            }
            _ => "attach did not create it for this cluster".to_owned(),
        };
        progress.info(format!("{name}: {kind} {object} kept: {why}"));
        return Ok(());
    }
    delete(&api, object, name, progress).await
}

/// Deletes one object; one already gone is fine (re-runs).
pub(super) async fn delete<K>(
    api: &Api<K>,
    name: &str,
    side: &str,
    progress: Progress,
) -> Result<(), kube::Error>
where
    K: Object,
{
    let kind = K::kind(&());
    let what = match api.namespace() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            progress.ok(format!("{side}: {what} deleted"));
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the managed labels of every remote namespace the rule covers: a sync against an
/// empty primary, through the engine and writer the reconciler uses. The guard deleted just
/// before may still be enforced for a moment (the apiserver unloads policies asynchronously),
/// so namespaces it refused are tried again until `timeout`, or until an interruption: then
/// the labels it still refused are left for a re-run ([`after_refusal`]).
async fn strip_managed_labels(
    client: &Client,
    target: &Target,
    rule: &SyncRule,
    name: &str,
    timeout: Duration,
    listener: &Listener,
    progress: Progress,
) -> Result<LabelsOutcome> {
    let no_primary = BTreeMap::<String, Namespace>::new();
    let deadline = crate::poll::deadline(timeout);
    let mut stripped = 0;
    loop {
        let report = sync_remote(rule, &no_primary, client, SyncMode::Apply)
            .await
            .map_err(|error| access::request_error(target, "remove managed labels", error.call))?;
        for change in report.applied() {
            stripped += 1;
            let removed: Vec<&str> = change.diff.remove.iter().map(String::as_str).collect();
            progress.ok(format!(
                "{name}: Namespace {}: removed {}",
                change.diff.namespace,
                removed.join(", ")
            ));
        }
        let Some(error) = report.errors.first() else {
            break;
        };
        let only_guard = report
            .errors
            .iter()
            .all(|e| e.failure == Failure::Forbidden && e.message.contains(setup::GUARD));
        let past = crate::poll::is_past(deadline);
        let left = || LabelsOutcome::Interrupted {
            left: report.errors.iter().map(|e| e.namespace.clone()).collect(),
        };
        match after_refusal(only_guard, past, listener.received()) {
            AfterRefusal::Retry => {}
            AfterRefusal::Stop => return Ok(left()),
            AfterRefusal::Refuse => {
                return Err(Error::Refused {
                    what: format!(
                        "cannot remove managed labels of namespace {} on {}: {}",
                        error.namespace, target.label, error.message
                    ),
                    hint: "check the remote's admission policies and your rights there, then \
                           re-run detach --strip-labels"
                        .into(),
                });
            }
        }
        let pause = tokio::time::sleep(Duration::from_millis(200));
        if listener.unless(pause).await.is_none() {
            return Ok(left());
        }
    }
    if stripped == 0 {
        progress.info(format!("{name}: no namespace carried managed labels"));
    }
    Ok(LabelsOutcome::Stripped)
}

/// What stripping labels does after a pass some namespaces refused.
#[derive(Debug, PartialEq, Eq)]
enum AfterRefusal {
    /// Tries them again, after a pause.
    Retry,
    /// Stops, the labels not all stripped.
    Stop,
    /// Fails with the first refusal.
    Refuse,
}

/// What follows a pass some namespaces refused, all of them the deleted guard's (`only_guard`)
/// or not, once the timeout is `past` or not, an interruption `received` or not: a refusal of
/// another kind ends detach at once; the guard's are retried until the timeout, unless an
/// interruption came, and then the stage stops with what is stripped so far (the retries held
/// detach for the whole --timeout, a minute by default, while it said it was stopping).
fn after_refusal(only_guard: bool, past: bool, received: bool) -> AfterRefusal {
    match (only_guard, received, past) {
        (false, _, _) => AfterRefusal::Refuse,
        (true, true, _) => AfterRefusal::Stop,
        (true, false, true) => AfterRefusal::Refuse,
        (true, false, false) => AfterRefusal::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refused by the deleted guard, labels are retried until the timeout, or until an
    /// interruption: then the stage stops there, the rest left to a re-run.
    #[test]
    fn an_interruption_stops_the_retries_of_the_label_removals() {
        use AfterRefusal::*;
        assert_eq!(after_refusal(true, false, false), Retry);
        assert_eq!(after_refusal(true, false, true), Stop);
        assert_eq!(after_refusal(true, true, true), Stop);
        assert_eq!(after_refusal(true, true, false), Refuse);
        for (past, received) in [(false, false), (false, true), (true, true)] {
            assert_eq!(after_refusal(false, past, received), Refuse);
        }
    }
}
