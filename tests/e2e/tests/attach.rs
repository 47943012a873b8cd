//! `kubectl mesh attach` and `detach` against real clusters: what they create on both sides,
//! what the stored credentials may do, every refusal leaving nothing behind, the rollback of
//! an interrupted attach, the remote guard, and detach finding everything again.
//!
//! No webhook process runs here: the mesh is installed with an unreachable webhook URL
//! (failurePolicy Ignore), which is all attach needs on the primary. Tests that attach the
//! same remote hold that remote's lock, and every test starts by cleaning its remote, so a
//! failed test cannot make the next one fail.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{ConfigMap, Namespace, Secret, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use k8s_openapi::serde::de::DeserializeOwned;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::Kubeconfig,
};
use kubectl_mesh::cmd::attach::Step;
use mesh::cluster::MeshCluster;
use mesh_e2e::{DEFAULT_TIMEOUT, eventually, shared_env, unique_name};
use mesh_testenv::{Cluster, TestEnv};
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard, OnceCell};

/// Serializes the tests that attach remote-1, and those that attach remote-2.
static REMOTE_LOCKS: [Mutex<()>; 2] = [Mutex::const_new(()), Mutex::const_new(())];

/// Serializes the attaches that reach the primary's istio-system namespace, whichever the
/// remote: they create it when it is absent and their rollback deletes it again, which would
/// pull it from under another attach. Taken after the remote's lock.
static ISTIO_SYSTEM: Mutex<()> = Mutex::const_new(());

/// Whether an attach with --istio-remote-secret that stops in or right after `step` has
/// reached the primary's istio-system namespace.
fn reaches_istio_system(step: Step) -> bool {
    let at = |step| Step::ALL.iter().position(|s| *s == step);
    at(step) >= at(Step::IstioRemoteSecret)
}

const MESH_NS: &str = "kubectl-mesh";
const CLUSTER_LABEL: &str = "kubectl-mesh.io/cluster";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by=kubectl-mesh";

/// The shared environment with kubectl-mesh installed on the primary (once per binary).
async fn env() -> anyhow::Result<&'static TestEnv> {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    let env = shared_env(2).await;
    INSTALLED
        .get_or_try_init(|| async {
            let out = plugin(
                env,
                &["install", "--webhook-url", "https://127.0.0.1:1/mutate"],
                &[],
            )
            .await?;
            ensure!(
                out.status.success(),
                "install failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        })
        .await?;
    Ok(env)
}

/// Remote `index` (0 = remote-1) and its lock, after cleaning up whatever an earlier test
/// left attached there.
async fn take_remote(
    env: &'static TestEnv,
    index: usize,
) -> anyhow::Result<(&'static Cluster, MutexGuard<'static, ()>)> {
    let guard = REMOTE_LOCKS[index].lock().await;
    let remote = &env.remotes()[index];
    reset(env, remote).await?;
    Ok((remote, guard))
}

/// Detaches every cluster name found for `remote`, on the primary or on the remote itself.
async fn reset(env: &TestEnv, remote: &Cluster) -> anyhow::Result<()> {
    let id = cluster_id(remote).await?;
    let mut names: Vec<String> = Api::<MeshCluster>::all(env.primary().client().await?)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|mc| mc.spec.cluster_id == id)
        .map(|mc| mc.name_any())
        .collect();
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
        plugin(
            env,
            &["detach", &name, "--remote-kubeconfig", &kubeconfig],
            &[],
        )
        .await?;
    }
    Ok(())
}

