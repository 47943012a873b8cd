//! `kubectl mesh scope`: show or change which of a remote's namespaces kubectl-mesh writes.
//!
//! The scope lives in the MeshCluster (`spec.scope`): the webhook and the reconciler follow a
//! change at once. The remote guard follows it too; changing the guard needs the remote's
//! admin credentials, so a cluster with a guard needs them here as attach does.

use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use mesh_core::cluster::{MeshCluster, NamespaceScope, RemoteGuard};
use serde_json::json;

use crate::{
    Context, Error, Result,
    access::{self, RemoteAdminFlags},
    mesh_state, namespace_scope,
    output::{self, OutputFormat},
    remote_setup::{self as setup, Guard},
    render::FIELD_MANAGER,
};

/// Show or change which of a remote's namespaces kubectl-mesh writes.
///
/// Without flags, prints the cluster's scope. `--exclude-namespaces` and
/// `--namespace-selector` replace it, `--clear` removes it. The webhook follows at once; with a
/// remote guard, the guard is updated on the remote too (with --remote-kubeconfig, or the
/// context attach recorded when your kubeconfig has it).
#[derive(Debug, clap::Args)]
pub struct Scope {
    /// Name of the attached cluster.
    #[arg(value_name = "CLUSTER")]
    pub cluster: String,
    /// Remote namespaces never written (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub exclude_namespaces: Vec<String>,
    /// Only remote namespaces whose own labels match are written (`kubectl get -l` syntax).
    #[arg(long, value_name = "SELECTOR")]
    pub namespace_selector: Option<String>,
    /// Remove the scope: every namespace the installed rule syncs is written again.
    #[arg(long, conflicts_with_all = ["exclude_namespaces", "namespace_selector"])]
    pub clear: bool,
    /// The remote's admin credentials, to update its guard.
    #[command(flatten)]
    pub remote_admin: RemoteAdminFlags,
}

impl Scope {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self {
            cluster,
            exclude_namespaces,
            namespace_selector,
            clear,
            remote_admin: remote_admin_flags,
        } = self;
        let (_, primary_target, primary) = ctx.primary_client().await?;
        let mc = mesh_state::cluster_named(&primary, &primary_target, &cluster)
            .await?
            .ok_or_else(|| mesh_state::not_attached(&cluster))?;
        let changing = clear || !exclude_namespaces.is_empty() || namespace_selector.is_some();
        if !changing {
            return show(ctx, &mc.spec.scope);
        }
        let rule = mesh_state::rule(&primary).await?;
        let scope = if clear {
            NamespaceScope::default()
        } else {
            namespace_scope::from_flags(&rule, &exclude_namespaces, namespace_selector.as_deref())?
        };
        if scope == mc.spec.scope {
            ctx.progress.ok(format!(
                "{cluster}: scope unchanged ({})",
                namespace_scope::describe(&scope)
            ));
            return Ok(());
        }

        // The guard first: it then spares what the webhook stops writing a moment later, and
        // a refusal here leaves everything as it was.
        let guarded = match mc.spec.remote_guard {
            RemoteGuard::Off => None,
            RemoteGuard::Warn | RemoteGuard::Deny => {
                let (kc, _, _) = ctx.primary_target()?;
                let remote = remote_admin(&mc, &kc, &remote_admin_flags).await?;
                let guard = Guard::new(mc.spec.remote_guard, "", "")
                    .with_rule(&mesh_state::scoped_rule(&rule, &with_scope(&mc, &scope))?)
                    .with_scope(&scope);
                let before = patch_guard(&remote, &cluster, &guard).await?;
                Some((remote, before))
            }
        };
        let patch = json!({ "spec": { "scope": scope_patch(&scope) } });
        let clusters: Api<MeshCluster> = Api::all(primary.clone());
        let stored = clusters
            .patch(
                &cluster,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..Default::default()
                },
                &Patch::Merge(&patch),
            )
            .await;
        if let Err(e) = stored {
            if let Some((remote, before)) = &guarded {
                // Put the guard back as it was: the MeshCluster still has the old scope.
                let _ = restore_guard(remote, before).await;
            }
            return Err(Error::kube(format!("cannot update MeshCluster {cluster}"))(
                e,
            ));
        }
        ctx.progress.ok(format!(
            "{cluster}: scope is now {}; the webhook follows at once{}",
            namespace_scope::describe(&scope),
            if guarded.is_some() {
                ", and the remote guard was updated"
            } else {
                ""
            }
        ));
        ctx.progress.info(format!(
            "`kubectl mesh plan --cluster {cluster}` shows what a sync changes now"
        ));
        Ok(())
    }
}

