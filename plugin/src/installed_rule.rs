//! The sync rule of an installation: chosen by `kubectl mesh install --managed-labels
//! --excluded-namespaces`, rendered into the webhook configuration's matchConditions and the
//! webhook's environment, recorded in two annotations of that configuration, and read back from
//! them by `status`, `sync`, `check` and `detach --strip-labels`, so that every command applies
//! the rule the webhook runs with.
//!
//! Everything here is pure; [`crate::mesh_state::rule`] does the reading.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::Container;
use mesh_core::{EXCLUDED_NAMESPACES_ENV, MANAGED_LABELS_ENV};

use crate::object_names::{dns_label_problem, label_key_problem};
use mesh_core::{
    MESH_NAMESPACE,
    labels::{
        DEFAULT_EXCLUDED_NAMESPACES, DEFAULT_MANAGED_LABELS, EXCLUDED_NAMESPACES_ANNOTATION,
        MANAGED_LABELS_ANNOTATION, METADATA_NAME_LABEL, SyncRule,
    },
};

/// Flag of the managed label keys, in `install` and in `mesh-webhook`.
pub const MANAGED_LABELS_FLAG: &str = "--managed-labels";
/// Flag of the excluded namespaces, in `install` and in `mesh-webhook`.
pub const EXCLUDED_NAMESPACES_FLAG: &str = "--excluded-namespaces";

/// The default of `--managed-labels`, comma-joined as the flag takes it (and `--help` shows it).
pub static DEFAULT_MANAGED_LABELS_LIST: LazyLock<String> =
    LazyLock::new(|| DEFAULT_MANAGED_LABELS.join(","));
/// The default of `--excluded-namespaces`, comma-joined.
pub static DEFAULT_EXCLUDED_NAMESPACES_LIST: LazyLock<String> =
    LazyLock::new(|| DEFAULT_EXCLUDED_NAMESPACES.join(","));

/// The default rule's managed label keys and excluded namespaces, as the lists an
/// installation's options hold.
pub fn default_lists() -> (Vec<String>, Vec<String>) {
    (
        DEFAULT_MANAGED_LABELS.map(String::from).into(),
        DEFAULT_EXCLUDED_NAMESPACES.map(String::from).into(),
    )
}

/// A rule flag of `install` that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `--managed-labels` is empty.
    #[error("--managed-labels names no label")]
    NoManagedLabel,
    /// A managed label key is not a Kubernetes label key.
    #[error("invalid --managed-labels key {key:?}: {why}")]
    LabelKey {
        /// The key given.
        key: String,
        /// Which rule it breaks.
        why: String,
    },
    /// The label the apiserver sets on every namespace.
    #[error(
        "--managed-labels cannot include {METADATA_NAME_LABEL}: every apiserver sets it to the namespace's own name"
    )]
    MetadataNameLabel,
    /// An excluded namespace is not a namespace name.
    #[error("invalid --excluded-namespaces name {name:?}: {why}")]
    Namespace {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        why: String,
    },
}

impl Error {
    /// What the user can do about it.
    pub fn hint(&self) -> String {
        match self {
            Self::NoManagedLabel | Self::LabelKey { .. } => format!(
                "pass label keys separated by commas, e.g. {MANAGED_LABELS_FLAG} {}",
                *DEFAULT_MANAGED_LABELS_LIST
            ),
            Self::MetadataNameLabel => format!("leave it out of {MANAGED_LABELS_FLAG}"),
            Self::Namespace { .. } => format!(
                "pass namespace names (lowercase letters, digits and '-') separated by commas, \
                 e.g. {EXCLUDED_NAMESPACES_FLAG} kube-system,kube-public"
            ),
        }
    }
}

/// The managed label keys of `--managed-labels`: trimmed, empty items and repeats dropped, in
/// the order given. Each must be a Kubernetes label key, and at least one must be left.
pub fn managed_labels(keys: &[String]) -> Result<Vec<String>, Error> {
    let keys = cleaned(keys);
    for key in &keys {
        if key == METADATA_NAME_LABEL {
            return Err(Error::MetadataNameLabel);
        }
        if let Some(why) = label_key_problem(key) {
            return Err(Error::LabelKey {
                key: key.clone(),
                why,
            });
        }
    }
    if keys.is_empty() {
        return Err(Error::NoManagedLabel);
    }
    Ok(keys)
}

