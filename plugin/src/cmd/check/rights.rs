//! The rights of a remote's stored identity: exactly what the ClusterRole attach creates
//! grants ([`setup::sync_rights`]), nothing more; and, within them, only the changes the sync
//! scope policy lets through ([`scope_result`]).

use mesh_core::MESH_NAMESPACE;

use super::report::CheckResult;
use crate::{
    access::Need,
    mesh_state::RemoteResult,
    remote_setup as setup,
    sync_scope::{Found, Scope},
};

/// Whether the remote allows one verb of a [`Need`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// What was asked: a need of one verb.
    pub asked: Need,
    /// Whether it is allowed.
    pub allowed: bool,
}

const POLICIES: &str = setup::GUARD_RESOURCES[0];
const BINDINGS: &str = setup::GUARD_RESOURCES[1];
const ADMISSION: &str = setup::ADMISSION_GROUP;
const INJECTORS: &str = setup::INJECTOR_RESOURCE;
/// A name that is not the guard's, to ask whether other admission policies can be read.
const OTHER_POLICY: &str = "not-kubectl-mesh-guard";

/// What the stored identity should not have: more than namespaces, other admission policies
/// than its own guard, or the right to change the guard or a webhook. One verb each, in the
/// order the report lists what it finds.
pub fn excessive_rights() -> Vec<Need> {
    let policy = |verb| Need::cluster(ADMISSION, POLICIES, &[verb]);
    let binding = |verb| Need::cluster(ADMISSION, BINDINGS, &[verb]);
    vec![
        Need::cluster("*", "*", &["*"]),
        Need::cluster("", "secrets", &["list"]),
        Need::cluster("", "namespaces", &["delete"]),
        policy("list"),
        binding("list"),
        policy("get").named(OTHER_POLICY),
        binding("get").named(OTHER_POLICY),
        policy("patch").named(setup::GUARD),
        binding("patch").named(setup::GUARD),
        policy("delete").named(setup::GUARD),
        binding("delete").named(setup::GUARD),
        Need::cluster(ADMISSION, INJECTORS, &["patch"]),
    ]
}

/// Needs of one verb each.
fn each_verb(needs: Vec<Need>) -> Vec<Need> {
    needs.iter().flat_map(Need::each_verb).collect()
}

/// What the sync account needs, one verb each: label sync's, the guard read's, then the
/// injector read's.
fn needed() -> Vec<Need> {
    each_verb(setup::sync_rights())
}

/// The right a time-bound token (`attach --token-ttl`) is renewed with: the sync account
/// requesting its own token ([`setup::token_renewal_role`]).
fn renewal() -> Need {
    Need::token_request().named(setup::SYNC_ACCOUNT)
}

/// What the rights check asks the remote, one verb each: what the sync account needs, what
/// it should not have, then the renewal right, needed by a time-bound token only.
pub fn asked() -> Vec<Need> {
    let mut asked = needed();
    asked.extend(excessive_rights());
    asked.push(renewal());
    asked
}

/// `namespaces get`, `validatingadmissionpolicies get kubectl-mesh-guard`.
fn phrase(need: &Need) -> String {
    let verbs = need.verbs.join(", ");
    match need.name {
        Some(setup::GUARD) => format!("{} {verbs} {}", need.resource, setup::GUARD),
        Some(_) => format!("{} {verbs} (other than {})", need.resource, setup::GUARD),
        None => format!("{} {verbs}", need.resource),
    }
}

/// Judges the remote's answers: needed rights denied, other rights granted. `renews`: the
/// stored token is time-bound, and the webhook renews it with [`renewal`]; the right to, when
/// it does not, is left unjudged (attach grants it with --token-ttl alone).
pub fn judge_answers(
    what: &str,
    name: &str,
    answers: &[Answer],
    reattach: &str,
    renews: bool,
) -> CheckResult {
    let needed = needed();
    let (mut missing, mut excess) = (Vec::new(), Vec::new());
    for answer in answers {
        if answer.asked == renewal() {
            if renews && !answer.allowed {
                return CheckResult::error(
                    what,
                    format!(
                        "not allowed: {} create {}: the webhook cannot renew the time-bound token, \
                         which stops working when it expires",
                        answer.asked.resource,
                        setup::SYNC_ACCOUNT
                    ),
                    format!(
                        "the Role or RoleBinding {} on the remote was changed or deleted; \
                         {reattach} with --token-ttl <DURATION> (the stored token's lifetime, \
                         to keep it)",
                        setup::TOKEN_RENEWAL
                    ),
                );
            }
            continue;
        }
        match (needed.contains(&answer.asked), answer.allowed) {
            (true, false) => missing.push(answer.asked.clone()),
            (false, true) => excess.push(answer.asked.clone()),
            _ => {}
        }
    }
    judge_rights(what, name, &missing, &excess, reattach)
}

