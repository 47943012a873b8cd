//! A remote the caller cannot reach (its apiserver up for the webhook, but not where the
//! caller's kubeconfig points): `rotate --all --dry-run` says what it cannot tell of that one
//! and goes on with every cluster; a real rotate refuses before it changes anything.

use mesh_e2e::{callers::unchanged, describe, fixtures::output, text};
use mesh_testenv::{Cluster, ports::free_port};

use crate::support::{stored_sync, token_secrets};

/// A copy of `remote`'s admin kubeconfig in `dir` (same context name, credentials and CA)
/// whose server is a local port nothing listens on.
fn pointing_at_a_closed_port(
    remote: &Cluster,
    dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&remote.kubeconfig)?)?;
    kc["clusters"][0]["cluster"]["server"] = format!("https://127.0.0.1:{}", free_port()?).into();
    let path = dir.join(format!("{}-unreachable.kubeconfig", remote.name));
    std::fs::write(&path, serde_yaml::to_string(&kc)?)?;
    Ok(path)
}

#[tokio::test]
async fn a_dry_run_goes_on_past_a_remote_it_cannot_reach() -> anyhow::Result<()> {
    let (env, _mesh) = mesh_e2e::own_mesh(2, None).await?;
    let [reached, down] = env.remotes() else {
        anyhow::bail!("two remotes: {:?}", env.remotes().len());
    };
    let dir = tempfile::tempdir()?;
    // Each cluster through the context attach recorded, as --all reaches them; `down`'s
    // context points where nothing answers.
    let kubeconfigs = [
        env.primary().kubeconfig.clone(),
        reached.kubeconfig.clone(),
        pointing_at_a_closed_port(down, dir.path())?,
    ];
    let rotate_all = |extra: &[&str]| -> anyhow::Result<std::process::Command> {
        let mut all = std::process::Command::new(mesh_testenv::workspace_binary("kubectl-mesh")?);
        all.args(["rotate", "--all", "--context", &env.primary().name])
            .args(extra)
            .env("KUBECONFIG", std::env::join_paths(&kubeconfigs)?)
            .env("NO_COLOR", "1");
        Ok(all)
    };
    let mut before = Vec::new();
    for remote in [reached, down] {
        before.push((
            stored_sync(&env, &remote.name).await?,
            token_secrets(remote).await?,
        ));
    }

    let dry = output(rotate_all(&["--dry-run"])?).await?;
    let said = text(&dry.stderr);
    assert!(dry.status.success(), "{}", describe(&dry));
    let warned: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with(&format!("! {}: ", down.name)))
        .collect();
    assert_eq!(warned.len(), 1, "one warning about {}: {said}", down.name);
    for says in [
        format!("cannot reach remote cluster {}", down.name),
        "the steps below are what the primary shows".to_owned(),
    ] {
        assert!(warned[0].contains(&says), "{says:?} not in {}", warned[0]);
    }
    for remote in [reached, down] {
        let steps = format!(
            "{}: would rotate the token of ServiceAccount kubectl-mesh/kubectl-mesh-sync:",
            remote.name
        );
        assert!(said.contains(&steps), "{steps:?} not in {said}");
    }

    // A real run needs the remote: refused, in one line, before the reachable one is rotated.
    let out = output(rotate_all(&[])?).await?;
    let line = mesh_e2e::callers::refused_in_one_line(&out, "rotate --all")?;
    assert!(
        line.contains(&format!("cannot reach remote cluster {}", down.name)),
        "{line}"
    );
    for (remote, before) in [reached, down].into_iter().zip(&before) {
        let after = (
            stored_sync(&env, &remote.name).await?,
            token_secrets(remote).await?,
        );
        unchanged(
            &remote.name,
            "the stored token and token Secrets",
            before,
            &after,
        )?;
    }
    Ok(())
}
