//! A stored kubeconfig whose server is not a Kubernetes apiserver (edited, or an address that
//! now belongs to something else): what that server answers must not travel into MeshCluster
//! status, Events or kubectl's warnings, where anyone who reads them would see it.
//!
//! And a server that answers like an apiserver, with words that would drive a terminal: they
//! are shown escaped wherever they are quoted.
//!
//! The foreign server is the test's own HTTPS server: no real part answers every request
//! with an HTML page, or with a hostile `Status`, on demand.

use std::time::Duration;

use axum::{Json, Router, http::StatusCode, response::Html};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, config::Kubeconfig};
use mesh_core::cluster::{CONDITION_SYNCED, KUBECONFIG_KEY, MeshCluster, MeshClusterStatus};
use mesh_e2e::fixtures::mesh_command;
use mesh_e2e::{
    HttpsServer, TestCertificate, describe, eventually, label_on_primary, one_remote_mesh,
};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(45);
/// What an internal page might hold.
const PAGE_SECRET: &str = "internal-admin-console-db-password";
/// A refusal that, printed as it is, would clear the screen and write over the line above.
const HOSTILE: &str = "denied\x1b[2J\x1b[1A\rall clear";
/// How it reads once shown escaped.
const HOSTILE_SHOWN: &str = "denied\\u{1b}[2J\\u{1b}[1A all clear";

/// Points `cluster` at `server`, trusting `ca_pem`: its stored kubeconfig and what its
/// MeshCluster records of it (as when the recorded address now belongs to something else; a
/// stored kubeconfig edited alone is refused before anything is sent, see `rotation`).
async fn store_server(
    env: &mesh_testenv::TestEnv,
    cluster: &str,
    server: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    use base64::Engine;
    let primary = env.primary().client().await?;
    let clusters: Api<MeshCluster> = Api::all(primary.clone());
    let secrets: Api<Secret> = Api::namespaced(primary, mesh_core::MESH_NAMESPACE);
    let secret_name = clusters.get(cluster).await?.spec.secret_name;
    let stored = secrets.get(&secret_name).await?;
    let yaml = stored
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default();
    let mut kubeconfig = Kubeconfig::from_yaml(&yaml)?;
    for named in &mut kubeconfig.clusters {
        let entry = named.cluster.as_mut().expect("stored clusters have a body");
        entry.server = Some(server.to_owned());
        entry.certificate_authority_data =
            Some(base64::engine::general_purpose::STANDARD.encode(ca_pem));
    }
    let record = json!({"spec": {
        "server": server,
        "caFingerprint": mesh_core::recorded::ca_fingerprint(&kubeconfig),
    }});
    clusters
        .patch(cluster, &PatchParams::default(), &Patch::Merge(&record))
        .await?;
    // JSON is YAML.
    let edited = serde_json::to_string(&kubeconfig)?;
    let patch = json!({"stringData": {KUBECONFIG_KEY: edited}});
    secrets
        .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Starts `server` as the remote `remote` of `env` now reaches (what its stored kubeconfig
/// points at); serving until dropped.
async fn serve_as(
    env: &mesh_testenv::TestEnv,
    remote: &str,
    server: Router,
) -> anyhow::Result<HttpsServer> {
    let cert = TestCertificate::for_loopback()?;
    let foreign = HttpsServer::start(server, &cert).await?;
    let url = format!("https://{}", foreign.addr);
    store_server(env, remote, &url, &cert.ca_pem).await?;
    Ok(foreign)
}

/// The status of MeshCluster `remote` once a sync failed with HTTP status `code`.
async fn failed_with(
    env: &mesh_testenv::TestEnv,
    remote: &str,
    code: &str,
) -> anyhow::Result<MeshClusterStatus> {
    let clusters: Api<MeshCluster> = Api::all(env.primary().client().await?);
    eventually(&format!("{remote} fails with {code}"), DEADLINE, || async {
        let status = clusters.get(remote).await?.status;
        Ok(status.filter(|s| s.last_error.as_deref().is_some_and(|e| e.contains(code))))
    })
    .await
}

/// The notes of the Events on the primary that contain `needle`, once there is one.
async fn event_notes(env: &mesh_testenv::TestEnv, needle: &str) -> anyhow::Result<Vec<String>> {
    let events: Api<Event> = Api::all(env.primary().client().await?);
    eventually(&format!("an Event saying {needle}"), DEADLINE, || async {
        let notes: Vec<String> = (events.list(&ListParams::default()).await?.items)
            .into_iter()
            .filter_map(|e| e.note)
            .filter(|note| note.contains(needle))
            .collect();
        Ok((!notes.is_empty()).then_some(notes))
    })
    .await
}

#[tokio::test]
async fn a_foreign_server_page_never_reaches_status_events_or_warnings() -> anyhow::Result<()> {
    let (env, _mesh, remote, ns) = one_remote_mesh(None, "foreign").await?;
    let page = Router::new().fallback(|| async {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Html(format!("<html><body>{PAGE_SECRET}</body></html>")),
        )
    });
    let _foreign = serve_as(&env, &remote.name, page).await?;

    // The reconciler met the server: its answer shows as a failed sync with the HTTP status.
    let status = failed_with(&env, &remote.name, "500").await?;
    // A push meets it too: its warning and its Event.
    let warnings = label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    assert!(warnings.contains("remote-1"), "kubectl printed: {warnings}");
    let notes = event_notes(&env, "500").await?;

    let synced = status.condition(CONDITION_SYNCED).cloned();
    let seen = format!(
        "lastError: {:?}\nSynced: {synced:?}\nwarnings: {warnings}\nevents: {notes:?}",
        status.last_error
    );
    assert!(!seen.contains(PAGE_SECRET), "the page leaked:\n{seen}");
    assert!(seen.contains("500 Internal Server Error"), "{seen}");
    Ok(())
}

#[tokio::test]
async fn terminal_sequences_in_an_answer_are_shown_escaped_everywhere() -> anyhow::Result<()> {
    let (env, _mesh, remote, ns) = one_remote_mesh(None, "escapes").await?;
    let refusal = Router::new().fallback(|| async {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": HOSTILE, "reason": "Forbidden", "code": 403,
        });
        (StatusCode::FORBIDDEN, Json(status))
    });
    let _foreign = serve_as(&env, &remote.name, refusal).await?;

    let last_error = failed_with(&env, &remote.name, "403").await?.last_error;
    let warnings = label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    let notes = event_notes(&env, "denied").await?;
    let check = mesh_command(&env, &["check"]).await?;
    let status = mesh_command(&env, &["status", &ns]).await?;

    for (place, said) in [
        ("lastError", last_error.unwrap_or_default()),
        ("Events", notes.join("\n")),
        ("check", describe(&check)),
        ("status", describe(&status)),
    ] {
        assert!(
            said.contains(HOSTILE_SHOWN),
            "{place} lacks the refusal: {said}"
        );
        assert!(
            !said.contains('\x1b'),
            "{place} carries an escape: {said:?}"
        );
    }
    // kubectl prints the webhook's warnings; whatever it does with them, none holds one.
    assert!(warnings.contains("remote-1"), "kubectl printed: {warnings}");
    assert!(!warnings.contains('\x1b'), "warnings: {warnings:?}");
    Ok(())
}
