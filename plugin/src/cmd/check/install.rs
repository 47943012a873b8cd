//! The installation checks: the CRD, the namespace, the webhook configuration and what it
//! points at, judged from what [`facts::install`](super::facts::install) read.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    core::v1::{Namespace, Secret},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use mesh_core::{MESH_NAMESPACE, cluster::MeshCluster, labels::SyncRule};

use super::answers::Fetched;
use super::caller_auth;
use super::facts::{InstallFacts, Probe};
use super::report::{CheckResult, Outcome, Section};
use crate::credentials::{CertInfo, certificates};
use crate::render::installed::{self, webhook_container};
use crate::{age, installed_rule, render};
use mesh_core::printable::one_line;

/// Prefix of every warning the webhook returns.
const WEBHOOK_WARNING_PREFIX: &str = "kubectl-mesh:";

/// What the installation checks conclude.
#[derive(Debug)]
pub struct Installation {
    /// Their section of the report.
    pub section: Section,
    /// Whether the MeshCluster CRD is established: without it, no cluster can be checked.
    pub crd_established: bool,
    /// The sync rule the webhook configuration records, which the remaining checks apply
    /// (the default one when it cannot be read: that failure is reported already).
    pub rule: SyncRule,
}

/// Judges the installation.
pub fn judge(facts: &InstallFacts, now: Timestamp) -> Installation {
    let mut checks = Vec::new();
    let installed = InstalledWith::read(facts);
    let (crd, crd_established) = crd_result(&facts.crd, &installed);
    checks.push(crd);
    checks.push(namespace_result(&facts.namespace, &installed));
    let rule = webhook_results(facts, &installed, now, &mut checks);
    Installation {
        section: Section {
            name: "kubectl-mesh installation".into(),
            checks,
        },
        crd_established,
        rule,
    }
}

/// What a re-run of `kubectl mesh install` must be given again not to undo the installation,
/// as far as `check` read it: install takes nothing from the installed objects, so a re-run
/// without `--client-ca-file` deletes the client CA, without the rule flags resets the rule,
/// without `--webhook-url` deploys a webhook in the cluster, without `--image` or `--replicas`
/// puts back the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstalledWith {
    /// The sync rule the webhook configuration records; `None` when it records none.
    pub rule: Option<SyncRule>,
    /// The URL the webhook configuration calls the webhook at, when it uses one.
    pub webhook_url: Option<String>,
    /// Whether install was given `--client-ca-file`.
    pub client_ca: ClientCa,
    /// The webhook's image, when the Deployment runs another than [`render::DEFAULT_IMAGE`].
    pub image: Option<String>,
    /// The Deployment's replicas, when not [`render::DEFAULT_REPLICAS`].
    pub replicas: Option<i32>,
}

/// Whether install was given `--client-ca-file`, as far as `check` read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClientCa {
    /// It was not: the client-CA ConfigMap is not in use.
    #[default]
    Unused,
    /// It was; `allowed_names`: those of `--client-allowed-names` the webhook's Deployment
    /// runs with.
    Used { allowed_names: Option<String> },
    /// Nothing read could tell (the ConfigMap unreadable, and no Deployment read that says
    /// it): the hints then name the flag as one to give if install had it.
    Unread,
}

/// How a hint re-runs install.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rerun {
    /// As installed.
    Same,
    /// As installed, with a new CA and serving certificate.
    RotateCerts,
    /// As installed but for the sync rule, which the hint asks the user for.
    OtherRule,
    /// As installed, with a client CA the hint asks the user for.
    NewClientCa,
}

