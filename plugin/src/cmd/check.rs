//! `kubectl mesh check`: diagnose the installation and every attached cluster, in the style
//! of `linkerd check`: one section per concern, one line per check, `✓` passed, `‼` worth a
//! look, `×` broken (and exit status 1).
//!
//! Remotes are checked with the credentials kubectl-mesh stored for them: what passes here is
//! what the webhook can do. The one exception is the remote guard of a cluster attached by an
//! older kubectl-mesh, whose credentials may not read it: that is read through the remote's
//! context in the user's kubeconfig, when it has one.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::{
    admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    },
    apps::v1::Deployment,
    authentication::v1::SelfSubjectReview,
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::{Namespace, Secret},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, CustomResourceExt as _, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use mesh_core::{
    MESH_NAMESPACE,
    cluster::{KUBECONFIG_KEY, MeshCluster, RemoteGuard},
    labels::SyncRule,
    remote::{self, error_chain},
};
use serde::Serialize;

use super::status::plural;
use crate::{
    Context, Error, Result, age, describe_kube, installed_rule, kube_hint, kubeconfig,
    mesh_state::{self, DEFAULT_REMOTE_TIMEOUT, RemoteError, RemoteResult, with_deadline},
    output::{self, OutputFormat},
    remote_setup as setup, render,
};

/// Check the installation, the webhook and every attached cluster.
///
/// Remotes are checked with the credentials stored for them, their guard included (for a
/// cluster attached by an older version, whose credentials may not read it, with the remote's
/// context in your kubeconfig). Exits with status 1 when any check fails (×); warnings (‼)
/// do not change the exit status.
#[derive(Debug, clap::Args)]
pub struct Check {
    /// How long to wait for each call to a remote.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_REMOTE_TIMEOUT, value_parser = crate::parse_duration)]
    pub remote_timeout: Duration,
}

/// A token or certificate expiring sooner than this is a warning.
const EXPIRY_WARNING: SignedDuration = SignedDuration::from_hours(24 * 7);
/// Label value the probe of the webhook pretends to set (dry run: nothing is stored).
const PROBE_VALUE: &str = "kubectl-mesh-check";
/// The managed label the probe pretends to change, when the rule manages it (else its first).
const PROBE_LABEL: &str = "istio.io/rev";
/// Prefix of every warning the webhook returns.
const WEBHOOK_WARNING_PREFIX: &str = "kubectl-mesh:";

impl Check {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self { remote_timeout } = self;
        let client = ctx.client().await?;
        let user_kubeconfig = ctx.load_kubeconfig().ok();
        let report = check_all(
            &client,
            user_kubeconfig.as_ref(),
            remote_timeout,
            Timestamp::now(),
        )
        .await;
        let text = match ctx.output {
            OutputFormat::Table | OutputFormat::Wide => {
                let color =
                    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                report.text(color)
            }
            format => {
                let value = serde_json::to_value(&report).map_err(|source| Error::Serialize {
                    format: "JSON",
                    source: Box::new(source),
                })?;
                output::render_values(format, &[value])?
            }
        };
        output::print_stdout(&text)?;
        if report.errors > 0 {
            return Err(Error::Refused {
                what: format!("{} failed", plural(report.errors, "check")),
                hint: "fix what the × lines say and re-run `kubectl mesh check`".into(),
            });
        }
        Ok(())
    }
}

/// The result of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Passed.
    Ok,
    /// Works, but worth a look.
    Warning,
    /// Broken.
    Error,
}

impl Outcome {
    fn mark(self) -> &'static str {
        match self {
            Self::Ok => "✓",
            Self::Warning => "‼",
            Self::Error => "×",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Self::Ok => output::GREEN,
            Self::Warning => output::YELLOW,
            Self::Error => output::RED,
        }
    }
}

/// One line of `check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// What is checked, said as what should hold.
    pub description: String,
    /// Whether it holds.
    pub result: Outcome,
    /// What was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl CheckResult {
    /// A passed check; `detail` is shown after it in parentheses.
    pub fn ok(description: impl Into<String>, detail: Option<String>) -> Self {
        Self {
            description: description.into(),
            result: Outcome::Ok,
            detail,
            hint: None,
        }
    }

    /// A check worth a look.
    pub fn warning(
        description: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            description: description.into(),
            result: Outcome::Warning,
            detail: Some(detail.into()),
            hint: Some(hint.into()).filter(|h: &String| !h.is_empty()),
        }
    }

    /// A failed check.
    pub fn error(
        description: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            result: Outcome::Error,
            ..Self::warning(description, detail, hint)
        }
    }
}

/// A group of checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Section {
    /// Its title.
    pub name: String,
    /// Its checks, in the order they ran.
    pub checks: Vec<CheckResult>,
}

/// Everything `check` found, as `-o json|yaml` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The sections: the installation, then one per attached cluster.
    pub sections: Vec<Section>,
    /// Checks that failed.
    pub errors: usize,
    /// Checks worth a look.
    pub warnings: usize,
}

impl CheckReport {
    /// A report of `sections`, counted.
    pub fn new(sections: Vec<Section>) -> Self {
        let count = |o: Outcome| {
            sections
                .iter()
                .flat_map(|s| &s.checks)
                .filter(|c| c.result == o)
                .count()
        };
        Self {
            errors: count(Outcome::Error),
            warnings: count(Outcome::Warning),
            sections,
        }
    }

    /// The report as `linkerd check` prints its own.
    pub fn text(&self, color: bool) -> String {
        let mut out = String::new();
        for section in &self.sections {
            out.push_str(&section.name);
            out.push('\n');
            out.push_str(&"-".repeat(section.name.chars().count()));
            out.push('\n');
            for check in &section.checks {
                let mark = if color {
                    format!(
                        "{}{}{}",
                        check.result.color(),
                        check.result.mark(),
                        output::RESET
                    )
                } else {
                    check.result.mark().to_owned()
                };
                match (&check.result, &check.detail) {
                    (Outcome::Ok, Some(detail)) => {
                        out.push_str(&format!("{mark} {} ({detail})\n", check.description));
                    }
                    (Outcome::Ok, None) => {
                        out.push_str(&format!("{mark} {}\n", check.description));
                    }
                    (_, detail) => {
                        out.push_str(&format!("{mark} {}\n", check.description));
                        if let Some(detail) = detail {
                            out.push_str(&format!("    {detail}\n"));
                        }
                        if let Some(hint) = &check.hint {
                            out.push_str(&format!("    hint: {hint}\n"));
                        }
                    }
                }
            }
            out.push('\n');
        }
        let verdict = if self.errors > 0 {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        let mark = if color {
            format!("{}{}{}", verdict.color(), verdict.mark(), output::RESET)
        } else {
            verdict.mark().to_owned()
        };
        out.push_str(&format!(
            "Status check results are {mark} ({}, {})\n",
            plural(self.errors, "error"),
            plural(self.warnings, "warning")
        ));
        out
    }
}

/// Runs every check against the primary `client` and the attached remotes.
pub async fn check_all(
    client: &Client,
    user_kubeconfig: Option<&kube::config::Kubeconfig>,
    remote_timeout: Duration,
    now: Timestamp,
) -> CheckReport {
    let mut install = Section {
        name: "kubectl-mesh installation".into(),
        checks: Vec::new(),
    };
    let crd_ok = check_crd(client, &mut install.checks).await;
    check_namespace(client, &mut install.checks).await;
    let rule = check_webhook(client, now, &mut install.checks).await;
    let mut sections = vec![install];
    if !crd_ok {
        return CheckReport::new(sections);
    }

    let mut mesh = Section {
        name: "attached clusters".into(),
        checks: Vec::new(),
    };
    let clusters = match mesh_state::clusters(client).await {
        Ok(clusters) => clusters,
        Err(e) => {
            mesh.checks.push(CheckResult::error(
                "MeshClusters can be listed",
                e.to_string(),
                e.hint(),
            ));
            sections.push(mesh);
            return CheckReport::new(sections);
        }
    };
    if clusters.is_empty() {
        mesh.checks.push(CheckResult::warning(
            "at least one cluster is attached",
            "no MeshCluster exists",
            "attach one with `kubectl mesh attach <kubeconfig>`",
        ));
        sections.push(mesh);
        return CheckReport::new(sections);
    }
    let primary_ns = mesh_state::primary_namespaces(client).await;
    let primary_uid = primary_ns
        .as_ref()
        .ok()
        .and_then(|m| m.get("kube-system"))
        .and_then(|ns| ns.metadata.uid.clone());
    let env = ClusterEnv {
        primary: client,
        clusters: &clusters,
        primary_namespaces: primary_ns.as_ref().map_err(Error::line),
        primary_uid: primary_uid.as_deref(),
        rule,
        timeout: remote_timeout,
        now,
        user_kubeconfig,
    };
    let per_cluster = mesh_state::for_each(&clusters, |c| check_cluster(&env, c)).await;
    sections.extend(per_cluster);
    CheckReport::new(sections)
}

async fn check_crd(client: &Client, checks: &mut Vec<CheckResult>) -> bool {
    let name = MeshCluster::crd_name();
    let what = "MeshCluster CustomResourceDefinition is established";
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api.get_opt(name).await {
        Ok(Some(crd)) => {
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                checks.push(CheckResult::ok(what, None));
                true
            } else {
                checks.push(CheckResult::error(
                    what,
                    format!("CustomResourceDefinition {name} is not Established"),
                    format!("see `kubectl get crd {name} -o yaml` for its conditions"),
                ));
                false
            }
        }
        Ok(None) => {
            checks.push(CheckResult::error(
                what,
                format!("CustomResourceDefinition {name} not found"),
                "run `kubectl mesh install`",
            ));
            false
        }
        Err(e) => {
            checks.push(kube_failure(what, "cannot read the CRD", &e));
            false
        }
    }
}

