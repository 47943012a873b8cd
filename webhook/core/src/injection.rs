//! Injection readiness: whether Istio will inject sidecars into pods of a namespace, given the
//! labels it carries and a cluster's MutatingWebhookConfigurations.
//!
//! Syncing `istio.io/rev=canary` to a remote without a canary injector silently leaves new pods
//! there without sidecars. Istio's injectors are admission webhooks selected by the namespace's
//! labels: a revision's configuration (`istio-sidecar-injector[-<rev>]`) and each revision tag's
//! (`istio-revision-tag-<tag>`) hold webhooks whose namespaceSelector picks `istio.io/rev In
//! [<rev or tag>]`, and the default revision's also `istio-injection In [enabled]`. Asking
//! whether some such webhook selects the namespace covers revisions, tags and the default
//! alike, without knowing Istio's naming.
//!
//! Pure: callers fetch the configurations, this module judges.

use std::fmt;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::ResourceExt;

use crate::labels::{Labels, METADATA_NAME_LABEL};

/// Istio's namespace switch: `enabled` asks the default injector, anything else none.
pub const INJECTION_LABEL: &str = "istio-injection";

/// Istio's revision label: the revision (or revision tag) whose injector acts.
pub const REVISION_LABEL: &str = "istio.io/rev";

/// Suffix of the name of every webhook of Istio's sidecar injector, revision tags included.
/// Other webhooks (the mesh's own, a policy engine's) never inject sidecars.
pub const ISTIO_INJECTOR_SUFFIX: &str = "sidecar-injector.istio.io";

/// What a namespace's labels ask of Istio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Injection {
    /// No sidecars: no label, `istio-injection` other than `enabled`.
    None,
    /// `istio-injection=enabled`: the default revision's injector.
    Default,
    /// `istio.io/rev=<revision or tag>` without `istio-injection`.
    Revision(String),
}

impl fmt::Display for Injection {
    /// As warnings name it: `revision canary`, `istio-injection=enabled`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("no injection"),
            Self::Default => write!(f, "{INJECTION_LABEL}=enabled"),
            Self::Revision(revision) => write!(f, "revision {revision}"),
        }
    }
}

/// Both `istio-injection` and `istio.io/rev` are set: Istio obeys the former and ignores
/// the latter, which is rarely what whoever set both meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The value of `istio-injection`, which wins.
    pub injection: String,
    /// The value of `istio.io/rev`, ignored.
    pub revision: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{INJECTION_LABEL}={} overrides {REVISION_LABEL}={}",
            self.injection, self.revision
        )
    }
}

/// What labels ask of Istio, and whether they contradict each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested {
    pub injection: Injection,
    pub conflict: Option<Conflict>,
}

/// What `labels` ask of Istio, with its precedence: `istio-injection` whenever present
/// (Istio's revision webhooks all require it absent), else `istio.io/rev`.
pub fn requested(labels: &Labels) -> Requested {
    let injection = labels.get(INJECTION_LABEL);
    let revision = labels.get(REVISION_LABEL);
    let conflict = injection
        .zip(revision)
        .map(|(injection, revision)| Conflict {
            injection: injection.clone(),
            revision: revision.clone(),
        });
    let injection = match (injection, revision) {
        (Some(value), _) if value == "enabled" => Injection::Default,
        (Some(_), _) => Injection::None,
        (None, Some(revision)) => Injection::Revision(revision.clone()),
        (None, None) => Injection::None,
    };
    Requested {
        injection,
        conflict,
    }
}

/// Whether pods of a namespace will get sidecars.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The labels ask for no injection.
    NotRequested,
    /// These MutatingWebhookConfigurations (by name) inject there.
    Served(Vec<String>),
    /// The labels ask for this injection and no injector acts on it.
    Unserved(Injection),
}

