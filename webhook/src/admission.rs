//! The webhook's decision, pure: an `AdmissionRequest<Namespace>` from the primary becomes an
//! `AdmissionResponse` plus, when managed labels changed, the labels every remote must end with.
//!
//! The HTTP layer parses the review and calls [`review`]; when it yields a [`PushIntent`], the
//! propagation layer pushes it to every attached remote and hands the per-cluster outcomes to
//! [`complete`], which turns them into warnings kubectl prints and an annotation on the primary
//! namespace. The webhook never blocks an edit: the reconciler, not this path, guarantees
//! convergence, so every response here is `allowed`.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::Namespace;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::Value;

use mesh_core::injection::{self, Readiness};
use mesh_core::labels::{Labels, SyncRule};
use mesh_core::printable;

use crate::injectors::ClusterReadiness;
use crate::push_outcome::{PushIntent, PushOutcome, PushResult, summary};

/// Annotation on the primary namespace recording where its last managed-label change landed:
/// a compact JSON object `{"<cluster>": "<result label>"}`.
pub const PROPAGATION_ANNOTATION: &str = "kubectl-mesh.io/propagation";

/// Prefix of every warning, so that users can tell who is talking in kubectl's output.
const WARNING_PREFIX: &str = "kubectl-mesh: ";

/// The apiserver asks for warnings of at most 120 characters and truncates past 256: long
/// remote error texts and cluster lists are shortened to keep lines readable.
const MAX_REASON_BYTES: usize = 80;
const MAX_WARNING_CHARS: usize = 120;

/// What [`review`] decided.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The response to send if nothing is pushed; pass it to [`complete`] otherwise.
    pub response: AdmissionResponse,
    /// The change to push to every remote, if any.
    pub push: Option<PushIntent>,
    /// The managed labels the primary carried before the request: what converged remotes
    /// carry, so what a push expects to replace. Empty when the review is not of a Namespace.
    pub previous: Labels,
}

/// Decides what a namespace admission request means for the remotes.
///
/// Always allowed. Nothing is pushed when the object is not a core `Namespace`, when its
/// managed labels are the same before and after (a deleted or deleting namespace counts as
/// carrying none), when it has no name yet (`generateName`; the reconciler catches it), when it
/// creates a namespace that `exists` (the webhook's view of the primary holds one of the
/// request's name, terminating or not), when it is excluded, or on a dry run (the webhook
/// declares `sideEffects: NoneOnDryRun`).
pub fn review(rule: &SyncRule, req: &AdmissionRequest<Namespace>, exists: bool) -> Decision {
    let mut response = AdmissionResponse::from(req);
    if !req.kind.group.is_empty() || req.kind.kind != "Namespace" {
        return Decision {
            response,
            push: None,
            previous: Labels::new(),
        };
    }

    // `desired` treats a missing object (DELETE) and a deleting one alike: empty.
    let before = rule.desired(req.old_object.as_ref());
    let after = rule.desired(req.object.as_ref());
    let no_push = |response| Decision {
        response,
        push: None,
        previous: before.clone(),
    };
    if before == after {
        return no_push(response);
    }

    let Some(namespace) = namespace_name(req) else {
        return no_push(response);
    };
    // Admission runs before storage: a create of an existing namespace is reviewed with no old
    // object, then fails with AlreadyExists. Its labels must not reach the remotes. Should the
    // view be stale (the namespace just deleted), the reconciler syncs the new one.
    if req.operation == Operation::Create && exists {
        return no_push(response);
    }
    if rule.is_excluded(&namespace) {
        let warning = format!(
            "{WARNING_PREFIX}namespace {namespace} is excluded from sync; remote clusters not changed"
        );
        response.warnings.get_or_insert_default().push(warning);
        return no_push(response);
    }
    if req.dry_run {
        let warning = format!("{WARNING_PREFIX}dry run; remote clusters not changed");
        response.warnings.get_or_insert_default().push(warning);
        return no_push(response);
    }

    Decision {
        response,
        push: Some(PushIntent {
            namespace,
            labels: after,
        }),
        previous: before,
    }
}

/// Adds admission warnings that kubectl prints (where the change landed, where not and why,
/// and where no injector will act on the labels, by `readiness` of the remotes whose
/// injectors are known) and, unless the operation is DELETE, a JSON patch recording the
/// outcome on the primary namespace in [`PROPAGATION_ANNOTATION`].
pub fn complete(
    mut response: AdmissionResponse,
    req: &AdmissionRequest<Namespace>,
    intent: &PushIntent,
    outcomes: &[PushOutcome],
    readiness: &[ClusterReadiness],
) -> AdmissionResponse {
    let warnings = response.warnings.get_or_insert_default();
    warnings.extend(self::warnings(intent, outcomes));
    warnings.extend(injection_warnings(intent, outcomes, readiness));

    // A deleted namespace cannot be patched; on other operations the annotation tells anyone
    // reading the primary where the last change landed, without access to the webhook's logs.
    if req.operation == Operation::Delete {
        return response;
    }
    let Some(object) = req.object.as_ref() else {
        return response;
    };
    let patch = annotation_patch(object, outcomes);
    // Serializing strings and JSON values cannot fail; should it, the warnings still go out.
    response.clone().with_patch(patch).unwrap_or(response)
}

