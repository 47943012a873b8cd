//! What `services` keeps of each object it reads: small facts, extracted by pure functions, so
//! that the dashboard can hold them for every object it watches.

use std::collections::BTreeMap;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, LazyLock};

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use mesh_core::injection;
use serde::Serialize;

use super::SERVICE_NAME_LABEL;
use super::names::{Name, Table};
use super::records::Records;
use super::wire::{EndpointSlice, Pod, Service};

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortFacts {
    /// The port's name, empty when unnamed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The Service port.
    pub port: i32,
    /// TCP, UDP or SCTP.
    pub protocol: String,
}

impl PortFacts {
    /// `http:80/TCP`, or `80/TCP` when unnamed.
    pub fn text(&self) -> String {
        if self.name.is_empty() {
            format!("{}/{}", self.port, self.protocol)
        } else {
            format!("{}:{}/{}", self.name, self.port, self.protocol)
        }
    }
}

/// What the table needs of a Service: its type and ports, one copy shared by every service
/// that has the same ([`Names::shape`]).
pub type ServiceFacts = Arc<ServiceShape>;

/// The one copy of each name and service shape the records hold.
pub type Names = Table<ServiceShape>;

/// A Service's type and ports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceShape {
    /// ClusterIP, NodePort, LoadBalancer or ExternalName.
    pub type_: Box<str>,
    /// Sorted by port.
    pub ports: Box<[PortFacts]>,
}

/// (namespace, name) of a Service, both shared ([`Names`]).
pub type Key = (Name, Name);

/// (namespace, hash of the name) of an EndpointSlice or a pod: the namespace shared, the name
/// kept only as [`name_hash`]. Nothing shows these names; they only tell one object from
/// another within a namespace, and a name costs an allocation where the hash costs 8 bytes.
pub type ObjectKey = (Name, u64);

/// The hash an [`ObjectKey`] keeps of a name: the same for the same name for as long as the
/// process runs. Two names of one namespace sharing it would be taken for one object, a chance
/// of about 1 in 10^11 with 10,000 objects in a namespace; its keys are drawn once per process,
/// so that no one who may create pods can choose a name ahead of time to hide another's (with
/// the fixed keys of `DefaultHasher::new`, anyone can compute every name's hash).
pub fn name_hash(name: &str) -> u64 {
    static KEYS: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    KEYS.hash_one(name)
}

/// What one cluster has, kept small: services, each EndpointSlice's service and ready count,
/// whether each pod has a sidecar (when pods were read), which namespaces ask for sidecars
/// (when their labels could be read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// By (namespace, name).
    pub services: Records<Key, ServiceFacts>,
    /// By (namespace, slice name): the Service it belongs to and its ready endpoints.
    pub slices: Records<ObjectKey, SliceFacts>,
    /// By (namespace, pod name): whether it carries istio-proxy. `None`: not read.
    pub pods: Option<Records<ObjectKey, bool>>,
    /// Namespaces whose labels ask for sidecars, with what they ask (`default`, `revision
    /// canary`). `None`: labels not read.
    pub injection: Option<BTreeMap<String, String>>,
    /// Why the labels could not be read, when that was tried and failed.
    pub injection_unread: Option<String>,
}

impl ClusterFacts {
    /// Records a Service (added or changed).
    pub fn apply_service(&mut self, names: &mut Names, service: &Service) {
        if let Some((key, facts)) = extract_service(names, service) {
            self.services.insert(key, facts);
        }
    }

    /// Records an EndpointSlice (added or changed).
    pub fn apply_slice(&mut self, names: &mut Names, slice: &EndpointSlice) {
        if let Some((key, value)) = extract_slice(names, slice) {
            self.slices.insert(key, value);
        }
    }
}

/// The key and facts of a Service.
pub fn extract_service(names: &mut Names, service: &Service) -> Option<(Key, ServiceFacts)> {
    let spec = service.spec.as_ref();
    let mut ports: Vec<PortFacts> = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| PortFacts {
            name: p.name.clone().unwrap_or_default(),
            port: p.port,
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
        })
        .collect();
    ports.sort_by(|a, b| (a.port, &a.protocol, &a.name).cmp(&(b.port, &b.protocol, &b.name)));
    Some((
        (
            names.name(service.metadata.namespace.as_deref()?),
            names.name(service.metadata.name.as_deref()?),
        ),
        names.shape(ServiceShape {
            type_: spec
                .and_then(|s| s.type_.as_deref())
                .unwrap_or("ClusterIP")
                .into(),
            ports: ports.into(),
        }),
    ))
}

