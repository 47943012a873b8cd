//! The two ValidatingAdmissionPolicies attach installs on a remote, rendered from the sync
//! rule: the guard (warns or refuses managed-label edits not made by kubectl-mesh, a
//! courtesy) and the sync scope (confines the sync account to the managed labels of the
//! namespaces the cluster's scope covers, a security boundary). Their CEL is built here and in
//! [`crate::cel`], nowhere else.

use k8s_openapi::{
    api::admissionregistration::v1::{
        MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
        ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
        ValidatingAdmissionPolicySpec, Validation, Variable,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use mesh_core::{
    cluster::{NamespaceScope, RemoteGuard},
    labels::SyncRule,
};

use crate::cel;
use crate::remote_setup::{GUARD, SYNC_SCOPE, meta, sync_username};
use crate::render::strings;

/// What the remote guard says and to whom it applies.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard {
    /// Warn or Deny (Off installs nothing).
    pub mode: RemoteGuard,
    /// The primary its messages send label edits to.
    pub primary: GuardPrimary,
    /// Label keys the guard watches.
    pub managed_labels: Vec<String>,
    /// Namespaces the guard leaves alone (they are never synced either).
    pub excluded_namespaces: Vec<String>,
    /// With a cluster scope's selector, only namespaces whose labels match are guarded.
    pub namespace_selector: Option<LabelSelector>,
}

/// How the guard's messages name the primary where managed labels are set.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardPrimary {
    /// Name of the primary in messages.
    pub name: String,
    /// Context of the primary to suggest in `kubectl --context ... label` commands.
    pub context: String,
}

impl Guard {
    /// A guard over the default managed labels and excluded namespaces.
    pub fn new(mode: RemoteGuard, primary_name: &str, primary_context: &str) -> Self {
        let (managed_labels, excluded_namespaces) = crate::installed_rule::default_lists();
        Self {
            mode,
            primary: GuardPrimary {
                name: primary_name.to_owned(),
                context: primary_context.to_owned(),
            },
            managed_labels,
            excluded_namespaces,
            namespace_selector: None,
        }
    }

    /// The same guard over the namespaces `scope` leaves to kubectl-mesh: its excluded
    /// names come with the rule [`within`](SyncRule::within) the scope, its selector here.
    pub fn with_scope(self, scope: &NamespaceScope) -> Self {
        Self {
            namespace_selector: scope.namespace_selector.clone(),
            ..self
        }
    }

    /// The same guard over the managed labels and excluded namespaces of `rule` (the
    /// installed one: a guard over the default labels would leave a custom label unguarded).
    pub fn with_rule(self, rule: &SyncRule) -> Self {
        Self {
            managed_labels: rule.managed_keys().map(str::to_owned).collect(),
            excluded_namespaces: rule.excluded_namespaces().map(str::to_owned).collect(),
            ..self
        }
    }

    /// The validation action of the binding; `None` for [`RemoteGuard::Off`].
    pub fn action(&self) -> Option<&'static str> {
        match self.mode {
            RemoteGuard::Warn => Some("Warn"),
            RemoteGuard::Deny => Some("Deny"),
            RemoteGuard::Off => None,
        }
    }
}

/// In the guard's messageExpression, what comes right before the primary's name (a CEL
/// string literal): [`guard_primary_name`] reads the name back from there.
const MESSAGE_EXPRESSION_FROM: &str = "' managed by kubectl-mesh from cluster ' + ";
/// In the guard's static message, what comes before the primary's name (then `; `).
const MESSAGE_FROM: &str = "managed by kubectl-mesh from cluster ";

/// Reads a CEL string literal written by [`cel::string`] at the start of `s`: its value, and
/// what follows it in `s`.
pub(crate) fn read_cel_str(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('\'')?.char_indices();
    let mut out = String::new();
    loop {
        match chars.next()? {
            (_, '\\') => out.push(chars.next()?.1),
            (end, '\'') => return Some((out, &s[1 + end + 1..])),
            (_, c) => out.push(c),
        }
    }
}