fn show(ctx: &Context, scope: &NamespaceScope) -> Result<()> {
    match ctx.output {
        OutputFormat::Table | OutputFormat::Wide => {
            output::print_stdout(&format!("{}\n", namespace_scope::describe(scope)))
        }
        format => output::print_stdout(&output::render_value(format, &scope)?),
    }
}

fn with_scope(mc: &MeshCluster, scope: &NamespaceScope) -> MeshCluster {
    let mut mc = mc.clone();
    mc.spec.scope = scope.clone();
    mc
}

/// The merge patch value of `spec.scope`: `null` fields remove what is there.
fn scope_patch(scope: &NamespaceScope) -> serde_json::Value {
    if scope.is_everything() {
        return serde_json::Value::Null;
    }
    json!({
        "excludeNamespaces": (!scope.exclude_namespaces.is_empty()).then_some(&scope.exclude_namespaces),
        "namespaceSelector": scope.namespace_selector,
    })
}

/// A client of the remote with admin rights: `file`, else the context attach recorded when
/// the user's kubeconfig has it. It must reach the cluster the MeshCluster names.
async fn remote_admin(
    mc: &MeshCluster,
    primary_kc: &kube::config::Kubeconfig,
    flags: &RemoteAdminFlags,
) -> Result<Client> {
    let name = mc.name_any();
    let Some(admin) = flags.find(Some(mc), primary_kc)? else {
        return Err(Error::Refused {
            what: format!(
                "{name} has a remote guard, which follows the scope, and there are no \
                 credentials for the remote to update it; nothing was changed"
            ),
            hint: "pass --remote-kubeconfig FILE (an admin kubeconfig of the remote, as for \
                   attach)"
                .into(),
        });
    };
    let client = admin.client().await?;
    let id = access::cluster_id(&client)
        .await
        .map_err(Error::kube(format!(
            "cannot read kube-system of remote cluster {name}"
        )))?;
    if id != mc.spec.cluster_id {
        return Err(Error::Refused {
            what: format!(
                "the remote kubeconfig reaches cluster id {id}, but {name} is cluster id {}",
                mc.spec.cluster_id
            ),
            hint: format!("pass the kubeconfig of {name} with --remote-kubeconfig"),
        });
    }
    Ok(client)
}

/// Sets the guard policy's matching to `guard`'s; returns the policy as it was.
async fn patch_guard(
    remote: &Client,
    cluster: &str,
    guard: &Guard,
) -> Result<ValidatingAdmissionPolicy> {
    let api: Api<ValidatingAdmissionPolicy> = Api::all(remote.clone());
    let before = api.get(setup::GUARD).await.map_err(Error::kube(format!(
        "cannot read the remote guard of {cluster} (ValidatingAdmissionPolicy {})",
        setup::GUARD
    )))?;
    let wanted = setup::guard_policy(cluster, guard).spec.unwrap_or_default();
    let patch = matching_patch(&wanted);
    api.patch(
        setup::GUARD,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::kube(format!(
        "cannot update the remote guard of {cluster}"
    )))?;
    Ok(before)
}

/// A merge patch setting a policy's matchConditions and namespaceSelector to `spec`'s (an
/// absent selector is written as `null`, which removes the one there).
fn matching_patch(
    spec: &k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicySpec,
) -> serde_json::Value {
    let selector = spec
        .match_constraints
        .as_ref()
        .and_then(|m| m.namespace_selector.clone());
    json!({ "spec": {
        "matchConditions": spec.match_conditions,
        "matchConstraints": { "namespaceSelector": selector },
    }})
}

async fn restore_guard(remote: &Client, before: &ValidatingAdmissionPolicy) -> kube::Result<()> {
    let api: Api<ValidatingAdmissionPolicy> = Api::all(remote.clone());
    let patch = matching_patch(&before.spec.clone().unwrap_or_default());
    api.patch(setup::GUARD, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}
