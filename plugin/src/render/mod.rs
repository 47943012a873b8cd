//! Every object `kubectl mesh install` applies on the primary, rendered without a cluster.
//!
//! The same functions produce the files under `manifests/` (checked for drift by a test), the
//! output of `install --dry-run`, and what `install` applies, so the three cannot disagree.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        coordination::v1::Lease,
        core::v1::{
            Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace,
            ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext,
            Service, ServicePort, ServiceSpec, Volume, VolumeMount,
        },
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{CustomResourceExt, Resource, core::ApiResource};
use mesh_core::{MANAGER, MESH_NAMESPACE, cluster::MeshCluster};
use serde::Serialize;

mod ca_bundle;
mod client_ca;
mod disruption;
pub mod installed;
mod network_policy;
mod rbac;
mod serving_cert;
mod webhook_configuration;

pub use ca_bundle::{CaBundlePlan, PreviousCas, ca_bundle_plan, others_than};
pub use client_ca::{
    CLIENT_ALLOWED_NAMES_ENV, CLIENT_ALLOWED_NAMES_FLAG, CLIENT_CA_CONFIG_MAP, CLIENT_CA_DIR,
    CLIENT_CA_ENV, CLIENT_CA_FLAG, CLIENT_CA_KEY, ClientAuth, client_auth_args,
    client_auth_command_line, client_ca_config_map, shell_word,
};
pub use disruption::pod_disruption_budget;
pub use network_policy::network_policy;
pub use rbac::{
    cluster_role, cluster_role_binding, events_role, events_role_binding, role, role_binding,
    service_account,
};
pub(crate) use rbac::{mesh_service_account, role_ref, rule};
pub use serving_cert::{Coverage, ServingCert, generate_serving_cert, serving_sans, tls_secret};
pub use webhook_configuration::{
    NAMESPACE_WRITES, cel_label_changed, match_conditions, mutating_webhook_configuration,
};

/// Name of the webhook's ServiceAccount, Deployment, PodDisruptionBudget, Service and Role.
pub const WEBHOOK: &str = "mesh-webhook";
/// Secret holding the webhook's serving certificate, key and CA.
pub const TLS_SECRET: &str = "mesh-webhook-tls";
/// Name of the MutatingWebhookConfiguration.
pub const WEBHOOK_CONFIGURATION: &str = "kubectl-mesh";
/// Name of the one webhook inside it (must be a qualified name).
pub const WEBHOOK_ENTRY: &str = "namespaces.kubectl-mesh.io";

/// The webhook entry of kubectl-mesh in its configuration.
pub fn webhook_entry(
    mwc: &k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
) -> Option<&k8s_openapi::api::admissionregistration::v1::MutatingWebhook> {
    mwc.webhooks
        .iter()
        .flatten()
        .find(|w| w.name == WEBHOOK_ENTRY)
}
/// ClusterRole and ClusterRoleBinding of the webhook (cluster-scoped names are prefixed to
/// stay clear of other software's).
pub const CLUSTER_ROLE: &str = "kubectl-mesh:mesh-webhook";
/// Role and RoleBinding of the webhook in [`EVENTS_NAMESPACE`] (prefixed: that namespace is
/// everyone's).
pub const EVENTS_ROLE: &str = "kubectl-mesh:mesh-webhook-events";
/// Where the webhook's Events land: kube's Recorder puts those about cluster-scoped objects
/// (the Namespaces and MeshClusters, all the webhook's Events are about) in `default`.
pub const EVENTS_NAMESPACE: &str = "default";
/// Field manager of every server-side apply kubectl-mesh makes.
pub const FIELD_MANAGER: &str = MANAGER;
/// Port the webhook serves on, in its pod and when run locally.
pub const WEBHOOK_PORT: i32 = 8443;
/// Port of the webhook's probes and metrics (no client certificate asked).
pub const METRICS_PORT: i32 = 9443;
/// Path of the admission endpoint.
pub const MUTATE_PATH: &str = "/mutate";
/// Where the Deployment mounts [`TLS_SECRET`].
pub const CERT_DIR: &str = "/etc/mesh-webhook/tls";
/// Image of the webhook when `--image` is not given.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/kubectl-mesh/mesh-webhook:v",
    env!("CARGO_PKG_VERSION")
);
/// Replicas of the webhook Deployment when `--replicas` is not given.
pub const DEFAULT_REPLICAS: i32 = 2;
/// Annotation on [`TLS_SECRET`]: the SANs its certificate covers, comma-separated, so a
/// re-run of install can tell whether it may reuse it without parsing X.509.
pub const SANS_ANNOTATION: &str = "kubectl-mesh.io/serving-cert-sans";
/// Annotation on [`TLS_SECRET`]: when its certificate expires (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "kubectl-mesh.io/serving-cert-not-after";
/// Annotation on the webhook's pod template: the fingerprint of the serving certificate
/// ([`ServingCert::fingerprint`]). A new certificate rolls the pods, which serve it as they
/// start, instead of when the kubelet next syncs the mounted Secret.
pub const SERVING_CERT_ANNOTATION: &str = "kubectl-mesh.io/serving-cert-sha256";

/// Keys of [`TLS_SECRET`]; also the file names `--webhook-cert-dir` writes.
pub const TLS_CRT: &str = "tls.crt";
/// Private key of the serving certificate.
pub const TLS_KEY: &str = "tls.key";
/// CA that signed the serving certificate (the webhook configuration's caBundle).
pub const CA_CRT: &str = "ca.crt";

