//! `kubectl mesh list`, `status`, `sync` and `check` against real control planes, run as the
//! built binary (and through the real kubectl's plugin discovery).
//!
//! The tests share one primary and its MeshClusters, so they take turns ([`serial`]) and each
//! starts from an empty mesh. No webhook runs (except in the test that checks a healthy one):
//! its reconciler would correct the drift these tests set up on purpose.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use anyhow::Context as _;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use kubectl_mesh::remote_setup as setup;
use mesh_core::cluster::{MeshCluster, RemoteGuard};
use mesh_e2e::callers::{Grant, kubeconfig_granting, mesh_as, refused_in_one_line};
use mesh_e2e::fixtures::{self, AttachOptions, Token, output, plugin};
use mesh_e2e::mesh_testenv::{Cluster, TestEnv};
use mesh_e2e::{
    DEFAULT_TIMEOUT, assert_success, create_labelled_namespace, describe, eventually, has_line,
    shared_env, text, unique_name,
};
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard};

/// One test at a time: they share the primary's MeshClusters.
async fn serial() -> (MutexGuard<'static, ()>, &'static TestEnv) {
    static LOCK: Mutex<()> = Mutex::const_new(());
    let guard = LOCK.lock().await;
    let env = shared_env(2).await;
    if let Err(error) = fixtures::detach_all(env).await {
        panic!("resetting the mesh: {error:#}");
    }
    (guard, env)
}

/// `kubectl-mesh --kubeconfig <primary> <args>`, whatever its exit status.
async fn mesh(env: &TestEnv, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = fixtures::mesh_invocation(env, args)?;
    cmd.env_remove("KUBECONFIG");
    output(cmd).await
}

/// Attaches `remote` (the fixture, default options) under a fresh name made of `prefix`;
/// returns that name.
async fn attach_anew(env: &TestEnv, remote: &Cluster, prefix: &str) -> anyhow::Result<String> {
    let name = unique_name(prefix);
    fixtures::attach(env, remote, &name, Default::default()).await?;
    Ok(name)
}

async fn labels_of(client: &Client, name: &str) -> BTreeMap<String, String> {
    Api::<Namespace>::all(client.clone())
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("reading namespace {name}: {e}"))
        .metadata
        .labels
        .unwrap_or_default()
}

async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// The column names of `table`.
fn header(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

/// The line of `table` whose first column is `first`.
fn row<'a>(table: &'a str, first: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first() == Some(&first))
}

#[tokio::test]
async fn list_shows_attached_clusters_and_says_when_there_are_none() -> anyhow::Result<()> {
    let (_serial, env) = serial().await;
    let out = mesh(env, &["list"]).await?;
    assert_success(&out);
    assert_eq!(text(&out.stdout), "", "{}", describe(&out));
    assert_eq!(
        text(&out.stderr),
        "No clusters attached. Attach one with: kubectl mesh attach <kubeconfig>\n"
    );
    let out = mesh(env, &["list", "-o", "json"]).await?;
    let empty: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(empty["items"], json!([]), "{}", describe(&out));

    let east_name = unique_name("east");
    let west_name = unique_name("west");
    let east = fixtures::attach(
        env,
        &env.remotes()[0],
        &east_name,
        AttachOptions {
            token: Token::Expiring(Duration::from_secs(3600)),
            ..Default::default()
        },
    )
    .await?;
    let west = fixtures::attach(env, &env.remotes()[1], &west_name, Default::default()).await?;

    let out = mesh(env, &["list"]).await?;
    assert_success(&out);
    let table = text(&out.stdout);
    let header = header(&table);
    assert_eq!(
        header,
        [
            "NAME",
            "SERVER",
            "REACHABLE",
            "SYNCED",
            "IN-SYNC",
            "MISSING",
            "DRIFTED",
            "LAST-SYNC",
            "AGE"
        ],
        "{table}"
    );
    let east_row = row(&table, &east_name).expect("east listed");
    // Never synced (no webhook runs): conditions unknown, counts not known yet.
    assert_eq!(
        &east_row[1..8],
        [
            east.remote.server.as_str(),
            "Unknown",
            "Unknown",
            "<none>",
            "<none>",
            "<none>",
            "<none>"
        ],
        "{table}"
    );
    assert!(row(&table, &west_name).is_some(), "{table}");

    let wide = text(&mesh(env, &["list", "-o", "wide"]).await?.stdout);
    let east_row = row(&wide, &east_name).expect("east listed");
    assert_eq!(east_row[1], east.cluster_id, "{wide}");
    let expiry = east_row[east_row.len() - 2];
    assert!(
        expiry == "in 59m" || expiry == "in 60m",
        "token expiry {expiry:?}: {wide}"
    );
    let west_row = row(&wide, &west_name).expect("west listed");
    assert_eq!(west_row[1], west.cluster_id);
    assert_eq!(west_row[west_row.len() - 2], "never", "{wide}");

    let out = mesh(env, &["list", "-o", "json"]).await?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(list["kind"], "List");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, [east_name.as_str(), west_name.as_str()]);
    assert_eq!(list["items"][0]["kind"], "MeshCluster");
    assert_eq!(list["items"][0]["spec"]["clusterId"], east.cluster_id);
    assert!(list["items"][0]["metadata"].get("managedFields").is_none());

    let out = mesh(env, &["list", "-o", "yaml"]).await?;
    assert!(
        text(&out.stdout).contains(&format!("name: {west_name}")),
        "{}",
        describe(&out)
    );
    Ok(())
}