impl InstalledWith {
    /// What `facts` show of the installation.
    pub fn read(facts: &InstallFacts) -> Self {
        let Ok(Some(mwc)) = &facts.webhook else {
            return Self::default();
        };
        let recorded = mwc
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(mesh_core::labels::MANAGED_LABELS_ANNOTATION));
        let rule =
            recorded.then(|| installed_rule::from_annotations(mwc.metadata.annotations.as_ref()));
        let webhook_url = render::webhook_entry(mwc).and_then(|h| h.client_config.url.clone());
        let deployment = match &facts.deployment {
            Some((_, Ok(Some(d)))) if webhook_url.is_none() => Some(d),
            _ => None,
        };
        // A Deployment says what its webhook runs with; without one (a webhook run elsewhere,
        // or none read), the ConfigMap that install keeps only with --client-ca-file does.
        let client_ca = match (deployment, &facts.client_ca) {
            (Some(d), _) if caller_auth::requires_client_cert(d) => ClientCa::Used {
                allowed_names: caller_auth::allowed_names(d).map(str::to_owned),
            },
            (None, Some(Ok(Some(_)))) => ClientCa::Used {
                allowed_names: None,
            },
            (None, Some(Err(_))) => ClientCa::Unread,
            _ => ClientCa::Unused,
        };
        let image = deployment
            .and_then(installed::image)
            .filter(|&image| image != render::DEFAULT_IMAGE)
            .map(str::to_owned);
        let replicas = deployment
            .and_then(installed::replicas)
            .filter(|&replicas| replicas != render::DEFAULT_REPLICAS);
        Self {
            rule,
            webhook_url,
            client_ca,
            image,
            replicas,
        }
    }

    /// The command that re-runs install as `rerun` says, in backquotes: every hint of these
    /// checks to run install is made here.
    pub fn install(&self, rerun: Rerun) -> String {
        let mut line = "kubectl mesh install".to_owned();
        if rerun == Rerun::RotateCerts {
            line.push_str(" --rotate-certs");
            // In the cluster, --wait also stops trusting the previous CA once no pod serves it;
            // without it a second run would be needed.
            if self.webhook_url.is_none() {
                line.push_str(" --wait");
            }
        }
        if let Some(image) = &self.image {
            line.push_str(" --image ");
            line.push_str(&render::shell_word(image));
        }
        if let Some(replicas) = self.replicas {
            line.push_str(&format!(" --replicas {replicas}"));
        }
        if let Some(url) = &self.webhook_url {
            line.push_str(" --webhook-url ");
            line.push_str(&render::shell_word(url));
            // The webhook run elsewhere must be given the new certificate.
            if rerun == Rerun::RotateCerts {
                line.push_str(
                    " --webhook-cert-dir <the directory the webhook reads its certificate from>",
                );
            }
        }
        if let Some(rule) = self.rule.as_ref().filter(|_| rerun != Rerun::OtherRule) {
            let managed: Vec<String> = rule.managed_keys().map(str::to_owned).collect();
            let excluded: Vec<String> = rule.excluded_namespaces().map(str::to_owned).collect();
            let flags = installed_rule::webhook_flags(&managed, &excluded);
            if !flags.is_empty() {
                line.push(' ');
                line.push_str(&flags);
            }
        }
        match (rerun, &self.client_ca) {
            (Rerun::NewClientCa, _) => {
                line.push_str(&format!(" {} <its CA>", render::CLIENT_CA_FLAG));
            }
            (_, ClientCa::Used { allowed_names }) => {
                line.push_str(&format!(
                    " {} <the CA file used at install>",
                    render::CLIENT_CA_FLAG
                ));
                if let Some(names) = allowed_names {
                    line.push_str(&format!(
                        " {} {}",
                        render::CLIENT_ALLOWED_NAMES_FLAG,
                        render::shell_word(names)
                    ));
                }
            }
            (_, ClientCa::Unread) => line.push_str(&format!(
                " {} <the CA file used at install, if it was given one: its ConfigMap could not \
                 be read>",
                render::CLIENT_CA_FLAG
            )),
            (_, ClientCa::Unused) => {}
        }
        format!("`{line}`")
    }
}

fn crd_result(
    crd: &Fetched<CustomResourceDefinition>,
    installed: &InstalledWith,
) -> (CheckResult, bool) {
    let name = MeshCluster::crd_name();
    let what = "MeshCluster CustomResourceDefinition is established";
    match crd {
        Ok(Some(crd)) => {
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                (CheckResult::ok(what, None), true)
            } else {
                let result = CheckResult::error(
                    what,
                    format!("CustomResourceDefinition {name} is not Established"),
                    format!("see `kubectl get crd {name} -o yaml` for its conditions"),
                );
                (result, false)
            }
        }
        Ok(None) => {
            let result = CheckResult::error(
                what,
                format!("CustomResourceDefinition {name} not found"),
                format!("run {}", installed.install(Rerun::Same)),
            );
            (result, false)
        }
        Err(e) => (
            CheckResult::kube_failure(what, "cannot read the CRD", e),
            false,
        ),
    }
}

fn namespace_result(namespace: &Fetched<Namespace>, installed: &InstalledWith) -> CheckResult {
    let what = format!("namespace {MESH_NAMESPACE} exists");
    let install = installed.install(Rerun::Same);
    match namespace {
        Ok(Some(ns)) if ns.metadata.deletion_timestamp.is_some() => CheckResult::error(
            what,
            "it is being deleted",
            format!("wait for the deletion to finish, then run {install}"),
        ),
        Ok(Some(_)) => CheckResult::ok(what, None),
        Ok(None) => CheckResult::error(what, "not found", format!("run {install}")),
        Err(e) => CheckResult::kube_failure(&what, "cannot read it", e),
    }
}