/// Runs `kubectl-mesh --kubeconfig <primary> <args>` with extra environment variables.
async fn plugin(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> anyhow::Result<Output> {
    let binary = mesh_testenv::workspace_binary("kubectl-mesh")?;
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("--kubeconfig")
        .arg(&env.primary().kubeconfig)
        .args(args)
        .env_remove("KUBECTL_MESH_FAIL_AFTER")
        .env_remove("KUBECTL_MESH_STALL_IN")
        .env("NO_COLOR", "1");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output()
        .await
        .with_context(|| format!("running kubectl-mesh {args:?}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command succeeded; returns its stderr (progress lines).
fn succeeded(out: &Output, what: &str) -> anyhow::Result<String> {
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        stderr(out)
    );
    Ok(stderr(out))
}

/// The command failed with exactly one line on stderr, `error: ...`; returns that line.
fn refused_in_one_line(out: &Output, what: &str) -> anyhow::Result<String> {
    let err = stderr(out);
    ensure!(!out.status.success(), "{what} succeeded: {err}");
    let lines: Vec<&str> = err.trim_end().lines().collect();
    ensure!(
        lines.len() == 1 && lines[0].starts_with("error: "),
        "{what}: stderr is not one error line:\n{err}"
    );
    Ok(lines[0].to_owned())
}

/// The command failed and its last stderr line is the error.
fn failed_last_line(out: &Output, what: &str) -> anyhow::Result<String> {
    let err = stderr(out);
    ensure!(!out.status.success(), "{what} succeeded: {err}");
    let last = err.trim_end().lines().last().unwrap_or_default().to_owned();
    ensure!(
        last.starts_with("error: "),
        "{what}: last line not an error:\n{err}"
    );
    Ok(last)
}

async fn cluster_id(cluster: &Cluster) -> anyhow::Result<String> {
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
async fn labelled(cluster: &Cluster, selector: &str, primary: bool) -> anyhow::Result<Vec<String>> {
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

/// The objects attach creates, by name, that exist on the remote.
async fn remote_by_name(remote: &Cluster) -> anyhow::Result<Vec<String>> {
    let c = remote.client().await?;
    let mut out = Vec::new();
    if Api::<Namespace>::all(c.clone())
        .get_opt(MESH_NS)
        .await?
        .is_some()
    {
        out.push(format!("Namespace {MESH_NS}"));
    }
    for name in ["kubectl-mesh-sync", "kubectl-mesh-istio-reader"] {
        if Api::<ServiceAccount>::namespaced(c.clone(), MESH_NS)
            .get_opt(name)
            .await?
            .is_some()
        {
            out.push(format!("ServiceAccount {name}"));
        }
        if Api::<ClusterRole>::all(c.clone())
            .get_opt(name)
            .await?
            .is_some()
        {
            out.push(format!("ClusterRole {name}"));
        }
        if Api::<ClusterRoleBinding>::all(c.clone())
            .get_opt(name)
            .await?
            .is_some()
        {
            out.push(format!("ClusterRoleBinding {name}"));
        }
        let token = format!("{name}-token");
        if Api::<Secret>::namespaced(c.clone(), MESH_NS)
            .get_opt(&token)
            .await?
            .is_some()
        {
            out.push(format!("Secret {token}"));
        }
    }
    if Api::<ValidatingAdmissionPolicy>::all(c.clone())
        .get_opt("kubectl-mesh-guard")
        .await?
        .is_some()
    {
        out.push("ValidatingAdmissionPolicy kubectl-mesh-guard".into());
    }
    if Api::<ValidatingAdmissionPolicyBinding>::all(c.clone())
        .get_opt("kubectl-mesh-guard")
        .await?
        .is_some()
    {
        out.push("ValidatingAdmissionPolicyBinding kubectl-mesh-guard".into());
    }
    Ok(out)
}

/// The primary's objects of cluster `name`, by name.
async fn primary_by_name(env: &TestEnv, name: &str) -> anyhow::Result<Vec<String>> {
    let c = env.primary().client().await?;
    let mut out = Vec::new();
    if Api::<MeshCluster>::all(c.clone())
        .get_opt(name)
        .await?
        .is_some()
    {
        out.push(format!("MeshCluster {name}"));
    }
    let secret = format!("cluster-{name}");
    if Api::<Secret>::namespaced(c.clone(), MESH_NS)
        .get_opt(&secret)
        .await?
        .is_some()
    {
        out.push(format!("Secret {secret}"));
    }
    let istio = format!("istio-remote-secret-{name}");
    if Api::<Secret>::namespaced(c.clone(), "istio-system")
        .get_opt(&istio)
        .await?
        .is_some()
    {
        out.push(format!("Secret {istio}"));
    }
    Ok(out)
}

/// Nothing attach creates for cluster `name` (on `remote`) is left on either side.
async fn assert_nothing_left(env: &TestEnv, remote: &Cluster, name: &str) -> anyhow::Result<()> {
    let selector = format!("{CLUSTER_LABEL}={name}");
    let on_primary = labelled(env.primary(), &selector, true).await?;
    ensure!(on_primary.is_empty(), "left on the primary: {on_primary:?}");
    let by_name = primary_by_name(env, name).await?;
    ensure!(by_name.is_empty(), "left on the primary: {by_name:?}");
    let id = cluster_id(remote).await?;
    let same_cluster: Vec<String> = Api::<MeshCluster>::all(env.primary().client().await?)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|mc| mc.spec.cluster_id == id)
        .map(|mc| mc.name_any())
        .collect();
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

async fn attach(env: &TestEnv, remote: &Cluster, extra: &[&str]) -> anyhow::Result<String> {
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let mut args = vec!["attach", kubeconfig.as_str()];
    args.extend(extra);
    let out = plugin(env, &args, &[]).await?;
    succeeded(&out, &format!("attach {}", remote.name))
}

async fn detach(
    env: &TestEnv,
    remote: &Cluster,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<String> {
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let mut args = vec!["detach", name, "--remote-kubeconfig", kubeconfig.as_str()];
    args.extend(extra);
    let out = plugin(env, &args, &[]).await?;
    succeeded(&out, &format!("detach {name}"))
}

/// A client from the kubeconfig attach stored on the primary for `name`.
async fn stored_client(env: &TestEnv, name: &str) -> anyhow::Result<(Client, Kubeconfig)> {
    let secret = Api::<Secret>::namespaced(env.primary().client().await?, MESH_NS)
        .get(&format!("cluster-{name}"))
        .await?;
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get("kubeconfig"))
        .context("no kubeconfig key")?;
    let kubeconfig = Kubeconfig::from_yaml(std::str::from_utf8(&data.0)?)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &Default::default()).await?;
    Ok((Client::try_from(config)?, kubeconfig))
}

async fn create_namespace(
    cluster: &Cluster,
    name: &str,
    labels: serde_json::Value,
) -> anyhow::Result<()> {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    Api::<Namespace>::all(cluster.client().await?)
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

async fn delete_namespace(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
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

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

#[tokio::test]
async fn attach_creates_both_sides_and_detach_removes_everything() -> anyhow::Result<()> {
    let env = env().await?;
    let (remote, _lock) = take_remote(env, 0).await?;
    let name = remote.name.as_str();

    let progress = attach(env, remote, &[]).await?;
    assert!(
        progress.contains("MeshCluster remote-1 created"),
        "{progress}"
    );

    // The remote: every object labelled for the cluster.
    let selector = format!("{CLUSTER_LABEL}={name}");
    let mut on_remote = labelled(remote, &selector, false).await?;
    on_remote.sort();
    assert_eq!(
        on_remote,
        [
            "ClusterRole /kubectl-mesh-sync",
            "ClusterRoleBinding /kubectl-mesh-sync",
            "Namespace /kubectl-mesh",
            "Secret kubectl-mesh/kubectl-mesh-sync-token",
            "ServiceAccount kubectl-mesh/kubectl-mesh-sync",
            "ValidatingAdmissionPolicy /kubectl-mesh-guard",
            "ValidatingAdmissionPolicyBinding /kubectl-mesh-guard",
        ]
    );
    let rc = remote.client().await?;
    let role = Api::<ClusterRole>::all(rc.clone())
        .get("kubectl-mesh-sync")
        .await?;
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["namespaces".to_owned()][..])
    );
    assert_eq!(rules[0].verbs, ["get", "list", "watch", "patch"]);
    // Read-only, by name, its own guard only.
    assert_eq!(rules[1].verbs, ["get"]);
    assert_eq!(
        rules[1].resource_names.as_deref(),
        Some(&["kubectl-mesh-guard".to_owned()][..])
    );
    let token_secret = Api::<Secret>::namespaced(rc.clone(), MESH_NS)
        .get("kubectl-mesh-sync-token")
        .await?;
    assert_eq!(
        token_secret.type_.as_deref(),
        Some("kubernetes.io/service-account-token")
    );
    let binding = Api::<ValidatingAdmissionPolicyBinding>::all(rc.clone())
        .get("kubectl-mesh-guard")
        .await?;
    assert_eq!(
        binding.spec.and_then(|s| s.validation_actions),
        Some(vec!["Warn".to_owned()])
    );

    // The primary: the Secret owned by the MeshCluster, which records the cluster.
    let pc = env.primary().client().await?;
    let mc = Api::<MeshCluster>::all(pc.clone()).get(name).await?;
    assert_eq!(mc.spec.cluster_id, cluster_id(remote).await?);
    assert_eq!(mc.spec.server, remote.server);
    assert_eq!(mc.spec.secret_name, "cluster-remote-1");
    assert_eq!(mc.spec.primary_name.as_deref(), Some("primary"));
    assert_eq!(mc.spec.remote_guard, mesh::cluster::RemoteGuard::Warn);
    assert_eq!(
        mc.annotations()
            .get("kubectl-mesh.io/remote-namespace-created")
            .map(String::as_str),
        Some("true")
    );
    let secret = Api::<Secret>::namespaced(pc.clone(), MESH_NS)
        .get("cluster-remote-1")
        .await?;
    assert_eq!(
        secret.labels().get(CLUSTER_LABEL).map(String::as_str),
        Some(name)
    );
    let owners = secret.owner_references();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("MeshCluster", mc.uid().unwrap_or_default().as_str())
    );

    // The stored kubeconfig: a bearer token, nothing else; it may patch namespaces only.
    let (stored, kubeconfig) = stored_client(env, name).await?;
    let user = kubeconfig.auth_infos[0]
        .auth_info
        .as_ref()
        .context("no user")?;
    assert!(user.token.is_some());
    assert!(user.client_certificate_data.is_none() && user.client_key_data.is_none());
    assert!(user.exec.is_none() && user.token_file.is_none());
    let probe = unique_name("stored-token");
    create_namespace(remote, &probe, json!({})).await?;
    Api::<Namespace>::all(stored.clone())
        .patch(
            &probe,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "probe"}}})),
        )
        .await
        .context("the stored token patches a namespace")?;
    match Api::<Secret>::all(stored.clone())
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => bail!("the stored token listed secrets: {other:?}"),
    }
    match Api::<Namespace>::all(stored.clone())
        .delete(&probe, &DeleteParams::default())
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => bail!("the stored token deleted a namespace: {other:?}"),
    }
    // It reads its own guard, and no other admission policy; it cannot change the guard.
    let stored_policies = Api::<ValidatingAdmissionPolicy>::all(stored.clone());
    stored_policies
        .get("kubectl-mesh-guard")
        .await
        .context("the stored token reads the guard")?;
    Api::<ValidatingAdmissionPolicyBinding>::all(stored.clone())
        .get("kubectl-mesh-guard")
        .await
        .context("the stored token reads the guard's binding")?;
    match stored_policies.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => bail!("the stored token listed admission policies: {other:?}"),
    }
    match stored_policies.get_opt("some-other-policy").await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => bail!("the stored token read another admission policy: {other:?}"),
    }
    match stored_policies
        .delete("kubectl-mesh-guard", &DeleteParams::default())
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => bail!("the stored token deleted the guard: {other:?}"),
    }
    delete_namespace(remote, &probe).await?;

    // A re-run updates, creates nothing new, and keeps the MeshCluster.
    let again = attach(env, remote, &[]).await?;
    assert!(!again.contains(" created"), "{again}");
    assert!(again.contains("MeshCluster remote-1 unchanged"), "{again}");
    let mc_after = Api::<MeshCluster>::all(pc.clone()).get(name).await?;
    assert_eq!(mc_after.uid(), mc.uid());

    // A re-run that fails rolls back only what it created: nothing, the attach stands.
    let before = labelled(remote, &selector, false).await?;
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let out = plugin(
        env,
        &["attach", &kubeconfig],
        &[("KUBECTL_MESH_FAIL_AFTER", "mesh-cluster")],
    )
    .await?;
    let line = failed_last_line(&out, "failing re-run")?;
    assert!(line.contains("nothing was rolled back"), "{line}");
    assert!(
        !stderr(&out).contains("! rolled back: "),
        "{}",
        stderr(&out)
    );
    assert_eq!(labelled(remote, &selector, false).await?, before);
    assert_eq!(primary_by_name(env, name).await?.len(), 2);
    let secret = Api::<Secret>::namespaced(pc.clone(), MESH_NS)
        .get("cluster-remote-1")
        .await?;
    assert_eq!(secret.owner_references().len(), 1, "ownerReference kept");

    detach(env, remote, name, &[]).await?;
    assert_nothing_left(env, remote, name).await?;

    // Detaching again: nothing is attached under that name.
    let out = plugin(env, &["detach", name], &[]).await?;
    let line = refused_in_one_line(&out, "second detach")?;
    assert!(line.contains("is not attached"), "{line}");
    Ok(())
}