/// The primary a guard policy's messages name, when they are the messages [`guard_policy`]
/// renders and both (messageExpression and the static message, its fallback) name the same
/// primary; `None` otherwise.
pub fn guard_primary_name(policy: &ValidatingAdmissionPolicy) -> Option<String> {
    let validation = policy.spec.as_ref()?.validations.as_ref()?.first()?;
    let expression = validation.message_expression.as_deref()?;
    let (_, rest) = expression.split_once(MESSAGE_EXPRESSION_FROM)?;
    let (name, _) = read_cel_str(rest)?;
    let message = validation.message.as_deref()?;
    message
        .contains(&format!("{MESSAGE_FROM}{name}; "))
        .then_some(name)
}

/// The mode a guard binding applies: Deny when it denies (whatever else it lists), Warn when
/// it only warns; `None` when it does neither.
pub fn bound_mode(binding: &ValidatingAdmissionPolicyBinding) -> Option<RemoteGuard> {
    let actions = binding.spec.as_ref()?.validation_actions.as_deref()?;
    if actions.iter().any(|a| a == "Deny") {
        Some(RemoteGuard::Deny)
    } else if actions.iter().any(|a| a == "Warn") {
        Some(RemoteGuard::Warn)
    } else {
        None
    }
}

/// The guard an attach of `cluster` from the primary whose id is `primary` left on a remote:
/// its mode and the primary its messages name (`None` when they are not the messages attach
/// writes). `None` when the policy is another's or nothing binds it with a mode.
pub fn left_guard(
    policy: &ValidatingAdmissionPolicy,
    binding: &ValidatingAdmissionPolicyBinding,
    cluster: &str,
    primary: &str,
) -> Option<(RemoteGuard, Option<String>)> {
    if !crate::remote_setup::is_ours_from(&policy.metadata, cluster, primary) {
        return None;
    }
    let bound = binding.spec.as_ref()?.policy_name.as_deref();
    if bound != Some(GUARD) {
        return None;
    }
    Some((bound_mode(binding)?, guard_primary_name(policy)))
}

