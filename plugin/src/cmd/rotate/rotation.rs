//! One cluster's rotation, step by step: each holder's token moved to a standby and back,
//! waiting for the webhook between the moves. An interruption stops it between two writes,
//! and ends a wait at once ([`super::interrupted`]).

use super::interrupted::{Phase, Stopped};
use super::*;
use crate::cmd::attach::{Step, hooks::TestHooks};
use crate::interrupt::Listener;
use crate::tokens::{mint_bound_token, wait_token};

/// One cluster's rotation.
pub(super) struct Rotation<'a> {
    pub(super) cluster: &'a str,
    /// Its MeshCluster: what the stored kubeconfigs must be ([`stored_as_recorded`]).
    pub(super) record: &'a MeshCluster,
    pub(super) primary: &'a Client,
    pub(super) primary_target: &'a Target,
    pub(super) remote: &'a Client,
    pub(super) remote_target: &'a Target,
    pub(super) primary_id: &'a str,
    pub(super) timeout: Duration,
    pub(super) progress: Progress,
    /// Interruptions, listened to since the first rotation began.
    pub(super) listener: &'a Listener,
    pub(super) hooks: TestHooks,
}

impl Rotation<'_> {
    /// Rotates `holder`'s token; `Some` where an interruption stopped it (between two writes,
    /// or in a wait; one that came before is seen at the first wait, before any write).
    pub(super) async fn rotate(&self, holder: Holder) -> Result<Option<Stopped>> {
        let own = holder.token_secret();
        let standby = setup::standby_secret(own);
        let account = holder.account();
        let listener = self.listener;
        let stopped = |phase, old_works| {
            Ok(Some(Stopped {
                holder,
                phase,
                old_works,
            }))
        };
        self.progress.info(format!(
            "{}: rotating the token of ServiceAccount {MESH_NAMESPACE}/{account}",
            self.cluster
        ));
        let stored = self.stored(holder).await?;
        let current = stored_token_of(&stored);
        // A time-bound token (`attach --token-ttl`) is replaced by one of the same lifetime,
        // bound to the Secret that stands for it.
        let bound = lifetime_of(current.as_deref());
        let standby_token = token_in(self.remote_secret(&standby).await?.as_ref());
        let bound_to_standby = current
            .as_deref()
            .and_then(token::bound_secret)
            .is_some_and(|(name, _)| name == standby);
        let on_standby = bound_to_standby || (standby_token.is_some() && standby_token == current);
        // A rotation that repairs an expired token cannot say the previous one still works.
        let current_works = !has_expired(current.as_deref());
        // How far the rotation got, and whether the old token (the own Secret's) still works,
        // as an interruption says them.
        let mut phase = Phase::Unchanged {
            standby_issued: false,
            expired: !current_works,
        };
        let old_works;
        let (on_the_standby, previous_works) = if on_standby {
            // A run stopped on the standby; it may have revoked the old token already.
            let own_secret = self.remote_secret(own).await?;
            old_works = token_in(own_secret.as_ref()).map(|t| !has_expired(Some(&t)));
            phase = match own_secret {
                Some(_) => Phase::OnStandby,
                None => Phase::Revoked,
            };
            (current, true)
        } else {
            old_works = Some(current_works);
            // Whatever the standby holds is not stored; but a previous run may have just
            // moved the stored kubeconfig off it, so it goes only once that is in use.
            let settled = self.settled(holder, current.as_deref(), current_works);
            if listener.unless(settled).await.transpose()?.is_none() || listener.received() {
                return stopped(phase, old_works);
            }
            self.delete_token_secret(&standby).await?;
            if listener
                .unless(self.gone(&standby))
                .await
                .transpose()?
                .is_none()
                || listener.received()
            {
                return stopped(phase, old_works);
            }
            // Stopped from here on, the rotation has issued the standby's token.
            phase = Phase::Unchanged {
                standby_issued: true,
                expired: !current_works,
            };
            let Some(token) = self.issue_and_store(holder, &standby, bound).await? else {
                return stopped(phase, old_works);
            };
            phase = Phase::OnStandby;
            (Some(token), current_works)
        };
        // The standby's token is stored and in use, checked up to the revocation: an attach
        // re-run meanwhile stores the own Secret's token again, which must not be revoked.
        let settled = self.settled(holder, on_the_standby.as_deref(), previous_works);
        if listener.unless(settled).await.transpose()?.is_none() || listener.received() {
            return stopped(phase, old_works);
        }
        self.delete_token_secret(own).await?;
        phase = Phase::Revoked;
        self.progress.ok(format!(
            "{}: Secret {MESH_NAMESPACE}/{own} deleted: the old token is revoked",
            self.cluster
        ));
        if listener.unless(self.gone(own)).await.transpose()?.is_none() || listener.received() {
            return stopped(phase, old_works);
        }
        let Some(token) = self.issue_and_store(holder, own, bound).await? else {
            return stopped(phase, old_works);
        };
        phase = Phase::Back;
        let settled = self.settled(holder, Some(&token), true);
        if listener.unless(settled).await.transpose()?.is_none() || listener.received() {
            return stopped(phase, old_works);
        }
        self.delete_token_secret(&standby).await?;
        // Deleted, the standby's token is revoked: the rotation is done, whether or not an
        // interruption ends the wait for the Secret to go.
        listener.unless(self.gone(&standby)).await.transpose()?;
        Ok(None)
    }

    /// Issues a new token of `holder`'s account in the Secret `name` (created here) and stores
    /// it for `holder`; `None`, with nothing stored, where an interruption ended the wait for
    /// the token.
    async fn issue_and_store(
        &self,
        holder: Holder,
        name: &str,
        bound: Option<Duration>,
    ) -> Result<Option<String>> {
        let account = holder.account();
        let created = self.create_token_secret(name, account, bound).await?;
        let created_name = || format!("Secret {MESH_NAMESPACE}/{name} created");
        self.stall(Step::TokenSecret, created_name).await;
        let issued = self.token_of(&created, name, account, bound);
        let token = match self.listener.unless(issued).await.transpose()? {
            Some(token) if !self.listener.received() => token,
            _ => return Ok(None),
        };
        self.store(holder, &token).await?;
        self.stall(Step::PrimarySecret, || "new token stored".to_owned())
            .await;
        Ok(Some(token))
    }

    /// When `KUBECTL_MESH_STALL_IN` names `step`, whose object `stored` says was just
    /// written: waits as if the answer had not come, until an interruption.
    async fn stall(&self, step: Step, stored: impl FnOnce() -> String) {
        let cluster = self.cluster;
        let stored = || format!("{cluster}: {}", stored());
        let stalled = self.hooks.stall_if_in(Some(step), self.progress, stored);
        self.listener.unless(stalled).await;
    }

    async fn stored(&self, holder: Holder) -> Result<Secret> {
        stored_secret(self.primary, self.primary_target, self.cluster, holder).await
    }

    async fn remote_secret(&self, name: &str) -> Result<Option<Secret>> {
        Api::<Secret>::namespaced(self.remote.clone(), MESH_NAMESPACE)
            .get_opt(name)
            .await
            .map_err(|e| {
                access::request_error(
                    self.remote_target,
                    &format!("read Secret {MESH_NAMESPACE}/{name}"),
                    e,
                )
            })
    }

    /// Deletes a token Secret this primary created for this cluster (then [`Self::gone`]
    /// waits until it is gone: its name is issued anew next).
    async fn delete_token_secret(&self, name: &str) -> Result<()> {
        let Some(found) = self.remote_secret(name).await? else {
            return Ok(());
        };
        ours_or_refused(
            &found.metadata,
            ("Secret", name),
            self.cluster,
            self.primary_id,
        )?;
        let api = Api::<Secret>::namespaced(self.remote.clone(), MESH_NAMESPACE);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(access::request_error(
                self.remote_target,
                &format!("delete Secret {MESH_NAMESPACE}/{name}"),
                e,
            )),
        }
    }

    /// Waits until the token Secret `name` is gone.
    async fn gone(&self, name: &str) -> Result<()> {
        let gone = async || {
            Ok(match self.remote_secret(name).await? {
                None => Break(()),
                Some(_) => Continue(()),
            })
        };
        poll::until(self.timeout, Duration::from_millis(200), gone, |()| Late {
            what: format!("Secret {MESH_NAMESPACE}/{name} on {} to go", self.cluster),
            hint: format!(
                "`kubectl -n {MESH_NAMESPACE} get secret {name} -o yaml` on {} shows what holds \
                 it; then re-run rotate",
                self.cluster
            ),
        })
        .await
    }

    /// Creates the token Secret `name` for `account`; with `bound`, the Secret a token of that
    /// lifetime is bound to ([`Self::token_of`] gives the token).
    async fn create_token_secret(
        &self,
        name: &str,
        account: &str,
        bound: Option<Duration>,
    ) -> Result<Secret> {
        let mut secret = match bound {
            Some(_) => setup::token_anchor_secret(name, self.cluster),
            None => setup::token_secret(name, account, self.cluster),
        };
        secret.annotations_mut().insert(
            setup::PRIMARY_ANNOTATION.to_owned(),
            self.primary_id.to_owned(),
        );
        let api = Api::<Secret>::namespaced(self.remote.clone(), MESH_NAMESPACE);
        api.create(&PostParams::default(), &secret)
            .await
            .map_err(|e| {
                access::request_error(
                    self.remote_target,
                    &format!("create Secret {MESH_NAMESPACE}/{name}"),
                    e,
                )
            })
    }

    /// The token of the Secret `created` (named `name`) for `account`: with `bound`, one of
    /// that lifetime bound to it, else the one the remote fills in (waited for).
    async fn token_of(
        &self,
        created: &Secret,
        name: &str,
        account: &str,
        bound: Option<Duration>,
    ) -> Result<String> {
        let token = match bound {
            Some(ttl) => mint_bound_token(self.remote, account, created, ttl)
                .await
                .map_err(|e| {
                    access::request_error(
                        self.remote_target,
                        &format!("request a token of ServiceAccount {MESH_NAMESPACE}/{account}"),
                        e,
                    )
                })?,
            None => wait_token(self.remote, self.cluster, name, "rotate", self.timeout).await?,
        };
        self.progress.ok(format!(
            "{}: new token of ServiceAccount {MESH_NAMESPACE}/{account} issued in Secret \
             {MESH_NAMESPACE}/{name}",
            self.cluster
        ));
        Ok(token)
    }

    /// Puts `token` into the stored kubeconfig of `holder`.
    async fn store(&self, holder: Holder, token: &str) -> Result<()> {
        let (ns, name) = holder.stored_at(self.cluster);
        let api = Api::<Secret>::namespaced(self.primary.clone(), ns);
        // The resourceVersion read makes this a conditional update. A conflict is the
        // webhook renewing a time-bound token meanwhile: read again and replace it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let stored = self.stored(holder).await?;
            // Read again on every write: an edit made during the rotation is refused too.
            stored_as_recorded(self.record, holder, &stored)?;
            let updated = with_token(&stored, token)?;
            match api.replace(&name, &PostParams::default(), &updated).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => continue,
                Err(e) => {
                    return Err(access::request_error(
                        self.primary_target,
                        &format!("update Secret {ns}/{name}"),
                        e,
                    ));
                }
            }
        }
        self.progress.ok(format!(
            "{}: new token stored in Secret {ns}/{name}",
            self.cluster
        ));
        Ok(())
    }

    /// Waits until the holder uses what is stored now. Only the webhook says so (in MeshCluster
    /// status); a stored token that has expired is used by no one, and is not waited for.
    /// `expected`, when given, is the token that must be stored; `previous_works`: whether the
    /// token stored before it still works (not when it had expired), as a timeout says.
    async fn settled(
        &self,
        holder: Holder,
        expected: Option<&str>,
        previous_works: bool,
    ) -> Result<()> {
        if holder != Holder::Sync {
            return Ok(());
        }
        let clusters: Api<MeshCluster> = Api::all(self.primary.clone());
        let mut said = false;
        let used = async || {
            let stored = self.stored(holder).await?;
            let token = stored_token_of(&stored);
            if let Some(expected) = expected
                && !same_credentials(token.as_deref(), expected)
            {
                return Err(Error::Refused {
                    what: format!(
                        "the stored credentials of {} changed during the rotation",
                        self.cluster
                    ),
                    hint: "was attach or rotate run at the same time? re-run rotate".into(),
                });
            }
            if has_expired(token.as_deref()) {
                return Ok(Break(()));
            }
            let mc = clusters
                .get(self.cluster)
                .await
                .map_err(|e| access::request_error(self.primary_target, "read MeshClusters", e))?;
            let observed = mc.status.and_then(|s| s.observed_credentials);
            if observed.is_some() && observed == stored.resource_version() {
                return Ok(Break(()));
            }
            // Said once: the wait may last up to --timeout.
            if !std::mem::replace(&mut said, true) {
                self.progress.info(format!(
                    "{}: waiting for the webhook to sync with the stored token",
                    self.cluster
                ));
            }
            Ok(Continue(stored.resource_version().unwrap_or_default()))
        };
        let meanwhile = if previous_works {
            "the previous token still works"
        } else {
            "the previous token had expired: the cluster syncs once the webhook uses the stored one"
        };
        poll::until(self.timeout, Duration::from_millis(250), used, |stored| Late {
            what: format!(
                "the webhook to sync {} with the stored token (MeshCluster \
                 status.observedCredentials = {stored})",
                self.cluster,
            ),
            hint: format!(
                "{meanwhile}; `kubectl mesh list` and `kubectl mesh check` show what the webhook \
                 does with {0}; then re-run `kubectl mesh rotate {0}`",
                self.cluster
            ),
        })
        .await
    }
}

/// Whether `token` is a JWT whose `exp` has passed.
fn has_expired(token: Option<&str>) -> bool {
    let now = k8s_openapi::jiff::Timestamp::now();
    token
        .and_then(token::claims)
        .and_then(|c| c.expired_at(now))
        .is_some()
}
