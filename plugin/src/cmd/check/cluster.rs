//! The checks of attached clusters, one section each, judged from what
//! [`facts::mesh`](super::facts::mesh) read with their stored credentials.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Namespace,
};
use kube::{ResourceExt, config::Kubeconfig};
use mesh_core::{
    MESH_NAMESPACE,
    cluster::{CONDITION_REACHABLE, CONDITION_SYNCED, KUBECONFIG_KEY, MeshCluster},
    failure::{Failure, error_chain},
    injection::{self, Readiness},
    labels::{Labels, SyncRule},
    printable::few,
    remote::Identity,
};

use super::answers::refused;
use super::facts::{ClusterFacts, MeshFacts, RemoteFacts, Stored, ViewFacts};
use super::guard::guard_result;
use super::report::{CheckResult, Outcome, Section};
use super::rights;
use crate::credentials::{TokenExpiry, stored_token, token_expiry};
use crate::{
    age, mesh_state::RemoteResult, output::plural, remote_setup as setup, restart::restart_advice,
};
use mesh_core::token::{self, Standing};

/// A token whose lifetime is unknown (no `iat`) and that expires sooner than this is a
/// warning; a token with a lifetime is judged by [`token::Claims::standing`].
const EXPIRY_WARNING: SignedDuration = SignedDuration::from_hours(24 * 7);

/// The attached clusters' sections: one that says why none could be checked, or one per
/// cluster.
pub fn judge_mesh(facts: &MeshFacts, rule: &SyncRule, now: Timestamp) -> Vec<Section> {
    let mesh = |check| {
        vec![Section {
            name: "attached clusters".into(),
            checks: vec![check],
        }]
    };
    let attached = match facts {
        MeshFacts::Unlisted(e) => {
            return mesh(CheckResult::error(
                "MeshClusters can be listed",
                e.to_string(),
                e.hint(),
            ));
        }
        MeshFacts::NoneAttached => {
            return mesh(CheckResult::warning(
                "at least one cluster is attached",
                "no MeshCluster exists",
                "attach one with `kubectl mesh attach <kubeconfig>`",
            ));
        }
        MeshFacts::Attached(attached) => attached,
    };
    let primary_namespaces = attached.primary_namespaces.as_ref();
    let primary_uid = primary_namespaces
        .ok()
        .and_then(|m| m.get("kube-system"))
        .and_then(|ns| ns.metadata.uid.as_deref());
    let primary_namespaces = primary_namespaces.map_err(crate::Error::line);
    attached
        .clusters
        .iter()
        .zip(&attached.remotes)
        .map(
            |(cluster, facts)| match (facts, rule.within(&cluster.spec.scope)) {
                // Being detached: its Secrets may be gone already, and nothing syncs it. One line
                // says so.
                (None, _) => detaching_section(cluster),
                // Judged by the rule narrowed to its scope, as the webhook syncs it.
                (Some(facts), Ok(scoped)) => {
                    let mesh = Mesh {
                        clusters: &attached.clusters,
                        primary_uid,
                        primary_namespaces: primary_namespaces.clone(),
                        rule: &scoped,
                        now,
                    };
                    judge(&mesh, cluster, facts)
                }
                (Some(_), Err(error)) => Section {
                    name: format!("cluster {} ({})", cluster.name_any(), cluster.spec.server),
                    checks: vec![CheckResult::error(
                        "its namespace scope can be used",
                        error.to_string(),
                        format!(
                            "nothing is written to it until the scope is set again with kubectl \
                         mesh scope {}",
                            cluster.name_any()
                        ),
                    )],
                },
            },
        )
        .collect()
}

/// The section of a cluster being detached ([`crate::mesh_state::is_being_detached`]):
/// deleted, and held by someone else's finalizers.
fn detaching_section(cluster: &MeshCluster) -> Section {
    let name = cluster.name_any();
    let held_by = cluster.finalizers().join(", ");
    Section {
        name: format!("cluster {name} ({})", cluster.spec.server),
        checks: vec![CheckResult::warning(
            "it is not being detached",
            format!(
                "its MeshCluster was deleted and is held by finalizers ({held_by}); nothing syncs \
                 it, and it cannot be attached again under that name until it is gone"
            ),
            format!(
                "let whoever put those finalizers remove them (`kubectl get meshcluster {name} -o \
                 yaml`), then attach it again if it should stay in the mesh"
            ),
        )],
    }
}

/// A cluster an older version attached under the primary's name (attach refuses it now):
/// `status`, `services` and the dashboard cannot tell its column from the primary's.
fn reserved_name_result(name: &str) -> Option<CheckResult> {
    (name == crate::output::PRIMARY).then(|| {
        CheckResult::warning(
            "its name is not the primary's",
            format!(
                "status, services and the dashboard show the primary as {name:?}: its column \
                 cannot be told from the primary's"
            ),
            format!(
                "detach it with `kubectl mesh detach {name}` and attach it again with --name \
                 <other>"
            ),
        )
    })
}

/// What the per-cluster judges share.
pub struct Mesh<'a> {
    /// Every attached cluster.
    pub clusters: &'a [MeshCluster],
    /// Every namespace of the primary, or why they could not be read.
    pub primary_namespaces: std::result::Result<&'a BTreeMap<String, Namespace>, String>,
    /// The UID of the primary's kube-system namespace.
    pub primary_uid: Option<&'a str>,
    /// The sync rule.
    pub rule: &'a SyncRule,
    /// The time expiries are compared with.
    pub now: Timestamp,
}

