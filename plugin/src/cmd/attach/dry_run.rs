//! `--dry-run`: what attach would write, after preflight, with tokens redacted.

use mesh_core::printable::one_line;

use super::objects::{cluster_record, describe, for_primary, remote_objects, stored_kubeconfig};
use super::plan::Plan;
use crate::{
    Result,
    output::{self, OutputFormat},
    remote_setup as setup,
    render::Manifest,
};

/// What `--dry-run` prints: what the first sync would change on the remote and, in a takeover,
/// what it deletes of the other primary's, as comments, then every object attach would write,
/// each YAML document preceded by a comment naming its cluster; tokens redacted. `-o json`
/// gives a List with the first sync's preview beside its items (`firstSync`), and the
/// takeover's deletions (`takeover`).
pub(super) fn dry_run_output(plan: &Plan, format: OutputFormat) -> Result<String> {
    let name = &plan.name;
    let mut docs: Vec<(String, serde_json::Value)> = Vec::new();
    for m in remote_objects(plan)? {
        if m.resource.kind == "Namespace" && !plan.remote_namespace.created_by_attach() {
            continue;
        }
        let m = for_primary(m, &plan.primary_id);
        docs.push((format!("remote cluster {name}"), m.object));
    }
    let stored = stored_kubeconfig(&plan.remote_kc, name, setup::REDACTED)?;
    let mut secrets = vec![setup::cluster_secret(name, &stored)];
    if let Some(istio) = &plan.istio {
        if !istio.namespace_exists {
            docs.push((
                "primary".into(),
                Manifest::new(&setup::istio_namespace())?.object,
            ));
        }
        secrets.push(setup::istio_remote_secret(name, &stored));
    }
    if plan.view.wanted() {
        secrets.push(setup::view_secret(name, &stored));
    }
    for mut secret in secrets {
        // Readable, and as appliable: the kubeconfig as text, its token redacted.
        secret.string_data = secret.data.take().map(|data| {
            data.into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect()
        });
        docs.push(("primary".into(), Manifest::new(&secret)?.object));
    }
    let record = cluster_record(plan);
    docs.push((
        "primary".into(),
        Manifest::new(&setup::mesh_cluster(&record))?.object,
    ));

    if format == OutputFormat::Json {
        let items: Vec<_> = docs.into_iter().map(|(_, v)| v).collect();
        let list = serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": items,
            "firstSync": plan.preview,
        });
        let mut list = list;
        if let Some(leftovers) = &plan.takeover {
            list["takeover"] = serde_json::json!(takeover_lines(&plan.name, leftovers));
        }
        return output::render_values(format, &[list]);
    }
    let mut text = String::new();
    for line in plan.preview.lines() {
        // What the remote holds: shown, never obeyed.
        text.push_str(&format!("# first sync: {}\n", one_line(&line)));
    }
    if let Some(leftovers) = &plan.takeover {
        for line in takeover_lines(&plan.name, leftovers) {
            text.push_str(&format!("# takeover: {line}\n"));
        }
    }
    for (i, (side, value)) in docs.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&format!("# on {side}\n"));
        text.push_str(&output::yaml_documents(std::slice::from_ref(value))?);
    }
    Ok(text)
}

/// What a takeover of cluster `name` changes besides what it writes: the other primary's
/// tokens revoked, and its objects this run does not write (`leftovers`) deleted.
fn takeover_lines(name: &str, leftovers: &[Manifest]) -> Vec<String> {
    let mut lines = vec![format!(
        "the other primary's tokens for {name} are revoked (their Secrets deleted)"
    )];
    lines.extend(
        leftovers
            .iter()
            .map(|m| format!("deletes {} (the other primary's)", describe(m))),
    );
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A takeover's dry run listed what it writes, not the other primary's tokens it revokes
    /// nor its objects it deletes.
    #[test]
    fn a_takeover_says_what_it_revokes_and_deletes() {
        let renewal = Manifest::new(&setup::token_renewal_role("east")).unwrap();
        assert_eq!(
            takeover_lines("east", &[renewal]),
            [
                "the other primary's tokens for east are revoked (their Secrets deleted)",
                "deletes Role kubectl-mesh/kubectl-mesh-sync-token-renewal (the other primary's)",
            ]
        );
    }
}