/// Makes the requests about Secrets that the ServiceAccount of `caller` (a kubeconfig of
/// [`kubeconfig_granting`]) sends the primary countable, allowed or refused: a FlowSchema of
/// their own, whose requests the apiserver counts as it dispatches them, before it authorizes
/// them. Returns the FlowSchema's name once the apiserver classifies requests by it.
async fn count_secret_requests(env: &TestEnv, caller: &std::path::Path) -> anyhow::Result<String> {
    let account = caller
        .file_stem()
        .and_then(|s| s.to_str())
        .context("account")?;
    let schema = format!("{account}-secrets");
    let flow_schema = json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
        "metadata": {"name": schema},
        "spec": {"matchingPrecedence": 500, "priorityLevelConfiguration": {"name": "catch-all"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount",
                    "serviceAccount": {"name": account, "namespace": "default"}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": [""], "resources": ["secrets"],
                    "namespaces": ["*"]}]}]},
    });
    mesh_e2e::kubectl_apply(env, env.primary(), &flow_schema.to_string()).await?;
    let dangling = r#"jsonpath={.status.conditions[?(@.type=="Dangling")].status}"#;
    let args = ["get", "flowschema", &schema, "-o", dangling];
    eventually("the FlowSchema in force", DEFAULT_TIMEOUT, || async {
        Ok((mesh_e2e::kubectl(env, env.primary(), &args).await? == "False").then_some(()))
    })
    .await?;
    Ok(schema)
}