impl Mesh<'_> {
    /// The remote `namespaces` the rule covers, each by name with its labels once synced from
    /// `primary`.
    fn once_synced<'n>(
        &'n self,
        primary: &'n BTreeMap<String, Namespace>,
        namespaces: &'n [Namespace],
    ) -> impl Iterator<Item = (String, Labels)> + 'n {
        let covered = namespaces.iter().filter(|ns| self.rule.covers(ns));
        covered.map(|ns| {
            let name = ns.name_any();
            let desired = self.rule.desired(primary.get(&name));
            let labels = self.rule.after_sync(&desired, ns);
            (name, labels)
        })
    }
}

/// The valid stored kubeconfig of a cluster, or the check `what` failed for want of one.
fn stored_kubeconfig<'a>(
    facts: &'a ClusterFacts,
    what: &str,
    secret_name: &str,
    reattach: &str,
) -> Result<&'a Stored, CheckResult> {
    Err(match facts {
        ClusterFacts::Stored(stored) => return Ok(stored),
        ClusterFacts::SecretUnreadable(e) => {
            CheckResult::kube_failure(what, "cannot read the Secret on the primary", e)
        }
        ClusterFacts::SecretMissing => CheckResult::error(
            what,
            format!("Secret {MESH_NAMESPACE}/{secret_name} not found"),
            reattach,
        ),
        ClusterFacts::KeyMissing => CheckResult::error(
            what,
            format!("Secret {MESH_NAMESPACE}/{secret_name} has no {KUBECONFIG_KEY:?} key"),
            reattach,
        ),
        ClusterFacts::Invalid(e) => CheckResult::error(what, e.to_string(), e.hint()),
    })
}

/// One cluster's section.
pub fn judge(mesh: &Mesh<'_>, cluster: &MeshCluster, facts: &ClusterFacts) -> Section {
    let name = cluster.name_any();
    let mut checks = Vec::new();
    let section = |checks| Section {
        name: format!("cluster {name} ({})", cluster.spec.server),
        checks,
    };
    let reattach = format!("re-run `kubectl mesh attach` for {name} to store fresh credentials");
    checks.extend(reserved_name_result(&name));

    // The stored kubeconfig, checked against the rule of stored kubeconfigs.
    let what = "Secret holds a valid kubeconfig";
    let secret_name = &cluster.spec.secret_name;
    let (stored, remote) = match stored_kubeconfig(facts, what, secret_name, &reattach) {
        Ok(stored) => (&stored.kubeconfig, &stored.remote),
        Err(failed) => {
            checks.push(failed);
            return section(checks);
        }
    };
    // Held to what attach recorded, by the rule every client of a MeshCluster is.
    if let Err(mismatch) = mesh_core::recorded::check(stored, &cluster.spec) {
        checks.push(CheckResult::error(
            what,
            format!("{mismatch}: the webhook sends nothing with it"),
            reattach,
        ));
        return section(checks);
    }
    checks.push(CheckResult::ok(
        what,
        Some(format!("Secret {MESH_NAMESPACE}/{secret_name}")),
    ));

    // Reachable, with the stored credentials, through the webhook's own client code.
    let what = "remote answers with the stored credentials";
    let (whoami, reads) = match remote {
        RemoteFacts::NoClient(e) => {
            checks.push(CheckResult::error(what, error_chain(e), reattach));
            return section(checks);
        }
        RemoteFacts::Asked(asked) => (&asked.whoami, &asked.reads),
    };
    match whoami {
        Ok(r) => {
            let user = r
                .status
                .as_ref()
                .and_then(|s| s.user_info.as_ref())
                .and_then(|u| u.username.clone())
                .unwrap_or_else(|| "an unnamed user".into());
            checks.push(CheckResult::ok(what, Some(format!("as {user}"))));
        }
        // Authenticated but not allowed to ask who it is: reachable all the same.
        Err(e) if refused(e) => checks.push(CheckResult::ok(what, None)),
        Err(e) if e.is_forbidden() && expired_token(stored, mesh.now).is_some() => {
            let when = expired_token(stored, mesh.now).unwrap_or_default();
            checks.push(CheckResult::error(
                what,
                format!("the stored token {when}; {e}"),
                format!("`kubectl mesh rotate {name}` issues a new one"),
            ));
            return section(checks);
        }
        Err(e) => {
            let hint = if e.is_forbidden() {
                format!("the remote refused the token (revoked or expired); {reattach}")
            } else {
                format!(
                    "check that {} is reachable from here and from the webhook",
                    cluster.spec.server
                )
            };
            checks.push(CheckResult::error(what, e.to_string(), hint));
            return section(checks);
        }
    }
    let Some(reads) = reads else {
        return section(checks);
    };
    let namespaces = &reads.namespaces;
    let injectors = &reads.injectors;
    checks.push(identity_result(mesh, cluster, &reads.kube_system));
    checks.push(rights_result(
        &name,
        &reads.rights,
        &reattach,
        renews(stored),
    ));
    checks.push(token_result(stored, mesh.now, &name));
    checks.push(drift_result(mesh, &name, namespaces));
    checks.push(injection_result(mesh, &name, namespaces, injectors));
    if let ViewFacts::Read {
        rights: Some(rights),
        ..
    } = &reads.view
    {
        checks.push(match rights {
            Ok(answers) => rights::judge_view_answers(&name, answers),
            Err(e) => CheckResult::warning(
                "view credentials have exactly their rights",
                format!("not checked: {e}"),
                "",
            ),
        });
    }
    let context = reads.user_context.as_deref();
    checks.extend(pods_result(
        mesh,
        (&name, context),
        namespaces,
        injectors,
        &reads.view,
    ));
    checks.push(rights::scope_result(&reads.scope, &name));
    checks.push(guard_result(cluster, mesh.rule, &reads.guard));
    // Said when nothing above failed: a failure above is already what to fix first.
    if !checks.iter().any(|c| c.result == Outcome::Error) {
        checks.extend(webhook_result(cluster, mesh.now));
    }
    section(checks)
}

