//! An attached cluster set up by hand, exactly as `kubectl mesh attach` leaves it, for tests
//! that need one without going through attach itself (and without a running webhook, whose
//! reconciler would correct the very drift a test sets up).
//!
//! Every object is built by `kubectl_mesh::remote_setup`, the module attach uses, so the
//! fixture cannot drift from attach: on the remote the mesh namespace, the sync
//! ServiceAccount with its ClusterRole (namespaces get/list/watch/patch) and binding, its sync
//! scope, a token and the guard; on the primary the `cluster-<name>` Secret holding the stored kubeconfig
//! (built with `kubeconfig::build_stored_kubeconfig`) and the MeshCluster.

use std::ffi::OsStr;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kubectl_mesh::{cmd::apply, kubeconfig, remote_setup as setup, render::Manifest, sync_scope};
use mesh_core::MESH_NAMESPACE;
use mesh_core::cluster::{MeshCluster, RemoteGuard};
use mesh_testenv::{Cluster, TestEnv};
use tokio::sync::OnceCell;

use crate::{DEFAULT_TIMEOUT, eventually};

/// The webhook URL of an install whose webhook never answers (nothing listens on port 1).
pub const DEAD_WEBHOOK_URL: &str = "https://127.0.0.1:1/mutate";

/// `kubectl-mesh --kubeconfig <primary's admin kubeconfig>`.
pub fn plugin(env: &TestEnv) -> anyhow::Result<Command> {
    plugin_on(env.primary())
}

/// `kubectl-mesh --kubeconfig <admin kubeconfig of primary>`: `primary` as the primary.
pub fn plugin_on(primary: &Cluster) -> anyhow::Result<Command> {
    let mut cmd = workspace_plugin()?;
    cmd.arg("--kubeconfig").arg(&primary.kubeconfig);
    Ok(cmd)
}

/// The workspace's `kubectl-mesh` binary, with nothing set.
fn workspace_plugin() -> anyhow::Result<Command> {
    Ok(Command::new(mesh_testenv::workspace_binary(
        "kubectl-mesh",
    )?))
}

/// `kubectl-mesh --kubeconfig <primary> <args>` without colours, not yet run (for a test that
/// adds to it or spawns it itself).
pub fn mesh_invocation(env: &TestEnv, args: &[&str]) -> anyhow::Result<Command> {
    mesh_invocation_on(env.primary(), args)
}

/// [`mesh_invocation`] with `primary` as the primary.
pub fn mesh_invocation_on(primary: &Cluster, args: &[&str]) -> anyhow::Result<Command> {
    let mut cmd = plugin_on(primary)?;
    cmd.args(args).env("NO_COLOR", "1");
    Ok(cmd)
}

/// `kubectl-mesh <args>` without colours, with `KUBECONFIG` listing the admin kubeconfigs of
/// the primary and of `remote` (merged as kubectl merges them), as a user of both clusters runs
/// it; not yet run.
pub fn merged_kubeconfig_invocation(
    env: &TestEnv,
    remote: &Cluster,
    args: &[&str],
) -> anyhow::Result<Command> {
    let kubeconfig = std::env::join_paths([&env.primary().kubeconfig, &remote.kubeconfig])?;
    let mut cmd = workspace_plugin()?;
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("NO_COLOR", "1");
    Ok(cmd)
}

/// `kubectl-mesh <args>` without colours and with a kubeconfig that does not exist, not yet
/// run: for what needs no cluster (`--dry-run` renderings, refused flags).
pub fn offline_invocation(args: &[impl AsRef<OsStr>]) -> anyhow::Result<Command> {
    let mut cmd = workspace_plugin()?;
    cmd.args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("NO_COLOR", "1");
    Ok(cmd)
}

/// [`mesh_invocation`] run, whatever its exit status.
pub async fn mesh_command(env: &TestEnv, args: &[&str]) -> anyhow::Result<Output> {
    output(mesh_invocation(env, args)?).await
}