/// The namespace's name: from the object, else the stored object, else the request.
fn namespace_name(req: &AdmissionRequest<Namespace>) -> Option<String> {
    req.object
        .iter()
        .chain(&req.old_object)
        .filter_map(|ns| ns.metadata.name.as_deref())
        .chain([req.name.as_str()])
        .find(|name| !name.is_empty())
        .map(str::to_owned)
}

/// One line per kind of outcome, failures one line per cluster since their reasons differ.
fn warnings(intent: &PushIntent, outcomes: &[PushOutcome]) -> Vec<String> {
    if outcomes.is_empty() {
        return vec![format!(
            "{WARNING_PREFIX}no remote cluster is attached; the change stays on this cluster"
        )];
    }
    let mut sorted: Vec<&PushOutcome> = outcomes.iter().collect();
    sorted.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    // The clusters whose push ended as `wanted`, listed; `None` when there are none.
    let listed = |wanted: fn(&PushResult) -> bool| -> Option<String> {
        let clusters: Vec<&str> = sorted
            .iter()
            .filter(|o| wanted(&o.result))
            .map(|o| o.cluster.as_str())
            .collect();
        (!clusters.is_empty()).then(|| list(&clusters))
    };

    let mut lines = Vec::new();
    if let Some(applied) = listed(|r| matches!(r, PushResult::Applied)) {
        let change = if intent.labels.is_empty() {
            "managed labels removed".to_owned()
        } else {
            format!("{} applied", summary(&intent.labels))
        };
        lines.push(format!("{WARNING_PREFIX}{change} on {applied}"));
    }
    if let Some(in_sync) = listed(|r| matches!(r, PushResult::AlreadyInSync)) {
        lines.push(format!("{WARNING_PREFIX}{in_sync} already in sync"));
    }
    if let Some(missing) = listed(|r| matches!(r, PushResult::NamespaceMissing)) {
        lines.push(format!(
            "{WARNING_PREFIX}{missing}: namespace {} does not exist there (not created)",
            intent.namespace
        ));
    }
    if let Some(out_of_scope) = listed(|r| matches!(r, PushResult::OutOfScope)) {
        lines.push(format!(
            "{WARNING_PREFIX}{out_of_scope}: namespace {} is outside the cluster's scope (left \
             as it is)",
            intent.namespace
        ));
    }
    // A line per cluster that missed, but for those told together: a change that waited past
    // the deadline (above, for the namespace) and the remotes that did not answer (below).
    for outcome in &sorted {
        let grouped = matches!(
            outcome.result,
            PushResult::TimedOut | PushResult::NotWaited | PushResult::Queued
        );
        if let Some(miss) = outcome.result.miss().filter(|_| !grouped) {
            let line = miss.line(&outcome.cluster, MAX_REASON_BYTES);
            lines.push(format!("{WARNING_PREFIX}{line}"));
        }
    }
    if outcomes
        .iter()
        .all(|o| matches!(o.result, PushResult::Superseded))
    {
        lines.push(format!(
            "{WARNING_PREFIX}not pushed: a newer change of namespace {} is pushed instead",
            intent.namespace
        ));
    }
    if outcomes
        .iter()
        .any(|o| matches!(o.result, PushResult::Queued))
    {
        lines.push(format!(
            "{WARNING_PREFIX}not pushed: an earlier change of namespace {} was still being pushed \
             at the deadline; the reconciler will bring this one",
            intent.namespace
        ));
    }
    for silent in [PushResult::TimedOut, PushResult::NotWaited] {
        let clusters = sorted.iter().filter(|o| o.result == silent);
        let clusters: Vec<&str> = clusters.map(|o| o.cluster.as_str()).collect();
        if let Some(miss) = silent.miss().filter(|_| !clusters.is_empty()) {
            let line = miss.line(&list(&clusters), MAX_REASON_BYTES);
            lines.push(format!("{WARNING_PREFIX}{line}"));
        }
    }
    lines
}