async fn check_namespace(client: &Client, checks: &mut Vec<CheckResult>) {
    let what = format!("namespace {MESH_NAMESPACE} exists");
    match Api::<Namespace>::all(client.clone())
        .get_opt(MESH_NAMESPACE)
        .await
    {
        Ok(Some(ns)) if ns.metadata.deletion_timestamp.is_some() => {
            checks.push(CheckResult::error(
                what,
                "it is being deleted",
                "wait for the deletion to finish, then run `kubectl mesh install`",
            ));
        }
        Ok(Some(_)) => checks.push(CheckResult::ok(what, None)),
        Ok(None) => checks.push(CheckResult::error(
            what,
            "not found",
            "run `kubectl mesh install`",
        )),
        Err(e) => checks.push(kube_failure(&what, "cannot read it", &e)),
    }
}

/// Checks the webhook configuration and what it points at. Returns the sync rule it records,
/// which the remaining checks apply (the default one when it cannot be read: that failure is
/// reported already).
async fn check_webhook(client: &Client, now: Timestamp, checks: &mut Vec<CheckResult>) -> SyncRule {
    let what = format!(
        "MutatingWebhookConfiguration {} is present",
        render::WEBHOOK_CONFIGURATION
    );
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mwc = match api.get_opt(render::WEBHOOK_CONFIGURATION).await {
        Ok(Some(mwc)) => mwc,
        Ok(None) => {
            checks.push(CheckResult::error(
                what,
                "not found: namespace label changes are not pushed to remotes as they happen",
                "run `kubectl mesh install`",
            ));
            return SyncRule::default();
        }
        Err(e) => {
            checks.push(kube_failure(&what, "cannot read it", &e));
            return SyncRule::default();
        }
    };
    let rule = installed_rule::from_annotations(mwc.metadata.annotations.as_ref());
    let Some(hook) = mwc
        .webhooks
        .iter()
        .flatten()
        .find(|w| w.name == render::WEBHOOK_ENTRY)
    else {
        checks.push(CheckResult::error(
            what,
            format!("it has no webhook named {}", render::WEBHOOK_ENTRY),
            "run `kubectl mesh install` to restore it",
        ));
        return rule;
    };
    checks.push(CheckResult::ok(what, None));
    checks.push(recorded_rule_result(&mwc, &rule));

    // caBundle: what the apiserver trusts when it calls the webhook.
    let what = "caBundle is a valid, unexpired CA certificate";
    let ca = hook.client_config.ca_bundle.as_ref().map(|b| b.0.clone());
    match ca.as_deref().map(certificates) {
        None => checks.push(CheckResult::error(
            what,
            "the webhook configuration has no caBundle",
            "run `kubectl mesh install` to restore it",
        )),
        Some(result) => checks.push(expiry_result(what, result, now)),
    }
    if let Some(ca) = &ca {
        checks.push(check_tls_secret(client, ca, now).await);
    }

    let what = "clientConfig says where the webhook is";
    let target = match (&hook.client_config.url, &hook.client_config.service) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(s)) => Some(format!(
            "Service {}/{}:{}{}",
            s.namespace,
            s.name,
            s.port.unwrap_or(443),
            s.path.as_deref().unwrap_or("")
        )),
        (None, None) => None,
    };
    match &target {
        Some(t) => checks.push(CheckResult::ok(what, Some(t.clone()))),
        None => checks.push(CheckResult::error(
            what,
            "clientConfig has neither url nor service",
            "run `kubectl mesh install` to restore it",
        )),
    }
    if hook.failure_policy.as_deref() == Some("Fail") {
        checks.push(CheckResult::warning(
            "failurePolicy lets namespace edits through when the webhook is down",
            "failurePolicy is Fail: a dead webhook blocks every namespace edit it matches",
            "run `kubectl mesh install` to restore failurePolicy Ignore",
        ));
    }
    if let Some(service) = &hook.client_config.service {
        check_deployment(client, &service.namespace, &rule, checks).await;
    }
    checks.push(probe_webhook(client, target.as_deref().unwrap_or("nowhere"), &rule).await);
    rule
}

/// Whether the webhook configuration records the sync rule the commands apply.
fn recorded_rule_result(mwc: &MutatingWebhookConfiguration, rule: &SyncRule) -> CheckResult {
    let what = "webhook configuration records the sync rule";
    let recorded = mwc
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(mesh_core::labels::MANAGED_LABELS_ANNOTATION));
    if recorded {
        CheckResult::ok(what, Some(installed_rule::describe(rule)))
    } else {
        CheckResult::warning(
            what,
            format!(
                "no {} annotation (installed by an older kubectl-mesh): commands assume the \
                 default rule",
                mesh_core::labels::MANAGED_LABELS_ANNOTATION
            ),
            "re-run `kubectl mesh install`, with the --managed-labels and \
             --excluded-namespaces the webhook runs with if they are not the defaults",
        )
    }
}

