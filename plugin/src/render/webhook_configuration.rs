//! The MutatingWebhookConfiguration that makes the primary's apiserver call the webhook, and
//! the matchConditions (CEL) that keep it from calling unless a managed label changes.

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
        ServiceReference, WebhookClientConfig,
    },
};
use mesh_core::MESH_NAMESPACE;

use crate::cel;

use super::{MUTATE_PATH, Options, WEBHOOK, WEBHOOK_CONFIGURATION, WEBHOOK_ENTRY, meta, strings};

/// CEL: label `key` was added, removed, or changed value by this request. Covers CREATE (no
/// old object) and DELETE (no new object) too: the label is absent on one side there.
pub fn cel_label_changed(key: &str) -> String {
    format!(
        "{} != {}",
        cel::label_value("object", &cel::string(key)),
        cel::label_value("oldObject", &cel::string(key))
    )
}

/// The matchConditions that let the apiserver skip the webhook entirely unless a managed
/// label changes on a namespace that is not excluded. All conditions must hold for a call.
pub fn match_conditions(managed_labels: &[String], excluded: &[String]) -> Vec<MatchCondition> {
    let mut conditions = Vec::new();
    if !excluded.is_empty() {
        let list = excluded
            .iter()
            .map(|n| cel::string(n))
            .collect::<Vec<_>>()
            .join(", ");
        conditions.push(MatchCondition {
            name: "not-excluded-namespace".to_owned(),
            expression: format!("!(request.name in [{list}])"),
        });
    }
    let changed = managed_labels
        .iter()
        .map(|k| cel_label_changed(k))
        .collect::<Vec<_>>()
        .join(" ||\n");
    conditions.push(MatchCondition {
        name: "managed-label-changed".to_owned(),
        expression: changed,
    });
    conditions
}

/// Where a namespace's labels can be written: the namespace itself, and its status and finalize
/// subresources, which reset only its spec and status and store the metadata of the request.
pub const NAMESPACE_WRITES: [&str; 3] = ["namespaces", "namespaces/status", "namespaces/finalize"];

/// The MutatingWebhookConfiguration. `ca_bundle` is the PEM of the CAs the apiserver trusts
/// (the serving certificate's, and the previous ones while it is replaced); `None` renders
/// the configuration without one (the static manifests, which cannot know the CA).
pub fn mutating_webhook_configuration(
    options: &Options,
    ca_bundle: Option<&[u8]>,
) -> MutatingWebhookConfiguration {
    let client_config = WebhookClientConfig {
        ca_bundle: ca_bundle.map(|b| ByteString(b.to_vec())),
        service: match &options.webhook_url {
            Some(_) => None,
            None => Some(ServiceReference {
                namespace: MESH_NAMESPACE.to_owned(),
                name: WEBHOOK.to_owned(),
                path: Some(MUTATE_PATH.to_owned()),
                port: Some(443),
            }),
        },
        url: options.webhook_url.as_ref().map(|u| u.url.clone()),
    };
    let mut metadata = meta(WEBHOOK_CONFIGURATION, None, Some(WEBHOOK));
    // The rule recorded where every command of the plugin can read it (the webhook itself
    // may run outside the cluster, where nothing else of it can be read).
    metadata.annotations = Some(crate::installed_rule::annotations(
        &options.managed_labels,
        &options.excluded_namespaces,
    ));
    MutatingWebhookConfiguration {
        metadata,
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_ENTRY.to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config,
            rules: Some(vec![RuleWithOperations {
                api_groups: strings(&[""]),
                api_versions: strings(&["v1"]),
                operations: strings(&["CREATE", "UPDATE", "DELETE"]),
                resources: strings(&NAMESPACE_WRITES),
                scope: Some("Cluster".to_owned()),
            }]),
            match_conditions: Some(match_conditions(
                &options.managed_labels,
                &options.excluded_namespaces,
            )),
            // Label sync must never block an edit of the primary: the reconciler catches up.
            failure_policy: Some("Ignore".to_owned()),
            match_policy: Some("Equivalent".to_owned()),
            // Pushes to remotes are side effects, skipped when the request is a dry run.
            side_effects: "NoneOnDryRun".to_owned(),
            timeout_seconds: Some(5),
            reinvocation_policy: Some("Never".to_owned()),
            ..Default::default()
        }]),
    }
}
