//! `kubectl mesh scope`: show or change which of a remote's namespaces kubectl-mesh writes.
//!
//! The scope lives in the MeshCluster (`spec.scope`): the webhook and the reconciler follow a
//! change at once. The remote enforces it too (the sync scope policy refuses the sync account
//! what the scope leaves out, and the guard guards what it covers): changing those needs the
//! remote's admin credentials, as attach does, so that only the remote's admin can widen what
//! the token stored on the primary may write. The scope the MeshCluster records already is
//! written to the remote's policies alone, which a `kubectl patch` of it left as they were.

use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use mesh_core::cluster::{MeshCluster, NamespaceScope, RemoteGuard};
use mesh_core::printable::one_line;
use serde_json::json;

use crate::{
    Context, Error, Result,
    access::{self, Need, RemoteAdmin, RemoteAdminFlags, Target},
    cmd::apply,
    cmd::attach::{Step, hooks::TestHooks},
    interrupt, mesh_state, namespace_scope,
    output::{self, OutputFormat},
    remote_setup::{self as setup, Guard},
    render::FIELD_MANAGER,
};

/// Show or change which of a remote's namespaces kubectl-mesh writes.
///
/// Without flags, prints the cluster's scope. `--exclude-namespaces` and
/// `--namespace-selector` replace it, `--clear` removes it; the remote's credentials alone
/// bring its policies in line with the scope the cluster has. The webhook follows at once; the
/// remote's admission policies (its sync scope, and its guard if any) are updated on the remote
/// first, with its admin credentials (--remote-kubeconfig, or the context attach recorded when
/// your kubeconfig has it). Flags giving the scope the cluster has already bring the remote's
/// policies in line with it (after a `kubectl patch` of the MeshCluster left them behind);
/// without credentials of the remote, that is a warning that they were not checked.
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
    /// The remote's admin credentials, to update its guard and sync-scope policies.
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
        let hooks = TestHooks::from_env()?;
        let (kc, primary_target, primary) = ctx.primary_client().await?;
        let mc = mesh_state::cluster_named(&primary, &primary_target, &cluster)
            .await?
            .ok_or_else(|| mesh_state::not_attached(&cluster))?;
        let changing = clear || !exclude_namespaces.is_empty() || namespace_selector.is_some();
        // The remote's credentials alone: its policies brought in line with the recorded scope.
        if !changing && !remote_admin_flags.given() {
            return show(ctx, &mc.spec.scope);
        }
        let rule = mesh_state::rule(&primary).await?;
        let scope = if clear {
            NamespaceScope::default()
        } else if !changing {
            mc.spec.scope.clone()
        } else {
            namespace_scope::from_flags(&rule, &exclude_namespaces, namespace_selector.as_deref())?
        };
        // The scope the MeshCluster records already: only the remote's policies are brought
        // in line with it (a `kubectl patch` of the MeshCluster leaves them as they were).
        let recorded = scope == mc.spec.scope;

        // Every right asked before the first write: the MeshCluster is patched last, and a
        // refusal there would leave the remote's policies changed for nothing.
        if !recorded {
            let needs = [Need::cluster(mesh_core::GROUP, "meshclusters", &["patch"])];
            access::require(&primary, &primary_target, &needs, access::ASK_AN_ADMIN).await?;
        }
        // The scope it has already, and no credentials of the remote at hand: the primary has
        // nothing to change, so a script that re-applies its scope from where only the
        // primary is known gets a warning, not a failure. The context attach recorded, found
        // in the user's kubeconfig but reaching another cluster (kubeadm names every context
        // alike) or none, is no credentials of the remote either.
        let admin = remote_admin_flags.find(Some(&mc), &kc)?;
        let not_checked = |why: String| {
            ctx.progress.warn(format!(
                "{cluster}: the remote's policies were not checked ({why}; the primary holds \
                 this scope already: {}): pass --remote-kubeconfig to bring them in line",
                namespace_scope::describe(&scope)
            ));
        };
        if recorded && admin.is_none() {
            not_checked("no credentials of the remote".into());
            return Ok(());
        }
        // The remote's policies first, so that a refusal here leaves everything as it was;
        // the guard first of them: it then spares what the webhook stops writing a moment
        // later.
        let (remote, remote_target) = match remote_admin(&mc, admin).await {
            Ok(reached) => reached,
            Err(e) if recorded && !remote_admin_flags.given() => {
                not_checked(format!(
                    "the remote's context in your kubeconfig: {}",
                    e.what()
                ));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        // Only the policies this primary's attach made are changed (another primary may have
        // taken the cluster over since).
        let primary_id = access::cluster_id(&primary)
            .await
            .map_err(|e| access::request_error(&primary_target, "read kube-system", e))?;
        let scoped = mesh_state::scoped_rule(&rule, &with_scope(&mc, &scope))?;
        let mut wanted = Vec::new();
        if mc.spec.remote_guard != RemoteGuard::Off {
            let guard = Guard::new(mc.spec.remote_guard, "", "")
                .with_rule(&scoped)
                .with_scope(&scope);
            wanted.push((Follower::GUARD, setup::guard_policy(&cluster, &guard)));
        }
        wanted.push((
            Follower::SYNC_SCOPE,
            setup::sync_scope_policy(&cluster, &scoped, &scope),
        ));
        let mut changed: Vec<(Follower, ValidatingAdmissionPolicy)> = Vec::new();
        let updates = async {
            for (follower, policy) in wanted {
                let updated = follower.update(
                    &remote,
                    &remote_target,
                    &cluster,
                    &primary_id,
                    &policy,
                    &mut changed,
                );
                if updated.await? {
                    let stored = || {
                        format!(
                            "{cluster}: ValidatingAdmissionPolicy {} updated",
                            follower.name
                        )
                    };
                    hooks
                        .stall_if_in(Some(follower.step), ctx.progress, stored)
                        .await;
                }
            }
            Ok(())
        };
        // Ctrl-C, SIGTERM or SIGHUP while the remote's policies change puts them back: the
        // default action left the remote enforcing a scope the MeshCluster does not record.
        // They stay caught after: one during the MeshCluster's patch lets it finish, as
        // both sides then agree.
        tokio::select! {
            updated = updates => {
                if let Err(e) = updated {
                    return Err(restored(e, &cluster, restore(&remote, &changed).await));
                }
            }
            () = interrupt::signalled() => {
                if !changed.is_empty() {
                    ctx.progress.info(
                        "interrupted: putting back the remote's policies; Ctrl-C is ignored \
                         until that is done",
                    );
                }
                let left = restore(&remote, &changed).await;
                return Err(restored(interrupted(&cluster, &changed, &left), &cluster, left));
            }
        }
        let described = namespace_scope::describe(&scope);
        let policies: Vec<&str> = changed.iter().map(|(f, _)| f.what).collect();
        let policies = policies.join(" and ");
        if recorded {
            if changed.is_empty() {
                ctx.progress
                    .ok(format!("{cluster}: scope unchanged ({described})"));
                return Ok(());
            }
            ctx.progress.ok(format!(
                "{cluster}: scope unchanged ({described}); the remote's {policies} brought in \
                 line with it"
            ));
        } else {
            let clusters: Api<MeshCluster> = Api::all(primary.clone());
            let stored = clusters
                .patch(
                    &cluster,
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER.to_owned()),
                        ..Default::default()
                    },
                    &Patch::Json::<()>(namespace_scope::mesh_cluster_patch(&scope)),
                )
                .await;
            if let Err(e) = stored {
                // The policies back as they were: the MeshCluster still has the old scope.
                let error = Error::kube(format!("cannot update MeshCluster {cluster}"))(e);
                return Err(restored(error, &cluster, restore(&remote, &changed).await));
            }
            let remote_side = if changed.is_empty() {
                "the remote's policies already followed it".to_owned()
            } else {
                format!("the remote's {policies} updated")
            };
            ctx.progress.ok(format!(
                "{cluster}: scope is now {described}; {remote_side}, the webhook follows at once"
            ));
        }
        ctx.progress.info(format!(
            "`kubectl mesh plan --cluster {cluster}` shows what a sync changes now"
        ));
        Ok(())
    }
}