async fn check_tls_secret(client: &Client, ca: &[u8], now: Timestamp) -> CheckResult {
    let what = "serving certificate is valid and signed by the caBundle's CA";
    let secret = match Api::<Secret>::namespaced(client.clone(), MESH_NAMESPACE)
        .get_opt(render::TLS_SECRET)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            return CheckResult::error(
                what,
                format!("Secret {MESH_NAMESPACE}/{} not found", render::TLS_SECRET),
                "run `kubectl mesh install`",
            );
        }
        Err(e) => return kube_failure(what, "cannot read the serving certificate", &e),
    };
    let data = secret.data.unwrap_or_default();
    let key = |k: &str| data.get(k).map(|b| b.0.clone()).unwrap_or_default();
    if key(render::CA_CRT) != ca {
        return CheckResult::error(
            what,
            format!(
                "the caBundle is not the {} of Secret {MESH_NAMESPACE}/{}: the apiserver \
                 will not trust the webhook",
                render::CA_CRT,
                render::TLS_SECRET
            ),
            "run `kubectl mesh install` to write both again",
        );
    }
    expiry_result(what, certificates(&key(render::TLS_CRT)), now)
}

/// Checks the webhook Deployment: available, and running the sync rule the webhook
/// configuration records.
async fn check_deployment(
    client: &Client,
    namespace: &str,
    rule: &SyncRule,
    checks: &mut Vec<CheckResult>,
) {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get_opt(render::WEBHOOK)
        .await;
    checks.push(deployment_available(namespace, &deployment));
    if let Ok(Some(d)) = &deployment {
        checks.push(deployment_rule_result(d, rule));
    }
}

fn deployment_available(
    namespace: &str,
    deployment: &std::result::Result<Option<Deployment>, kube::Error>,
) -> CheckResult {
    let what = format!("Deployment {} is available", render::WEBHOOK);
    match deployment {
        Ok(Some(d)) => {
            let available = d
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            if available == 0 {
                CheckResult::error(
                    what,
                    format!("0 of {wanted} replicas available"),
                    format!(
                        "see `kubectl -n {namespace} describe deployment {}` and its pods' logs",
                        render::WEBHOOK
                    ),
                )
            } else if available < wanted {
                CheckResult::warning(
                    what,
                    format!("{available} of {wanted} replicas available"),
                    format!("see `kubectl -n {namespace} get pods`"),
                )
            } else {
                CheckResult::ok(what, Some(format!("{available}/{wanted} replicas")))
            }
        }
        Ok(None) => CheckResult::error(
            what,
            format!("Deployment {namespace}/{} not found", render::WEBHOOK),
            "run `kubectl mesh install`",
        ),
        Err(e) => kube_failure(&what, "cannot read it", e),
    }
}

/// Whether the webhook container runs with `recorded`, the rule of the webhook configuration
/// (its matchConditions and what the commands apply): a hand edit of either side makes the
/// webhook sync other labels than the apiserver sends it and the commands report.
fn deployment_rule_result(deployment: &Deployment, recorded: &SyncRule) -> CheckResult {
    let what = format!("Deployment {} runs the recorded sync rule", render::WEBHOOK);
    let containers = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.as_slice())
        .unwrap_or_default();
    let Some(container) = containers
        .iter()
        .find(|c| c.name == render::WEBHOOK)
        .or(containers.first())
    else {
        return CheckResult::error(
            what,
            "it has no container",
            "run `kubectl mesh install` to restore it",
        );
    };
    match installed_rule::from_container(container) {
        Some(running) if running == *recorded => CheckResult::ok(what, None),
        Some(running) => CheckResult::error(
            what,
            format!(
                "the webhook runs with {}, the webhook configuration records {}",
                installed_rule::describe(&running),
                installed_rule::describe(recorded)
            ),
            "re-run `kubectl mesh install` with the --managed-labels and --excluded-namespaces \
             you want: it writes both",
        ),
        None => CheckResult::warning(
            what,
            "the container sets the rule through valueFrom, which cannot be compared",
            "",
        ),
    }
}

/// Asks the apiserver for a server-side dry run of a managed-label change on a namespace:
/// the apiserver calls the webhook (matchConditions let managed-label changes through) and
/// the webhook, seeing a dry run, answers with a `kubectl-mesh:` warning and pushes nothing.
async fn probe_webhook(client: &Client, target: &str, rule: &SyncRule) -> CheckResult {
    let what = "webhook answers admission requests";
    // Only a change of a managed label reaches the webhook (matchConditions).
    let Some(probe_label) = Some(PROBE_LABEL)
        .filter(|l| rule.is_managed(l))
        .or_else(|| rule.managed_keys().next())
    else {
        return CheckResult::error(
            what,
            "the sync rule manages no label to probe the webhook with",
            "re-run `kubectl mesh install`",
        );
    };
    let namespaces = match Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(e) => return kube_failure(what, "cannot list namespaces to probe", &e),
    };
    let probe = namespaces
        .iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .map(ResourceExt::name_any)
        .filter(|n| !rule.is_excluded(n))
        .min_by_key(|n| (n != "default", n.clone()));
    let Some(probe) = probe else {
        return CheckResult::warning(
            what,
            "no namespace to probe the webhook with",
            "create one, e.g. `kubectl create namespace default`",
        );
    };
    let current = namespaces
        .iter()
        .find(|ns| ns.name_any() == probe)
        .and_then(|ns| ns.labels().get(probe_label).cloned());
    // Any value other than the current one is a change the webhook is called for.
    let value = if current.as_deref() == Some(PROBE_VALUE) {
        format!("{PROBE_VALUE}-2")
    } else {
        PROBE_VALUE.to_owned()
    };
    let patch = serde_json::json!({"metadata": {"labels": {probe_label: value}}});
    let params = PatchParams {
        dry_run: true,
        field_manager: Some(render::FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let request = match kube::core::Request::new("/api/v1/namespaces").patch(
        &probe,
        &params,
        &Patch::Merge(&patch),
    ) {
        Ok(r) => r,
        Err(e) => {
            return CheckResult::error(
                what,
                format!("cannot build the probe request: {e}"),
                "this is a bug in kubectl-mesh; please report it",
            );
        }
    };
    let response = match client.send(request.map(kube::client::Body::from)).await {
        Ok(r) => r,
        Err(e) => return kube_failure(what, "the dry-run probe failed", &e),
    };
    let status = response.status();
    let warnings: Vec<String> = response
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    if !status.is_success() {
        let body = response
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let message = serde_json::from_slice::<kube::core::Status>(&body)
            .map(|s| s.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return CheckResult::error(
            what,
            format!("a dry-run label change on namespace {probe} failed ({status}): {message}"),
            "see the webhook's logs",
        );
    }
    if warnings.iter().any(|w| w.contains(WEBHOOK_WARNING_PREFIX)) {
        CheckResult::ok(what, Some(format!("dry-run probe on namespace {probe}")))
    } else {
        CheckResult::error(
            what,
            format!(
                "a dry-run label change on namespace {probe} went through without an answer \
                 from {target} (failurePolicy Ignore hides the failure)"
            ),
            "check that mesh-webhook runs and that the apiserver can reach it; its logs and \
             the apiserver's say why a call failed",
        )
    }
}

/// What the per-cluster checks share.
struct ClusterEnv<'a> {
    primary: &'a Client,
    clusters: &'a [MeshCluster],
    primary_namespaces: std::result::Result<&'a BTreeMap<String, Namespace>, String>,
    primary_uid: Option<&'a str>,
    rule: SyncRule,
    timeout: Duration,
    now: Timestamp,
    /// The user's kubeconfig, to read what the stored credentials may not.
    user_kubeconfig: Option<&'a kube::config::Kubeconfig>,
}

async fn check_cluster(env: &ClusterEnv<'_>, cluster: &MeshCluster) -> Section {
    let name = cluster.name_any();
    let mut checks = Vec::new();
    let section = |checks| Section {
        name: format!("cluster {name} ({})", cluster.spec.server),
        checks,
    };
    let reattach = format!("re-run `kubectl mesh attach` for {name} to store fresh credentials");

    // The stored kubeconfig, checked against the rule of stored kubeconfigs.
    let what = "Secret holds a valid kubeconfig";
    let secret_name = &cluster.spec.secret_name;
    let secret = match Api::<Secret>::namespaced(env.primary.clone(), MESH_NAMESPACE)
        .get_opt(secret_name)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            checks.push(CheckResult::error(
                what,
                format!("Secret {MESH_NAMESPACE}/{secret_name} not found"),
                reattach,
            ));
            return section(checks);
        }
        Err(e) => {
            checks.push(kube_failure(
                what,
                "cannot read the Secret on the primary",
                &e,
            ));
            return section(checks);
        }
    };
    let yaml = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned());
    let Some(yaml) = yaml else {
        checks.push(CheckResult::error(
            what,
            format!("Secret {MESH_NAMESPACE}/{secret_name} has no {KUBECONFIG_KEY:?} key"),
            reattach,
        ));
        return section(checks);
    };
    let stored = match kubeconfig::parse_stored(&yaml) {
        Ok(kc) => kc,
        Err(e) => {
            checks.push(CheckResult::error(what, e.to_string(), e.hint()));
            return section(checks);
        }
    };
    let server = kubeconfig::select(&stored, None)
        .ok()
        .and_then(|s| s.server().ok().map(str::to_owned));
    match &server {
        Some(s) if *s != cluster.spec.server => checks.push(CheckResult::warning(
            what,
            format!(
                "its server {s} differs from spec.server {}",
                cluster.spec.server
            ),
            "the webhook uses the Secret's; re-attach to make them agree",
        )),
        _ => checks.push(CheckResult::ok(
            what,
            Some(format!("Secret {MESH_NAMESPACE}/{secret_name}")),
        )),
    }

    // Reachable, with the stored credentials, through the webhook's own client code.
    let what = "remote answers with the stored credentials";
    let remote = match remote::client_from_kubeconfig(
        secret_name,
        &yaml,
        &mesh_state::remote_options(env.timeout),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            checks.push(CheckResult::error(what, error_chain(&e), reattach));
            return section(checks);
        }
    };
    let review = with_deadline(
        env.timeout,
        Api::<SelfSubjectReview>::all(remote.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default()),
    )
    .await;
    match review {
        Ok(r) => {
            let user = r
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| u.username)
                .unwrap_or_else(|| "an unnamed user".into());
            checks.push(CheckResult::ok(what, Some(format!("as {user}"))));
        }
        // Authenticated but not allowed to ask who it is: reachable all the same.
        Err(e) if matches!(&e, RemoteError::Call(kube::Error::Api(s)) if s.code == 403) => {
            checks.push(CheckResult::ok(what, None));
        }
        Err(e) => {
            let hint = if e.is_forbidden() {
                format!("the remote refused the token (revoked or expired); {reattach}")
            } else {
                format!(
                    "check that {} is reachable from here and from the webhook",
                    cluster.spec.server
                )
            };
            checks.push(CheckResult::error(what, e.to_string(), hint));
            return section(checks);
        }
    }

    checks.push(check_identity(env, cluster, &remote).await);
    checks.push(check_rights(env, &name, &remote, &reattach).await);
    checks.push(check_token(&stored, env.now, &reattach));
    checks.push(check_drift(env, &name, &remote).await);
    checks.push(check_guard(env, cluster, &remote).await);
    section(checks)
}

