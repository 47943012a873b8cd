//! Builders of test namespaces and webhook configurations, shared by the unit tests of the
//! crates that use the rule.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, Time,
};
use k8s_openapi::jiff::Timestamp;

/// A namespace with only a name, as a unit test wants it; `.label(..)` etc. add the rest.
pub fn ns(name: &str) -> Namespace {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    ns
}

/// A namespace with exactly the labels of `pairs`.
pub fn labelled(name: &str, pairs: &[(&str, &str)]) -> Namespace {
    let mut ns = ns(name);
    ns.metadata.labels = Some(labels(pairs));
    ns
}

/// MeshCluster `name` as attach records it: its remote's kube-system has UID `cluster_id`,
/// its credentials are in Secret `cluster-<name>`.
pub fn mesh_cluster(name: &str, cluster_id: &str) -> crate::cluster::MeshCluster {
    crate::cluster::MeshCluster::new(
        name,
        crate::cluster::MeshClusterSpec {
            cluster_id: cluster_id.to_owned(),
            server: "https://127.0.0.1:1".to_owned(),
            ca_fingerprint: None,
            tls_server_name: None,
            secret_name: format!("cluster-{name}"),
            primary_name: None,
            remote_guard: Default::default(),
            scope: Default::default(),
        },
    )
}

/// The Secret of [`mesh_cluster`] `name` (version 1) holding the stored `kubeconfig`.
pub fn stored_credentials(name: &str, kubeconfig: &str) -> k8s_openapi::api::core::v1::Secret {
    let mut secret = k8s_openapi::api::core::v1::Secret::default();
    secret.metadata.name = Some(format!("cluster-{name}"));
    secret.metadata.uid = Some(format!("uid-secret-{name}"));
    secret.metadata.resource_version = Some("1".to_owned());
    let kubeconfig = k8s_openapi::ByteString(kubeconfig.as_bytes().to_vec());
    secret.data = Some([(crate::cluster::KUBECONFIG_KEY.to_owned(), kubeconfig)].into());
    secret
}

/// A stored kubeconfig holding a token, of a server at port 1 of loopback, where nothing
/// listens.
pub const TOKEN_KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: east
  cluster:
    server: https://127.0.0.1:1
    certificate-authority-data: ""
users:
- name: east
  user:
    token: s3cr3t-token
contexts:
- name: east
  context: {cluster: east, user: east}
current-context: east
"#;

/// Namespaces by name, as a primary's view holds them.
pub fn by_name(
    namespaces: impl IntoIterator<Item = Namespace>,
) -> std::collections::BTreeMap<String, Namespace> {
    namespaces
        .into_iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
        .collect()
}

/// Fluent label and annotation setters on any object, for readable test fixtures.
pub trait MetadataExt: kube::Resource + Sized {
    fn label(mut self, key: &str, value: &str) -> Self {
        set(&mut self.meta_mut().labels, key, value);
        self
    }

    fn annotation(mut self, key: &str, value: &str) -> Self {
        set(&mut self.meta_mut().annotations, key, value);
        self
    }

    fn with_uid(mut self, uid: &str) -> Self {
        self.meta_mut().uid = Some(uid.to_owned());
        self
    }
}

impl<K: kube::Resource> MetadataExt for K {}

/// Fluent setters on [`Namespace`] for readable test fixtures.
pub trait NamespaceExt {
    fn rv(self, resource_version: &str) -> Self;
    fn deleting(self) -> Self;
}

impl NamespaceExt for Namespace {
    fn rv(mut self, resource_version: &str) -> Self {
        self.metadata.resource_version = Some(resource_version.to_owned());
        self
    }

    fn deleting(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        self
    }
}

/// Sets `key` in a label or annotation map, created when absent.
fn set(map: &mut Option<std::collections::BTreeMap<String, String>>, key: &str, value: &str) {
    map.get_or_insert_default()
        .insert(key.to_owned(), value.to_owned());
}

/// Property-test settings shared by every crate: `PROPTEST_CASES` (proptest's own variable)
/// when set, else 256 cases, so CI stays bounded and a developer can ask for more. Failures
/// print the minimal input; no regression files are written next to the sources.
pub fn proptest_config() -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// Asserts that `error`'s chain of causes ([`crate::failure::error_chain`]) ends with `ending`.
#[track_caller]
pub fn assert_chain_ends_with(error: &(dyn std::error::Error + 'static), ending: &str) {
    let chain = crate::failure::error_chain(error);
    assert!(chain.ends_with(ending), "{chain}");
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> crate::labels::Labels {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// One requirement of a label selector.
fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
    }
}

fn expressions(requirements: Vec<LabelSelectorRequirement>) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_expressions: Some(requirements),
        ..LabelSelector::default()
    })
}

