//! What the attach tests share: the remotes' locks and cleanup, running the plugin, and
//! finding what attach left on either side.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    core::v1::{Namespace, Secret, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use k8s_openapi::serde::de::DeserializeOwned;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams},
    config::Kubeconfig,
};
use mesh_core::cluster::MeshCluster;
use mesh_e2e::{DEFAULT_TIMEOUT, eventually, fixtures, shared_env, text};
use mesh_testenv::{Cluster, TestEnv};
use tokio::sync::{Mutex, MutexGuard};

/// Serializes the tests that attach remote-1, and those that attach remote-2.
static REMOTE_LOCKS: [Mutex<()>; 2] = [Mutex::const_new(()), Mutex::const_new(())];

pub const MESH_NS: &str = "kubectl-mesh";
pub const CLUSTER_LABEL: &str = "kubectl-mesh.io/cluster";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=kubectl-mesh";

/// The environment variables of attach's test hooks, removed from every run that does not
/// set them on purpose.
const TEST_HOOKS: [&str; 2] = ["KUBECTL_MESH_FAIL_AFTER", "KUBECTL_MESH_STALL_IN"];

/// Serializes the attaches and detaches that reach the primary's istio-system namespace,
/// whichever the remote: they create it when it is absent and a rollback or detach deletes it
/// again, which would pull it from under another. Taken after the remotes' locks.
static ISTIO_SYSTEM: Mutex<()> = Mutex::const_new(());

/// The lock on the primary's istio-system ([`ISTIO_SYSTEM`]), once no earlier test's detach or
/// rollback is still deleting it: the lock is released when that test ends, and an attach then
/// meets a namespace being deleted, in which nothing can be created.
pub async fn lock_istio_system(primary: &kube::Client) -> anyhow::Result<MutexGuard<'static, ()>> {
    let lock = ISTIO_SYSTEM.lock().await;
    let namespaces = Api::<Namespace>::all(primary.clone());
    eventually(
        "istio-system not being deleted",
        DEFAULT_TIMEOUT,
        || async {
            let found = namespaces.get_opt("istio-system").await?;
            Ok(found
                .is_none_or(|ns| ns.metadata.deletion_timestamp.is_none())
                .then_some(()))
        },
    )
    .await?;
    Ok(lock)
}

/// The shared environment with kubectl-mesh installed on the primary (once per binary).
pub async fn env() -> anyhow::Result<&'static TestEnv> {
    let env = shared_env(2).await;
    fixtures::install(env).await?;
    Ok(env)
}

/// Remote `index` (0 = remote-1) and its lock, after cleaning up whatever an earlier test
/// left attached there.
pub async fn take_remote(
    env: &'static TestEnv,
    index: usize,
) -> anyhow::Result<(&'static Cluster, MutexGuard<'static, ()>)> {
    let guard = REMOTE_LOCKS[index].lock().await;
    let remote = &env.remotes()[index];
    reset(env, remote).await?;
    Ok((remote, guard))
}

/// The opening of most attach tests: the environment ([`env`]) and remote `index` with its
/// lock ([`take_remote`]).
pub async fn open_with_remote(
    index: usize,
) -> anyhow::Result<(&'static TestEnv, &'static Cluster, MutexGuard<'static, ()>)> {
    let env = env().await?;
    let (remote, lock) = take_remote(env, index).await?;
    Ok((env, remote, lock))
}

/// The opening of the tests that use attach's test hooks: [`open_with_remote`], failing first,
/// saying what to do, when the kubectl-mesh binary has no hooks ([`require_test_hooks`]).
pub async fn open_with_test_hooks(
    index: usize,
) -> anyhow::Result<(&'static TestEnv, &'static Cluster, MutexGuard<'static, ()>)> {
    let (env, remote, lock) = open_with_remote(index).await?;
    require_test_hooks(env).await?;
    Ok((env, remote, lock))
}

/// Names of the MeshClusters on the primary whose cluster ID is `remote`'s.
async fn mesh_clusters_of(env: &TestEnv, remote: &Cluster) -> anyhow::Result<Vec<String>> {
    let id = cluster_id(remote).await?;
    Ok(Api::<MeshCluster>::all(env.primary().client().await?)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|mc| mc.spec.cluster_id == id)
        .map(|mc| mc.name_any())
        .collect())
}