#[tokio::test]
async fn refused_attaches_change_nothing_anywhere() -> anyhow::Result<()> {
    let env = env().await?;
    let (remote, _lock) = take_remote(env, 1).await?;
    let dir = tempfile::tempdir()?;
    let remote_yaml = std::fs::read_to_string(&remote.kubeconfig)?;

    let malformed = write(
        dir.path(),
        "malformed.yaml",
        "clusters: [ {name: x, token: s3cr3t\n",
    )?;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let closed_server = format!("https://127.0.0.1:{closed_port}");
    let unreachable = write(
        dir.path(),
        "unreachable.yaml",
        &remote_yaml.replace(&remote.server, &closed_server),
    )?;
    let limited = limited_kubeconfig(remote, dir.path()).await?;
    let remote_path = remote.kubeconfig.to_string_lossy().into_owned();
    let primary_path = env.primary().kubeconfig.to_string_lossy().into_owned();

    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "malformed kubeconfig",
            vec![malformed.to_string_lossy().into_owned()],
            "cannot load kubeconfig",
        ),
        (
            "unreachable server",
            vec![unreachable.to_string_lossy().into_owned()],
            "cannot reach remote cluster",
        ),
        (
            "missing context",
            vec![
                remote_path.clone(),
                "--remote-context".into(),
                "nope".into(),
            ],
            "context \"nope\" not found",
        ),
        (
            "caller lacks permissions",
            vec![limited.to_string_lossy().into_owned()],
            "missing permissions on remote cluster remote-2",
        ),
        (
            "the primary itself",
            vec![primary_path.clone()],
            "points at the primary itself",
        ),
        (
            "invalid name",
            vec![remote_path.clone(), "--name".into(), "Not_A_Label".into()],
            "invalid cluster name",
        ),
    ];
    for (case, args, expected) in &cases {
        let mut argv = vec!["attach"];
        argv.extend(args.iter().map(String::as_str));
        let out = plugin(env, &argv, &[]).await?;
        let line = refused_in_one_line(&out, case)?;
        assert!(line.contains(expected), "{case}: {line}");
        assert!(
            !line.contains("s3cr3t"),
            "{case} quotes the kubeconfig: {line}"
        );
        if *case == "unreachable server" {
            assert!(line.contains(&closed_server), "{line}");
            assert!(line.contains("connection refused"), "{line}");
            assert!(line.contains("check the server address in"), "{line}");
        }
        if *case == "caller lacks permissions" {
            assert!(
                line.contains("clusterroles.rbac.authorization.k8s.io"),
                "{line}"
            );
            assert!(
                line.contains("serviceaccounts in namespace kubectl-mesh"),
                "{line}"
            );
        }
        for name in ["remote-2", "primary", "not-a-label"] {
            assert_nothing_left(env, remote, name)
                .await
                .with_context(|| case.to_string())?;
        }
    }

    // The same cluster under a second name: refused, the first attach untouched.
    attach(env, remote, &[]).await?;
    let before = labelled(remote, MANAGED_BY, false).await?;
    let out = plugin(env, &["attach", &remote_path, "--name", "second"], &[]).await?;
    let line = refused_in_one_line(&out, "second name")?;
    assert!(line.contains("already attached as \"remote-2\""), "{line}");
    assert!(primary_by_name(env, "second").await?.is_empty());
    assert!(
        labelled(env.primary(), &format!("{CLUSTER_LABEL}=second"), true)
            .await?
            .is_empty()
    );
    assert_eq!(labelled(remote, MANAGED_BY, false).await?, before);
    detach(env, remote, "remote-2", &[]).await?;
    assert_nothing_left(env, remote, "remote-2").await?;
    Ok(())
}

/// A kubeconfig for a ServiceAccount of `remote` that may only read a few kinds: the
/// built-in `view` role cannot be used, as the test clusters do not run the ClusterRole
/// aggregation controller that fills it.
async fn limited_kubeconfig(remote: &Cluster, dir: &Path) -> anyhow::Result<PathBuf> {
    let client = remote.client().await?;
    let name = unique_name("e2e-viewer");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["namespaces", "serviceaccounts", "configmaps"], "verbs": ["get", "list", "watch"]}],
    }))?;
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), "default");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = accounts
        .create_token_request(&name, &PostParams::default(), &request)
        .await?
        .status
        .context("TokenRequest returned no status")?
        .token;
    let admin = Kubeconfig::read_from(&remote.kubeconfig)?;
    let ca = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .context("no CA in the admin kubeconfig")?;
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "remote-2", "cluster": {"server": remote.server, "certificate-authority-data": ca}}],
        "users": [{"name": "viewer", "user": {"token": token}}],
        "contexts": [{"name": "remote-2", "context": {"cluster": "remote-2", "user": "viewer"}}],
        "current-context": "remote-2",
    });
    write(dir, "limited.yaml", &kubeconfig.to_string())
}

