//! The view identity (`attach --services-view`) may read every pod spec on the remote: whether
//! it is there the remote says, so its Secret deleted on the primary does not leave its token
//! valid behind a rotation that says the old tokens are revoked.

use mesh_core::MESH_NAMESPACE;
use mesh_e2e::{
    callers::{refused_in_one_line, unchanged},
    text,
    tokens::{answer_to, revoked, stored_kubeconfig},
};

use crate::support::{one_remote, rotate, rotate_with, stored_sync, token_secrets};

/// Refused in one line (the run and its dry run alike) saying which Secret to store again and
/// how, with nothing changed; once attach stored it again, rotate revokes the old view token.
#[tokio::test]
async fn rotate_revokes_the_view_token_whose_secret_the_primary_lost() -> anyhow::Result<()> {
    let (env, mesh, remote, _ns) = one_remote(&["--services-view"], &[], "view").await?;
    let name = remote.name.clone();
    let view_secret = format!("cluster-{name}-view");
    let old_view = stored_kubeconfig(&env, MESH_NAMESPACE, &view_secret, "kubeconfig").await?;
    assert_eq!(answer_to(&old_view).await?, 201, "the view token works");
    mesh_e2e::kubectl(
        &env,
        env.primary(),
        &["delete", "secret", "-n", MESH_NAMESPACE, &view_secret],
    )
    .await?;

    let before = (
        stored_sync(&env, &name).await?,
        token_secrets(&remote).await?,
    );
    for (case, extra) in [
        ("rotate", &[][..]),
        ("rotate --dry-run", &["--dry-run"][..]),
    ] {
        let line = refused_in_one_line(&rotate_with(&env, &remote, extra).await?, case)?;
        for says in [
            format!("{MESH_NAMESPACE}/{view_secret}"),
            "kubectl-mesh-view".to_owned(),
            "missing on the primary".to_owned(),
            "--services-view".to_owned(),
        ] {
            assert!(line.contains(&says), "{case}: {says:?} not in {line}");
        }
        let after = (
            stored_sync(&env, &name).await?,
            token_secrets(&remote).await?,
        );
        unchanged(case, "the stored token and token Secrets", &before, &after)?;
    }

    // As the refusal says: attach stores the view Secret again, then rotate revokes the token
    // it held all along.
    mesh.attach_with(&remote, &["--services-view"]).await?;
    let out = rotate(&env, &remote).await?;
    assert!(out.status.success(), "rotate: {}", text(&out.stderr));
    revoked(
        "the view token from before its Secret was deleted",
        &old_view,
    )
    .await?;
    let new_view = stored_kubeconfig(&env, MESH_NAMESPACE, &view_secret, "kubeconfig").await?;
    assert_eq!(answer_to(&new_view).await?, 201, "the new view token works");
    Ok(())
}
