//! The mesh with a real istiod: Istio installed on the primary from its own charts, istiod out
//! of cluster, every remote's injector calling it, remotes attached with
//! `--istio-remote-secret`. And what tests ask Istio: whether a pod would get a sidecar.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use mesh_testenv::istio::{Istio, IstioOptions};
use mesh_testenv::mesh::{Mesh, MeshOptions};
use mesh_testenv::{Cluster, Options, TestEnv};
use serde_json::json;
use tokio::sync::OnceCell;

use crate::eventually;

/// The remote of the shared Istio mesh left without Istio's own reader ClusterRole: attach
/// creates kubectl-mesh's there.
pub const WITHOUT_READER_ROLE: &str = "remote-2";

/// The environment, Istio and mesh shared by the tests of one binary: a primary and two
/// remotes, remote-1 with Istio's reader ClusterRole (as its remote profile installs it),
/// [`WITHOUT_READER_ROLE`] without.
pub async fn shared_istio_mesh() -> (&'static TestEnv, &'static Istio, &'static Mesh) {
    static SHARED: OnceCell<(TestEnv, Istio, Mesh)> = OnceCell::const_new();
    let options = IstioOptions {
        without_reader_role: vec![WITHOUT_READER_ROLE.to_owned()],
        ..IstioOptions::default()
    };
    let (env, istio, mesh) =
        crate::shared(&SHARED, "the mesh with Istio", istio_mesh(2, options)).await;
    (env, istio, mesh)
}

/// An environment of its own with Istio run as `options` say and the mesh on top, every
/// remote attached with `--istio-remote-secret`.
pub async fn istio_mesh(
    remotes: usize,
    options: IstioOptions,
) -> anyhow::Result<(TestEnv, Istio, Mesh)> {
    let env = TestEnv::start(Options::with_remotes(remotes)).await?;
    let istio = Istio::start(&env, options).await?;
    let mut mesh_options = MeshOptions::from_workspace()?;
    mesh_options
        .attach_args
        .push("--istio-remote-secret".to_owned());
    let mesh = Mesh::start(&env, mesh_options).await?;
    Ok((env, istio, mesh))
}

/// The sidecar Istio injected into a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sidecar {
    /// The revision of the istiod that injected it (`sidecar.istio.io/status`).
    pub revision: String,
    /// istio-proxy is a restartable init container (`ENABLE_NATIVE_SIDECARS`), not a container.
    pub native: bool,
    /// The cluster ID istio-proxy will present (`ISTIO_META_CLUSTER_ID`).
    pub cluster_id: String,
}

/// What a pod created now in `namespace` of `cluster` would look like: a server-side dry run,
/// which runs the injector (its `sideEffects` are `None`) and stores nothing. Retried while the
/// namespace's default ServiceAccount does not exist yet.
pub async fn dry_run_pod(cluster: &Cluster, namespace: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(cluster.client().await?, namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        &format!(
            "a dry-run pod is admitted in {namespace} on {}",
            cluster.name
        ),
        Duration::from_secs(30),
        || async {
            match pods.create(&params, &pod).await {
                Ok(pod) => Ok(Some(pod)),
                // The ServiceAccount admission plugin refuses pods until `default` exists.
                Err(kube::Error::Api(s)) if s.message.contains("serviceaccount") => Ok(None),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await
}

/// The sidecar of `pod`, if Istio injected one.
pub fn sidecar(pod: &Pod) -> Option<Sidecar> {
    let spec = pod.spec.as_ref()?;
    let in_containers = spec.containers.iter().find(|c| c.name == "istio-proxy");
    let in_init = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "istio-proxy");
    let proxy = in_containers.or(in_init)?;
    let status: serde_json::Value = serde_json::from_str(
        pod.metadata
            .annotations
            .as_ref()?
            .get("sidecar.istio.io/status")?,
    )
    .ok()?;
    let cluster_id = proxy
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ISTIO_META_CLUSTER_ID")
        .and_then(|e| e.value.clone())
        .unwrap_or_default();
    Some(Sidecar {
        revision: status["revision"].as_str().unwrap_or_default().to_owned(),
        native: in_containers.is_none()
            && in_init.is_some_and(|c| c.restart_policy.as_deref() == Some("Always")),
        cluster_id,
    })
}

/// Waits until a new pod in `namespace` of `cluster` gets `expected` (a sidecar, or none).
pub async fn wait_sidecar(
    cluster: &Cluster,
    namespace: &str,
    expected: Option<&Sidecar>,
) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(None);
    let waited = eventually(
        &format!(
            "a new pod in {namespace} on {} gets {expected:?}",
            cluster.name
        ),
        Duration::from_secs(30),
        || async {
            let got = sidecar(&dry_run_pod(cluster, namespace).await?);
            let done = got.as_ref() == expected;
            *last.lock().unwrap() = Some(got);
            Ok(done.then_some(()))
        },
    )
    .await;
    waited.map_err(|e| anyhow::anyhow!("{e:#}; last seen: {:?}", last.lock().unwrap()))
}