/// What went wrong while rendering.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--webhook-url` is not usable by the apiserver.
    #[error("invalid --webhook-url {url:?}: {why}")]
    WebhookUrl {
        /// The URL given.
        url: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// Key or certificate generation failed.
    #[error("cannot generate the webhook's serving certificate")]
    Certificate(#[source] rcgen::Error),
    /// An object could not be serialized.
    #[error("cannot serialize {what}")]
    Serialize {
        /// The object.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// What the user can do about it.
    pub fn hint(&self) -> String {
        match self {
            Self::WebhookUrl { .. } => "pass an https URL without user, query or fragment, \
                e.g. https://127.0.0.1:8443 (the path defaults to /mutate)"
                .into(),
            Self::Certificate(_) | Self::Serialize { .. } => {
                "this is a bug in kubectl-mesh; please report it with the command you ran".into()
            }
        }
    }
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the apiserver reaches the webhook when it does not run in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The full URL, path included.
    pub url: String,
    /// Its host: a DNS name or an IP address (IPv6 without brackets).
    pub host: String,
}

impl WebhookUrl {
    /// Parses `--webhook-url`: `https://host[:port][/path]`, the path defaulting to `/mutate`.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why| Error::WebhookUrl {
            url: url.to_owned(),
            why,
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("the apiserver calls webhooks over https only"))?;
        if rest.contains(['?', '#']) {
            return Err(bad("webhook URLs may not carry a query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("webhook URLs may not carry a user"));
        }
        let host = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| bad("unclosed '[' in the host"))?;
            &v6[..end]
        } else {
            authority.split(':').next().unwrap_or_default()
        };
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        let url = if path.is_empty() || path == "/" {
            format!("https://{authority}{MUTATE_PATH}")
        } else {
            url.to_owned()
        };
        Ok(Self {
            url,
            host: host.to_owned(),
        })
    }
}

/// What can vary between installations.
#[derive(Clone, Debug)]
pub struct Options {
    /// What the webhook Deployment runs.
    pub deployment: DeploymentOptions,
    /// Reach the webhook at this URL instead of through its Service; no Deployment or
    /// Service is rendered then (the webhook runs elsewhere, e.g. as a local process).
    pub webhook_url: Option<WebhookUrl>,
    /// Labels whose changes are sent to the webhook, and that it keeps equal everywhere
    /// (validated by [`crate::installed_rule::managed_labels`]).
    pub managed_labels: Vec<String>,
    /// Namespaces whose changes are never sent to the webhook and that it never syncs
    /// (validated by [`crate::installed_rule::excluded_namespaces`], mesh namespace included).
    pub excluded_namespaces: Vec<String>,
    /// The CA (and names) whose client certificates the webhook requires of its callers;
    /// `None` lets any TLS client call it.
    pub client_auth: Option<ClientAuth>,
}

impl Default for Options {
    fn default() -> Self {
        let (managed_labels, excluded_namespaces) = crate::installed_rule::default_lists();
        Self {
            deployment: DeploymentOptions::default(),
            webhook_url: None,
            managed_labels,
            excluded_namespaces,
            client_auth: None,
        }
    }
}

/// The webhook Deployment's image and replicas (none is rendered with a webhook URL).
#[derive(Clone, Debug)]
pub struct DeploymentOptions {
    /// Image of the webhook.
    pub image: String,
    /// Replicas of the webhook Deployment.
    pub replicas: i32,
}

impl Default for DeploymentOptions {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_owned(),
            replicas: DEFAULT_REPLICAS,
        }
    }
}

/// One object to apply: its API coordinates and its body.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Group, version, kind and plural, for a dynamic `Api`.
    pub resource: ApiResource,
    /// Namespace of a namespaced object.
    pub namespace: Option<String>,
    /// Name of the object.
    pub name: String,
    /// The object, `apiVersion` and `kind` included.
    pub object: serde_json::Value,
}

impl Manifest {
    /// Wraps a typed object.
    pub fn new<K>(obj: &K) -> Result<Self>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        let object = serde_json::to_value(obj).map_err(|source| Error::Serialize {
            what: format!("{} {name}", K::kind(&())),
            source,
        })?;
        Ok(Self {
            resource: ApiResource::erase::<K>(&()),
            namespace: obj.meta().namespace.clone(),
            name,
            object,
        })
    }

    /// `Kind name`, as progress lines show it.
    pub fn describe(&self) -> String {
        format!("{} {}", self.resource.kind, self.name)
    }
}

/// Labels on everything install creates.
fn labels(component: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/part-of".to_owned(), MANAGER.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGER.to_owned(),
        ),
    ]);
    if let Some(c) = component {
        l.insert("app.kubernetes.io/name".to_owned(), c.to_owned());
    }
    l
}

/// Labels that select the webhook's pods: stable, because a Deployment's selector is immutable.
fn selector_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_owned(), WEBHOOK.to_owned())])
}

/// [`selector_labels`] as a label selector (`kubectl get -l`).
pub fn webhook_pod_selector() -> String {
    let labels: Vec<String> = selector_labels()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.join(",")
}

fn meta(name: &str, namespace: Option<&str>, component: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels(component)),
        ..Default::default()
    }
}