/// `kubectl mesh uninstall --dry-run -o json <args>` on `primary`, which must succeed: its rows
/// as `"<kind> <namespace>/<name> <action>"` (action `delete` or `keep`).
pub async fn uninstall_plan(primary: &Cluster, args: &[&str]) -> anyhow::Result<Vec<String>> {
    let args = [&["uninstall", "--dry-run", "-o", "json"], args].concat();
    let out = output(mesh_invocation_on(primary, &args)?).await?;
    anyhow::ensure!(
        out.status.success(),
        "uninstall --dry-run failed: {}",
        crate::describe(&out)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("uninstall --dry-run -o json: {}", crate::describe(&out)))?;
    let rows = list["items"].as_array().context("no items")?.iter();
    let field = |row: &serde_json::Value, key: &str| row[key].as_str().unwrap_or("?").to_owned();
    Ok(rows
        .map(|r| {
            let (kind, ns, name) = (field(r, "kind"), field(r, "namespace"), field(r, "name"));
            format!("{kind} {ns}/{name} {}", field(r, "action"))
        })
        .collect())
}

/// Runs a command to completion, whatever its exit status.
pub async fn output(cmd: Command) -> anyhow::Result<Output> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.output()
        .await
        .with_context(|| format!("running {cmd:?}"))
}

/// Installs kubectl-mesh on the primary with a webhook URL nobody answers, once per process.
pub async fn install(env: &TestEnv) -> anyhow::Result<()> {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    INSTALLED.get_or_try_init(|| install_again(env)).await?;
    Ok(())
}

/// Installs (again) with a webhook URL nobody answers, whatever was installed before.
pub async fn install_again(env: &TestEnv) -> anyhow::Result<()> {
    let mut install = plugin(env)?;
    install.args(["install", "--webhook-url", DEAD_WEBHOOK_URL]);
    crate::run(install).await?;
    Ok(())
}

/// How the stored token is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// A `kubernetes.io/service-account-token` Secret filled by kube-controller-manager, as
    /// attach makes it: never expires.
    LongLived,
    /// A TokenRequest token that expires after this long (its `exp` claim says when).
    Expiring(Duration),
}

/// How to attach.
#[derive(Clone, Copy, Debug)]
pub struct AttachOptions {
    /// The remote guard installed and recorded in the spec.
    pub guard: RemoteGuard,
    /// The kind of token stored.
    pub token: Token,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            guard: RemoteGuard::Warn,
            token: Token::LongLived,
        }
    }
}

/// A cluster attached by [`attach`].
#[derive(Clone, Debug)]
pub struct Attached {
    /// Name of the MeshCluster.
    pub name: String,
    /// The remote of the test environment.
    pub remote: Cluster,
    /// UID of the remote's kube-system namespace.
    pub cluster_id: String,
}

async fn apply_on<K>(client: &Client, obj: &K) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize,
{
    apply::apply(client, &Manifest::new(obj)?).await?;
    Ok(())
}