/// Whether the primary has an istio-system namespace.
async fn istio_system_exists(primary: &Client) -> anyhow::Result<bool> {
    Ok(Api::<Namespace>::all(primary.clone())
        .get_opt("istio-system")
        .await?
        .is_some())
}

/// A real Ctrl-C while the first object of a step is stored but its answer has not come: in
/// every step that creates objects ([`Step::creates`]; with --istio-remote-secret, so that the
/// Istio steps create theirs), attach rolls back what it created, that object included.
#[tokio::test]
async fn ctrl_c_while_a_create_is_in_flight_rolls_it_back() -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let env = env().await?;
    let (remote, _lock) = take_remote(env, 1).await?;
    let name = remote.name.as_str();
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let primary = env.primary().client().await?;
    for step in Step::ALL.into_iter().filter(|s| s.creates()) {
        // Holding the lock, the state of istio-system before this attach, when it reaches it.
        let istio_system = if reaches_istio_system(step) {
            let lock = ISTIO_SYSTEM.lock().await;
            Some((lock, istio_system_exists(&primary).await?))
        } else {
            None
        };
        let step = step.name();
        let binary = mesh_testenv::workspace_binary("kubectl-mesh")?;
        let mut child = tokio::process::Command::new(binary)
            .arg("--kubeconfig")
            .arg(&env.primary().kubeconfig)
            .args(["attach", &kubeconfig, "--istio-remote-secret"])
            .env_remove("KUBECTL_MESH_FAIL_AFTER")
            .env("KUBECTL_MESH_STALL_IN", step)
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let mut seen = Vec::new();
        // The object is stored and attach waits for an answer that does not come.
        tokio::time::timeout(DEFAULT_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                let stalled = line.contains("stalling as if its answer had not come");
                seen.push(line);
                if stalled {
                    return anyhow::Ok(());
                }
            }
            bail!(
                "{step}: attach ended without stalling:\n{}",
                seen.join("\n")
            )
        })
        .await
        .with_context(|| format!("{step}: no stall within {DEFAULT_TIMEOUT:?}"))??;
        let pid = child.id().context("attach already exited")?;
        let interrupted = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()?;
        ensure!(interrupted.success(), "kill -INT {pid} failed");
        let status = tokio::time::timeout(DEFAULT_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                seen.push(line);
            }
            anyhow::Ok(child.wait().await?)
        })
        .await
        .with_context(|| format!("{step}: attach did not exit after Ctrl-C"))??;
        ensure!(!status.success(), "{step}: interrupted attach succeeded");
        let last = seen.last().cloned().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains("interrupted"),
            "{step}: {}",
            seen.join("\n")
        );
        assert!(
            last.contains(&format!("failed at step {step} and was rolled back")),
            "{step}: {last}"
        );
        assert_nothing_left(env, remote, name)
            .await
            .with_context(|| format!("after Ctrl-C in {step}"))?;
        if let Some((_, before)) = &istio_system {
            assert_eq!(
                istio_system_exists(&primary).await?,
                *before,
                "istio-system after Ctrl-C in {step}"
            );
        }
    }

    // A step that creates nothing cannot stall: the hook refuses it rather than let attach
    // run through.
    for step in Step::ALL.into_iter().filter(|s| !s.creates()) {
        let step = step.name();
        let out = plugin(
            env,
            &["attach", &kubeconfig],
            &[("KUBECTL_MESH_STALL_IN", step)],
        )
        .await?;
        let line = refused_in_one_line(&out, step)?;
        assert!(
            line.contains(&format!(
                "KUBECTL_MESH_STALL_IN={step} names a step that creates nothing"
            )),
            "{line}"
        );
    }
    assert_nothing_left(env, remote, name).await
}

/// A failure right after each step of [`Step::ALL`] (with --istio-remote-secret, so that the
/// Istio steps run) rolls back everything; a re-run then goes through.
#[tokio::test]
async fn interrupted_attach_rolls_back_and_a_rerun_succeeds() -> anyhow::Result<()> {
    let env = env().await?;
    let (remote, _lock) = take_remote(env, 0).await?;
    let name = remote.name.as_str();
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let primary = env.primary().client().await?;

    for step in Step::ALL {
        // Holding the lock, the state of istio-system before this attach, when it reaches it.
        let istio_system = if reaches_istio_system(step) {
            let lock = ISTIO_SYSTEM.lock().await;
            Some((lock, istio_system_exists(&primary).await?))
        } else {
            None
        };
        let step = step.name();
        let out = plugin(
            env,
            &["attach", &kubeconfig, "--istio-remote-secret"],
            &[("KUBECTL_MESH_FAIL_AFTER", step)],
        )
        .await?;
        let line = failed_last_line(&out, step)?;
        assert!(
            line.contains(&format!("failed at step {step} and was rolled back")),
            "{step}: {line}"
        );
        assert!(
            stderr(&out).contains("rolled back: "),
            "{step}: {}",
            stderr(&out)
        );
        assert_nothing_left(env, remote, name)
            .await
            .with_context(|| format!("after failing at {step}"))?;
        if let Some((_, before)) = &istio_system {
            assert_eq!(
                istio_system_exists(&primary).await?,
                *before,
                "istio-system after {step}"
            );
        }
    }

    // An unknown step is refused before anything happens.
    let out = plugin(
        env,
        &["attach", &kubeconfig],
        &[("KUBECTL_MESH_FAIL_AFTER", "no-such-step")],
    )
    .await?;
    refused_in_one_line(&out, "unknown step")?;
    assert_nothing_left(env, remote, name).await?;

    // The re-run goes through, Istio remote secret included.
    let _istio = ISTIO_SYSTEM.lock().await;
    let istio_system_before = istio_system_exists(&primary).await?;
    attach(env, remote, &["--istio-remote-secret"]).await?;
    let istio = Api::<Secret>::namespaced(primary.clone(), "istio-system")
        .get("istio-remote-secret-remote-1")
        .await?;
    assert_eq!(
        istio.labels().get("istio/multiCluster").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        istio
            .annotations()
            .get("networking.istio.io/cluster")
            .map(String::as_str),
        Some(name)
    );
    let data = istio
        .data
        .as_ref()
        .and_then(|d| d.get(name))
        .context("no data key")?;
    let kc = Kubeconfig::from_yaml(std::str::from_utf8(&data.0)?)?;
    assert_eq!(kc.current_context.as_deref(), Some(name));
    assert_eq!(kc.clusters[0].name, name);
    assert_eq!(kc.auth_infos[0].name, name);
    // Its token is istiod's reader's, which can list pods (the sync account cannot).
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let reader = Client::try_from(config)?;
    Api::<k8s_openapi::api::core::v1::Pod>::all(reader)
        .list(&ListParams::default())
        .await
        .context("istiod's reader lists pods")?;

    detach(env, remote, name, &[]).await?;
    assert_nothing_left(env, remote, name).await?;
    eventually("istio-system as before", DEFAULT_TIMEOUT, || async {
        Ok((istio_system_exists(&primary).await? == istio_system_before).then_some(()))
    })
    .await
}

