//! The rollback of a run that failed or was interrupted: what it changed is put back, newest
//! first, and the one line the command fails with says what could not be.

use kube::Client;
use tokio::time::Instant;

use super::Run;
use crate::cmd::attach::{
    adopt,
    objects::{Side, describe},
    step::Step,
    undo::{Change, Undone, by_deadline, left_behind, out_of_time, re_run, revoked_note},
    waits::wait_namespace_gone,
};
use crate::{Error, Result, namespace_contents};

impl Run<'_> {
    /// Why a namespace this run created is kept ([`namespace_contents::why_keep`]; its objects
    /// are deleted before it, newest first): someone else may have put something there
    /// meanwhile, e.g. another attach its Istio remote secret in the primary's istio-system.
    /// `None` for any other change, or a namespace that may go.
    async fn why_keep(&self, change: &Change, client: &Client) -> Result<Option<String>> {
        let m = change.manifest();
        if !change.is_creation() || m.resource.kind != "Namespace" {
            return Ok(None);
        }
        // The primary's istio-system is shared by clusters: another's object there counts.
        let primary = match change.side() {
            Side::Remote => Some(self.plan.primary_id.as_str()),
            Side::Primary => None,
        };
        namespace_contents::why_keep(client, &m.name, primary)
            .await
            .map_err(Error::kube(format!(
                "cannot tell what {} holds besides this attach's objects",
                describe(m)
            )))
    }

    /// Puts `change` back on `client` (the cluster of its side, `label`) and says so: `None`
    /// when it was a namespace kept for what it holds.
    async fn put_back(
        &self,
        change: &Change,
        client: &Client,
        label: &str,
    ) -> Result<Option<Undone>> {
        let m = change.manifest();
        if let Some(why) = self.why_keep(change, client).await? {
            self.progress
                .warn(format!("rolled back: {label}: {} kept: {why}", describe(m)));
            return Ok(None);
        }
        let undone = change.undo(client).await?;
        let done = match undone {
            // Its create was interrupted before the apiserver stored it.
            Undone::NothingToDo => return Ok(Some(undone)),
            Undone::Deleted => "deleted",
            Undone::Restored => "put back",
        };
        self.progress
            .warn(format!("rolled back: {label}: {} {done}", describe(m)));
        Ok(Some(undone))
    }

    /// Puts back what this run changed, newest first, and turns `err` into the one line the
    /// command fails with. `--timeout` bounds it all: a cluster that stopped answering holds
    /// each request for its client's timeouts, and a change after another would be held that
    /// long each, while Ctrl-C is ignored. Each cluster's changes are put back at once with
    /// the other's: one that stopped answering must not use up the time of the other's. For
    /// a moment the primary's record of the cluster may so outlive the remote's sync account:
    /// a push meanwhile is refused, and the remote keeps its labels.
    pub(in crate::cmd::attach) async fn roll_back(&mut self, err: Error) -> Error {
        let step = self.step.map_or("preparation", Step::name);
        let progress = self.progress;
        progress.fail(format!("step {step} failed: {}", err.what()));
        let undo = if self.changes.is_empty() && self.adopted.is_empty() {
            "had changed nothing, so nothing was rolled back"
        } else {
            "was rolled back"
        };
        let revoked = revoked_note(&self.revoked);
        let deadline = crate::poll::timer_deadline(self.timeout);
        let late = out_of_time(self.timeout);
        let adopted = std::mem::take(&mut self.adopted);
        let (remote_changes, primary_changes): (Vec<Change>, Vec<Change>) =
            std::mem::take(&mut self.changes)
                .into_iter()
                .partition(|change| change.side() == Side::Remote);
        let (primary, remote) = tokio::join!(
            self.put_back_side(primary_changes, deadline, &late),
            self.put_back_side(remote_changes, deadline, &late),
        );
        // Labels adopted onto the primary's namespaces go once the MeshCluster and the remote's
        // sync account are gone: the webhook pushes their removal to every attached remote,
        // and would strip this one's own labels while it still counted as attached.
        let unadopted =
            adopt::unadopt(&self.plan.primary, adopted, deadline, &late, progress).await;
        // Gone for real before the next attach, which would otherwise find them terminating.
        tokio::join!(
            self.wait_gone(primary.terminating, deadline, &late),
            self.wait_gone(remote.terminating, deadline, &late),
        );
        let undeleted = [primary.undeleted, remote.undeleted].concat();
        let unrestored = [primary.unrestored, remote.unrestored, unadopted].concat();
        let what = format!(
            "attaching {} failed at step {step} and {undo}{revoked}: {}",
            self.plan.name,
            err.what()
        );
        let takeover = !self.revoked.is_empty();
        let hint = if !undeleted.is_empty() || !unrestored.is_empty() {
            format!(
                "{}; {}",
                err.hint(),
                left_behind(&undeleted, &unrestored, takeover)
            )
        } else if !takeover && err.hint().contains("re-run attach") {
            err.hint()
        } else {
            format!("{}; then {}", err.hint(), re_run(takeover))
        };
        // Said above with why; the one line says so too, not that all was rolled back.
        let kept = [primary.kept, remote.kept].concat();
        let hint = match kept.as_slice() {
            [] => hint,
            kept => format!(
                "{hint}; {} kept, created by this run (it may hold what this attach did not \
                 create): delete it by hand if it holds nothing else",
                kept.join(", ")
            ),
        };
        Error::Refused { what, hint }
    }

    /// Puts back `changes` of one cluster, newest first, by `deadline`; says what it left.
    /// Namespaces it deleted are waited for later ([`Run::wait_gone`]): one slow to go (a
    /// finalizer, an API it waits on) must not use up the time of older changes.
    async fn put_back_side(
        &self,
        mut changes: Vec<Change>,
        deadline: Instant,
        late: &str,
    ) -> Left<'_> {
        let progress = self.progress;
        let mut left = Left::default();
        while let Some(change) = changes.pop() {
            let label = self.side_label(change.side());
            let client = self.client(change.side());
            let m = change.manifest();
            let failed = match by_deadline(deadline, self.put_back(&change, client, label)).await {
                Some(Ok(Some(Undone::Deleted))) if m.resource.kind == "Namespace" => {
                    left.terminating
                        .push((label, client, m.name.clone(), describe(m)));
                    continue;
                }
                // A namespace kept for what it holds, or for what could not be listed.
                Some(Ok(None)) => {
                    left.kept.push(format!("{label}: {}", describe(m)));
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => e.what(),
                None => format!("{} not put back: {late}", describe(m)),
            };
            progress.fail(format!("rollback: {label}: {failed}"));
            let list = if change.is_creation() {
                &mut left.undeleted
            } else {
                &mut left.unrestored
            };
            list.push(format!("{label}: {}", describe(m)));
        }
        left
    }

    /// Waits, by `deadline`, for the namespaces the rollback deleted to be gone; says which
    /// are not.
    async fn wait_gone(&self, terminating: Vec<Terminating<'_>>, deadline: Instant, late: &str) {
        for (label, client, name, described) in terminating {
            let time_left = deadline.saturating_duration_since(Instant::now());
            let not_gone =
                match by_deadline(deadline, wait_namespace_gone(client, &name, time_left)).await {
                    Some(Ok(())) => continue,
                    Some(Err(e)) => e.what(),
                    None => format!("{described} not gone yet: {late}"),
                };
            self.progress
                .warn(format!("rolled back: {label}: {not_gone}"));
        }
    }
}