/// The excluded namespaces of `--excluded-namespaces`, cleaned as [`managed_labels`] does,
/// with the mesh namespace added when missing: the webhook never syncs its own namespace
/// whatever it is told, so the matchConditions and the recorded rule say so too.
pub fn excluded_namespaces(names: &[String]) -> Result<Vec<String>, Error> {
    let mut names = cleaned(names);
    for name in &names {
        if let Some(why) = dns_label_problem(name) {
            return Err(Error::Namespace {
                name: name.clone(),
                why,
            });
        }
    }
    if !names.iter().any(|n| n == MESH_NAMESPACE) {
        names.push(MESH_NAMESPACE.to_owned());
    }
    Ok(names)
}

/// Trimmed, non-empty, first occurrence only, in the order given.
fn cleaned(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        if !out.iter().any(|seen| seen == item) {
            out.push(item.to_owned());
        }
    }
    out
}

/// The annotations recording a rule on the webhook configuration.
pub fn annotations(managed: &[String], excluded: &[String]) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_LABELS_ANNOTATION.to_owned(), managed.join(",")),
        (
            EXCLUDED_NAMESPACES_ANNOTATION.to_owned(),
            excluded.join(","),
        ),
    ])
}

/// The rule the webhook configuration's `annotations` record.
///
/// Without the managed-labels annotation (an install by an older kubectl-mesh, which always
/// ran the webhook with the defaults, or no install at all) the default rule. Parsed as the
/// webhook parses its flags, mesh namespace added, so that both arrive at the same rule.
pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> SyncRule {
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    rule_of(
        get(MANAGED_LABELS_ANNOTATION),
        get(EXCLUDED_NAMESPACES_ANNOTATION),
    )
}

/// The rule a `mesh-webhook` container runs with, from its arguments and environment as the
/// webhook's own parser reads them (a flag wins over its variable; neither means the default).
/// `None` when a variable is set through `valueFrom`, which cannot be read from the spec.
pub fn from_container(container: &Container) -> Option<SyncRule> {
    let args = container.args.as_deref().unwrap_or_default();
    let env = container.env.as_deref().unwrap_or_default();
    let setting = |flag: &str, var: &str| -> Option<Option<String>> {
        if let Some(value) = flag_value(args, flag) {
            return Some(Some(value));
        }
        match env.iter().rev().find(|e| e.name == var) {
            None => Some(None),
            Some(e) if e.value_from.is_some() => None,
            // An empty variable is no setting at all for clap: the default applies.
            Some(e) => Some(e.value.clone().filter(|v| !v.is_empty())),
        }
    };
    let managed = setting(MANAGED_LABELS_FLAG, MANAGED_LABELS_ENV)?;
    let excluded = setting(EXCLUDED_NAMESPACES_FLAG, EXCLUDED_NAMESPACES_ENV)?;
    Some(rule_of(managed.as_deref(), excluded.as_deref()))
}

/// The value of the last `--flag=value` or `--flag value` in `args`.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut found = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == flag {
            found = args.next().cloned();
        } else if let Some(value) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            found = Some(value.to_owned());
        }
    }
    found
}

/// The rule of comma-separated lists, `None` for a list left at its default. The mesh
/// namespace is always excluded, as the webhook does; a list naming no usable label key yields
/// the default rule, as a webhook refuses to start without one.
fn rule_of(managed: Option<&str>, excluded: Option<&str>) -> SyncRule {
    let split = |list: &str| -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let (default_managed, default_excluded) = default_lists();
    let managed = managed.map_or(default_managed, split);
    let mut excluded = excluded.map_or(default_excluded, split);
    excluded.push(MESH_NAMESPACE.to_owned());
    let rule = SyncRule::new(managed, excluded);
    if rule.managed_keys().next().is_none() {
        return SyncRule::default();
    }
    rule
}

/// The `mesh-webhook` flags that differ from its defaults for this rule, e.g.
/// `--managed-labels a,b`: what a webhook run outside the cluster must be started with.
/// Empty for the default rule.
pub fn webhook_flags(managed: &[String], excluded: &[String]) -> String {
    let same = |given: &[String], default: &[&str]| {
        let mut given: Vec<&str> = given.iter().map(String::as_str).collect();
        let mut default = default.to_vec();
        given.sort_unstable();
        default.sort_unstable();
        given == default
    };
    let mut flags = Vec::new();
    if !same(managed, &DEFAULT_MANAGED_LABELS) {
        flags.push(format!("{MANAGED_LABELS_FLAG} {}", managed.join(",")));
    }
    if !same(excluded, &DEFAULT_EXCLUDED_NAMESPACES) {
        flags.push(format!("{EXCLUDED_NAMESPACES_FLAG} {}", excluded.join(",")));
    }
    flags.join(" ")
}