/// `kubectl label ns <ns> <label> --overwrite` directly on `cluster`.
async fn kubectl_label(
    env: &TestEnv,
    cluster: &Cluster,
    ns: &str,
    label: &str,
) -> anyhow::Result<Output> {
    let mut cmd = env.kubectl(cluster);
    cmd.args(["label", "namespace", ns, label, "--overwrite"]);
    Ok(tokio::process::Command::from(cmd).output().await?)
}

#[tokio::test]
async fn remote_guard_warns_denies_and_spares_the_sync_account() -> anyhow::Result<()> {
    let env = env().await?;
    let (remote, _lock) = take_remote(env, 1).await?;
    let name = remote.name.as_str();
    let ns = unique_name("guarded");
    create_namespace(remote, &ns, json!({})).await?;

    attach(env, remote, &[]).await?;
    // Policies take effect asynchronously: edit (a changing value each time) until warned.
    let mut attempt = 0;
    let warning = eventually("the guard warns", DEFAULT_TIMEOUT, || {
        attempt += 1;
        let label = format!("istio-injection=v{attempt}");
        let ns = ns.clone();
        async move {
            let out = kubectl_label(env, remote, &ns, &label).await?;
            ensure!(out.status.success(), "warn mode refused: {}", stderr(&out));
            let err = stderr(&out);
            Ok(err.contains("managed by kubectl-mesh").then_some(err))
        }
    })
    .await?;
    assert!(
        warning.contains("from cluster primary")
            && warning.contains(&format!(
                "kubectl --context primary label ns {ns} istio-injection=v"
            )),
        "{warning}"
    );
    let out = kubectl_label(env, remote, &ns, "team=payments").await?;
    ensure!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("managed by kubectl-mesh"),
        "{}",
        stderr(&out)
    );

    // Deny: a re-run of attach switches the guard.
    attach(env, remote, &["--remote-guard", "deny"]).await?;
    let mut attempt = 0;
    let refusal = eventually("the guard denies", DEFAULT_TIMEOUT, || {
        attempt += 1;
        let label = format!("istio-injection=d{attempt}");
        let ns = ns.clone();
        async move {
            let out = kubectl_label(env, remote, &ns, &label).await?;
            Ok((!out.status.success()).then(|| stderr(&out)))
        }
    })
    .await?;
    assert!(refusal.contains("managed by kubectl-mesh"), "{refusal}");
    let out = kubectl_label(env, remote, &ns, "team=checkout").await?;
    ensure!(
        out.status.success(),
        "unmanaged label refused: {}",
        stderr(&out)
    );

    // The sync account's own write goes through.
    let (stored, _) = stored_client(env, name).await?;
    Api::<Namespace>::all(stored)
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"istio-injection": "from-primary"}}})),
        )
        .await
        .context("the sync account labels despite the deny guard")?;
    let mc = Api::<MeshCluster>::all(env.primary().client().await?)
        .get(name)
        .await?;
    assert_eq!(mc.spec.remote_guard, mesh::cluster::RemoteGuard::Deny);

    detach(env, remote, name, &[]).await?;
    let rc = remote.client().await?;
    assert!(
        Api::<ValidatingAdmissionPolicy>::all(rc.clone())
            .get_opt("kubectl-mesh-guard")
            .await?
            .is_none()
    );
    let mut attempt = 0;
    eventually("edits are free again", DEFAULT_TIMEOUT, || {
        attempt += 1;
        let label = format!("istio-injection=f{attempt}");
        let ns = ns.clone();
        async move {
            let out = kubectl_label(env, remote, &ns, &label).await?;
            Ok((out.status.success() && !stderr(&out).contains("kubectl-mesh")).then_some(()))
        }
    })
    .await?;
    assert_nothing_left(env, remote, name).await?;
    delete_namespace(remote, &ns).await
}

#[tokio::test]
async fn dry_run_prints_both_sides_and_creates_nothing() -> anyhow::Result<()> {
    let env = env().await?;
    let (remote, _lock) = take_remote(env, 1).await?;
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();

    let out = plugin(
        env,
        &["attach", &kubeconfig, "--dry-run", "--istio-remote-secret"],
        &[],
    )
    .await?;
    let yaml = String::from_utf8(out.stdout.clone())?;
    succeeded(&out, "dry run")?;
    for expected in [
        "# on remote cluster remote-2",
        "# on primary",
        "kind: ServiceAccount",
        "kind: ClusterRole",
        "kind: ValidatingAdmissionPolicyBinding",
        "kind: MeshCluster",
        "name: cluster-remote-2",
        "name: istio-remote-secret-remote-2",
        "token: REDACTED",
    ] {
        assert!(yaml.contains(expected), "{expected} missing in:\n{yaml}");
    }
    let out = plugin(
        env,
        &["attach", &kubeconfig, "--dry-run", "-o", "json"],
        &[],
    )
    .await?;
    succeeded(&out, "dry run -o json")?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(list["kind"], "List");
    assert!(
        list["items"].as_array().is_some_and(|i| i.len() >= 8),
        "{list}"
    );
    assert_nothing_left(env, remote, &remote.name).await
}

#[tokio::test]
async fn wait_without_a_reconciler_times_out_with_a_hint() -> anyhow::Result<()> {
    let env = env().await?;
    let (remote, _lock) = take_remote(env, 1).await?;
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let out = plugin(
        env,
        &["attach", &kubeconfig, "--wait", "--timeout", "2s"],
        &[],
    )
    .await?;
    let line = failed_last_line(&out, "attach --wait")?;
    assert!(line.contains("timed out after 2s"), "{line}");
    assert!(
        line.contains("kubectl mesh sync --cluster remote-2"),
        "{line}"
    );
    // The attach itself stands.
    assert!(!primary_by_name(env, &remote.name).await?.is_empty());
    detach(env, remote, &remote.name, &[]).await?;
    assert_nothing_left(env, remote, &remote.name).await
}

#[tokio::test]
async fn detach_of_an_unreachable_remote_needs_force_and_can_finish_later() -> anyhow::Result<()> {
    let env = env().await?;
    let (remote, _lock) = take_remote(env, 0).await?;
    let name = "flaky";
    attach(env, remote, &["--name", name]).await?;

    let dir = tempfile::tempdir()?;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let unreachable = write(
        dir.path(),
        "unreachable.yaml",
        &std::fs::read_to_string(&remote.kubeconfig)?
            .replace(&remote.server, &format!("https://127.0.0.1:{closed_port}")),
    )?;
    let unreachable = unreachable.to_string_lossy().into_owned();

    let out = plugin(
        env,
        &["detach", name, "--remote-kubeconfig", &unreachable],
        &[],
    )
    .await?;
    let line = refused_in_one_line(&out, "detach of an unreachable remote")?;
    assert!(line.contains("cannot reach remote cluster flaky"), "{line}");
    assert!(line.contains("--force"), "{line}");
    assert!(
        !primary_by_name(env, name).await?.is_empty(),
        "refused, yet changed"
    );

    // Without any remote credentials: refused as well.
    let out = plugin(env, &["detach", name], &[]).await?;
    let line = refused_in_one_line(&out, "detach without credentials")?;
    assert!(line.contains("--remote-kubeconfig"), "{line}");

    let out = plugin(
        env,
        &[
            "detach",
            name,
            "--remote-kubeconfig",
            &unreachable,
            "--force",
        ],
        &[],
    )
    .await?;
    let err = succeeded(&out, "detach --force")?;
    assert!(err.contains("left on the remote"), "{err}");
    assert!(err.contains("kubectl-mesh-sync"), "{err}");
    assert!(primary_by_name(env, name).await?.is_empty());
    assert!(
        !labelled(remote, &format!("{CLUSTER_LABEL}={name}"), false)
            .await?
            .is_empty(),
        "the remote keeps its objects"
    );

    // Once reachable, a re-run finds the leftovers by label.
    detach(env, remote, name, &[]).await?;
    assert_nothing_left(env, remote, name).await
}

