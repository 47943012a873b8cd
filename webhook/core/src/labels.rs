//! THE sync rule: which labels are managed and what a remote namespace must carry.
//!
//! The primary cluster is the source of truth. A fixed set of *managed* label keys (by default
//! [`DEFAULT_MANAGED_LABELS`]: `istio-injection`, `istio.io/rev`, `istio.io/dataplane-mode`) is
//! kept equal between the primary and every attached remote:
//!
//! - For every namespace that exists on a remote, except the *excluded* ones (by default
//!   [`DEFAULT_EXCLUDED_NAMESPACES`]: `kube-system`, `kube-public`, `kube-node-lease` and the mesh
//!   namespace), the managed labels on the remote must equal the managed labels of the namespace
//!   of the same name on the primary.
//! - When that namespace is absent on the primary, is being deleted there (`deletionTimestamp`
//!   set), or lacks one of the managed labels, the label is removed on the remote.
//! - Namespaces absent on a remote are never created there. A primary namespace carrying at least
//!   one managed label that a remote lacks is reported as *missing* for that remote.
//! - Only managed labels are ever written; every other label on a remote is left alone.
//! - `kubernetes.io/metadata.name` is set by every apiserver to the namespace's own name: it is
//!   never user data, so it can never be a managed key.
//!
//! Everything here is pure: callers fetch namespaces, this module says what to change, and
//! [`LabelDiff::to_json_patch`] turns a change into a conditional JSON patch.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use json_patch::jsonptr::PointerBuf;
use json_patch::{
    AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation, TestOperation,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::{Expression, Selector, SelectorExt};
use serde_json::Value;

use crate::cluster::NamespaceScope;

/// Labels kubectl-mesh keeps equal between the primary and every remote, by default.
pub const DEFAULT_MANAGED_LABELS: [&str; 3] =
    ["istio-injection", "istio.io/rev", "istio.io/dataplane-mode"];

/// Namespaces never synced, by default: the cluster's own and the mesh's.
pub const DEFAULT_EXCLUDED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    crate::MESH_NAMESPACE,
];

/// Annotation on the primary's MutatingWebhookConfiguration: the managed label keys of the
/// installed webhook, comma-separated. `kubectl mesh install` writes it next to the
/// matchConditions it renders from the same list, so that the plugin's commands apply the
/// webhook's rule instead of assuming the default one.
pub const MANAGED_LABELS_ANNOTATION: &str = concat!(group_literal!(), "/managed-labels");

/// Annotation on the primary's MutatingWebhookConfiguration: the namespaces the installed
/// webhook never syncs, comma-separated (see [`MANAGED_LABELS_ANNOTATION`]).
pub const EXCLUDED_NAMESPACES_ANNOTATION: &str = concat!(group_literal!(), "/excluded-namespaces");

/// Label every apiserver puts on every namespace, equal to its name. Never synced.
pub const METADATA_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Labels of one object, ordered so that diffs, patches and messages are deterministic.
pub type Labels = BTreeMap<String, String>;

/// The sync rule: which label keys are managed and which namespaces are left alone.
///
/// The installed rule is the same for every remote; [`SyncRule::within`] narrows it to one
/// remote's [`NamespaceScope`], and everything that reads or writes that remote uses the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRule {
    managed: BTreeSet<String>,
    excluded: BTreeSet<String>,
    /// Namespaces the remote's scope leaves out by name.
    out_of_scope: BTreeSet<String>,
    /// Only remote namespaces whose labels match are written; `None` selects all.
    selector: Option<Selector>,
}

/// Why a cluster's [`NamespaceScope`] cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("the namespace selector is not valid: {0}")]
    Selector(String),
    #[error("the namespace selector uses the managed label {0}, which kubectl-mesh itself writes")]
    ManagedKey(String),
}

/// How a cluster's unusable scope is corrected, as every message about one says: a scope is
/// replaced whole (the flags name all of it), or removed.
pub fn scope_remedy(cluster: &str) -> String {
    format!(
        "replace it with `kubectl mesh scope {cluster} --namespace-selector SELECTOR` (a selector \
         without managed label keys, plus any --exclude-namespaces it had) or remove it with \
         `kubectl mesh scope {cluster} --clear`"
    )
}

impl Default for SyncRule {
    fn default() -> Self {
        Self::new(
            DEFAULT_MANAGED_LABELS.map(String::from),
            DEFAULT_EXCLUDED_NAMESPACES.map(String::from),
        )
    }
}

