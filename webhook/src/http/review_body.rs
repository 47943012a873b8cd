//! The AdmissionReview of a `/mutate` body, read for what the webhook uses of it and nothing
//! more. kube's `AdmissionReview<Namespace>` would parse a stranger's `options`, `userInfo` and
//! `managedFields` whole: a body of `{},` entries there takes over a hundred times its size once
//! parsed. Here every field the webhook does not read is skipped unparsed (serde's
//! `IgnoredAny` allocates nothing), so what a review takes is bounded by its labels, at most
//! [`super::PARSED_BYTES_PER_BODY_BYTE`] for each byte (`tests/parse_memory.rs` measures it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::{
    GroupVersionKind, GroupVersionResource, TypeMeta,
    admission::{AdmissionRequest, Operation},
};
use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: GroupVersionKind,
    resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    #[serde(default)]
    object: Option<Object>,
    #[serde(default)]
    old_object: Option<Object>,
    #[serde(default)]
    dry_run: Option<bool>,
}

#[derive(Deserialize)]
struct Object {
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: Option<String>,
    generate_name: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    deletion_timestamp: Option<Time>,
    labels: Option<BTreeMap<String, String>>,
    /// Whether there are any: the answer's patch adds the map when there is none.
    annotations: Option<IgnoredAny>,
}

/// Reads a v1 AdmissionReview of a core Namespace.
pub fn parse_review(body: &[u8]) -> Result<AdmissionRequest<Namespace>, String> {
    let review: Review = serde_json::from_slice(body)
        .map_err(|e| format!("not an AdmissionReview of a Namespace: {e}"))?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(format!(
            "expected admission.k8s.io/v1 AdmissionReview, got {} {}",
            review.api_version, review.kind
        ));
    }
    let request = review
        .request
        .ok_or_else(|| "the AdmissionReview has no request".to_owned())?;
    if !request.kind.group.is_empty() || request.kind.kind != "Namespace" {
        return Err(format!(
            "expected a core Namespace, got {}/{} {}",
            request.kind.group, request.kind.version, request.kind.kind
        ));
    }
    Ok(AdmissionRequest {
        types: TypeMeta {
            api_version: review.api_version,
            kind: review.kind,
        },
        uid: request.uid,
        kind: request.kind,
        resource: request.resource,
        sub_resource: request.sub_resource,
        request_kind: None,
        request_resource: None,
        request_sub_resource: None,
        name: request.name,
        namespace: request.namespace,
        operation: request.operation,
        user_info: Default::default(),
        object: request.object.map(Object::into_namespace),
        old_object: request.old_object.map(Object::into_namespace),
        dry_run: request.dry_run.unwrap_or_default(),
        options: None,
    })
}

impl Object {
    fn into_namespace(self) -> Namespace {
        let kept = self.metadata;
        Namespace {
            metadata: ObjectMeta {
                name: kept.name,
                generate_name: kept.generate_name,
                uid: kept.uid,
                resource_version: kept.resource_version,
                deletion_timestamp: kept.deletion_timestamp,
                labels: kept.labels,
                annotations: kept.annotations.map(|_| BTreeMap::new()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }
}