#[tokio::test]
async fn detach_keeps_what_attach_did_not_create_and_strips_only_managed_labels()
-> anyhow::Result<()> {
    let env = env().await?;
    let (remote, _lock) = take_remote(env, 1).await?;
    let name = remote.name.as_str();
    let rc = remote.client().await?;

    // The mesh namespace exists before attach, with someone's ConfigMap in it.
    create_namespace(remote, MESH_NS, json!({})).await?;
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "keep-me"}}))?;
    Api::<ConfigMap>::namespaced(rc.clone(), MESH_NS)
        .create(&PostParams::default(), &cm)
        .await?;
    let shop = unique_name("shop");
    create_namespace(
        remote,
        &shop,
        json!({"istio-injection": "enabled", "istio.io/rev": "canary", "team": "a"}),
    )
    .await?;
    let namespaces = Api::<Namespace>::all(rc.clone());
    namespaces
        .patch(
            "kube-public",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"istio-injection": "enabled"}}})),
        )
        .await?;

    attach(env, remote, &["--remote-guard", "deny"]).await?;
    let mc = Api::<MeshCluster>::all(env.primary().client().await?)
        .get(name)
        .await?;
    assert_eq!(
        mc.annotations()
            .get("kubectl-mesh.io/remote-namespace-created")
            .map(String::as_str),
        Some("false")
    );
    let mesh_ns = namespaces.get(MESH_NS).await?;
    assert!(
        !mesh_ns.labels().contains_key(CLUSTER_LABEL),
        "attach labelled a namespace it did not create"
    );

    let progress = detach(env, remote, name, &["--strip-labels"]).await?;
    assert!(progress.contains("kept"), "{progress}");
    let labels = namespaces
        .get(&shop)
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    assert!(
        !labels.contains_key("istio-injection") && !labels.contains_key("istio.io/rev"),
        "{labels:?}"
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    let public = namespaces
        .get("kube-public")
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    assert_eq!(
        public.get("istio-injection").map(String::as_str),
        Some("enabled"),
        "an excluded namespace was stripped"
    );
    assert!(
        namespaces.get_opt(MESH_NS).await?.is_some(),
        "the user's namespace was deleted"
    );
    assert!(
        Api::<ConfigMap>::namespaced(rc.clone(), MESH_NS)
            .get_opt("keep-me")
            .await?
            .is_some()
    );
    let left: Vec<String> = labelled(remote, MANAGED_BY, false).await?;
    assert!(left.is_empty(), "{left:?}");
    assert!(primary_by_name(env, name).await?.is_empty());

    namespaces
        .patch(
            "kube-public",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
                {"op": "remove", "path": "/metadata/labels/istio-injection"}
            ]))?),
        )
        .await?;
    delete_namespace(remote, &shop).await?;
    delete_namespace(remote, MESH_NS).await?;
    Ok(())
}

#[tokio::test]
async fn attach_refuses_objects_it_did_not_create() -> anyhow::Result<()> {
    let env = env().await?;
    let (remote, _lock) = take_remote(env, 0).await?;
    let rc = remote.client().await?;
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "kubectl-mesh-sync"},
        "rules": [],
    }))?;
    Api::<ClusterRole>::all(rc.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let out = plugin(env, &["attach", &kubeconfig], &[]).await?;
    let result = refused_in_one_line(&out, "attach over a foreign ClusterRole");
    Api::<ClusterRole>::all(rc.clone())
        .delete("kubectl-mesh-sync", &DeleteParams::default())
        .await?;
    let line = result?;
    assert!(line.contains("ClusterRole kubectl-mesh-sync"), "{line}");
    assert!(line.contains("not created by kubectl-mesh"), "{line}");
    assert_nothing_left(env, remote, &remote.name).await?;
    Ok(())
}

#[tokio::test]
async fn wait_reports_the_first_sync_of_a_running_webhook() -> anyhow::Result<()> {
    let env = env().await?;
    // The webhook reconciles every attached cluster while it runs: hold both remotes.
    let (remote, _lock_1) = take_remote(env, 0).await?;
    let (_, _lock_2) = take_remote(env, 1).await?;
    let mut options = mesh_testenv::mesh::MeshOptions::from_workspace()?;
    options.attach_remotes = false;
    let mesh = mesh_testenv::mesh::Mesh::start(env, options).await?;

    // A primary namespace the remote lacks: the first sync reports it missing.
    let ns = unique_name("waited");
    let result = async {
        create_namespace(env.primary(), &ns, json!({"istio-injection": "enabled"})).await?;
        attach(env, remote, &["--wait", "--timeout", "60s"]).await
    }
    .await;
    mesh.stop_webhook(env)?;
    let progress = result?;
    assert!(progress.contains("remote-1 in sync:"), "{progress}");
    assert!(
        progress.contains(&format!("missing on the remote: {ns}")),
        "{progress}"
    );
    let mc = Api::<MeshCluster>::all(env.primary().client().await?)
        .get(&remote.name)
        .await?;
    assert!(
        mc.status
            .is_some_and(|s| s.is_true(mesh::cluster::CONDITION_SYNCED))
    );

    detach(env, remote, &remote.name, &[]).await?;
    assert_nothing_left(env, remote, &remote.name).await?;
    delete_namespace(env.primary(), &ns).await
}

/// `kubectl mesh check` with the primary's kubeconfig alone: it holds no context of any
/// remote, so whatever check says about a remote it read with the stored credentials.
async fn check_with_stored_credentials(env: &TestEnv) -> anyhow::Result<Output> {
    let primary = Kubeconfig::read_from(&env.primary().kubeconfig)?;
    let contexts: Vec<&str> = primary.contexts.iter().map(|c| c.name.as_str()).collect();
    ensure!(
        contexts == [env.primary().name.as_str()],
        "the primary's kubeconfig holds other contexts: {contexts:?}"
    );
    plugin(env, &["check", "--remote-timeout", "10s"], &[]).await
}

/// `kubectl mesh check` with a kubeconfig holding the primary and `remote`, whose context
/// is the one attach recorded.
async fn check_with_remote_context(env: &TestEnv, remote: &Cluster) -> anyhow::Result<Output> {
    let binary = mesh_testenv::workspace_binary("kubectl-mesh")?;
    let kubeconfig = std::env::join_paths([&env.primary().kubeconfig, &remote.kubeconfig])?;
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(["check", "--remote-timeout", "10s", "--context"])
        .arg(&env.primary().name)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBECTL_MESH_FAIL_AFTER")
        .env("NO_COLOR", "1");
    cmd.output().await.context("running kubectl-mesh check")
}