/// Whether some injector of `configs` acts on plain pods created in `namespace`, which carries
/// `labels` (its own name label is added, as the apiserver does, since Istio selects on it).
pub fn readiness(
    namespace: &str,
    labels: &Labels,
    configs: &[MutatingWebhookConfiguration],
) -> Readiness {
    let injection = requested(labels).injection;
    if injection == Injection::None {
        return Readiness::NotRequested;
    }
    let mut labels = labels.clone();
    labels.insert(METADATA_NAME_LABEL.to_owned(), namespace.to_owned());
    let served: Vec<String> = configs
        .iter()
        .filter(|config| {
            config
                .webhooks
                .iter()
                .flatten()
                .any(|webhook| injects_into(webhook, &labels))
        })
        .map(ResourceExt::name_any)
        .collect();
    if served.is_empty() {
        Readiness::Unserved(injection)
    } else {
        Readiness::Served(served)
    }
}

/// Whether `webhook` is an Istio injector that acts on a pod without labels created in a
/// namespace labelled `labels`. A pod must opt out (`sidecar.istio.io/inject=false`) of
/// namespace injection but opt in to Istio's per-pod webhooks: the latter do not count.
fn injects_into(webhook: &MutatingWebhook, labels: &Labels) -> bool {
    webhook.name.ends_with(ISTIO_INJECTOR_SUFFIX)
        && webhook.rules.iter().flatten().any(covers_pod_creation)
        && selects(webhook.namespace_selector.as_ref(), labels)
        && selects(webhook.object_selector.as_ref(), &Labels::new())
}

/// Whether `rule` sends the creation of a core v1 pod to its webhook.
fn covers_pod_creation(rule: &RuleWithOperations) -> bool {
    let has = |values: &Option<Vec<String>>, wanted: &[&str]| {
        values
            .iter()
            .flatten()
            .any(|value| wanted.contains(&value.as_str()))
    };
    has(&rule.api_groups, &["", "*"])
        && has(&rule.api_versions, &["v1", "*"])
        && has(&rule.resources, &["pods", "*", "*/*"])
        && has(&rule.operations, &["CREATE", "*"])
        && rule.scope.as_deref().is_none_or(|scope| scope != "Cluster")
}

/// The container Istio injects, in `containers` or, with native sidecars, `initContainers`.
pub const SIDECAR_CONTAINER: &str = "istio-proxy";

/// A pod's own say on injection (label or annotation): `"false"` opts out whatever its
/// namespace asks.
pub const POD_INJECT_KEY: &str = "sidecar.istio.io/inject";

/// Whether `pod` carries Istio's sidecar.
pub fn has_sidecar(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_CONTAINER)
}

/// Pods of `namespace` whose sidecar contradicts its `labels` (as they are once synced):
/// the labels ask for sidecars and an injector adds them, yet the pod has none; or they ask
/// for none and the pod has one. Such a pod keeps its state until it is recreated.
///
/// `injectors`: the cluster's MutatingWebhookConfigurations, `None` when unknown (the labels
/// are then trusted). Labels asking for sidecars no injector adds make no pod contrary: a
/// restart would not change it. Pods that decide for themselves (`sidecar.istio.io/inject`
/// label `"true"` or `"false"`, annotation `"false"`), finished pods and pods being deleted do
/// not count.
pub fn contrary_pods<'a>(
    namespace: &str,
    labels: &Labels,
    injectors: Option<&[MutatingWebhookConfiguration]>,
    pods: &'a [Pod],
) -> Vec<&'a Pod> {
    let expected = match injectors {
        Some(configs) => match readiness(namespace, labels, configs) {
            Readiness::NotRequested => false,
            Readiness::Served(_) => true,
            Readiness::Unserved(_) => return Vec::new(),
        },
        None => requested(labels).injection != Injection::None,
    };
    pods.iter()
        .filter(|pod| counts(pod) && has_sidecar(pod) != expected)
        .collect()
}

/// Whether a pod's sidecar is its namespace's doing and still matters.
fn counts(pod: &Pod) -> bool {
    let decided = pod.labels().contains_key(POD_INJECT_KEY)
        || pod.annotations().get(POD_INJECT_KEY).map(String::as_str) == Some("false");
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let finished = matches!(phase, Some("Succeeded" | "Failed"));
    !decided && !finished && pod.metadata.deletion_timestamp.is_none()
}

