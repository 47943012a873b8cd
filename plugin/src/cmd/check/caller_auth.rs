//! Whether the webhook authenticates its callers: without a required client certificate, any
//! TLS client that reaches it can post a hand-made AdmissionReview and make it write
//! namespaces on every remote.
//!
//! An in-cluster webhook is judged by its Deployment's `--client-ca-file`. One called by URL
//! (run elsewhere, where nothing of it can be read) is asked: a TLS handshake without a client
//! certificate, which such a webhook refuses. [`caller_probe`](super::caller_probe) is that
//! read; the judges here are pure.

use k8s_openapi::api::apps::v1::Deployment;

use super::answers::Fetched;
use super::caller_probe::Probe;
use super::report::CheckResult;
use crate::render;
use crate::render::installed::pod_containers;
use mesh_core::printable::one_line;

const WHAT: &str = "webhook authenticates its callers (client certificates)";
const OPEN: &str = "any TLS client that reaches it can make it write namespaces on every remote";
/// What to do about callers not being authenticated; `install` is how to re-run install
/// with a client CA while keeping the rest of the installation
/// ([`InstalledWith::install`](super::install::InstalledWith::install)).
fn hint(install: &str) -> String {
    format!(
        "give the primary's apiserver a client certificate for webhook calls, then run \
         {install} (see `kubectl mesh install --help`)"
    )
}

/// Whether a Deployment's webhook requires client certificates (its `--client-ca-file`, or the
/// variable a Deployment edited by hand may set instead).
pub fn requires_client_cert(deployment: &Deployment) -> bool {
    pod_containers(deployment).iter().any(|c| {
        let flag = c.args.iter().flatten().any(|a| {
            a.strip_prefix(render::CLIENT_CA_FLAG)
                .is_some_and(|rest| rest.starts_with('=') || rest.is_empty())
        });
        let env = c
            .env
            .iter()
            .flatten()
            .any(|e| e.name == render::CLIENT_CA_ENV);
        flag || env
    })
}

/// The names of a Deployment's `--client-allowed-names`: as install renders them (one
/// `--client-allowed-names=a,b` argument), or as a Deployment edited by hand may give them
/// (the flag and its value as two arguments, or the variable).
pub fn allowed_names(deployment: &Deployment) -> Option<&str> {
    pod_containers(deployment).iter().find_map(|c| {
        let args: Vec<&str> = c.args.iter().flatten().map(String::as_str).collect();
        let flag = args.iter().enumerate().find_map(|(i, a)| {
            let rest = a.strip_prefix(render::CLIENT_ALLOWED_NAMES_FLAG)?;
            match rest.strip_prefix('=') {
                Some(names) => Some(names),
                None if rest.is_empty() => args.get(i + 1).copied(),
                None => None,
            }
        });
        let env = c.env.iter().flatten().find_map(|e| {
            (e.name == render::CLIENT_ALLOWED_NAMES_ENV)
                .then_some(e.value.as_deref())
                .flatten()
        });
        flag.or(env).filter(|names| !names.trim().is_empty())
    })
}

/// Judges a webhook in the cluster by its Deployment (`None` when the Deployment could not be
/// read: reported elsewhere); `install` as for [`hint`].
pub fn judge_deployment(deployment: &Fetched<Deployment>, install: &str) -> Option<CheckResult> {
    let Ok(Some(deployment)) = deployment else {
        return None;
    };
    let requires = requires_client_cert(deployment);
    let names = allowed_names(deployment);
    Some(if requires {
        let only = names.map_or(String::new(), |names| {
            format!(", callers named {}", one_line(names))
        });
        CheckResult::ok(
            WHAT,
            Some(format!(
                "Deployment {} runs with {}{only}",
                render::WEBHOOK,
                render::CLIENT_CA_FLAG
            )),
        )
    } else {
        CheckResult::warning(
            WHAT,
            format!(
                "Deployment {} runs without {}: {OPEN}",
                render::WEBHOOK,
                render::CLIENT_CA_FLAG
            ),
            hint(install),
        )
    })
}