/// The ValidatingAdmissionPolicy of the remote guard: on a namespace CREATE or UPDATE by
/// anyone but the sync account that changes a managed label of a synced namespace, the
/// validation fails with a message naming the primary and the command to run there. Whether
/// that warns or denies is the binding's choice ([`guard_binding`]).
///
/// failurePolicy Ignore: the guard is a courtesy, not a security boundary (the reconciler
/// undoes the edit anyway), and must never block namespace edits if its CEL cannot run.
pub fn guard_policy(cluster: &str, guard: &Guard) -> ValidatingAdmissionPolicy {
    let keys = cel_list(guard.managed_labels.iter().map(String::as_str));
    let changed = format!(
        "{keys}.filter(k, {} != {})",
        cel::label_value("object", "k"),
        cel::label_value("oldObject", "k")
    );
    // `key=value` for a label set, `key-` for one removed: the arguments of `kubectl label`.
    let wanted = format!(
        "variables.changed.map(k, {} != {} ? k + '=' + object.metadata.labels[k] : k + '-')",
        cel::label_value("object", "k"),
        cel::string(cel::ABSENT)
    );
    let message_expression = format!(
        "variables.changed.join(', ') + ' on this cluster ' + \
         (size(variables.changed) == 1 ? 'is' : 'are') + \
         {from}{primary} + \
         (size(variables.changed) == 1 ? '; set it there' : '; set them there') + \
         ': kubectl --context ' + {context} + ' label ns ' + \
         object.metadata.name + ' ' + {wanted}.join(' ') + ' --overwrite'",
        from = MESSAGE_EXPRESSION_FROM,
        primary = cel::string(&guard.primary.name),
        context = cel::string(&guard.primary.context),
    );
    let message = format!(
        "sidecar-injection labels on this cluster are {MESSAGE_FROM}{}; set them there with \
         kubectl --context {} label ns",
        guard.primary.name, guard.primary.context
    );
    let mut conditions = Vec::new();
    if !guard.excluded_namespaces.is_empty() {
        let excluded = cel_list(guard.excluded_namespaces.iter().map(String::as_str));
        conditions.push(MatchCondition {
            name: "not-excluded-namespace".to_owned(),
            expression: format!("!(object.metadata.name in {excluded})"),
        });
    }
    conditions.push(MatchCondition {
        name: "not-kubectl-mesh".to_owned(),
        expression: format!(
            "request.userInfo.username != {}",
            cel::string(&sync_username())
        ),
    });
    ValidatingAdmissionPolicy {
        metadata: meta(GUARD, None, cluster),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Ignore".to_owned()),
            match_constraints: Some(MatchResources {
                // A person may write labels through the subresources too.
                resource_rules: Some(vec![namespace_requests(
                    &["v1"],
                    &["CREATE", "UPDATE"],
                    &crate::render::NAMESPACE_WRITES,
                )]),
                // For a Namespace, the apiserver matches the selector on its own labels.
                namespace_selector: guard.namespace_selector.clone(),
                ..Default::default()
            }),
            match_conditions: Some(conditions),
            variables: Some(vec![Variable {
                name: "changed".to_owned(),
                expression: changed,
            }]),
            validations: Some(vec![Validation {
                expression: "size(variables.changed) == 0".to_owned(),
                message: Some(message),
                message_expression: Some(message_expression),
                reason: Some("Forbidden".to_owned()),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Binds [`guard_policy`] with the guard's action (Warn or Deny).
pub fn guard_binding(cluster: &str, guard: &Guard) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: meta(GUARD, None, cluster),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(GUARD.to_owned()),
            validation_actions: guard.action().map(|a| vec![a.to_owned()]),
            ..Default::default()
        }),
    }
}

/// The `operations` on namespaces (core group, `api_versions`) a policy matches, on `resources`.
fn namespace_requests(
    api_versions: &[&str],
    operations: &[&str],
    resources: &[&str],
) -> NamedRuleWithOperations {
    NamedRuleWithOperations {
        api_groups: strings(&[""]),
        api_versions: strings(api_versions),
        operations: strings(operations),
        resources: strings(resources),
        ..Default::default()
    }
}

/// A CEL list literal of strings.
fn cel_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.into_iter().map(cel::string).collect();
    format!("[{}]", items.join(", "))
}

/// CEL: the field `path` (below `object`) is the same on `object` and `oldObject`, absent on
/// both included.
fn cel_unchanged(path: &str) -> String {
    format!(
        "(has(object.{path}) == has(oldObject.{path}) && \
         (!has(object.{path}) || object.{path} == oldObject.{path}))"
    )
}

/// Why [`sync_scope_policy`] refuses a request, in the order of its validations.
pub const SYNC_SCOPE_MESSAGES: [&str; 4] = [
    "the kubectl-mesh sync account may not create or delete namespaces",
    "the kubectl-mesh sync account may not change a namespace the mesh excludes",
    "the kubectl-mesh sync account may not change a namespace outside its cluster's namespace selector",
    "the kubectl-mesh sync account may change only the managed labels of a namespace",
];

