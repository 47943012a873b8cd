//! The life of an installation beyond the happy path: `kubectl mesh uninstall` with clusters
//! still attached (and the detach that cleans their remotes afterwards), re-running `install`
//! without the rule flags, and the reconciler's backoff against a remote whose apiserver is
//! down.
//!
//! Every test starts its own control planes (uninstall destroys the mesh, the backoff test
//! stops an apiserver and runs the webhook with its own flags). They take turns ([`serial`]):
//! the backoff test measures intervals of a few hundred milliseconds, which control planes
//! starting beside it on a small machine would blur.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kubectl_mesh::remote_setup as setup;
use mesh_core::MESH_NAMESPACE;
use mesh_core::cluster::{CONDITION_REACHABLE, MeshCluster, MeshClusterStatus};
use mesh_e2e::callers::{Grant, kubeconfig_granting, mesh_as, refused_in_one_line, unchanged};
use mesh_e2e::check_report::CheckReport;
use mesh_e2e::fixtures::{merged_kubeconfig_invocation, mesh_command, output, uninstall_plan};
use mesh_e2e::mesh_testenv::mesh::{Mesh, MeshOptions};
use mesh_e2e::mesh_testenv::{Cluster, Options, TestEnv};
use mesh_e2e::{
    DEFAULT_TIMEOUT, NO_RESYNC, assert_success, create_everywhere, create_namespace, describe,
    eventually, has_line, holds_all, installed_webhook, kubectl, kubectl_output, label_on_primary,
    labels, managed_labels, none_mentions, one_remote_mesh_with, own_mesh, own_mesh_with,
    reviews_answered, text, unique_name,
};
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard};

/// One test at a time (see the module comment).
async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// `kubectl get <kinds> -A -l <selector> -o name` on `cluster`, as a set.
async fn objects(
    env: &TestEnv,
    cluster: &Cluster,
    kinds: &str,
    selector: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let names = kubectl(
        env,
        cluster,
        &["get", kinds, "-A", "-l", selector, "-o", "name"],
    )
    .await?;
    Ok(names.lines().map(str::to_owned).collect())
}

/// Everything on the primary labelled as made by kubectl-mesh, of every kind install or
/// attach creates there (MeshClusters apart: their kind goes with the CRD).
async fn mesh_objects_on_primary(env: &TestEnv) -> anyhow::Result<BTreeSet<String>> {
    objects(
        env,
        env.primary(),
        "namespaces,serviceaccounts,secrets,roles,rolebindings,clusterroles,clusterrolebindings,\
         deployments,poddisruptionbudgets,services,mutatingwebhookconfigurations,\
         customresourcedefinitions",
        &format!("{}=kubectl-mesh", setup::MANAGED_BY_LABEL),
    )
    .await
}

/// Runs `kubectl mesh <args>` and checks that it is refused as on a cluster without
/// kubectl-mesh.
async fn refused_as_not_installed(env: &TestEnv, args: &[&str]) -> anyhow::Result<()> {
    let out = mesh_command(env, args).await?;
    let refused = out.status.code() == Some(1)
        && text(&out.stderr).starts_with("error: kubectl-mesh is not installed on this cluster");
    anyhow::ensure!(refused, "{args:?}: {}", describe(&out));
    Ok(())
}

/// Waits until nothing made by kubectl-mesh is left on the primary (an uninstall with
/// `--crd`): the CRD goes once its MeshClusters are gone.
async fn nothing_left_on_primary(env: &TestEnv) -> anyhow::Result<()> {
    let left = || async { Ok(mesh_objects_on_primary(env).await?.is_empty().then_some(())) };
    eventually(
        "nothing of kubectl-mesh left on the primary",
        DEFAULT_TIMEOUT,
        left,
    )
    .await
}

/// Everything on the primary made by kubectl-mesh ([`mesh_objects_on_primary`]), which must
/// hold what every installation has (its namespace, webhook configuration and ClusterRole) and
/// `also`.
async fn installation(env: &TestEnv, also: &[&str]) -> anyhow::Result<BTreeSet<String>> {
    let installed = mesh_objects_on_primary(env).await?;
    let every_installation = [
        "namespace/kubectl-mesh",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/kubectl-mesh",
        "clusterrole.rbac.authorization.k8s.io/kubectl-mesh:mesh-webhook",
    ];
    let expected = [&every_installation[..], also].concat();
    holds_all("the installation", &installed, &expected)?;
    Ok(installed)
}

/// What attach created on a remote for the cluster `name`.
async fn attach_objects_on_remote(
    env: &TestEnv,
    remote: &Cluster,
    name: &str,
) -> anyhow::Result<BTreeSet<String>> {
    objects(
        env,
        remote,
        "namespaces,serviceaccounts,secrets,clusterroles,clusterrolebindings,\
         validatingadmissionpolicies,validatingadmissionpolicybindings",
        &setup::selector(name),
    )
    .await
}

/// Names of the MeshClusters on the primary; none when their CRD is gone.
async fn mesh_clusters(env: &TestEnv) -> anyhow::Result<Vec<String>> {
    Ok(mesh_core::cluster::names(&env.primary().client().await?).await?)
}

/// Whether the primary's apiserver still sends a managed-label change to a webhook: a
/// server-side dry run is answered with the webhook's dry-run warning when it does.
async fn primary_calls_a_webhook(env: &TestEnv, ns: &str) -> anyhow::Result<bool> {
    let probe = [
        "label",
        "namespace",
        ns,
        "istio-injection=webhook-probe",
        "--overwrite",
        "--dry-run=server",
    ];
    let out = kubectl_output(env, env.primary(), &probe).await?;
    Ok(text(&out.stderr).contains("kubectl-mesh: dry run"))
}

async fn admission_reviews(mesh: &Mesh) -> anyhow::Result<f64> {
    reviews_answered(mesh.metrics_address(), &mesh.ca_pem()?).await
}