/// A webhook on pod creation, as Istio's injector declares it.
fn injector_webhook(
    name: &str,
    namespace_selector: Option<LabelSelector>,
    object_selector: Option<LabelSelector>,
) -> MutatingWebhook {
    MutatingWebhook {
        name: name.to_owned(),
        rules: Some(vec![pod_creation("")]),
        namespace_selector,
        object_selector,
        admission_review_versions: vec!["v1".to_owned()],
        side_effects: "None".to_owned(),
        ..MutatingWebhook::default()
    }
}

fn pod_creation(group: &str) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec![group.to_owned()]),
        api_versions: Some(vec!["v1".to_owned()]),
        operations: Some(vec!["CREATE".to_owned()]),
        resources: Some(vec!["pods".to_owned()]),
        scope: None,
    }
}

/// The webhooks of Istio's injector chart for `revision` (or a revision tag of that name):
/// namespaces labelled `istio.io/rev=<revision>`, pods labelled so in unlabelled namespaces,
/// and for `default` also `istio-injection=enabled` and opted-in pods.
fn istio_webhooks(revision: &str) -> Vec<MutatingWebhook> {
    let not_opted_out = || {
        expressions(vec![requirement(
            "sidecar.istio.io/inject",
            "NotIn",
            &["false"],
        )])
    };
    let unlabelled = || {
        expressions(vec![
            requirement("istio.io/rev", "DoesNotExist", &[]),
            requirement("istio-injection", "DoesNotExist", &[]),
        ])
    };
    let mut webhooks = vec![
        injector_webhook(
            "rev.namespace.sidecar-injector.istio.io",
            expressions(vec![
                requirement("istio.io/rev", "In", &[revision]),
                requirement("istio-injection", "DoesNotExist", &[]),
            ]),
            not_opted_out(),
        ),
        injector_webhook(
            "rev.object.sidecar-injector.istio.io",
            unlabelled(),
            expressions(vec![
                requirement("sidecar.istio.io/inject", "NotIn", &["false"]),
                requirement("istio.io/rev", "In", &[revision]),
            ]),
        ),
    ];
    if revision == "default" {
        webhooks.push(injector_webhook(
            "namespace.sidecar-injector.istio.io",
            expressions(vec![requirement("istio-injection", "In", &["enabled"])]),
            not_opted_out(),
        ));
        webhooks.push(injector_webhook(
            "object.sidecar-injector.istio.io",
            unlabelled(),
            expressions(vec![
                requirement("sidecar.istio.io/inject", "In", &["true"]),
                requirement("istio.io/rev", "DoesNotExist", &[]),
            ]),
        ));
    }
    webhooks
}

fn config(name: &str, webhooks: Vec<MutatingWebhook>) -> MutatingWebhookConfiguration {
    let mut config = MutatingWebhookConfiguration {
        webhooks: Some(webhooks),
        ..MutatingWebhookConfiguration::default()
    };
    config.metadata.name = Some(name.to_owned());
    config
}

/// Istio's injector configuration of `revision`, shaped like its chart renders it:
/// `istio-sidecar-injector` for `default`, else `istio-sidecar-injector-<revision>`.
pub fn istio_injector(revision: &str) -> MutatingWebhookConfiguration {
    let name = match revision {
        "default" => "istio-sidecar-injector".to_owned(),
        revision => format!("istio-sidecar-injector-{revision}"),
    };
    config(&name, istio_webhooks(revision))
}

/// What `istioctl tag set <tag>` creates: `istio-revision-tag-<tag>`, whose webhooks select
/// the tag (and call its revision's istiod, which nothing here reads).
pub fn revision_tag(tag: &str) -> MutatingWebhookConfiguration {
    config(&format!("istio-revision-tag-{tag}"), istio_webhooks(tag))
}

/// A configuration `name` with one webhook `webhook` on pod creation, selecting everything.
pub fn webhook_config(name: &str, webhook: &str) -> MutatingWebhookConfiguration {
    config(name, vec![injector_webhook(webhook, None, None)])
}