/// Checks the webhook configuration and what it points at. Returns the sync rule it records.
fn webhook_results(
    facts: &InstallFacts,
    installed: &InstalledWith,
    now: Timestamp,
    checks: &mut Vec<CheckResult>,
) -> SyncRule {
    let install = installed.install(Rerun::Same);
    let what = format!(
        "MutatingWebhookConfiguration {} is present",
        render::WEBHOOK_CONFIGURATION
    );
    let mwc = match &facts.webhook {
        Ok(Some(mwc)) => mwc,
        Ok(None) => {
            checks.push(CheckResult::error(
                what,
                "not found: namespace label changes are not pushed to remotes as they happen",
                format!("run {install}"),
            ));
            return SyncRule::default();
        }
        Err(e) => {
            checks.push(CheckResult::kube_failure(&what, "cannot read it", e));
            return SyncRule::default();
        }
    };
    let rule = installed_rule::from_annotations(mwc.metadata.annotations.as_ref());
    let Some(hook) = render::webhook_entry(mwc) else {
        checks.push(CheckResult::error(
            what,
            format!("it has no webhook named {}", render::WEBHOOK_ENTRY),
            format!("run {install} to restore it"),
        ));
        return rule;
    };
    checks.push(CheckResult::ok(what, None));
    checks.push(recorded_rule_result(mwc, &rule, installed));

    // caBundle: what the apiserver trusts when it calls the webhook.
    let what = "caBundle is a valid, unexpired CA certificate";
    let ca = hook
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.as_slice());
    match ca {
        None => checks.push(CheckResult::error(
            what,
            "the webhook configuration has no caBundle",
            format!("run {install} to restore it"),
        )),
        Some(bundle) => checks.push(ca_bundle_result(
            what,
            bundle,
            secret_ca(&facts.tls_secret),
            now,
            installed,
        )),
    }
    if let (Some(ca), Some(secret)) = (ca, &facts.tls_secret) {
        checks.push(tls_secret_result(ca, secret, now, installed));
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
            format!("run {install} to restore it"),
        )),
    }
    if hook.failure_policy.as_deref() == Some("Fail") {
        checks.push(CheckResult::warning(
            "failurePolicy lets namespace edits through when the webhook is down",
            "failurePolicy is Fail: a dead webhook blocks every namespace edit it matches",
            format!("run {install} to restore failurePolicy Ignore"),
        ));
    }
    if let Some((namespace, deployment)) = &facts.deployment {
        checks.push(deployment_available(namespace, deployment, installed));
        if let Ok(Some(d)) = deployment {
            checks.push(deployment_rule_result(d, &rule, installed));
        }
        let new_ca = installed.install(Rerun::NewClientCa);
        checks.extend(caller_auth::judge_deployment(deployment, &new_ca));
    }
    if let (Some(url), Some(probe)) = (&hook.client_config.url, &facts.caller_auth) {
        let answers = facts.probe.as_ref().is_some_and(webhook_answered);
        let new_ca = installed.install(Rerun::NewClientCa);
        checks.extend(caller_auth::judge_probe(url, probe, answers, &new_ca));
    }
    if let Some(probe) = &facts.probe {
        checks.push(probe_result(
            target.as_deref().unwrap_or("nowhere"),
            probe,
            installed,
        ));
    }
    rule
}

/// Whether the webhook configuration records the sync rule the commands apply.
fn recorded_rule_result(
    mwc: &MutatingWebhookConfiguration,
    rule: &SyncRule,
    installed: &InstalledWith,
) -> CheckResult {
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
            format!(
                "re-run {}, with the --managed-labels and --excluded-namespaces the webhook \
                 runs with if they are not the defaults",
                installed.install(Rerun::OtherRule)
            ),
        )
    }
}

/// The serving certificate must be valid and the caBundle its CA.
/// The `ca.crt` of the serving certificate's Secret, when it was read.
fn secret_ca(secret: &Option<Fetched<Secret>>) -> Option<&[u8]> {
    let Some(Ok(Some(secret))) = secret else {
        return None;
    };
    let ca = secret.data.as_ref()?.get(render::CA_CRT)?;
    Some(ca.0.as_slice())
}

/// The caBundle's expiry. During a rotation it also trusts previous CAs, which may expire
/// first: what matters then is the CA of the Secret, whose certificate the webhook serves
/// (the previous ones are the rotation line's concern, and go with its re-run).
fn ca_bundle_result(
    what: &str,
    bundle: &[u8],
    secret_ca: Option<&[u8]>,
    now: Timestamp,
    installed: &InstalledWith,
) -> CheckResult {
    let rotating = secret_ca.filter(|ca| {
        std::str::from_utf8(bundle)
            .ok()
            .zip(std::str::from_utf8(ca).ok())
            .and_then(|(bundle, ca)| render::others_than(bundle, ca))
            .is_some()
    });
    expiry_result(
        what,
        certificates(rotating.unwrap_or(bundle)),
        now,
        installed,
    )
}