#[tokio::test]
async fn uninstall_refuses_with_clusters_attached_then_removes_the_mesh_from_the_primary_only()
-> anyhow::Result<()> {
    let _serial = serial().await;
    let (env, mesh) = own_mesh(2, None).await?;
    let (kept, detached) = (&env.remotes()[0], &env.remotes()[1]);
    let primary = env.primary().client().await?;

    // Before: a change on the primary goes through the webhook to the remotes.
    let shop = create_everywhere(&env, "shop").await?;
    let reviews = admission_reviews(&mesh).await?;
    let warnings = label_on_primary(&env, &shop, &["istio-injection=enabled"]).await?;
    assert!(
        warnings.contains(&format!(
            "kubectl-mesh: istio-injection=enabled applied on {}",
            kept.name
        )),
        "{warnings}"
    );
    assert_eq!(admission_reviews(&mesh).await?, reviews + 1.0);
    let enabled = labels(&[("istio-injection", "enabled")]);
    assert_eq!(managed_labels(kept, &shop).await?, Some(enabled.clone()));
    let also = [
        "customresourcedefinition.apiextensions.k8s.io/meshclusters.kubectl-mesh.io",
        "clusterrolebinding.rbac.authorization.k8s.io/kubectl-mesh:mesh-webhook",
        "secret/cluster-remote-1",
    ];
    let installed = installation(&env, &also).await?;
    let left_on_kept = attach_objects_on_remote(&env, kept, &kept.name).await?;
    assert!(
        left_on_kept.contains("serviceaccount/kubectl-mesh-sync"),
        "{left_on_kept:?}"
    );

    // Attached clusters: refused, nothing deleted; a dry run refuses in the same words.
    let refusal = "error: 2 cluster(s) still attached: remote-1, remote-2; run `kubectl mesh \
                   detach <name>` for each first, or pass --force to leave their remote objects \
                   behind\n";
    for args in [&["uninstall"][..], &["uninstall", "--dry-run"]] {
        let out = mesh_command(&env, args).await?;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert_eq!(text(&out.stderr), refusal, "{args:?}");
    }

    // With --force a dry run lists what goes, the stored credentials too, the CRD only with
    // --crd, and deletes nothing.
    let plan = uninstall_plan(env.primary(), &["--force"]).await?;
    let rows = [
        "MutatingWebhookConfiguration /kubectl-mesh delete",
        "PodDisruptionBudget kubectl-mesh/mesh-webhook delete",
        "ClusterRole /kubectl-mesh:mesh-webhook delete",
        "Secret kubectl-mesh/cluster-remote-1 delete",
        "Namespace /kubectl-mesh delete",
    ];
    holds_all("the plan", &plan, &rows)?;
    none_mentions("the plan without --crd", &plan, "CustomResourceDefinition")?;
    let plan = uninstall_plan(env.primary(), &["--force", "--crd"]).await?;
    assert!(
        plan.iter()
            .any(|r| r.starts_with("CustomResourceDefinition ")),
        "{plan:#?}"
    );
    assert_eq!(mesh_objects_on_primary(&env).await?, installed);

    // Detached first: nothing of it is left on its remote.
    let out = mesh_command(
        &env,
        &[
            "detach",
            &detached.name,
            "--remote-kubeconfig",
            &detached.kubeconfig.to_string_lossy(),
        ],
    )
    .await?;
    assert_success(&out);
    assert_eq!(
        attach_objects_on_remote(&env, detached, &detached.name).await?,
        BTreeSet::new()
    );

    let out = mesh_command(&env, &["uninstall", "--force"]).await?;
    assert_success(&out);
    let stderr = text(&out.stderr);
    for line in [
        "! leaving the remote objects of remote-1 behind (--force); `kubectl mesh detach \
         remote-1 --remote-kubeconfig <file>` removes them afterwards",
        "✓ MutatingWebhookConfiguration kubectl-mesh deleted",
        "✓ ClusterRole kubectl-mesh:mesh-webhook deleted",
        "✓ Secret cluster-remote-1 deleted (stored credentials of remote-1)",
        "✓ Namespace kubectl-mesh deleted",
        "• the MeshCluster CRD is kept; `kubectl mesh uninstall --crd` removes it",
    ] {
        assert!(has_line(&stderr, line), "{line:?} in\n{stderr}");
    }

    // On the primary: gone, read back from the API.
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(primary.clone());
    assert!(webhooks.get_opt("kubectl-mesh").await?.is_none());
    let roles: Api<ClusterRole> = Api::all(primary.clone());
    assert!(roles.get_opt("kubectl-mesh:mesh-webhook").await?.is_none());
    let bindings: Api<ClusterRoleBinding> = Api::all(primary.clone());
    assert!(
        bindings
            .get_opt("kubectl-mesh:mesh-webhook")
            .await?
            .is_none()
    );
    let namespaces: Api<Namespace> = Api::all(primary.clone());
    eventually(
        "the mesh namespace deleted, with the stored credentials",
        DEFAULT_TIMEOUT,
        || async {
            Ok(namespaces
                .get_opt(MESH_NAMESPACE)
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    assert_eq!(
        mesh_objects_on_primary(&env).await?,
        BTreeSet::from([
            "customresourcedefinition.apiextensions.k8s.io/meshclusters.kubectl-mesh.io".to_owned()
        ]),
        "only the CRD is kept"
    );
    assert_eq!(mesh_clusters(&env).await?, std::slice::from_ref(&kept.name));

    // On the remote left attached: everything attach made, and the labels, stay.
    assert_eq!(
        attach_objects_on_remote(&env, kept, &kept.name).await?,
        left_on_kept
    );
    assert_eq!(managed_labels(kept, &shop).await?, Some(enabled.clone()));

    // The webhook process still runs, but the primary no longer calls it. The apiserver
    // drops a deleted webhook configuration asynchronously: wait until its dry run says so.
    eventually(
        "the primary stops calling the webhook",
        DEFAULT_TIMEOUT,
        || async { Ok((!primary_calls_a_webhook(&env, &shop).await?).then_some(())) },
    )
    .await?;
    let after = unique_name("after");
    create_namespace(env.primary(), &after).await?;
    create_namespace(kept, &after).await?;
    let reviews = admission_reviews(&mesh).await?;
    let warnings = label_on_primary(&env, &after, &["istio-injection=enabled"]).await?;
    assert!(!warnings.contains("kubectl-mesh"), "{warnings}");
    assert_eq!(
        admission_reviews(&mesh).await?,
        reviews,
        "a review was sent"
    );
    let stored = namespaces.get(&after).await?;
    assert!(
        !stored
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(mesh_webhook::admission::PROPAGATION_ANNOTATION),
        "a webhook recorded a propagation"
    );
    assert_eq!(managed_labels(kept, &after).await?, Some(labels(&[])));

    // Re-running is safe; --crd takes the CRD and every MeshCluster with it.
    let out = mesh_command(&env, &["uninstall", "--force", "--crd"]).await?;
    assert_success(&out);
    let stderr = text(&out.stderr);
    for line in [
        "• MutatingWebhookConfiguration kubectl-mesh not found",
        "✓ CustomResourceDefinition meshclusters.kubectl-mesh.io deleted",
    ] {
        assert!(
            has_line(&stderr, line),
            "{line:?} in
{stderr}"
        );
    }
    nothing_left_on_primary(&env).await?;
    assert_eq!(mesh_clusters(&env).await?, Vec::<String>::new());
    refused_as_not_installed(&env, &["list"]).await?;
    assert_eq!(
        attach_objects_on_remote(&env, kept, &kept.name).await?,
        left_on_kept
    );
    Ok(())
}

/// After `uninstall --force --crd` the primary knows nothing of the clusters it left attached;
/// the detach that uninstall names still removes everything attach made on a remote, given its
/// kubeconfig, or its context alone in a kubeconfig holding both clusters.
#[tokio::test]
async fn detach_cleans_the_remotes_an_uninstall_with_force_and_crd_left_behind()
-> anyhow::Result<()> {
    let _serial = serial().await;
    let mut options = MeshOptions::from_workspace()?;
    // With Istio remote secrets: the istio-system attach created for them goes too.
    let attach_args = ["--remote-guard", "deny", "--istio-remote-secret"];
    options.attach_args = attach_args.map(String::from).to_vec();
    let (env, _mesh) = own_mesh_with(2, options).await?;
    let (by_file, by_context) = (&env.remotes()[0], &env.remotes()[1]);
    let on_primary = mesh_objects_on_primary(&env).await?;
    anyhow::ensure!(
        on_primary.contains("namespace/istio-system"),
        "{on_primary:?}"
    );
    let made_by_attach = [
        format!(
            "validatingadmissionpolicy.admissionregistration.k8s.io/{}",
            setup::GUARD
        ),
        format!(
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/{}",
            setup::GUARD
        ),
        format!(
            "validatingadmissionpolicy.admissionregistration.k8s.io/{}",
            setup::SYNC_SCOPE
        ),
        format!(
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/{}",
            setup::SYNC_SCOPE
        ),
        format!("serviceaccount/{}", setup::SYNC_ACCOUNT),
        format!("secret/{}", setup::TOKEN_SECRET),
        format!(
            "clusterrole.rbac.authorization.k8s.io/{}",
            setup::SYNC_ACCOUNT
        ),
        format!(
            "clusterrolebinding.rbac.authorization.k8s.io/{}",
            setup::SYNC_ACCOUNT
        ),
        format!("namespace/{MESH_NAMESPACE}"),
    ];
    let made_by_attach: Vec<&str> = made_by_attach.iter().map(String::as_str).collect();
    for remote in [by_file, by_context] {
        let found = attach_objects_on_remote(&env, remote, &remote.name).await?;
        holds_all(
            &format!("what attach made on {}", remote.name),
            &found,
            &made_by_attach,
        )?;
    }

    let out = mesh_command(&env, &["uninstall", "--force", "--crd"]).await?;
    assert_success(&out);
    let stderr = text(&out.stderr);
    for remote in [by_file, by_context] {
        let name = &remote.name;
        let line = format!(
            "! leaving the remote objects of {name} behind (--force); `kubectl mesh detach \
             {name} --remote-kubeconfig <file>` removes them afterwards"
        );
        assert!(has_line(&stderr, &line), "{line:?} in\n{stderr}");
    }
    nothing_left_on_primary(&env).await?;

    // Without the remote: refused as on any cluster without kubectl-mesh, nothing touched.
    let left = attach_objects_on_remote(&env, by_file, &by_file.name).await?;
    refused_as_not_installed(&env, &["detach", &by_file.name]).await?;
    assert_eq!(
        attach_objects_on_remote(&env, by_file, &by_file.name).await?,
        left
    );

    let remote_kubeconfig = by_file.kubeconfig.to_string_lossy();
    let out = mesh_command(
        &env,
        &[
            "detach",
            &by_file.name,
            "--remote-kubeconfig",
            &remote_kubeconfig,
        ],
    )
    .await?;
    assert_success(&out);
    assert_eq!(
        attach_objects_on_remote(&env, by_file, &by_file.name).await?,
        BTreeSet::new()
    );

    let detach_by_context = [
        "detach",
        &by_context.name,
        "--context",
        &env.primary().name,
        "--remote-context",
        &by_context.name,
    ];
    let out = output(merged_kubeconfig_invocation(
        &env,
        by_context,
        &detach_by_context,
    )?)
    .await?;
    assert_success(&out);
    assert_eq!(
        attach_objects_on_remote(&env, by_context, &by_context.name).await?,
        BTreeSet::new()
    );
    Ok(())
}

/// A label key outside the default rule.
const ZONE: &str = "team.example.com/zone";

/// What a rule leaves on the primary: the webhook configuration's annotations and
/// matchConditions, and the in-cluster webhook's environment (`None` in URL mode).
#[derive(Debug, PartialEq)]
struct RenderedRule {
    annotations: Option<std::collections::BTreeMap<String, String>>,
    match_conditions: serde_json::Value,
    webhook_env: Option<serde_json::Value>,
}

async fn rendered_rule(env: &TestEnv) -> anyhow::Result<RenderedRule> {
    let (configuration, webhook) = installed_webhook(env).await?;
    let deployment = Api::<Deployment>::namespaced(env.primary().client().await?, MESH_NAMESPACE)
        .get_opt("mesh-webhook")
        .await?;
    let container: Option<Container> = deployment
        .and_then(|d| d.spec)
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next());
    Ok(RenderedRule {
        annotations: configuration.metadata.annotations,
        match_conditions: serde_json::to_value(webhook.match_conditions)?,
        webhook_env: container.map(|c| serde_json::to_value(c.env)).transpose()?,
    })
}

/// `install` with `args`; its stderr.
async fn install(env: &TestEnv, args: &[&str]) -> anyhow::Result<String> {
    let out = mesh_command(env, &[&["install"], args].concat()).await?;
    anyhow::ensure!(out.status.success(), "{}", describe(&out));
    Ok(text(&out.stderr))
}

#[tokio::test]
async fn install_without_rule_flags_resets_a_custom_rule_with_a_warning() -> anyhow::Result<()> {
    let _serial = serial().await;
    // Only the primary: install applies, and no webhook needs to run for what it renders.
    let env = TestEnv::start(Options::with_remotes(0)).await?;
    let custom_labels = format!("{ZONE},istio-injection");
    let default_excluded = "kube-system,kube-public,kube-node-lease,kubectl-mesh";

    let stderr = install(&env, &[]).await?;
    assert!(!stderr.contains("sync rule"), "{stderr}");
    let default_rule = rendered_rule(&env).await?;
    assert_eq!(
        default_rule.annotations,
        Some(labels(&[
            (
                "kubectl-mesh.io/managed-labels",
                "istio-injection,istio.io/rev,istio.io/dataplane-mode"
            ),
            ("kubectl-mesh.io/excluded-namespaces", default_excluded),
        ]))
    );
    assert!(default_rule.webhook_env.is_some(), "{default_rule:?}");

    let stderr = install(&env, &["--managed-labels", &custom_labels]).await?;
    let default_described = "managed istio-injection, istio.io/dataplane-mode, istio.io/rev; \
                             excluded kube-node-lease, kube-public, kube-system, kubectl-mesh";
    let custom_described = format!(
        "managed istio-injection, {ZONE}; excluded kube-node-lease, kube-public, kube-system, \
         kubectl-mesh"
    );
    assert!(
        stderr.lines().any(|l| l
            == format!("! the sync rule changes from {default_described} to {custom_described}")),
        "{stderr}"
    );
    let custom_rule = rendered_rule(&env).await?;
    assert_eq!(
        custom_rule.annotations,
        Some(labels(&[
            ("kubectl-mesh.io/managed-labels", custom_labels.as_str()),
            ("kubectl-mesh.io/excluded-namespaces", default_excluded),
        ]))
    );
    let conditions = custom_rule.match_conditions.to_string();
    assert!(conditions.contains(&format!("'{ZONE}'")), "{conditions}");
    assert!(!conditions.contains("istio.io/rev"), "{conditions}");
    let env_text = custom_rule.webhook_env.as_ref().map(ToString::to_string);
    assert!(
        env_text
            .as_deref()
            .is_some_and(|e| e.contains(&custom_labels)),
        "{env_text:?}"
    );

    // The re-run without flags: the default rule everywhere install writes it, and a warning.
    let stderr = install(&env, &[]).await?;
    assert!(
        stderr.lines().any(|l| l
            == format!("! the sync rule changes from {custom_described} to {default_described}")),
        "{stderr}"
    );
    assert_eq!(rendered_rule(&env).await?, default_rule);
    // Once reset, a re-run changes nothing and says nothing about the rule.
    let stderr = install(&env, &[]).await?;
    assert!(!stderr.contains("sync rule"), "{stderr}");

    // With an external webhook, the warning says how to restart it.
    let policies = Api::<NetworkPolicy>::namespaced(env.primary().client().await?, MESH_NAMESPACE);
    assert!(
        policies.get_opt("mesh-webhook").await?.is_some(),
        "the in-cluster webhook's pods have a NetworkPolicy"
    );
    let budgets =
        Api::<PodDisruptionBudget>::namespaced(env.primary().client().await?, MESH_NAMESPACE);
    assert!(
        budgets.get_opt("mesh-webhook").await?.is_some(),
        "the in-cluster webhook's pods have a PodDisruptionBudget"
    );
    let url = "https://127.0.0.1:9443/mutate";
    install(&env, &["--webhook-url", url, "--managed-labels", ZONE]).await?;
    let stderr = install(&env, &["--webhook-url", url]).await?;
    assert!(
        stderr.lines().any(|l| l
            == format!(
                "! the sync rule changes from managed {ZONE}; excluded kube-node-lease, \
                 kube-public, kube-system, kubectl-mesh to the default: restart mesh-webhook \
                 without --managed-labels and --excluded-namespaces"
            )),
        "{stderr}"
    );
    let url_rule = rendered_rule(&env).await?;
    assert_eq!(url_rule.annotations, default_rule.annotations);
    assert_eq!(url_rule.match_conditions, default_rule.match_conditions);
    assert_eq!(
        url_rule.webhook_env, None,
        "URL mode removes the Deployment"
    );
    assert!(
        policies.get_opt("mesh-webhook").await?.is_none(),
        "and the NetworkPolicy of its pods"
    );
    assert!(
        budgets.get_opt("mesh-webhook").await?.is_none(),
        "and their PodDisruptionBudget"
    );
    Ok(())
}

/// A re-run without `--client-allowed-names` (any certificate of the client CA may then call
/// the webhook) or without `--webhook-url` (the webhook moves into the cluster) warns, naming
/// the flags that keep what was installed; a re-run with them says nothing of it.
#[tokio::test]
async fn install_without_caller_names_or_webhook_url_warns_how_to_keep_them() -> anyhow::Result<()>
{
    let _serial = serial().await;
    // Only the primary: install applies, and no webhook needs to run for what it renders.
    let env = TestEnv::start(Options::with_remotes(0)).await?;
    let ca = env.webhook_client().ca_cert.to_string_lossy().into_owned();
    let names = "kube-apiserver,front-proxy";
    let with_names = ["--client-ca-file", &ca, "--client-allowed-names", names];
    let deployments = Api::<Deployment>::namespaced(env.primary().client().await?, MESH_NAMESPACE);
    let installed_names = || async {
        let deployment = deployments.get("mesh-webhook").await?;
        anyhow::Ok(
            kubectl_mesh::cmd::check::caller_auth::allowed_names(&deployment).map(str::to_owned),
        )
    };

    install(&env, &with_names).await?;
    let stderr = install(&env, &with_names).await?;
    assert!(!stderr.contains("--client-allowed-names"), "{stderr}");
    assert_eq!(installed_names().await?.as_deref(), Some(names));
    let stderr = install(&env, &["--client-ca-file", &ca]).await?;
    assert!(
        has_line(
            &stderr,
            "! the webhook's --client-allowed-names kube-apiserver,front-proxy goes (any \
             certificate its client CA signed may call it); to keep it, re-run with \
             --client-allowed-names kube-apiserver,front-proxy"
        ),
        "{stderr}"
    );
    assert_eq!(installed_names().await?, None, "what the warning said");

    // Without the client CA the names go with it: both warnings, the flags to keep both.
    install(&env, &with_names).await?;
    let stderr = install(&env, &[]).await?;
    assert!(
        has_line(
            &stderr,
            "! the webhook's --client-allowed-names kube-apiserver,front-proxy goes with its \
             client CA; to keep them, re-run with --client-ca-file <the CA file used at install> \
             --client-allowed-names kube-apiserver,front-proxy"
        ),
        "{stderr}"
    );
    assert!(
        stderr.lines().any(|l| l.starts_with("! ")
            && l.ends_with("the webhook no longer authenticates its callers")),
        "{stderr}"
    );

    let url = "https://127.0.0.1:9443/mutate";
    install(&env, &["--webhook-url", url]).await?;
    let stderr = install(&env, &["--webhook-url", url]).await?;
    assert!(!stderr.contains("--webhook-url"), "{stderr}");
    assert!(
        deployments.get_opt("mesh-webhook").await?.is_none(),
        "URL mode removes the Deployment"
    );
    let stderr = install(&env, &[]).await?;
    assert!(
        has_line(
            &stderr,
            "! the webhook configuration called https://127.0.0.1:9443/mutate (--webhook-url); \
             this run installs the webhook in the cluster instead; to keep it, re-run with \
             --webhook-url https://127.0.0.1:9443/mutate"
        ),
        "{stderr}"
    );
    let (_, webhook) = installed_webhook(&env).await?;
    assert_eq!(webhook.client_config.url, None, "what the warning said");
    Ok(())
}

/// The serving certificate an installation holds: the webhook configuration's caBundle (PEM) and
/// the data of the Secret with the certificate and key.
async fn installed_certificate(env: &TestEnv) -> anyhow::Result<(String, serde_json::Value)> {
    let (_, webhook) = installed_webhook(env).await?;
    let secret = Api::<Secret>::namespaced(env.primary().client().await?, MESH_NAMESPACE)
        .get(kubectl_mesh::render::TLS_SECRET)
        .await?;
    Ok((
        text(&webhook.client_config.ca_bundle.unwrap_or_default().0),
        serde_json::to_value(secret.data)?,
    ))
}

#[tokio::test]
async fn a_cert_dir_that_cannot_be_written_refuses_before_anything_is_applied() -> anyhow::Result<()>
{
    let _serial = serial().await;
    let env = TestEnv::start(Options::with_remotes(0)).await?;
    let url = "https://127.0.0.1:9443";
    install(&env, &["--webhook-url", url]).await?;
    let before = installed_certificate(&env).await?;

    // A regular file where the directory should be, and a new certificate (--rotate-certs),
    // which the cluster and the external webhook's files must get together or not at all.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("a-file");
    std::fs::write(&file, "")?;
    let file = file.to_string_lossy();
    let rotate = ["--webhook-url", url, "--rotate-certs", "--webhook-cert-dir"];
    let out = mesh_command(&env, &[&["install"], &rotate[..], &[&*file]].concat()).await?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        installed_certificate(&env).await? == before,
        "the installed certificate changed: {}",
        describe(&out)
    );
    let stderr = text(&out.stderr);
    let errors = error_lines(&stderr);
    assert!(
        matches!(errors[..], [line] if line.contains(&*file) && line.contains("nothing was installed")),
        "{stderr}"
    );
    assert!(!stderr.contains(" applied"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&*file)?, "", "the file was written");

    // A directory it can write: the new certificate lands there and in the cluster alike,
    // nothing else left in it.
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_string_lossy();
    install(&env, &[&rotate[..], &[&*certs_arg]].concat()).await?;
    let (ca_bundle, _) = installed_certificate(&env).await?;
    assert_ne!(ca_bundle, before.0, "no new certificate");
    // The new CA, and the previous one until the webhook serves the new certificate.
    let new_ca = std::fs::read_to_string(certs.join("ca.crt"))?;
    assert_eq!(ca_bundle, format!("{new_ca}{}", before.0));
    let mut files = std::fs::read_dir(&certs)?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    files.sort();
    assert_eq!(files, ["ca.crt", "tls.crt", "tls.key"]);

    // The certificate kept and written where it was not: a webhook reading that directory
    // switches only now, so the previous CA stays trusted until a re-run finds it there.
    let elsewhere = dir.path().join("elsewhere");
    let elsewhere = elsewhere.to_string_lossy();
    let kept = ["--webhook-url", url, "--webhook-cert-dir", &*elsewhere];
    install(&env, &kept).await?;
    assert_eq!(installed_certificate(&env).await?.0, ca_bundle);
    install(&env, &kept).await?;
    assert_eq!(installed_certificate(&env).await?.0, new_ca);
    Ok(())
}

/// `install --rotate-certs` under a running webhook (out of the cluster, reading its files in
/// `--webhook-cert-dir`, which it notices within a second): the apiserver trusts the previous
/// CA too, so the webhook it calls at once, still serving the previous certificate, pushes the
/// change before kubectl returns; a re-run that keeps the certificate drops the previous CA.
#[tokio::test]
async fn rotate_certs_trusts_the_previous_ca_until_a_re_run_drops_it() -> anyhow::Result<()> {
    let _serial = serial().await;
    let mut options = MeshOptions::from_workspace()?;
    // Install is re-run with the flags the mesh was installed with: no client CA to repeat.
    options.client_auth = false;
    let (env, mesh, _remote, ns) = one_remote_mesh_with(options, "rotate").await?;
    // Where the mesh's install wrote the webhook's files, and where the webhook reads them.
    let cert_dir = env.dir().join("mesh-webhook-tls");
    assert_eq!(
        std::fs::read_to_string(cert_dir.join("ca.crt"))?,
        mesh.ca_pem()?
    );
    let url = mesh.webhook_url();
    let dir = cert_dir.to_string_lossy();
    let args = ["--webhook-url", &url, "--webhook-cert-dir", &dir];
    let (previous, _) = installed_certificate(&env).await?;

    let stderr = install(&env, &[&args[..], &["--rotate-certs"]].concat()).await?;
    let (rotating, _) = installed_certificate(&env).await?;
    let new_ca = mesh.ca_pem()?;
    assert_ne!(new_ca, previous, "no new certificate: {stderr}");
    assert_eq!(rotating, format!("{new_ca}{previous}"), "{stderr}");
    assert!(
        has_line(
            &stderr,
            "• the webhook configuration trusts the previous CA too: once the webhook serves the \
             new certificate, re-run install without --rotate-certs to drop it"
        ),
        "{stderr}"
    );
    // At once: the webhook answers (with the certificate it served before), the change lands.
    let warnings = label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    mesh_e2e::assert_landed(&env, &warnings, "istio-injection=enabled");
    // check sees a rotation in progress, not a caBundle at odds with the Secret.
    let serving = "serving certificate is valid and signed by the caBundle's CA";
    let report = CheckReport::of(mesh.plugin()).await?;
    let rotating = report.check(serving)?;
    assert!(
        rotating.says("warning", "a certificate rotation is in progress"),
        "{rotating:?}"
    );

    // Once the webhook serves the new certificate (its metrics port serves the same one).
    eventually(
        "the webhook serves the new certificate",
        DEFAULT_TIMEOUT,
        || async { Ok(reviews_answered(mesh.metrics_address(), &new_ca).await.ok()) },
    )
    .await?;
    let stderr = install(&env, &args).await?;
    assert!(
        has_line(
            &stderr,
            "✓ MutatingWebhookConfiguration kubectl-mesh: the previous CA is no longer trusted"
        ),
        "{stderr}"
    );
    let (settled, _) = installed_certificate(&env).await?;
    assert_eq!(settled, new_ca, "{stderr}");
    let report = CheckReport::of(mesh.plugin()).await?;
    assert_eq!(report.check(serving)?.result, "ok", "{report:#?}");
    let warnings = label_on_primary(&env, &ns, &["istio-injection=disabled"]).await?;
    mesh_e2e::assert_landed(&env, &warnings, "istio-injection=disabled");
    // And a re-run with nothing to drop says nothing of it.
    let stderr = install(&env, &args).await?;
    assert!(!stderr.contains("previous CA"), "{stderr}");
    assert_eq!(installed_certificate(&env).await?.0, new_ca);
    Ok(())
}

/// Rights on every kind install writes, all but `missing`: `*`, or `role_verbs` on roles and
/// ClusterRoles.
fn install_rights_but(missing: &str, role_verbs: &[&str]) -> serde_json::Value {
    install_rights(missing, &["*"], role_verbs)
}

/// Rights on every kind install writes, all but `missing`: `verbs`, or `role_verbs` on roles
/// and ClusterRoles.
fn install_rights(missing: &str, verbs: &[&str], role_verbs: &[&str]) -> serde_json::Value {
    let kinds = [
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
        ),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("", "namespaces"),
        ("", "serviceaccounts"),
        ("", "secrets"),
        ("", "configmaps"),
        ("", "services"),
        ("apps", "deployments"),
        ("policy", "poddisruptionbudgets"),
        ("networking.k8s.io", "networkpolicies"),
    ];
    let rules: Vec<_> = kinds
        .iter()
        .filter(|(_, plural)| *plural != missing)
        .map(|(group, plural)| {
            let verbs = if plural.ends_with("roles") {
                role_verbs
            } else {
                verbs
            };
            json!({"apiGroups": [group], "resources": [plural], "verbs": verbs})
        })
        .collect();
    json!(rules)
}

