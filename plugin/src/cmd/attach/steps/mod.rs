//! The steps of an attach, in order, each with its undo: every object a run creates, updates
//! or deletes is recorded ([`Change`]), and a failed or interrupted run puts them back, newest
//! first.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
};
use mesh_core::{MESH_NAMESPACE, cluster::MeshCluster, failure, remote};

use super::adopt;
use super::hooks::TestHooks;
use super::objects::{
    Side, cluster_record, describe, dyn_api, for_primary, istio_reader_objects, stored_kubeconfig,
    view_objects,
};
use super::plan::{IstioPlan, NamespaceState, Plan};
use super::waits::wait_namespace_gone;
use crate::cmd::apply;
use crate::preview::Adoption;
use crate::sync_scope::{self, Scope};
use crate::tokens::{mint_bound_token, wait_token};
use crate::{
    Error, Result, mesh_state, namespace_scope,
    output::Progress,
    remote_setup::{self as setup, Guard, ReaderRole},
    render::{FIELD_MANAGER, Manifest},
};

use super::step::Step;
use super::undo::Change;

mod rollback;

/// One attach in progress: what it created so far, for the rollback.
pub(super) struct Run<'a> {
    plan: &'a Plan,
    progress: Progress,
    hooks: TestHooks,
    timeout: Duration,
    changes: Vec<Change>,
    /// Primary namespaces given the remote's labels, for the rollback.
    adopted: Vec<Adoption>,
    /// The kube-system UIDs of the primaries whose tokens `--force` revoked: no rollback
    /// issues them again.
    revoked: Vec<String>,
    /// The step under way (for the error line).
    step: Option<Step>,
}

impl<'a> Run<'a> {
    /// A run of `plan` that has done nothing yet.
    pub(super) fn new(
        plan: &'a Plan,
        progress: Progress,
        hooks: TestHooks,
        timeout: Duration,
    ) -> Self {
        Self {
            plan,
            progress,
            hooks,
            timeout,
            changes: Vec::new(),
            adopted: Vec::new(),
            revoked: Vec::new(),
            step: None,
        }
    }

    fn client(&self, side: Side) -> &Client {
        match side {
            Side::Remote => &self.plan.remote,
            Side::Primary => &self.plan.primary,
        }
    }

    fn side_label(&self, side: Side) -> &str {
        match side {
            Side::Remote => &self.plan.name,
            Side::Primary => "primary",
        }
    }

    fn begin(&mut self, step: Step) {
        self.step = Some(step);
    }

    /// Marks `step` done; fails here when the failure test hook names it.
    fn done(&mut self, step: Step) -> Result<()> {
        self.hooks.fail_after(step)?;
        self.step = None;
        Ok(())
    }

    /// The token kube-controller-manager issues into the remote's Secret `secret` for the
    /// ServiceAccount `account`, once it is there.
    async fn issued_token(&self, secret: &str, account: &str) -> Result<String> {
        let token = wait_token(
            &self.plan.remote,
            &self.plan.name,
            secret,
            "attach",
            self.timeout,
        )
        .await?;
        self.say_token_issued(account);
        Ok(token)
    }

    fn say_token_issued(&self, account: &str) {
        self.progress.ok(format!(
            "{}: token of ServiceAccount {MESH_NAMESPACE}/{account} issued",
            self.plan.name
        ));
    }

    /// Writes `secret` on the primary, owned by `owner` (the MeshCluster, when a re-run finds
    /// it).
    async fn ensure_owned_secret(
        &mut self,
        mut secret: Secret,
        owner: Option<&OwnerReference>,
    ) -> Result<()> {
        secret.metadata.owner_references = owner.cloned().map(|o| vec![o]);
        self.ensure(Side::Primary, Manifest::new(&secret)?).await?;
        Ok(())
    }