/// A list field of a Kubernetes object from string literals.
pub(crate) fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

/// The MeshCluster CustomResourceDefinition.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = MeshCluster::crd();
    crd.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(labels(None));
    crd
}

/// The mesh's namespace on the primary.
pub fn namespace() -> Namespace {
    Namespace {
        metadata: meta(MESH_NAMESPACE, None, None),
        ..Default::default()
    }
}

/// Arguments of the webhook container (`mesh-webhook --help`). The rest of its flags keep
/// their defaults, which match what is rendered here (mesh namespace, Lease name), or come
/// from [`webhook_env`].
pub fn webhook_args(options: &Options) -> Vec<String> {
    let mut args = vec![
        format!("--listen=0.0.0.0:{WEBHOOK_PORT}"),
        format!("--metrics-listen=0.0.0.0:{METRICS_PORT}"),
        format!("--tls-cert={CERT_DIR}/{TLS_CRT}"),
        format!("--tls-key={CERT_DIR}/{TLS_KEY}"),
    ];
    if let Some(auth) = &options.client_auth {
        args.extend(client_auth_args(auth));
    }
    args
}

/// Environment of the webhook container: its log filter and the sync rule, the same lists
/// that [`match_conditions`] and the webhook configuration's annotations are rendered from, so
/// the apiserver, the webhook and the plugin's commands agree on which labels are managed.
/// Comma-joined, as `mesh-webhook` splits these variables.
pub fn webhook_env(options: &Options) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..Default::default()
    };
    vec![
        var("RUST_LOG", "info".to_owned()),
        var(
            mesh_core::MANAGED_LABELS_ENV,
            options.managed_labels.join(","),
        ),
        var(
            mesh_core::EXCLUDED_NAMESPACES_ENV,
            options.excluded_namespaces.join(","),
        ),
        // The start of the replica's Lease identity: unique among live pods, where the pid
        // (always 1) and the hostname are not.
        env_from_field("POD_NAME", "metadata.name"),
        // Where its Secrets and Lease are: the namespace it runs in, wherever that is.
        env_from_field("POD_NAMESPACE", "metadata.namespace"),
    ]
}

