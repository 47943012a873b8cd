//! Services, EndpointSlices, pods and namespaces as `services` and the dashboard read them:
//! only the fields they use are parsed. The apiserver sends whole objects (managedFields,
//! annotations, every endpoint's addresses); the rest is skipped while parsing instead of
//! being built into the full typed objects and dropped, which costs time in the CLI over tens
//! of thousands of objects and memory in the dashboard while its watches list them.
//!
//! Each type is a [`kube::Resource`] of the real kind, so [`kube::Api`] lists it and the
//! runtime's watcher watches it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer};

/// The metadata these views read: name, namespace, labels, whether it is being deleted, and
/// the resourceVersion the watcher resumes from.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    resource_version: Option<String>,
    deletion_timestamp: Option<Time>,
}

fn meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = Meta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        labels: m.labels,
        resource_version: m.resource_version,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

macro_rules! resource {
    ($ty:ident, $kind:literal, $group:literal, $version:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A Service: its type and ports.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Service {
    #[serde(deserialize_with = "meta", default)]
    pub metadata: ObjectMeta,
    pub spec: Option<ServiceSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub ports: Option<Vec<ServicePort>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: i32,
    pub protocol: Option<String>,
}

resource!(
    Service,
    "Service",
    "",
    "v1",
    "services",
    k8s_openapi::NamespaceResourceScope
);

/// An EndpointSlice: its labels (the Service it belongs to), its address family, and its
/// endpoints' readiness and what each is (a dual-stack Service has a slice per family, listing
/// the same pods).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(deserialize_with = "meta", default)]
    pub metadata: ObjectMeta,
    /// IPv4, IPv6 or FQDN.
    pub address_type: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub conditions: Option<EndpointConditions>,
    /// What the endpoint is, usually its pod.
    pub target_ref: Option<TargetRef>,
}

/// The object an endpoint stands for.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TargetRef {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct EndpointConditions {
    pub ready: Option<bool>,
}

resource!(
    EndpointSlice,
    "EndpointSlice",
    "discovery.k8s.io",
    "v1",
    "endpointslices",
    k8s_openapi::NamespaceResourceScope
);

/// A pod: its containers' names and its phase.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Pod {
    #[serde(deserialize_with = "meta", default)]
    pub metadata: ObjectMeta,
    pub spec: Option<PodSpec>,
    pub status: Option<PodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    pub init_containers: Option<Vec<Container>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Container {
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodStatus {
    pub phase: Option<String>,
}

resource!(
    Pod,
    "Pod",
    "",
    "v1",
    "pods",
    k8s_openapi::NamespaceResourceScope
);

/// A namespace: its name, labels, and whether it is being deleted.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Namespace {
    #[serde(deserialize_with = "meta", default)]
    pub metadata: ObjectMeta,
}

resource!(
    Namespace,
    "Namespace",
    "",
    "v1",
    "namespaces",
    k8s_openapi::ClusterResourceScope
);

impl Pod {
    /// Whether it carries Istio's sidecar, as [`mesh_core::injection::has_sidecar`] judges a
    /// whole Pod.
    pub fn has_sidecar(&self) -> bool {
        let Some(spec) = &self.spec else { return false };
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == mesh_core::injection::SIDECAR_CONTAINER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_is_used_and_skips_the_rest() {
        let service: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "web", "namespace": "shop", "resourceVersion": "42",
                "labels": {"app": "web"},
                "annotations": {"a": "b"},
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": {"type": "NodePort", "clusterIP": "10.0.0.1",
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            "status": {"loadBalancer": {}},
        }))
        .unwrap();
        assert_eq!(service.metadata.name.as_deref(), Some("web"));
        assert_eq!(service.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(service.metadata.managed_fields, None);
        assert_eq!(service.metadata.annotations, None);
        let spec = service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.ports.unwrap()[0].port, 80);

        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "app", "image": "x"}],
                     "initContainers": [{"name": "istio-proxy", "restartPolicy": "Always"}]},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        assert!(pod.has_sidecar(), "a native sidecar counts");
        assert!(pod.metadata.deletion_timestamp.is_some());
        let plain: Pod = serde_json::from_value(
            json!({"metadata": {}, "spec": {"containers": [{"name": "app"}]}}),
        )
        .unwrap();
        assert!(!plain.has_sidecar());

        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "shop"},
            "addressType": "IPv6",
            "endpoints": [{
                "addresses": ["fd00::1"],
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-0", "uid": "u-1"},
            }],
        }))
        .unwrap();
        assert_eq!(slice.address_type.as_deref(), Some("IPv6"));
        let target = slice.endpoints[0].target_ref.as_ref().unwrap();
        assert_eq!(
            (
                target.kind.as_deref(),
                target.name.as_deref(),
                target.uid.as_deref()
            ),
            (Some("Pod"), Some("web-0"), Some("u-1"))
        );
    }

    #[test]
    fn paths_are_the_real_kinds() {
        use kube::Resource as _;
        assert_eq!(Service::url_path(&(), None), "/api/v1/services");
        assert_eq!(
            EndpointSlice::url_path(&(), Some("shop")),
            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"
        );
        assert_eq!(Pod::url_path(&(), None), "/api/v1/pods");
        assert_eq!(Namespace::url_path(&(), None), "/api/v1/namespaces");
    }
}