    /// Creates `m` or, if it exists, updates it (server-side apply); records a creation.
    /// A remote object is recorded as this primary's.
    async fn ensure(&mut self, side: Side, m: Manifest) -> Result<DynamicObject> {
        let m = match side {
            Side::Remote => for_primary(m, &self.plan.primary_id),
            Side::Primary => m,
        };
        let api = dyn_api(self.client(side), &m);
        let before = api
            .get_opt(&m.name)
            .await
            .map_err(Error::kube(format!("cannot read {}", describe(&m))))?;
        // Recorded before the request: if Ctrl-C drops this future while the write is in
        // flight, or its answer never comes, the rollback still puts back what the apiserver
        // may have stored.
        let change = match &before {
            None => {
                // The interruption tests cover the steps that say they create.
                debug_assert!(
                    self.step.is_some_and(Step::creates),
                    "step {:?} creates {} but Step::creates says it creates nothing",
                    self.step,
                    describe(&m)
                );
                Change::Created(side, m.clone())
            }
            Some(b) => Change::Updated(side, m.clone(), Box::new(b.clone())),
        };
        self.changes.push(change);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let obj = match api.patch(&m.name, &params, &Patch::Apply(&m.object)).await {
            Ok(obj) => obj,
            Err(e) => {
                if apply::stored_nothing(&e) {
                    self.changes.pop();
                }
                return Err(Error::kube(format!(
                    "cannot apply {} on {}",
                    describe(&m),
                    self.side_label(side)
                ))(e));
            }
        };
        let changed = before
            .as_ref()
            .is_none_or(|b| b.metadata.resource_version != obj.metadata.resource_version);
        if changed {
            self.hooks
                .stall_if_in(self.step, self.progress, || {
                    format!("{}: {} stored", self.side_label(side), describe(&m))
                })
                .await;
        }
        let verb = match before {
            None => "created",
            Some(b) if b.metadata.resource_version == obj.metadata.resource_version => {
                self.changes.pop();
                "unchanged"
            }
            Some(_) => "updated",
        };
        self.progress.ok(format!(
            "{}: {} {verb}",
            self.side_label(side),
            describe(&m)
        ));
        Ok(obj)
    }

