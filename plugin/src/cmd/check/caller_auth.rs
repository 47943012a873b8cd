//! Whether the webhook authenticates its callers: without a required client certificate, any
//! TLS client that reaches it can post a hand-made AdmissionReview and make it write
//! namespaces on every remote.
//!
//! An in-cluster webhook is judged by its Deployment's `--client-ca-file`. One called by URL
//! (run elsewhere, where nothing of it can be read) is asked: a TLS handshake without a client
//! certificate, which such a webhook refuses. [`probe`] is that read; [`judge`] is pure.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use rustls::{AlertDescription, pki_types::ServerName};

use super::facts::Fetched;
use super::report::CheckResult;
use crate::render;
use mesh_core::printable::one_line;

/// What the handshake without a client certificate showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The server refused it for want of a client certificate.
    Required,
    /// The server answered over it.
    NotRequired,
    /// Something else went wrong (unreachable, untrusted server certificate...): why.
    Unknown(String),
}

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
    super::install::pod_containers(deployment).iter().any(|c| {
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
/// `--client-allowed-names=a,b` argument), or as a Deployment edited by hand may give them.
pub fn allowed_names(deployment: &Deployment) -> Option<&str> {
    super::install::pod_containers(deployment)
        .iter()
        .find_map(|c| {
            let flag = c.args.iter().flatten().find_map(|a| {
                a.strip_prefix(render::CLIENT_ALLOWED_NAMES_FLAG)?
                    .strip_prefix('=')
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

/// Judges a webhook called by `url` by what [`probe`] saw. When the handshake failed for
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

/// Connects to the webhook at `url` trusting only `ca_bundle` (PEM), without a client
/// certificate, and asks for `/healthz`.
pub async fn probe(url: String, ca_bundle: Vec<u8>, timeout: Duration) -> Probe {
    // A few blocking calls, off the async workers.
    tokio::task::spawn_blocking(move || probe_blocking(&url, &ca_bundle, timeout))
        .await
        .unwrap_or_else(|e| Probe::Unknown(e.to_string()))
}

fn probe_blocking(url: &str, ca_bundle: &[u8], timeout: Duration) -> Probe {
    let unknown = |why: String| Probe::Unknown(why);
    let Some((host, port)) = host_port(url) else {
        return unknown(format!("cannot read host and port from {url}"));
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::pem::PemObject::pem_slice_iter(ca_bundle);
    for cert in certs {
        let Ok(cert) = cert else {
            return unknown("the caBundle is not PEM".into());
        };
        if let Err(e) = roots.add(cert) {
            return unknown(format!("the caBundle holds an unusable certificate: {e}"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        Err(e) => return unknown(e.to_string()),
    };
    let Ok(name) = ServerName::try_from(host.clone()) else {
        return unknown(format!("{host} is not a valid server name"));
    };
    let connection = match rustls::ClientConnection::new(Arc::new(config), name) {
        Ok(c) => c,
        Err(e) => return unknown(e.to_string()),
    };
    let addr = match (host.as_str(), port)
        .to_socket_addrs()
        .map(|mut a| a.next())
    {
        Ok(Some(addr)) => addr,
        Ok(None) => return unknown(format!("{host} has no address")),
        Err(e) => return unknown(format!("cannot resolve {host}: {e}")),
    };
    let tcp = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(tcp) => tcp,
        Err(e) => return unknown(format!("cannot connect to {addr}: {e}")),
    };
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    // With TLS 1.3 the refusal comes after the client's side of the handshake: on the read.
    let result = tls.write_all(request.as_bytes()).and_then(|()| {
        let mut head = [0u8; 5];
        tls.read_exact(&mut head).map(|()| head)
    });
    match result {
        Ok(head) if head.starts_with(b"HTTP/") => Probe::NotRequired,
        Ok(head) => unknown(format!("unexpected answer {head:?}")),
        Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
                | AlertDescription::HandshakeFailure
                | AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied,
            )) => Probe::Required,
            _ => unknown(e.to_string()),
        },
    }
}

/// Host (IPv6 without brackets) and port of an https URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => 443,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), 443)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::Outcome;
    use super::*;

    const INSTALL: &str = "`kubectl mesh install --client-ca-file <its CA>`";

    #[test]
    fn hosts_and_ports_of_urls() {
        assert_eq!(
            host_port("https://127.0.0.1:8443/mutate"),
            Some(("127.0.0.1".into(), 8443))
        );
        assert_eq!(host_port("https://[::1]:9/x"), Some(("::1".into(), 9)));
        assert_eq!(
            host_port("https://webhook.example.com/mutate"),
            Some(("webhook.example.com".into(), 443))
        );
        assert_eq!(host_port("http://a"), None);
    }

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