/// The remote's kube-system UID is the cluster's identity: it must be spec.clusterId, unique
/// across the mesh and not the primary's.
async fn check_identity(
    env: &ClusterEnv<'_>,
    cluster: &MeshCluster,
    remote: &Client,
) -> CheckResult {
    let what = "remote is the cluster that was attached";
    let id = &cluster.spec.cluster_id;
    let name = cluster.name_any();
    if env.primary_uid == Some(id.as_str()) {
        return CheckResult::error(
            what,
            format!("spec.clusterId {id} is the primary's own cluster ID"),
            format!("detach {name}: a cluster cannot be its own remote"),
        );
    }
    let twins: Vec<String> = env
        .clusters
        .iter()
        .filter(|c| c.spec.cluster_id == *id && c.name_any() != name)
        .map(ResourceExt::name_any)
        .collect();
    if !twins.is_empty() {
        return CheckResult::error(
            what,
            format!("cluster ID {id} is also attached as {}", twins.join(", ")),
            "detach the duplicate: one cluster must be attached once",
        );
    }
    match with_deadline(
        env.timeout,
        Api::<Namespace>::all(remote.clone()).get("kube-system"),
    )
    .await
    {
        Ok(ns) if ns.metadata.uid.as_deref() == Some(id.as_str()) => {
            CheckResult::ok(what, Some(format!("cluster ID {id}")))
        }
        Ok(ns) => CheckResult::error(
            what,
            format!(
                "the remote's cluster ID is {}, not spec.clusterId {id}: the server now \
                 answers for another cluster",
                ns.metadata.uid.as_deref().unwrap_or("unknown")
            ),
            format!("detach {name} and attach the right cluster"),
        ),
        Err(e) => CheckResult::warning(
            what,
            format!("cannot read namespace kube-system to compare: {e}"),
            "",
        ),
    }
}

/// One right the rights check asks about, as the stored identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ask {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    /// The object's name, for rights granted by resourceNames.
    name: Option<&'static str>,
}

impl Ask {
    const fn any(verb: &'static str, group: &'static str, resource: &'static str) -> Self {
        Self {
            verb,
            group,
            resource,
            name: None,
        }
    }

    const fn named(
        verb: &'static str,
        group: &'static str,
        resource: &'static str,
        name: &'static str,
    ) -> Self {
        Self {
            verb,
            group,
            resource,
            name: Some(name),
        }
    }

    /// `namespaces get`, `validatingadmissionpolicies get kubectl-mesh-guard`.
    fn phrase(&self) -> String {
        match self.name {
            Some(setup::GUARD) => format!("{} {} {}", self.resource, self.verb, setup::GUARD),
            Some(_) => format!(
                "{} {} (other than {})",
                self.resource,
                self.verb,
                setup::GUARD
            ),
            None => format!("{} {}", self.resource, self.verb),
        }
    }
}

/// Asks whether the stored identity may do `ask`.
async fn can(remote: &Client, timeout: Duration, ask: Ask) -> RemoteResult<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(ask.verb.to_owned()),
                resource: Some(ask.resource.to_owned()),
                group: Some(ask.group.to_owned()),
                name: ask.name.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = with_deadline(
        timeout,
        Api::<SelfSubjectAccessReview>::all(remote.clone()).create(&PostParams::default(), &review),
    )
    .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

const POLICIES: &str = setup::GUARD_RESOURCES[0];
const BINDINGS: &str = setup::GUARD_RESOURCES[1];
const ADMISSION: &str = setup::ADMISSION_GROUP;
/// A name that is not the guard's, to ask whether other admission policies can be read.
const OTHER_POLICY: &str = "not-kubectl-mesh-guard";