fn tls_secret_result(
    ca: &[u8],
    secret: &Fetched<Secret>,
    now: Timestamp,
    installed: &InstalledWith,
) -> CheckResult {
    let what = "serving certificate is valid and signed by the caBundle's CA";
    let install = installed.install(Rerun::Same);
    let secret = match secret {
        Ok(Some(s)) => s,
        Ok(None) => {
            return CheckResult::error(
                what,
                format!("Secret {MESH_NAMESPACE}/{} not found", render::TLS_SECRET),
                format!("run {install}"),
            );
        }
        Err(e) => {
            return CheckResult::kube_failure(what, "cannot read the serving certificate", e);
        }
    };
    let key = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.as_slice())
            .unwrap_or_default()
    };
    let expiry = expiry_result(what, certificates(key(render::TLS_CRT)), now, installed);
    if key(render::CA_CRT) == ca {
        return expiry;
    }
    // A certificate being replaced: the caBundle trusts the Secret's CA and the previous ones.
    let previous = std::str::from_utf8(ca)
        .ok()
        .zip(std::str::from_utf8(key(render::CA_CRT)).ok())
        .and_then(|(bundle, secret_ca)| render::others_than(bundle, secret_ca));
    match previous {
        None => CheckResult::error(
            what,
            format!(
                "the caBundle is not the {} of Secret {MESH_NAMESPACE}/{}: the apiserver \
                 will not trust the webhook",
                render::CA_CRT,
                render::TLS_SECRET
            ),
            format!("run {install} to write both again"),
        ),
        Some(n) if n > 0 && expiry.result == Outcome::Ok => CheckResult::warning(
            what,
            format!(
                "a certificate rotation is in progress: the caBundle trusts the {} of Secret \
                 {MESH_NAMESPACE}/{} and {n} previous CA{}",
                render::CA_CRT,
                render::TLS_SECRET,
                if n == 1 { "" } else { "s" }
            ),
            format!(
                "once the webhook serves the certificate of that Secret, run {install} to stop \
                 trusting the previous CA"
            ),
        ),
        Some(_) => expiry,
    }
}

fn deployment_available(
    namespace: &str,
    deployment: &Fetched<Deployment>,
    installed: &InstalledWith,
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
            format!("run {}", installed.install(Rerun::Same)),
        ),
        Err(e) => CheckResult::kube_failure(&what, "cannot read it", e),
    }
}

/// Whether the webhook container runs with `recorded`, the rule of the webhook configuration
/// (its matchConditions and what the commands apply): a hand edit of either side makes the
/// webhook sync other labels than the apiserver sends it and the commands report.
fn deployment_rule_result(
    deployment: &Deployment,
    recorded: &SyncRule,
    installed: &InstalledWith,
) -> CheckResult {
    let what = format!("Deployment {} runs the recorded sync rule", render::WEBHOOK);
    let Some(container) = webhook_container(deployment) else {
        return CheckResult::error(
            what,
            "it has no container",
            format!("run {} to restore it", installed.install(Rerun::Same)),
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
            format!(
                "re-run {} with the --managed-labels and --excluded-namespaces you want: it \
                 writes both",
                installed.install(Rerun::OtherRule)
            ),
        ),
        None => CheckResult::warning(
            what,
            "the container sets the rule through valueFrom, which cannot be compared",
            "",
        ),
    }
}

/// Whether the webhook answered the dry-run probe: it answers a dry run with a
/// `kubectl-mesh:` warning; without one, the call failed and failurePolicy Ignore hid it.
fn probe_result(target: &str, probe: &Probe, installed: &InstalledWith) -> CheckResult {
    let what = "webhook answers admission requests";
    match probe {
        Probe::NoLabel => CheckResult::error(
            what,
            "the sync rule manages no label to probe the webhook with",
            format!(
                "re-run {} with the --managed-labels to sync",
                installed.install(Rerun::OtherRule)
            ),
        ),
        Probe::ListFailed(e) => {
            CheckResult::kube_failure(what, "cannot list namespaces to probe", e)
        }
        Probe::NoNamespace => CheckResult::warning(
            what,
            "no namespace to probe the webhook with",
            "create one, e.g. `kubectl create namespace default`",
        ),
        Probe::BuildFailed(e) => CheckResult::error(
            what,
            format!("cannot build the probe request: {e}"),
            "this is a bug in kubectl-mesh; please report it",
        ),
        Probe::SendFailed(e) => CheckResult::kube_failure(what, "the dry-run probe failed", e),
        // The webhook answered, and a later step (a ValidatingAdmissionPolicy, another
        // webhook) refused the change: the webhook is not at fault.
        Probe::Refused {
            namespace,
            status,
            message,
            warnings,
            ..
        } if has_webhook_warning(warnings) => CheckResult::ok(
            what,
            Some(format!(
                "dry-run probe on namespace {namespace}, refused after the webhook answered \
                 ({status}): {}",
                one_line(message)
            )),
        ),
        // Authorization comes before admission: the webhook was never called.
        Probe::Refused {
            namespace,
            status,
            reason,
            message,
            ..
        } if refused_by_authorization(reason, message) => CheckResult::warning(
            what,
            format!(
                "cannot verify it: you may not patch namespaces, which its probe (a dry-run \
                 label change on namespace {namespace}) needs ({status}): {}",
                one_line(message)
            ),
            "run `kubectl mesh check` as a user who may patch namespaces (the probe is a \
             server-side dry run: nothing is changed), or ask for that right",
        ),
        Probe::Refused {
            namespace,
            status,
            message,
            ..
        } => CheckResult::error(
            what,
            format!("a dry-run label change on namespace {namespace} failed ({status}): {message}"),
            "see the webhook's logs",
        ),
        Probe::Accepted {
            namespace,
            warnings,
        } if has_webhook_warning(warnings) => CheckResult::ok(
            what,
            Some(format!("dry-run probe on namespace {namespace}")),
        ),
        Probe::Accepted { namespace, .. } => CheckResult::error(
            what,
            format!(
                "a dry-run label change on namespace {namespace} went through without an answer \
                 from {target} (failurePolicy Ignore hides the failure)"
            ),
            "check that mesh-webhook runs and that the apiserver can reach it; its logs and \
             the apiserver's say why a call failed",
        ),
    }
}

