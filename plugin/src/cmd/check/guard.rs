//! The remote guard's check: what the remote has against what the MeshCluster declares
//! (`spec.remoteGuard`, `spec.primaryName`, `spec.scope`).

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicySpec,
};
use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use mesh_core::cluster::{self, MeshCluster, RemoteGuard};
use mesh_core::labels::SyncRule;

use super::facts::{FoundGuard, GuardFacts, WithContext};
use super::report::{CheckResult, Outcome};
use crate::remote_setup as setup;

/// The guard mode a policy and binding amount to for the cluster `name`, or why there is no
/// guard (nothing, or a policy nothing binds, guards nothing).
fn guard_state(
    name: &str,
    policy: Option<&ValidatingAdmissionPolicy>,
    binding: Option<&ValidatingAdmissionPolicyBinding>,
) -> std::result::Result<RemoteGuard, String> {
    let (policy, binding) = match (policy, binding) {
        (None, None) => return Err("neither its policy nor its binding exists".into()),
        (None, Some(_)) => {
            return Err(format!(
                "ValidatingAdmissionPolicy {} not found (only its binding is there)",
                setup::GUARD
            ));
        }
        (Some(_), None) => {
            return Err(format!(
                "ValidatingAdmissionPolicyBinding {} not found (the policy is there, unbound)",
                setup::GUARD
            ));
        }
        (Some(p), Some(b)) => (p, b),
    };
    if !setup::is_ours(&policy.metadata, name) {
        return Err(format!(
            "ValidatingAdmissionPolicy {} was not installed for cluster {name}{}",
            setup::GUARD,
            setup::owner_cluster(&policy.metadata)
                .map(|c| format!(" (it is cluster {c}'s)"))
                .unwrap_or_default()
        ));
    }
    let spec = binding.spec.as_ref();
    let bound = spec.and_then(|s| s.policy_name.as_deref());
    if bound != Some(policy.name_any().as_str()) {
        return Err(format!(
            "the binding binds policy {}, not {}",
            bound.unwrap_or("(none)"),
            setup::GUARD
        ));
    }
    setup::bound_mode(binding).ok_or_else(|| {
        let actions = spec
            .and_then(|s| s.validation_actions.clone())
            .unwrap_or_default();
        format!(
            "the binding's validationActions are [{}], neither Warn nor Deny",
            actions.join(", ")
        )
    })
}

/// Compares what is on the remote with what the MeshCluster declares: the mode
/// (spec.remoteGuard), the primary the guard's message names (spec.primaryName), and what it
/// guards: `rule` (the installed one within spec.scope) and the scope's selector.
pub fn judge_guard(
    what: &str,
    cluster: &MeshCluster,
    rule: &SyncRule,
    found: &FoundGuard,
) -> CheckResult {
    let name = cluster.name_any();
    let wanted = cluster.spec.remote_guard;
    let primary = cluster.spec.primary_name.as_deref();
    let fix = format!(
        "re-run `kubectl mesh attach` for {name} with --remote-guard {}{} to install the guard \
         it declares",
        format!("{wanted:?}").to_lowercase(),
        primary
            .map(|p| format!(" --primary-name {p}"))
            .unwrap_or_default()
    );
    let state = guard_state(&name, found.policy.as_ref(), found.binding.as_ref());
    let mode = state.clone().unwrap_or(RemoteGuard::Off);
    if mode != wanted {
        let why = match (&state, wanted) {
            (Err(why), RemoteGuard::Warn | RemoteGuard::Deny) => format!(": {why}"),
            _ => String::new(),
        };
        return CheckResult::error(
            what,
            format!("spec.remoteGuard is {wanted:?} but the remote's guard is {mode:?}{why}"),
            fix,
        );
    }
    if wanted == RemoteGuard::Off {
        return CheckResult::ok(what, Some(format!("{wanted:?}")));
    }
    if let Some(primary) = primary {
        let named = found.policy.as_ref().and_then(setup::guard_primary_name);
        if named.as_deref() != Some(primary) {
            let found = match named {
                Some(other) => format!("names primary {other}"),
                None => "is not the message attach writes".to_owned(),
            };
            return CheckResult::error(
                what,
                format!(
                    "spec.primaryName is {primary} but the guard's message {found}: people \
                     editing labels on the remote are sent to the wrong cluster"
                ),
                fix,
            );
        }
    }
    let stale = stale_parts(cluster, rule, found.policy.as_ref());
    if !stale.is_empty() {
        return CheckResult::warning(
            what,
            format!(
                "the guard was written for another rule or scope: its {} differ from the \
                 installed rule's within spec.scope",
                stale.join(", ")
            ),
            // Attach writes the guard for the installed rule and the recorded scope.
            fix,
        );
    }
    CheckResult::ok(what, Some(format!("{wanted:?}")))
}