impl SyncRule {
    /// A rule managing `managed` label keys on every namespace not in `excluded`.
    ///
    /// Empty keys and [`METADATA_NAME_LABEL`] are dropped: the apiserver owns the latter and
    /// syncing it would rename nothing but break every remote patch.
    pub fn new(
        managed: impl IntoIterator<Item = String>,
        excluded: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            managed: managed
                .into_iter()
                .filter(|key| !key.is_empty() && key != METADATA_NAME_LABEL)
                .collect(),
            excluded: excluded.into_iter().filter(|ns| !ns.is_empty()).collect(),
            out_of_scope: BTreeSet::new(),
            selector: None,
        }
    }

    /// This rule narrowed to one remote's scope. A selector on a managed key is refused:
    /// writing that label would move the namespace out of reach of the next write.
    pub fn within(&self, scope: &NamespaceScope) -> Result<Self, ScopeError> {
        let selector = match &scope.namespace_selector {
            None => None,
            Some(selector) => {
                let selector = Selector::try_from(selector.clone())
                    .map_err(|error| ScopeError::Selector(error.to_string()))?;
                if let Some(key) = selector_keys(&selector).find(|key| self.is_managed(key)) {
                    return Err(ScopeError::ManagedKey(key));
                }
                (!selector.selects_all()).then_some(selector)
            }
        };
        Ok(Self {
            out_of_scope: self
                .out_of_scope
                .iter()
                .cloned()
                .chain(scope.exclude_namespaces.iter().cloned())
                .filter(|name| !name.is_empty() && !self.excluded.contains(name))
                .collect(),
            selector,
            ..self.clone()
        })
    }

    /// Whether `namespace` is left out by the remote's scope (by name), as opposed to the
    /// installed rule.
    pub fn is_out_of_scope(&self, namespace: &str) -> bool {
        self.out_of_scope.contains(namespace)
    }

    /// Whether writing a remote namespace needs its current labels first (to match the
    /// scope's selector).
    pub fn selects_by_labels(&self) -> bool {
        self.selector.is_some()
    }

    /// Whether kubectl-mesh may write `remote`, a namespace of the remote this rule is for.
    pub fn covers(&self, remote: &Namespace) -> bool {
        let name = remote.metadata.name.as_deref().unwrap_or_default();
        !self.is_excluded(name)
            && self.selector.as_ref().is_none_or(|selector| {
                selector.matches(remote.metadata.labels.as_ref().unwrap_or(&Labels::new()))
            })
    }

    /// The managed label keys, in key order.
    pub fn managed_keys(&self) -> impl Iterator<Item = &str> {
        self.managed.iter().map(String::as_str)
    }

    /// The namespaces never synced, in name order: the installed rule's and, for a rule
    /// [`within`](Self::within) a remote's scope, those the scope leaves out by name.
    pub fn excluded_namespaces(&self) -> impl Iterator<Item = &str> {
        self.excluded.union(&self.out_of_scope).map(String::as_str)
    }

    /// Whether `key` is one of the labels kubectl-mesh writes on remotes.
    pub fn is_managed(&self, key: &str) -> bool {
        self.managed.contains(key)
    }

    /// Whether `namespace` is never synced: excluded by the installed rule or, for a rule
    /// [`within`](Self::within) a remote's scope, left out by name there.
    pub fn is_excluded(&self, namespace: &str) -> bool {
        self.excluded.contains(namespace) || self.out_of_scope.contains(namespace)
    }

    /// The managed subset of `labels`.
    pub fn managed_of(&self, labels: Option<&Labels>) -> Labels {
        labels
            .into_iter()
            .flatten()
            .filter(|(key, _)| self.is_managed(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// The managed labels a remote namespace must carry, given its namesake on the primary.
    ///
    /// Empty when the primary has no such namespace or is deleting it: a namespace on its way
    /// out must stop steering sidecar injection elsewhere.
    pub fn desired(&self, primary: Option<&Namespace>) -> Labels {
        match primary {
            Some(ns) if ns.metadata.deletion_timestamp.is_none() => {
                self.managed_of(ns.metadata.labels.as_ref())
            }
            _ => Labels::new(),
        }
    }

    /// Every label `remote` carries once synced: its own unmanaged labels and `desired`'s
    /// managed ones (what Istio's webhooks will select on there).
    pub fn after_sync(&self, desired: &Labels, remote: &Namespace) -> Labels {
        let own = remote.metadata.labels.iter().flatten();
        own.filter(|(key, _)| !self.is_managed(key))
            .chain(desired.iter().filter(|(key, _)| self.is_managed(key)))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// What to change on `remote` so that its managed labels equal `desired`.
    ///
    /// Keys of `desired` that are not managed are ignored, so a caller cannot make this write
    /// anything but managed labels.
    pub fn diff(&self, desired: &Labels, remote: &Namespace) -> LabelDiff {
        let current = self.managed_of(remote.metadata.labels.as_ref());
        let set = desired
            .iter()
            .filter(|(key, value)| self.is_managed(key) && current.get(*key) != Some(*value))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let remove = current
            .keys()
            .filter(|key| !desired.contains_key(*key))
            .cloned()
            .collect();
        LabelDiff {
            namespace: remote.metadata.name.clone().unwrap_or_default(),
            set,
            remove,
        }
    }

    /// JSON patch from `expected` to `desired` for every managed key: `test` ops for the labels of
    /// `expected` first, so that the apiserver applies nothing unless the remote carries them (a
    /// managed key `expected` lacks is not tested: JSON Patch has no test of absence). Keys
    /// absent from both are made absent too (`add` then `remove`: a lone `remove` of an absent key
    /// fails the patch), so the remote ends with exactly `desired` whenever the tests pass.
    pub fn guarded_patch(&self, expected: &Labels, desired: &Labels) -> Patch {
        let path = |key: &str| PointerBuf::from_tokens(["metadata", "labels", key]);
        let mut ops: Vec<PatchOperation> = expected
            .iter()
            .filter(|(key, _)| self.is_managed(key))
            .map(|(key, value)| {
                PatchOperation::Test(TestOperation {
                    path: path(key),
                    value: Value::String(value.clone()),
                })
            })
            .collect();
        for key in self.managed_keys() {
            match (expected.get(key), desired.get(key)) {
                (Some(old), Some(new)) if old == new => {}
                (Some(_), Some(new)) => ops.push(PatchOperation::Replace(ReplaceOperation {
                    path: path(key),
                    value: Value::String(new.clone()),
                })),
                // `add` replaces a value the remote should not have had.
                (None, Some(new)) => ops.push(PatchOperation::Add(AddOperation {
                    path: path(key),
                    value: Value::String(new.clone()),
                })),
                (Some(_), None) => {
                    ops.push(PatchOperation::Remove(RemoveOperation { path: path(key) }))
                }
                (None, None) => {
                    ops.push(PatchOperation::Add(AddOperation {
                        path: path(key),
                        value: Value::String(String::new()),
                    }));
                    ops.push(PatchOperation::Remove(RemoveOperation { path: path(key) }));
                }
            }
        }
        Patch(ops)
    }

    /// Full-sync plan for one remote: `primary` = every primary namespace by name, `remote` =
    /// every remote namespace.
    ///
    /// All four lists are sorted by namespace name so that status and output are stable.
    pub fn plan(&self, primary: &BTreeMap<String, Namespace>, remote: &[Namespace]) -> SyncPlan {
        let lookup = |name: &str| primary.get(name).cloned();
        let mut plan = SyncPlan::default();
        let mut planner = self.planner();
        for seen in remote {
            match planner.consider(lookup, seen) {
                Verdict::Seen => {}
                Verdict::OutOfScope(name) => plan.out_of_scope.push(name),
                Verdict::InSync(name) => plan.in_sync.push(name),
                Verdict::Differs(diff) => plan.changes.push(diff),
            }
        }
        let labelled = primary
            .iter()
            .filter(|(_, ns)| !self.desired(Some(ns)).is_empty())
            .map(|(name, _)| name.clone());
        plan.missing = planner.missing(labelled);
        plan.in_sync.sort();
        plan.out_of_scope.sort();
        plan.changes.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        plan
    }

    /// A plan made as the remote's namespaces come, for a sync that writes each change as it
    /// is found instead of planning them all first.
    pub fn planner(&self) -> Planner<'_> {
        Planner {
            rule: self,
            on_remote: HashSet::new(),
        }
    }

    /// The labels of a remote namespace a sync reads: the managed ones, and those the scope's
    /// selector matches on.
    pub fn keys_read(&self) -> BTreeSet<String> {
        let selected = self.selector.iter().flat_map(selector_keys);
        self.managed.iter().cloned().chain(selected).collect()
    }
}

/// The managed-label change one remote namespace needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelDiff {
    /// Name of the remote namespace.
    pub namespace: String,
    /// Labels to add or overwrite.
    pub set: Labels,
    /// Label keys to remove.
    pub remove: BTreeSet<String>,
}

impl LabelDiff {
    /// The change of namespace `namespace`'s managed labels from `before` to `after`.
    pub fn between(rule: &SyncRule, namespace: &str, before: &Labels, after: &Labels) -> Self {
        let managed = |labels: &Labels| rule.managed_of(Some(labels));
        let (before, after) = (managed(before), managed(after));
        Self {
            namespace: namespace.to_owned(),
            set: after
                .iter()
                .filter(|(key, value)| before.get(*key) != Some(*value))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            remove: before
                .keys()
                .filter(|key| !after.contains_key(*key))
                .cloned()
                .collect(),
        }
    }

    /// Whether the namespace already carries the desired labels.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Conditional JSON patch applying this diff to `current`.
    ///
    /// The first op tests `/metadata/resourceVersion` (when `current` has one), so that a
    /// concurrent edit makes the apiserver refuse the patch instead of being clobbered; the
    /// caller re-reads and re-diffs. `/metadata/labels` is created when `current` has no labels
    /// map, because `add` cannot create intermediate objects. Keys already holding the wanted
    /// value and removals of absent keys emit no op (removing an absent key would fail the whole
    /// patch). A key both in `set` and `remove` is set.
    pub fn to_json_patch(&self, current: &Namespace) -> Patch {
        let labels = current.metadata.labels.as_ref();
        let mut ops = Vec::new();
        if let Some(rv) = &current.metadata.resource_version {
            ops.push(PatchOperation::Test(TestOperation {
                path: PointerBuf::from_tokens(["metadata", "resourceVersion"]),
                value: Value::String(rv.clone()),
            }));
        }
        if labels.is_none() && !self.set.is_empty() {
            ops.push(PatchOperation::Add(AddOperation {
                path: PointerBuf::from_tokens(["metadata", "labels"]),
                value: Value::Object(serde_json::Map::new()),
            }));
        }
        for (key, value) in &self.set {
            // Token escaping turns `istio.io/rev` into `istio.io~1rev`.
            let path = PointerBuf::from_tokens(["metadata", "labels", key.as_str()]);
            let value = Value::String(value.clone());
            match labels.and_then(|l| l.get(key)) {
                Some(old) if *old == value => {}
                Some(_) => ops.push(PatchOperation::Replace(ReplaceOperation { path, value })),
                None => ops.push(PatchOperation::Add(AddOperation { path, value })),
            }
        }
        for key in &self.remove {
            if !self.set.contains_key(key) && labels.is_some_and(|l| l.contains_key(key)) {
                ops.push(PatchOperation::Remove(RemoveOperation {
                    path: PointerBuf::from_tokens(["metadata", "labels", key.as_str()]),
                }));
            }
        }
        Patch(ops)
    }

    /// Human summary, e.g. `istio-injection=enabled, -istio.io/rev`; `no change` when empty.
    pub fn describe(&self) -> String {
        if self.is_empty() {
            return "no change".to_owned();
        }
        let set = self.set.iter().map(|(key, value)| format!("{key}={value}"));
        let remove = self.remove.iter().map(|key| format!("-{key}"));
        set.chain(remove).collect::<Vec<_>>().join(", ")
    }
}

/// [`SyncRule::plan`] one remote namespace at a time: remembers the names it was shown, to
/// skip a name shown twice and to tell at the end which primary namespaces the remote lacks.
pub struct Planner<'r> {
    rule: &'r SyncRule,
    on_remote: HashSet<String>,
}