/// Fluent setters on [`MutatingWebhookConfiguration`] for readable test fixtures.
pub trait InjectorExt {
    /// Every webhook's rules become one: `operation` of `resource` in `group`, v1.
    fn rule(self, group: &str, operation: &str, resource: &str) -> Self;
    /// Every webhook's namespaceSelector becomes `selector`.
    fn selector(self, selector: LabelSelector) -> Self;
}

impl InjectorExt for MutatingWebhookConfiguration {
    fn rule(mut self, group: &str, operation: &str, resource: &str) -> Self {
        for webhook in self.webhooks.iter_mut().flatten() {
            let mut rule = pod_creation(group);
            rule.operations = Some(vec![operation.to_owned()]);
            rule.resources = Some(vec![resource.to_owned()]);
            webhook.rules = Some(vec![rule]);
        }
        self
    }

    fn selector(mut self, selector: LabelSelector) -> Self {
        for webhook in self.webhooks.iter_mut().flatten() {
            webhook.namespace_selector = Some(selector.clone());
        }
        self
    }
}

/// A running pod with one container `app`; `.sidecar()` etc. add the rest.
pub fn pod(name: &str) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some(name.to_owned());
    pod.spec = Some(PodSpec {
        containers: vec![container("app")],
        ..PodSpec::default()
    });
    pod.status = Some(PodStatus {
        phase: Some("Running".to_owned()),
        ..PodStatus::default()
    });
    pod
}

fn container(name: &str) -> Container {
    Container {
        name: name.to_owned(),
        ..Container::default()
    }
}

/// Fluent setters on [`Pod`] for readable test fixtures.
pub trait PodExt {
    /// `istio-proxy` added as a container, as Istio injects it.
    fn sidecar(self) -> Self;
    /// `istio-proxy` added as a restartable init container (`ENABLE_NATIVE_SIDECARS`).
    fn native_sidecar(self) -> Self;
    fn phase(self, phase: &str) -> Self;
}

impl PodExt for Pod {
    fn sidecar(mut self) -> Self {
        if let Some(spec) = self.spec.as_mut() {
            spec.containers.push(container("istio-proxy"));
        }
        self
    }

    fn native_sidecar(mut self) -> Self {
        if let Some(spec) = self.spec.as_mut() {
            let mut proxy = container("istio-proxy");
            proxy.restart_policy = Some("Always".to_owned());
            spec.init_containers
                .get_or_insert_with(Vec::new)
                .push(proxy);
        }
        self
    }

    fn phase(mut self, phase: &str) -> Self {
        self.status.get_or_insert_with(PodStatus::default).phase = Some(phase.to_owned());
        self
    }
}

/// An unsigned JWT carrying `claims`: what token readers see in a stored kubeconfig.
pub fn jwt(claims: serde_json::Value) -> String {
    use base64::Engine as _;
    let encode = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.c2lnbmF0dXJl",
        encode(&serde_json::json!({"alg": "RS256"})),
        encode(&claims)
    )
}

/// Fails when a cause of `error` prints again in the text of the error above it: a chain
/// printed whole (`error_chain`, anyhow's `{:#}`, a log line) would then say it twice.
pub fn assert_each_cause_prints_once(error: &(dyn std::error::Error + 'static)) {
    let mut above = error;
    while let Some(cause) = above.source() {
        let (text, cause_text) = (above.to_string(), cause.to_string());
        assert!(
            !text.contains(&cause_text),
            "the cause {cause_text:?} prints again in {text:?}"
        );
        above = cause;
    }
}

/// What a call to an apiserver that refuses connections fails with: an error with a cause.
pub fn refused_connection() -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    )))
}

/// The whole body of `response` (a handler's answer), read to its end.
pub async fn body_bytes<B>(response: http::Response<B>) -> bytes::Bytes
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt as _;
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

/// A server on loopback that accepts connections and never says a word, not even its part of
/// a TLS handshake: a hung apiserver, a frozen process whose kernel still accepts, or a
/// half-dead load balancer. Served until dropped.
pub struct SilentServer {
    pub address: std::net::SocketAddr,
    /// `https://ADDRESS`.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                open.push(connection);
            }
        });
        Self {
            address,
            url: format!("https://{address}"),
            task,
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