fn show(ctx: &Context, scope: &NamespaceScope) -> Result<()> {
    match ctx.output {
        OutputFormat::Table | OutputFormat::Wide => {
            // The selector is whatever the MeshCluster holds.
            let described = namespace_scope::describe(scope);
            output::print_stdout(&format!("{}\n", one_line(&described)))
        }
        format => output::print_stdout(&output::render_value(format, &scope)?),
    }
}

fn with_scope(mc: &MeshCluster, scope: &NamespaceScope) -> MeshCluster {
    let mut mc = mc.clone();
    mc.spec.scope = scope.clone();
    mc
}

/// A client of the remote with `admin`'s rights (found by [`RemoteAdminFlags::find`]); it
/// must reach the cluster the MeshCluster names.
async fn remote_admin(mc: &MeshCluster, admin: Option<RemoteAdmin>) -> Result<(Client, Target)> {
    let name = mc.name_any();
    let Some(admin) = admin else {
        return Err(Error::Refused {
            what: format!(
                "the remote {name} enforces the scope, and there are no credentials for the \
                 remote to update it; nothing was changed"
            ),
            hint: "pass --remote-kubeconfig FILE (an admin kubeconfig of the remote, as for \
                   attach)"
                .into(),
        });
    };
    // The policies are read and patched (and patched back if a later write fails).
    let needs = [Need::cluster(
        "admissionregistration.k8s.io",
        "validatingadmissionpolicies",
        &["get", "patch"],
    )];
    admin.connect_to(mc, &needs).await
}