/// What is kept of an EndpointSlice: its Service and its ready endpoints, so that an endpoint
/// listed by several slices of the Service counts once (a dual-stack Service has an IPv4 and
/// an IPv6 slice of the same pods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceFacts {
    /// The Service it belongs to.
    pub service: Name,
    /// Its address family (`IPv4`, `IPv6`, `FQDN`; empty when unset).
    pub family: Name,
    /// Its ready endpoints that say what they are (a targetRef), each as the [`name_hash`] of
    /// its uid (else its kind and name): the same in every slice that lists it.
    pub targets: Box<[u64]>,
    /// Its ready endpoints without a targetRef, which only their addresses tell apart.
    pub untargeted: usize,
}

/// The key of an EndpointSlice, and its facts (an endpoint whose `ready` condition is unset
/// counts as ready, as the API says to read it).
pub fn extract_slice(names: &mut Names, slice: &EndpointSlice) -> Option<(ObjectKey, SliceFacts)> {
    let service = names.name(slice.labels().get(SERVICE_NAME_LABEL)?);
    let family = names.name(slice.address_type.as_deref().unwrap_or_default());
    let mut targets = Vec::new();
    let mut untargeted = 0;
    let ready = slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
    for endpoint in ready {
        let target = endpoint.target_ref.as_ref();
        let identity = match target.and_then(|t| t.uid.as_deref().filter(|u| !u.is_empty())) {
            Some(uid) => Some(name_hash(uid)),
            None => target.and_then(|t| {
                let name = t.name.as_deref().filter(|n| !n.is_empty())?;
                Some(name_hash(&format!(
                    "{}/{name}",
                    t.kind.as_deref().unwrap_or_default()
                )))
            }),
        };
        match identity {
            Some(hash) => targets.push(hash),
            None => untargeted += 1,
        }
    }
    targets.sort_unstable();
    targets.dedup();
    Some((
        key_of(names, slice)?,
        SliceFacts {
            service,
            family,
            targets: targets.into(),
            untargeted,
        },
    ))
}

/// The ready endpoints of one Service, gathered from its slices: each endpoint that says what
/// it is once, whatever the slices that list it; those that do not, in one address family
/// (the one with the most), as each family's slices list the same endpoints again.
#[derive(Debug, Default)]
pub struct ReadyEndpoints<'a> {
    targets: std::collections::HashSet<u64>,
    untargeted: BTreeMap<&'a str, usize>,
}

impl<'a> ReadyEndpoints<'a> {
    /// Adds a slice of the Service.
    pub fn add(&mut self, slice: &'a SliceFacts) {
        self.targets.extend(slice.targets.iter().copied());
        if slice.untargeted > 0 {
            *self.untargeted.entry(&slice.family).or_default() += slice.untargeted;
        }
    }

    /// How many.
    pub fn count(&self) -> usize {
        self.targets.len() + self.untargeted.values().copied().max().unwrap_or(0)
    }
}

/// The key of a pod and whether it carries istio-proxy; `None` for finished pods, which no
/// longer serve.
pub fn extract_pod(names: &mut Names, pod: &Pod) -> Option<(ObjectKey, bool)> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    Some((key_of(names, pod)?, pod.has_sidecar()))
}

/// What a namespace's labels ask of Istio's injector; `None` for no sidecars.
pub fn extract_injection(namespace: &Namespace) -> Option<String> {
    let labels = namespace.labels().clone().into_iter().collect();
    match injection::requested(&labels).injection {
        injection::Injection::None => None,
        other => Some(other.to_string()),
    }
}

fn key_of<K: ResourceExt>(names: &mut Names, object: &K) -> Option<ObjectKey> {
    let meta = object.meta();
    Some((
        names.name(meta.namespace.as_deref()?),
        name_hash(meta.name.as_deref()?),
    ))
}

#[cfg(test)]
mod tests {
    use std::hash::{DefaultHasher, Hash as _, Hasher as _};

    use super::*;

    #[test]
    fn names_are_hashed_with_keys_of_this_process() {
        assert_eq!(name_hash("web-0"), name_hash("web-0"));
        assert_ne!(name_hash("web-0"), name_hash("web-1"));
        let mut fixed_keys = DefaultHasher::new();
        "web-0".hash(&mut fixed_keys);
        assert_ne!(name_hash("web-0"), fixed_keys.finish());
    }
}