/// What the webhook last recorded of the cluster. Everything above is read from here, and the
/// webhook may not get as far: another network path (its pods, their HTTPS_PROXY and
/// NO_PROXY), or writes the remote refuses. `None` until it has recorded anything.
fn webhook_result(cluster: &MeshCluster, now: Timestamp) -> Option<CheckResult> {
    let what = "the webhook reaches and syncs it";
    let status = cluster.status.as_ref()?;
    let recorded = [CONDITION_REACHABLE, CONDITION_SYNCED].map(|t| status.condition(t));
    if recorded.iter().all(Option::is_none) {
        return None;
    }
    let Some(failed) = recorded.into_iter().flatten().find(|c| c.status != "True") else {
        let synced = match status.last_sync_time.as_deref() {
            None => "not synced yet".to_owned(),
            when => format!("last synced {} ago", age::since_rfc3339(when, now)),
        };
        return Some(CheckResult::ok(what, Some(synced)));
    };
    let name = cluster.name_any();
    let unanswered = [Failure::Unreachable, Failure::TimedOut].map(Failure::reason);
    let hint =
        if failed.type_ == CONDITION_REACHABLE && unanswered.contains(&failed.reason.as_str()) {
            format!(
                "this check reached it from here: check that {} is reachable from the webhook's \
             pods, through their HTTPS_PROXY and NO_PROXY if set",
                cluster.spec.server
            )
        } else {
            format!("`kubectl describe meshcluster {name}` shows the webhook's Events about it")
        };
    // An unfinished sync's Synced is Unknown, its message pointing at the error met.
    let message = match failed.status.as_str() {
        "Unknown" => status.last_error.as_deref().unwrap_or(&failed.message),
        _ => &failed.message,
    };
    // How long ago: the webhook retries on its own, so a cause just fixed may still show.
    let ago = age::since(failed.last_transition_time.0, now);
    Some(CheckResult::error(
        what,
        format!(
            "the webhook recorded {}={} ({}) {ago} ago: {message}",
            failed.type_, failed.status, failed.reason
        ),
        hint,
    ))
}

/// The remote's kube-system UID is the cluster's identity: it must be spec.clusterId, unique
/// across the mesh and not the primary's.
fn identity_result(
    mesh: &Mesh<'_>,
    cluster: &MeshCluster,
    kube_system: &RemoteResult<Namespace>,
) -> CheckResult {
    let what = "remote is the cluster that was attached";
    let id = &cluster.spec.cluster_id;
    let name = cluster.name_any();
    if mesh.primary_uid == Some(id.as_str()) {
        return CheckResult::error(
            what,
            format!("spec.clusterId {id} is the primary's own cluster ID"),
            format!("detach {name}: a cluster cannot be its own remote"),
        );
    }
    let twins: Vec<String> = mesh
        .clusters
        .iter()
        .filter(|c| c.spec.cluster_id == *id && c.name_any() != name)
        .map(ResourceExt::name_any)
        .collect();
    if !twins.is_empty() {
        return CheckResult::error(
            what,
            format!("cluster ID {id} is also attached as {}", twins.join(", ")),
            "detach the duplicate: one cluster must be attached once",
        );
    }
    match kube_system {
        // The webhook's rule: what it refuses to write through, check fails with its words.
        Ok(ns) => {
            match Identity::of(cluster).check(ns.metadata.uid.as_deref().unwrap_or("unknown")) {
                Ok(()) => CheckResult::ok(what, Some(format!("cluster ID {id}"))),
                Err(other) => CheckResult::error(what, other.to_string(), ""),
            }
        }
        Err(e) => CheckResult::warning(
            what,
            format!("cannot read namespace kube-system to compare: {e}"),
            "",
        ),
    }
}

/// The stored identity must have exactly the rights the sync account's ClusterRole grants.
fn rights_result(
    name: &str,
    answers: &RemoteResult<Vec<rights::Answer>>,
    reattach: &str,
    renews: bool,
) -> CheckResult {
    let what = "credentials have exactly the rights label sync needs";
    match answers {
        Ok(answers) => rights::judge_answers(what, name, answers, reattach, renews),
        Err(e) => CheckResult::warning(
            what,
            format!("cannot ask the remote: {e}"),
            "SelfSubjectAccessReview must be allowed to every user (system:basic-user)",
        ),
    }
}