/// Detaches every cluster name found for `remote`, on the primary or on the remote itself.
async fn reset(env: &TestEnv, remote: &Cluster) -> anyhow::Result<()> {
    let mut names = mesh_clusters_of(env, remote).await?;
    let client = remote.client().await?;
    let lp = ListParams::default().labels(MANAGED_BY);
    for sa in Api::<ServiceAccount>::namespaced(client.clone(), MESH_NS)
        .list(&lp)
        .await?
    {
        if let Some(name) = sa.labels().get(CLUSTER_LABEL) {
            names.push(name.clone());
        }
    }
    for ns in Api::<Namespace>::all(client.clone()).list(&lp).await? {
        if let Some(name) = ns.labels().get(CLUSTER_LABEL) {
            names.push(name.clone());
        }
    }
    names.sort();
    names.dedup();
    for name in names {
        let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
        mesh(
            env,
            &["detach", &name, "--remote-kubeconfig", &kubeconfig],
            &[],
        )
        .await?;
    }
    Ok(())
}

/// Runs `kubectl-mesh --kubeconfig <primary> <args>` with extra environment variables (the
/// test hooks only when given here); returns its output, whatever its exit status.
pub async fn mesh(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> anyhow::Result<Output> {
    mesh_on(env.primary(), args, vars).await
}

/// [`mesh`] with `primary` as the primary (`--kubeconfig` its admin kubeconfig).
pub async fn mesh_on(
    primary: &Cluster,
    args: &[&str],
    vars: &[(&str, &str)],
) -> anyhow::Result<Output> {
    let mut cmd = fixtures::mesh_invocation_on(primary, args)?;
    for hook in TEST_HOOKS {
        cmd.env_remove(hook);
    }
    cmd.envs(vars.iter().copied());
    fixtures::output(cmd).await
}

/// The command succeeded; returns its stderr (progress lines).
pub fn succeeded(out: &Output, what: &str) -> anyhow::Result<String> {
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    Ok(text(&out.stderr))
}

pub use mesh_e2e::callers::refused_in_one_line;

/// The command failed and its last stderr line is the error.
pub fn failed_last_line(out: &Output, what: &str) -> anyhow::Result<String> {
    let err = text(&out.stderr);
    ensure!(!out.status.success(), "{what} succeeded: {err}");
    let last = err.trim_end().lines().last().unwrap_or_default().to_owned();
    ensure!(
        last.starts_with("error: "),
        "{what}: last line not an error:\n{err}"
    );
    Ok(last)
}

/// The uid of `cluster`'s kube-system namespace: the cluster id attach records.
pub async fn cluster_id(cluster: &Cluster) -> anyhow::Result<String> {
    let ns = Api::<Namespace>::all(cluster.client().await?)
        .get("kube-system")
        .await?;
    ns.metadata.uid.context("kube-system has no uid")
}

/// `Kind namespace/name` of every object of kind `K` that `lp` selects.
async fn names_of<K>(api: Api<K>, lp: &ListParams) -> anyhow::Result<Vec<String>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(lp)
        .await?
        .items
        .into_iter()
        .map(|o| {
            format!(
                "{} {}/{}",
                K::kind(&()),
                o.namespace().unwrap_or_default(),
                o.name_any()
            )
        })
        .collect())
}

/// Every object `selector` picks on `cluster`, of the kinds attach creates.
pub async fn labelled(
    cluster: &Cluster,
    selector: &str,
    primary: bool,
) -> anyhow::Result<Vec<String>> {
    let c = cluster.client().await?;
    let lp = ListParams::default().labels(selector);
    let mut out = Vec::new();
    out.extend(names_of(Api::<Namespace>::all(c.clone()), &lp).await?);
    out.extend(names_of(Api::<ServiceAccount>::all(c.clone()), &lp).await?);
    out.extend(names_of(Api::<Secret>::all(c.clone()), &lp).await?);
    out.extend(names_of(Api::<ClusterRole>::all(c.clone()), &lp).await?);
    out.extend(names_of(Api::<ClusterRoleBinding>::all(c.clone()), &lp).await?);
    out.extend(names_of(Api::<ValidatingAdmissionPolicy>::all(c.clone()), &lp).await?);
    out.extend(names_of(Api::<ValidatingAdmissionPolicyBinding>::all(c.clone()), &lp).await?);
    if primary {
        out.extend(names_of(Api::<MeshCluster>::all(c.clone()), &lp).await?);
    }
    Ok(out)
}