/// What label sync needs.
const NEEDED: [Ask; 4] = [
    Ask::any("get", "", "namespaces"),
    Ask::any("list", "", "namespaces"),
    Ask::any("watch", "", "namespaces"),
    Ask::any("patch", "", "namespaces"),
];
/// What `check` needs to verify the guard with the stored credentials: `get` by name (which
/// also tells an absent guard by its 404). Clusters attached by an older kubectl-mesh lack it.
const GUARD_READ: [Ask; 2] = [
    Ask::named("get", ADMISSION, POLICIES, setup::GUARD),
    Ask::named("get", ADMISSION, BINDINGS, setup::GUARD),
];
/// What the stored identity should not have: more than namespaces, other admission policies
/// than its own guard, or the right to change the guard.
const EXCESSIVE: [Ask; 11] = [
    Ask::any("*", "*", "*"),
    Ask::any("list", "", "secrets"),
    Ask::any("delete", "", "namespaces"),
    Ask::any("list", ADMISSION, POLICIES),
    Ask::any("list", ADMISSION, BINDINGS),
    Ask::named("get", ADMISSION, POLICIES, OTHER_POLICY),
    Ask::named("get", ADMISSION, BINDINGS, OTHER_POLICY),
    Ask::named("patch", ADMISSION, POLICIES, setup::GUARD),
    Ask::named("patch", ADMISSION, BINDINGS, setup::GUARD),
    Ask::named("delete", ADMISSION, POLICIES, setup::GUARD),
    Ask::named("delete", ADMISSION, BINDINGS, setup::GUARD),
];

/// What the rights check concludes from the answers: `missing` needed rights (label sync's
/// and the guard read's), `excess` rights granted beyond them.
fn judge_rights(
    what: &str,
    name: &str,
    missing: &[Ask],
    excess: &[Ask],
    reattach: &str,
) -> CheckResult {
    let phrases = |asks: &[Ask]| asks.iter().map(Ask::phrase).collect::<Vec<_>>().join(", ");
    if missing.iter().any(|m| NEEDED.contains(m)) {
        return CheckResult::error(
            what,
            format!("not allowed: {}", phrases(missing)),
            format!(
                "the remote's ClusterRole or ClusterRoleBinding for kubectl-mesh was changed or \
                 deleted; {reattach}"
            ),
        );
    }
    if !missing.is_empty() {
        return CheckResult::warning(
            what,
            format!(
                "not allowed: {}; label sync works, but check reads the guard with your \
                 context of the remote instead",
                phrases(missing)
            ),
            format!(
                "attached by an older kubectl-mesh, or the ClusterRole {} was changed; re-run \
                 `kubectl mesh attach` for {name} to let the stored credentials read the guard",
                setup::SYNC_ACCOUNT
            ),
        );
    }
    if !excess.is_empty() {
        let found = if excess.iter().any(|a| a.verb == "*") {
            "everything (cluster-admin)".to_owned()
        } else {
            phrases(excess)
        };
        return CheckResult::warning(
            what,
            format!("over-privileged: also allowed {found}"),
            format!(
                "the stored credentials need only namespaces get, list, watch and patch, and \
                 get of the guard {}; remove the extra bindings of the service account on the \
                 remote",
                setup::GUARD
            ),
        );
    }
    CheckResult::ok(
        what,
        Some(format!(
            "namespaces get, list, watch, patch; guard {} get",
            setup::GUARD
        )),
    )
}

async fn check_rights(
    env: &ClusterEnv<'_>,
    name: &str,
    remote: &Client,
    reattach: &str,
) -> CheckResult {
    let what = "credentials have exactly the rights label sync needs";
    let asks: Vec<(Ask, bool)> = NEEDED
        .iter()
        .chain(&GUARD_READ)
        .map(|a| (*a, true))
        .chain(EXCESSIVE.iter().map(|a| (*a, false)))
        .collect();
    let answers =
        futures::future::join_all(asks.iter().map(|(ask, _)| can(remote, env.timeout, *ask))).await;
    let mut missing = Vec::new();
    let mut excess = Vec::new();
    for ((ask, needed), answer) in asks.into_iter().zip(answers) {
        match answer {
            Err(e) => {
                return CheckResult::warning(
                    what,
                    format!("cannot ask the remote: {e}"),
                    "SelfSubjectAccessReview must be allowed to every user (system:basic-user)",
                );
            }
            Ok(false) if needed => missing.push(ask),
            Ok(true) if !needed => excess.push(ask),
            Ok(_) => {}
        }
    }
    judge_rights(what, name, &missing, &excess, reattach)
}

/// The stored token's expiry, read from its JWT `exp` claim (service-account tokens are JWTs;
/// a legacy token Secret's has none and never expires).
fn check_token(stored: &kube::config::Kubeconfig, now: Timestamp, reattach: &str) -> CheckResult {
    let what = "credentials do not expire soon";
    let user = stored
        .auth_infos
        .first()
        .and_then(|a| a.auth_info.as_ref())
        .and_then(|a| serde_json::to_value(a).ok())
        .unwrap_or_default();
    let Some(token) = user.get("token").and_then(|t| t.as_str()) else {
        return CheckResult::ok(what, Some("client certificate".into()));
    };
    match token_expiry(token) {
        TokenExpiry::Never => CheckResult::ok(what, Some("long-lived token".into())),
        TokenExpiry::Unknown => {
            CheckResult::warning(what, "the token is not a JWT; its expiry is unknown", "")
        }
        TokenExpiry::At(exp) => {
            let left = exp.duration_since(now);
            let when = age::until(exp, now);
            if left.is_negative() {
                CheckResult::error(what, format!("the token {when}"), reattach.to_owned())
            } else if left < EXPIRY_WARNING {
                CheckResult::warning(
                    what,
                    format!("the token expires {when} ({exp:.0})"),
                    format!("{reattach} before then"),
                )
            } else {
                CheckResult::ok(what, Some(format!("token expires {when}")))
            }
        }
    }
}

/// When a bearer token expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenExpiry {
    /// A JWT without `exp`.
    Never,
    /// Not a readable JWT.
    Unknown,
    /// The `exp` claim.
    At(Timestamp),
}

/// Reads the `exp` claim of a JWT without verifying it (only the remote can).
pub fn token_expiry(token: &str) -> TokenExpiry {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return TokenExpiry::Unknown;
    };
    let Ok(bytes) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('='))
    else {
        return TokenExpiry::Unknown;
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return TokenExpiry::Unknown;
    };
    match claims.get("exp") {
        None => TokenExpiry::Never,
        Some(exp) => exp
            .as_i64()
            .and_then(|s| Timestamp::from_second(s).ok())
            .map_or(TokenExpiry::Unknown, TokenExpiry::At),
    }
}

async fn check_drift(env: &ClusterEnv<'_>, name: &str, remote: &Client) -> CheckResult {
    let what = "remote namespaces carry the primary's labels";
    let primary = match env.primary_namespaces {
        Ok(p) => p,
        Err(ref e) => {
            return CheckResult::warning(what, format!("cannot read the primary: {e}"), "");
        }
    };
    let namespaces = match mesh_state::remote_namespaces(remote, env.timeout).await {
        Ok(n) => n,
        Err(e) => {
            return CheckResult::error(
                what,
                format!("cannot list the remote's namespaces: {e}"),
                "label sync cannot work until this does; see the rights check above",
            );
        }
    };
    // The very plan a sync would carry out.
    let plan = env.rule.plan(primary, &namespaces);
    let missing = if plan.missing.is_empty() {
        String::new()
    } else {
        format!(
            "; {} absent there: {}",
            plan.missing.len(),
            plan.missing.join(", ")
        )
    };
    if plan.changes.is_empty() {
        CheckResult::ok(
            what,
            Some(format!(
                "{} in sync{missing}",
                plural(plan.in_sync.len(), "namespace")
            )),
        )
    } else {
        let names: Vec<&str> = plan.changes.iter().map(|c| c.namespace.as_str()).collect();
        CheckResult::warning(
            what,
            format!(
                "{} differ from the primary: {}{missing}",
                plural(names.len(), "namespace"),
                names.join(", ")
            ),
            format!(
                "the webhook's reconciler corrects them at its next resync; \
                 `kubectl mesh sync --cluster {name}` does it now"
            ),
        )
    }
}