/// The lines of check's section about cluster `name`, its title left out.
fn check_section<'a>(stdout: &'a str, name: &str) -> Vec<&'a str> {
    let title = format!("cluster {name} (");
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(&title))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .collect()
}

/// The line of `name`'s section whose description is `description`, with its detail and
/// hint lines.
fn check_lines<'a>(stdout: &'a str, name: &str, description: &str) -> Vec<&'a str> {
    let section = check_section(stdout, name);
    let mut lines = section
        .iter()
        .skip_while(|l| {
            l.starts_with(' ')
                || l.split_once(' ')
                    .is_none_or(|(_, rest)| !rest.starts_with(description))
        })
        .copied();
    let mut out: Vec<&str> = lines.next().into_iter().collect();
    out.extend(lines.take_while(|l| l.starts_with("    ")));
    out
}

const GUARD_CHECK: &str = "remote guard matches spec.remoteGuard";
const RIGHTS_CHECK: &str = "credentials have exactly the rights label sync needs";

fn describe_output(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    )
}

async fn mesh_cluster(env: &TestEnv, name: &str) -> anyhow::Result<MeshCluster> {
    Ok(Api::<MeshCluster>::all(env.primary().client().await?)
        .get(name)
        .await?)
}

/// With a running webhook (so that a healthy mesh checks clean and exit statuses mean
/// something), check verifies the guard with the stored credentials alone: warn and deny
/// pass, a deleted binding fails, and after a re-attach with --remote-guard=off the guard
/// is gone and its absence passes.
#[tokio::test]
async fn check_verifies_the_guard_with_the_stored_credentials_only() -> anyhow::Result<()> {
    let env = env().await?;
    // The webhook reconciles every attached cluster while it runs: hold both remotes.
    let (remote, _lock_1) = take_remote(env, 0).await?;
    let (_, _lock_2) = take_remote(env, 1).await?;
    let name = remote.name.as_str();
    let mut options = mesh_testenv::mesh::MeshOptions::from_workspace()?;
    options.attach_remotes = false;
    let mesh = mesh_testenv::mesh::Mesh::start(env, options).await?;
    let result = guard_checks(env, remote, name).await;
    mesh.stop_webhook(env)?;
    result?;
    detach(env, remote, name, &[]).await?;
    assert_nothing_left(env, remote, name).await
}

async fn guard_checks(env: &TestEnv, remote: &Cluster, name: &str) -> anyhow::Result<()> {
    let rc = remote.client().await?;
    // (a) warn, then deny: ✓, all with the stored credentials.
    for (flag, mode) in [("warn", "Warn"), ("deny", "Deny")] {
        attach(env, remote, &["--remote-guard", flag]).await?;
        let out = check_with_stored_credentials(env).await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status.success(), "{flag}: {}", describe_output(&out));
        assert_eq!(
            check_lines(&stdout, name, GUARD_CHECK),
            [format!("✓ {GUARD_CHECK} ({mode})")],
            "{stdout}"
        );
        assert_eq!(
            check_lines(&stdout, name, RIGHTS_CHECK),
            [format!(
                "✓ {RIGHTS_CHECK} (namespaces get, list, watch, patch; guard kubectl-mesh-guard \
                 get)"
            )],
            "{stdout}"
        );
        assert_eq!(
            format!("{:?}", mesh_cluster(env, name).await?.spec.remote_guard),
            mode
        );
    }

    // (b) The binding deleted on the remote: ×, and check fails.
    Api::<ValidatingAdmissionPolicyBinding>::all(rc.clone())
        .delete("kubectl-mesh-guard", &DeleteParams::default())
        .await?;
    let out = check_with_stored_credentials(env).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert_eq!(
        check_lines(&stdout, name, GUARD_CHECK),
        [
            format!("× {GUARD_CHECK}"),
            "    spec.remoteGuard is Deny but the remote's guard is Off: \
             ValidatingAdmissionPolicyBinding kubectl-mesh-guard not found (the policy is \
             there, unbound)"
                .to_owned(),
            format!(
                "    hint: re-run `kubectl mesh attach` for {name} with --remote-guard deny \
                 --primary-name primary to install the guard it declares"
            ),
        ],
        "{stdout}"
    );
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with('×')).collect();
    assert_eq!(failed, [format!("× {GUARD_CHECK}")], "{stdout}");
    assert_eq!(
        stderr(&out),
        "error: 1 check failed; fix what the × lines say and re-run `kubectl mesh check`\n"
    );

    // (d) Re-attach with --remote-guard=off: the policy left goes, and Off checks clean.
    let progress = attach(env, remote, &["--remote-guard", "off"]).await?;
    assert!(
        progress
            .contains("ValidatingAdmissionPolicy kubectl-mesh-guard deleted (--remote-guard=off)"),
        "{progress}"
    );
    assert!(
        Api::<ValidatingAdmissionPolicy>::all(rc.clone())
            .get_opt("kubectl-mesh-guard")
            .await?
            .is_none()
    );
    assert!(
        Api::<ValidatingAdmissionPolicyBinding>::all(rc.clone())
            .get_opt("kubectl-mesh-guard")
            .await?
            .is_none()
    );
    assert_eq!(
        mesh_cluster(env, name).await?.spec.remote_guard,
        mesh::cluster::RemoteGuard::Off
    );
    let out = check_with_stored_credentials(env).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "off: {}", describe_output(&out));
    assert_eq!(
        check_lines(&stdout, name, GUARD_CHECK),
        [format!("✓ {GUARD_CHECK} (Off)")],
        "{stdout}"
    );
    Ok(())
}

/// `kubectl label namespace <ns> istio-injection=enabled` on `remote` until the guard's
/// warning names `primary` (a policy update takes effect a moment later); returns it.
async fn guard_warning_naming(
    env: &TestEnv,
    remote: &Cluster,
    ns: &str,
    primary: &str,
) -> anyhow::Result<String> {
    let wanted = format!("from cluster {primary};");
    eventually(
        &format!("the guard's warning naming {primary}"),
        DEFAULT_TIMEOUT,
        || async {
            let out = kubectl_label(env, remote, ns, "istio-injection=enabled").await?;
            ensure!(out.status.success(), "warn mode refused: {}", stderr(&out));
            let err = stderr(&out);
            if err.contains(&wanted) {
                return Ok(Some(err));
            }
            // Unset it, so that the next attempt changes the label again.
            let out = kubectl_label(env, remote, ns, "istio-injection-").await?;
            ensure!(out.status.success(), "{}", stderr(&out));
            Ok(None)
        },
    )
    .await
}