/// Istio ignoring `istio.io/rev` for `istio-injection`, and one line per remote where the
/// labels ask for sidecars no injector will add: left out are remotes whose injectors are not
/// known, and those where the namespace does not exist or was not pushed to.
fn injection_warnings(
    intent: &PushIntent,
    outcomes: &[PushOutcome],
    readiness: &[ClusterReadiness],
) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(conflict) = injection::requested(&intent.labels).conflict {
        lines.push(format!(
            "{WARNING_PREFIX}{conflict}: Istio ignores {} while {} is set",
            injection::REVISION_LABEL,
            injection::INJECTION_LABEL
        ));
    }
    let namespace = &intent.namespace;
    for known in readiness {
        let Readiness::Unserved(requested) = &known.readiness else {
            continue;
        };
        let pods_there = outcomes.iter().any(|o| {
            o.cluster == known.cluster
                && !matches!(
                    o.result,
                    PushResult::NamespaceMissing | PushResult::OutOfScope | PushResult::Superseded
                )
        });
        if !pods_there {
            continue;
        }
        let cluster = &known.cluster;
        let line = format!(
            "{WARNING_PREFIX}{cluster}: no injector for {requested}: pods in {namespace} will \
             not get sidecars"
        );
        // Long names: the apiserver truncates past 256 characters, so the tail goes first.
        if line.chars().count() <= MAX_WARNING_CHARS {
            lines.push(line);
        } else {
            lines.push(format!(
                "{WARNING_PREFIX}{cluster}: no injector for {requested}"
            ));
        }
    }
    lines
}

/// `add` of the annotation, after creating the annotations map when the object has none
/// (`add` cannot create intermediate objects). `add` on an existing key replaces it.
fn annotation_patch(object: &Namespace, outcomes: &[PushOutcome]) -> Patch {
    let record: serde_json::Map<String, Value> = outcomes
        .iter()
        .map(|o| (o.cluster.clone(), Value::from(o.result.metric_label())))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let mut ops = Vec::new();
    if object.metadata.annotations.is_none() {
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations"]),
            value: Value::Object(serde_json::Map::new()),
        }));
    }
    ops.push(PatchOperation::Add(AddOperation {
        // Token escaping turns the `/` of the key into `~1`.
        path: PointerBuf::from_tokens(["metadata", "annotations", PROPAGATION_ANNOTATION]),
        value: Value::String(Value::Object(record).to_string()),
    }));
    Patch(ops)
}