/// Requests the primary has dispatched through FlowSchema `schema` so far.
async fn requests_through(env: &TestEnv, schema: &str) -> anyhow::Result<f64> {
    let metrics = mesh_e2e::kubectl(env, env.primary(), &["get", "--raw", "/metrics"]).await?;
    let label = format!(r#"flow_schema="{schema}""#);
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_flowcontrol_dispatched_requests_total{"))
        .filter(|l| l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Only `list -o wide` shows the stored tokens' expiry, so only it reads Secrets: a caller
/// who may read MeshClusters but not Secrets lists the clusters as a table and as JSON
/// without asking for a Secret; `-o wide` asks, is refused, and says so (not "unknown", which
/// is a token whose expiry cannot be read from it).
#[tokio::test]
async fn list_reads_secrets_only_for_the_format_that_shows_token_expiries() -> anyhow::Result<()> {
    let (_serial, env) = serial().await;
    let name = attach_anew(env, &env.remotes()[0], "east").await?;
    let rules = json!([{"apiGroups": [mesh_core::GROUP], "resources": ["meshclusters"],
        "verbs": ["get", "list"]}]);
    let caller = kubeconfig_granting(env.primary(), env.dir(), &[Grant::everywhere(rules)]).await?;
    let schema = count_secret_requests(env, &caller).await?;
    for args in [["list"].as_slice(), &["list", "-o", "json"]] {
        let out = mesh_as(&caller, args).await?;
        assert_success(&out);
        assert!(
            text(&out.stdout).contains(&name),
            "{args:?}: {}",
            describe(&out)
        );
        assert_eq!(
            requests_through(env, &schema).await?,
            0.0,
            "{args:?} asked for a Secret"
        );
    }
    let wide = mesh_as(&caller, &["list", "-o", "wide"]).await?;
    assert_success(&wide);
    let table = text(&wide.stdout);
    let cells = row(&table, &name).expect("listed");
    assert_eq!(cells[cells.len() - 2], "unreadable", "{table}");
    let secret = format!("cannot read Secret kubectl-mesh/cluster-{name}");
    assert!(
        text(&wide.stderr).contains(&format!("token of {name}: not read ({secret}")),
        "{}",
        describe(&wide)
    );
    assert_eq!(
        requests_through(env, &schema).await?,
        1.0,
        "wide: one Secret asked for"
    );
    Ok(())
}

#[tokio::test]
async fn status_shows_drift_and_sync_converges_it() -> anyhow::Result<()> {
    let (_serial, env) = serial().await;
    let remote = &env.remotes()[0];
    let name = attach_anew(env, remote, "drift").await?;
    let primary = env.primary().client().await?;
    let remote_client = remote.client().await?;
    let ns = unique_name("app");
    let in_sync = unique_name("calm");
    create_labelled_namespace(env.primary(), &ns, &[("istio-injection", "enabled")]).await?;
    create_labelled_namespace(
        remote,
        &ns,
        &[("istio-injection", "disabled"), ("team", "a")],
    )
    .await?;
    create_labelled_namespace(env.primary(), &in_sync, &[("istio.io/rev", "1-24")]).await?;
    create_labelled_namespace(remote, &in_sync, &[("istio.io/rev", "1-24")]).await?;
    let absent = unique_name("absent");
    create_labelled_namespace(env.primary(), &absent, &[("istio-injection", "enabled")]).await?;

    // The matrix: drift marked where the remote differs, in sync and missing where not.
    let out = mesh(env, &["status", &ns, &in_sync, &absent]).await?;
    assert_success(&out);
    let table = text(&out.stdout);
    let header = header(&table);
    assert_eq!(
        header,
        ["NAMESPACE", "PRIMARY", name.to_uppercase().as_str()]
    );
    assert_eq!(
        row(&table, &ns).expect("row"),
        [
            ns.as_str(),
            "istio-injection=enabled",
            "istio-injection=disabled (drift)"
        ],
        "{table}"
    );
    assert_eq!(
        row(&table, &in_sync).expect("row"),
        [in_sync.as_str(), "istio.io/rev=1-24", "istio.io/rev=1-24"],
        "{table}"
    );
    assert_eq!(
        row(&table, &absent).expect("row"),
        [absent.as_str(), "istio-injection=enabled", "(missing)"],
        "{table}"
    );
    assert!(
        text(&out.stderr).contains(&format!(
            "1 namespace on {name} differs from the primary: {ns}"
        )),
        "{}",
        describe(&out)
    );
    // Without arguments, every namespace with a managed label is a row.
    let all = text(&mesh(env, &["status"]).await?.stdout);
    assert!(
        row(&all, &ns).is_some() && row(&all, &absent).is_some(),
        "{all}"
    );

    let out = mesh(env, &["status", "--exit-code", &ns]).await?;
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(!text(&out.stderr).contains("error:"), "{}", describe(&out));

    let out = mesh(env, &["status", "-o", "json", &ns]).await?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["drifted"], 1, "{v}");
    let cell = &v["namespaces"][0]["clusters"][&name];
    assert_eq!(cell["state"], "drifted", "{v}");
    assert_eq!(cell["set"]["istio-injection"], "enabled", "{v}");

    // The row sync prints for the drift, in a dry run and for real.
    let shows_the_drift = |stdout: &str| {
        stdout.lines().any(|l| {
            l.split_whitespace().collect::<Vec<_>>()
                == [name.as_str(), ns.as_str(), "+istio-injection=enabled"]
        })
    };
    // A dry run prints the change and makes none.
    let out = mesh(env, &["sync", "--dry-run", "--cluster", &name]).await?;
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(shows_the_drift(&stdout), "{stdout}");
    assert!(stdout.contains("dry run, nothing written"), "{stdout}");
    assert_eq!(
        labels_of(&remote_client, &ns).await["istio-injection"],
        "disabled",
        "a dry run changed the remote"
    );

    // The real sync converges, touching nothing but managed labels.
    let out = mesh(env, &["sync", "--cluster", &name]).await?;
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(shows_the_drift(&stdout), "{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_default();
    assert!(
        summary.contains("corrected") && summary.contains(&format!("1 missing ({absent})")),
        "{stdout}"
    );
    let after = labels_of(&remote_client, &ns).await;
    assert_eq!(after["istio-injection"], "enabled");
    assert_eq!(after["team"], "a");
    assert!(
        Api::<Namespace>::all(remote_client.clone())
            .get_opt(&absent)
            .await?
            .is_none(),
        "sync never creates namespaces"
    );

    // Converged: a second sync writes nothing, status finds no drift.
    let out = mesh(env, &["sync", "--cluster", &name]).await?;
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.ends_with(", 0 writes\n"), "{stdout}");
    assert!(!stdout.contains(&format!("   {ns}   ")), "{stdout}");
    let out = mesh(env, &["status", "--exit-code", &ns]).await?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    for n in [&ns, &in_sync, &absent] {
        delete_namespace(&primary, n).await;
        delete_namespace(&remote_client, n).await;
    }
    Ok(())
}

/// With the webhook configuration gone (deleted by hand, an uninstall stopped half-way), sync,
/// plan and status applied the default rule: they wrote and judged labels the installation may
/// not manage. Every command that applies the rule refuses, and changes nothing.
#[tokio::test]
async fn without_the_webhook_configuration_the_rule_is_unknown_and_nothing_is_synced()
-> anyhow::Result<()> {
    let (_serial, env) = serial().await;
    let name = attach_anew(env, &env.remotes()[0], "norule").await?;
    let configurations = Api::<MutatingWebhookConfiguration>::all(env.primary().client().await?);
    let saved = configurations.get("kubectl-mesh").await?;
    configurations
        .delete("kubectl-mesh", &DeleteParams::default())
        .await?;
    let mut outputs = Vec::new();
    for args in [
        &["sync"][..],
        &["plan"],
        &["status"],
        &["scope", &name, "--exclude-namespaces", "team-a"],
        &["detach", &name, "--strip-labels"],
    ] {
        outputs.push((args.join(" "), mesh(env, args).await));
    }
    let mut restored = saved;
    let meta = &mut restored.metadata;
    (meta.resource_version, meta.uid, meta.managed_fields) = (None, None, None);
    configurations
        .create(&PostParams::default(), &restored)
        .await?;
    for (command, out) in outputs {
        let line = refused_in_one_line(&out?, &command)?;
        assert!(
            line.contains(
                "the sync rule is unknown: MutatingWebhookConfiguration kubectl-mesh, which \
                 records it, is gone; run `kubectl mesh install` again"
            ),
            "{command}: {line}"
        );
    }
    let cluster = Api::<MeshCluster>::all(env.primary().client().await?)
        .get(&name)
        .await?;
    assert!(
        cluster.spec.scope.exclude_namespaces.is_empty(),
        "{cluster:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_remote_is_a_column_in_status_and_a_failure_in_sync() -> anyhow::Result<()> {
    let (_serial, env) = serial().await;
    let up = attach_anew(env, &env.remotes()[0], "up").await?;
    let down = attach_anew(env, &env.remotes()[1], "down").await?;
    fixtures::point_at(env, &down, "https://127.0.0.1:1").await?;
    let primary = env.primary().client().await?;
    let ns = unique_name("seen");
    create_labelled_namespace(env.primary(), &ns, &[("istio-injection", "enabled")]).await?;

    let out = mesh(env, &["status", "--remote-timeout", "3s", &ns]).await?;
    assert_success(&out);
    let table = text(&out.stdout);
    let header = header(&table);
    let column = |name: &str| header.iter().position(|h| *h == name.to_uppercase());
    let cells = row(&table, &ns).expect("row");
    assert_eq!(
        cells[column(&down).expect("down column")],
        "(unreachable)",
        "{table}"
    );
    assert_eq!(
        cells[column(&up).expect("up column")],
        "(missing)",
        "{table}"
    );
    assert!(
        text(&out.stderr).contains(&format!("{down} unreachable: ")),
        "{}",
        describe(&out)
    );

    let out = mesh(env, &["sync", "--remote-timeout", "3s"]).await?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("{down}: failed: ")), "{stdout}");
    assert!(stdout.contains(&format!("{up}: ")), "{stdout}");
    assert_eq!(
        text(&out.stderr).lines().last().unwrap_or_default(),
        format!(
            "error: sync failed on 1 of 2 clusters: {down}; see the lines above; \
             `kubectl mesh check` diagnoses a cluster"
        ),
        "{}",
        describe(&out)
    );

    let out = mesh(env, &["sync", "--cluster", "nope"]).await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: no attached cluster named nope; attached clusters: "),
        "{}",
        describe(&out)
    );
    delete_namespace(&primary, &ns).await;
    Ok(())
}

/// `check` with a kubeconfig holding the primary and the remote, as a user of both clusters
/// runs it (the guard is read with the stored credentials all the same; `attach.rs` checks
/// with the primary's kubeconfig alone, and with credentials of an older attach).
async fn check(env: &TestEnv, remote: &Cluster) -> anyhow::Result<Output> {
    let context = &env.primary().name;
    output(fixtures::merged_kubeconfig_invocation(
        env,
        remote,
        &["check", "--context", context],
    )?)
    .await
}

fn mesh_testenv_binary() -> anyhow::Result<std::path::PathBuf> {
    mesh_e2e::mesh_testenv::workspace_binary("kubectl-mesh")
}

fn marked(stdout: &str, mark: char) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with(mark)).collect()
}