/// Kubernetes label-selector semantics: every `matchLabels` pair and every requirement must
/// hold; no selector (or an empty one) selects everything.
pub fn selects(selector: Option<&LabelSelector>, labels: &Labels) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    pairs
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|requirement| holds(requirement, labels))
}

/// One requirement. An unknown operator holds for nothing, as the apiserver would refuse it.
fn holds(requirement: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let value = labels.get(&requirement.key);
    let listed =
        || value.is_some_and(|value| requirement.values.iter().flatten().any(|v| v == value));
    match requirement.operator.as_str() {
        "In" => listed(),
        "NotIn" => !listed(),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{
        InjectorExt, MetadataExt, PodExt, istio_injector, labels, pod, revision_tag, webhook_config,
    };

    #[test]
    fn istio_injection_takes_precedence_over_the_revision() {
        let both = requested(&labels(&[
            ("istio-injection", "enabled"),
            ("istio.io/rev", "canary"),
        ]));
        assert_eq!(both.injection, Injection::Default);
        assert_eq!(
            both.conflict.map(|c| c.to_string()).as_deref(),
            Some("istio-injection=enabled overrides istio.io/rev=canary")
        );
        let disabled = requested(&labels(&[
            ("istio-injection", "disabled"),
            ("istio.io/rev", "canary"),
        ]));
        assert_eq!(disabled.injection, Injection::None);
        assert!(disabled.conflict.is_some());
        let revision = requested(&labels(&[("istio.io/rev", "canary")]));
        assert_eq!(revision.injection, Injection::Revision("canary".into()));
        assert_eq!(revision.conflict, None);
        assert_eq!(requested(&labels(&[])).injection, Injection::None);
    }

    #[test]
    fn a_namespace_is_served_by_the_injectors_acting_on_its_labels() {
        let served =
            |names: &[&str]| Readiness::Served(names.iter().map(|n| n.to_string()).collect());
        let default = || istio_injector("default");
        let canary = || istio_injector("canary");
        // (case, the namespace's labels, the injectors installed, readiness)
        let cases = [
            (
                "a revision, served by its own injector",
                &[("istio.io/rev", "canary")][..],
                vec![default(), canary()],
                served(&["istio-sidecar-injector-canary"]),
            ),
            (
                "a revision, only the default installed: nothing acts on it",
                &[("istio.io/rev", "canary")],
                vec![default()],
                Readiness::Unserved(Injection::Revision("canary".into())),
            ),
            (
                "the default revision",
                &[("istio.io/rev", "default")],
                vec![default(), canary()],
                served(&["istio-sidecar-injector"]),
            ),
            (
                "istio-injection=enabled, served by the default injector",
                &[("istio-injection", "enabled")],
                vec![default()],
                served(&["istio-sidecar-injector"]),
            ),
            (
                "istio-injection=enabled, a canary alone serves only istio.io/rev=canary",
                &[("istio-injection", "enabled")],
                vec![canary()],
                Readiness::Unserved(Injection::Default),
            ),
            (
                "istio-injection=enabled wins over the revision: the canary does not help",
                &[("istio-injection", "enabled"), ("istio.io/rev", "canary")],
                vec![canary()],
                Readiness::Unserved(Injection::Default),
            ),
            (
                "a revision tag, served by its tag",
                &[("istio.io/rev", "prod")],
                vec![canary(), revision_tag("prod")],
                served(&["istio-revision-tag-prod"]),
            ),
            (
                "a revision neither installed nor tagged",
                &[("istio.io/rev", "stable")],
                vec![canary(), revision_tag("prod")],
                Readiness::Unserved(Injection::Revision("stable".into())),
            ),
            ("nothing requested", &[], vec![], Readiness::NotRequested),
            (
                "injection disabled",
                &[("istio-injection", "disabled")],
                vec![],
                Readiness::NotRequested,
            ),
            (
                "ambient",
                &[("istio.io/dataplane-mode", "ambient")],
                vec![],
                Readiness::NotRequested,
            ),
        ];
        for (case, pairs, injectors, expected) in cases {
            assert_eq!(
                readiness("shop", &labels(pairs), &injectors),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn only_istio_webhooks_on_pod_creation_count() {
        let enabled = labels(&[("istio-injection", "enabled")]);
        let any_pod = |config: MutatingWebhookConfiguration| {
            matches!(readiness("shop", &enabled, &[config]), Readiness::Served(_))
        };
        // Selecting every namespace, but not Istio's: a mesh's own webhook, say.
        assert!(!any_pod(webhook_config("other", "mutate.example.com")));
        assert!(any_pod(webhook_config("mine", "sidecar-injector.istio.io")));
        let on = |operation: &str, resource: &str| {
            webhook_config("mine", "sidecar-injector.istio.io").rule("", operation, resource)
        };
        assert!(!any_pod(on("UPDATE", "pods")));
        assert!(!any_pod(on("CREATE", "services")));
        assert!(any_pod(on("*", "*")));
    }

    #[test]
    fn namespace_selectors_use_the_name_label_and_full_semantics() {
        let enabled = labels(&[("istio-injection", "enabled")]);
        let selecting = |selector: LabelSelector| {
            let config = webhook_config("mine", "sidecar-injector.istio.io").selector(selector);
            matches!(readiness("shop", &enabled, &[config]), Readiness::Served(_))
        };
        let requirement = |key: &str, operator: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: operator.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..LabelSelector::default()
        };
        assert!(selecting(LabelSelector::default()));
        assert!(selecting(requirement(METADATA_NAME_LABEL, "In", &["shop"])));
        assert!(!selecting(requirement(
            METADATA_NAME_LABEL,
            "NotIn",
            &["shop"]
        )));
        assert!(selecting(requirement("istio-injection", "Exists", &[])));
        assert!(!selecting(requirement(
            "istio-injection",
            "DoesNotExist",
            &[]
        )));
        assert!(!selecting(requirement("team", "Exists", &[])));
        assert!(selecting(requirement("team", "NotIn", &["a"])));
        assert!(!selecting(requirement("team", "Bogus", &[])));
        assert!(!selecting(LabelSelector {
            match_labels: Some([("team".to_owned(), "a".to_owned())].into()),
            ..LabelSelector::default()
        }));
    }

    #[test]
    fn pods_contrary_to_their_namespace_need_a_restart() {
        let pods = [
            pod("plain"),
            pod("injected").sidecar(),
            pod("native").native_sidecar(),
            pod("opted-out").label(POD_INJECT_KEY, "false"),
            pod("opted-out-annotation")
                .annotation(POD_INJECT_KEY, "false")
                .sidecar(),
            pod("done").phase("Succeeded"),
            pod("failed").phase("Failed").sidecar(),
        ];
        let names = |found: Vec<&Pod>| found.iter().map(|p| p.name_any()).collect::<Vec<_>>();
        let enabled = labels(&[("istio-injection", "enabled")]);
        let default = [istio_injector("default")];
        // Injection on: pods without istio-proxy (the opted-out one aside) are contrary.
        assert_eq!(
            names(contrary_pods("shop", &enabled, Some(&default), &pods)),
            ["plain"]
        );
        // Injection off: pods with it, as a container or a native sidecar.
        assert_eq!(
            names(contrary_pods("shop", &labels(&[]), Some(&default), &pods)),
            ["injected", "native"]
        );
        // No injector acts on the labels: a restart changes nothing.
        let canary = labels(&[("istio.io/rev", "canary")]);
        assert!(contrary_pods("shop", &canary, Some(&default), &pods).is_empty());
        // Injectors unknown: the labels are trusted.
        assert_eq!(
            names(contrary_pods("shop", &canary, None, &pods)),
            ["plain"]
        );
    }
}