/// A namespace the rollback deleted: the side's label, its cluster, its name, and how the
/// output names it.
type Terminating<'a> = (&'a str, &'a Client, String, String);

/// What a rollback could not undo on one cluster, as the hint names it (creations to delete,
/// changes to put back), and the namespaces it deleted, to wait for.
#[derive(Default)]
struct Left<'a> {
    undeleted: Vec<String>,
    unrestored: Vec<String>,
    /// Namespaces this run created that the rollback kept.
    kept: Vec<String>,
    terminating: Vec<Terminating<'a>>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::{
        api::DynamicObject,
        config::{Cluster, Kubeconfig},
    };
    use mesh_core::{
        cluster::{NamespaceScope, RemoteGuard},
        fake_apiserver::{Requests, answering, status},
        fixtures::SilentServer,
        labels::SyncRule,
    };

    use super::*;
    use crate::cmd::attach::{
        hooks::TestHooks,
        plan::{NamespaceState, Plan, ViewPlan},
    };
    use crate::{
        access::{self, Target},
        output::Progress,
        preview::Preview,
        remote_setup::{self as setup, Guard},
        render::Manifest,
    };

    /// The plan of attaching `east`, both of whose clusters `client` reaches.
    fn plan(client: Client, server: &str) -> Plan {
        let rule = SyncRule::default();
        Plan {
            name: "east".into(),
            primary: client.clone(),
            remote: client,
            remote_target: Target {
                label: "remote cluster east".into(),
                server: server.into(),
                where_configured: "its server".into(),
            },
            remote_kc: Kubeconfig::default(),
            ca_fingerprint: None,
            tls_server_name: None,
            remote_context: "east".into(),
            cluster_id: "east-id".into(),
            primary_id: "primary-id".into(),
            takeover: None,
            scoped: rule.clone(),
            rule,
            guard: Guard::new(RemoteGuard::Warn, "primary", "primary"),
            existing: None,
            remote_namespace: NamespaceState::Absent,
            istio: None,
            view: ViewPlan::None,
            scope: NamespaceScope::default(),
            preview: Preview::default(),
            token_ttl: None,
            warnings: Vec::new(),
        }
    }

    /// A stand-in cluster that answers every deletion and shows every namespace for ever,
    /// which a real apiserver does only with a finalizer nobody removes.
    fn answering_cluster() -> (Client, Requests) {
        answering(|method, path| {
            let body = match (method.as_str(), path) {
                ("DELETE", _) => {
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})
                }
                // Discovery: only namespaces, so the namespace holds nothing.
                (_, "/api") => serde_json::json!({"kind": "APIVersions", "versions": ["v1"]}),
                (_, "/apis") => serde_json::json!({"kind": "APIGroupList", "groups": []}),
                (_, "/api/v1") => serde_json::json!({"kind": "APIResourceList",
                    "groupVersion": "v1", "resources": []}),
                (_, p) if p.starts_with("/api/v1/namespaces/") => serde_json::json!({
                    "kind": "Namespace", "apiVersion": "v1",
                    "metadata": {"name": p.rsplit('/').next().unwrap_or_default()}}),
                _ => return status(http::StatusCode::NOT_FOUND, "NotFound", "not found"),
            };
            (http::StatusCode::OK, body)
        })
    }

    /// How a run of `plan` that made `changes` (oldest first) and then failed ends, rolled
    /// back under `timeout`: the error attach fails with.
    async fn rolled_back(plan: &Plan, timeout: Duration, changes: Vec<Change>) -> Error {
        let hooks = TestHooks::read(|_| None).expect("no hooks");
        let mut run = Run::new(plan, Progress::quiet(), hooks, timeout);
        run.changes = changes;
        run.roll_back(Error::Refused {
            what: "cannot apply the guard".into(),
            hint: "check the remote".into(),
        })
        .await
    }

    /// The paths `requests` deleted.
    fn deleted(requests: &Requests) -> Vec<String> {
        (requests.all().iter())
            .filter_map(|r| r.strip_prefix("DELETE ").map(str::to_owned))
            .collect()
    }

    /// A client of a hung apiserver (SilentServer accepts connections and never says a word),
    /// as attach reaches a cluster with an admin's kubeconfig.
    async fn silent_cluster(silent: &SilentServer) -> Client {
        let kc = crate::kubeconfig::tests::user_with_cluster(Cluster {
            server: Some(silent.url.clone()),
            insecure_skip_tls_verify: Some(true),
            ..Cluster::default()
        });
        access::client(kc, None).await.expect("client")
    }

    /// A namespace this run created, kept by the rollback because what it holds could not be
    /// listed (the rights attach asks for do not cover every kind), was said in a progress
    /// line only: the one line attach failed with said everything was rolled back.
    #[tokio::test]
    async fn a_namespace_kept_by_the_rollback_is_named_in_its_error() {
        // Aggregated discovery: one namespaced kind, ConfigMaps, which may not be listed.
        let configmaps = serde_json::json!({"resource": "configmaps", "scope": "Namespaced",
            "singularResource": "configmap", "verbs": ["get", "list"],
            "responseKind": {"group": "", "version": "v1", "kind": "ConfigMap"}});
        let (cluster, _requests) = answering(move |method, path| {
            let discovery = |items| {
                serde_json::json!({"kind": "APIGroupDiscoveryList",
                    "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
            };
            let body = match (method.as_str(), path) {
                (_, "/api") => discovery(serde_json::json!([{"metadata": {"name": ""},
                    "versions": [{"version": "v1", "resources": [configmaps.clone()]}]}])),
                (_, "/apis") => discovery(serde_json::json!([])),
                (_, p) if p.ends_with("/configmaps") => {
                    return status(http::StatusCode::FORBIDDEN, "Forbidden", "no list");
                }
                (_, p) if p.starts_with("/api/v1/namespaces/") => serde_json::json!({
                    "kind": "Namespace", "apiVersion": "v1",
                    "metadata": {"name": p.rsplit('/').next().unwrap_or_default()}}),
                _ => return status(http::StatusCode::NOT_FOUND, "NotFound", "not found"),
            };
            (http::StatusCode::OK, body)
        });
        let plan = plan(cluster, "https://east");
        let namespace = Manifest::new(&setup::remote_namespace("east")).expect("namespace");
        let changes = vec![Change::Created(Side::Remote, namespace.clone())];
        let failed = rolled_back(&plan, Duration::from_secs(5), changes).await;
        let kept = format!("east: {} kept, created by this run", describe(&namespace));
        assert!(failed.hint().contains(&kept), "{}", failed.hint());
    }

    /// A namespace the rollback deleted that never goes (a finalizer holds it) is waited for
    /// once everything else is put back: waited for at once, it took the whole --timeout, and
    /// every older change was left. The cluster is a stand-in answering every deletion and
    /// showing the namespace for ever, which a real apiserver does only with a finalizer
    /// nobody removes.
    #[tokio::test(start_paused = true)]
    async fn a_namespace_slow_to_go_does_not_keep_older_changes_from_being_undone() {
        let (cluster, requests) = answering_cluster();
        let plan = plan(cluster, "https://east");
        let account =
            Manifest::new(&setup::service_account(setup::SYNC_ACCOUNT, "east")).expect("account");
        let namespace = Manifest::new(&setup::remote_namespace("east")).expect("namespace");
        // Oldest first: the account, then the namespace (on the same cluster here, as what
        // matters is that the namespace is put back first).
        let changes = vec![
            Change::Created(Side::Remote, account.clone()),
            Change::Created(Side::Remote, namespace),
        ];
        let failed = rolled_back(&plan, Duration::from_secs(5), changes).await;
        let deleted = deleted(&requests);
        assert!(
            deleted
                .iter()
                .any(|p| p.ends_with(&format!("/serviceaccounts/{}", account.name))),
            "{deleted:?}"
        );
        assert!(
            !failed.hint().contains("ServiceAccount"),
            "{}",
            failed.hint()
        );
    }

    /// A remote that stopped answering once the steps had written to it: a hung apiserver
    /// (SilentServer accepts connections and never says a word), through the admin client
    /// attach reaches it with. Each change the rollback put back, newest first, waited out that
    /// client's connect timeout (10 s), one after another, while Ctrl-C was ignored. --timeout
    /// now bounds the whole rollback, and the hint names everything it left.
    #[tokio::test]
    async fn a_rollback_on_a_remote_that_never_answers_ends_by_the_timeout() {
        let silent = SilentServer::start().await;
        let plan = plan(silent_cluster(&silent).await, &silent.url);
        let timeout = Duration::from_secs(2);
        let created = [
            Manifest::new(&setup::remote_namespace("east")).expect("namespace"),
            Manifest::new(&setup::service_account(setup::SYNC_ACCOUNT, "east")).expect("account"),
            Manifest::new(&setup::sync_cluster_role("east")).expect("role"),
        ];
        let scope = setup::sync_scope_policy("east", &plan.scoped, &plan.scope);
        let scope = Manifest::new(&scope).expect("scope");
        let before: DynamicObject = serde_json::from_value(scope.object.clone()).expect("object");
        let mut changes: Vec<Change> = (created.iter())
            .map(|m| Change::Created(Side::Remote, m.clone()))
            .collect();
        changes.push(Change::Updated(
            Side::Remote,
            scope.clone(),
            Box::new(before),
        ));

        let started = Instant::now();
        let failed = rolled_back(&plan, timeout, changes).await;
        let took = started.elapsed();
        assert!(took < timeout + Duration::from_secs(1), "{took:?}");
        let undeleted: Vec<String> = created
            .iter()
            .rev()
            .map(|m| format!("east: {}", describe(m)))
            .collect();
        assert_eq!(
            failed.hint(),
            format!(
                "check the remote; {}",
                left_behind(&undeleted, &[format!("east: {}", describe(&scope))], false)
            )
        );
    }

    /// A primary that stopped answering used up the rollback's time, newest change first, and
    /// the remote's changes after it were not even tried: the sync account's rights stayed on a
    /// remote that answered. Each cluster's changes are now put back at once with the other's.
    #[tokio::test]
    async fn a_silent_primary_does_not_keep_the_remote_s_changes_from_being_undone() {
        let silent = SilentServer::start().await;
        let (remote, requests) = answering_cluster();
        let plan = Plan {
            primary: silent_cluster(&silent).await,
            ..plan(remote, "https://east")
        };
        let account =
            Manifest::new(&setup::service_account(setup::SYNC_ACCOUNT, "east")).expect("account");
        let role = Manifest::new(&setup::sync_cluster_role("east")).expect("role");
        let secret = Manifest::new(&setup::cluster_secret("east", "kubeconfig")).expect("secret");
        // Oldest first: the remote's, then the primary's.
        let changes = vec![
            Change::Created(Side::Remote, account.clone()),
            Change::Created(Side::Remote, role.clone()),
            Change::Created(Side::Primary, secret.clone()),
        ];
        let failed = rolled_back(&plan, Duration::from_secs(2), changes).await;
        let deleted = deleted(&requests);
        for m in [&account, &role] {
            assert!(
                deleted.iter().any(|p| p.ends_with(&format!("/{}", m.name))),
                "{} not deleted: {deleted:?}",
                describe(m)
            );
        }
        assert_eq!(
            failed.hint(),
            format!(
                "check the remote; {}",
                left_behind(&[format!("primary: {}", describe(&secret))], &[], false)
            )
        );
    }

    /// Labels adopted onto the primary were taken back first, while the cluster's MeshCluster
    /// and sync account were still there: the webhook pushed their removal to the remote they
    /// came from, which lost its own labels. They now go once both are deleted.
    #[tokio::test]
    async fn adopted_labels_go_once_the_cluster_no_longer_counts_as_attached() {
        let (clusters, requests) = answering_cluster();
        let plan = plan(clusters, "https://east");
        let record = crate::cmd::attach::objects::cluster_record(&plan);
        let mesh_cluster = Manifest::new(&setup::mesh_cluster(&record)).expect("MeshCluster");
        let account =
            Manifest::new(&setup::service_account(setup::SYNC_ACCOUNT, "east")).expect("account");
        let hooks = TestHooks::read(|_| None).expect("no hooks");
        let mut run = Run::new(&plan, Progress::quiet(), hooks, Duration::from_secs(5));
        run.changes = vec![
            Change::Created(Side::Remote, account),
            Change::Created(Side::Primary, mesh_cluster),
        ];
        run.adopted = vec![crate::preview::Adoption {
            namespace: "shop".into(),
            labels: [("istio-injection".to_owned(), "enabled".to_owned())].into(),
        }];
        run.roll_back(Error::Refused {
            what: "cannot set owner references".into(),
            hint: "check the primary".into(),
        })
        .await;
        let requests = requests.all();
        let unadopted = (requests.iter())
            .position(|r| r == "PATCH /api/v1/namespaces/shop")
            .unwrap_or_else(|| panic!("no adoption taken back: {requests:#?}"));
        let deleted: Vec<_> = (requests.iter())
            .enumerate()
            .filter(|(_, r)| r.starts_with("DELETE "))
            .collect();
        assert_eq!(deleted.len(), 2, "{requests:#?}");
        assert!(deleted.iter().all(|(i, _)| *i < unadopted), "{requests:#?}");
    }
}