/// A rule as one line, for messages: `managed a, b; excluded x, y`.
pub fn describe(rule: &SyncRule) -> String {
    format!(
        "managed {}; excluded {}",
        rule.managed_keys().collect::<Vec<_>>().join(", "),
        rule.excluded_namespaces().collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::env_from_field;
    use k8s_openapi::api::core::v1::EnvVar;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn keys(rule: &SyncRule) -> Vec<&str> {
        rule.managed_keys().collect()
    }

    fn excluded(rule: &SyncRule) -> Vec<&str> {
        rule.excluded_namespaces().collect()
    }

    #[test]
    fn managed_labels_are_cleaned_and_validated() {
        assert_eq!(
            managed_labels(&strings(&[
                " team.example.com/zone",
                "",
                "istio-injection",
                "team.example.com/zone"
            ])),
            Ok(strings(&["team.example.com/zone", "istio-injection"]))
        );
        assert_eq!(
            managed_labels(&strings(&["A_b.c-9", "x/Y"])),
            Ok(strings(&["A_b.c-9", "x/Y"]))
        );
        assert_eq!(managed_labels(&[]), Err(Error::NoManagedLabel));
        assert_eq!(
            managed_labels(&strings(&["", " "])),
            Err(Error::NoManagedLabel)
        );
        assert_eq!(
            managed_labels(&strings(&["kubernetes.io/metadata.name"])),
            Err(Error::MetadataNameLabel)
        );
        for (bad, why) in [
            ("has space", "the name may hold only"),
            ("-lead", "start and end"),
            ("trail.", "start and end"),
            ("/name", "prefix before '/' is empty"),
            ("prefix/", "the name is empty"),
            ("a/b/c", "the name may hold only"),
            ("Example.com/x", "its prefix is not a DNS subdomain"),
            ("example..com/x", "its prefix is not a DNS subdomain"),
        ] {
            let err = managed_labels(&strings(&["istio-injection", bad])).unwrap_err();
            let line = err.to_string();
            assert!(
                line.starts_with(&format!("invalid --managed-labels key {bad:?}: ")),
                "{line}"
            );
            assert!(line.contains(why), "{bad}: {line}");
        }
        let long = "a".repeat(64);
        assert!(managed_labels(&[long]).is_err());
        assert!(managed_labels(&[format!("{}/x", "a".repeat(254))]).is_err());
    }

    #[test]
    fn rule_errors_are_one_line_with_a_hint() {
        for err in [
            Error::NoManagedLabel,
            Error::MetadataNameLabel,
            managed_labels(&strings(&["bad key"])).unwrap_err(),
            excluded_namespaces(&strings(&["Bad"])).unwrap_err(),
        ] {
            let hint = err.hint();
            let line = crate::Error::from(err).line();
            assert!(!line.contains('\n'), "{line}");
            assert!(line.ends_with(&format!("; {hint}")), "{line}");
        }
        assert_eq!(
            crate::Error::from(Error::NoManagedLabel).line(),
            "--managed-labels names no label; pass label keys separated by commas, e.g. \
             --managed-labels istio-injection,istio.io/rev,istio.io/dataplane-mode"
        );
    }

    #[test]
    fn excluded_namespaces_always_hold_the_mesh_namespace() {
        assert_eq!(
            excluded_namespaces(&strings(&["legacy", " legacy", "kube-system"])),
            Ok(strings(&["legacy", "kube-system", "kubectl-mesh"]))
        );
        assert_eq!(excluded_namespaces(&[]), Ok(strings(&["kubectl-mesh"])));
        let defaults = DEFAULT_EXCLUDED_NAMESPACES.map(String::from);
        assert_eq!(excluded_namespaces(&defaults), Ok(defaults.to_vec()));
        for bad in ["Upper", "under_score", "-lead", "a.b"] {
            let err = excluded_namespaces(&strings(&[bad])).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid --excluded-namespaces name {bad:?}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn annotations_round_trip_to_the_rule() {
        let managed = strings(&["team.example.com/zone", "istio-injection"]);
        let excluded_ns = strings(&["legacy", "kubectl-mesh"]);
        let recorded = annotations(&managed, &excluded_ns);
        assert_eq!(
            recorded,
            BTreeMap::from([
                (
                    "kubectl-mesh.io/managed-labels".to_owned(),
                    "team.example.com/zone,istio-injection".to_owned()
                ),
                (
                    "kubectl-mesh.io/excluded-namespaces".to_owned(),
                    "legacy,kubectl-mesh".to_owned()
                ),
            ])
        );
        let rule = from_annotations(Some(&recorded));
        assert_eq!(keys(&rule), ["istio-injection", "team.example.com/zone"]);
        assert_eq!(excluded(&rule), ["kubectl-mesh", "legacy"]);
        assert!(!rule.is_managed("istio.io/rev"));
        assert!(!rule.is_excluded("kube-system"));
    }

    #[test]
    fn missing_annotations_mean_the_default_rule() {
        assert_eq!(from_annotations(None), SyncRule::default());
        assert_eq!(
            from_annotations(Some(&BTreeMap::new())),
            SyncRule::default()
        );
        let other = BTreeMap::from([("a".to_owned(), "b".to_owned())]);
        assert_eq!(from_annotations(Some(&other)), SyncRule::default());
        // Only the labels recorded: the default exclusions.
        let only_labels = BTreeMap::from([(MANAGED_LABELS_ANNOTATION.to_owned(), "x".to_owned())]);
        let rule = from_annotations(Some(&only_labels));
        assert_eq!(keys(&rule), ["x"]);
        assert_eq!(
            excluded(&rule),
            excluded(&SyncRule::default()),
            "default exclusions"
        );
        // A list without a usable key, as a hand edit could leave it: the webhook would not
        // start with it, the default rule is the best guess.
        for value in ["", " , ", "kubernetes.io/metadata.name"] {
            let broken = BTreeMap::from([(MANAGED_LABELS_ANNOTATION.to_owned(), value.to_owned())]);
            assert_eq!(
                from_annotations(Some(&broken)),
                SyncRule::default(),
                "{value:?}"
            );
        }
        // Recorded without the mesh namespace (a hand edit): the webhook excludes it anyway.
        let without_mesh = BTreeMap::from([
            (MANAGED_LABELS_ANNOTATION.to_owned(), "x, y".to_owned()),
            (EXCLUDED_NAMESPACES_ANNOTATION.to_owned(), "".to_owned()),
        ]);
        let rule = from_annotations(Some(&without_mesh));
        assert_eq!(keys(&rule), ["x", "y"]);
        assert_eq!(excluded(&rule), ["kubectl-mesh"]);
    }

    fn container(args: &[&str], env: &[(&str, &str)]) -> Container {
        Container {
            args: Some(strings(args)),
            env: Some(
                env.iter()
                    .map(|(name, value)| EnvVar {
                        name: (*name).to_owned(),
                        value: Some((*value).to_owned()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn container_rule_reads_flags_over_environment() {
        assert_eq!(
            from_container(&container(&["--listen=0.0.0.0:8443"], &[])),
            Some(SyncRule::default())
        );
        let from_env = from_container(&container(
            &[],
            &[
                (MANAGED_LABELS_ENV, "a,b"),
                (EXCLUDED_NAMESPACES_ENV, "legacy"),
            ],
        ))
        .unwrap();
        assert_eq!(keys(&from_env), ["a", "b"]);
        assert_eq!(excluded(&from_env), ["kubectl-mesh", "legacy"]);
        let flags_win = from_container(&container(
            &["--managed-labels", "c", "--excluded-namespaces=x"],
            &[(MANAGED_LABELS_ENV, "a,b")],
        ))
        .unwrap();
        assert_eq!(keys(&flags_win), ["c"]);
        assert_eq!(excluded(&flags_win), ["kubectl-mesh", "x"]);
        let empty = from_container(&container(&[], &[(MANAGED_LABELS_ENV, "")])).unwrap();
        assert_eq!(empty, SyncRule::default());

        let mut unreadable = container(&[], &[]);
        unreadable.env = Some(vec![env_from_field(
            MANAGED_LABELS_ENV,
            "metadata.annotations['x']",
        )]);
        assert_eq!(from_container(&unreadable), None);
    }

    #[test]
    fn webhook_flags_name_what_differs_from_the_defaults() {
        let managed = DEFAULT_MANAGED_LABELS.map(String::from);
        let excluded_ns = DEFAULT_EXCLUDED_NAMESPACES.map(String::from);
        assert_eq!(webhook_flags(&managed, &excluded_ns), "");
        let mut reordered = managed.to_vec();
        reordered.reverse();
        assert_eq!(webhook_flags(&reordered, &excluded_ns), "");
        assert_eq!(
            webhook_flags(&strings(&["a", "b"]), &excluded_ns),
            "--managed-labels a,b"
        );
        assert_eq!(
            webhook_flags(&strings(&["a"]), &strings(&["x", "kubectl-mesh"])),
            "--managed-labels a --excluded-namespaces x,kubectl-mesh"
        );
    }

    #[test]
    fn describe_lists_both_sets() {
        let rule = SyncRule::new(strings(&["b", "a"]), strings(&["kubectl-mesh"]));
        assert_eq!(describe(&rule), "managed a, b; excluded kubectl-mesh");
    }
}