/// What of the guard's matching differs from the guard attach and `scope` would write now
/// (a rule changed by a later install, or a scope changed with `kubectl patch`, leaves the
/// guard as it was): its managed labels, excluded namespaces or namespace selector.
fn stale_parts(
    cluster: &MeshCluster,
    rule: &SyncRule,
    policy: Option<&ValidatingAdmissionPolicy>,
) -> Vec<&'static str> {
    let Some(found) = policy.and_then(|p| p.spec.as_ref()) else {
        return Vec::new();
    };
    let wanted = setup::Guard::new(cluster.spec.remote_guard, "", "")
        .with_rule(rule)
        .with_scope(&cluster.spec.scope);
    let wanted = setup::guard_policy(&cluster.name_any(), &wanted)
        .spec
        .unwrap_or_default();
    let (found, wanted) = (matching(found), matching(&wanted));
    [
        ("managed labels", found.keys != wanted.keys),
        ("excluded namespaces", found.excluded != wanted.excluded),
        ("namespace selector", found.selector != wanted.selector),
    ]
    .into_iter()
    .filter_map(|(part, differs)| differs.then_some(part))
    .collect()
}

/// What a guard's matching amounts to.
#[derive(PartialEq)]
struct Matching {
    /// The label keys its variable lists, in whatever order they were written.
    keys: BTreeSet<String>,
    /// The names its match conditions list (the excluded namespaces, the sync account's user).
    excluded: BTreeSet<String>,
    /// Its namespace selector, when it selects less than every namespace.
    selector: Option<LabelSelector>,
}

fn matching(spec: &ValidatingAdmissionPolicySpec) -> Matching {
    let variables = spec
        .variables
        .iter()
        .flatten()
        .map(|v| v.expression.as_str());
    let conditions = (spec.match_conditions.iter().flatten()).map(|c| c.expression.as_str());
    Matching {
        keys: literals(variables),
        excluded: literals(conditions),
        selector: (spec.match_constraints.as_ref())
            .and_then(|m| m.namespace_selector.clone())
            .filter(|s| !cluster::selects_all(s)),
    }
}

/// The string literals of CEL `expressions` (as [`crate::cel::string`] writes them).
fn literals<'a>(expressions: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for expression in expressions {
        let mut rest = expression;
        while let Some(start) = rest.find('\'') {
            let Some((literal, after)) = crate::remote_policies::read_cel_str(&rest[start..])
            else {
                break;
            };
            rest = after;
            found.insert(literal);
        }
    }
    found
}

