//! Behind an HTTP proxy (Debian's tinyproxy), as corporate networks put one between tools and
//! clusters: the plugin reaches clusters as kubectl does (`HTTPS_PROXY`, `NO_PROXY`), and a
//! webhook whose environment names a proxy pushes to the remotes through it.
//!
//! One mesh for the binary, its webhook started with `HTTPS_PROXY`; the proxy logs every
//! CONNECT it forwards.

use anyhow::Context as _;
use mesh_e2e::fixtures::{self, output};
use mesh_e2e::mesh_testenv::http_proxy::HttpProxy;
use mesh_e2e::mesh_testenv::mesh::{Mesh, MeshOptions};
use mesh_e2e::mesh_testenv::{Cluster, TestEnv};
use mesh_e2e::{
    NO_RESYNC, assert_success, create_everywhere, label_on_primary, labels, namespace_labels,
    own_mesh_with,
};
use tokio::sync::OnceCell;

struct ProxiedMesh {
    env: TestEnv,
    _mesh: Mesh,
    proxy: HttpProxy,
    _dir: tempfile::TempDir,
}

async fn proxied_mesh() -> &'static ProxiedMesh {
    static MESH: OnceCell<ProxiedMesh> = OnceCell::const_new();
    mesh_e2e::shared(&MESH, "a mesh behind a proxy", start()).await
}

async fn start() -> anyhow::Result<ProxiedMesh> {
    let dir = tempfile::tempdir()?;
    let proxy = HttpProxy::start(dir.path()).await?;
    let mut options = MeshOptions::from_workspace()?;
    options.resync_period = NO_RESYNC;
    options.webhook_env = vec![
        ("HTTPS_PROXY".into(), proxy.url().into()),
        ("NO_PROXY".into(), String::new()),
    ];
    let (env, mesh) = own_mesh_with(2, options).await?;
    Ok(ProxiedMesh {
        env,
        _mesh: mesh,
        proxy,
        _dir: dir,
    })
}

/// Whether `proxy` has forwarded a CONNECT to `cluster`'s apiserver.
fn tunnelled_to(proxy: &HttpProxy, cluster: &Cluster) -> anyhow::Result<bool> {
    let address = cluster
        .server
        .strip_prefix("https://")
        .context("the apiserver's URL is not https")?;
    let connect = format!("CONNECT {address} ");
    Ok(proxy
        .requests()?
        .iter()
        .any(|request| request.starts_with(&connect)))
}

#[tokio::test]
async fn commands_go_through_the_proxy_kubectl_uses() -> anyhow::Result<()> {
    let ProxiedMesh { env, .. } = proxied_mesh().await;
    // A proxy of its own: the webhook's calls go through the mesh's.
    let dir = tempfile::tempdir()?;
    let proxy = HttpProxy::start(dir.path()).await?;

    let mut list = fixtures::mesh_invocation(env, &["list"])?;
    list.env("HTTPS_PROXY", proxy.url())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    assert_success(&output(list).await?);
    assert!(
        tunnelled_to(&proxy, env.primary())?,
        "{:?}",
        proxy.requests()?
    );

    // A proxy nobody answers, and the apiserver's address exempt from it.
    let mut list = fixtures::mesh_invocation(env, &["list"])?;
    list.env("HTTPS_PROXY", "http://127.0.0.1:1")
        .env("NO_PROXY", "127.0.0.1");
    assert_success(&output(list).await?);
    Ok(())
}

#[tokio::test]
async fn the_webhook_pushes_through_the_proxy_of_its_environment() -> anyhow::Result<()> {
    let ProxiedMesh { env, proxy, .. } = proxied_mesh().await;
    let ns = create_everywhere(env, "proxied").await?;
    let warnings = label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
    for remote in env.remotes() {
        // Read at once: the webhook pushes before it answers.
        assert_eq!(
            namespace_labels(remote, &ns).await?,
            Some(labels(&[("istio-injection", "enabled")])),
            "not on {} before kubectl returned; kubectl said: {warnings}",
            remote.name
        );
        assert!(
            tunnelled_to(proxy, remote)?,
            "{}: {:?}",
            remote.name,
            proxy.requests()?
        );
    }
    Ok(())
}