/// The opening of the tests of install's rights: the lock, a primary alone, its admin client and
/// a directory for the callers' kubeconfigs.
async fn primary_alone() -> anyhow::Result<(
    MutexGuard<'static, ()>,
    TestEnv,
    kube::Client,
    tempfile::TempDir,
)> {
    let serial = serial().await;
    let env = TestEnv::start(Options::with_remotes(0)).await?;
    let primary = env.primary().client().await?;
    Ok((serial, env, primary, tempfile::tempdir()?))
}

/// Whether the primary holds nothing of an install: no CRD, mesh namespace or mesh object.
async fn nothing_installed(env: &TestEnv, primary: &kube::Client) -> anyhow::Result<bool> {
    let crd = Api::<CustomResourceDefinition>::all(primary.clone())
        .get_opt("meshclusters.kubectl-mesh.io")
        .await?;
    let ns = Api::<Namespace>::all(primary.clone())
        .get_opt(MESH_NAMESPACE)
        .await?;
    Ok(crd.is_none() && ns.is_none() && mesh_objects_on_primary(env).await?.is_empty())
}

/// A kubeconfig in `dir` for a caller holding [`install_rights`] with `verbs`, and
/// `role_verbs` on roles, everywhere on the primary.
async fn install_caller(
    env: &TestEnv,
    dir: &std::path::Path,
    verbs: &[&str],
    role_verbs: &[&str],
) -> anyhow::Result<std::path::PathBuf> {
    let rights = [Grant::everywhere(install_rights("", verbs, role_verbs))];
    kubeconfig_granting(env.primary(), dir, &rights).await
}