/// `"<kind> <name>"` when the object `name` exists behind `api`.
async fn existing<K>(api: Api<K>, kind: &str, name: &str) -> anyhow::Result<Option<String>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?.map(|_| format!("{kind} {name}")))
}

/// The objects attach creates, by name, that exist on the remote.
async fn remote_by_name(remote: &Cluster) -> anyhow::Result<Vec<String>> {
    let c = remote.client().await?;
    let mut found = vec![existing(Api::<Namespace>::all(c.clone()), "Namespace", MESH_NS).await?];
    for name in [
        "kubectl-mesh-sync",
        "kubectl-mesh-istio-reader",
        "kubectl-mesh-view",
    ] {
        let in_ns = Api::<ServiceAccount>::namespaced(c.clone(), MESH_NS);
        found.push(existing(in_ns, "ServiceAccount", name).await?);
        found.push(existing(Api::<ClusterRole>::all(c.clone()), "ClusterRole", name).await?);
        let bindings = Api::<ClusterRoleBinding>::all(c.clone());
        found.push(existing(bindings, "ClusterRoleBinding", name).await?);
        let secrets = Api::<Secret>::namespaced(c.clone(), MESH_NS);
        found.push(existing(secrets, "Secret", &format!("{name}-token")).await?);
    }
    for policy in ["kubectl-mesh-guard", "kubectl-mesh-sync-scope"] {
        let policies = Api::<ValidatingAdmissionPolicy>::all(c.clone());
        found.push(existing(policies, "ValidatingAdmissionPolicy", policy).await?);
        let bindings = Api::<ValidatingAdmissionPolicyBinding>::all(c.clone());
        found.push(existing(bindings, "ValidatingAdmissionPolicyBinding", policy).await?);
    }
    Ok(found.into_iter().flatten().collect())
}

/// The primary's objects of cluster `name`, by name.
pub async fn primary_by_name(env: &TestEnv, name: &str) -> anyhow::Result<Vec<String>> {
    let c = env.primary().client().await?;
    let found = [
        existing(Api::<MeshCluster>::all(c.clone()), "MeshCluster", name).await?,
        existing(
            Api::<Secret>::namespaced(c.clone(), MESH_NS),
            "Secret",
            &format!("cluster-{name}"),
        )
        .await?,
        existing(
            Api::<Secret>::namespaced(c.clone(), "istio-system"),
            "Secret",
            &format!("istio-remote-secret-{name}"),
        )
        .await?,
        existing(
            Api::<Secret>::namespaced(c.clone(), MESH_NS),
            "Secret",
            &format!("cluster-{name}-view"),
        )
        .await?,
    ];
    Ok(found.into_iter().flatten().collect())
}

/// Nothing attach creates for cluster `name` (on `remote`) is left on either side.
pub async fn assert_nothing_left(
    env: &TestEnv,
    remote: &Cluster,
    name: &str,
) -> anyhow::Result<()> {
    let selector = format!("{CLUSTER_LABEL}={name}");
    let on_primary = labelled(env.primary(), &selector, true).await?;
    ensure!(on_primary.is_empty(), "left on the primary: {on_primary:?}");
    let by_name = primary_by_name(env, name).await?;
    ensure!(by_name.is_empty(), "left on the primary: {by_name:?}");
    let same_cluster = mesh_clusters_of(env, remote).await?;
    ensure!(
        same_cluster.is_empty(),
        "MeshClusters of {}: {same_cluster:?}",
        remote.name
    );
    // The mesh namespace may still be terminating for a moment after detach returns.
    eventually(
        &format!("nothing of kubectl-mesh left on {}", remote.name),
        DEFAULT_TIMEOUT,
        || async {
            let mut left = labelled(remote, MANAGED_BY, false).await?;
            left.extend(remote_by_name(remote).await?);
            Ok(left.is_empty().then_some(()).or_else(|| {
                eprintln!("still on {}: {left:?}", remote.name);
                None
            }))
        },
    )
    .await
}

