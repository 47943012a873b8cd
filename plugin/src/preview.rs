//! What a sync would change on one remote, in the words an admin reviews before it happens:
//! labels added, changed and removed per namespace, the namespaces only the remote has, and
//! those its scope leaves alone. `attach` shows it before its first sync (and asks when labels
//! would be removed or changed), `plan` for every attached cluster at any time. Both compute it
//! here, from the rule's own plan ([`SyncRule::plan`]), so the preview is what a sync then does.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use mesh_core::labels::{Labels, SyncRule};
use serde::Serialize;

/// One remote's preview.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// Name of the cluster.
    pub cluster: String,
    /// With `attach --adopt-remote-labels`: labels copied from the remote to the primary
    /// before the first sync, by namespace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub adopt: Vec<Adoption>,
    /// Remote namespaces whose managed labels a sync writes, by name.
    pub changes: Vec<Change>,
    /// Remote namespaces already carrying the primary's managed labels.
    pub in_sync: usize,
    /// Remote namespaces in the cluster's scope that the primary does not have (their managed
    /// labels are removed).
    pub remote_only: Vec<String>,
    /// Remote namespaces the cluster's scope leaves alone.
    pub out_of_scope: Vec<String>,
    /// Primary namespaces with managed labels that the remote lacks (never created).
    pub missing: Vec<String>,
}

/// Managed labels one namespace takes from the remote onto the primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Adoption {
    pub namespace: String,
    pub labels: Labels,
}

/// What a sync writes on one remote namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    pub namespace: String,
    /// Labels the namespace does not carry yet.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub add: Labels,
    /// Labels whose value changes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub change: BTreeMap<String, ValueChange>,
    /// Labels removed, with the value they had.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub remove: Labels,
}

/// A label value before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ValueChange {
    pub from: String,
    pub to: String,
}

impl Change {
    /// Whether the change takes anything away from the remote (a value changed or removed).
    pub fn is_destructive(&self) -> bool {
        !self.change.is_empty() || !self.remove.is_empty()
    }

