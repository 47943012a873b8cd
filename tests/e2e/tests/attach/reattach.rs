//! A re-attach after the remote's address or CA changed (`attach <new kubeconfig> --name
//! <name>`) rewrites every stored kubeconfig of the cluster: the Istio remote secret too when
//! the cluster was attached with one and is re-attached without the flag. It kept the old
//! server and CA, so istiod did too, and every reader of it failed CredentialsMismatch.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, api::ListParams};

use crate::support::*;

#[tokio::test]
async fn a_re_attach_at_a_new_address_refreshes_the_istio_remote_secret() -> anyhow::Result<()> {
    let (env, remote, _lock) = open_with_remote(1).await?;
    let _istio_system = lock_istio_system(&env.primary().client().await?).await?;
    let name = remote.name.as_str();
    attach(env, remote, &["--istio-remote-secret"]).await?;

    // The same apiserver at another address its certificate names.
    let new_server = remote.server.replace("127.0.0.1", "localhost");
    ensure!(
        new_server != remote.server,
        "{} is not on loopback",
        remote.server
    );
    let dir = tempfile::tempdir()?;
    let moved = std::fs::read_to_string(&remote.kubeconfig)?.replace(&remote.server, &new_server);
    let moved = write(dir.path(), "moved.yaml", &moved)?;
    let moved = moved.to_string_lossy().into_owned();
    let out = mesh(env, &["attach", &moved, "--name", name, "--yes"], &[]).await?;
    let progress = succeeded(&out, "re-attach at the new address")?;
    let recorded = mesh_cluster(env, name).await?.spec.server;
    ensure!(recorded == new_server, "spec.server {recorded}");

    let secrets = Api::<Secret>::namespaced(env.primary().client().await?, "istio-system");
    let secret = secrets.get(&format!("istio-remote-secret-{name}")).await?;
    let (reader, kubeconfig) = mesh_e2e::client_from_secret(&secret, name).await?;
    let servers: Vec<String> = kubeconfig
        .clusters
        .iter()
        .filter_map(|c| c.cluster.as_ref()?.server.clone())
        .collect();
    ensure!(
        servers == [new_server.clone()],
        "the Istio remote secret's servers: {servers:?}\n{progress}"
    );
    ensure!(
        progress.contains("Istio remote secret kept and refreshed"),
        "{progress}"
    );
    // And istiod's reader still reads there.
    Api::<Pod>::all(reader)
        .list(&ListParams::default())
        .await
        .context("istiod's reader at the new address")?;

    detach_leaving_nothing(env, remote, name).await
}