/// A policy on the remote that follows the scope, and the part of its spec that does.
#[derive(Clone, Copy)]
struct Follower {
    name: &'static str,
    /// The step of attach that writes it (which the stall test hook names).
    step: Step,
    /// What it is, in messages.
    what: &'static str,
    /// That part of a policy, as compared.
    part: fn(&ValidatingAdmissionPolicy) -> serde_json::Value,
    /// The patch setting that part to a policy's.
    patch: fn(&ValidatingAdmissionPolicy) -> Patch<serde_json::Value>,
}

impl Follower {
    const GUARD: Self = Self {
        name: setup::GUARD,
        step: Step::GuardPolicy,
        what: "guard",
        part: matching,
        patch: matching_patch,
    };
    const SYNC_SCOPE: Self = Self {
        name: setup::SYNC_SCOPE,
        step: Step::SyncScopePolicy,
        what: "sync scope",
        part: validations_patch,
        patch: validations_merge,
    };

    /// Sets the policy's following part to `wanted`'s, when the attach of `cluster` from the
    /// primary `primary_id` made it; returns whether that changed it, and then keeps the
    /// policy as it was in `changed`.
    async fn update(
        self,
        remote: &Client,
        target: &Target,
        cluster: &str,
        primary_id: &str,
        wanted: &ValidatingAdmissionPolicy,
        changed: &mut Vec<(Self, ValidatingAdmissionPolicy)>,
    ) -> Result<bool> {
        let api: Api<ValidatingAdmissionPolicy> = Api::all(remote.clone());
        let before = match api.get(self.name).await {
            Ok(before) => before,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(Error::Refused {
                    what: format!(
                        "the remote {} of {cluster} (ValidatingAdmissionPolicy {}) is missing; \
                         nothing was changed",
                        self.what, self.name
                    ),
                    hint: format!(
                        "re-run `kubectl mesh attach` for {cluster} (with --name {cluster}) to \
                         make it again"
                    ),
                });
            }
            Err(e) => {
                let doing = format!("read ValidatingAdmissionPolicy {}", self.name);
                return Err(access::request_error(target, &doing, e));
            }
        };
        if !setup::is_ours_from(&before.metadata, cluster, primary_id) {
            return Err(Error::Refused {
                what: format!(
                    "the remote {} of {cluster} (ValidatingAdmissionPolicy {}) was not made by \
                     this primary's attach: another primary took {cluster} over",
                    self.what, self.name
                ),
                hint: format!(
                    "change the scope from the primary that holds {cluster} now, or `kubectl \
                     mesh detach {cluster}` here"
                ),
            });
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let part_before = (self.part)(&before);
        // Recorded before the request: an interruption while it is out still puts back what
        // the remote may have stored.
        changed.push((self, before));
        let after = match api.patch(self.name, &params, &(self.patch)(wanted)).await {
            Ok(after) => after,
            Err(e) => {
                // A write whose answer never came may have landed: it stays to be put back.
                if apply::stored_nothing(&e) {
                    changed.pop();
                }
                let doing = format!("update ValidatingAdmissionPolicy {}", self.name);
                return Err(access::request_error(target, &doing, e));
            }
        };
        // Compared as the apiserver stores both (with its defaults), not with `wanted`.
        let updated = (self.part)(&after) != part_before;
        if !updated {
            changed.pop();
        }
        Ok(updated)
    }
}