/// The remote guard must be what spec.remoteGuard and spec.primaryName say. It is read with
/// the stored credentials, which may `get` the guard's two objects by name. A cluster
/// attached by an older kubectl-mesh has credentials that may not: then it is judged as read
/// with the user's own kubeconfig, through the context attach recorded (as detach does).
pub(super) fn guard_result(
    cluster: &MeshCluster,
    rule: &SyncRule,
    guard: &GuardFacts,
) -> CheckResult {
    let what = "remote guard matches spec.remoteGuard";
    let stored_err = match &guard.stored {
        Ok(found) => return judge_guard(what, cluster, rule, found),
        Err(e) => e,
    };
    let stored = if stored_err.is_forbidden() {
        "the stored credentials may not read the guard".to_owned()
    } else {
        format!("the guard cannot be read with the stored credentials ({stored_err})")
    };
    let context = setup::remote_context(cluster);
    let WithContext::Read(with_context) = &guard.with_context else {
        let through = match (context, &guard.with_context) {
            (Some(c), WithContext::Elsewhere(id)) => format!(
                "your context {c} reaches another cluster (id {id}, not {})",
                cluster.spec.cluster_id
            ),
            (Some(c), _) => format!("your kubeconfig has no context {c}"),
            (None, _) => "attach recorded no remote context".to_owned(),
        };
        return CheckResult::warning(
            what,
            format!("not verified: {stored} and {through}"),
            format!(
                "re-run `kubectl mesh attach` for {} to let the stored credentials read it, \
                 run check with a kubeconfig that also holds the remote's context, or look on \
                 the remote: `kubectl{} get validatingadmissionpolicybinding {} -o yaml`",
                cluster.name_any(),
                context
                    .map(|c| format!(" --context {c}"))
                    .unwrap_or_default(),
                setup::GUARD
            ),
        );
    };
    let context = context.unwrap_or_default();
    match with_context.as_ref() {
        Ok(found) => {
            let mut result = judge_guard(what, cluster, rule, found);
            let note = format!("read with context {context}: {stored}");
            match &mut result.detail {
                Some(detail) if result.result == Outcome::Ok => {
                    *detail = format!("{detail}; {note}");
                }
                Some(detail) => detail.push_str(&format!(" ({note})")),
                None => result.detail = Some(note),
            }
            result
        }
        Err(e) => CheckResult::warning(
            what,
            format!("not verified: {stored}, and with context {context}: {e}"),
            "",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A literal whose escapes are not those [`crate::cel::string`] writes (valid CEL, in a
    /// guard edited by hand) was stepped over by the length it would have written: check then
    /// sliced inside a character, and panicked for the whole mesh.
    #[test]
    fn literals_with_any_escapes_are_read_whole() {
        let condition = r"object.metadata.name in ['\a\bé', 'kube-system'] && 'it\'s'";
        let found = literals([condition].into_iter());
        let expected = ["abé", "it's", "kube-system"].map(str::to_owned);
        assert_eq!(found, BTreeSet::from(expected));
    }

    fn attached(guard: RemoteGuard, primary: Option<&str>) -> MeshCluster {
        let mut mc = setup::mesh_cluster(&setup::ClusterRecord {
            name: "east".into(),
            cluster_id: "id".into(),
            server: "https://e".into(),
            ca_fingerprint: None,
            tls_server_name: None,
            guard,
            primary_name: primary.unwrap_or_default().into(),
            remote_namespace_created: true,
            remote_context: "east".into(),
            scope: Default::default(),
        });
        mc.spec.primary_name = primary.map(str::to_owned);
        mc
    }

    fn installed(guard: RemoteGuard, primary: &str) -> FoundGuard {
        let g = setup::Guard::new(guard, primary, "admin@main");
        FoundGuard {
            policy: Some(setup::guard_policy("east", &g)),
            binding: Some(setup::guard_binding("east", &g)),
        }
    }

    /// `r` warns that the guard's `part` is not the installed rule's.
    fn assert_stale(r: &CheckResult, part: &str) {
        assert_eq!(r.result, Outcome::Warning, "{r:?}");
        let detail = r.detail.as_deref().unwrap_or_default();
        assert!(detail.contains(&format!("its {part} differ")), "{r:?}");
    }

    #[test]
    fn guard_must_follow_the_scope() {
        let mut scoped = attached(RemoteGuard::Warn, Some("main"));
        scoped.spec.scope.exclude_namespaces = vec!["gw".into()];
        let rule = SyncRule::default().within(&scoped.spec.scope).unwrap();
        let r = judge_guard(
            "guard",
            &scoped,
            &rule,
            &installed(RemoteGuard::Warn, "main"),
        );
        assert_stale(&r, "excluded namespaces");

        let g = setup::Guard::new(RemoteGuard::Warn, "main", "admin@main")
            .with_rule(&rule)
            .with_scope(&scoped.spec.scope);
        let following = FoundGuard {
            policy: Some(setup::guard_policy("east", &g)),
            binding: Some(setup::guard_binding("east", &g)),
        };
        let r = judge_guard("guard", &scoped, &rule, &following);
        assert_eq!(r.result, Outcome::Ok, "{r:?}");
        // The scope back to none: the guard still leaves gw alone, which is now synced.
        let unscoped = attached(RemoteGuard::Warn, Some("main"));
        let r = judge_guard("guard", &unscoped, &SyncRule::default(), &following);
        assert_eq!(r.result, Outcome::Warning, "{r:?}");
    }

    /// A rule changed by a later install: the guard written for the old one watches labels
    /// the webhook no longer syncs, and misses those it does.
    #[test]
    fn guard_must_follow_the_installed_rule() {
        let mc = attached(RemoteGuard::Warn, Some("main"));
        let found = installed(RemoteGuard::Warn, "main");
        let default = SyncRule::default();
        assert_eq!(
            judge_guard("guard", &mc, &default, &found).result,
            Outcome::Ok
        );
        let narrower = SyncRule::new(
            ["istio.io/rev".to_owned()],
            default.excluded_namespaces().map(str::to_owned),
        );
        let r = judge_guard("guard", &mc, &narrower, &found);
        assert_stale(&r, "managed labels");
        assert!(r.hint_mentions("`kubectl mesh attach` for east"), "{r:?}");
    }

    #[test]
    fn guard_must_match_mode_and_primary_name() {
        let rule = SyncRule::default();
        let judge = |mc: &MeshCluster, found: &FoundGuard| judge_guard("guard", mc, &rule, found);
        let warn = attached(RemoteGuard::Warn, Some("main"));
        let r = judge(&warn, &installed(RemoteGuard::Warn, "main"));
        assert_eq!((r.result, r.detail.as_deref()), (Outcome::Ok, Some("Warn")));

        // The primary's name in the message must be spec.primaryName.
        let r = judge(&warn, &installed(RemoteGuard::Warn, "elsewhere"));
        assert_eq!(r.result, Outcome::Error);
        assert!(
            r.detail.as_deref().unwrap().starts_with(
                "spec.primaryName is main but the guard's message names primary elsewhere"
            ),
            "{r:?}"
        );
        assert_eq!(
            r.hint.as_deref(),
            Some(
                "re-run `kubectl mesh attach` for east with --remote-guard warn --primary-name \
                 main to install the guard it declares"
            )
        );
        // A MeshCluster of an older attach does not say: any name passes.
        let unnamed = attached(RemoteGuard::Warn, None);
        assert_eq!(
            judge(&unnamed, &installed(RemoteGuard::Warn, "x")).result,
            Outcome::Ok
        );

        // Deny declared, the binding deleted.
        let deny = attached(RemoteGuard::Deny, Some("main"));
        let mut found = installed(RemoteGuard::Deny, "main");
        assert_eq!(judge(&deny, &found).result, Outcome::Ok);
        found.binding = None;
        let r = judge(&deny, &found);
        assert_eq!(r.result, Outcome::Error);
        assert_eq!(
            r.detail.as_deref(),
            Some(
                "spec.remoteGuard is Deny but the remote's guard is Off: \
                 ValidatingAdmissionPolicyBinding kubectl-mesh-guard not found (the policy is \
                 there, unbound)"
            )
        );
        let r = judge(&deny, &installed(RemoteGuard::Warn, "main"));
        assert_eq!(
            r.detail.as_deref(),
            Some("spec.remoteGuard is Deny but the remote's guard is Warn")
        );
        // Another cluster's guard is not this one's.
        let g = setup::Guard::new(RemoteGuard::Deny, "main", "admin@main");
        let foreign = FoundGuard {
            policy: Some(setup::guard_policy("west", &g)),
            binding: Some(setup::guard_binding("west", &g)),
        };
        let r = judge(&deny, &foreign);
        assert!(
            r.detail
                .as_deref()
                .unwrap()
                .contains("(it is cluster west's)"),
            "{r:?}"
        );

        // Off: absent is right, present is not.
        let off = attached(RemoteGuard::Off, Some("main"));
        let r = judge(&off, &FoundGuard::default());
        assert_eq!((r.result, r.detail.as_deref()), (Outcome::Ok, Some("Off")));
        let r = judge(&off, &installed(RemoteGuard::Warn, "main"));
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (
                Outcome::Error,
                Some("spec.remoteGuard is Off but the remote's guard is Warn")
            )
        );
        assert!(r.hint_mentions("--remote-guard off"), "{r:?}");
    }
}
