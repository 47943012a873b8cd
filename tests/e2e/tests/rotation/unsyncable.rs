//! `rotate --all` refuses up front a cluster the webhook cannot sync now: rotate waits for the
//! webhook to use each new token, so such a cluster would stop it there after --timeout, with
//! the clusters before it rotated and the ones after it never tried.

use mesh_core::cluster::CONDITION_SYNCED;
use mesh_e2e::{
    callers::{refused_in_one_line, unchanged},
    cluster_condition, eventually,
    fixtures::output,
    patch_mesh_cluster,
};
use serde_json::json;

use crate::support::{DEADLINE, stored_sync, token_secrets};

#[tokio::test]
async fn rotate_all_refuses_a_cluster_the_webhook_cannot_sync_before_rotating_any()
-> anyhow::Result<()> {
    let (env, _mesh) = mesh_e2e::own_mesh(3, None).await?;
    let names: Vec<String> = env.remotes().iter().map(|r| r.name.clone()).collect();
    let [first, stuck, last] = names.as_slice() else {
        anyhow::bail!("three remotes: {names:?}");
    };
    // A scope the webhook cannot use (patched in by hand, around the plugin's checks): it
    // writes nothing to that cluster, and would sync no new token of it.
    let on_managed_key = json!({"spec": {"scope": {"namespaceSelector": {
        "matchLabels": {"istio-injection": "enabled"}
    }}}});
    patch_mesh_cluster(&env, stuck, &on_managed_key).await?;
    eventually(
        &format!("{stuck} Synced=False ScopeInvalid"),
        DEADLINE,
        || async {
            Ok(cluster_condition(&env, stuck, CONDITION_SYNCED)
                .await?
                .filter(|c| c.status == "False" && c.reason == "ScopeInvalid"))
        },
    )
    .await?;

    let mut before = Vec::new();
    for (name, remote) in names.iter().zip(env.remotes()) {
        before.push((stored_sync(&env, name).await?, token_secrets(remote).await?));
    }
    // Each cluster through the context attach recorded, as --all reaches them.
    let mut all = std::process::Command::new(mesh_testenv::workspace_binary("kubectl-mesh")?);
    let kubeconfigs = std::iter::once(&env.primary().kubeconfig)
        .chain(env.remotes().iter().map(|r| &r.kubeconfig));
    all.args(["rotate", "--all", "--context", &env.primary().name])
        .args(["--timeout", "10s"])
        .env("KUBECONFIG", std::env::join_paths(kubeconfigs)?)
        .env("NO_COLOR", "1");
    let out = output(all).await?;
    let line = refused_in_one_line(&out, "rotate --all")?;
    for said in [
        format!("the webhook cannot sync {stuck} (Synced=False, ScopeInvalid"),
        "nothing was rotated".to_owned(),
        format!("`kubectl mesh rotate {first}`, `kubectl mesh rotate {last}`"),
    ] {
        assert!(line.contains(&said), "{said:?} not in {line}");
    }
    for ((name, remote), before) in names.iter().zip(env.remotes()).zip(&before) {
        let after = (stored_sync(&env, name).await?, token_secrets(remote).await?);
        unchanged(name, "the stored token and token Secrets", before, &after)?;
    }
    Ok(())
}