/// Puts back the policies `changed` as they were, as far as the remote lets it; returns what
/// it could not put back.
async fn restore(
    remote: &Client,
    changed: &[(Follower, ValidatingAdmissionPolicy)],
) -> Vec<&'static str> {
    let api: Api<ValidatingAdmissionPolicy> = Api::all(remote.clone());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let mut left = Vec::new();
    for (follower, before) in changed {
        if api
            .patch(follower.name, &params, &(follower.patch)(before))
            .await
            .is_err()
        {
            left.push(follower.what);
        }
    }
    left
}

/// `error`, which made the run put the remote's policies back, saying which could not be: the
/// remote then enforces a scope the MeshCluster does not record.
fn restored(error: Error, cluster: &str, left: Vec<&str>) -> Error {
    if left.is_empty() {
        return error;
    }
    Error::Refused {
        what: format!(
            "{}; the remote's {} of {cluster} could not be put back: the remote enforces the new scope",
            error.what(),
            left.join(" and ")
        ),
        hint: format!(
            "re-run `kubectl mesh scope {cluster}` with the same flags once the cause is fixed, \
             or with the old scope"
        ),
    }
}

/// The error of a run interrupted while it updated the remote's policies: `changed` were put
/// back but `left` (which [`restored`] then adds).
fn interrupted(
    cluster: &str,
    changed: &[(Follower, ValidatingAdmissionPolicy)],
    left: &[&str],
) -> Error {
    let put_back: Vec<&str> = (changed.iter().map(|(follower, _)| follower.what))
        .filter(|what| !left.contains(what))
        .collect();
    let what = if put_back.is_empty() {
        "interrupted".to_owned()
    } else {
        format!(
            "interrupted; the remote's {} of {cluster} put back",
            put_back.join(" and ")
        )
    };
    // With `left`, the remote enforces part of the new scope: [`restored`] says so.
    let what = if left.is_empty() {
        format!("{what}: the scope is unchanged")
    } else {
        what
    };
    Error::Refused {
        what,
        hint: format!("re-run `kubectl mesh scope {cluster}` when you are ready"),
    }
}

/// A policy's matchConditions and namespaceSelector (none selects every namespace, as the
/// apiserver's default `{}` does).
fn matching(policy: &ValidatingAdmissionPolicy) -> serde_json::Value {
    let spec = policy.spec.clone().unwrap_or_default();
    let selector = spec
        .match_constraints
        .and_then(|m| m.namespace_selector)
        .unwrap_or_default();
    json!({
        "matchConditions": spec.match_conditions.unwrap_or_default(),
        "namespaceSelector": selector,
    })
}

/// A JSON Patch setting a policy's matchConditions and namespaceSelector to `policy`'s, each
/// replaced whole: a merge patch merges maps, so a selector's `matchLabels` stayed beside the
/// new selector, and the guard then covered far fewer namespaces than the scope.
fn matching_patch(policy: &ValidatingAdmissionPolicy) -> Patch<serde_json::Value> {
    let matching = matching(policy);
    let add = |tokens: &[&str], value: &serde_json::Value| {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(tokens.iter().copied()),
            value: value.clone(),
        })
    };
    Patch::Json(json_patch::Patch(vec![
        add(&["spec", "matchConditions"], &matching["matchConditions"]),
        add(
            &["spec", "matchConstraints", "namespaceSelector"],
            &matching["namespaceSelector"],
        ),
    ]))
}

/// A merge patch setting a policy's validations and recorded scope to `policy`'s (an absent
/// record is written as `null`, which removes the one there).
fn validations_patch(policy: &ValidatingAdmissionPolicy) -> serde_json::Value {
    let validations = policy.spec.as_ref().and_then(|s| s.validations.clone());
    let record = policy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(setup::SCOPE_ANNOTATION));
    json!({
        "metadata": { "annotations": { setup::SCOPE_ANNOTATION: record } },
        "spec": { "validations": validations },
    })
}