#[tokio::test]
async fn install_refused_for_want_of_rights_leaves_nothing_behind() -> anyhow::Result<()> {
    let (_serial, env, primary, dir) = primary_alone().await?;
    // Refused on a cluster-scoped object (nothing is created for the check), then on a
    // namespaced one (the namespace is, and goes again).
    for (missing, refused) in [
        (
            "clusterrolebindings",
            "ClusterRoleBinding kubectl-mesh:mesh-webhook",
        ),
        ("deployments", "Deployment mesh-webhook"),
    ] {
        let rights = Grant::everywhere(install_rights_but(missing, &["*"]));
        let limited = kubeconfig_granting(env.primary(), dir.path(), &[rights]).await?;
        let out = mesh_as(&limited, &["install"]).await?;
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let stderr = text(&out.stderr);
        let errors = error_lines(&stderr);
        assert!(
            matches!(errors[..], [line] if line.starts_with(&format!("error: cannot apply {refused}: "))
                && line.contains("run install as a cluster admin")),
            "{stderr}"
        );
        eventually("nothing of the install left", DEFAULT_TIMEOUT, || async {
            Ok(nothing_installed(&env, &primary).await?.then_some(()))
        })
        .await?;
        let roles = Api::<ClusterRole>::all(primary.clone());
        assert!(roles.get_opt("kubectl-mesh:mesh-webhook").await?.is_none());
    }

    // Without `bind` but holding what the roles grant, a binding is allowed once its role
    // exists: the check is not stricter than the install, first or re-run.
    let no_bind = [
        "get", "list", "watch", "create", "update", "patch", "delete", "escalate",
    ];
    let held = json!([
        {"apiGroups": ["kubectl-mesh.io"], "resources": ["meshclusters", "meshclusters/status"], "verbs": ["*"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["*"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
    ]);
    let rights = [
        Grant::everywhere(install_rights_but("", &no_bind)),
        Grant::everywhere(held),
    ];
    let limited = kubeconfig_granting(env.primary(), dir.path(), &rights).await?;
    for _ in 0..2 {
        let out = mesh_as(&limited, &["install"]).await?;
        assert_success(&out);
    }
    assert!(!mesh_objects_on_primary(&env).await?.is_empty());
    Ok(())
}

/// A caller holding what install asks for, to read, create and patch what it applies and no
/// right to delete, installs on a primary where nothing is to be deleted: install used to
/// delete the client CA ConfigMap after applying everything, absent or not, and was refused
/// (403 comes before 404) on every run. Where an object it removes exists, the right to delete
/// it is asked before anything is applied, and refused in one line, nothing changed.
#[tokio::test]
async fn install_asks_to_delete_only_what_exists_before_it_applies() -> anyhow::Result<()> {
    let (_serial, env, primary, dir) = primary_alone().await?;
    let verbs = ["get", "list", "watch", "create", "patch"];
    let role_verbs = [&verbs[..], &["bind", "escalate"]].concat();
    let no_delete = install_caller(&env, dir.path(), &verbs, &role_verbs).await?;
    // A first install and a re-run, without a client CA, which there is none of to delete.
    for _ in 0..2 {
        let out = mesh_as(&no_delete, &["install"]).await?;
        assert_success(&out);
    }

    let refusal = |rights: &str| {
        format!(
            "error: missing permissions on the primary ({}): {rights}; nothing was changed; \
             this run deletes what it no longer installs: ask for these rights, or run install \
             as a cluster admin",
            env.primary().server
        )
    };
    let deployments: Api<Deployment> = Api::namespaced(primary.clone(), MESH_NAMESPACE);
    let generation = || async {
        let deployment = deployments.get("mesh-webhook").await?;
        anyhow::Ok(deployment.metadata.generation)
    };
    // Installed with a client CA, which a re-run without one deletes.
    let ca = env.webhook_client().ca_cert.to_string_lossy().into_owned();
    install(&env, &["--client-ca-file", &ca]).await?;
    let before = generation().await?;
    let out = mesh_as(&no_delete, &["install"]).await?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert_eq!(
        error_lines(&stderr),
        [refusal(
            "configmaps named mesh-webhook-client-ca in namespace kubectl-mesh (delete)"
        )],
        "{stderr}"
    );
    assert!(!stderr.contains(" applied"), "{stderr}");
    unchanged(
        "install without the client CA",
        "the Deployment's generation",
        &before,
        &generation().await?,
    )?;
    let config_maps: Api<ConfigMap> = Api::namespaced(primary.clone(), MESH_NAMESPACE);
    assert!(
        config_maps
            .get_opt("mesh-webhook-client-ca")
            .await?
            .is_some()
    );

    // The webhook moved out of the cluster: its Deployment, Service, PodDisruptionBudget and
    // NetworkPolicy go.
    install(&env, &[]).await?;
    let url = "https://127.0.0.1:9443/mutate";
    let out = mesh_as(&no_delete, &["install", "--webhook-url", url]).await?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains(" applied"), "{stderr}");
    assert_eq!(
        error_lines(&stderr),
        [refusal(
            "services named mesh-webhook in namespace kubectl-mesh (delete), \
             deployments.apps named mesh-webhook in namespace kubectl-mesh (delete), \
             poddisruptionbudgets.policy named mesh-webhook in namespace kubectl-mesh (delete), \
             networkpolicies.networking.k8s.io named mesh-webhook in namespace kubectl-mesh \
             (delete)"
        )],
        "{stderr}"
    );
    let (_, webhook) = installed_webhook(&env).await?;
    assert_eq!(
        webhook.client_config.url, None,
        "the webhook configuration changed"
    );
    assert!(deployments.get_opt("mesh-webhook").await?.is_some());

    // Granted delete too, the same move goes through.
    let verbs = [&verbs[..], &["delete"]].concat();
    let role_verbs = [&role_verbs[..], &["delete"]].concat();
    let with_delete = install_caller(&env, dir.path(), &verbs, &role_verbs).await?;
    let out = mesh_as(&with_delete, &["install", "--webhook-url", url]).await?;
    assert_success(&out);
    assert!(deployments.get_opt("mesh-webhook").await?.is_none());
    let (_, webhook) = installed_webhook(&env).await?;
    assert_eq!(webhook.client_config.url.as_deref(), Some(url));
    Ok(())
}

/// A caller who may create and patch what install applies but not read what it reads first, or
/// not watch its CRD become established, is refused in one line naming those rights before
/// anything is applied: the reads answered a bare 403, and the wait for the CRD failed once
/// the CRD was applied, leaving it behind.
#[tokio::test]
async fn install_asks_for_its_reads_and_its_wait_before_it_applies() -> anyhow::Result<()> {
    let (_serial, env, primary, dir) = primary_alone().await?;
    let reads = "namespaces named kubectl-mesh (get), \
                 mutatingwebhookconfigurations.admissionregistration.k8s.io named kubectl-mesh \
                 (get), secrets named mesh-webhook-tls in namespace kubectl-mesh (get)";
    let wait = "customresourcedefinitions.apiextensions.k8s.io named \
                meshclusters.kubectl-mesh.io (list/watch)";
    for (verbs, missing) in [
        (&["get", "create", "patch"][..], wait.to_owned()),
        (&["list", "watch", "create", "patch"], reads.to_owned()),
        (&["create", "patch"], format!("{reads}, {wait}")),
    ] {
        let role_verbs = [verbs, &["bind", "escalate"]].concat();
        let limited = install_caller(&env, dir.path(), verbs, &role_verbs).await?;
        let out = mesh_as(&limited, &["install"]).await?;
        assert_eq!(out.status.code(), Some(1), "{verbs:?}: {}", describe(&out));
        let stderr = text(&out.stderr);
        assert_eq!(
            error_lines(&stderr),
            [format!(
                "error: missing permissions on the primary ({}): {missing}; nothing was changed; \
                 install reads what an earlier install left and watches its CRD become \
                 established: ask for these rights, or run install as a cluster admin",
                env.primary().server
            )],
            "{verbs:?}: {stderr}"
        );
        assert!(!stderr.contains(" applied"), "{verbs:?}: {stderr}");
        assert!(nothing_installed(&env, &primary).await?, "{verbs:?}");
    }
    Ok(())
}

/// `--image` names the image of the webhook's Deployment, which `--webhook-url` does not
/// install: it was taken and ignored; it is refused with it, as `--replicas` and `--wait` are.
/// KUBECTL_MESH_IMAGE is a default, not a choice made for this run: a shell that sets it for
/// in-cluster installs still installs by URL. (`--dry-run`: no cluster needed.)
#[tokio::test]
async fn an_image_is_refused_with_a_webhook_url_unless_it_comes_from_the_environment()
-> anyhow::Result<()> {
    let url = "https://127.0.0.1:9443/mutate";
    let image = "registry.example.com/mesh-webhook:pinned";
    let run = |args: &[&str], env_image: Option<&str>| {
        let mut cmd = std::process::Command::new(mesh_testenv::workspace_binary("kubectl-mesh")?);
        cmd.args([&["install", "--dry-run", "-o", "yaml"], args].concat())
            .env("NO_COLOR", "1")
            .env_remove("KUBECTL_MESH_WEBHOOK_URL")
            .env_remove("KUBECTL_MESH_IMAGE");
        if let Some(image) = env_image {
            cmd.env("KUBECTL_MESH_IMAGE", image);
        }
        anyhow::Ok(output(cmd))
    };
    for args in [
        &["--image", image, "--webhook-url", url][..],
        &["--webhook-url", url, "--image", image],
    ] {
        let out = run(args, None)?.await?;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with("error: the argument '--")
                && stderr.contains("cannot be used with '--"),
            "{args:?}: {stderr}"
        );
    }
    let out = run(&["--webhook-url", url], Some(image))?.await?;
    assert_success(&out);
    assert!(
        !text(&out.stdout).contains("kind: Deployment"),
        "{}",
        describe(&out)
    );
    // In the cluster, the environment's image is the Deployment's, and the flag's before it.
    let out = run(&[], Some(image))?.await?;
    assert_success(&out);
    assert!(
        text(&out.stdout).contains(&format!("image: {image}")),
        "{}",
        describe(&out)
    );
    let flag = "registry.example.com/mesh-webhook:flag";
    let out = run(&["--image", flag], Some(image))?.await?;
    assert_success(&out);
    assert!(
        text(&out.stdout).contains(&format!("image: {flag}")),
        "{}",
        describe(&out)
    );
    Ok(())
}

/// An uninstall whose caller may not delete one of the objects is refused before it deletes
/// any: it used to delete the webhook configuration, Service, Deployment and bindings, then
/// fail on the ClusterRole, leaving half an installation.
#[tokio::test]
async fn uninstall_refused_for_want_of_rights_deletes_nothing() -> anyhow::Result<()> {
    let _serial = serial().await;
    let env = TestEnv::start(Options::with_remotes(0)).await?;
    install(&env, &[]).await?;
    let primary = env.primary().client().await?;
    let installed = installation(&env, &["deployment.apps/mesh-webhook"]).await?;

    // Every right uninstall uses, but deleting ClusterRoles (it may read them).
    let dir = tempfile::tempdir()?;
    let rights = [
        Grant::everywhere(install_rights_but("clusterroles", &["*"])),
        Grant::everywhere(json!([
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["kubectl-mesh.io"], "resources": ["meshclusters"], "verbs": ["*"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
        ])),
    ];
    let limited = kubeconfig_granting(env.primary(), dir.path(), &rights).await?;
    let expected = format!(
        "error: missing permissions on the primary ({}): clusterroles.rbac.authorization.k8s.io \
         named kubectl-mesh:mesh-webhook (delete); use an admin context or ask a cluster admin \
         (`kubectl auth can-i --list` shows yours)",
        env.primary().server
    );
    for args in [
        &["uninstall"][..],
        &["uninstall", "--crd"],
        &["uninstall", "--dry-run"],
    ] {
        let out = mesh_as(&limited, args).await?;
        let line = refused_in_one_line(&out, &format!("{args:?}"))?;
        assert_eq!(line, expected, "{args:?}");
        unchanged(
            &format!("{args:?}"),
            "the installation",
            &installed,
            &mesh_objects_on_primary(&env).await?,
        )?;
    }
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(primary.clone());
    assert!(webhooks.get_opt("kubectl-mesh").await?.is_some());
    let deployments: Api<Deployment> = Api::namespaced(primary.clone(), MESH_NAMESPACE);
    assert!(deployments.get_opt("mesh-webhook").await?.is_some());

    // A caller who may not list the ServiceAccounts is told so (it was told it could not read
    // the namespace, which it may).
    let rights = [
        Grant::everywhere(install_rights_but("serviceaccounts", &["*"])),
        Grant::everywhere(json!([
            {"apiGroups": ["kubectl-mesh.io"], "resources": ["meshclusters"], "verbs": ["*"]},
        ])),
    ];
    let no_accounts = kubeconfig_granting(env.primary(), dir.path(), &rights).await?;
    let out = mesh_as(&no_accounts, &["uninstall"]).await?;
    let line = refused_in_one_line(&out, "uninstall without serviceaccounts")?;
    assert!(
        line.starts_with("error: cannot list ServiceAccounts in kubectl-mesh"),
        "{line}"
    );
    unchanged(
        "uninstall without serviceaccounts",
        "the installation",
        &installed,
        &mesh_objects_on_primary(&env).await?,
    )?;

    // Granted the missing right, the same caller uninstalls.
    let rights = [
        Grant::everywhere(install_rights_but("", &["*"])),
        Grant::everywhere(json!([
            {"apiGroups": ["kubectl-mesh.io"], "resources": ["meshclusters"], "verbs": ["*"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
        ])),
    ];
    let admin = kubeconfig_granting(env.primary(), dir.path(), &rights).await?;
    let out = mesh_as(&admin, &["uninstall"]).await?;
    assert_success(&out);
    assert!(webhooks.get_opt("kubectl-mesh").await?.is_none());
    Ok(())
}

/// First retry delay and cap given to the webhook: short enough to see several doublings and
/// several capped retries within seconds, long enough for timer noise not to matter.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// The reconciler shortens every delay by up to this fraction at random.
const JITTER: f64 = 0.2;
/// What a loaded machine may add to a delay: the attempt itself, its status write, a late
/// timer.
const SLACK: Duration = Duration::from_millis(400);

/// When the webhook logged a failed sync of `cluster`, in the part of its log after `offset`.
fn failed_syncs(log: &str, offset: usize, cluster: &str) -> anyhow::Result<Vec<Timestamp>> {
    let span = format!("cluster{{cluster={cluster}}}");
    log.get(offset..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("cannot sync remote") && l.contains(&span))
        .map(|l| {
            let stamp = l.split_whitespace().next().unwrap_or_default();
            stamp
                .parse::<Timestamp>()
                .map_err(|e| anyhow::anyhow!("log line without a timestamp ({e}): {l}"))
        })
        .collect()
}

/// The reconciler's delay after `failures` earlier failures, before jitter.
fn scheduled_delay(failures: u32) -> Duration {
    BACKOFF_INITIAL
        .saturating_mul(2u32.saturating_pow(failures))
        .min(BACKOFF_MAX)
}

/// Waits for `count` failed syncs of `cluster` logged after `offset`; the intervals between
/// them.
async fn retry_intervals(
    log_path: &std::path::Path,
    offset: usize,
    cluster: &str,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let attempts = eventually(
        &format!(
            "{count} failed syncs of {cluster} in {}",
            log_path.display()
        ),
        Duration::from_secs(90),
        || async {
            let log = std::fs::read_to_string(log_path)?;
            let attempts = failed_syncs(&log, offset, cluster)?;
            Ok((attempts.len() >= count).then_some(attempts))
        },
    )
    .await?;
    attempts
        .windows(2)
        .map(|pair| Ok(Duration::try_from(pair[1].duration_since(pair[0]))?))
        .collect()
}

async fn cluster_status(env: &TestEnv, name: &str) -> anyhow::Result<Option<MeshClusterStatus>> {
    let api: Api<MeshCluster> = Api::all(env.primary().client().await?);
    Ok(api.get(name).await?.status)
}

fn log_length(path: &std::path::Path) -> anyhow::Result<usize> {
    Ok(std::fs::read_to_string(path)?.len())
}

#[tokio::test]
async fn an_unreachable_remote_is_retried_with_growing_capped_delays_until_it_returns()
-> anyhow::Result<()> {
    let _serial = serial().await;
    let options = MeshOptions {
        // Only failures and changes schedule syncs: no periodic one among the measured retries.
        resync_period: NO_RESYNC,
        webhook_args: vec![
            "--backoff-initial".into(),
            format!("{}ms", BACKOFF_INITIAL.as_millis()),
            "--backoff-max".into(),
            format!("{}ms", BACKOFF_MAX.as_millis()),
        ],
        ..MeshOptions::from_workspace()?
    };
    let (env, _mesh, remote, ns) = one_remote_mesh_with(options, "backoff").await?;
    let log_path = env.dir().join("mesh-webhook.log");

    let offset = log_length(&log_path)?;
    env.stop_apiserver(&remote.name)?;
    // A change on the primary makes the reconciler sync, which fails and starts the backoff.
    label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    let status = eventually(
        "the MeshCluster says the remote is unreachable",
        DEFAULT_TIMEOUT,
        || async {
            let status = cluster_status(&env, &remote.name).await?;
            Ok(status.filter(|s| {
                s.condition(CONDITION_REACHABLE)
                    .is_some_and(|c| c.status == "False")
            }))
        },
    )
    .await?;
    let reachable = status
        .condition(CONDITION_REACHABLE)
        .expect("condition seen above");
    assert_eq!(reachable.reason, "Unreachable", "{status:?}");
    assert!(!reachable.message.is_empty(), "{status:?}");
    assert_eq!(
        status.last_error.as_deref(),
        Some(reachable.message.as_str())
    );

    // Delays 0.5, 1, 2, 4 (the cap), 4, 4 s: seven failed attempts.
    let intervals = retry_intervals(&log_path, offset, &remote.name, 7).await?;
    eprintln!("intervals between failed syncs: {intervals:?}");
    for (failures, interval) in (0u32..).zip(&intervals) {
        let scheduled = scheduled_delay(failures);
        let shortest = scheduled.mul_f64(1.0 - JITTER);
        assert!(
            *interval >= shortest && *interval <= scheduled + SLACK,
            "retry after {failures} failures came after {interval:?}, scheduled \
             {shortest:?}..{scheduled:?}: {intervals:?}"
        );
    }
    let growing = intervals
        .iter()
        .take_while(|i| **i < BACKOFF_MAX.mul_f64(1.0 - JITTER))
        .collect::<Vec<_>>();
    assert!(growing.len() >= 3, "{intervals:?}");
    assert!(
        growing.windows(2).all(|pair| pair[1] > pair[0]),
        "delays grow until the cap: {intervals:?}"
    );
    let capped = &intervals[growing.len()..];
    assert!(capped.len() >= 3, "{intervals:?}");
    assert!(
        capped.iter().all(|i| *i <= BACKOFF_MAX + SLACK),
        "delays stop at the cap {BACKOFF_MAX:?}: {intervals:?}"
    );

    // Back: the next retry finds it, the status says so and the label the primary got meanwhile
    // lands.
    env.start_apiserver(&remote.name).await?;
    let status = eventually(
        "the MeshCluster says the remote is reachable again",
        DEFAULT_TIMEOUT,
        || async {
            let status = cluster_status(&env, &remote.name).await?;
            Ok(status.filter(|s| s.is_true(CONDITION_REACHABLE)))
        },
    )
    .await?;
    assert_eq!(status.last_error, None, "{status:?}");
    assert_eq!(
        managed_labels(&remote, &ns).await?,
        Some(labels(&[("istio-injection", "enabled")]))
    );

    // A success resets the backoff: the next outage starts again at the first delay.
    let offset = log_length(&log_path)?;
    env.stop_apiserver(&remote.name)?;
    label_on_primary(&env, &ns, &["istio-injection=disabled"]).await?;
    let intervals = retry_intervals(&log_path, offset, &remote.name, 2).await?;
    assert!(
        intervals[0] <= BACKOFF_INITIAL + SLACK,
        "first retry of a new outage after {:?}",
        intervals[0]
    );
    Ok(())
}

/// The `error: ` lines of a command's stderr.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect()
}