#[tokio::test]
async fn check_reports_a_dead_webhook_then_revoked_rbac() -> anyhow::Result<()> {
    let (_serial, env) = serial().await;
    let remote = &env.remotes()[0];
    // Another test may have installed a webhook URL of its own.
    fixtures::install_again(env).await?;
    let name = attach_anew(env, remote, "checked").await?;

    // Healthy but for the webhook, which nobody runs: exactly one ×.
    let out = check(env, remote).await?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert_eq!(
        marked(&stdout, '×'),
        ["× webhook answers admission requests"],
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "without an answer from {}",
            fixtures::DEAD_WEBHOOK_URL
        )),
        "{stdout}"
    );
    for line in [
        "✓ MeshCluster CustomResourceDefinition is established".to_owned(),
        "✓ namespace kubectl-mesh exists".to_owned(),
        "✓ MutatingWebhookConfiguration kubectl-mesh is present".to_owned(),
        format!("✓ clientConfig says where the webhook is ({})", fixtures::DEAD_WEBHOOK_URL),
        format!("✓ Secret holds a valid kubeconfig (Secret kubectl-mesh/cluster-{name})"),
        format!(
            "✓ remote answers with the stored credentials (as {})",
            setup::sync_username()
        ),
        "✓ credentials have exactly the rights label sync needs (namespaces get, list, watch, patch; guard kubectl-mesh-guard get; mutatingwebhookconfigurations get, list, watch)".to_owned(),
        "✓ credentials do not expire soon (long-lived token)".to_owned(),
        "✓ remote guard matches spec.remoteGuard (Warn)".to_owned(),
    ] {
        assert!(has_line(&stdout, &line), "missing {line:?} in\n{stdout}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("✓ caBundle is a valid, unexpired CA certificate (expires in ")),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("Status check results are × (1 error, 0 warnings)\n"),
        "{stdout}"
    );
    assert_eq!(
        text(&out.stderr),
        "error: 1 check failed; fix what the × lines say and re-run `kubectl mesh check`\n"
    );
    let json_out = {
        let mut cmd = plugin(env)?;
        cmd.args(["check", "-o", "json"]);
        output(cmd).await?
    };
    let v: serde_json::Value = serde_json::from_slice(&json_out.stdout)?;
    assert_eq!(v["errors"], 1, "{v}");
    assert_eq!(v["sections"][0]["name"], "kubectl-mesh installation");

    // Revoke the sync account's rights on the remote: check must say so, with a ×.
    let bindings: Api<ClusterRoleBinding> = Api::all(remote.client().await?);
    bindings
        .delete(setup::SYNC_ACCOUNT, &DeleteParams::default())
        .await?;
    let stdout = eventually(
        "check to see the revoked rights",
        DEFAULT_TIMEOUT,
        || async {
            let out = check(env, remote).await?;
            let stdout = text(&out.stdout);
            Ok((out.status.code() == Some(1)
                && has_line(
                    &stdout,
                    "× credentials have exactly the rights label sync needs",
                ))
            .then_some(stdout))
        },
    )
    .await?;
    let rights = stdout
        .lines()
        .skip_while(|l| *l != "× credentials have exactly the rights label sync needs")
        .take(3)
        .collect::<Vec<_>>();
    assert_eq!(
        rights[1],
        "    not allowed: namespaces get, namespaces list, namespaces watch, namespaces patch, \
         validatingadmissionpolicies get kubectl-mesh-guard, \
         validatingadmissionpolicybindings get kubectl-mesh-guard, \
         mutatingwebhookconfigurations get, mutatingwebhookconfigurations list, \
         mutatingwebhookconfigurations watch",
        "{stdout}"
    );
    assert!(
        rights[2].starts_with("    hint: the remote's ClusterRole or ClusterRoleBinding"),
        "{stdout}"
    );
    assert!(
        has_line(&stdout, "× remote namespaces carry the primary's labels"),
        "{stdout}"
    );

    // attach (here: the fixture) restores the binding.
    fixtures::attach(env, remote, &name, Default::default()).await?;
    Ok(())
}

#[tokio::test]
async fn check_passes_with_a_running_webhook() -> anyhow::Result<()> {
    use mesh_e2e::mesh_testenv::mesh::{Mesh, MeshOptions};
    let (_serial, env) = serial().await;
    let remote = &env.remotes()[1];
    let name = unique_name("healthy");
    fixtures::attach(
        env,
        remote,
        &name,
        AttachOptions {
            guard: RemoteGuard::Deny,
            ..Default::default()
        },
    )
    .await?;
    // Install pointing at a real mesh-webhook process; a long resync so that it leaves the
    // other tests' drift alone while it runs.
    let mesh = Mesh::start(
        env,
        MeshOptions {
            resync_period: Duration::from_secs(3600),
            attach_remotes: false,
            ..MeshOptions::from_workspace()?
        },
    )
    .await?;
    struct StopWebhook<'a>(&'a Mesh, &'a TestEnv);
    impl Drop for StopWebhook<'_> {
        fn drop(&mut self) {
            let _ = self.0.stop_webhook(self.1);
        }
    }
    let _stop = StopWebhook(&mesh, env);

    let out = check(env, remote).await?;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(marked(&stdout, '×').is_empty(), "{stdout}");
    assert!(marked(&stdout, '‼').is_empty(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l
                .starts_with("✓ webhook answers admission requests (dry-run probe on namespace ")),
        "{stdout}"
    );
    assert!(
        has_line(&stdout, "✓ remote guard matches spec.remoteGuard (Deny)"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("Status check results are ✓ (0 errors, 0 warnings)\n"),
        "{stdout}"
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_finds_the_plugin_on_path() -> anyhow::Result<()> {
    let (_serial, env) = serial().await;
    let dir = tempfile::tempdir()?;
    std::os::unix::fs::symlink(mesh_testenv_binary()?, dir.path().join("kubectl-mesh"))?;
    let path = std::env::join_paths(std::iter::once(dir.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let kubectl = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env.binaries().kubectl());
        cmd.args(args)
            .env("PATH", &path)
            .env_remove("KUBECONFIG")
            .env("NO_COLOR", "1");
        cmd
    };

    let out = output(kubectl(&["plugin", "list"])).await?;
    assert!(
        text(&out.stdout).contains("kubectl-mesh"),
        "{}",
        describe(&out)
    );

    let out = output(kubectl(&["mesh", "--help"])).await?;
    assert_success(&out);
    let help = text(&out.stdout);
    assert!(
        help.starts_with("Manage a multi-cluster Istio mesh from its primary cluster"),
        "{help}"
    );
    assert!(
        help.contains("Usage: kubectl mesh [OPTIONS] <COMMAND>"),
        "{help}"
    );
    for command in ["list", "status", "sync", "check", "attach"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from\n{help}"
        );
    }

    let primary = env.primary().kubeconfig.to_string_lossy().into_owned();
    let out = output(kubectl(&["mesh", "list", "--kubeconfig", &primary])).await?;
    assert_success(&out);
    assert_eq!(
        text(&out.stderr),
        "No clusters attached. Attach one with: kubectl mesh attach <kubeconfig>\n"
    );

    let name = attach_anew(env, &env.remotes()[0], "found").await?;
    let out = output(kubectl(&["mesh", "list", "--kubeconfig", &primary])).await?;
    assert_success(&out);
    assert!(
        row(&text(&out.stdout), &name).is_some(),
        "{}",
        describe(&out)
    );
    Ok(())
}

#[tokio::test]
async fn commands_fail_in_one_line_without_an_installation() -> anyhow::Result<()> {
    // A remote's admin kubeconfig: kubectl-mesh is not installed there.
    let (_serial, env) = serial().await;
    let remote = &env.remotes()[1];
    // Commands about one cluster too: a get of a MeshCluster answers 404 there as for a
    // cluster not attached, and they must not say that.
    for args in [
        ["list"].as_slice(),
        &["status"],
        &["sync"],
        &["detach", "remote-1"],
        &["rotate", "remote-1"],
        &["scope", "remote-1"],
    ] {
        let out = output(fixtures::mesh_invocation_on(remote, args)?).await?;
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert_eq!(
            text(&out.stderr),
            "error: kubectl-mesh is not installed on this cluster (no MeshCluster resource); \
             run `kubectl mesh install`, or pick the primary with --context\n",
            "{args:?}"
        );
    }
    // check says what is missing instead, in its own format.
    let out = output(fixtures::mesh_invocation_on(remote, &["check"])?).await?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        has_line(
            &text(&out.stdout),
            "× MeshCluster CustomResourceDefinition is established"
        ),
        "{}",
        describe(&out)
    );
    Ok(())
}

/// MeshClusters on `cluster` served by an aggregated API whose backend does not exist: the
/// apiserver answers every request for them 503, as it does while an extension is down (and as
/// a load balancer without backends does). Unregistered when dropped, even by a failed test:
/// the cluster is shared.
struct UnavailableMeshApi<'a> {
    env: &'a TestEnv,
    cluster: &'a Cluster,
}