/// The remote guard as found on a remote: [`setup::GUARD`]'s policy and binding, each read
/// by name (a `get`, which the sync account may do on these two objects only; absent is a
/// 404, not a refusal).
#[derive(Clone, Debug, Default)]
pub struct FoundGuard {
    /// The ValidatingAdmissionPolicy.
    pub policy: Option<ValidatingAdmissionPolicy>,
    /// Its binding.
    pub binding: Option<ValidatingAdmissionPolicyBinding>,
}

async fn read_guard(client: &Client, timeout: Duration) -> RemoteResult<FoundGuard> {
    let policies = Api::<ValidatingAdmissionPolicy>::all(client.clone());
    let bindings = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone());
    let (policy, binding) = futures::join!(
        with_deadline(timeout, policies.get_opt(setup::GUARD)),
        with_deadline(timeout, bindings.get_opt(setup::GUARD)),
    );
    Ok(FoundGuard {
        policy: policy?,
        binding: binding?,
    })
}

/// The guard mode a policy and binding amount to for the cluster `name`: nothing, or a
/// policy nothing binds, guards nothing.
pub fn guard_mode(
    name: &str,
    policy: Option<&ValidatingAdmissionPolicy>,
    binding: Option<&ValidatingAdmissionPolicyBinding>,
) -> RemoteGuard {
    guard_state(name, policy, binding).unwrap_or(RemoteGuard::Off)
}

/// Like [`guard_mode`], but says why there is no guard.
fn guard_state(
    name: &str,
    policy: Option<&ValidatingAdmissionPolicy>,
    binding: Option<&ValidatingAdmissionPolicyBinding>,
) -> std::result::Result<RemoteGuard, String> {
    let (policy, binding) = match (policy, binding) {
        (None, None) => return Err("neither its policy nor its binding exists".into()),
        (None, Some(_)) => {
            return Err(format!(
                "ValidatingAdmissionPolicy {} not found (only its binding is there)",
                setup::GUARD
            ));
        }
        (Some(_), None) => {
            return Err(format!(
                "ValidatingAdmissionPolicyBinding {} not found (the policy is there, unbound)",
                setup::GUARD
            ));
        }
        (Some(p), Some(b)) => (p, b),
    };
    if !setup::is_ours(&policy.metadata, name) {
        return Err(format!(
            "ValidatingAdmissionPolicy {} was not installed for cluster {name}{}",
            setup::GUARD,
            setup::owner_cluster(&policy.metadata)
                .map(|c| format!(" (it is cluster {c}'s)"))
                .unwrap_or_default()
        ));
    }
    let spec = binding.spec.as_ref();
    let bound = spec.and_then(|s| s.policy_name.as_deref());
    if bound != Some(policy.name_any().as_str()) {
        return Err(format!(
            "the binding binds policy {}, not {}",
            bound.unwrap_or("(none)"),
            setup::GUARD
        ));
    }
    let actions = spec
        .and_then(|s| s.validation_actions.clone())
        .unwrap_or_default();
    if actions.iter().any(|a| a == "Deny") {
        Ok(RemoteGuard::Deny)
    } else if actions.iter().any(|a| a == "Warn") {
        Ok(RemoteGuard::Warn)
    } else {
        Err(format!(
            "the binding's validationActions are [{}], neither Warn nor Deny",
            actions.join(", ")
        ))
    }
}

/// Compares what is on the remote with what the MeshCluster declares: the mode
/// (spec.remoteGuard), and the primary the guard's message names (spec.primaryName).
pub fn judge_guard(what: &str, cluster: &MeshCluster, found: &FoundGuard) -> CheckResult {
    let name = cluster.name_any();
    let wanted = cluster.spec.remote_guard;
    let primary = cluster.spec.primary_name.as_deref();
    let fix = format!(
        "re-run `kubectl mesh attach` for {name} with --remote-guard {}{} to install the guard \
         it declares",
        format!("{wanted:?}").to_lowercase(),
        primary
            .map(|p| format!(" --primary-name {p}"))
            .unwrap_or_default()
    );
    let state = guard_state(&name, found.policy.as_ref(), found.binding.as_ref());
    let mode = state.clone().unwrap_or(RemoteGuard::Off);
    if mode != wanted {
        let why = match (&state, wanted) {
            (Err(why), RemoteGuard::Warn | RemoteGuard::Deny) => format!(": {why}"),
            _ => String::new(),
        };
        return CheckResult::error(
            what,
            format!("spec.remoteGuard is {wanted:?} but the remote's guard is {mode:?}{why}"),
            fix,
        );
    }
    if wanted == RemoteGuard::Off {
        return CheckResult::ok(what, Some(format!("{wanted:?}")));
    }
    if let Some(primary) = primary {
        let named = found.policy.as_ref().and_then(setup::guard_primary_name);
        if named.as_deref() != Some(primary) {
            let found = match named {
                Some(other) => format!("names primary {other}"),
                None => "is not the message attach writes".to_owned(),
            };
            return CheckResult::error(
                what,
                format!(
                    "spec.primaryName is {primary} but the guard's message {found}: people \
                     editing labels on the remote are sent to the wrong cluster"
                ),
                fix,
            );
        }
    }
    CheckResult::ok(what, Some(format!("{wanted:?}")))
}

/// The remote guard must be what spec.remoteGuard and spec.primaryName say. It is read with
/// the stored credentials, which may `get` the guard's two objects by name. A cluster
/// attached by an older kubectl-mesh has credentials that may not: then the remote is read
/// with the user's own kubeconfig, through the context attach recorded (as detach does).
async fn check_guard(env: &ClusterEnv<'_>, cluster: &MeshCluster, remote: &Client) -> CheckResult {
    let what = "remote guard matches spec.remoteGuard";
    let stored_err = match read_guard(remote, env.timeout).await {
        Ok(found) => return judge_guard(what, cluster, &found),
        Err(e) => e,
    };
    let stored = if stored_err.is_forbidden() {
        "the stored credentials may not read the guard".to_owned()
    } else {
        format!("the guard cannot be read with the stored credentials ({stored_err})")
    };
    let context = setup::remote_context(cluster);
    let admin = match (context, env.user_kubeconfig) {
        (Some(context), Some(kc)) if kubeconfig::select(kc, Some(context)).is_ok() => {
            kubeconfig::client(kc.clone(), Some(context)).await.ok()
        }
        _ => None,
    };
    let Some(admin) = admin else {
        let through = match context {
            Some(c) => format!("your kubeconfig has no context {c}"),
            None => "attach recorded no remote context".to_owned(),
        };
        return CheckResult::warning(
            what,
            format!("not verified: {stored} and {through}"),
            format!(
                "re-run `kubectl mesh attach` for {} to let the stored credentials read it, \
                 run check with a kubeconfig that also holds the remote's context, or look on \
                 the remote: `kubectl{} get validatingadmissionpolicybinding {} -o yaml`",
                cluster.name_any(),
                context
                    .map(|c| format!(" --context {c}"))
                    .unwrap_or_default(),
                setup::GUARD
            ),
        );
    };
    let context = context.unwrap_or_default();
    match read_guard(&admin, env.timeout).await {
        Ok(found) => {
            let mut result = judge_guard(what, cluster, &found);
            let note = format!("read with context {context}: {stored}");
            match &mut result.detail {
                Some(detail) if result.result == Outcome::Ok => {
                    *detail = format!("{detail}; {note}");
                }
                Some(detail) => detail.push_str(&format!(" ({note})")),
                None => result.detail = Some(note),
            }
            result
        }
        Err(e) => CheckResult::warning(
            what,
            format!("not verified: {stored}, and with context {context}: {e}"),
            "",
        ),
    }
}