    /// Runs every step; returns the MeshCluster as stored.
    pub(super) async fn steps(&mut self) -> Result<MeshCluster> {
        let plan = self.plan;
        let name = plan.name.clone();

        self.begin(Step::RemoteNamespace);
        match plan.remote_namespace {
            NamespaceState::Absent => {
                self.ensure(
                    Side::Remote,
                    Manifest::new(&setup::remote_namespace(&name))?,
                )
                .await?;
            }
            NamespaceState::Terminating => {
                self.progress.info(format!(
                    "{name}: Namespace {MESH_NAMESPACE} is being deleted; waiting for it to go"
                ));
                wait_namespace_gone(&plan.remote, MESH_NAMESPACE, self.timeout).await?;
                self.ensure(
                    Side::Remote,
                    Manifest::new(&setup::remote_namespace(&name))?,
                )
                .await?;
            }
            // Applied again: it records this primary (an older attach, or a takeover).
            NamespaceState::Ours => {
                self.ensure(
                    Side::Remote,
                    Manifest::new(&setup::remote_namespace(&name))?,
                )
                .await?;
            }
            NamespaceState::Foreign => self.progress.ok(format!(
                "{name}: Namespace {MESH_NAMESPACE} exists; used as is (detach will keep it)"
            )),
        }
        self.done(Step::RemoteNamespace)?;

        let remote_steps = [
            (
                Step::ServiceAccount,
                Manifest::new(&setup::service_account(setup::SYNC_ACCOUNT, &name))?,
            ),
            (
                Step::ClusterRole,
                Manifest::new(&setup::sync_cluster_role(&name))?,
            ),
            (
                Step::ClusterRoleBinding,
                Manifest::new(&setup::cluster_role_binding(setup::SYNC_ACCOUNT, &name))?,
            ),
            (
                Step::SyncScopePolicy,
                Manifest::new(&setup::sync_scope_policy(&name, &plan.scoped, &plan.scope))?,
            ),
            (
                Step::SyncScopeBinding,
                Manifest::new(&setup::sync_scope_binding(&name))?,
            ),
            (
                Step::TokenSecret,
                Manifest::new(&match plan.token_ttl {
                    Some(_) => setup::token_anchor_secret(setup::TOKEN_SECRET, &name),
                    None => setup::token_secret(setup::TOKEN_SECRET, setup::SYNC_ACCOUNT, &name),
                })?,
            ),
        ];
        let mut anchor = None;
        for (step, m) in remote_steps {
            self.begin(step);
            if step == Step::TokenSecret {
                if let Some(leftovers) = &plan.takeover {
                    self.revoke_other_primarys_tokens().await?;
                    // Before this run's token exists: the renewal rights would let it mint
                    // tokens no Secret revokes.
                    self.delete_other_primarys_leftovers(leftovers).await?;
                }
                if plan.token_ttl.is_some() {
                    self.ensure(
                        Side::Remote,
                        Manifest::new(&setup::token_renewal_role(&name))?,
                    )
                    .await?;
                    self.ensure(
                        Side::Remote,
                        Manifest::new(&setup::token_renewal_binding(&name))?,
                    )
                    .await?;
                }
            }
            let applied = self.ensure(Side::Remote, m).await?;
            if step == Step::TokenSecret {
                anchor = Some(applied);
            }
            self.done(step)?;
        }

        self.begin(Step::Token);
        let token = match (plan.token_ttl, anchor) {
            (Some(ttl), Some(anchor)) => {
                let anchor = Secret {
                    metadata: anchor.metadata,
                    ..Default::default()
                };
                mint_bound_token(&plan.remote, setup::SYNC_ACCOUNT, &anchor, ttl)
                    .await
                    .map_err(Error::kube(format!(
                        "cannot request a token of ServiceAccount {MESH_NAMESPACE}/{} on {name}",
                        setup::SYNC_ACCOUNT
                    )))?
            }
            _ => {
                wait_token(
                    &plan.remote,
                    &name,
                    setup::TOKEN_SECRET,
                    "attach",
                    self.timeout,
                )
                .await?
            }
        };
        self.say_token_issued(setup::SYNC_ACCOUNT);
        self.done(Step::Token)?;

        self.begin(Step::SyncScopeEnforced);
        let stored = stored_kubeconfig(&plan.remote_kc, &name, &token)?;
        self.wait_sync_scope(&stored).await?;
        self.done(Step::SyncScopeEnforced)?;

        let guarded = plan.guard.action().is_some();
        for (step, m) in [
            (
                Step::GuardPolicy,
                Manifest::new(&setup::guard_policy(&name, &plan.guard))?,
            ),
            (
                Step::GuardBinding,
                Manifest::new(&setup::guard_binding(&name, &plan.guard))?,
            ),
        ] {
            self.begin(step);
            if guarded {
                self.ensure(Side::Remote, m).await?;
            } else if step == Step::GuardBinding {
                // Unguarded now: the last step of the guard removes both objects an earlier
                // attach may have left.
                self.remove_guard().await?;
            }
            self.done(step)?;
        }

        self.begin(Step::IstioReader);
        let reader_token = match &plan.istio {
            Some(istio) => Some(self.istio_reader(istio).await?),
            None => None,
        };
        self.done(Step::IstioReader)?;

        self.begin(Step::ViewIdentity);
        let view_token = if plan.view.wanted() {
            Some(self.view_identity().await?)
        } else {
            None
        };
        self.done(Step::ViewIdentity)?;

        self.begin(Step::PrimarySecret);
        // On a re-run the MeshCluster exists: keep the Secrets' ownerReference in place
        // rather than drop it until the last step.
        let known_owner = plan.existing.as_ref().and_then(setup::owner_reference);
        self.ensure_owned_secret(setup::cluster_secret(&name, &stored), known_owner.as_ref())
            .await?;
        self.done(Step::PrimarySecret)?;

        self.begin(Step::IstioRemoteSecret);
        let istio_kubeconfig = match (&plan.istio, &reader_token) {
            (Some(istio), Some(reader_token)) => {
                if !istio.namespace_exists {
                    self.ensure(Side::Primary, Manifest::new(&setup::istio_namespace())?)
                        .await?;
                }
                let kc = stored_kubeconfig(&plan.remote_kc, &name, reader_token)?;
                let secret = setup::istio_remote_secret(&name, &kc);
                self.ensure_owned_secret(secret, known_owner.as_ref())
                    .await?;
                Some(kc)
            }
            _ => None,
        };
        self.done(Step::IstioRemoteSecret)?;

        self.begin(Step::ViewSecret);
        let view_kubeconfig = match &view_token {
            Some(token) => {
                let kc = stored_kubeconfig(&plan.remote_kc, &name, token)?;
                self.ensure_owned_secret(setup::view_secret(&name, &kc), known_owner.as_ref())
                    .await?;
                Some(kc)
            }
            None => None,
        };
        self.done(Step::ViewSecret)?;

        self.begin(Step::AdoptLabels);
        // Before the MeshCluster: once it exists, the first sync would strip what is adopted.
        for adoption in &plan.preview.adopt {
            // Recorded first, as for created objects: an interrupted request may have landed.
            self.adopted.push(adoption.clone());
            adopt::adopt(
                &plan.primary,
                &plan.rule,
                adoption,
                &plan.name,
                self.progress,
            )
            .await?;
        }
        self.done(Step::AdoptLabels)?;

        self.begin(Step::MeshCluster);
        let record = cluster_record(plan);
        let mesh_cluster = Manifest::new(&setup::mesh_cluster(&record))?;
        self.ensure(Side::Primary, mesh_cluster.clone()).await?;
        let clusters: Api<MeshCluster> = Api::all(plan.primary.clone());
        let mut mc = clusters
            .get(&name)
            .await
            .map_err(Error::kube(format!("cannot read MeshCluster {name}")))?;
        // A scope another writer set (`kubectl mesh scope`, a `kubectl patch`) is theirs under
        // server-side apply, which keeps what this apply leaves out: it is set whole.
        if mc.spec.scope != record.scope {
            // Recorded before the request, as `ensure` records its writes: a rollback puts
            // back the scope the other writer set (the apply above may have changed nothing).
            let before = dyn_api(self.client(Side::Primary), &mesh_cluster)
                .get(&name)
                .await
                .map_err(Error::kube(format!("cannot read MeshCluster {name}")))?;
            self.changes.push(Change::Updated(
                Side::Primary,
                mesh_cluster,
                Box::new(before),
            ));
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..Default::default()
            };
            let patch = namespace_scope::mesh_cluster_patch(&record.scope);
            mc = match clusters
                .patch(&name, &params, &Patch::Json::<()>(patch))
                .await
            {
                Ok(mc) => mc,
                Err(e) => {
                    if apply::stored_nothing(&e) {
                        self.changes.pop();
                    }
                    return Err(Error::kube(format!(
                        "cannot set the scope of MeshCluster {name}"
                    ))(e));
                }
            };
        }
        self.done(Step::MeshCluster)?;