    /// `+key=value ~key=old→new -key` as one line.
    pub fn describe(&self) -> String {
        let added = self.add.iter().map(|(k, v)| format!("+{k}={v}"));
        let changed = (self.change.iter()).map(|(k, c)| format!("~{k}={}→{}", c.from, c.to));
        let removed = self.remove.iter().map(|(k, v)| format!("-{k} (was {v})"));
        added
            .chain(changed)
            .chain(removed)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Preview {
    /// The preview of syncing `remote` (every namespace of the remote) against `primary`
    /// under `rule` (narrowed to the cluster's scope). With `adopt`, namespaces on both sides
    /// whose primary copy has no managed label take the remote's first.
    pub fn compute(
        cluster: &str,
        rule: &SyncRule,
        primary: &BTreeMap<String, Namespace>,
        remote: &[Namespace],
        adopt: bool,
    ) -> Self {
        let adoptions = if adopt {
            adoptions(rule, primary, remote)
        } else {
            Vec::new()
        };
        let primary = adopted(primary, &adoptions);
        let plan = rule.plan(&primary, remote);
        let by_name: BTreeMap<String, &Namespace> =
            remote.iter().map(|ns| (ns.name_any(), ns)).collect();
        let changes = plan
            .changes
            .iter()
            .map(|diff| {
                let current = rule.managed_of(
                    by_name
                        .get(&diff.namespace)
                        .and_then(|ns| ns.metadata.labels.as_ref()),
                );
                let mut change = Change {
                    namespace: diff.namespace.clone(),
                    ..Change::default()
                };
                for (key, value) in &diff.set {
                    match current.get(key) {
                        Some(old) => {
                            change.change.insert(
                                key.clone(),
                                ValueChange {
                                    from: old.clone(),
                                    to: value.clone(),
                                },
                            );
                        }
                        None => {
                            change.add.insert(key.clone(), value.clone());
                        }
                    }
                }
                for key in &diff.remove {
                    if let Some(old) = current.get(key) {
                        change.remove.insert(key.clone(), old.clone());
                    }
                }
                change
            })
            .collect();
        // Within the scope, selector included: what it leaves out is `out_of_scope` alone.
        let remote_only = by_name
            .iter()
            .filter(|(name, ns)| !primary.contains_key(*name) && rule.covers(ns))
            .map(|(name, _)| name.clone())
            .collect();
        Self {
            cluster: cluster.to_owned(),
            adopt: adoptions,
            changes,
            in_sync: plan.in_sync.len(),
            remote_only,
            out_of_scope: plan.out_of_scope,
            missing: plan.missing,
        }
    }

    /// Whether a sync would write anything (or adopt anything).
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty() || !self.adopt.is_empty()
    }

    /// The namespaces where a sync would change or remove a label the remote carries.
    pub fn destructive(&self) -> Vec<&str> {
        self.changes
            .iter()
            .filter(|c| c.is_destructive())
            .map(|c| c.namespace.as_str())
            .collect()
    }

    /// The preview as lines for a terminal.
    pub fn lines(&self) -> Vec<String> {
        let cluster = &self.cluster;
        let mut lines = Vec::new();
        for adoption in &self.adopt {
            let labels: Vec<String> = (adoption.labels.iter())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            lines.push(format!(
                "{cluster}: namespace {} on the primary takes {} from the remote",
                adoption.namespace,
                labels.join(", ")
            ));
        }
        for change in &self.changes {
            lines.push(format!(
                "{cluster}: namespace {}: {}",
                change.namespace,
                change.describe()
            ));
        }
        let remote_only = self.remote_only.len();
        let mut summary = format!(
            "{cluster}: {} to write, {} in sync",
            crate::output::plural(self.changes.len(), "namespace"),
            self.in_sync
        );
        if remote_only > 0 {
            summary.push_str(&format!(
                ", {} only on the remote",
                crate::output::plural(remote_only, "namespace")
            ));
        }
        if !self.out_of_scope.is_empty() {
            summary.push_str(&format!(
                ", out of scope: {}",
                mesh_core::printable::few(&self.out_of_scope)
            ));
        }
        if !self.missing.is_empty() {
            summary.push_str(&format!(
                ", absent there: {}",
                mesh_core::printable::few(&self.missing)
            ));
        }
        lines.push(summary);
        lines
    }
}

/// Namespaces on both sides, in the rule's reach on the remote, that carry managed labels
/// there and none on the primary (which is not deleting them).
fn adoptions(
    rule: &SyncRule,
    primary: &BTreeMap<String, Namespace>,
    remote: &[Namespace],
) -> Vec<Adoption> {
    let mut adoptions: Vec<Adoption> = remote
        .iter()
        .filter(|ns| rule.covers(ns))
        .filter_map(|ns| {
            let name = ns.name_any();
            let on_primary = primary.get(&name)?;
            let theirs = rule.managed_of(ns.metadata.labels.as_ref());
            let ours = rule.desired(Some(on_primary));
            (on_primary.metadata.deletion_timestamp.is_none()
                && ours.is_empty()
                && !theirs.is_empty())
            .then_some(Adoption {
                namespace: name,
                labels: theirs,
            })
        })
        .collect();
    adoptions.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    adoptions
}

/// `primary` as it is once `adoptions` are written.
fn adopted(
    primary: &BTreeMap<String, Namespace>,
    adoptions: &[Adoption],
) -> BTreeMap<String, Namespace> {
    let mut primary = primary.clone();
    for adoption in adoptions {
        if let Some(ns) = primary.get_mut(&adoption.namespace) {
            ns.metadata
                .labels
                .get_or_insert_default()
                .extend(adoption.labels.clone());
        }
    }
    primary
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::cluster::NamespaceScope;
    use mesh_core::fixtures::{MetadataExt, by_name, ns};

    fn primary() -> BTreeMap<String, Namespace> {
        by_name([
            ns("shop").label("istio-injection", "enabled"),
            ns("pay").label("istio.io/rev", "stable"),
            ns("batch"),
        ])
    }

    fn remote() -> Vec<Namespace> {
        vec![
            ns("shop"),
            ns("pay").label("istio.io/rev", "canary"),
            ns("batch").label("istio-injection", "enabled"),
            ns("gateways").label("istio-injection", "enabled"),
            ns("kube-system").label("istio-injection", "enabled"),
        ]
    }

    #[test]
    fn preview_sorts_additions_changes_and_removals() {
        let preview = Preview::compute("east", &SyncRule::default(), &primary(), &remote(), false);
        let lines: Vec<String> = preview.changes.iter().map(Change::describe).collect();
        assert_eq!(
            lines,
            [
                "-istio-injection (was enabled)",
                "-istio-injection (was enabled)",
                "~istio.io/rev=canary→stable",
                "+istio-injection=enabled",
            ]
        );
        assert_eq!(preview.destructive(), ["batch", "gateways", "pay"]);
        assert_eq!(preview.remote_only, ["gateways"]);
        assert!(preview.has_changes());
    }

    #[test]
    fn excluded_remote_namespace_is_out_of_scope_not_changed() {
        let scope = NamespaceScope {
            exclude_namespaces: vec!["gateways".into()],
            namespace_selector: None,
        };
        let rule = SyncRule::default().within(&scope).unwrap();
        let preview = Preview::compute("east", &rule, &primary(), &remote(), false);
        assert_eq!(preview.out_of_scope, ["gateways"]);
        assert_eq!(preview.destructive(), ["batch", "pay"]);
        assert!(preview.remote_only.is_empty(), "{preview:?}");
    }

    /// A namespace the selector leaves out was listed as out of scope and as only on the
    /// remote as well.
    #[test]
    fn remote_namespace_left_out_by_the_selector_is_out_of_scope_not_changed() {
        let scope = NamespaceScope {
            exclude_namespaces: Vec::new(),
            namespace_selector: Some(
                crate::namespace_scope::parse_selector("team!=platform").unwrap(),
            ),
        };
        let rule = SyncRule::default().within(&scope).unwrap();
        let mut remote = remote();
        remote[3] = ns("gateways")
            .label("istio-injection", "enabled")
            .label("team", "platform");
        let preview = Preview::compute("east", &rule, &primary(), &remote, false);
        assert_eq!(preview.out_of_scope, ["gateways"]);
        assert_eq!(preview.destructive(), ["batch", "pay"]);
        assert!(preview.remote_only.is_empty(), "{preview:?}");
    }

    #[test]
    fn adoption_takes_remote_labels_where_the_primary_has_none() {
        let preview = Preview::compute("east", &SyncRule::default(), &primary(), &remote(), true);
        // batch: the primary has none, so it takes the remote's; pay keeps the primary's.
        assert_eq!(
            preview.adopt,
            [Adoption {
                namespace: "batch".into(),
                labels: Labels::from([("istio-injection".into(), "enabled".into())]),
            }]
        );
        assert_eq!(preview.destructive(), ["gateways", "pay"]);
        assert_eq!(preview.in_sync, 1, "batch is in sync once adopted");
    }
}