/// Whether the webhook renews the stored token: a token with a lifetime, as its renewal
/// requires.
fn renews(stored: &Kubeconfig) -> bool {
    stored_token(stored)
        .and_then(|t| token::claims(&t))
        .is_some_and(|c| c.lifetime().is_some())
}

/// "expired 5m ago" when the stored token's `exp` has passed.
fn expired_token(stored: &Kubeconfig, now: Timestamp) -> Option<String> {
    match token_expiry(&stored_token(stored)?) {
        TokenExpiry::At(exp) if exp <= now => Some(age::until(exp, now)),
        _ => None,
    }
}

/// The stored token's expiry, read from its JWT claims (service-account tokens are JWTs; a
/// legacy token Secret's has no `exp` and never expires). A time-bound token is worth a
/// warning once less than a fifth of its lifetime is left (the webhook renews it well
/// before); one without `iat`, a week before it expires.
fn token_result(stored: &Kubeconfig, now: Timestamp, name: &str) -> CheckResult {
    let what = "credentials do not expire soon";
    let rotate = format!("`kubectl mesh rotate {name}` issues a new one");
    let Some(token) = stored_token(stored) else {
        return CheckResult::ok(what, Some("client certificate".into()));
    };
    match token_expiry(&token) {
        TokenExpiry::Never => CheckResult::ok(what, Some("long-lived token".into())),
        TokenExpiry::Unknown => {
            CheckResult::warning(what, "the token is not a JWT; its expiry is unknown", "")
        }
        TokenExpiry::At(exp) => {
            let claims = token::claims(&token).unwrap_or_default();
            let when = age::until(exp, now);
            let low = match claims.lifetime() {
                Some(_) => claims.standing(now) == Standing::Low,
                None => exp.duration_since(now) < EXPIRY_WARNING,
            };
            if claims.standing(now) == Standing::Expired {
                CheckResult::error(what, format!("the token {when}"), rotate)
            } else if low {
                let renewed = if claims.lifetime().is_some() {
                    " (less than a fifth of its lifetime left: is the webhook renewing it?)"
                } else {
                    ""
                };
                CheckResult::warning(
                    what,
                    format!("the token expires {when} ({exp:.0}){renewed}"),
                    rotate,
                )
            } else {
                CheckResult::ok(what, Some(format!("token expires {when}")))
            }
        }
    }
}

/// The remote's namespaces must carry the primary's labels: the plan a sync would carry
/// out must be empty.
fn drift_result(
    mesh: &Mesh<'_>,
    name: &str,
    namespaces: &RemoteResult<Vec<Namespace>>,
) -> CheckResult {
    let what = "remote namespaces carry the primary's labels";
    let primary = match mesh.primary_namespaces {
        Ok(p) => p,
        Err(ref e) => {
            return CheckResult::warning(what, format!("cannot read the primary: {e}"), "");
        }
    };
    let namespaces = match namespaces {
        Ok(n) => n,
        Err(e) => {
            return CheckResult::error(
                what,
                format!("cannot list the remote's namespaces: {e}"),
                "label sync cannot work until this does; see the rights check above",
            );
        }
    };
    // The very plan a sync would carry out.
    let plan = mesh.rule.plan(primary, namespaces);
    let mut missing = if plan.missing.is_empty() {
        String::new()
    } else {
        format!(
            "; {} absent there: {}",
            plan.missing.len(),
            few(&plan.missing)
        )
    };
    if !plan.out_of_scope.is_empty() {
        missing.push_str(&format!("; out of scope: {}", few(&plan.out_of_scope)));
    }
    if plan.changes.is_empty() {
        CheckResult::ok(
            what,
            Some(format!(
                "{} in sync{missing}",
                plural(plan.in_sync.len(), "namespace")
            )),
        )
    } else {
        let names: Vec<&str> = plan.changes.iter().map(|c| c.namespace.as_str()).collect();
        CheckResult::warning(
            what,
            format!(
                "{} differ from the primary: {}{missing}",
                plural(names.len(), "namespace"),
                few(&names)
            ),
            format!(
                "the webhook's reconciler corrects them at its next resync; \
                 `kubectl mesh sync --cluster {name}` does it now"
            ),
        )
    }
}