/// (c) The primary's name in the guard's message is spec.primaryName: a re-attach with
/// another --primary-name changes both, and check tells when they disagree.
#[tokio::test]
async fn reattach_with_another_primary_name_updates_the_guard() -> anyhow::Result<()> {
    let env = env().await?;
    let (remote, _lock) = take_remote(env, 1).await?;
    let name = remote.name.as_str();
    let ns = unique_name("renamed");
    create_namespace(remote, &ns, json!({})).await?;

    attach(env, remote, &[]).await?;
    assert_eq!(
        mesh_cluster(env, name).await?.spec.primary_name.as_deref(),
        Some("primary")
    );
    let warning = guard_warning_naming(env, remote, &ns, "primary").await?;
    assert!(warning.contains("Warning: "), "{warning}");

    let progress = attach(env, remote, &["--primary-name", "elsewhere"]).await?;
    for line in [
        "ValidatingAdmissionPolicy kubectl-mesh-guard updated",
        "ValidatingAdmissionPolicyBinding kubectl-mesh-guard unchanged",
        &format!("MeshCluster {name} updated"),
    ] {
        assert!(progress.contains(line), "{line} missing in\n{progress}");
    }
    let mc = mesh_cluster(env, name).await?;
    assert_eq!(mc.spec.primary_name.as_deref(), Some("elsewhere"));
    assert_eq!(mc.spec.remote_guard, mesh::cluster::RemoteGuard::Warn);
    // A direct edit on the remote is now sent to "elsewhere"; the command to run there
    // still uses the primary's context.
    let warning = guard_warning_naming(env, remote, &ns, "elsewhere").await?;
    assert!(
        warning.contains(&format!(
            "istio-injection on this cluster is managed by kubectl-mesh from cluster elsewhere; \
             set it there: kubectl --context primary label ns {ns} istio-injection=enabled \
             --overwrite"
        )),
        "{warning}"
    );
    assert!(!warning.contains("from cluster primary"), "{warning}");

    let out = check_with_stored_credentials(env).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        check_lines(&stdout, name, GUARD_CHECK),
        [format!("✓ {GUARD_CHECK} (Warn)")],
        "{}",
        describe_output(&out)
    );

    // The MeshCluster says another name than the guard's message: ×.
    let clusters = Api::<MeshCluster>::all(env.primary().client().await?);
    clusters
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"primaryName": "somewhere"}})),
        )
        .await?;
    let out = check_with_stored_credentials(env).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let lines = check_lines(&stdout, name, GUARD_CHECK);
    assert_eq!(
        lines.first().copied(),
        Some(format!("× {GUARD_CHECK}").as_str()),
        "{stdout}"
    );
    assert_eq!(
        lines.get(1).copied(),
        Some(
            "    spec.primaryName is somewhere but the guard's message names primary elsewhere: \
             people editing labels on the remote are sent to the wrong cluster"
        ),
        "{stdout}"
    );
    // What the hint says repairs it.
    attach(env, remote, &["--primary-name", "somewhere"]).await?;
    let out = check_with_stored_credentials(env).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        check_lines(&stdout, name, GUARD_CHECK),
        [format!("✓ {GUARD_CHECK} (Warn)")],
        "{stdout}"
    );

    detach(env, remote, name, &[]).await?;
    assert_nothing_left(env, remote, name).await?;
    delete_namespace(remote, &ns).await
}

/// A cluster attached by an older kubectl-mesh has a sync ClusterRole without the guard
/// read: check warns about it, reads the guard with the user's context of the remote when
/// there is one, and a re-attach grants the read. Rights beyond the guard read are reported.
#[tokio::test]
async fn check_of_an_older_attach_falls_back_to_the_users_context() -> anyhow::Result<()> {
    let env = env().await?;
    let (remote, _lock) = take_remote(env, 0).await?;
    let name = remote.name.as_str();
    let rc = remote.client().await?;
    attach(env, remote, &["--remote-guard", "deny"]).await?;

    // The ClusterRole as an older attach wrote it: namespaces only.
    let roles = Api::<ClusterRole>::all(rc.clone());
    roles
        .patch(
            "kubectl-mesh-sync",
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": [{
                "apiGroups": [""], "resources": ["namespaces"],
                "verbs": ["get", "list", "watch", "patch"],
            }]})),
        )
        .await?;
    let stdout = eventually("check to see the older rights", DEFAULT_TIMEOUT, || async {
        let out = check_with_stored_credentials(env).await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let rights = check_lines(&stdout, name, RIGHTS_CHECK);
        Ok((rights.first() == Some(&format!("‼ {RIGHTS_CHECK}").as_str())).then_some(stdout))
    })
    .await?;
    let rights = check_lines(&stdout, name, RIGHTS_CHECK);
    assert_eq!(
        rights.get(1).copied(),
        Some(
            "    not allowed: validatingadmissionpolicies get kubectl-mesh-guard, \
             validatingadmissionpolicybindings get kubectl-mesh-guard; label sync works, but \
             check reads the guard with your context of the remote instead"
        ),
        "{stdout}"
    );
    assert!(
        rights
            .get(2)
            .is_some_and(|h| h.contains(&format!("re-run `kubectl mesh attach` for {name}"))),
        "{stdout}"
    );
    // No remote context at hand: not verified, a warning.
    let guard = check_lines(&stdout, name, GUARD_CHECK);
    assert_eq!(
        guard.get(..2),
        Some(
            &[
                format!("‼ {GUARD_CHECK}").as_str(),
                &format!(
                    "    not verified: the stored credentials may not read the guard and your \
                     kubeconfig has no context {}",
                    remote.name
                ),
            ][..]
        ),
        "{stdout}"
    );
    // With the remote's context: read that way, and said so.
    let out = check_with_remote_context(env, remote).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        check_lines(&stdout, name, GUARD_CHECK),
        [format!(
            "✓ {GUARD_CHECK} (Deny; read with context {}: the stored credentials may not read \
             the guard)",
            remote.name
        )],
        "{}",
        describe_output(&out)
    );

    // A re-attach restores the read; more than it is over-privileged.
    attach(env, remote, &["--remote-guard", "deny"]).await?;
    let extra = unique_name("e2e-extra-admission");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": extra},
        "rules": [{
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingadmissionpolicies"],
            "verbs": ["get", "list"],
        }],
    }))?;
    roles.create(&PostParams::default(), &role).await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": extra},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": extra},
        "subjects": [{"kind": "ServiceAccount", "name": "kubectl-mesh-sync", "namespace": MESH_NS}],
    }))?;
    let bindings = Api::<ClusterRoleBinding>::all(rc.clone());
    bindings.create(&PostParams::default(), &binding).await?;
    let over = eventually("check to see the extra rights", DEFAULT_TIMEOUT, || async {
        let out = check_with_stored_credentials(env).await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let rights: Vec<String> = check_lines(&stdout, name, RIGHTS_CHECK)
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok((rights.first() == Some(&format!("‼ {RIGHTS_CHECK}"))).then_some((rights, stdout)))
    })
    .await;
    let cleanup = async {
        bindings.delete(&extra, &DeleteParams::default()).await?;
        roles.delete(&extra, &DeleteParams::default()).await?;
        anyhow::Ok(())
    }
    .await;
    let (rights, stdout) = over?;
    cleanup?;
    assert_eq!(
        rights.get(1).map(String::as_str),
        Some(
            "    over-privileged: also allowed validatingadmissionpolicies list, \
             validatingadmissionpolicies get (other than kubectl-mesh-guard)"
        ),
        "{stdout}"
    );
    assert_eq!(
        check_lines(&stdout, name, GUARD_CHECK),
        [format!("✓ {GUARD_CHECK} (Deny)")],
        "{stdout}"
    );
    eventually("the rights back to exactly", DEFAULT_TIMEOUT, || async {
        let out = check_with_stored_credentials(env).await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(check_lines(&stdout, name, RIGHTS_CHECK)
            .first()
            .is_some_and(|l| l.starts_with('✓'))
            .then_some(()))
    })
    .await?;

    detach(env, remote, name, &[]).await?;
    assert_nothing_left(env, remote, name).await
}