impl<'a> UnavailableMeshApi<'a> {
    const NAME: &'static str = "v1alpha1.kubectl-mesh.io";

    async fn register(env: &'a TestEnv, cluster: &'a Cluster) -> anyhow::Result<Self> {
        let manifest = env.dir().join("unavailable-mesh-api.yaml");
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata:\n  name: {}\n\
                 spec:\n  group: {}\n  version: v1alpha1\n  groupPriorityMinimum: 1000\n  \
                 versionPriority: 15\n  insecureSkipTLSVerify: true\n  service:\n    \
                 namespace: default\n    name: mesh-api-gone\n    port: 443\n",
                Self::NAME,
                mesh_core::GROUP
            ),
        )?;
        let manifest = manifest.to_str().context("manifest path is not UTF-8")?;
        mesh_e2e::kubectl(env, cluster, &["apply", "-f", manifest]).await?;
        let unavailable = Self { env, cluster };
        let path = format!("/apis/{}/v1alpha1/meshclusters", mesh_core::GROUP);
        eventually("MeshClusters answered 503", DEFAULT_TIMEOUT, || async {
            let mut get = tokio::process::Command::from(env.kubectl(cluster));
            let out = get.args(["get", "--raw", &path]).output().await?;
            Ok(text(&out.stderr)
                .contains("ServiceUnavailable")
                .then_some(()))
        })
        .await?;
        Ok(unavailable)
    }
}