/// [`validations_patch`] as the patch it is (a list and a string: a merge replaces both).
fn validations_merge(policy: &ValidatingAdmissionPolicy) -> Patch<serde_json::Value> {
    Patch::Merge(validations_patch(policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `patch` applied to `policy` as the apiserver applies it.
    fn patched(
        policy: &ValidatingAdmissionPolicy,
        patch: Patch<serde_json::Value>,
    ) -> serde_json::Value {
        let mut stored = serde_json::to_value(policy).unwrap();
        match patch {
            Patch::Json(patch) => json_patch::patch(&mut stored, &patch).expect("applies"),
            Patch::Merge(patch) => json_patch::merge(&mut stored, &patch),
            _ => unreachable!("scope sends JSON and merge patches only"),
        }
        stored
    }

    /// A guard as attach makes it, selecting `selector` (none: every namespace).
    fn guard(selector: Option<serde_json::Value>) -> ValidatingAdmissionPolicy {
        serde_json::from_value(json!({
            "metadata": {"name": setup::GUARD},
            "spec": {
                "matchConditions": [{"name": "managed", "expression": "true"}],
                "matchConstraints": {"namespaceSelector": selector, "resourceRules": []},
            },
        }))
        .expect("a policy")
    }

    /// The guard's selector was merged too: the `matchLabels` of a guard made for a selector
    /// set by hand stayed beside the new expressions, so the guard spared namespaces the
    /// scope covers; and a guard put back kept the new expressions beside the old labels.
    #[test]
    fn the_guard_takes_a_new_selector_whole() {
        let by_hand = json!({"matchLabels": {"team": "apps"}});
        let expressions = namespace_scope::parse_selector("team in (apps,web)").expect("selector");
        let expressions = serde_json::to_value(expressions).unwrap();
        for (stored, wanted) in [(&by_hand, &expressions), (&expressions, &by_hand)] {
            let patch = (Follower::GUARD.patch)(&guard(Some(wanted.clone())));
            let after = patched(&guard(Some(stored.clone())), patch);
            assert_eq!(
                &after["spec"]["matchConstraints"]["namespaceSelector"],
                wanted
            );
        }
        // No selector: every namespace, as the apiserver stores it.
        let patch = (Follower::GUARD.patch)(&guard(None));
        let after = patched(&guard(Some(by_hand)), patch);
        assert_eq!(
            after["spec"]["matchConstraints"]["namespaceSelector"],
            json!({})
        );
    }

    /// An interrupted run says what it put back, and never that the scope is unchanged while
    /// a policy could not be put back.
    #[test]
    fn an_interruption_says_what_was_put_back() {
        let line = |changed: &[Follower], left: Vec<&str>| {
            let changed: Vec<_> = (changed.iter())
                .map(|f| (*f, ValidatingAdmissionPolicy::default()))
                .collect();
            restored(interrupted("east", &changed, &left), "east", left).line()
        };
        let both = [Follower::GUARD, Follower::SYNC_SCOPE];
        assert_eq!(
            line(&[], Vec::new()),
            "interrupted: the scope is unchanged; re-run `kubectl mesh scope east` when you are \
             ready"
        );
        assert!(line(&both, Vec::new()).starts_with(
            "interrupted; the remote's guard and sync scope of east put back: the scope is \
                 unchanged;"
        ));
        let partly = line(&both, vec!["sync scope"]);
        assert!(
            partly.starts_with(
                "interrupted; the remote's guard of east put back; the remote's sync scope of \
                 east could not be put back: the remote enforces the new scope;"
            ),
            "{partly}"
        );
    }

    #[test]
    fn a_policy_that_could_not_be_put_back_is_said_with_what_to_do() {
        let cause = || Error::Refused {
            what: "cannot update MeshCluster east".into(),
            hint: "h".into(),
        };
        let line = restored(cause(), "east", Vec::new()).line();
        assert_eq!(line, "cannot update MeshCluster east; h");
        let line = restored(cause(), "east", vec!["guard", "sync scope"]).line();
        assert!(
            line.starts_with(
                "cannot update MeshCluster east; the remote's guard and sync scope of east could \
                 not be put back: the remote enforces the new scope; re-run `kubectl mesh scope \
                 east`"
            ),
            "{line}"
        );
    }
}