/// `a, b, c`, or `a, b, c, d, e and 3 more` past [`printable::FEW`].
fn list(clusters: &[&str]) -> String {
    printable::few(clusters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use kube::core::admission::AdmissionReview;
    use kube::core::{GroupVersionKind, GroupVersionResource, TypeMeta};
    use mesh_core::fixtures::{MetadataExt, NamespaceExt, labels, ns};
    use mesh_core::injection::Injection;
    use serde_json::json;

    const CREATE: &str = include_str!("../tests/fixtures/namespace-create.json");
    const UPDATE: &str = include_str!("../tests/fixtures/namespace-update.json");
    const DELETE: &str = include_str!("../tests/fixtures/namespace-delete.json");
    const DRY_RUN: &str = include_str!("../tests/fixtures/namespace-update-dry-run.json");

    /// Parses a recorded AdmissionReview, checks its operation and reviews it: the answer
    /// carries the request's uid.
    fn review_fixture(
        body: &str,
        operation: Operation,
        uid: &str,
    ) -> (AdmissionRequest<Namespace>, Decision) {
        let review: AdmissionReview<Namespace> =
            serde_json::from_str(body).expect("fixture is an AdmissionReview");
        let req: AdmissionRequest<Namespace> = review.try_into().expect("fixture has a request");
        assert_eq!(req.operation, operation);
        let decision = reviewed(&SyncRule::default(), &req);
        assert_eq!(decision.response.uid, uid);
        (req, decision)
    }

    /// A namespace request as the apiserver would send it, minus what `review` ignores.
    fn request(
        operation: Operation,
        old: Option<Namespace>,
        new: Option<Namespace>,
    ) -> AdmissionRequest<Namespace> {
        let name = new
            .iter()
            .chain(&old)
            .find_map(|ns| ns.metadata.name.clone())
            .unwrap_or_default();
        AdmissionRequest {
            types: TypeMeta {
                api_version: "admission.k8s.io/v1".into(),
                kind: "AdmissionReview".into(),
            },
            uid: "test-uid".into(),
            kind: GroupVersionKind::gvk("", "v1", "Namespace"),
            resource: GroupVersionResource::gvr("", "v1", "namespaces"),
            sub_resource: None,
            request_kind: None,
            request_resource: None,
            request_sub_resource: None,
            name,
            namespace: None,
            operation,
            user_info: UserInfo::default(),
            object: new,
            old_object: old,
            dry_run: false,
            options: None,
        }
    }

    /// [`review`] of `req` with the namespace on the primary unless `req` creates it.
    fn reviewed(rule: &SyncRule, req: &AdmissionRequest<Namespace>) -> Decision {
        review(rule, req, req.operation != Operation::Create)
    }

    fn create(new: Namespace) -> AdmissionRequest<Namespace> {
        request(Operation::Create, None, Some(new))
    }

    fn update(old: Namespace, new: Namespace) -> AdmissionRequest<Namespace> {
        request(Operation::Update, Some(old), Some(new))
    }

    fn delete(old: Namespace) -> AdmissionRequest<Namespace> {
        request(Operation::Delete, Some(old), None)
    }

    fn intent<const N: usize>(namespace: &str, pairs: [(&str, &str); N]) -> PushIntent {
        PushIntent {
            namespace: namespace.into(),
            labels: labels(&pairs),
        }
    }

    fn outcome(cluster: &str, result: PushResult) -> PushOutcome {
        PushOutcome {
            cluster: cluster.into(),
            result,
        }
    }

    fn pushed(req: &AdmissionRequest<Namespace>) -> Option<PushIntent> {
        let decision = reviewed(&SyncRule::default(), req);
        assert!(decision.response.allowed, "the webhook never blocks");
        assert_eq!(decision.response.uid, req.uid);
        decision.push
    }

    /// [`complete`] on a fresh response to `req`.
    fn completed(
        req: &AdmissionRequest<Namespace>,
        intent: &PushIntent,
        outcomes: &[PushOutcome],
        readiness: &[ClusterReadiness],
    ) -> AdmissionResponse {
        complete(
            AdmissionResponse::from(req),
            req,
            intent,
            outcomes,
            readiness,
        )
    }

    /// The creation of namespace foo with `istio-injection=enabled`, and its response
    /// [`completed`] once the push met `outcomes` (no injector known on any remote).
    fn foo_enabled_created(
        outcomes: &[PushOutcome],
    ) -> (AdmissionRequest<Namespace>, AdmissionResponse) {
        let req = create(ns("foo").label("istio-injection", "enabled"));
        let intent = intent("foo", [("istio-injection", "enabled")]);
        let response = completed(&req, &intent, outcomes, &[]);
        (req, response)
    }

    fn warnings_of(response: &AdmissionResponse) -> Vec<String> {
        response.warnings.clone().unwrap_or_default()
    }

    /// Applies the response's patch to the request object, as the apiserver would.
    fn patched(response: &AdmissionResponse, object: &Namespace) -> Namespace {
        let patch: Patch =
            serde_json::from_slice(response.patch.as_deref().expect("response has a patch"))
                .expect("patch is a JSON patch");
        let mut doc = serde_json::to_value(object).expect("namespace serializes");
        json_patch::patch(&mut doc, &patch).expect("patch applies");
        serde_json::from_value(doc).expect("patched namespace parses")
    }

    fn propagation(ns: &Namespace) -> Value {
        let raw = ns
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PROPAGATION_ANNOTATION))
            .expect("annotation recorded");
        serde_json::from_str(raw).expect("annotation is JSON")
    }

    #[test]
    fn what_each_request_pushes() {
        let enabled = || ns("foo").label("istio-injection", "enabled");
        let ambient = |revision| {
            ns("foo")
                .label("istio.io/rev", revision)
                .label("istio.io/dataplane-mode", "ambient")
        };
        let cases = [
            (
                "a create with a managed label",
                create(enabled().label("app", "x")),
                Some(intent("foo", [("istio-injection", "enabled")])),
            ),
            (
                "a create without one",
                create(ns("foo").label("app", "x")),
                None,
            ),
            (
                "a label added",
                update(ns("foo"), enabled()),
                Some(intent("foo", [("istio-injection", "enabled")])),
            ),
            (
                "a label overwritten",
                update(enabled(), ns("foo").label("istio-injection", "disabled")),
                Some(intent("foo", [("istio-injection", "disabled")])),
            ),
            (
                "a label removed: an empty set",
                update(enabled().label("app", "x"), ns("foo").label("app", "x")),
                Some(intent("foo", [])),
            ),
            (
                "a revision switch: the whole managed set",
                update(ambient("1-24"), ambient("1-25")),
                Some(intent(
                    "foo",
                    [
                        ("istio.io/dataplane-mode", "ambient"),
                        ("istio.io/rev", "1-25"),
                    ],
                )),
            ),
            (
                "a delete of a namespace with managed labels: their removal",
                delete(ns("foo").label("istio.io/rev", "1-25")),
                Some(intent("foo", [])),
            ),
            (
                "a delete of one without",
                delete(ns("foo").label("app", "x")),
                None,
            ),
            (
                // Removing a finalizer: the labels of a terminating namespace count as gone.
                "an update of a terminating namespace",
                update(
                    enabled().deleting(),
                    ns("foo").label("istio-injection", "disabled").deleting(),
                ),
                None,
            ),
        ];
        for (case, request, expected) in cases {
            assert_eq!(pushed(&request), expected, "{case}");
        }
    }

    #[test]
    fn a_create_of_a_namespace_the_primary_holds_pushes_nothing() {
        let rule = SyncRule::default();
        let req = create(ns("foo").label("istio-injection", "enabled"));
        // `kubectl create` of an existing namespace: the apiserver will refuse it.
        let decision = review(&rule, &req, true);
        assert_eq!(decision.push, None);
        assert!(decision.response.allowed);
        assert_eq!(decision.response.warnings, None);
        assert!(review(&rule, &req, false).push.is_some());
        // Only a create is refused for existing: an update of the same namespace pushes.
        let req = update(ns("foo"), ns("foo").label("istio-injection", "enabled"));
        assert!(review(&rule, &req, true).push.is_some());
    }

    #[test]
    fn a_push_starts_from_the_managed_labels_before_the_request() {
        let req = update(
            ns("foo")
                .label("istio-injection", "enabled")
                .label("app", "x"),
            ns("foo").label("istio-injection", "disabled"),
        );
        let decision = reviewed(&SyncRule::default(), &req);
        assert!(decision.push.is_some());
        assert_eq!(decision.previous, labels(&[("istio-injection", "enabled")]));
        let created = reviewed(
            &SyncRule::default(),
            &create(ns("foo").label("istio.io/rev", "1")),
        );
        assert!(created.push.is_some());
        assert_eq!(created.previous, Labels::new());
    }

    #[test]
    fn what_is_not_pushed_and_what_the_answer_says() {
        let mut dry_run = update(ns("foo"), ns("foo").label("istio-injection", "enabled"));
        dry_run.dry_run = true;
        let cases = [
            (
                update(
                    ns("foo")
                        .label("istio-injection", "enabled")
                        .label("app", "x"),
                    ns("foo")
                        .label("istio-injection", "enabled")
                        .label("app", "y")
                        .annotation("note", "z"),
                ),
                // Silent when there is nothing to do.
                None,
            ),
            (
                update(
                    ns("kube-system"),
                    ns("kube-system").label("istio-injection", "enabled"),
                ),
                Some(
                    "kubectl-mesh: namespace kube-system is excluded from sync; remote clusters not changed",
                ),
            ),
            (
                dry_run,
                Some("kubectl-mesh: dry run; remote clusters not changed"),
            ),
        ];
        for (request, warning) in cases {
            assert_eq!(pushed(&request), None, "{warning:?}");
            let decision = reviewed(&SyncRule::default(), &request);
            let expected = warning.map(|w| vec![w.to_owned()]);
            assert_eq!(decision.response.warnings, expected);
        }
    }

    #[test]
    fn other_kinds_are_allowed_without_push() {
        let mut req = create(ns("foo").label("istio-injection", "enabled"));
        req.kind = GroupVersionKind::gvk("", "v1", "Pod");
        assert_eq!(pushed(&req), None);
        req.kind = GroupVersionKind::gvk("example.com", "v1", "Namespace");
        assert_eq!(pushed(&req), None);
    }

    #[test]
    fn generated_name_does_not_push() {
        let mut new = ns("").label("istio-injection", "enabled");
        new.metadata.generate_name = Some("ci-".into());
        assert_eq!(pushed(&create(new)), None);
    }

    #[test]
    fn custom_rule_decides_what_is_managed() {
        let rule = SyncRule::new(["team/mesh".to_owned()], []);
        let req = update(
            ns("kube-system"),
            ns("kube-system").label("team/mesh", "on"),
        );
        let decision = reviewed(&rule, &req);
        assert_eq!(
            decision.push,
            Some(intent("kube-system", [("team/mesh", "on")]))
        );
        let req = update(ns("foo"), ns("foo").label("istio-injection", "enabled"));
        assert_eq!(reviewed(&rule, &req).push, None);
    }

    #[test]
    fn complete_groups_warnings() {
        let req = update(ns("foo"), ns("foo").label("istio-injection", "enabled"));
        let intent = intent("foo", [("istio-injection", "enabled")]);
        // What the remotes that did not apply the change said, as the warnings quote it.
        let refused = "connection refused".to_owned();
        let forbidden = "namespaces \"foo\" is forbidden".to_owned();
        let conflict = "conflict:\n  retry".to_owned();
        let missing = "secret kubectl-mesh/cluster-remote-10 not found".to_owned();
        let managed_key = "the namespace selector uses the managed label istio.io/rev".to_owned();
        // (remote, its result, as the propagation annotation records it), out of order.
        let remotes = [
            ("remote-2", PushResult::Applied, "applied"),
            ("remote-1", PushResult::Applied, "applied"),
            ("remote-3", PushResult::NamespaceMissing, "missing"),
            ("remote-4", PushResult::Unreachable(refused), "unreachable"),
            ("remote-5", PushResult::AlreadyInSync, "in_sync"),
            ("remote-6", PushResult::TimedOut, "timed_out"),
            ("remote-7", PushResult::TimedOut, "timed_out"),
            ("remote-8", PushResult::Forbidden(forbidden), "forbidden"),
            ("remote-9", PushResult::Failed(conflict), "failed"),
            (
                "remote-10",
                PushResult::CredentialsUnusable(missing),
                "credentials_unusable",
            ),
            (
                "remote-11",
                PushResult::ScopeUnusable(managed_key),
                "scope_unusable",
            ),
            (
                "remote-12",
                PushResult::CredentialsRefused {
                    message: "401 Unauthorized".into(),
                    expired_at: None,
                },
                "forbidden",
            ),
            (
                "remote-13",
                PushResult::CredentialsRefused {
                    message: "401 Unauthorized".into(),
                    expired_at: Some(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                },
                "forbidden",
            ),
            ("remote-14", PushResult::Reconfiguring, "reconfiguring"),
        ];
        let outcomes: Vec<_> = remotes
            .iter()
            .map(|(remote, result, _)| outcome(remote, result.clone()))
            .collect();
        let response = completed(&req, &intent, &outcomes, &[]);
        assert!(response.allowed);
        assert_eq!(response.uid, "test-uid");
        assert_eq!(
            warnings_of(&response),
            [
                "kubectl-mesh: istio-injection=enabled applied on remote-1, remote-2",
                "kubectl-mesh: remote-5 already in sync",
                "kubectl-mesh: remote-3: namespace foo does not exist there (not created)",
                "kubectl-mesh: remote-10 not pushed: its stored credentials cannot be used (secret kubectl-mesh/cluster-remote-10 not found); `kubectl mesh check` says how to repair them",
                "kubectl-mesh: remote-11 not pushed: its namespace scope cannot be used (the namespace selector uses the managed label istio.io/rev); replace it with `kubectl mesh scope remote-11 --namespace-selector SELECTOR` (a selector without managed label keys, plus any --exclude-namespaces it had) or remove it with `kubectl mesh scope remote-11 --clear`",
                "kubectl-mesh: remote-12 not pushed: it refuses the stored credentials (401 Unauthorized); `kubectl mesh check` says how to repair them",
                "kubectl-mesh: remote-13 not pushed: its stored token expired at 1970-01-01T00:00:00Z; `kubectl mesh rotate remote-13` issues a new one",
                "kubectl-mesh: remote-14 not pushed yet: attached or changed a moment ago, its client is being built; the reconciler brings the change",
                "kubectl-mesh: remote-4 unreachable (connection refused); the reconciler will retry",
                "kubectl-mesh: remote-8 forbids the change (namespaces \"foo\" is forbidden); the reconciler will retry",
                "kubectl-mesh: remote-9 failed (conflict: retry); the reconciler will retry",
                "kubectl-mesh: remote-6, remote-7 did not answer in time; the reconciler will retry",
            ]
        );
        let recorded: serde_json::Map<_, _> = remotes
            .into_iter()
            .map(|(remote, _, recorded)| (remote.to_owned(), recorded.into()))
            .collect();
        let after = patched(&response, req.object.as_ref().expect("object"));
        assert_eq!(propagation(&after), Value::Object(recorded));
    }

    /// A change whose turn to push did not come before the deadline (an earlier push of the
    /// namespace still ran) was said to have met remotes that did not answer in time, though
    /// none was asked.
    #[test]
    fn a_change_that_waited_past_the_deadline_says_it_was_not_pushed() {
        let req = update(ns("foo"), ns("foo").label("istio-injection", "enabled"));
        let intent = intent("foo", [("istio-injection", "enabled")]);
        let outcomes = [
            outcome("remote-1", PushResult::Queued),
            outcome("remote-2", PushResult::Queued),
        ];
        let response = completed(&req, &intent, &outcomes, &[]);
        assert!(response.allowed);
        assert_eq!(
            warnings_of(&response),
            [
                "kubectl-mesh: not pushed: an earlier change of namespace foo was still being \
                 pushed at the deadline; the reconciler will bring this one"
            ]
        );
    }

    fn ready(cluster: &str, readiness: Readiness) -> ClusterReadiness {
        ClusterReadiness {
            cluster: cluster.into(),
            readiness,
        }
    }

    #[test]
    fn complete_names_each_remote_without_an_injector() {
        let req = create(ns("shop").label("istio.io/rev", "canary"));
        let canary = Readiness::Unserved(Injection::Revision("canary".into()));
        let response = completed(
            &req,
            &intent("shop", [("istio.io/rev", "canary")]),
            &[
                outcome("remote-1", PushResult::Applied),
                outcome("remote-2", PushResult::Applied),
                outcome("remote-3", PushResult::NamespaceMissing),
                outcome("remote-4", PushResult::TimedOut),
            ],
            &[
                ready(
                    "remote-1",
                    Readiness::Served(vec!["istio-sidecar-injector".into()]),
                ),
                ready("remote-2", canary.clone()),
                ready("remote-3", canary.clone()),
                ready("remote-4", canary),
            ],
        );
        // remote-3 has no such namespace; an unknown remote (not listed) gets no line.
        assert_eq!(
            warnings_of(&response)[3..],
            [
                "kubectl-mesh: remote-2: no injector for revision canary: pods in shop will not get sidecars",
                "kubectl-mesh: remote-4: no injector for revision canary: pods in shop will not get sidecars",
            ]
        );
    }

    #[test]
    fn complete_warns_when_istio_injection_overrides_the_revision() {
        let labels = [("istio-injection", "enabled"), ("istio.io/rev", "canary")];
        let req = create(ns("shop").label(labels[0].0, labels[0].1));
        let long = "c".repeat(60);
        let response = completed(
            &req,
            &intent("shop", labels),
            &[outcome(&long, PushResult::Applied)],
            &[ready(&long, Readiness::Unserved(Injection::Default))],
        );
        assert_eq!(
            warnings_of(&response)[1..],
            [
                "kubectl-mesh: istio-injection=enabled overrides istio.io/rev=canary: Istio \
                 ignores istio.io/rev while istio-injection is set"
                    .to_owned(),
                format!("kubectl-mesh: {long}: no injector for istio-injection=enabled"),
            ]
        );
    }

    #[test]
    fn complete_without_clusters_says_so() {
        let (req, response) = foo_enabled_created(&[]);
        assert_eq!(
            warnings_of(&response),
            ["kubectl-mesh: no remote cluster is attached; the change stays on this cluster"]
        );
        let after = patched(&response, req.object.as_ref().expect("object"));
        assert_eq!(propagation(&after), json!({}));
    }

    #[test]
    fn complete_describes_removal_and_keeps_earlier_warnings() {
        let req = update(ns("foo").label("istio-injection", "enabled"), ns("foo"));
        let mut response = AdmissionResponse::from(&req);
        response.warnings = Some(vec!["earlier".into()]);
        let response = complete(
            response,
            &req,
            &intent("foo", []),
            &[outcome("remote-1", PushResult::Applied)],
            &[],
        );
        assert_eq!(
            warnings_of(&response),
            [
                "earlier",
                "kubectl-mesh: managed labels removed on remote-1"
            ]
        );
    }

    #[test]
    fn complete_shortens_long_lists_and_reasons() {
        let mut outcomes: Vec<_> = (1..=7)
            .map(|i| outcome(&format!("c{i}"), PushResult::Applied))
            .collect();
        outcomes.push(outcome("z", PushResult::Failed("x".repeat(500))));
        let (_, response) = foo_enabled_created(&outcomes);
        let warnings = warnings_of(&response);
        assert_eq!(
            warnings[0],
            "kubectl-mesh: istio-injection=enabled applied on c1, c2, c3, c4, c5 and 2 more"
        );
        assert!(
            warnings.iter().all(|w| w.chars().count() <= 160),
            "{warnings:?}"
        );
        assert!(warnings[1].contains('…'));
    }

    #[test]
    fn a_remotes_words_reach_kubectl_inert() {
        let hostile = PushResult::Forbidden("no\x1b[2J\x1b]0;x\x07\u{2028}more".into());
        let (_, response) = foo_enabled_created(&[outcome("remote-1", hostile)]);
        let warnings = warnings_of(&response).join("\n");
        assert!(!warnings.contains(['\x1b', '\x07']), "{warnings:?}");
        assert!(warnings.contains("(no\\u{1b}[2J"), "{warnings}");
    }

    #[test]
    fn complete_creates_annotations_map_when_absent() {
        let (_, response) = foo_enabled_created(&[outcome("remote-1", PushResult::Applied)]);
        let patch: Value =
            serde_json::from_slice(response.patch.as_deref().expect("patch")).expect("JSON");
        assert_eq!(
            patch,
            json!([
                {"op": "add", "path": "/metadata/annotations", "value": {}},
                {
                    "op": "add",
                    "path": "/metadata/annotations/kubectl-mesh.io~1propagation",
                    "value": "{\"remote-1\":\"applied\"}"
                },
            ])
        );
        // The review carries the patch type the apiserver requires.
        let review = serde_json::to_value(response.into_review()).expect("serializes");
        assert_eq!(review["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn complete_on_delete_only_warns_and_tells_missing_from_out_of_scope() {
        let req = delete(ns("foo").label("istio-injection", "enabled"));
        let cases = [
            (
                PushResult::NamespaceMissing,
                "kubectl-mesh: remote-1: namespace foo does not exist there (not created)",
            ),
            (
                PushResult::OutOfScope,
                "kubectl-mesh: remote-1: namespace foo is outside the cluster's scope (left as it is)",
            ),
        ];
        for (result, warning) in cases {
            let response = completed(
                &req,
                &intent("foo", []),
                &[outcome("remote-1", result)],
                &[],
            );
            assert_eq!(response.patch, None);
            assert_eq!(warnings_of(&response), [warning]);
        }
    }

    #[test]
    fn metric_labels_are_stable() {
        let all = [
            (PushResult::Applied, "applied"),
            (PushResult::AlreadyInSync, "in_sync"),
            (PushResult::NamespaceMissing, "missing"),
            (PushResult::OutOfScope, "out_of_scope"),
            (PushResult::Unreachable(String::new()), "unreachable"),
            (
                PushResult::CredentialsUnusable(String::new()),
                "credentials_unusable",
            ),
            (PushResult::ScopeUnusable(String::new()), "scope_unusable"),
            (
                PushResult::CredentialsRefused {
                    message: String::new(),
                    expired_at: None,
                },
                "forbidden",
            ),
            (PushResult::Forbidden(String::new()), "forbidden"),
            (PushResult::Failed(String::new()), "failed"),
            (PushResult::TimedOut, "timed_out"),
            (PushResult::Reconfiguring, "reconfiguring"),
        ];
        for (result, label) in all {
            assert_eq!(result.metric_label(), label);
            assert_eq!(result.is_landed(), matches!(label, "applied" | "in_sync"));
        }
    }

    #[test]
    fn fixture_create() {
        let (req, decision) = review_fixture(
            CREATE,
            Operation::Create,
            "3b1f6e2a-8c4d-4a47-9f0e-2d6c5b7a9e10",
        );
        assert_eq!(
            decision.push,
            Some(intent("shop", [("istio-injection", "enabled")]))
        );

        let push = decision.push.expect("push");
        let outcomes = [outcome("remote-1", PushResult::Applied)];
        let response = complete(decision.response, &req, &push, &outcomes, &[]);
        let after = patched(&response, req.object.as_ref().expect("object"));
        assert_eq!(propagation(&after), json!({"remote-1": "applied"}));
        // The patch touches only the annotation: labels stay as the user wrote them.
        assert_eq!(
            after.metadata.labels,
            req.object.as_ref().expect("object").metadata.labels
        );

        // The serialized review is what the apiserver reads back: uid and kind round-trip.
        let review = serde_json::to_value(response.into_review()).expect("serializes");
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        assert_eq!(
            review["response"]["uid"],
            "3b1f6e2a-8c4d-4a47-9f0e-2d6c5b7a9e10"
        );
        assert_eq!(review["response"]["allowed"], true);
    }

    #[test]
    fn fixture_update_rev_switch() {
        let (req, decision) = review_fixture(
            UPDATE,
            Operation::Update,
            "a7d0c9e4-51b2-4f3e-8a66-0c1d2e3f4a5b",
        );
        let push = decision.push.clone().expect("managed labels changed");
        assert_eq!(push, intent("shop", [("istio.io/rev", "1-25")]));

        let outcomes = [
            outcome("remote-1", PushResult::Applied),
            outcome("remote-2", PushResult::TimedOut),
        ];
        let response = complete(decision.response, &req, &push, &outcomes, &[]);
        assert_eq!(
            warnings_of(&response),
            [
                "kubectl-mesh: istio.io/rev=1-25 applied on remote-1",
                "kubectl-mesh: remote-2 did not answer in time; the reconciler will retry",
            ]
        );
        // The existing annotation from the previous push is replaced, not duplicated.
        let after = patched(&response, req.object.as_ref().expect("object"));
        assert_eq!(
            propagation(&after),
            json!({"remote-1": "applied", "remote-2": "timed_out"})
        );
    }

    #[test]
    fn fixture_delete() {
        let (req, decision) = review_fixture(
            DELETE,
            Operation::Delete,
            "e41b7f09-2c3d-4e5f-a6b7-c8d9e0f1a2b3",
        );
        assert!(req.object.is_none());
        let push = decision.push.clone().expect("old object had istio.io/rev");
        assert_eq!(push, intent("shop", []));
        let response = complete(
            decision.response,
            &req,
            &push,
            &[outcome("remote-1", PushResult::Applied)],
            &[],
        );
        assert_eq!(response.patch, None);
        assert!(response.allowed);
    }

    #[test]
    fn fixture_dry_run() {
        let (req, decision) = review_fixture(
            DRY_RUN,
            Operation::Update,
            "5c2e8d71-9a0b-4c1d-8e2f-3a4b5c6d7e8f",
        );
        assert!(req.dry_run);
        assert!(decision.response.allowed);
        assert_eq!(decision.push, None);
        assert_eq!(decision.response.patch, None);
    }
}