/// Whether the webhook answered the dry-run probe (its warning is the proof), whether the
/// change then went through or a later admission step refused it.
fn webhook_answered(probe: &Probe) -> bool {
    match probe {
        Probe::Accepted { warnings, .. } | Probe::Refused { warnings, .. } => {
            has_webhook_warning(warnings)
        }
        _ => false,
    }
}

/// Whether admission warnings hold the webhook's own.
fn has_webhook_warning(warnings: &[String]) -> bool {
    warnings.iter().any(|w| w.contains(WEBHOOK_WARNING_PREFIX))
}

/// Whether a refusal of the probe is the authorizer's (the caller may not patch namespaces),
/// not an admission step's: RBAC says `namespaces "x" is forbidden: User "u" cannot patch
/// resource "namespaces" ...`, where a ValidatingAdmissionPolicy or a webhook that denies
/// names itself after `is forbidden:`.
fn refused_by_authorization(reason: &str, message: &str) -> bool {
    reason == "Forbidden"
        && message.contains("is forbidden: User \"")
        && message.contains(" cannot patch resource \"namespaces\"")
}

/// Certificates expiring within 30 days are worth a look; expired or unreadable, broken.
fn expiry_result(
    what: &str,
    certs: std::result::Result<CertInfo, String>,
    now: Timestamp,
    installed: &InstalledWith,
) -> CheckResult {
    let renew = format!("run {}", installed.install(Rerun::RotateCerts));
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

#[cfg(test)]
mod tests {
    use super::super::caller_probe;
    use super::*;
    use crate::cmd::install::tests::pinned_options;

    /// An installation with every default.
    fn bare() -> InstalledWith {
        InstalledWith::default()
    }

    /// Options of an installation with a rule of its own.
    fn custom_rule() -> render::Options {
        render::Options {
            managed_labels: vec!["team.example.com/zone".into()],
            excluded_namespaces: vec!["legacy".into(), MESH_NAMESPACE.into()],
            ..render::Options::default()
        }
    }

    #[test]
    fn deployment_rule_follows_the_recorded_one() {
        let custom = custom_rule();
        let recorded = |options: &render::Options| {
            installed_rule::from_annotations(
                render::mutating_webhook_configuration(options, None)
                    .metadata
                    .annotations
                    .as_ref(),
            )
        };
        let same =
            deployment_rule_result(&render::deployment(&custom), &recorded(&custom), &bare());
        assert_eq!(same.result, Outcome::Ok, "{same:?}");

        // The Deployment edited back to the defaults by hand: the webhook disagrees with the
        // matchConditions and with what the commands apply.
        let default = render::Options::default();
        let differs =
            deployment_rule_result(&render::deployment(&default), &recorded(&custom), &bare());
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
        assert!(differs.hint_mentions("kubectl mesh install"), "{differs:?}");

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
            deployment_rule_result(&empty, &recorded(&default), &bare()).result,
            Outcome::Error
        );
    }

    #[test]
    fn a_configuration_without_the_rule_is_worth_a_look() {
        let options = render::Options::default();
        let mut mwc = render::mutating_webhook_configuration(&options, None);
        let rule = installed_rule::from_annotations(mwc.metadata.annotations.as_ref());
        let recorded = recorded_rule_result(&mwc, &rule, &bare());
        assert_eq!(recorded.result, Outcome::Ok);
        assert_eq!(
            recorded.detail.as_deref(),
            Some(
                "managed istio-injection, istio.io/dataplane-mode, istio.io/rev; excluded \
                 kube-node-lease, kube-public, kube-system, kubectl-mesh"
            )
        );
        mwc.metadata.annotations = None;
        let older = recorded_rule_result(&mwc, &SyncRule::default(), &bare());
        assert_eq!(older.result, Outcome::Warning, "{older:?}");
    }

    #[test]
    fn only_the_webhooks_warning_proves_it_answered() {
        let accepted = |warnings: &[&str]| Probe::Accepted {
            namespace: "default".into(),
            warnings: warnings.iter().map(|w| (*w).to_owned()).collect(),
        };
        let answered = probe_result(
            "https://w",
            &accepted(&["299 - \"kubectl-mesh: dry run\""]),
            &bare(),
        );
        assert_eq!(
            (answered.result, answered.detail.as_deref()),
            (Outcome::Ok, Some("dry-run probe on namespace default"))
        );
        // failurePolicy Ignore: the change goes through, with someone else's warning or none.
        let silent = probe_result("https://w", &accepted(&["299 - \"other\""]), &bare());
        assert_eq!(silent.result, Outcome::Error);
        assert!(
            silent
                .detail
                .as_deref()
                .unwrap()
                .contains("without an answer from https://w"),
            "{silent:?}"
        );
        let refused = probe_result(
            "https://w",
            &refused("403 Forbidden", "Forbidden", "denied", &[]),
            &bare(),
        );
        assert_eq!(
            refused.detail.as_deref(),
            Some("a dry-run label change on namespace default failed (403 Forbidden): denied")
        );
    }

    fn refused(status: &str, reason: &str, message: &str, warnings: &[&str]) -> Probe {
        Probe::Refused {
            namespace: "default".into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            warnings: warnings.iter().map(|w| (*w).to_owned()).collect(),
        }
    }

    const ANSWER: &str = "299 - \"kubectl-mesh: dry run; remote clusters not changed\"";

    #[test]
    fn a_refusal_after_the_webhook_answered_is_an_answer() {
        // A ValidatingAdmissionPolicy that allows only known istio.io/rev values rejects the
        // probe's value after the mutating webhook answered, with 422 or 403.
        for (status, reason, message) in [
            (
                "422 Unprocessable Entity",
                "Invalid",
                "namespaces \"default\" is invalid: : ValidatingAdmissionPolicy 'known-revs' \
                 with binding 'known-revs' denied request: unknown revision",
            ),
            (
                "403 Forbidden",
                "Forbidden",
                "namespaces \"default\" is forbidden: ValidatingAdmissionPolicy 'known-revs' \
                 with binding 'known-revs' denied request: unknown revision",
            ),
        ] {
            let probe = refused(status, reason, message, &[ANSWER]);
            let result = probe_result("https://w", &probe, &bare());
            assert_eq!(result.result, Outcome::Ok, "{result:?}");
            assert_eq!(
                result.detail,
                Some(format!(
                    "dry-run probe on namespace default, refused after the webhook answered \
                     ({status}): {message}"
                )),
            );
            assert!(webhook_answered(&probe), "{probe:?}");
            // So the webhook's callers are judged too.
            let unknown = caller_probe::Probe::Unknown("unreachable from here".into());
            assert!(
                caller_auth::judge_probe("https://w", &unknown, webhook_answered(&probe), "")
                    .is_some()
            );
        }
        // Without the webhook's warning, the same refusal says nothing of the webhook.
        let silent = refused(
            "422 Unprocessable Entity",
            "Invalid",
            "denied",
            &["299 - \"x\""],
        );
        assert_eq!(
            probe_result("https://w", &silent, &bare()).result,
            Outcome::Error
        );
        assert!(!webhook_answered(&silent));
    }

    #[test]
    fn a_caller_without_patch_on_namespaces_cannot_verify_the_webhook() {
        let rbac = refused(
            "403 Forbidden",
            "Forbidden",
            "namespaces \"default\" is forbidden: User \"dev\" cannot patch resource \
             \"namespaces\" in API group \"\" at the cluster scope",
            &[],
        );
        let result = probe_result("https://w", &rbac, &bare());
        assert_eq!(result.result, Outcome::Warning, "{result:?}");
        let detail = result.detail.as_deref().unwrap();
        assert!(
            detail.starts_with("cannot verify it: you may not patch namespaces"),
            "{detail}"
        );
        assert!(
            result.hint_mentions("who may patch namespaces"),
            "{result:?}"
        );
        assert!(!result.hint_mentions("logs"), "{result:?}");
        assert!(!webhook_answered(&rbac));
        // A policy's 403 is admission's, not the caller's rights.
        let policy = refused(
            "403 Forbidden",
            "Forbidden",
            "namespaces \"default\" is forbidden: ValidatingAdmissionPolicy 'p' with binding \
             'b' denied request: User \"dev\" cannot patch resource \"namespaces\"",
            &[],
        );
        assert_eq!(
            probe_result("https://w", &policy, &bare()).result,
            Outcome::Error
        );
    }

    /// What check reads of an installation made with `options`: the CRD and namespace gone
    /// and the webhook configuration without its caBundle, so that many hints say to re-run
    /// install; the client CA's ConfigMap there when `options` has one.
    fn installed_with(options: &render::Options) -> InstallFacts {
        let in_cluster = options.webhook_url.is_none();
        InstallFacts {
            crd: Ok(None),
            namespace: Ok(None),
            webhook: Ok(Some(render::mutating_webhook_configuration(options, None))),
            tls_secret: None,
            client_ca: Some(Ok(options
                .client_auth
                .as_ref()
                .map(|auth| render::client_ca_config_map(&auth.ca_pem)))),
            deployment: in_cluster.then(|| {
                let mut deployment = render::deployment(options);
                deployment.status = None;
                (MESH_NAMESPACE.to_owned(), Ok(Some(deployment)))
            }),
            probe: None,
            caller_auth: (!in_cluster).then_some(caller_probe::Probe::NotRequired),
        }
    }

    /// The hints of `facts`' checks that say to re-run install as it is (not those that ask
    /// for a new client CA), and the renewal hint of an expired certificate.
    fn install_hints(facts: &InstallFacts) -> Vec<String> {
        let judged = judge(facts, Timestamp::now());
        let installed = InstalledWith::read(facts);
        let cert = render::generate_serving_cert(&["localhost".into()]).unwrap();
        let info = certificates(cert.ca_pem.as_bytes()).unwrap();
        let later = info.not_after + SignedDuration::from_hours(1);
        let expired = expiry_result("ca", Ok(info), later, &installed);
        let hints: Vec<String> = judged
            .section
            .checks
            .iter()
            .chain([&expired])
            .filter_map(|c| c.hint.clone())
            .filter(|h| h.contains("kubectl mesh install") && !h.contains("<its CA>"))
            .collect();
        assert!(hints.len() >= 4, "{hints:#?}");
        hints
    }

    /// The command of a hint, between its backquotes.
    fn command(hint: &str) -> &str {
        let start = hint.find("`kubectl mesh install").unwrap() + 1;
        let len = hint[start..].find('`').unwrap();
        &hint[start..start + len]
    }

    #[test]
    fn hints_to_reinstall_keep_a_webhook_called_by_url() {
        let options = render::Options {
            webhook_url: Some(render::WebhookUrl::parse("https://10.0.0.5:9443").unwrap()),
            ..render::Options::default()
        };
        let facts = installed_with(&options);
        let Ok(Some(mwc)) = &facts.webhook else {
            unreachable!()
        };
        let url = render::webhook_entry(mwc)
            .unwrap()
            .client_config
            .url
            .clone()
            .unwrap();
        for hint in install_hints(&facts) {
            let command = command(&hint);
            assert!(command.contains(&format!(" --webhook-url {url}")), "{hint}");
            assert!(!command.contains("--managed-labels"), "{hint}");
            assert!(!command.contains("--client-ca-file <the CA"), "{hint}");
            // A new certificate must reach the webhook run elsewhere.
            assert_eq!(
                command.contains("--rotate-certs"),
                command.contains("--webhook-cert-dir"),
                "{hint}"
            );
        }
        // Turning client authentication on keeps the URL too.
        let judged = judge(&facts, Timestamp::now());
        let callers = judged
            .section
            .checks
            .iter()
            .find(|c| {
                c.description
                    .starts_with("webhook authenticates its callers")
            })
            .unwrap();
        assert_eq!(
            command(callers.hint.as_deref().unwrap()),
            format!("kubectl mesh install --webhook-url {url} --client-ca-file <its CA>")
        );
    }

    #[test]
    fn hints_to_reinstall_keep_the_client_ca() {
        let auth = |names: &[&str]| render::ClientAuth {
            ca_pem: "PEM".into(),
            allowed_names: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        let in_cluster = render::Options {
            client_auth: Some(auth(&["kube-apiserver", "api server"])),
            ..render::Options::default()
        };
        for hint in install_hints(&installed_with(&in_cluster)) {
            assert!(
                command(&hint).ends_with(
                    " --client-ca-file <the CA file used at install> --client-allowed-names \
                     'kube-apiserver,api server'"
                ),
                "{hint}"
            );
        }
        // Called by URL, only the ConfigMap says so.
        let by_url = render::Options {
            webhook_url: Some(render::WebhookUrl::parse("https://10.0.0.5:9443").unwrap()),
            client_auth: Some(auth(&[])),
            ..render::Options::default()
        };
        for hint in install_hints(&installed_with(&by_url)) {
            assert!(
                command(&hint).ends_with(" --client-ca-file <the CA file used at install>"),
                "{hint}"
            );
        }
    }

    #[test]
    fn hints_to_reinstall_name_a_client_ca_that_could_not_be_read() {
        let by_url = render::Options {
            webhook_url: Some(render::WebhookUrl::parse("https://10.0.0.5:9443").unwrap()),
            ..render::Options::default()
        };
        let mut facts = installed_with(&by_url);
        let forbidden = kube::core::Status::failure("forbidden", "Forbidden").with_code(403);
        let forbidden = kube::Error::Api(forbidden.into());
        facts.client_ca = Some(Err(forbidden));
        for hint in install_hints(&facts) {
            assert!(
                command(&hint).ends_with(
                    " --client-ca-file <the CA file used at install, if it was given one: its \
                     ConfigMap could not be read>"
                ),
                "{hint}"
            );
        }
    }

    #[test]
    fn hints_to_reinstall_keep_a_custom_rule() {
        let facts = installed_with(&custom_rule());
        for hint in install_hints(&facts) {
            let command = command(&hint);
            // Except where the hint asks which rule to install.
            if hint.contains("the --managed-labels") {
                assert!(!command.contains("--managed-labels"), "{hint}");
                continue;
            }
            assert!(
                command.contains(
                    " --managed-labels team.example.com/zone --excluded-namespaces \
                     kubectl-mesh,legacy"
                ),
                "{hint}"
            );
            assert!(!command.contains("--client-ca-file <the CA"), "{hint}");
            assert!(!command.contains("--webhook-url"), "{hint}");
        }
        // The default installation: install as it is.
        for hint in install_hints(&installed_with(&render::Options::default())) {
            assert!(
                [
                    "kubectl mesh install",
                    "kubectl mesh install --rotate-certs --wait"
                ]
                .contains(&command(&hint)),
                "{hint}"
            );
        }
    }

    #[test]
    fn hints_to_reinstall_keep_the_image_and_replicas() {
        let options = pinned_options();
        for hint in install_hints(&installed_with(&options)) {
            assert!(
                command(&hint)
                    .contains(" --image registry.example.com/mesh-webhook:pinned --replicas 3"),
                "{hint}"
            );
        }
        // Called by URL, there is no Deployment to keep.
        let by_url = render::Options {
            webhook_url: Some(render::WebhookUrl::parse("https://10.0.0.5:9443").unwrap()),
            ..options
        };
        for hint in install_hints(&installed_with(&by_url)) {
            assert!(!command(&hint).contains("--image"), "{hint}");
            assert!(!command(&hint).contains("--replicas"), "{hint}");
        }
    }

    /// While a certificate is replaced, the caBundle trusts the Secret's CA and the previous
    /// one: a rotation in progress, with the re-run that ends it; not a mismatch.
    #[test]
    fn a_bundle_with_the_previous_ca_is_a_rotation_in_progress() {
        let (old, new) = (
            render::generate_serving_cert(&["localhost".into()]).unwrap(),
            render::generate_serving_cert(&["localhost".into()]).unwrap(),
        );
        let secret = Ok(Some(render::tls_secret(&new)));
        let now = Timestamp::now();
        let judge = |bundle: &str| tls_secret_result(bundle.as_bytes(), &secret, now, &bare());
        let settled = judge(&new.ca_pem);
        assert_eq!(settled.result, Outcome::Ok, "{settled:?}");
        let bridged = render::ca_bundle_plan(&new.ca_pem, &old.ca_pem, true, false, now).applied;
        let rotating = judge(&bridged);
        assert_eq!(rotating.result, Outcome::Warning, "{rotating:?}");
        assert_eq!(
            rotating.detail.as_deref(),
            Some(
                "a certificate rotation is in progress: the caBundle trusts the ca.crt of \
                 Secret kubectl-mesh/mesh-webhook-tls and 1 previous CA"
            )
        );
        assert_eq!(
            rotating.hint.as_deref(),
            Some(
                "once the webhook serves the certificate of that Secret, run `kubectl mesh \
                 install` to stop trusting the previous CA"
            )
        );
        // A caBundle without the Secret's CA, alone or with others, is still a mismatch.
        for foreign in [old.ca_pem.clone(), format!("{}{}", old.ca_pem, old.ca_pem)] {
            let mismatch = judge(&foreign);
            assert_eq!(mismatch.result, Outcome::Error, "{mismatch:?}");
            assert!(
                mismatch
                    .detail
                    .as_deref()
                    .unwrap()
                    .starts_with("the caBundle is not the ca.crt"),
                "{mismatch:?}"
            );
        }
        // An expired serving certificate says so, rotation or not.
        let later = now + SignedDuration::from_hours(24 * 365 * 11);
        let expired = tls_secret_result(bridged.as_bytes(), &secret, later, &bare());
        assert_eq!(expired.result, Outcome::Error, "{expired:?}");
    }

    /// A CA of its own (PEM) that expires on `year`-01-01.
    fn ca_expiring(year: i32) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca.not_before = rcgen::date_time_ymd(2020, 1, 1);
        ca.not_after = rcgen::date_time_ymd(year, 1, 1);
        ca.self_signed(&key).unwrap().pem()
    }

    /// In a rotation, a previous CA that expires first does not make the caBundle expire: the
    /// Secret's CA, which the webhook serves under, is what is judged.
    #[test]
    fn a_rotation_is_judged_by_the_ca_being_rotated_to() {
        let (previous, current) = (ca_expiring(2031), ca_expiring(2040));
        let bundle = format!("{current}{previous}");
        let now: Timestamp = "2030-12-15T00:00:00Z".parse().unwrap();
        let judge = |secret_ca: Option<&str>| {
            ca_bundle_result(
                "ca",
                bundle.as_bytes(),
                secret_ca.map(str::as_bytes),
                now,
                &bare(),
            )
        };
        assert_eq!(judge(Some(&current)).result, Outcome::Ok);
        // Without the Secret, or when the bundle does not hold its CA, the earliest counts.
        let unknown = judge(None);
        assert_eq!(unknown.result, Outcome::Warning, "{unknown:?}");
        assert!(
            unknown.hint_mentions("--rotate-certs --wait"),
            "{unknown:?}"
        );
        assert_eq!(judge(Some(&ca_expiring(2045))).result, Outcome::Warning);
    }

    #[test]
    fn certificates_are_dated() {
        let cert = render::generate_serving_cert(&["localhost".into()]).unwrap();
        let now = Timestamp::now();
        let info = certificates(cert.ca_pem.as_bytes()).unwrap();
        assert_eq!(
            expiry_result("ca", Ok(info.clone()), now, &bare()).result,
            Outcome::Ok
        );
        let later = info.not_after + SignedDuration::from_hours(1);
        let r = expiry_result("ca", Ok(info), later, &bare());
        assert_eq!(
            (r.result, r.detail.as_deref()),
            (Outcome::Error, Some("the certificate expired 60m ago"))
        );
    }
}