/// `kubectl mesh attach <remote's kubeconfig> --yes <extra>`, which must succeed; returns its
/// progress lines. (The question before a first sync that removes labels has tests of its
/// own in `first_sync.rs`.)
pub async fn attach(env: &TestEnv, remote: &Cluster, extra: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["--yes"];
    args.extend(extra);
    let out = try_attach(env, remote, &args, &[]).await?;
    succeeded(&out, &format!("attach {}", remote.name))
}

/// `kubectl mesh attach <remote's kubeconfig> <extra>` with the extra environment variables
/// `vars` (see [`mesh`]); returns its output, whatever its exit status.
pub async fn try_attach(
    env: &TestEnv,
    remote: &Cluster,
    extra: &[&str],
    vars: &[(&str, &str)],
) -> anyhow::Result<Output> {
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let mut args = vec!["attach", kubeconfig.as_str()];
    args.extend(extra);
    mesh(env, &args, vars).await
}

/// [`try_attach`] made to fail right after `step` by the test hook `KUBECTL_MESH_FAIL_AFTER`.
pub async fn attach_failing_after(
    env: &TestEnv,
    remote: &Cluster,
    step: &str,
    extra: &[&str],
) -> anyhow::Result<Output> {
    try_attach(env, remote, extra, &[("KUBECTL_MESH_FAIL_AFTER", step)]).await
}

/// `kubectl mesh detach <name> --remote-kubeconfig <remote's> <extra>`, which must succeed;
/// returns its progress lines.
pub async fn detach(
    env: &TestEnv,
    remote: &Cluster,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<String> {
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let mut args = vec!["detach", name, "--remote-kubeconfig", kubeconfig.as_str()];
    args.extend(extra);
    let out = mesh(env, &args, &[]).await?;
    succeeded(&out, &format!("detach {name}"))
}

/// [`detach`] of cluster `name`, after which nothing attach created for it is left on either
/// side ([`assert_nothing_left`]).
pub async fn detach_leaving_nothing(
    env: &TestEnv,
    remote: &Cluster,
    name: &str,
) -> anyhow::Result<()> {
    detach(env, remote, name, &[]).await?;
    assert_nothing_left(env, remote, name).await
}

pub use mesh_e2e::signals::{signalled_after, signalled_after_doing};
pub use mesh_e2e::stored_client;

/// Deletes namespace `name` on `cluster` (if it is there) and waits until it is gone.
pub async fn delete_namespace(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let api = Api::<Namespace>::all(cluster.client().await?);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => return Err(e.into()),
    }
    eventually(
        &format!("namespace {name} gone"),
        DEFAULT_TIMEOUT,
        || async { Ok(api.get_opt(name).await?.is_none().then_some(())) },
    )
    .await
}

/// Writes `text` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A copy of `remote`'s kubeconfig in `dir` pointing at a port nobody listens on; returns
/// its path and that server's address.
pub fn unreachable_kubeconfig(remote: &Cluster, dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let closed_server = format!("https://127.0.0.1:{closed_port}");
    let path = write(
        dir,
        "unreachable.yaml",
        &std::fs::read_to_string(&remote.kubeconfig)?.replace(&remote.server, &closed_server),
    )?;
    Ok((path, closed_server))
}

/// The MeshCluster `name` on the primary.
pub async fn mesh_cluster(env: &TestEnv, name: &str) -> anyhow::Result<MeshCluster> {
    Ok(Api::<MeshCluster>::all(env.primary().client().await?)
        .get(name)
        .await?)
}

/// The description of check's guard check.
pub const GUARD_CHECK: &str = "remote guard matches spec.remoteGuard";
/// The description of check's check of the stored credentials' rights.
pub const RIGHTS_CHECK: &str = "credentials have exactly the rights label sync needs";

/// `kubectl mesh check -o json` with the primary's kubeconfig alone: it holds no context of
/// any remote, so whatever check says about a remote it read with the stored credentials.
pub async fn check_with_stored_credentials(env: &TestEnv) -> anyhow::Result<Output> {
    let primary = Kubeconfig::read_from(&env.primary().kubeconfig)?;
    let contexts: Vec<&str> = primary.contexts.iter().map(|c| c.name.as_str()).collect();
    ensure!(
        contexts == [env.primary().name.as_str()],
        "the primary's kubeconfig holds other contexts: {contexts:?}"
    );
    mesh(
        env,
        &["check", "-o", "json", "--remote-timeout", "10s"],
        &[],
    )
    .await
}