/// Attaches `remote` to the primary as `name`, the way `kubectl mesh attach` does.
pub async fn attach(
    env: &TestEnv,
    remote: &Cluster,
    name: &str,
    options: AttachOptions,
) -> anyhow::Result<Attached> {
    install(env).await?;
    let remote_client = remote.client().await?;
    let primary = env.primary().client().await?;

    let namespaces: Api<Namespace> = Api::all(remote_client.clone());
    if namespaces.get_opt(MESH_NAMESPACE).await?.is_none() {
        apply_on(&remote_client, &setup::remote_namespace(name)).await?;
    }
    apply_on(
        &remote_client,
        &setup::service_account(setup::SYNC_ACCOUNT, name),
    )
    .await?;
    apply_on(&remote_client, &setup::sync_cluster_role(name)).await?;
    apply_on(
        &remote_client,
        &setup::cluster_role_binding(setup::SYNC_ACCOUNT, name),
    )
    .await?;

    // The rule installed on the primary, as attach reads it.
    let rule = kubectl_mesh::mesh_state::read_recorded_rule(&primary)
        .await?
        .unwrap_or_default();
    // No scope: the cluster is recorded without one.
    apply_on(
        &remote_client,
        &setup::sync_scope_policy(name, &rule, &Default::default()),
    )
    .await?;
    apply_on(&remote_client, &setup::sync_scope_binding(name)).await?;
    let guard = setup::Guard::new(options.guard, "primary", &env.primary().name).with_rule(&rule);
    if options.guard == RemoteGuard::Off {
        remove_guard(&remote_client).await?;
    } else {
        apply_on(&remote_client, &setup::guard_policy(name, &guard)).await?;
        apply_on(&remote_client, &setup::guard_binding(name, &guard)).await?;
    }

    let token = match options.token {
        Token::LongLived => long_lived_token(&remote_client, name).await?,
        Token::Expiring(ttl) => {
            let accounts = Api::namespaced(remote_client.clone(), MESH_NAMESPACE);
            crate::tokens::mint_token(&accounts, setup::SYNC_ACCOUNT, ttl.as_secs().try_into()?)
                .await?
        }
    };

    // The stored kubeconfig: the remote's server and CA from its admin kubeconfig, the token.
    let remote_kc = kubeconfig::read_remote(&remote.kubeconfig, None)?;
    let selected = kubeconfig::select(&remote_kc, None)?;
    let ca = selected.ca_data()?;
    let stored =
        kubeconfig::build_stored_kubeconfig(name, selected.server()?, ca.as_deref(), &token);
    kubeconfig::validate_stored(&stored)?;
    let yaml = kubeconfig::to_yaml(&stored)?;
    // As attach does: the token is stored once the remote confines it.
    let as_sync = mesh_core::remote::client_from_kubeconfig(
        name,
        &yaml,
        &kubectl_mesh::mesh_state::remote_options(DEFAULT_TIMEOUT),
    )
    .await?;
    let scope = sync_scope::wait_enforced(&as_sync, &rule, DEFAULT_TIMEOUT).await?;
    anyhow::ensure!(
        scope == sync_scope::Scope::Enforced,
        "{name}: sync scope not enforced"
    );

    let cluster_id = namespaces
        .get("kube-system")
        .await?
        .metadata
        .uid
        .context("kube-system has no uid")?;
    let record = setup::ClusterRecord {
        name: name.to_owned(),
        cluster_id: cluster_id.clone(),
        server: remote.server.clone(),
        ca_fingerprint: mesh_core::recorded::ca_fingerprint(&stored),
        tls_server_name: mesh_core::recorded::tls_server_name(&stored),
        guard: options.guard,
        primary_name: "primary".to_owned(),
        remote_namespace_created: false,
        remote_context: remote.name.clone(),
        scope: Default::default(),
    };
    apply_on(&primary, &setup::mesh_cluster(&record)).await?;
    apply_on(&primary, &setup::cluster_secret(name, &yaml)).await?;
    Ok(Attached {
        name: name.to_owned(),
        remote: remote.clone(),
        cluster_id,
    })
}