/// The ValidatingAdmissionPolicy confining the sync account to what label sync writes: on
/// an UPDATE of a namespace that `rule` (the installed rule [`within`](SyncRule::within) the
/// cluster's scope) syncs and `selector` (the scope's) selects, the managed labels of `rule`;
/// nothing else (no other label, annotation, finalizer, ownerReference, spec), no CREATE, no
/// DELETE. The remote thus enforces the scope its admin attached with, whatever the primary
/// then asks: only its admin's credentials can widen it. The scope itself is recorded on it
/// ([`SCOPE_ANNOTATION`]).
///
/// failurePolicy Fail, unlike the guard: this one is a security boundary for a token stored
/// on another cluster, and an expression that cannot be evaluated must not let it through.
/// managedFields and resourceVersion change with every write and are not compared.
pub fn sync_scope_policy(
    cluster: &str,
    rule: &SyncRule,
    scope: &NamespaceScope,
) -> ValidatingAdmissionPolicy {
    let selector = scope.namespace_selector.as_ref();
    let keys = cel_list(rule.managed_keys());
    let excluded = cel_list(rule.excluded_namespaces());
    // The selector may not name a managed key, which a write changes: the old and the new
    // object are alike for it.
    let selected = selector.map_or_else(|| "true".to_owned(), |s| cel::selects("oldObject", s));
    // Every other label of the new object is in the old one with the same value, and every
    // other label of the old object is still there. (Maps compare as wholes only; these
    // two passes compare them but for the managed keys.)
    let others_kept = format!(
        "(!has(object.metadata.labels) || object.metadata.labels.all(k, k in {keys} || \
         (has(oldObject.metadata.labels) && k in oldObject.metadata.labels && \
         oldObject.metadata.labels[k] == object.metadata.labels[k]))) && \
         (!has(oldObject.metadata.labels) || oldObject.metadata.labels.all(k, k in {keys} || \
         (has(object.metadata.labels) && k in object.metadata.labels)))"
    );
    let rest_kept = [
        "metadata.annotations",
        "metadata.finalizers",
        "metadata.ownerReferences",
        "metadata.generateName",
        "spec",
    ]
    .map(cel_unchanged)
    .join(" && ");
    let update = "request.operation == 'UPDATE'";
    let [
        create_delete,
        excluded_message,
        unselected_message,
        others_message,
    ] = SYNC_SCOPE_MESSAGES;
    let validation = |expression: String, message: &str| Validation {
        expression,
        message: Some(message.to_owned()),
        reason: Some("Forbidden".to_owned()),
        ..Default::default()
    };
    let mut metadata = meta(SYNC_SCOPE, None, cluster);
    metadata.annotations = Some([(SCOPE_ANNOTATION.to_owned(), scope_record(scope))].into());
    ValidatingAdmissionPolicy {
        metadata,
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".to_owned()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![namespace_requests(
                    &["*"],
                    &["CREATE", "UPDATE", "DELETE"],
                    // The sync account's role grants no subresource: covered all the same.
                    &crate::render::NAMESPACE_WRITES,
                )]),
                ..Default::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "kubectl-mesh-sync".to_owned(),
                expression: format!(
                    "request.userInfo.username == {}",
                    cel::string(&sync_username())
                ),
            }]),
            variables: Some(vec![Variable {
                name: "othersKept".to_owned(),
                expression: format!("{others_kept} && {rest_kept}"),
            }]),
            // Only an UPDATE has both objects; the other validations pass anything else,
            // which the first one refuses.
            validations: Some(vec![
                validation(update.to_owned(), create_delete),
                validation(
                    format!("!({update}) || !(oldObject.metadata.name in {excluded})"),
                    excluded_message,
                ),
                validation(format!("!({update}) || ({selected})"), unselected_message),
                validation(
                    format!("!({update}) || variables.othersKept"),
                    others_message,
                ),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Annotation of the sync scope policy: the cluster's scope as JSON. A detach after the
/// MeshCluster is gone (a forced detach, then a re-run) strips labels within it.
pub const SCOPE_ANNOTATION: &str = "kubectl-mesh.io/scope";

/// `scope` as [`SCOPE_ANNOTATION`] holds it.
pub fn scope_record(scope: &NamespaceScope) -> String {
    serde_json::to_string(scope).unwrap_or_default()
}

/// The scope recorded on a sync scope policy; `None` when it holds none (an older attach) or
/// one that does not parse.
pub fn recorded_scope(policy: &ValidatingAdmissionPolicy) -> Option<NamespaceScope> {
    let record = policy
        .metadata
        .annotations
        .as_ref()?
        .get(SCOPE_ANNOTATION)?;
    serde_json::from_str(record).ok()
}

/// Binds [`sync_scope_policy`], denying: whatever the guard's mode.
pub fn sync_scope_binding(cluster: &str) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: meta(SYNC_SCOPE, None, cluster),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(SYNC_SCOPE.to_owned()),
            validation_actions: Some(vec!["Deny".to_owned()]),
            ..Default::default()
        }),
    }
}