/// Judges a webhook called by `url` by what the [`Probe`] saw. When the handshake failed for
/// another reason, the line is only worth it if the apiserver reaches the webhook
/// (`webhook_answers`): otherwise the check of its answers already says it is unreachable.
/// `install` as for [`hint`].
pub fn judge_probe(
    url: &str,
    probe: &Probe,
    webhook_answers: bool,
    install: &str,
) -> Option<CheckResult> {
    Some(match probe {
        Probe::Required => CheckResult::ok(
            WHAT,
            Some(format!(
                "{url} refuses a TLS handshake without a client certificate"
            )),
        ),
        Probe::NotRequired => CheckResult::warning(
            WHAT,
            format!("{url} serves clients without a certificate: {OPEN}"),
            hint(install),
        ),
        Probe::Unknown(_) if !webhook_answers => return None,
        Probe::Unknown(why) => CheckResult::warning(
            WHAT,
            format!("cannot tell: a TLS handshake with {url} from here failed: {why}"),
            "run `kubectl mesh check` where the webhook's URL is reachable",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::super::report::Outcome;
    use super::*;

    const INSTALL: &str = "`kubectl mesh install --client-ca-file <its CA>`";

    #[test]
    fn deployments_are_judged_by_their_flag() {
        let with = render::Options {
            client_auth: Some(render::ClientAuth {
                ca_pem: "PEM".into(),
                allowed_names: Vec::new(),
            }),
            ..render::Options::default()
        };
        let judged = judge_deployment(&Ok(Some(render::deployment(&with))), INSTALL).unwrap();
        assert_eq!(judged.result, Outcome::Ok, "{judged:?}");
        assert_eq!(
            judged.detail.as_deref(),
            Some("Deployment mesh-webhook runs with --client-ca-file")
        );
        let named = render::Options {
            client_auth: Some(render::ClientAuth {
                ca_pem: "PEM".into(),
                allowed_names: vec!["kube-apiserver".into()],
            }),
            ..render::Options::default()
        };
        let judged = judge_deployment(&Ok(Some(render::deployment(&named))), INSTALL).unwrap();
        assert_eq!(
            judged.detail.as_deref(),
            Some(
                "Deployment mesh-webhook runs with --client-ca-file, callers named kube-apiserver"
            )
        );
        let without = render::deployment(&render::Options::default());
        let judged = judge_deployment(&Ok(Some(without)), INSTALL).unwrap();
        assert_eq!(judged.result, Outcome::Warning, "{judged:?}");
        assert!(judged.hint_mentions("--client-ca-file"), "{judged:?}");
        assert_eq!(judge_deployment(&Ok(None), INSTALL), None);
    }

    /// The names given as an argument of their own (as the webhook takes them too) were not
    /// read: the check's line left them out, and its install hints dropped the restriction.
    #[test]
    fn names_given_apart_from_their_flag_are_read() {
        let mut deployment = render::deployment(&render::Options::default());
        let spec = deployment.spec.as_mut().unwrap().template.spec.as_mut();
        spec.unwrap().containers[0].args = Some(
            [
                "--client-ca-file=/ca/ca.crt",
                "--client-allowed-names",
                "kube-apiserver",
            ]
            .map(String::from)
            .to_vec(),
        );
        assert_eq!(allowed_names(&deployment), Some("kube-apiserver"));
    }

    #[test]
    fn probes_pass_only_when_refused_without_a_certificate() {
        let url = "https://127.0.0.1:1/mutate";
        let judged = |probe: &Probe, answers: bool| judge_probe(url, probe, answers, INSTALL);
        assert_eq!(judged(&Probe::Required, true).unwrap().result, Outcome::Ok);
        assert_eq!(
            judged(&Probe::NotRequired, true).unwrap().result,
            Outcome::Warning
        );
        let unknown = Probe::Unknown("connection refused".into());
        assert_eq!(
            judged(&unknown, true).unwrap().result,
            Outcome::Warning,
            "the apiserver reaches it, this machine cannot"
        );
        assert_eq!(judged(&unknown, false), None, "unreachable: said elsewhere");
    }
}