/// What the plan says of one remote namespace.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to say: no name, excluded by name, or shown already.
    Seen,
    /// The cluster's scope leaves it alone.
    OutOfScope(String),
    /// It carries the primary's managed labels already.
    InSync(String),
    /// It needs this change.
    Differs(LabelDiff),
}

impl Planner<'_> {
    /// The verdict on remote namespace `remote`; `primary` looks its primary twin up.
    pub fn consider(
        &mut self,
        primary: impl Fn(&str) -> Option<Namespace>,
        remote: &Namespace,
    ) -> Verdict {
        let rule = self.rule;
        // A namespace without a name cannot be addressed; the apiserver never returns one.
        let Some(name) = remote.metadata.name.as_deref() else {
            return Verdict::Seen;
        };
        if rule.excluded.contains(name) || !self.on_remote.insert(name.to_owned()) {
            return Verdict::Seen;
        }
        if !rule.covers(remote) {
            return Verdict::OutOfScope(name.to_owned());
        }
        let diff = rule.diff(&rule.desired(primary(name).as_ref()), remote);
        if diff.is_empty() {
            Verdict::InSync(name.to_owned())
        } else {
            Verdict::Differs(diff)
        }
    }

    /// The primary namespaces among `labelled` (those carrying managed labels) that the remote
    /// does not have, sorted. Only they are worth reporting as missing: a plain namespace
    /// absent from a remote is the normal case.
    pub fn missing(&self, labelled: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut missing: Vec<String> = labelled
            .into_iter()
            .filter(|name| !self.on_remote.contains(name) && !self.rule.is_excluded(name))
            .collect();
        missing.sort();
        missing
    }
}