/// Every namespace of the remote whose labels, once synced, ask for sidecars must be served by
/// an Istio injector there; `istio-injection` and `istio.io/rev` set together are worth a
/// warning, as Istio ignores the revision.
fn injection_result(
    mesh: &Mesh<'_>,
    name: &str,
    namespaces: &RemoteResult<Vec<Namespace>>,
    injectors: &RemoteResult<Vec<MutatingWebhookConfiguration>>,
) -> CheckResult {
    let what = "namespaces asking for sidecars have an injector";
    let (Ok(primary), Ok(namespaces)) = (mesh.primary_namespaces.as_ref(), namespaces) else {
        // The drift check above says why the namespaces could not be read.
        return CheckResult::warning(what, "not checked: namespaces could not be read", "");
    };
    let injectors = match injectors {
        Ok(injectors) => injectors,
        Err(e) if e.is_forbidden() => {
            return CheckResult::warning(
                what,
                "not checked: the stored credentials may not read MutatingWebhookConfigurations",
                format!(
                    "attached by an older kubectl-mesh; re-run `kubectl mesh attach` for {name} \
                     to get injection readiness checks"
                ),
            );
        }
        Err(e) => {
            return CheckResult::warning(
                what,
                format!("not checked: cannot list MutatingWebhookConfigurations: {e}"),
                "",
            );
        }
    };
    let (mut served, mut unserved, mut conflicts) = (0, Vec::new(), Vec::new());
    for (ns_name, labels) in mesh.once_synced(primary, namespaces) {
        if let Some(conflict) = injection::requested(&labels).conflict {
            conflicts.push(format!("{ns_name} ({conflict})"));
        }
        match injection::readiness(&ns_name, &labels, injectors) {
            Readiness::NotRequested => {}
            Readiness::Served(_) => served += 1,
            Readiness::Unserved(requested) => unserved.push(format!("{ns_name} ({requested})")),
        }
    }
    if !unserved.is_empty() {
        let unserved = few(&unserved);
        return CheckResult::error(
            what,
            format!("no injector for {unserved}: their pods will not get sidecars"),
            format!(
                "install that Istio revision (or a revision tag of that name) on {name}, or \
                 change the label on the primary"
            ),
        );
    }
    if !conflicts.is_empty() {
        let conflicts = few(&conflicts);
        return CheckResult::warning(
            what,
            format!(
                "istio-injection and istio.io/rev both set on {conflicts}: Istio ignores \
                 istio.io/rev"
            ),
            "remove one of the two labels on the primary",
        );
    }
    CheckResult::ok(
        what,
        Some(format!("{} served", plural(served, "namespace"))),
    )
}