/// The variable `name` set to the pod's own field `field_path` (the downward API).
pub(crate) fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn https_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            // The metrics port: the kubelet presents no client certificate.
            port: IntOrString::String("metrics".to_owned()),
            scheme: Some("HTTPS".to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// The webhook Deployment: non-root, read-only root filesystem, no capabilities; the
/// serving certificate mounted from [`TLS_SECRET`] (the webhook reloads it when it changes);
/// replicas spread over nodes, which [`pod_disruption_budget`] drains one at a time.
pub fn deployment(options: &Options) -> Deployment {
    let mut pod_labels = labels(Some(WEBHOOK));
    pod_labels.extend(selector_labels());
    let container = Container {
        name: WEBHOOK.to_owned(),
        image: Some(options.deployment.image.clone()),
        args: Some(webhook_args(options)),
        env: Some(webhook_env(options)),
        ports: Some(vec![
            ContainerPort {
                name: Some("https".to_owned()),
                container_port: WEBHOOK_PORT,
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".to_owned()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(https_probe("/readyz", 5)),
        liveness_probe: Some(https_probe("/healthz", 10)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("50m".to_owned())),
                ("memory".to_owned(), Quantity("64Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("256Mi".to_owned()),
            )])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: strings(&["ALL"]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: "tls".to_owned(),
                mount_path: CERT_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            })
            .chain(
                options
                    .client_auth
                    .as_ref()
                    .map(|_| client_ca::volume_mount()),
            )
            .collect(),
        ),
        ..Default::default()
    };
    Deployment {
        metadata: meta(WEBHOOK, Some(MESH_NAMESPACE), Some(WEBHOOK)),
        spec: Some(DeploymentSpec {
            replicas: Some(options.deployment.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    // An injected sidecar would share the pod's loopback, which the
                    // log-level endpoint trusts, and proxy the apiserver's calls.
                    annotations: Some(BTreeMap::from([(
                        "sidecar.istio.io/inject".to_owned(),
                        "false".to_owned(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(WEBHOOK.to_owned()),
                    affinity: Some(disruption::spread_over_nodes()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        // The distroless "nonroot" user; a numeric id lets the kubelet check
                        // runAsNonRoot without reading the image.
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(
                        std::iter::once(Volume {
                            name: "tls".to_owned(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(TLS_SECRET.to_owned()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .chain(options.client_auth.as_ref().map(|_| client_ca::volume()))
                        .collect(),
                    ),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The webhook Service: 443 in front of the pods' 8443.
pub fn service() -> Service {
    Service {
        metadata: meta(WEBHOOK, Some(MESH_NAMESPACE), Some(WEBHOOK)),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some("https".to_owned()),
                port: 443,
                target_port: Some(IntOrString::String("https".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// [`deployment`] whose pods serve `cert`: they roll when it changes
/// ([`SERVING_CERT_ANNOTATION`]).
pub fn deployment_serving(options: &Options, cert: &ServingCert) -> Deployment {
    let mut d = deployment(options);
    if let Some(metadata) = d.spec.as_mut().and_then(|s| s.template.metadata.as_mut()) {
        metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(SERVING_CERT_ANNOTATION.to_owned(), cert.fingerprint());
    }
    d
}

/// Everything `install` applies, in the order it applies them: the CRD and namespace first,
/// then RBAC and the certificate the pods need, the webhook itself, and the webhook
/// configuration last so that the apiserver calls a webhook that exists (on a certificate
/// rotation, before the certificate: see [`render_with_ca_bundle`]). The webhook
/// configuration trusts `cert`'s CA only.
pub fn render(options: &Options, cert: &ServingCert) -> Result<Vec<Manifest>> {
    render_with_ca_bundle(options, cert, &CaBundlePlan::only(&cert.ca_pem))
}

/// [`render`], the webhook configuration's caBundle being `plan`'s (see [`ca_bundle_plan`]).
/// When the installed configuration does not trust `cert`'s CA yet
/// ([`CaBundlePlan::trust_first`]: a new certificate replaces one the webhook serves now), the
/// configuration goes before the certificate instead: the webhook serves the new certificate
/// once it reads the Secret (the kubelet syncs the mounted files) or its pods roll, and the
/// apiserver must trust it by then, whatever stops install between two applies. It still
/// trusts the previous CA (see [`ca_bundle_plan`]), so the webhook serving the old certificate
/// keeps answering meanwhile.
pub fn render_with_ca_bundle(
    options: &Options,
    cert: &ServingCert,
    plan: &CaBundlePlan,
) -> Result<Vec<Manifest>> {
    let configuration = Manifest::new(&mutating_webhook_configuration(
        options,
        Some(plan.applied.as_bytes()),
    ))?;
    let mut out = vec![Manifest::new(&crd())?, Manifest::new(&namespace())?];
    out.extend(rbac::manifests()?);
    let mut last = Some(configuration);
    if plan.trust_first {
        out.extend(last.take());
    }
    out.push(Manifest::new(&tls_secret(cert))?);
    if let Some(auth) = &options.client_auth {
        out.push(Manifest::new(&client_ca_config_map(&auth.ca_pem))?);
    }
    if options.webhook_url.is_none() {
        out.push(Manifest::new(&deployment_serving(options, cert))?);
        out.push(Manifest::new(&pod_disruption_budget())?);
        out.push(Manifest::new(&service())?);
        out.push(Manifest::new(&network_policy())?);
    }
    out.extend(last);
    Ok(out)
}

/// Everything `uninstall` deletes by name, in the order it deletes them: the webhook
/// configuration first so that the apiserver stops calling, the client CA and the leader
/// Lease the webhook wrote, the namespace (and with it anything left in it) near the end,
/// the CRD (and with it every MeshCluster) only when asked. The stored credentials of
/// attached clusters are found by their labels (see `cmd::uninstall`).
pub fn uninstall_order(with_crd: bool) -> Result<Vec<Manifest>> {
    let options = Options::default();
    let mut out = vec![
        Manifest::new(&mutating_webhook_configuration(&options, None))?,
        Manifest::new(&network_policy())?,
        Manifest::new(&service())?,
        Manifest::new(&deployment(&options))?,
        Manifest::new(&pod_disruption_budget())?,
    ];
    // Bindings before what they bind.
    out.extend(rbac::manifests()?.into_iter().rev());
    out.extend([
        Manifest::new(&Secret {
            metadata: meta(TLS_SECRET, Some(MESH_NAMESPACE), Some(WEBHOOK)),
            ..Default::default()
        })?,
        Manifest::new(&client_ca_config_map(""))?,
        // The webhook's leader election creates it (`--lease-name`, by default this name).
        Manifest::new(&Lease {
            metadata: meta(WEBHOOK, Some(MESH_NAMESPACE), Some(WEBHOOK)),
            ..Default::default()
        })?,
        Manifest::new(&namespace())?,
    ]);
    if with_crd {
        out.push(Manifest::new(&crd())?);
    }
    Ok(out)
}

/// The files of `manifests/`: file name and its objects, with the default options and no
/// certificate (the Secret and the caBundle are generated at install time).
pub fn static_manifests() -> Result<Vec<(&'static str, Vec<Manifest>)>> {
    let options = Options::default();
    Ok(vec![
        ("crd.yaml", vec![Manifest::new(&crd())?]),
        ("namespace.yaml", vec![Manifest::new(&namespace())?]),
        ("rbac.yaml", rbac::manifests()?),
        (
            "deployment.yaml",
            vec![
                Manifest::new(&deployment(&options))?,
                Manifest::new(&pod_disruption_budget())?,
            ],
        ),
        ("service.yaml", vec![Manifest::new(&service())?]),
        (
            "networkpolicy.yaml",
            vec![Manifest::new(&network_policy())?],
        ),
        (
            "webhook.yaml",
            vec![Manifest::new(&mutating_webhook_configuration(
                &options, None,
            ))?],
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_cert() -> ServingCert {
        ServingCert {
            ca_pem: "-----BEGIN CERTIFICATE-----\nTEST-CA\n-----END CERTIFICATE-----\n".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            coverage: Coverage {
                sans: serving_sans(None),
                not_after: Some("2035-01-01T00:00:00Z".into()),
            },
        }
    }

    #[test]
    fn webhook_url_parsing() {
        let u = WebhookUrl::parse("https://127.0.0.1:9443").unwrap();
        assert_eq!(u.url, "https://127.0.0.1:9443/mutate");
        assert_eq!(u.host, "127.0.0.1");
        let u = WebhookUrl::parse("https://[::1]:9443/hook").unwrap();
        assert_eq!(
            (u.url.as_str(), u.host.as_str()),
            ("https://[::1]:9443/hook", "::1")
        );
        let u = WebhookUrl::parse("https://webhook.example.com/").unwrap();
        assert_eq!(u.url, "https://webhook.example.com/mutate");
        for bad in [
            "http://127.0.0.1",
            "https://",
            "https://a/b?c",
            "https://u@h",
            "https://[::1",
        ] {
            let err = WebhookUrl::parse(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid --webhook-url"),
                "{bad}"
            );
        }
    }

    #[test]
    fn sans_include_url_host() {
        let url = WebhookUrl::parse("https://127.0.0.1:9443").unwrap();
        assert_eq!(
            serving_sans(Some(&url)),
            [
                "mesh-webhook.kubectl-mesh.svc",
                "mesh-webhook.kubectl-mesh.svc.cluster.local",
                "127.0.0.1"
            ]
        );
    }

    #[test]
    fn generated_cert_round_trips_through_secret() {
        let url = WebhookUrl::parse("https://127.0.0.1:9443").unwrap();
        let sans = serving_sans(Some(&url));
        let cert = generate_serving_cert(&sans).unwrap();
        assert!(cert.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(cert.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(cert.key_pem.contains("PRIVATE KEY"));
        assert_ne!(cert.ca_pem, cert.cert_pem);
        let secret = tls_secret(&cert);
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let back = ServingCert::from_secret(&secret).unwrap();
        assert_eq!(back, cert);
        let now = jiff::Timestamp::now();
        assert_eq!(back.reuse_problem(&sans, now), None);
        assert_eq!(
            back.reuse_problem(&["10.0.0.1".to_owned()], now).as_deref(),
            Some("it does not cover 10.0.0.1")
        );
        let later = now + jiff::SignedDuration::from_hours(24 * 365 * 10);
        assert!(
            back.reuse_problem(&sans, later)
                .unwrap()
                .starts_with("it expires")
        );
        assert!(!format!("{cert:?}").contains("PRIVATE"));
    }

    #[test]
    fn incomplete_secret_is_not_reused() {
        let mut secret = tls_secret(&fixed_cert());
        secret.data.as_mut().unwrap().remove(TLS_KEY);
        assert!(ServingCert::from_secret(&secret).is_none());
    }

    #[test]
    fn match_conditions_cover_every_managed_label() {
        let options = Options::default();
        let conditions = match_conditions(&options.managed_labels, &options.excluded_namespaces);
        let changed = conditions
            .iter()
            .find(|c| c.name == "managed-label-changed")
            .unwrap();
        for label in mesh_core::labels::DEFAULT_MANAGED_LABELS {
            for var in ["object", "oldObject"] {
                let value = format!(
                    "({var} != null && has({var}.metadata.labels) && '{label}' in \
                     {var}.metadata.labels ? {var}.metadata.labels['{label}'] : '<absent>')"
                );
                assert!(changed.expression.contains(&value), "{label} {var}");
            }
        }
        assert_eq!(
            changed.expression.matches(" != (oldObject != null").count(),
            mesh_core::labels::DEFAULT_MANAGED_LABELS.len()
        );
        let excluded = conditions
            .iter()
            .find(|c| c.name == "not-excluded-namespace")
            .unwrap();
        for ns in mesh_core::labels::DEFAULT_EXCLUDED_NAMESPACES {
            assert!(excluded.expression.contains(&format!("'{ns}'")), "{ns}");
        }
    }

    #[test]
    fn custom_rule_reaches_webhook_env_annotations_and_match_conditions() {
        let options = Options {
            managed_labels: vec!["team.example.com/zone".into(), "istio-injection".into()],
            excluded_namespaces: vec!["legacy".into(), MESH_NAMESPACE.into()],
            ..Options::default()
        };
        let d = serde_json::to_value(deployment(&options)).unwrap();
        let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
        let value = |name: &str| {
            env.as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .map(|e| e["value"].clone())
        };
        assert_eq!(
            value("MESH_WEBHOOK_MANAGED_LABELS"),
            Some(serde_json::json!("team.example.com/zone,istio-injection"))
        );
        assert_eq!(
            value("MESH_WEBHOOK_EXCLUDED_NAMESPACES"),
            Some(serde_json::json!("legacy,kubectl-mesh"))
        );

        let mwc = mutating_webhook_configuration(&options, None);
        let recorded = mwc.metadata.annotations.as_ref();
        assert_eq!(
            recorded
                .and_then(|a| a.get(mesh_core::labels::MANAGED_LABELS_ANNOTATION))
                .map(String::as_str),
            Some("team.example.com/zone,istio-injection")
        );
        assert_eq!(
            recorded
                .and_then(|a| a.get(mesh_core::labels::EXCLUDED_NAMESPACES_ANNOTATION))
                .map(String::as_str),
            Some("legacy,kubectl-mesh")
        );
        // What the plugin reads back is what the webhook runs with.
        let container = &webhook_container(&options);
        assert_eq!(
            crate::installed_rule::from_annotations(recorded),
            crate::installed_rule::from_container(container).unwrap()
        );

        let conditions = mwc.webhooks.unwrap()[0].match_conditions.clone().unwrap();
        let expression = |name: &str| {
            conditions
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.expression.clone())
                .unwrap()
        };
        assert_eq!(
            expression("not-excluded-namespace"),
            "!(request.name in ['legacy', 'kubectl-mesh'])"
        );
        let changed = expression("managed-label-changed");
        assert_eq!(changed.matches(" != (oldObject != null").count(), 2);
        assert!(changed.contains("'team.example.com/zone' in object.metadata.labels"));
        assert!(!changed.contains("istio.io/rev"), "{changed}");
    }

    /// The webhook container of the Deployment rendered for `options`.
    fn webhook_container(options: &Options) -> Container {
        let spec = deployment(options).spec.unwrap().template.spec.unwrap();
        spec.containers.into_iter().next().unwrap()
    }

    #[test]
    fn default_rule_is_rendered_explicitly() {
        let options = Options::default();
        let container = &webhook_container(&options);
        let mwc = mutating_webhook_configuration(&options, None);
        let recorded = crate::installed_rule::from_annotations(mwc.metadata.annotations.as_ref());
        assert_eq!(recorded, mesh_core::labels::SyncRule::default());
        assert_eq!(
            crate::installed_rule::from_container(container),
            Some(recorded)
        );
        assert!(
            container
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "MESH_WEBHOOK_MANAGED_LABELS"),
            "the Deployment names the rule even when it is the default"
        );
    }

    #[test]
    fn mutating_webhook_configuration_snapshot() {
        let options = Options::default();
        let mwc = mutating_webhook_configuration(&options, Some(fixed_cert().ca_pem.as_bytes()));
        insta::assert_yaml_snapshot!("mwc_service", mwc);
        let options = Options {
            webhook_url: Some(WebhookUrl::parse("https://127.0.0.1:9443").unwrap()),
            ..Options::default()
        };
        let mwc = mutating_webhook_configuration(&options, Some(b"CA"));
        let client = serde_json::to_value(&mwc.webhooks.unwrap()[0].client_config).unwrap();
        assert_eq!(
            client,
            serde_json::json!({"url": "https://127.0.0.1:9443/mutate", "caBundle": "Q0E="})
        );
    }

    /// A new certificate rolls the webhook's pods; the same one leaves them.
    #[test]
    fn the_pods_roll_when_the_serving_certificate_changes() {
        let (old, new) = (
            generate_serving_cert(&serving_sans(None)).unwrap(),
            generate_serving_cert(&serving_sans(None)).unwrap(),
        );
        let options = Options::default();
        let annotation = |cert: &ServingCert| {
            let d = serde_json::to_value(deployment_serving(&options, cert)).unwrap();
            d["spec"]["template"]["metadata"]["annotations"][SERVING_CERT_ANNOTATION].clone()
        };
        assert_eq!(annotation(&old), annotation(&old.clone()));
        assert_ne!(annotation(&old), annotation(&new));
        // The fingerprint of the certificate's DER, as openssl prints it.
        let fingerprint = old.fingerprint();
        assert_eq!(fingerprint.len(), 64, "{fingerprint}");
        assert!(
            fingerprint
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        let rendered = render(&options, &old).unwrap();
        let d = rendered
            .iter()
            .find(|m| m.resource.kind == "Deployment")
            .unwrap();
        let template = &d.object["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(template[SERVING_CERT_ANNOTATION], annotation(&old));
        assert_eq!(template["sidecar.istio.io/inject"], "false");
    }

    /// The caBundle install applies is the one it was given; without one, the CA's.
    #[test]
    fn the_webhook_configuration_trusts_the_bundle_given() {
        let cert = fixed_cert();
        let ca_bundle = |manifests: &[Manifest]| {
            let mwc = manifests.last().unwrap();
            assert_eq!(mwc.resource.kind, "MutatingWebhookConfiguration");
            mwc.object["webhooks"][0]["clientConfig"]["caBundle"].clone()
        };
        let encoded = |pem: &str| {
            serde_json::to_value(k8s_openapi::ByteString(pem.as_bytes().to_vec())).unwrap()
        };
        let options = Options::default();
        assert_eq!(
            ca_bundle(&render(&options, &cert).unwrap()),
            encoded(&cert.ca_pem)
        );
        let both = format!("{}OLD\n", cert.ca_pem);
        let plan = CaBundlePlan {
            applied: both.clone(),
            ..CaBundlePlan::only(&cert.ca_pem)
        };
        assert_eq!(
            ca_bundle(&render_with_ca_bundle(&options, &cert, &plan).unwrap()),
            encoded(&both)
        );
    }

    /// A rotation left the new certificate live before the webhook configuration trusted its
    /// CA (Secret and Deployment first): stopped in between, every admission call failed TLS
    /// until install was re-run. The configuration trusting both now goes before them.
    #[test]
    fn a_new_ca_is_trusted_before_the_certificate_goes_live() {
        let sans = serving_sans(None);
        let (old, new) = (
            generate_serving_cert(&sans).unwrap(),
            generate_serving_cert(&sans).unwrap(),
        );
        let now = jiff::Timestamp::now();
        let order = |options: &Options, plan: &CaBundlePlan| {
            let manifests = render_with_ca_bundle(options, &new, plan).unwrap();
            let position = |kind: &str| manifests.iter().position(|m| m.resource.kind == kind);
            let mwc = position("MutatingWebhookConfiguration").unwrap();
            let bundle = &manifests[mwc].object["webhooks"][0]["clientConfig"]["caBundle"];
            assert_eq!(
                *bundle,
                serde_json::to_value(k8s_openapi::ByteString(plan.applied.clone().into())).unwrap()
            );
            let before = |kind| position(kind).is_none_or(|at| mwc < at);
            let first = before("Secret") && before("Deployment") && before("ConfigMap");
            (first, mwc == manifests.len() - 1)
        };
        let by_url = Options {
            webhook_url: Some(WebhookUrl::parse("https://127.0.0.1:9443").unwrap()),
            ..Options::default()
        };
        for options in [Options::default(), by_url] {
            for waits in [false, true] {
                let rotation = ca_bundle_plan(&new.ca_pem, &old.ca_pem, true, waits, now);
                assert_eq!(order(&options, &rotation), (true, false), "{options:?}");
            }
            // A first install, and a re-run that keeps the certificate: last, once the webhook
            // it calls exists.
            let first = ca_bundle_plan(&new.ca_pem, "", true, false, now);
            let bridged = ca_bundle_plan(&new.ca_pem, &old.ca_pem, true, false, now).applied;
            let kept = ca_bundle_plan(&new.ca_pem, &bridged, false, false, now);
            for plan in [first, kept] {
                assert_eq!(
                    order(&options, &plan),
                    (false, true),
                    "{options:?} {plan:?}"
                );
            }
        }
    }

    #[test]
    fn install_order_and_url_mode() {
        let cert = fixed_cert();
        let kinds = |m: &[Manifest]| m.iter().map(|m| m.describe()).collect::<Vec<_>>();
        let all = render(&Options::default(), &cert).unwrap();
        assert_eq!(
            kinds(&all),
            [
                "CustomResourceDefinition meshclusters.kubectl-mesh.io",
                "Namespace kubectl-mesh",
                "ServiceAccount mesh-webhook",
                "ClusterRole kubectl-mesh:mesh-webhook",
                "ClusterRoleBinding kubectl-mesh:mesh-webhook",
                "Role mesh-webhook",
                "RoleBinding mesh-webhook",
                "Role kubectl-mesh:mesh-webhook-events",
                "RoleBinding kubectl-mesh:mesh-webhook-events",
                "Secret mesh-webhook-tls",
                "Deployment mesh-webhook",
                "PodDisruptionBudget mesh-webhook",
                "Service mesh-webhook",
                "NetworkPolicy mesh-webhook",
                "MutatingWebhookConfiguration kubectl-mesh",
            ]
        );
        for m in &all {
            assert_eq!(m.object["apiVersion"], m.resource.api_version.as_str());
            assert_eq!(m.object["kind"], m.resource.kind.as_str());
        }
        let url_mode = Options {
            webhook_url: Some(WebhookUrl::parse("https://127.0.0.1:9443").unwrap()),
            ..Options::default()
        };
        let some = kinds(&render(&url_mode, &cert).unwrap());
        assert!(!some.iter().any(|k| k.starts_with("Deployment")
            || k.starts_with("PodDisruptionBudget")
            || k.starts_with("Service ")
            || k.starts_with("NetworkPolicy")));
        assert_eq!(some.len(), all.len() - 4);
        let gone = kinds(&uninstall_order(true).unwrap());
        assert!(
            gone.iter().any(|k| k == "PodDisruptionBudget mesh-webhook"),
            "{gone:#?}"
        );
        assert_eq!(
            gone.first().unwrap(),
            "MutatingWebhookConfiguration kubectl-mesh"
        );
        assert_eq!(
            gone.last().unwrap(),
            "CustomResourceDefinition meshclusters.kubectl-mesh.io"
        );
    }

    #[test]
    fn deployment_is_locked_down() {
        let d = serde_json::to_value(deployment(&Options::default())).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
        // The kubelet presents no client certificate: probes go to the metrics port.
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
        assert_eq!(c["ports"][1]["name"], "metrics");
        assert_eq!(c["ports"][1]["containerPort"], METRICS_PORT);
        let template = &d["spec"]["template"]["metadata"];
        assert_eq!(template["annotations"]["sidecar.istio.io/inject"], "false");
        assert_eq!(c["ports"][0]["containerPort"], WEBHOOK_PORT);
        let s = serde_json::to_value(service()).unwrap();
        assert_eq!(s["spec"]["ports"][0]["port"], 443);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], "https");
    }

    /// The webhook writes Events only through kube's Recorder (events.k8s.io create, patch
    /// for a repeat), about Namespaces and MeshClusters, which are cluster-scoped: the Recorder
    /// puts those in `default`, and nowhere else may it write any.
    #[test]
    fn the_webhook_writes_events_in_default_only() {
        let all = render(&Options::default(), &fixed_cert()).unwrap();
        let object = |kind: &str, namespace: Option<&str>| {
            all.iter()
                .find(|m| m.resource.kind == kind && m.namespace.as_deref() == namespace)
                .map(|m| m.object.clone())
                .unwrap_or_else(|| panic!("no {kind} in {namespace:?} rendered"))
        };
        let cluster_role = object("ClusterRole", None);
        let events = |rule: &serde_json::Value| {
            rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().starts_with("events"))
        };
        assert!(
            !cluster_role["rules"].as_array().unwrap().iter().any(events),
            "{cluster_role}"
        );
        let role = object("Role", Some("default"));
        assert_eq!(
            role["rules"],
            serde_json::json!([{
                "apiGroups": ["events.k8s.io"],
                "resources": ["events"],
                "verbs": ["create", "patch"],
            }])
        );
        let binding = object("RoleBinding", Some("default"));
        assert_eq!(
            binding["roleRef"],
            serde_json::json!({
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": role["metadata"]["name"],
            })
        );
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": WEBHOOK, "namespace": MESH_NAMESPACE}])
        );
        // A webhook run elsewhere writes the same Events.
        let url_mode = Options {
            webhook_url: Some(WebhookUrl::parse("https://127.0.0.1:9443").unwrap()),
            ..Options::default()
        };
        let in_default = |manifests: &[Manifest]| {
            manifests
                .iter()
                .filter(|m| m.namespace.as_deref() == Some("default"))
                .map(Manifest::describe)
                .collect::<Vec<_>>()
        };
        let rendered = in_default(&all);
        assert_eq!(rendered.len(), 2, "{rendered:?}");
        assert_eq!(
            in_default(&render(&url_mode, &fixed_cert()).unwrap()),
            rendered
        );
        let mut deleted = in_default(&uninstall_order(false).unwrap());
        deleted.sort();
        let mut installed = rendered.clone();
        installed.sort();
        assert_eq!(deleted, installed);
    }

    /// A drain of the node holding both replicas evicts one at a time, and the scheduler puts
    /// them on different nodes where it can; with one replica a drain is not blocked.
    #[test]
    fn a_drain_leaves_a_webhook_replica_running() {
        for replicas in [DEFAULT_REPLICAS, 1] {
            let options = Options {
                deployment: DeploymentOptions {
                    replicas,
                    ..DeploymentOptions::default()
                },
                ..Options::default()
            };
            let all = render(&options, &fixed_cert()).unwrap();
            let object = |kind: &str| {
                all.iter()
                    .find(|m| m.resource.kind == kind)
                    .map(|m| m.object.clone())
                    .unwrap_or_else(|| panic!("no {kind} rendered"))
            };
            let d = object("Deployment");
            let pdb = object("PodDisruptionBudget");
            assert_eq!(pdb["apiVersion"], "policy/v1");
            assert_eq!(pdb["metadata"]["namespace"], MESH_NAMESPACE);
            assert_eq!(pdb["spec"]["maxUnavailable"], 1);
            assert!(pdb["spec"]["minAvailable"].is_null(), "{pdb}");
            assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
            assert_eq!(pdb["spec"]["selector"], d["spec"]["selector"]);
            let anti = &d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
            assert!(
                anti["requiredDuringSchedulingIgnoredDuringExecution"].is_null(),
                "{anti}"
            );
            let term = &anti["preferredDuringSchedulingIgnoredDuringExecution"][0];
            assert_eq!(
                term["podAffinityTerm"]["topologyKey"],
                "kubernetes.io/hostname"
            );
            assert_eq!(
                term["podAffinityTerm"]["labelSelector"],
                d["spec"]["selector"]
            );
        }
    }

    /// Its pod name starts its Lease identity; its namespace holds its Secrets and Lease.
    #[test]
    fn each_replica_learns_its_pod_name_and_namespace() {
        let d = serde_json::to_value(deployment(&Options::default())).unwrap();
        let env = d["spec"]["template"]["spec"]["containers"][0]["env"].clone();
        let field_of = |name: &str| {
            let var = env
                .as_array()
                .unwrap()
                .iter()
                .find(|var| var["name"] == name);
            var.map(|var| var["valueFrom"]["fieldRef"]["fieldPath"].clone())
        };
        assert_eq!(field_of("POD_NAME"), Some("metadata.name".into()));
        assert_eq!(field_of("POD_NAMESPACE"), Some("metadata.namespace".into()));
    }

    /// The YAML files of `manifests/` equal what this module renders. Run with
    /// `UPDATE_MANIFESTS=1` to rewrite them after a change.
    #[test]
    fn manifests_directory_has_no_drift() {
        const HEADER: &str =
            "# Generated by `UPDATE_MANIFESTS=1 cargo test -p kubectl-mesh`; do not edit.\n";
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let update = std::env::var_os("UPDATE_MANIFESTS").is_some_and(|v| v == "1");
        let mut kustomization = format!(
            "{HEADER}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
        );
        let mut files = Vec::new();
        for (file, objects) in static_manifests().unwrap() {
            let values: Vec<_> = objects.into_iter().map(|m| m.object).collect();
            let yaml = crate::output::yaml_documents(&values).unwrap();
            files.push((file, format!("{HEADER}{yaml}")));
            kustomization.push_str(&format!("- {file}\n"));
        }
        files.push(("kustomization.yaml", kustomization));
        let mut drifted = Vec::new();
        for (file, text) in files {
            let path = dir.join(file);
            if update {
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                drifted.push(file);
            }
        }
        assert!(
            drifted.is_empty(),
            "manifests/{drifted:?} differ from what kubectl-mesh renders; \
             run `UPDATE_MANIFESTS=1 cargo test -p kubectl-mesh` and commit the result"
        );
    }
}