/// Certificates of a PEM bundle: how many, and the earliest expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Certificates found.
    pub count: usize,
    /// The earliest `notAfter`.
    pub not_after: Timestamp,
}

/// Parses every certificate of a PEM bundle; an error says what is wrong with it.
pub fn certificates(pem: &[u8]) -> std::result::Result<CertInfo, String> {
    let mut count = 0;
    let mut earliest: Option<Timestamp> = None;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block
            .parse_x509()
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let not_after = Timestamp::from_second(cert.validity().not_after.timestamp())
            .map_err(|e| format!("unreadable notAfter: {e}"))?;
        earliest = Some(earliest.map_or(not_after, |t| t.min(not_after)));
        count += 1;
    }
    match earliest {
        Some(not_after) => Ok(CertInfo { count, not_after }),
        None => Err("no PEM certificate in it".into()),
    }
}

fn expiry_result(
    what: &str,
    certs: std::result::Result<CertInfo, String>,
    now: Timestamp,
) -> CheckResult {
    let renew = "run `kubectl mesh install --rotate-certs`";
    match certs {
        Err(e) => CheckResult::error(what, e, renew),
        Ok(info) => {
            let left = info.not_after.duration_since(now);
            let when = age::until(info.not_after, now);
            if left.is_negative() {
                CheckResult::error(what, format!("the certificate {when}"), renew)
            } else if left < SignedDuration::from_hours(24 * 30) {
                CheckResult::warning(what, format!("the certificate expires {when}"), renew)
            } else {
                CheckResult::ok(what, Some(format!("expires {when}")))
            }
        }
    }
}