/// What the rights check concludes from the answers: `missing` needed rights (label sync's,
/// the guard read's and the injector read's), `excess` rights granted beyond them. Only label
/// sync's are essential; clusters attached by an older kubectl-mesh lack the others.
pub fn judge_rights(
    what: &str,
    name: &str,
    missing: &[Need],
    excess: &[Need],
    reattach: &str,
) -> CheckResult {
    let phrases = |needs: &[Need]| needs.iter().map(phrase).collect::<Vec<_>>().join(", ");
    let label_sync = each_verb(setup::label_sync_rights());
    if missing.iter().any(|m| label_sync.contains(m)) {
        return CheckResult::error(
            what,
            format!("not allowed: {}", phrases(missing)),
            format!(
                "the remote's ClusterRole or ClusterRoleBinding for kubectl-mesh was changed or \
                 deleted; {reattach}"
            ),
        );
    }
    if !missing.is_empty() {
        let lacks = |needs: Vec<Need>| {
            let needs = each_verb(needs);
            missing.iter().any(|m| needs.contains(m))
        };
        let mut without = Vec::new();
        if lacks(setup::guard_read_rights()) {
            without.push("check reads the guard with your context of the remote instead");
        }
        if lacks(setup::injector_read_rights()) {
            without.push("whether an injector acts on the synced labels is not checked");
        }
        return CheckResult::warning(
            what,
            format!(
                "not allowed: {}; label sync works, but {}",
                phrases(missing),
                without.join(", and ")
            ),
            format!(
                "attached by an older kubectl-mesh, or the ClusterRole {} was changed; re-run \
                 `kubectl mesh attach` for {name} to give the stored credentials these rights",
                setup::SYNC_ACCOUNT
            ),
        );
    }
    if !excess.is_empty() {
        let found = if excess.iter().any(|n| n.verbs.contains(&"*")) {
            "everything (cluster-admin)".to_owned()
        } else {
            phrases(excess)
        };
        return CheckResult::warning(
            what,
            format!("over-privileged: also allowed {found}"),
            format!(
                "the stored credentials need only namespaces get, list, watch and patch, get \
                 of the guard {} and read of {INJECTORS}; remove the extra bindings of the \
                 service account on the remote",
                setup::GUARD
            ),
        );
    }
    CheckResult::ok(
        what,
        Some(format!(
            "namespaces get, list, watch, patch; guard {} get; {INJECTORS} get, list, watch",
            setup::GUARD
        )),
    )
}

/// What the view identity should not have: anything but reading services, endpointslices and
/// pods. One verb each.
pub fn view_excessive_rights() -> Vec<Need> {
    vec![
        Need::cluster("*", "*", &["*"]),
        Need::cluster("", "secrets", &["list"]),
        Need::cluster("", "configmaps", &["list"]),
        Need::cluster("", "namespaces", &["patch"]),
        Need::cluster("", "pods", &["create"]),
        Need::cluster("", "pods", &["delete"]),
        Need::cluster("", "pods/exec", &["create"]),
        Need::cluster("", "services", &["patch"]),
    ]
}

/// What the view check asks the remote, one verb each: [`setup::view_rights`], then
/// [`view_excessive_rights`].
pub fn view_asked() -> Vec<Need> {
    let mut asked = each_verb(setup::view_rights());
    asked.extend(view_excessive_rights());
    asked
}

/// Judges the view identity's answers: exactly [`setup::view_rights`].
pub fn judge_view_answers(name: &str, answers: &[Answer]) -> CheckResult {
    let what = "view credentials have exactly their rights";
    let needed = each_verb(setup::view_rights());
    let (mut missing, mut excess) = (Vec::new(), Vec::new());
    for answer in answers {
        match (needed.contains(&answer.asked), answer.allowed) {
            (true, false) => missing.push(phrase(&answer.asked)),
            (false, true) => excess.push(phrase(&answer.asked)),
            _ => {}
        }
    }
    let reattach = format!(
        "re-run `kubectl mesh attach` for {name} with --services-view: it restores ClusterRole \
         {}",
        setup::VIEW_ACCOUNT
    );
    if !missing.is_empty() {
        return CheckResult::error(
            what,
            format!("not allowed: {}", missing.join(", ")),
            reattach,
        );
    }
    if !excess.is_empty() {
        return CheckResult::warning(
            what,
            format!("over-privileged: also allowed {}", excess.join(", ")),
            format!(
                "the view credentials need only get, list, watch of services, endpointslices \
                 and pods; remove the extra bindings of ServiceAccount {}/{} on {name}",
                mesh_core::MESH_NAMESPACE,
                setup::VIEW_ACCOUNT
            ),
        );
    }
    CheckResult::ok(
        what,
        Some("services, pods, endpointslices get, list, watch".into()),
    )
}