impl Drop for UnavailableMeshApi<'_> {
    fn drop(&mut self) {
        let mut delete = self.env.kubectl(self.cluster);
        delete.args(["delete", "apiservice", Self::NAME, "--ignore-not-found"]);
        if let Err(error) = delete.output() {
            eprintln!("cannot unregister {}: {error}", Self::NAME);
        }
    }
}

#[tokio::test]
async fn commands_fail_at_once_when_the_apiserver_answers_unavailable() -> anyhow::Result<()> {
    let (_serial, env) = serial().await;
    let remote = &env.remotes()[1];
    let _unavailable = UnavailableMeshApi::register(env, remote).await?;
    for args in [["list"].as_slice(), &["status"], &["sync"]] {
        // kubectl itself answers within a second; minutes of hidden retries must not hide the
        // answer.
        let run = output(fixtures::mesh_invocation_on(remote, args)?);
        let out = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .with_context(|| format!("{args:?} still running after 30 s"))??;
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {}", describe(&out));
        assert!(
            stderr.starts_with("error: ") && stderr.contains("503 Service Unavailable"),
            "{args:?}: {stderr}"
        );
    }
    Ok(())
}

/// The read commands give up on a primary that never answers after `--request-timeout`, with
/// one line saying where they looked and what to do: whether the TLS handshake never completes
/// (https) or the request is never answered (http, where the connection itself succeeds).
#[tokio::test]
async fn read_commands_give_up_on_a_hung_primary_after_the_request_timeout() -> anyhow::Result<()> {
    const REQUEST_TIMEOUT: &str = "2s";
    /// Far below kube's own connect timeout (30 s), and a hang without end.
    const DEADLINE: Duration = Duration::from_secs(20);
    let hung = mesh_core::fixtures::SilentServer::start().await;
    let dir = tempfile::tempdir()?;
    for scheme in ["https", "http"] {
        let server = format!("{scheme}://{}", hung.address);
        let kubeconfig = dir.path().join(format!("{scheme}.kubeconfig"));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: hung\n  cluster:\n    server: \
                 {server}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    \
                 token: not-asked\ncontexts:\n- name: hung\n  context:\n    cluster: hung\n    \
                 user: admin\ncurrent-context: hung\n"
            ),
        )?;
        let runs = [
            ["status"].as_slice(),
            &["list"],
            &["services"],
            &["check"],
            &["plan"],
            &["dashboard", "--no-browser"],
        ]
        .map(|args| {
            let (kubeconfig, server) = (&kubeconfig, &server);
            async move {
                let mut cmd = tokio::process::Command::new(
                    mesh_e2e::mesh_testenv::workspace_binary("kubectl-mesh")?,
                );
                cmd.args(args)
                    .arg("--kubeconfig")
                    .arg(kubeconfig)
                    .args(["--request-timeout", REQUEST_TIMEOUT])
                    .env("NO_COLOR", "1")
                    .env_remove("KUBECONFIG")
                    .kill_on_drop(true);
                let out = tokio::time::timeout(DEADLINE, cmd.output())
                    .await
                    .with_context(|| {
                        format!("{args:?} on {server}: still running after {DEADLINE:?}")
                    })??;
                anyhow::Ok((args, out))
            }
        });
        for run in futures::future::join_all(runs).await {
            let (args, out) = run?;
            assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
            // One line: what the command was doing, then who did not answer and what to do.
            let stderr = text(&out.stderr);
            let said = format!(
                ": the primary at {server} did not answer within {REQUEST_TIMEOUT}; check the \
                 server of context hung in your kubeconfig, or pass a longer --request-timeout\n"
            );
            assert!(
                stderr.starts_with("error: cannot ")
                    && stderr.ends_with(&said)
                    && stderr.lines().count() == 1,
                "{args:?}: {}",
                describe(&out)
            );
            assert_eq!(text(&out.stdout), "", "{args:?}");
        }
    }
    Ok(())
}