/// A check that failed because a request to the primary failed.
fn kube_failure(what: &str, doing: &str, e: &kube::Error) -> CheckResult {
    CheckResult::error(what, format!("{doing}: {}", describe_kube(e)), kube_hint(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> CheckReport {
        CheckReport::new(vec![
            Section {
                name: "kubectl-mesh installation".into(),
                checks: vec![
                    CheckResult::ok("MeshCluster CustomResourceDefinition is established", None),
                    CheckResult::ok(
                        "clientConfig says where the webhook is",
                        Some("https://127.0.0.1:1/mutate".into()),
                    ),
                    CheckResult::error(
                        "webhook answers admission requests",
                        "a dry-run label change went through without an answer",
                        "check that mesh-webhook runs",
                    ),
                ],
            },
            Section {
                name: "cluster east (https://10.0.0.1:6443)".into(),
                checks: vec![CheckResult::warning(
                    "credentials have exactly the rights label sync needs",
                    "over-privileged: also allowed secrets list",
                    "remove the extra bindings",
                )],
            },
        ])
    }

    #[test]
    fn deployment_rule_follows_the_recorded_one() {
        let custom = render::Options {
            managed_labels: vec!["team.example.com/zone".into()],
            excluded_namespaces: vec!["legacy".into(), MESH_NAMESPACE.into()],
            ..render::Options::default()
        };
        let recorded = |options: &render::Options| {
            installed_rule::from_annotations(
                render::mutating_webhook_configuration(options, None)
                    .metadata
                    .annotations
                    .as_ref(),
            )
        };
        let same = deployment_rule_result(&render::deployment(&custom), &recorded(&custom));
        assert_eq!(same.result, Outcome::Ok, "{same:?}");

        // The Deployment edited back to the defaults by hand: the webhook disagrees with the
        // matchConditions and with what the commands apply.
        let default = render::Options::default();
        let differs = deployment_rule_result(&render::deployment(&default), &recorded(&custom));
        assert_eq!(differs.result, Outcome::Error, "{differs:?}");
        assert_eq!(
            differs.description,
            "Deployment mesh-webhook runs the recorded sync rule"
        );
        assert_eq!(
            differs.detail.as_deref(),
            Some(
                "the webhook runs with managed istio-injection, istio.io/dataplane-mode, \
                 istio.io/rev; excluded kube-node-lease, kube-public, kube-system, kubectl-mesh, \
                 the webhook configuration records managed team.example.com/zone; excluded \
                 kubectl-mesh, legacy"
            )
        );
        assert!(
            differs
                .hint
                .as_deref()
                .is_some_and(|h| h.contains("kubectl mesh install")),
            "{differs:?}"
        );

        let mut empty = render::deployment(&default);
        empty
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers = Vec::new();
        assert_eq!(
            deployment_rule_result(&empty, &recorded(&default)).result,
            Outcome::Error
        );
    }

    #[test]
    fn a_configuration_without_the_rule_is_worth_a_look() {
        let options = render::Options::default();
        let mut mwc = render::mutating_webhook_configuration(&options, None);
        let rule = installed_rule::from_annotations(mwc.metadata.annotations.as_ref());
        let recorded = recorded_rule_result(&mwc, &rule);
        assert_eq!(recorded.result, Outcome::Ok);
        assert_eq!(
            recorded.detail.as_deref(),
            Some(
                "managed istio-injection, istio.io/dataplane-mode, istio.io/rev; excluded \
                 kube-node-lease, kube-public, kube-system, kubectl-mesh"
            )
        );
        mwc.metadata.annotations = None;
        let older = recorded_rule_result(&mwc, &SyncRule::default());
        assert_eq!(older.result, Outcome::Warning, "{older:?}");
    }

    #[test]
    fn text_snapshot() {
        insta::assert_snapshot!("check_text", report().text(false));
    }

    #[test]
    fn counts_and_json() {
        let r = report();
        assert_eq!((r.errors, r.warnings), (1, 1));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["sections"][0]["checks"][2]["result"], "error");
        assert_eq!(v["sections"][0]["checks"][0].get("detail"), None);
        assert_eq!(v["sections"][1]["checks"][0]["result"], "warning");
    }

    #[test]
    fn colour_only_when_asked() {
        let text = report().text(true);
        assert!(text.contains("\x1b[31m×\x1b[0m webhook answers"), "{text}");
        assert!(!report().text(false).contains('\x1b'));
    }

    fn jwt(claims: serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.c2lnbmF0dXJl",
            enc(&serde_json::json!({"alg": "RS256"})),
            enc(&claims)
        )
    }

    #[test]
    fn token_expiry_from_jwt() {
        assert_eq!(
            token_expiry(&jwt(serde_json::json!({"exp": 1_900_000_000}))),
            TokenExpiry::At(Timestamp::from_second(1_900_000_000).unwrap())
        );
        assert_eq!(
            token_expiry(&jwt(
                serde_json::json!({"sub": "system:serviceaccount:a:b"})
            )),
            TokenExpiry::Never
        );
        assert_eq!(token_expiry("opaque-token"), TokenExpiry::Unknown);
        assert_eq!(token_expiry("a.!!!.c"), TokenExpiry::Unknown);
    }

    #[test]
    fn token_check_levels() {
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let stored = |token: &str| {
            kubeconfig::build_stored_kubeconfig("east", "https://1.2.3.4", None, token)
        };
        let at = |s: i64| jwt(serde_json::json!({"exp": now.as_second() + s}));
        let r = check_token(&stored(&at(3600)), now, "re-attach");
        assert_eq!(r.result, Outcome::Warning);
        assert_eq!(
            r.detail.as_deref(),
            Some("the token expires in 60m (2026-03-01T01:00:00Z)")
        );
        assert_eq!(
            check_token(&stored(&at(-60)), now, "x").result,
            Outcome::Error
        );
        assert_eq!(
            check_token(&stored(&at(90 * 86_400)), now, "x").result,
            Outcome::Ok
        );
        let r = check_token(&stored(&jwt(serde_json::json!({}))), now, "x");
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (Outcome::Ok, Some("long-lived token"))
        );
    }

    #[test]
    fn rights_expect_the_named_guard_read_and_nothing_more() {
        let judge = |missing: &[Ask], excess: &[Ask]| {
            judge_rights("rights", "east", missing, excess, "re-attach")
        };
        let ok = judge(&[], &[]);
        assert_eq!(ok.result, Outcome::Ok);
        assert_eq!(
            ok.detail.as_deref(),
            Some("namespaces get, list, watch, patch; guard kubectl-mesh-guard get")
        );

        // An older attach: label sync works, the guard read is missing.
        let older = judge(&GUARD_READ, &[]);
        assert_eq!(older.result, Outcome::Warning);
        assert_eq!(
            older.detail.as_deref(),
            Some(
                "not allowed: validatingadmissionpolicies get kubectl-mesh-guard, \
                 validatingadmissionpolicybindings get kubectl-mesh-guard; label sync works, \
                 but check reads the guard with your context of the remote instead"
            )
        );
        assert!(
            older
                .hint
                .unwrap()
                .contains("kubectl mesh attach` for east")
        );

        // Revoked: everything missing is an error that lists it all.
        let all: Vec<Ask> = NEEDED.iter().chain(&GUARD_READ).copied().collect();
        let revoked = judge(&all, &[]);
        assert_eq!(revoked.result, Outcome::Error);
        assert!(
            revoked.detail.as_deref().unwrap().starts_with(
                "not allowed: namespaces get, namespaces list, namespaces watch, \
                 namespaces patch, validatingadmissionpolicies get kubectl-mesh-guard"
            ),
            "{revoked:?}"
        );

        // Listing policies, reading another one, or changing the guard: over-privileged.
        let list = Ask::any("list", ADMISSION, POLICIES);
        let other = Ask::named("get", ADMISSION, POLICIES, OTHER_POLICY);
        let change = Ask::named("delete", ADMISSION, BINDINGS, setup::GUARD);
        for ask in [list, other, change] {
            assert!(EXCESSIVE.contains(&ask), "{ask:?}");
        }
        let over = judge(&[], &[list, other, change]);
        assert_eq!(over.result, Outcome::Warning);
        assert_eq!(
            over.detail.as_deref(),
            Some(
                "over-privileged: also allowed validatingadmissionpolicies list, \
                 validatingadmissionpolicies get (other than kubectl-mesh-guard), \
                 validatingadmissionpolicybindings delete kubectl-mesh-guard"
            )
        );
        let admin = judge(&[], &[EXCESSIVE[0], list]);
        assert_eq!(
            admin.detail.as_deref(),
            Some("over-privileged: also allowed everything (cluster-admin)")
        );
        // The needed rights and the excessive ones never overlap.
        for ask in NEEDED.iter().chain(&GUARD_READ) {
            assert!(!EXCESSIVE.contains(ask), "{ask:?}");
        }
    }

    fn attached(guard: RemoteGuard, primary: Option<&str>) -> MeshCluster {
        let mut mc = setup::mesh_cluster(&setup::ClusterRecord {
            name: "east".into(),
            cluster_id: "id".into(),
            server: "https://e".into(),
            guard,
            primary_name: primary.unwrap_or_default().into(),
            remote_namespace_created: true,
            remote_context: "east".into(),
        });
        mc.spec.primary_name = primary.map(str::to_owned);
        mc
    }

    fn installed(guard: RemoteGuard, primary: &str) -> FoundGuard {
        let g = setup::Guard::new(guard, primary, "admin@main");
        FoundGuard {
            policy: Some(setup::guard_policy("east", &g)),
            binding: Some(setup::guard_binding("east", &g)),
        }
    }

    #[test]
    fn guard_must_match_mode_and_primary_name() {
        let judge = |mc: &MeshCluster, found: &FoundGuard| judge_guard("guard", mc, found);
        let warn = attached(RemoteGuard::Warn, Some("main"));
        let r = judge(&warn, &installed(RemoteGuard::Warn, "main"));
        assert_eq!((r.result, r.detail.as_deref()), (Outcome::Ok, Some("Warn")));

        // The primary's name in the message must be spec.primaryName.
        let r = judge(&warn, &installed(RemoteGuard::Warn, "elsewhere"));
        assert_eq!(r.result, Outcome::Error);
        assert!(
            r.detail.as_deref().unwrap().starts_with(
                "spec.primaryName is main but the guard's message names primary elsewhere"
            ),
            "{r:?}"
        );
        assert_eq!(
            r.hint.as_deref(),
            Some(
                "re-run `kubectl mesh attach` for east with --remote-guard warn --primary-name \
                 main to install the guard it declares"
            )
        );
        // A MeshCluster of an older attach does not say: any name passes.
        let unnamed = attached(RemoteGuard::Warn, None);
        assert_eq!(
            judge(&unnamed, &installed(RemoteGuard::Warn, "x")).result,
            Outcome::Ok
        );

        // Deny declared, the binding deleted.
        let deny = attached(RemoteGuard::Deny, Some("main"));
        let mut found = installed(RemoteGuard::Deny, "main");
        assert_eq!(judge(&deny, &found).result, Outcome::Ok);
        found.binding = None;
        let r = judge(&deny, &found);
        assert_eq!(r.result, Outcome::Error);
        assert_eq!(
            r.detail.as_deref(),
            Some(
                "spec.remoteGuard is Deny but the remote's guard is Off: \
                 ValidatingAdmissionPolicyBinding kubectl-mesh-guard not found (the policy is \
                 there, unbound)"
            )
        );
        let r = judge(&deny, &installed(RemoteGuard::Warn, "main"));
        assert_eq!(
            r.detail.as_deref(),
            Some("spec.remoteGuard is Deny but the remote's guard is Warn")
        );
        // Another cluster's guard is not this one's.
        let g = setup::Guard::new(RemoteGuard::Deny, "main", "admin@main");
        let foreign = FoundGuard {
            policy: Some(setup::guard_policy("west", &g)),
            binding: Some(setup::guard_binding("west", &g)),
        };
        let r = judge(&deny, &foreign);
        assert!(
            r.detail
                .as_deref()
                .unwrap()
                .contains("(it is cluster west's)"),
            "{r:?}"
        );

        // Off: absent is right, present is not.
        let off = attached(RemoteGuard::Off, Some("main"));
        let r = judge(&off, &FoundGuard::default());
        assert_eq!((r.result, r.detail.as_deref()), (Outcome::Ok, Some("Off")));
        let r = judge(&off, &installed(RemoteGuard::Warn, "main"));
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (
                Outcome::Error,
                Some("spec.remoteGuard is Off but the remote's guard is Warn")
            )
        );
        assert!(r.hint.unwrap().contains("--remote-guard off"));
    }

    #[test]
    fn certificates_are_parsed_and_dated() {
        let cert = render::generate_serving_cert(&["localhost".into()]).unwrap();
        let now = Timestamp::now();
        let info = certificates(cert.ca_pem.as_bytes()).unwrap();
        assert_eq!(info.count, 1);
        assert!(info.not_after > now + SignedDuration::from_hours(24 * 365 * 9));
        assert_eq!(
            expiry_result("ca", Ok(info.clone()), now).result,
            Outcome::Ok
        );
        let later = info.not_after + SignedDuration::from_hours(1);
        let r = expiry_result("ca", Ok(info), later);
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (Outcome::Error, Some("the certificate expired 60m ago"))
        );
        assert!(certificates(b"garbage").is_err());
        let key_only = cert.key_pem.as_bytes();
        assert_eq!(
            certificates(key_only).unwrap_err(),
            "no PEM certificate in it"
        );
    }
}