        self.begin(Step::OwnerReferences);
        if let Some(owner) = setup::owner_reference(&mc) {
            let mut secrets = vec![setup::cluster_secret(&name, &stored)];
            if let Some(kc) = &istio_kubeconfig {
                secrets.push(setup::istio_remote_secret(&name, kc));
            }
            if let Some(kc) = &view_kubeconfig {
                secrets.push(setup::view_secret(&name, kc));
            }
            for mut secret in secrets {
                secret.metadata.owner_references = Some(vec![owner.clone()]);
                let m = Manifest::new(&secret)?;
                dyn_api(&plan.primary, &m)
                    .patch(
                        &m.name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&m.object),
                    )
                    .await
                    .map_err(Error::kube(format!("cannot apply {}", describe(&m))))?;
                self.progress.ok(format!(
                    "primary: {} owned by MeshCluster {name}",
                    describe(&m)
                ));
            }
        }
        self.done(Step::OwnerReferences)?;
        Ok(mc)
    }

    /// istiod's reader identity on the remote (`--istio-remote-secret`); its token.
    async fn istio_reader(&mut self, istio: &IstioPlan) -> Result<String> {
        let name = self.plan.name.clone();
        if let Some(notice) = istio.notice(&name) {
            self.progress.info(notice);
        }
        self.retire_other_reader_role(&istio.reader_role).await?;
        for m in istio_reader_objects(&name, &istio.reader_role)? {
            self.ensure(Side::Remote, m).await?;
        }
        if istio.reader_role == ReaderRole::Istio {
            self.progress.ok(format!(
                "{name}: istiod's reader bound to Istio's own ClusterRole {}",
                setup::istio_own_reader_role()
            ));
        }
        self.issued_token(setup::ISTIO_READER_TOKEN_SECRET, setup::ISTIO_READER)
            .await
    }

    /// The read-only view identity on the remote (`--services-view`); its token.
    async fn view_identity(&mut self) -> Result<String> {
        let name = self.plan.name.clone();
        if let Some(notice) = self.plan.view.notice(&name) {
            self.progress.info(notice);
        }
        for m in view_objects(&name)? {
            self.ensure(Side::Remote, m).await?;
        }
        self.issued_token(setup::VIEW_TOKEN_SECRET, setup::VIEW_ACCOUNT)
            .await
    }

    /// Waits until the remote refuses the token anything but the managed labels, as the
    /// webhook will use it: through the stored kubeconfig and the webhook's client code.
    async fn wait_sync_scope(&self, stored: &str) -> Result<()> {
        let name = &self.plan.name;
        let options = mesh_state::remote_options(self.timeout);
        let client = remote::client_from_kubeconfig(name, stored, &options)
            .await
            .map_err(|e| Error::Refused {
                what: format!(
                    "cannot use the new token of {name}: {}",
                    failure::error_chain(&e)
                ),
                hint: "check the remote's kubeconfig with `kubectl get ns`".into(),
            })?;
        let what = format!(
            "ValidatingAdmissionPolicy {} enforced on the token",
            setup::SYNC_SCOPE
        );
        match sync_scope::wait_enforced(&client, &self.plan.scoped, self.timeout).await {
            Ok(Scope::Enforced) => {
                self.progress.ok(format!("{name}: {what}"));
                Ok(())
            }
            Ok(Scope::Stale { namespace }) => Err(still_refused(name, &namespace, self.timeout)),
            Ok(Scope::Wider { namespace }) => Err(Error::Refused {
                what: format!(
                    "{name} still lets the token change the managed labels of namespace \
                     {namespace}, which the scope leaves out, after {}s",
                    self.timeout.as_secs()
                ),
                hint: "raise --timeout if the remote is only slow to load the policy".into(),
            }),
            Ok(Scope::NotEnforced) => Err(Error::Refused {
                what: format!(
                    "{name} does not enforce ValidatingAdmissionPolicy {} within {}s",
                    setup::SYNC_SCOPE,
                    self.timeout.as_secs()
                ),
                hint: "the remote's apiserver must support ValidatingAdmissionPolicy \
                       (admissionregistration.k8s.io/v1, Kubernetes 1.30 or later); raise \
                       --timeout if it is only slow"
                    .into(),
            }),
            Err(e) => Err(Error::kube(format!("cannot probe {what}"))(e)),
        }
    }

    /// `--force` over another primary's attach of this cluster: its token Secrets go, which
    /// revokes its tokens, and this run creates new ones. A standby its interrupted rotation
    /// left goes too: its stored kubeconfig may hold that token.
    async fn revoke_other_primarys_tokens(&mut self) -> Result<()> {
        let name = self.plan.name.clone();
        for secret in setup::token_secrets() {
            let m = Manifest::new(&setup::token_secret(&secret, setup::SYNC_ACCOUNT, &name))?;
            let found = dyn_api(&self.plan.remote, &m)
                .get_opt(&m.name)
                .await
                .map_err(Error::kube(format!("cannot read {}", describe(&m))))?;
            // Only this cluster's: preflight let another cluster's pass untouched.
            let other = found
                .as_ref()
                .and_then(|f| setup::other_primary(&f.metadata, &name, &self.plan.primary_id));
            let Some(other) = other else {
                continue;
            };
            let other = other.to_owned();
            // Before the request: one whose answer never came may have revoked it too.
            if !self.revoked.contains(&other) {
                self.revoked.push(other.clone());
            }
            if apply::delete(&self.plan.remote, &m).await? == apply::Deleted::Deleted {
                self.progress.warn(format!(
                    "{name}: {} of the primary with kube-system uid {other} deleted (--force): \
                     its token no longer works",
                    describe(&m)
                ));
            }
        }
        Ok(())
    }

    /// `--force`: the other primary's objects of this cluster that this run does not write
    /// (`leftovers`, [`Plan::takeover`]'s) go, recorded for the rollback, which creates them
    /// again. One found recorded for this primary or gone since is left alone.
    async fn delete_other_primarys_leftovers(&mut self, leftovers: &[Manifest]) -> Result<()> {
        let name = self.plan.name.clone();
        for m in leftovers.iter().cloned() {
            let found = dyn_api(&self.plan.remote, &m)
                .get_opt(&m.name)
                .await
                .map_err(Error::kube(format!("cannot read {}", describe(&m))))?;
            let Some(found) = found else { continue };
            let Some(other) = setup::other_primary(&found.metadata, &name, &self.plan.primary_id)
            else {
                continue;
            };
            let line = format!(
                "{name}: {} of the primary with kube-system uid {other} deleted (--force; not \
                 attached with it now)",
                describe(&m)
            );
            if self.delete_remote(m, found).await? == apply::Deleted::Deleted {
                self.progress.warn(line);
            }
        }
        Ok(())
    }

    /// Whether this run may delete or replace the remote object `meta` describes: attach
    /// created it for this cluster from this primary or, in a takeover, from another.
    fn may_replace(&self, meta: &kube::api::ObjectMeta) -> bool {
        let (name, primary) = (&self.plan.name, &self.plan.primary_id);
        setup::is_ours_from(meta, name, primary)
            || (self.plan.takeover.is_some() && setup::other_primary(meta, name, primary).is_some())
    }

    /// Deletes the remote object `m`, found as `found`, recording it for the rollback.
    /// Recorded before the request, as [`Self::ensure`] records.
    async fn delete_remote(&mut self, m: Manifest, found: DynamicObject) -> Result<apply::Deleted> {
        self.changes
            .push(Change::Deleted(Side::Remote, m.clone(), Box::new(found)));
        let api = dyn_api(&self.plan.remote, &m);
        match api.delete(&m.name, &DeleteParams::background()).await {
            Ok(_) => Ok(apply::Deleted::Deleted),
            Err(e) => {
                if apply::stored_nothing(&e) {
                    self.changes.pop();
                }
                match e {
                    kube::Error::Api(s) if s.code == 404 => Ok(apply::Deleted::NotFound),
                    e => Err(Error::kube(format!("cannot delete {}", describe(&m)))(e)),
                }
            }
        }
    }

    /// A re-attach that binds istiod's reader to another ClusterRole than before: the binding's
    /// roleRef cannot change, so the old binding goes (it is recreated next), and so does the
    /// ClusterRole of ours that nothing uses any more.
    async fn retire_other_reader_role(&mut self, role: &ReaderRole) -> Result<()> {
        let name = self.plan.name.clone();
        let binding = Manifest::new(&setup::istio_reader_binding(role, &name))?;
        let found = dyn_api(&self.plan.remote, &binding)
            .get_opt(&binding.name)
            .await
            .map_err(Error::kube(format!("cannot read {}", describe(&binding))))?;
        let bound_to = |o: &DynamicObject| {
            o.data
                .pointer("/roleRef/name")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let Some(found) = found else { return Ok(()) };
        if bound_to(&found) == Some(role.name()) || !self.may_replace(&found.metadata) {
            return Ok(());
        }
        self.delete_remote(binding, found).await?;
        if *role == ReaderRole::Istio {
            let own = Manifest::new(&setup::istio_reader_cluster_role(&name))?;
            let found = dyn_api(&self.plan.remote, &own)
                .get_opt(&own.name)
                .await
                .map_err(Error::kube(format!("cannot read {}", describe(&own))))?;
            if let Some(found) = found {
                self.delete_remote(own, found).await?;
            }
        }
        self.progress.ok(format!(
            "{name}: istiod's reader moves to ClusterRole {}",
            role.name()
        ));
        Ok(())
    }

    /// `--remote-guard=off` on a re-run: the guard of an earlier attach of this cluster goes
    /// (binding first, so that no policy is left bound). Objects of that name that attach did
    /// not create for this cluster stay. Preflight made sure the caller may read them; should
    /// a read still be refused, that is said and the run goes on (`check` tells what is left).
    async fn remove_guard(&mut self) -> Result<()> {
        let name = self.plan.name.clone();
        let guard = Guard::new(mesh_core::cluster::RemoteGuard::Warn, "", "");
        for m in [
            Manifest::new(&setup::guard_binding(&name, &guard))?,
            Manifest::new(&setup::guard_policy(&name, &guard))?,
        ] {
            let found = match dyn_api(&self.plan.remote, &m).get_opt(&m.name).await {
                Ok(found) => found,
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    self.progress.warn(format!(
                        "{name}: may not read {} to remove an earlier guard; `kubectl mesh \
                         check` tells whether one is left",
                        describe(&m)
                    ));
                    continue;
                }
                Err(e) => return Err(Error::kube(format!("cannot read {}", describe(&m)))(e)),
            };
            let Some(found) = found else { continue };
            if !self.may_replace(&found.metadata) {
                self.progress.warn(format!(
                    "{name}: {} kept: attach did not create it for this cluster",
                    describe(&m)
                ));
                continue;
            }
            let what = describe(&m);
            if self.delete_remote(m, found).await? == apply::Deleted::Deleted {
                self.progress
                    .ok(format!("{name}: {what} deleted (--remote-guard=off)"));
            }
        }
        Ok(())
    }
}
/// The refusal of a run whose remote, after `timeout`, still refused the token a change of
/// the managed labels of `namespace` with the sync scope policy it was just given: the
/// refusal names that policy, so the remote enforces an earlier copy of it (an apiserver
/// that has not loaded the new one), not another policy.
fn still_refused(cluster: &str, namespace: &str, timeout: Duration) -> Error {
    Error::Refused {
        what: format!(
            "{cluster} still refuses the token a change of the managed labels of namespace \
             {namespace} after {}s: it enforces an earlier copy of ValidatingAdmissionPolicy {}",
            timeout.as_secs(),
            setup::SYNC_SCOPE
        ),
        hint: "its apiservers load a changed policy within seconds; raise --timeout if the \
               remote is only slow, or re-run attach"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal named the sync scope policy, yet the hint sent the user looking for
    /// another policy.
    #[test]
    fn a_scope_still_refused_names_the_policy_the_remote_has_not_reloaded() {
        let line = still_refused("east", "shop", Duration::from_secs(60)).line();
        assert!(
            line.contains(
                "it enforces an earlier copy of ValidatingAdmissionPolicy kubectl-mesh-sync-scope"
            ) && !line.contains("another ValidatingAdmissionPolicy"),
            "{line}"
        );
    }
}