/// Pods whose sidecar contradicts their namespace's labels (once synced) keep that state
/// until they are recreated: worth a warning with the namespaces to restart. Only where the
/// cluster has view credentials (none: no check, as `status -o wide` says how to add them),
/// or where the caller was refused the Istio remote secret that may hold some.
fn pods_result(
    mesh: &Mesh<'_>,
    (name, context): (&str, Option<&str>),
    namespaces: &RemoteResult<Vec<Namespace>>,
    injectors: &RemoteResult<Vec<MutatingWebhookConfiguration>>,
    view: &ViewFacts,
) -> Option<CheckResult> {
    let what = "pods match their namespace's sidecar labels";
    let not_checked = |why: String, hint: String| {
        Some(CheckResult::warning(
            what,
            format!("not checked: {why}"),
            hint,
        ))
    };
    let store_fresh = || {
        format!("re-run `kubectl mesh attach` for {name} with --services-view to store fresh ones")
    };
    let (source, pods) = match view {
        ViewFacts::None { istio_unread: None } => return None,
        ViewFacts::None {
            istio_unread: Some(why),
        } => {
            return not_checked(
                crate::view::no_credentials(Some(why)),
                format!(
                    "run `{}`, or check as a caller who may read Secrets in {}",
                    crate::view::enable_command(name),
                    setup::ISTIO_NAMESPACE
                ),
            );
        }
        ViewFacts::Unusable { source, error } => {
            let why = format!("the {source} credentials cannot be used: {error}");
            return not_checked(why, store_fresh());
        }
        // Attaching again would not help: the error says what would.
        ViewFacts::Unreadable { source, error } => {
            let why = format!("the {source} credentials cannot be read: {error}");
            return not_checked(why, String::new());
        }
        ViewFacts::Read { source, pods, .. } => (source, pods),
    };
    let pods = match pods {
        Ok(pods) => pods,
        Err(e) => {
            let why = format!("cannot list pods with the {source} credentials: {e}");
            return not_checked(why, store_fresh());
        }
    };
    let (Ok(primary), Ok(namespaces)) = (mesh.primary_namespaces.as_ref(), namespaces) else {
        return not_checked("namespaces could not be read".to_owned(), String::new());
    };
    // Unknown injectors: the labels are trusted (the injection check says why they are not
    // known).
    let injectors = injectors.as_ref().ok().map(Vec::as_slice);
    let (mut checked, mut contrary, mut where_, mut to_restart) = (0, 0, Vec::new(), Vec::new());
    for (ns_name, labels) in mesh.once_synced(primary, namespaces) {
        let Some(here) = pods.get(&ns_name) else {
            continue;
        };
        let found = injection::contrary_pods(&ns_name, &labels, injectors, here).len();
        checked += here.len();
        if found > 0 {
            contrary += found;
            where_.push(format!("{ns_name} ({found})"));
            to_restart.push(ns_name);
        }
    }
    Some(if contrary > 0 {
        let to_restart: Vec<&str> = to_restart.iter().map(String::as_str).collect();
        CheckResult::warning(
            what,
            format!(
                "{} {} or {} istio-proxy contrary to the labels, in {}: they keep their old \
                 state until restarted",
                plural(contrary, "pod"),
                if contrary == 1 { "lacks" } else { "lack" },
                if contrary == 1 { "carries" } else { "carry" },
                where_.join(", ")
            ),
            restart_advice(name, context, &to_restart),
        )
    } else {
        CheckResult::ok(
            what,
            Some(format!(
                "{} checked with the {source} credentials",
                plural(checked, "pod")
            )),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::tests::jwt;
    use crate::mesh_state::RemoteError;
    use k8s_openapi::api::core::v1::Pod;
    use mesh_core::fixtures::{MetadataExt, labelled};
    use mesh_core::fixtures::{PodExt, istio_injector, pod};

    #[test]
    fn a_remote_that_answers_for_another_cluster_fails_with_the_webhooks_words() {
        let primary = BTreeMap::new();
        let rule = SyncRule::default();
        let clusters = [mesh_core::fixtures::mesh_cluster("east", "uid-of-east")];
        let mesh = Mesh {
            clusters: &clusters,
            ..mesh_of(&primary, &rule)
        };
        let judge = |uid: &str| {
            let kube_system = Ok(labelled("kube-system", &[]).with_uid(uid));
            identity_result(&mesh, &clusters[0], &kube_system)
        };
        assert_eq!(judge("uid-of-east").result, Outcome::Ok);
        let other = judge("uid-of-west");
        assert_eq!(other.result, Outcome::Error);
        assert_eq!(
            other.detail.as_deref(),
            Some(
                "secret cluster-east reaches another cluster than east (id uid-of-west, not \
                 uid-of-east): nothing is written there; restore the Secret, or attach east again"
            )
        );
    }

    /// A mesh of no other cluster, whose primary holds `primary`, at the epoch.
    fn mesh_of<'a>(primary: &'a BTreeMap<String, Namespace>, rule: &'a SyncRule) -> Mesh<'a> {
        Mesh {
            clusters: &[],
            primary_namespaces: Ok(primary),
            primary_uid: None,
            rule,
            now: Timestamp::UNIX_EPOCH,
        }
    }

    /// The stored kubeconfig is judged by the webhook's rule of what attach recorded: a
    /// trailing slash is the same server, another server is refused.
    #[test]
    fn a_stored_server_is_judged_as_the_webhook_judges_it() {
        let primary = BTreeMap::new();
        let rule = SyncRule::default();
        let cluster = mesh_core::fixtures::mesh_cluster("east", "uid-of-east");
        let first_check = |server: &str| {
            let facts = ClusterFacts::Stored(Box::new(Stored {
                kubeconfig: crate::kubeconfig::build_stored_kubeconfig("east", server, None, "t"),
                remote: RemoteFacts::NoClient(mesh_core::remote::Error::Yaml {
                    name: "cluster-east".into(),
                }),
            }));
            judge(&mesh_of(&primary, &rule), &cluster, &facts).checks[0].clone()
        };
        assert_eq!(first_check("https://127.0.0.1:1/").result, Outcome::Ok);
        let other = first_check("https://10.0.0.1:6443");
        assert_eq!(other.result, Outcome::Error);
        assert!(
            other.detail_mentions("not \"https://127.0.0.1:1\", the one attach recorded"),
            "{other:?}"
        );
        assert!(
            other.hint_mentions("re-run `kubectl mesh attach` for east"),
            "{other:?}"
        );
    }

    /// Reached from here, the cluster may still be out of the webhook's reach: its conditions
    /// say so.
    #[test]
    fn what_the_webhook_recorded_is_checked() {
        use crate::mesh_state::fixtures::{condition, with_status};
        use mesh_core::cluster::MeshClusterStatus;
        // The fixture's conditions changed on 2026-01-01.
        let now: Timestamp = "2026-03-01T00:05:00Z".parse().unwrap();
        let recorded = |conditions: Vec<_>| {
            let status = MeshClusterStatus {
                conditions,
                last_sync_time: Some("2026-03-01T00:00:00Z".into()),
                ..Default::default()
            };
            webhook_result(
                &with_status(
                    mesh_core::fixtures::mesh_cluster("east", "uid-of-east"),
                    status,
                ),
                now,
            )
        };
        let unrecorded = mesh_core::fixtures::mesh_cluster("east", "u");
        assert!(webhook_result(&unrecorded, now).is_none());
        assert!(recorded(vec![]).is_none());
        let ok = recorded(vec![
            condition(CONDITION_REACHABLE, "True"),
            condition(CONDITION_SYNCED, "True"),
        ])
        .unwrap();
        assert_eq!(
            (ok.result, ok.detail.as_deref()),
            (Outcome::Ok, Some("last synced 5m ago"))
        );
        let mut unreachable = condition(CONDITION_REACHABLE, "False");
        unreachable.reason = "Unreachable".into();
        unreachable.message = "connection refused".into();
        let failed = recorded(vec![unreachable, condition(CONDITION_SYNCED, "True")]).unwrap();
        assert_eq!(failed.result, Outcome::Error);
        assert_eq!(
            failed.detail.as_deref(),
            Some("the webhook recorded Reachable=False (Unreachable) 59d ago: connection refused")
        );
        assert!(failed.hint_mentions("HTTPS_PROXY"), "{failed:?}");
        let unsynced = recorded(vec![
            condition(CONDITION_REACHABLE, "True"),
            condition(CONDITION_SYNCED, "False"),
        ])
        .unwrap();
        assert_eq!(unsynced.result, Outcome::Error);
        assert!(
            unsynced.hint_mentions("kubectl describe meshcluster east"),
            "{unsynced:?}"
        );
        let unfinished = webhook_result(
            &with_status(
                mesh_core::fixtures::mesh_cluster("east", "uid-of-east"),
                MeshClusterStatus {
                    conditions: vec![condition(CONDITION_SYNCED, "Unknown")],
                    last_error: Some("namespaces \"shop\" is forbidden".into()),
                    ..Default::default()
                },
            ),
            now,
        );
        assert_eq!(
            unfinished.and_then(|r| r.detail).as_deref(),
            Some(
                "the webhook recorded Synced=Unknown (Test) 59d ago: namespaces \"shop\" is \
                 forbidden"
            )
        );
    }

    /// A cluster being detached gets one line, not the failures of credentials its detach
    /// removed.
    #[test]
    fn a_cluster_being_detached_is_said_so_and_not_judged() {
        let primary = BTreeMap::new();
        let east = mesh_core::fixtures::mesh_cluster("east", "uid-of-east");
        let leaving = crate::mesh_state::fixtures::being_detached(east, "example.com/backup");
        let facts = MeshFacts::Attached(super::super::facts::Attached {
            clusters: vec![leaving],
            remotes: vec![None],
            istio_secrets: vec![None],
            primary_namespaces: Ok(primary),
        });
        let sections = judge_mesh(&facts, &SyncRule::default(), Timestamp::UNIX_EPOCH);
        let checks = &sections[0].checks;
        assert_eq!(checks.len(), 1, "{checks:#?}");
        assert_eq!(checks[0].result, Outcome::Warning);
        assert!(
            checks[0]
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("held by finalizers (example.com/backup)")),
            "{checks:?}"
        );
    }

    #[test]
    fn pods_contrary_to_their_labels_warn_with_the_namespaces_to_restart() {
        let primary: BTreeMap<String, Namespace> = [(
            "shop".to_owned(),
            labelled("shop", &[("istio-injection", "enabled")]),
        )]
        .into();
        let rule = SyncRule::default();
        let mesh = mesh_of(&primary, &rule);
        let remote = Ok(vec![labelled("shop", &[]), labelled("web", &[])]);
        let injectors = Ok(vec![istio_injector("default")]);
        let read = |pods: Vec<(&str, Pod)>| {
            let mut by_ns: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
            for (n, p) in pods {
                by_ns.entry(n.to_owned()).or_default().push(p);
            }
            ViewFacts::Read {
                source: crate::view::Source::View,
                rights: None,
                pods: Ok(by_ns),
            }
        };
        let east = ("east", Some("admin@east"));
        let judge = |view| pods_result(&mesh, east, &remote, &injectors, &view);
        // shop asks for sidecars once synced; web for none.
        let r = judge(read(vec![
            ("shop", pod("a")),
            ("shop", pod("b").sidecar()),
            ("web", pod("c").sidecar()),
        ]))
        .unwrap();
        assert_eq!(r.result, Outcome::Warning);
        assert_eq!(
            r.detail.as_deref(),
            Some(
                "2 pods lack or carry istio-proxy contrary to the labels, in shop (1), web (1): \
                 they keep their old state until restarted"
            )
        );
        // Both namespaces, on east: the caller's current context is the primary's.
        assert!(
            r.hint_mentions(
                r#"`for ns in shop web; do kubectl --context admin@east rollout restart deployment -n "$ns"; done`"#
            ),
            "{r:?}"
        );
        let r = judge(read(vec![("shop", pod("b").sidecar())])).unwrap();
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (Outcome::Ok, Some("1 pod checked with the view credentials"))
        );
        assert!(judge(ViewFacts::None { istio_unread: None }).is_none());
        // No view Secret, and the Istio remote secret refused to the caller: its reader may
        // have read the pods, so the check says it did not.
        let r = judge(ViewFacts::None {
            istio_unread: Some(
                "cannot read Secret istio-system/istio-remote-secret-east: forbidden".into(),
            ),
        })
        .unwrap();
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (
                Outcome::Warning,
                Some(
                    "not checked: no view credentials, and cannot read Secret \
                     istio-system/istio-remote-secret-east: forbidden"
                )
            )
        );
        assert!(r.hint_mentions("--services-view"), "{r:?}");
        assert!(r.hint_mentions("Secrets in istio-system"), "{r:?}");
        // Credentials the caller may not read: attaching again would not help.
        let r = judge(ViewFacts::Unreadable {
            source: crate::view::Source::View,
            error: "cannot read Secret kubectl-mesh/cluster-east-view: forbidden".into(),
        })
        .unwrap();
        assert_eq!(r.result, Outcome::Warning);
        assert!(!r.hint_mentions("attach"), "{r:?}");
        let r = judge(ViewFacts::Unusable {
            source: crate::view::Source::View,
            error: "its token expired".into(),
        })
        .unwrap();
        assert!(r.hint_mentions("--services-view"), "{r:?}");
    }

    /// The injection check of a remote holding `remote` namespaces whose primary twins carry
    /// `primary`'s labels.
    fn injection(
        primary: &[(&str, &[(&str, &str)])],
        remote: &[&str],
        injectors: RemoteResult<Vec<MutatingWebhookConfiguration>>,
    ) -> CheckResult {
        let primary: BTreeMap<String, Namespace> = primary
            .iter()
            .map(|(name, labels)| (name.to_string(), labelled(name, labels)))
            .collect();
        let rule = SyncRule::default();
        let mesh = mesh_of(&primary, &rule);
        let remote = Ok(remote.iter().map(|name| labelled(name, &[])).collect());
        injection_result(&mesh, "east", &remote, &injectors)
    }

    #[test]
    fn injection_fails_where_no_injector_serves_the_labels() {
        let canary: &[(&str, &str)] = &[("istio.io/rev", "canary")];
        let primary = [
            ("shop", canary),
            ("web", &[("istio-injection", "enabled")][..]),
        ];
        let both = Ok(vec![istio_injector("default"), istio_injector("canary")]);
        let r = injection(&primary, &["shop", "web"], both);
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (Outcome::Ok, Some("2 namespaces served"))
        );
        let r = injection(
            &primary,
            &["shop", "web"],
            Ok(vec![istio_injector("default")]),
        );
        assert_eq!(r.result, Outcome::Error);
        assert_eq!(
            r.detail.as_deref(),
            Some("no injector for shop (revision canary): their pods will not get sidecars")
        );
        // A namespace absent on the remote has no pods there to inject.
        let r = injection(&primary, &["web"], Ok(vec![istio_injector("default")]));
        assert_eq!(r.result, Outcome::Ok);
    }

    #[test]
    fn a_long_list_of_unserved_namespaces_stays_one_short_line() {
        let canary: &[(&str, &str)] = &[("istio.io/rev", "canary")];
        let names: Vec<String> = (0..40).map(|i| format!("ns-{i:02}")).collect();
        let primary: Vec<(&str, &[(&str, &str)])> =
            names.iter().map(|n| (n.as_str(), canary)).collect();
        let remote: Vec<&str> = names.iter().map(String::as_str).collect();
        let r = injection(&primary, &remote, Ok(vec![istio_injector("default")]));
        assert_eq!(
            r.detail.as_deref(),
            Some(
                "no injector for ns-00 (revision canary), ns-01 (revision canary), ns-02 \
                 (revision canary), ns-03 (revision canary), ns-04 (revision canary) and 35 \
                 more: their pods will not get sidecars"
            )
        );
    }

    #[test]
    fn injection_warns_on_conflicting_labels_and_unreadable_injectors() {
        let both: &[(&str, &str)] = &[("istio-injection", "enabled"), ("istio.io/rev", "canary")];
        let r = injection(
            &[("shop", both)],
            &["shop"],
            Ok(vec![istio_injector("default")]),
        );
        assert_eq!(r.result, Outcome::Warning);
        assert_eq!(
            r.detail.as_deref(),
            Some(
                "istio-injection and istio.io/rev both set on shop (istio-injection=enabled \
                 overrides istio.io/rev=canary): Istio ignores istio.io/rev"
            )
        );
        let status = kube::core::Status::failure("forbidden", "Forbidden").with_code(403);
        let forbidden = Err(RemoteError::Call(kube::Error::Api(Box::new(status))));
        let r = injection(&[("shop", both)], &["shop"], forbidden);
        assert_eq!(r.result, Outcome::Warning);
        assert!(
            r.hint_mentions("re-run `kubectl mesh attach` for east"),
            "{r:?}"
        );
    }

    #[test]
    fn a_cluster_named_like_the_primary_warns() {
        let warned = reserved_name_result("primary").expect("a warning");
        assert_eq!(warned.result, Outcome::Warning);
        let hint = warned.hint.unwrap_or_default();
        assert!(
            hint.contains("detach primary") && hint.contains("--name"),
            "{hint}"
        );
        assert!(reserved_name_result("east").is_none());
    }

    #[test]
    fn token_check_levels() {
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let stored = |token: &str| {
            crate::kubeconfig::build_stored_kubeconfig("east", "https://1.2.3.4", None, token)
        };
        let at = |s: i64| jwt(serde_json::json!({"exp": now.as_second() + s}));
        let r = token_result(&stored(&at(3600)), now, "east");
        assert_eq!(r.result, Outcome::Warning);
        assert_eq!(
            r.detail.as_deref(),
            Some("the token expires in 60m (2026-03-01T01:00:00Z)")
        );
        assert!(r.hint_mentions("kubectl mesh rotate east"), "{r:?}");
        let r = token_result(&stored(&at(-60)), now, "east");
        assert_eq!(r.result, Outcome::Error);
        assert!(r.hint_mentions("kubectl mesh rotate east"), "{r:?}");
        assert_eq!(
            token_result(&stored(&at(90 * 86_400)), now, "x").result,
            Outcome::Ok
        );
        // A time-bound token of a day: fine with 5h left, a warning below a fifth (4.8h).
        let bound = |left: i64| {
            jwt(serde_json::json!({
                "iat": now.as_second() + left - 86_400,
                "exp": now.as_second() + left,
            }))
        };
        assert_eq!(
            token_result(&stored(&bound(5 * 3600)), now, "x").result,
            Outcome::Ok
        );
        assert_eq!(
            token_result(&stored(&bound(4 * 3600)), now, "x").result,
            Outcome::Warning
        );
        assert_eq!(
            token_result(&stored(&bound(-1)), now, "x").result,
            Outcome::Error
        );
        assert_eq!(
            expired_token(&stored(&bound(-1)), now).as_deref(),
            Some("expired 1s ago")
        );
        assert_eq!(expired_token(&stored(&bound(60)), now), None);
        let r = token_result(&stored(&jwt(serde_json::json!({}))), now, "x");
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (Outcome::Ok, Some("long-lived token"))
        );
    }
}