/// What a full sync of one remote would do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Remote namespaces whose managed labels differ from the primary's, with the fix.
    pub changes: Vec<LabelDiff>,
    /// Remote namespaces already carrying the primary's managed labels.
    pub in_sync: Vec<String>,
    /// Primary namespaces with managed labels that do not exist on the remote (never created).
    pub missing: Vec<String>,
    /// Remote namespaces the remote's scope leaves alone (never written).
    pub out_of_scope: Vec<String>,
}

impl SyncPlan {
    /// Whether the remote needs no write.
    pub fn is_converged(&self) -> bool {
        self.changes.is_empty()
    }
}

/// The label keys a selector reads.
fn selector_keys(selector: &Selector) -> impl Iterator<Item = String> {
    selector
        .clone()
        .into_iter()
        .map(|expression| match expression {
            Expression::In(key, _)
            | Expression::NotIn(key, _)
            | Expression::Equal(key, _)
            | Expression::NotEqual(key, _)
            | Expression::Exists(key)
            | Expression::DoesNotExist(key) => key,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{MetadataExt, NamespaceExt, labels, ns};
    use serde_json::json;

    #[test]
    fn after_sync_keeps_unmanaged_labels_and_takes_managed_ones_from_desired() {
        let remote = ns("shop")
            .label("team", "a")
            .label("istio-injection", "enabled")
            .label("istio.io/rev", "old");
        let desired = labels(&[("istio.io/rev", "canary"), ("team", "ignored")]);
        assert_eq!(
            SyncRule::default().after_sync(&desired, &remote),
            labels(&[("istio.io/rev", "canary"), ("team", "a")])
        );
    }

    fn keys<const N: usize>(keys: [&str; N]) -> BTreeSet<String> {
        keys.into_iter().map(str::to_owned).collect()
    }

    fn primary_of(namespaces: impl IntoIterator<Item = Namespace>) -> BTreeMap<String, Namespace> {
        namespaces
            .into_iter()
            .map(|ns| (ns.metadata.name.clone().unwrap_or_default(), ns))
            .collect()
    }

    /// Applies `diff` to `remote` the way the apiserver would, returning the resulting labels.
    fn apply(diff: &LabelDiff, remote: &Namespace) -> Result<Labels, json_patch::PatchError> {
        let mut doc = serde_json::to_value(remote).expect("namespace serializes");
        json_patch::patch(&mut doc, &diff.to_json_patch(remote))?;
        let after: Namespace = serde_json::from_value(doc).expect("patched namespace parses");
        Ok(after.metadata.labels.unwrap_or_default())
    }

    /// Syncs `primary` onto `remote` through diff + patch and returns the remote's new labels.
    fn sync(rule: &SyncRule, primary: Option<&Namespace>, remote: &Namespace) -> Labels {
        let diff = rule.diff(&rule.desired(primary), remote);
        apply(&diff, remote).expect("patch applies")
    }

    /// What the default rule changes on `remote` to follow `primary`.
    fn default_diff(primary: &Namespace, remote: &Namespace) -> LabelDiff {
        let rule = SyncRule::default();
        rule.diff(&rule.desired(Some(primary)), remote)
    }

    #[test]
    fn default_rule_lists() {
        let rule = SyncRule::default();
        assert_eq!(
            rule.managed_keys().collect::<Vec<_>>(),
            ["istio-injection", "istio.io/dataplane-mode", "istio.io/rev"]
        );
        for ns in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "kubectl-mesh",
        ] {
            assert!(rule.is_excluded(ns), "{ns}");
        }
        assert!(!rule.is_excluded("default"));
        assert!(rule.is_managed("istio.io/rev"));
        assert!(!rule.is_managed("app"));
        assert_eq!(rule.excluded_namespaces().count(), 4);
    }

    #[test]
    fn rule_annotations_are_keys_of_the_group() {
        for key in [MANAGED_LABELS_ANNOTATION, EXCLUDED_NAMESPACES_ANNOTATION] {
            assert_eq!(
                key.split_once('/').map(|(group, _)| group),
                Some(crate::GROUP)
            );
        }
        assert_eq!(MANAGED_LABELS_ANNOTATION, "kubectl-mesh.io/managed-labels");
        assert_eq!(
            EXCLUDED_NAMESPACES_ANNOTATION,
            "kubectl-mesh.io/excluded-namespaces"
        );
    }

    #[test]
    fn custom_rule_never_manages_metadata_name() {
        let rule = SyncRule::new(
            [
                "istio.io/rev".to_owned(),
                METADATA_NAME_LABEL.to_owned(),
                String::new(),
            ],
            ["infra".to_owned()],
        );
        assert_eq!(rule.managed_keys().collect::<Vec<_>>(), ["istio.io/rev"]);
        assert!(!rule.is_managed(METADATA_NAME_LABEL));
        assert!(!rule.is_managed("istio-injection"));
        assert!(rule.is_excluded("infra"));
        assert!(!rule.is_excluded("kube-system"));
    }

    #[test]
    fn managed_of_keeps_only_managed_keys() {
        let rule = SyncRule::default();
        let all = labels(&[
            ("istio-injection", "enabled"),
            ("app", "web"),
            (METADATA_NAME_LABEL, "foo"),
        ]);
        assert_eq!(
            rule.managed_of(Some(&all)),
            labels(&[("istio-injection", "enabled")])
        );
        assert!(rule.managed_of(None).is_empty());
    }

    #[test]
    fn desired_follows_the_primary() {
        let rule = SyncRule::default();
        let primary = ns("foo").label("istio.io/rev", "1-24").label("team", "a");
        assert_eq!(
            rule.desired(Some(&primary)),
            labels(&[("istio.io/rev", "1-24")])
        );
        assert!(rule.desired(None).is_empty(), "absent on the primary");
        assert!(
            rule.desired(Some(&primary.deleting())).is_empty(),
            "being deleted"
        );
        assert!(rule.desired(Some(&ns("foo").label("team", "a"))).is_empty());
    }

    /// Namespace foo with these labels.
    fn foo(pairs: &[(&str, &str)]) -> Namespace {
        pairs
            .iter()
            .fold(ns("foo"), |ns, (key, value)| ns.label(key, value))
    }

    /// The diff of namespace foo that sets `set` and removes `remove`.
    fn foo_diff<const N: usize>(set: &[(&str, &str)], remove: [&str; N]) -> LabelDiff {
        LabelDiff {
            namespace: "foo".into(),
            set: labels(set),
            remove: keys(remove),
        }
    }

    #[test]
    fn default_rule_makes_the_remote_follow_the_primary() {
        // (case, primary, remote, the diff, the diff described, the JSON patch, the remote's
        // labels once patched)
        let cases = [
            (
                "a managed label added",
                foo(&[("istio-injection", "enabled")]),
                foo(&[("app", "web")]).rv("7"),
                foo_diff(&[("istio-injection", "enabled")], []),
                "istio-injection=enabled",
                json!([
                    {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
                    {"op": "add", "path": "/metadata/labels/istio-injection", "value": "enabled"},
                ]),
                labels(&[("app", "web"), ("istio-injection", "enabled")]),
            ),
            (
                "a managed label overwritten",
                foo(&[("istio-injection", "disabled")]),
                foo(&[("istio-injection", "enabled"), ("app", "web")]),
                foo_diff(&[("istio-injection", "disabled")], []),
                "istio-injection=disabled",
                json!([{"op": "replace", "path": "/metadata/labels/istio-injection", "value": "disabled"}]),
                labels(&[("app", "web"), ("istio-injection", "disabled")]),
            ),
            (
                // Unmanaged labels stay as the remote has them, even when they differ from the
                // primary.
                "a managed label missing on the primary removed",
                foo(&[("app", "web")]),
                foo(&[("istio-injection", "enabled"), ("app", "other")]),
                foo_diff(&[], ["istio-injection"]),
                "-istio-injection",
                json!([{"op": "remove", "path": "/metadata/labels/istio-injection"}]),
                labels(&[("app", "other")]),
            ),
            (
                "a revision switch: `/` escaped in the patch",
                foo(&[("istio.io/rev", "1-25")]),
                foo(&[("istio-injection", "enabled"), ("istio.io/rev", "1-24")]).rv("42"),
                foo_diff(&[("istio.io/rev", "1-25")], ["istio-injection"]),
                "istio.io/rev=1-25, -istio-injection",
                json!([
                    {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
                    {"op": "replace", "path": "/metadata/labels/istio.io~1rev", "value": "1-25"},
                    {"op": "remove", "path": "/metadata/labels/istio-injection"},
                ]),
                labels(&[("istio.io/rev", "1-25")]),
            ),
            (
                "only unmanaged labels differ: in sync",
                foo(&[("istio-injection", "enabled"), ("team", "a")]),
                foo(&[("istio-injection", "enabled"), ("team", "b")]),
                foo_diff(&[], []),
                "no change",
                json!([]),
                labels(&[("istio-injection", "enabled"), ("team", "b")]),
            ),
            (
                "the namespace being deleted on the primary: managed labels removed",
                foo(&[("istio-injection", "enabled")]).deleting(),
                foo(&[("istio-injection", "enabled")]),
                foo_diff(&[], ["istio-injection"]),
                "-istio-injection",
                json!([{"op": "remove", "path": "/metadata/labels/istio-injection"}]),
                labels(&[]),
            ),
            (
                "no labels map on the remote: the patch creates it",
                foo(&[("istio.io/rev", "stable")]),
                foo(&[]).rv("3"),
                foo_diff(&[("istio.io/rev", "stable")], []),
                "istio.io/rev=stable",
                json!([
                    {"op": "test", "path": "/metadata/resourceVersion", "value": "3"},
                    {"op": "add", "path": "/metadata/labels", "value": {}},
                    {"op": "add", "path": "/metadata/labels/istio.io~1rev", "value": "stable"},
                ]),
                labels(&[("istio.io/rev", "stable")]),
            ),
        ];
        for (case, primary, remote, expected, described, patch, after) in cases {
            let in_sync = expected.set.is_empty() && expected.remove.is_empty();
            let diff = default_diff(&primary, &remote);
            assert_eq!(diff, expected, "{case}");
            assert_eq!(diff.is_empty(), in_sync, "{case}");
            assert_eq!(diff.describe(), described, "{case}");
            let sent = serde_json::to_value(diff.to_json_patch(&remote)).expect("serializes");
            assert_eq!(sent, patch, "{case}");
            assert_eq!(apply(&diff, &remote).expect("applies"), after, "{case}");
        }
    }

    #[test]
    fn namespace_absent_on_primary_loses_managed_labels() {
        let rule = SyncRule::default();
        let remote = ns("foo")
            .label("istio-injection", "enabled")
            .label("istio.io/dataplane-mode", "ambient")
            .label(METADATA_NAME_LABEL, "foo");
        assert_eq!(
            sync(&rule, None, &remote),
            labels(&[(METADATA_NAME_LABEL, "foo")])
        );
    }

    #[test]
    fn diff_ignores_unmanaged_desired_keys() {
        let rule = SyncRule::default();
        let desired = labels(&[("istio-injection", "enabled"), ("app", "web")]);
        let diff = rule.diff(&desired, &ns("foo"));
        assert_eq!(diff.set, labels(&[("istio-injection", "enabled")]));
    }

    #[test]
    fn patch_skips_ops_already_satisfied_by_current() {
        // A diff computed against an older read: `current` already has part of it.
        let diff = LabelDiff {
            namespace: "foo".into(),
            set: labels(&[("istio-injection", "enabled"), ("istio.io/rev", "canary")]),
            remove: keys(["istio.io/dataplane-mode", "istio.io/rev"]),
        };
        let current = ns("foo").label("istio-injection", "enabled");
        let patch = serde_json::to_value(diff.to_json_patch(&current)).expect("serializes");
        // No remove of the absent dataplane-mode key (it would fail the patch), no no-op
        // replace, and `set` wins over `remove` for istio.io/rev.
        assert_eq!(
            patch,
            json!([{"op": "add", "path": "/metadata/labels/istio.io~1rev", "value": "canary"}])
        );
        // A removal-only diff on a namespace without labels needs no labels map.
        let remove_only = LabelDiff {
            namespace: "foo".into(),
            set: Labels::new(),
            remove: keys(["istio-injection"]),
        };
        assert!(remove_only.to_json_patch(&ns("foo")).is_empty());
    }

    #[test]
    fn patch_test_op_refuses_concurrent_edit() {
        let rule = SyncRule::default();
        let primary = ns("foo").label("istio-injection", "enabled");
        let read = ns("foo").label("app", "web").rv("100");
        let diff = rule.diff(&rule.desired(Some(&primary)), &read);
        let patch = diff.to_json_patch(&read);

        // Someone edited the namespace after our read: the apiserver's copy moved on.
        let mut stored = serde_json::to_value(ns("foo").label("app", "new").rv("101"))
            .expect("namespace serializes");
        let before = stored.clone();
        let err = json_patch::patch(&mut stored, &patch).expect_err("test op must fail");
        assert_eq!(err.operation, 0);
        assert!(matches!(err.kind, json_patch::PatchErrorKind::TestFailed));
        assert_eq!(stored, before, "a refused patch changes nothing");
    }

    #[test]
    fn plan_sorts_remote_into_changes_in_sync_and_missing() {
        let rule = SyncRule::default();
        let primary = primary_of([
            ns("a-synced").label("istio-injection", "enabled"),
            ns("b-drifted").label("istio.io/rev", "1-25"),
            ns("c-gone-soon")
                .label("istio-injection", "enabled")
                .deleting(),
            ns("d-missing").label("istio-injection", "enabled"),
            ns("e-plain").label("team", "x"),
            ns("kube-system").label("istio-injection", "disabled"),
            ns("f-deleting-missing")
                .label("istio-injection", "enabled")
                .deleting(),
        ]);
        let remote = [
            ns("b-drifted").label("istio.io/rev", "1-24"),
            ns("a-synced")
                .label("istio-injection", "enabled")
                .label("x", "y"),
            ns("c-gone-soon").label("istio-injection", "enabled"),
            ns("only-remote").label("istio.io/dataplane-mode", "ambient"),
            ns("only-remote-plain"),
            ns("kube-system").label("istio-injection", "enabled"),
        ];
        let plan = rule.plan(&primary, &remote);
        assert_eq!(
            plan,
            SyncPlan {
                changes: vec![
                    LabelDiff {
                        namespace: "b-drifted".into(),
                        set: labels(&[("istio.io/rev", "1-25")]),
                        remove: BTreeSet::new(),
                    },
                    LabelDiff {
                        namespace: "c-gone-soon".into(),
                        set: Labels::new(),
                        remove: keys(["istio-injection"]),
                    },
                    LabelDiff {
                        namespace: "only-remote".into(),
                        set: Labels::new(),
                        remove: keys(["istio.io/dataplane-mode"]),
                    },
                ],
                in_sync: vec!["a-synced".into(), "only-remote-plain".into()],
                missing: vec!["d-missing".into()],
                out_of_scope: vec![],
            }
        );
        assert!(!plan.is_converged());
    }

    #[test]
    fn plan_of_converged_remote_has_no_changes() {
        let rule = SyncRule::default();
        let primary = primary_of([ns("foo").label("istio-injection", "enabled")]);
        let remote = [ns("foo").label("istio-injection", "enabled")];
        let plan = rule.plan(&primary, &remote);
        assert!(plan.is_converged());
        assert_eq!(plan.in_sync, ["foo"]);
        assert!(plan.missing.is_empty());
    }

    #[test]
    fn plan_respects_custom_exclusions() {
        let rule = SyncRule::new(["istio-injection".to_owned()], ["legacy".to_owned()]);
        let primary = primary_of([ns("legacy").label("istio-injection", "enabled")]);
        let plan = rule.plan(&primary, &[ns("legacy"), ns("kube-system")]);
        // kube-system is no longer excluded by this rule; legacy is, and is not missing either.
        assert_eq!(plan.in_sync, ["kube-system"]);
        assert!(plan.changes.is_empty());
        assert!(plan.missing.is_empty());
    }

    fn scope(exclude: &[&str], selector: Option<&str>) -> NamespaceScope {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            LabelSelector, LabelSelectorRequirement,
        };
        NamespaceScope {
            exclude_namespaces: exclude.iter().map(|n| (*n).to_owned()).collect(),
            namespace_selector: selector.map(|key| LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: key.to_owned(),
                    operator: "DoesNotExist".to_owned(),
                    values: None,
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn scope_leaves_excluded_and_unselected_remote_namespaces_alone() {
        let rule = SyncRule::default()
            .within(&scope(&["gateways"], Some("platform/owned")))
            .unwrap();
        let primary = primary_of([ns("shop").label("istio-injection", "enabled")]);
        let remote = [
            ns("gateways").label("istio-injection", "enabled"),
            ns("infra")
                .label("platform/owned", "yes")
                .label("istio.io/rev", "canary"),
            ns("shop"),
            ns("kube-system").label("istio-injection", "enabled"),
        ];
        let plan = rule.plan(&primary, &remote);
        assert_eq!(plan.out_of_scope, ["gateways", "infra"]);
        assert_eq!(plan.changes.len(), 1, "{plan:?}");
        assert_eq!(plan.changes[0].namespace, "shop");
        assert!(rule.is_out_of_scope("gateways") && rule.is_excluded("gateways"));
        assert!(rule.excluded_namespaces().any(|n| n == "gateways"));
        assert!(!rule.is_out_of_scope("kube-system"));
        assert!(rule.selects_by_labels());
    }

    #[test]
    fn scope_excluded_namespace_is_never_missing() {
        let rule = SyncRule::default().within(&scope(&["shop"], None)).unwrap();
        let primary = primary_of([ns("shop").label("istio-injection", "enabled")]);
        let plan = rule.plan(&primary, &[]);
        assert!(plan.missing.is_empty(), "{plan:?}");
        assert!(!rule.selects_by_labels());
    }

    #[test]
    fn scope_selector_on_a_managed_key_is_refused() {
        let error = SyncRule::default()
            .within(&scope(&[], Some("istio.io/rev")))
            .unwrap_err();
        assert!(error.to_string().contains("istio.io/rev"), "{error}");
    }

    #[test]
    fn synced_remote_equals_primary_on_managed_keys() {
        // Every combination of managed labels on both sides converges in one patch.
        let rule = SyncRule::default();
        let values = [None, Some("a"), Some("b")];
        for p in values {
            for r in values {
                for other in [None, Some("enabled")] {
                    let mut primary = ns("foo").label("owner", "primary");
                    let mut remote = ns("foo").label("owner", "remote").rv("9");
                    if let Some(v) = p {
                        primary = primary.label("istio.io/rev", v);
                    }
                    if let Some(v) = r {
                        remote = remote.label("istio.io/rev", v);
                    }
                    if let Some(v) = other {
                        remote = remote.label("istio-injection", v);
                    }
                    let after = sync(&rule, Some(&primary), &remote);
                    assert_eq!(
                        rule.managed_of(Some(&after)),
                        rule.desired(Some(&primary)),
                        "{p:?} {r:?} {other:?}"
                    );
                    assert_eq!(after.get("owner").map(String::as_str), Some("remote"));
                }
            }
        }
    }

    /// Properties of the rule's patches over arbitrary label maps, applied with the json-patch
    /// crate to the namespace as JSON, as the apiserver applies a JSON patch.
    ///
    /// Case counts: [`crate::fixtures::proptest_config`].
    mod properties {
        use super::*;
        use crate::fixtures::ns;
        use proptest::{prelude::*, test_runner::TestCaseError};

        /// Keys a custom rule may manage besides the default ones: `~` and `/` both need
        /// escaping in a JSON pointer.
        const CUSTOM_KEYS: [&str; 5] = [
            "istio-injection",
            "istio.io/rev",
            "istio.io/dataplane-mode",
            "example.com/mesh~tier",
            "team",
        ];

        /// The default rule, or a custom one managing some of [`CUSTOM_KEYS`] (and naming the
        /// apiserver's own label, which no rule may manage).
        fn rule() -> impl Strategy<Value = SyncRule> {
            prop_oneof![
                Just(SyncRule::default()),
                proptest::sample::subsequence(CUSTOM_KEYS.to_vec(), 1..=CUSTOM_KEYS.len())
                    .prop_map(|keys| {
                        let keys = keys.into_iter().chain([METADATA_NAME_LABEL]);
                        SyncRule::new(keys.map(str::to_owned), [])
                    }),
            ]
        }

        /// Mostly keys some rule manages (and the apiserver's own), sometimes any other key.
        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => proptest::sample::select(
                    CUSTOM_KEYS.iter().chain(&[METADATA_NAME_LABEL]).copied().collect::<Vec<_>>()
                )
                .prop_map(str::to_owned),
                1 => "[a-z]{1,3}(\\.io/[a-z]{1,3})?",
            ]
        }

        /// Few distinct values (the empty one included), so that the primary's and the
        /// remote's often agree.
        fn labels() -> impl Strategy<Value = Labels> {
            proptest::collection::btree_map(key(), "[ab]{0,2}", 0..6)
        }

        /// The primary's namesake: absent, being deleted, or present with `labels`.
        fn primary() -> impl Strategy<Value = Option<Namespace>> {
            prop_oneof![
                1 => Just(None),
                1 => labels().prop_map(|l| Some(with_labels(Some(l), None).deleting())),
                4 => labels().prop_map(|l| Some(with_labels(Some(l), None))),
            ]
        }

        /// A remote namespace, `/metadata/labels` absent in some cases, with or without a
        /// resourceVersion.
        fn remote() -> impl Strategy<Value = Namespace> {
            (
                proptest::option::weighted(0.8, labels()),
                proptest::option::of("[1-9][0-9]{0,3}"),
            )
                .prop_map(|(labels, rv)| with_labels(labels, rv))
        }

        fn with_labels(labels: Option<Labels>, rv: Option<String>) -> Namespace {
            let mut namespace = ns("shop");
            namespace.metadata.labels = labels;
            namespace.metadata.resource_version = rv;
            namespace
        }

        /// The labels of a namespace as JSON; none when `/metadata/labels` is absent.
        fn labels_of(doc: &Value) -> Labels {
            doc.pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string label").to_owned()))
                .collect()
        }

        /// Everything of a namespace as JSON but its labels.
        fn without_labels(doc: &Value) -> Value {
            let mut doc = doc.clone();
            doc["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("labels");
            doc
        }

        /// After a patch was applied: the managed labels are exactly `desired`, every other
        /// label and the rest of the namespace are as before.
        fn assert_converged(
            rule: &SyncRule,
            desired: &Labels,
            before: &Value,
            after: &Value,
        ) -> Result<(), TestCaseError> {
            let (was, now) = (labels_of(before), labels_of(after));
            prop_assert_eq!(&rule.managed_of(Some(&now)), desired);
            for key in was.keys().chain(now.keys()) {
                if !rule.is_managed(key) {
                    prop_assert_eq!(was.get(key), now.get(key), "unmanaged {} changed", key);
                }
            }
            prop_assert_eq!(without_labels(after), without_labels(before));
            Ok(())
        }

        proptest! {
            #![proptest_config(crate::fixtures::proptest_config())]

            #[test]
            fn sync_patch_yields_the_desired_managed_labels_and_nothing_else(
                rule in rule(),
                primary in primary(),
                remote in remote(),
            ) {
                let desired = rule.desired(primary.as_ref());
                let diff = rule.diff(&desired, &remote);
                prop_assert_eq!(
                    diff.is_empty(),
                    rule.managed_of(remote.metadata.labels.as_ref()) == desired
                );
                let patch = diff.to_json_patch(&remote);
                let before = serde_json::to_value(&remote).expect("namespace serializes");
                let mut after = before.clone();
                json_patch::patch(&mut after, &patch)
                    .map_err(|e| TestCaseError::fail(format!("patch {patch:?} refused: {e}")))?;
                assert_converged(&rule, &desired, &before, &after)?;

                // Computed from a read that is no longer current: refused, nothing changed.
                if let Some(rv) = &remote.metadata.resource_version {
                    let mut moved = before.clone();
                    moved["metadata"]["resourceVersion"] = Value::String(format!("{rv}0"));
                    let unchanged = moved.clone();
                    prop_assert!(json_patch::patch(&mut moved, &patch).is_err());
                    prop_assert_eq!(moved, unchanged);
                }
            }

            #[test]
            fn guarded_push_applies_iff_the_remote_carries_the_expected_labels(
                rule in rule(),
                primary in primary(),
                remote in remote(),
                other in labels(),
                from_remote in any::<bool>(),
            ) {
                // What the primary had before the change: often what the remote carries (the
                // converged case the guarded patch bets on), else anything.
                let expected = if from_remote {
                    remote.metadata.labels.clone().unwrap_or_default()
                } else {
                    other
                };
                let desired = rule.desired(primary.as_ref());
                let patch = rule.guarded_patch(&expected, &desired);
                let before = serde_json::to_value(&remote).expect("namespace serializes");
                let mut after = before.clone();
                let applied = json_patch::patch(&mut after, &patch).is_ok();
                // Without a labels map nothing can be added into it, so the patch is refused
                // and the push reads and diffs instead (real apiservers label every namespace
                // with kubernetes.io/metadata.name, so the map is always there).
                let carries_expected = remote.metadata.labels.as_ref().is_some_and(|labels| {
                    rule.managed_of(Some(&expected))
                        .iter()
                        .all(|(key, value)| labels.get(key) == Some(value))
                });
                prop_assert_eq!(applied, carries_expected, "patch {:?}", patch);
                if applied {
                    assert_converged(&rule, &desired, &before, &after)?;
                } else {
                    prop_assert_eq!(after, before, "a refused patch changes nothing");
                }
            }
        }
    }
}