/// `kubectl mesh check -o json` with a kubeconfig holding the primary and `remote`, whose
/// context is the one attach recorded.
pub async fn check_with_remote_context(env: &TestEnv, remote: &Cluster) -> anyhow::Result<Output> {
    let args = [
        "check",
        "-o",
        "json",
        "--remote-timeout",
        "10s",
        "--context",
    ];
    let mut cmd = fixtures::merged_kubeconfig_invocation(env, remote, &args)?;
    cmd.arg(&env.primary().name);
    for hook in TEST_HOOKS {
        cmd.env_remove(hook);
    }
    fixtures::output(cmd).await
}

/// Fails, saying what to do, when the kubectl-mesh binary has no test hooks: built by
/// `cargo build -p kubectl-mesh` (or test, or run), which leaves its `test-hooks` feature
/// off, where `cargo build --workspace --bins` turns it on for mesh-e2e.
pub async fn require_test_hooks(env: &TestEnv) -> anyhow::Result<()> {
    // The hooks are read before anything else: an unknown step is refused at once.
    let out = mesh(
        env,
        &["attach", "/dev/null"],
        &[("KUBECTL_MESH_FAIL_AFTER", "no-such-step")],
    )
    .await?;
    ensure!(
        text(&out.stderr).contains("names no step of attach"),
        "the kubectl-mesh binary has no test hooks (built without its test-hooks feature): \
         run `cargo build --workspace --bins`\n{}",
        mesh_e2e::describe(&out)
    );
    Ok(())
}

/// Fails unless the apiserver refused the request as forbidden (403); `what_went_through`
/// names what the identity could do instead.
pub fn forbidden<T: std::fmt::Debug>(
    result: kube::Result<T>,
    what_went_through: &str,
) -> anyhow::Result<()> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
        other => anyhow::bail!("{what_went_through}: {other:?}"),
    }
}

/// Fails unless the view identity stored in `secret` (its `kubeconfig` key) lists pods and
/// endpointslices everywhere, and neither secrets nor namespaces.
pub async fn reads_workloads_only(secret: &Secret) -> anyhow::Result<()> {
    let (viewer, _) = mesh_e2e::client_from_secret(secret, "kubeconfig").await?;
    let all = ListParams::default();
    Api::<k8s_openapi::api::core::v1::Pod>::all(viewer.clone())
        .list(&all)
        .await
        .context("the view identity lists pods")?;
    Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::all(viewer.clone())
        .list(&all)
        .await
        .context("the view identity lists endpointslices")?;
    let secrets = Api::<Secret>::all(viewer.clone()).list(&all).await;
    forbidden(secrets, "the view identity listed secrets")?;
    let namespaces = Api::<Namespace>::all(viewer).list(&all).await;
    forbidden(namespaces, "the view identity listed namespaces")
}

/// `detach --force` of cluster `name` with an unreachable kubeconfig of `remote`: the primary
/// forgets the cluster, the remote keeps what attach made there.
pub async fn detach_forced(env: &TestEnv, remote: &Cluster, name: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (unreachable, _) = unreachable_kubeconfig(remote, dir.path())?;
    let unreachable = unreachable.to_string_lossy().into_owned();
    let forced = [
        "detach",
        name,
        "--remote-kubeconfig",
        &unreachable,
        "--force",
    ];
    succeeded(&mesh(env, &forced, &[]).await?, "detach --force")?;
    Ok(())
}

/// The primary's kubeconfig with one more context, `name`, that reaches the primary too,
/// written in `dir`.
pub fn namesake_context(
    env: &TestEnv,
    name: &str,
    dir: &std::path::Path,
) -> anyhow::Result<PathBuf> {
    let mut kubeconfig = kube::config::Kubeconfig::read_from(&env.primary().kubeconfig)?;
    let current = kubeconfig
        .current_context
        .clone()
        .context("no current context")?;
    let mut namesake = (kubeconfig.contexts.iter())
        .find(|c| c.name == current)
        .cloned()
        .context("no such context")?;
    namesake.name = name.to_owned();
    kubeconfig.contexts.push(namesake);
    let path = dir.join("namesake.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    Ok(path)
}