/// The stored identity may patch every namespace; the remote's sync scope policy must refuse
/// it anything but the managed labels of the installed rule, on the namespaces the cluster's
/// scope covers. Asked by trying ([`crate::sync_scope::probe`]): dry-run edits it must refuse, a
/// dry-run change of the managed labels it must let through, and one outside the scope it
/// must refuse.
pub fn scope_result(scope: &RemoteResult<Found>, name: &str) -> CheckResult {
    let what = "credentials may change only the managed labels";
    let fix = format!(
        "re-run `kubectl mesh attach` for {name}: it installs ValidatingAdmissionPolicy {} \
         and its binding for the installed rule and the cluster's scope",
        setup::SYNC_SCOPE
    );
    match scope {
        Ok(Found::Scope(Scope::Enforced)) => CheckResult::ok(
            what,
            Some(format!(
                "ValidatingAdmissionPolicy {} enforced",
                setup::SYNC_SCOPE
            )),
        ),
        Ok(Found::Scope(Scope::NotEnforced)) => CheckResult::error(
            what,
            format!(
                "a dry-run annotation of namespace {MESH_NAMESPACE} went through: the stored \
                 credentials may change any namespace's metadata"
            ),
            fix,
        ),
        Ok(Found::Scope(Scope::Stale { namespace })) => CheckResult::error(
            what,
            format!(
                "ValidatingAdmissionPolicy {} refuses a dry-run change of the managed labels \
                 of namespace {namespace}: it was installed for another sync rule",
                setup::SYNC_SCOPE
            ),
            fix,
        ),
        Ok(Found::Scope(Scope::Wider { namespace })) => CheckResult::error(
            what,
            format!(
                "a dry-run change of the managed labels of namespace {namespace} went through, \
                 which the cluster's scope leaves out: the remote does not enforce the scope"
            ),
            fix,
        ),
        Ok(Found::Unrefused { namespace, change }) => CheckResult::error(
            what,
            format!(
                "a dry-run change of {change} of namespace {namespace} went through, which the \
                 installed rule does not manage: ValidatingAdmissionPolicy {} was installed for \
                 another sync rule, or edited",
                setup::SYNC_SCOPE
            ),
            fix,
        ),
        Err(e) => CheckResult::warning(
            what,
            format!("cannot tell: a dry-run edit as the stored credentials failed: {e}"),
            fix,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::Outcome;
    use super::*;

    fn judge(missing: &[Need], excess: &[Need]) -> CheckResult {
        judge_rights("rights", "east", missing, excess, "re-attach")
    }

    #[test]
    fn rights_expect_the_named_guard_read_and_nothing_more() {
        let ok = judge(&[], &[]);
        assert_eq!(ok.result, Outcome::Ok);
        assert_eq!(
            ok.detail.as_deref(),
            Some(
                "namespaces get, list, watch, patch; guard kubectl-mesh-guard get; \
                 mutatingwebhookconfigurations get, list, watch"
            )
        );

        // An older attach: label sync works, the guard read is missing.
        let older = judge(&each_verb(setup::guard_read_rights()), &[]);
        assert_eq!(older.result, Outcome::Warning);
        assert_eq!(
            older.detail.as_deref(),
            Some(
                "not allowed: validatingadmissionpolicies get kubectl-mesh-guard, \
                 validatingadmissionpolicybindings get kubectl-mesh-guard; label sync works, \
                 but check reads the guard with your context of the remote instead"
            )
        );
        assert!(
            older.hint_mentions("kubectl mesh attach` for east"),
            "{older:?}"
        );

        // Attached before injectors were read: label sync works, readiness is not checked.
        let blind = judge(&each_verb(setup::injector_read_rights()), &[]);
        assert_eq!(blind.result, Outcome::Warning);
        assert_eq!(
            blind.detail.as_deref(),
            Some(
                "not allowed: mutatingwebhookconfigurations get, mutatingwebhookconfigurations \
                 list, mutatingwebhookconfigurations watch; label sync works, but whether an \
                 injector acts on the synced labels is not checked"
            )
        );
        assert!(
            blind.hint_mentions("re-run `kubectl mesh attach`"),
            "{blind:?}"
        );

        // Revoked: everything missing is an error that lists it all.
        let revoked = judge(&needed(), &[]);
        assert_eq!(revoked.result, Outcome::Error);
        assert!(
            revoked.detail.as_deref().unwrap().starts_with(
                "not allowed: namespaces get, namespaces list, namespaces watch, \
                 namespaces patch, validatingadmissionpolicies get kubectl-mesh-guard"
            ),
            "{revoked:?}"
        );

        // Listing policies, reading another one, or changing the guard: over-privileged.
        let list = Need::cluster(ADMISSION, POLICIES, &["list"]);
        let other = Need::cluster(ADMISSION, POLICIES, &["get"]).named(OTHER_POLICY);
        let change = Need::cluster(ADMISSION, BINDINGS, &["delete"]).named(setup::GUARD);
        let excessive = excessive_rights();
        for need in [&list, &other, &change] {
            assert!(excessive.contains(need), "{need:?}");
        }
        let over = judge(&[], &[list.clone(), other, change]);
        assert_eq!(over.result, Outcome::Warning);
        assert_eq!(
            over.detail.as_deref(),
            Some(
                "over-privileged: also allowed validatingadmissionpolicies list, \
                 validatingadmissionpolicies get (other than kubectl-mesh-guard), \
                 validatingadmissionpolicybindings delete kubectl-mesh-guard"
            )
        );
        let admin = judge(&[], &[excessive[0].clone(), list]);
        assert_eq!(
            admin.detail.as_deref(),
            Some("over-privileged: also allowed everything (cluster-admin)")
        );
        // The needed rights and the excessive ones never overlap.
        for need in needed() {
            assert!(!excessive.contains(&need), "{need:?}");
        }
    }

    #[test]
    fn the_needed_rights_are_what_the_sync_role_grants() {
        // The ClusterRole attach creates, spelled out verb by verb and resource by resource.
        let mut granted = Vec::new();
        for rule in setup::sync_cluster_role("east").rules.unwrap_or_default() {
            let group = rule.api_groups.unwrap_or_default().concat();
            let name = rule.resource_names.map(|n| n.concat());
            for resource in rule.resources.unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.push((group.clone(), resource.clone(), name.clone(), verb.clone()));
                }
            }
        }
        let mut asked: Vec<_> = needed()
            .into_iter()
            .map(|n| {
                let name = n.name.map(str::to_owned);
                (
                    n.group.to_owned(),
                    n.resource.to_owned(),
                    name,
                    n.verbs.concat(),
                )
            })
            .collect();
        asked.sort();
        granted.sort();
        assert_eq!(asked, granted);
    }

    #[test]
    fn view_credentials_may_read_workloads_and_nothing_else() {
        let answer = |asked: Need, allowed| Answer { asked, allowed };
        let needed = each_verb(setup::view_rights());
        let mut answers: Vec<Answer> = needed.iter().map(|n| answer(n.clone(), true)).collect();
        answers.extend(
            view_excessive_rights()
                .into_iter()
                .map(|n| answer(n, false)),
        );
        assert_eq!(view_asked().len(), answers.len());
        assert_eq!(judge_view_answers("east", &answers).result, Outcome::Ok);

        answers[0].allowed = false; // services get
        let r = judge_view_answers("east", &answers);
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (Outcome::Error, Some("not allowed: services get"))
        );
        answers[0].allowed = true;
        answers[needed.len() + 1].allowed = true; // secrets list
        let r = judge_view_answers("east", &answers);
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (
                Outcome::Warning,
                Some("over-privileged: also allowed secrets list")
            )
        );
        for need in &needed {
            assert!(!view_excessive_rights().contains(need), "{need:?}");
        }
    }

    #[test]
    fn answers_are_sorted_into_missing_and_excess() {
        let answer = |asked: Need, allowed| Answer { asked, allowed };
        let mut answers: Vec<Answer> = needed().into_iter().map(|n| answer(n, true)).collect();
        answers.extend(excessive_rights().into_iter().map(|n| answer(n, false)));
        let r = judge_answers("rights", "east", &answers, "re-attach", false);
        assert_eq!(r.result, Outcome::Ok, "{r:?}");
        // The renewal right, denied: what a long-lived token does not need, a time-bound one does.
        answers.push(answer(renewal(), false));
        let r = judge_answers("rights", "east", &answers, "re-attach", false);
        assert_eq!(r.result, Outcome::Ok, "{r:?}");
        let r = judge_answers("rights", "east", &answers, "re-attach", true);
        assert_eq!(r.result, Outcome::Error, "{r:?}");
        assert!(
            r.detail.as_deref().is_some_and(|d| d.starts_with(
                "not allowed: serviceaccounts/token create kubectl-mesh-sync: the webhook cannot renew"
            )),
            "{r:?}"
        );
        assert!(r.hint_mentions("--token-ttl <DURATION>"), "{r:?}");
        assert!(asked().contains(&renewal()));
        answers.pop();

        answers[3].allowed = false; // namespaces patch
        answers[needed().len()].allowed = true; // and everything: the missing right comes first
        let r = judge_answers("rights", "east", &answers, "re-attach", false);
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (Outcome::Error, Some("not allowed: namespaces patch"))
        );
    }
}