async fn remove_guard(remote: &Client) -> anyhow::Result<()> {
    let dp = DeleteParams::default();
    for result in [
        Api::<ValidatingAdmissionPolicyBinding>::all(remote.clone())
            .delete(setup::GUARD, &dp)
            .await
            .map(|_| ()),
        Api::<ValidatingAdmissionPolicy>::all(remote.clone())
            .delete(setup::GUARD, &dp)
            .await
            .map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The token kube-controller-manager writes into the sync account's token Secret.
async fn long_lived_token(remote: &Client, name: &str) -> anyhow::Result<String> {
    apply_on(
        remote,
        &setup::token_secret(setup::TOKEN_SECRET, setup::SYNC_ACCOUNT, name),
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(remote.clone(), MESH_NAMESPACE);
    eventually("the sync account's token", DEFAULT_TIMEOUT, || async {
        let secret = secrets.get(setup::TOKEN_SECRET).await?;
        Ok(secret
            .data
            .and_then(|d| d.get("token").cloned())
            .map(|t| String::from_utf8_lossy(&t.0).into_owned())
            .filter(|t| !t.is_empty()))
    })
    .await
}

/// Removes a MeshCluster and its Secret from the primary (not the remote's objects: other
/// names may share them, and [`attach`] brings them back to what it needs).
pub async fn detach(env: &TestEnv, name: &str) -> anyhow::Result<()> {
    let primary = env.primary().client().await?;
    let dp = DeleteParams::default();
    match Api::<MeshCluster>::all(primary.clone())
        .delete(name, &dp)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    match Api::<Secret>::namespaced(primary, MESH_NAMESPACE)
        .delete(&setup::cluster_secret_name(name), &dp)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Detaches every cluster and removes every remote's guard, so that a test starts from an
/// empty mesh (and a deny guard left by another test cannot refuse its label edits).
pub async fn detach_all(env: &TestEnv) -> anyhow::Result<()> {
    install(env).await?;
    let primary = env.primary().client().await?;
    let api: Api<MeshCluster> = Api::all(primary);
    for mc in api.list(&ListParams::default()).await?.items {
        detach(env, &mc.name_any()).await?;
    }
    for remote in env.remotes() {
        remove_guard(&remote.client().await?).await?;
    }
    eventually("every MeshCluster gone", DEFAULT_TIMEOUT, || async {
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await
}

/// Points cluster `name` at `server` (e.g. a port nobody listens on), as when a remote goes
/// away: both its stored kubeconfig and what its MeshCluster records (`spec.server`, which a
/// stored kubeconfig must match before anything is sent).
pub async fn point_at(env: &TestEnv, name: &str, server: &str) -> anyhow::Result<()> {
    let clusters: Api<MeshCluster> = Api::all(env.primary().client().await?);
    let patch = serde_json::json!({"spec": {"server": server}});
    clusters
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    edit_stored_server(env, name, server).await
}

/// Edits the server of the stored kubeconfig of `name` to `server`, and nothing else: a hand
/// edit of the Secret, which its MeshCluster's record (`spec.server`) no longer matches.
pub async fn edit_stored_server(env: &TestEnv, name: &str, server: &str) -> anyhow::Result<()> {
    edit_stored_cluster(env, name, |cluster| {
        cluster.server = Some(server.to_owned())
    })
    .await
}

/// Edits, as someone with write access to the primary's Secrets could, the cluster entry of the
/// kubeconfig stored for `name`.
pub async fn edit_stored_cluster(
    env: &TestEnv,
    name: &str,
    edit: impl Fn(&mut kube::config::Cluster),
) -> anyhow::Result<()> {
    let primary = env.primary().client().await?;
    let secrets: Api<Secret> = Api::namespaced(primary, MESH_NAMESPACE);
    let secret_name = setup::cluster_secret_name(name);
    let secret = secrets.get(&secret_name).await?;
    let Some(yaml) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(mesh_core::cluster::KUBECONFIG_KEY))
    else {
        bail!("Secret {secret_name} has no kubeconfig");
    };
    let mut kc = kubeconfig::parse_stored(&String::from_utf8_lossy(&yaml.0))?;
    kc.clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
        .for_each(edit);
    let yaml = kubeconfig::to_yaml(&kc)?;
    apply_on(
        &env.primary().client().await?,
        &setup::cluster_secret(name, &yaml),
    )
    .await
}

/// Gives `cluster` an injector for `istio-injection=enabled` shaped like Istio's default one,
/// so that `check` finds labelled namespaces served in a test without Istio. Nothing answers
/// its URL; with `failurePolicy: Ignore`, a pod created there is admitted without a sidecar.
pub async fn stand_in_injector(cluster: &Cluster) -> anyhow::Result<()> {
    let config: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "istio-sidecar-injector"},
        "webhooks": [{
            "name": "namespace.sidecar-injector.istio.io",
            "clientConfig": {"url": "https://127.0.0.1:1/inject"},
            "rules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["pods"],
            }],
            "namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}},
            "failurePolicy": "Ignore",
            "timeoutSeconds": 1,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }],
    }))?;
    let api = Api::<MutatingWebhookConfiguration>::all(cluster.client().await?);
    match api.create(&PostParams::default(), &config).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e).context("creating a stand-in injector"),
    }
}

/// Restarts `mesh`'s webhook (same identity) reaching the primary through a proxy the test can
/// freeze: the harness's stand-in for a partition or a stalled apiserver, which no real part
/// produces for one client.
pub async fn webhook_through_proxy(
    env: &TestEnv,
    mesh: &mesh_testenv::mesh::Mesh,
) -> anyhow::Result<mesh_testenv::proxy::Proxy> {
    let proxy = mesh_testenv::proxy::Proxy::start(env.primary()).await?;
    let proxied = env.dir().join("mesh-webhook-through-proxy.kubeconfig");
    proxy.kubeconfig(mesh.webhook_kubeconfig(), &env.primary().server, &proxied)?;
    mesh.stop_webhook(env)?;
    mesh.with_webhook_kubeconfig(proxied)
        .start_webhook(env)
        .await?;
    Ok(proxy)
}
