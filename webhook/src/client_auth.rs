//! Who may call the webhook port: clients presenting a certificate signed by the CA of
//! `--client-ca-file` (the primary's apiserver, configured with an AdmissionConfiguration).
//! Without it, any pod that reaches the port could post a hand-made AdmissionReview and make
//! the webhook write namespaces on every remote.
//!
//! With `--client-allowed-names`, the certificate must also carry one of those subject common
//! names (as kube-apiserver's `--requestheader-allowed-names`): a CA that signs more than the
//! apiserver's certificate then still lets only the apiserver in.
//!
//! The CA file is re-read when it changes ([`crate::reloading`]), like the serving certificate:
//! a rotated CA is trusted by the next handshake, without a restart. A file that cannot be used
//! keeps the previous CA.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use tokio_util::sync::CancellationToken;

use crate::reloading::Reloading;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read client CA file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid PEM in client CA file {}", .path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no CA certificate in client CA file {}: pass the PEM of the CA that signs the apiserver's client certificate", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("unusable CA certificate in client CA file {}", .path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A [`ClientCertVerifier`] requiring a client certificate signed by the CA last loaded from
/// its file and, when names are given, issued to one of them.
pub struct ClientCa {
    /// Subject common names accepted; empty accepts any the CA signed.
    allowed_names: Vec<String>,
    refusals_logged: LogBudget,
    verifier: Arc<Reloading<Arc<dyn ClientCertVerifier>, Error>>,
}

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCa")
            .field("file", &self.verifier.paths())
            .field("allowed_names", &self.allowed_names)
            .finish_non_exhaustive()
    }
}

impl ClientCa {
    /// Loads the CA once; fails if it is unusable (the process must not start open to all).
    /// Any certificate it signed is accepted.
    pub fn load(path: impl Into<PathBuf>, provider: Arc<CryptoProvider>) -> Result<Arc<Self>> {
        Self::load_allowing(path, Vec::new(), provider)
    }

    /// [`ClientCa::load`], accepting only certificates whose subject common name is one of
    /// `allowed_names` (any, when it is empty).
    pub fn load_allowing(
        path: impl Into<PathBuf>,
        allowed_names: Vec<String>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>> {
        let path = path.into();
        let verifier = Reloading::load(
            "client CA",
            vec![path.clone()],
            |path, source| Error::Read { path, source },
            move || load_verifier(&path, &provider),
        )?;
        Ok(Arc::new(Self {
            allowed_names,
            refusals_logged: LogBudget::default(),
            verifier,
        }))
    }

    /// Reloads the CA if its file changed. `Ok(true)` when the new CA is used now; on error
    /// the previous one stays.
    pub fn reload_if_changed(&self) -> Result<bool> {
        self.verifier.reload_if_changed()
    }

    /// Checks the file every [`crate::reloading::RELOAD_INTERVAL`] until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        self.verifier.clone().watch(shutdown).await;
    }

    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.verifier.current()
    }
}

/// The subject common names of a certificate the verifier accepted; one that is not a string
/// counts as an empty name, which no allowed name equals.
fn common_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    parsed
        .subject()
        .iter_common_name()
        .map(|name| name.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A name from a client's certificate as a log line may show it: one line, not too long.
fn shown_name(name: &str) -> String {
    const SHOWN_BYTES: usize = 64;
    mesh_core::printable::cut(
        mesh_core::printable::one_line(name).into_owned(),
        SHOWN_BYTES,
    )
}

/// At most one log line per [`LogBudget::EVERY`].
#[derive(Debug, Default)]
struct LogBudget(Mutex<Option<Instant>>);

impl LogBudget {
    const EVERY: Duration = Duration::from_secs(10);

    fn allow(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < Self::EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

fn load_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let pem = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|source| Error::Pem {
            path: path.to_owned(),
            source,
        })?;
        // A certificate webpki cannot use as a trust anchor is caught by build() below.
        let _ = roots.add(der);
    }
    if roots.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| Error::Verifier {
            path: path.to_owned(),
            source,
        })
}

impl ClientCertVerifier for ClientCa {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the verifier may change under a handshake, so it cannot lend its names.
    /// Hints are optional (RFC 8446 4.3.2); a client with one certificate sends it anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .verifier()
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed_names.is_empty() {
            return Ok(verified);
        }
        let names = common_names(end_entity);
        // Exactly one: with several, programs disagree on which is the name (Go's x509, and so
        // kube-apiserver, takes the last).
        if let [name] = names.as_slice()
            && self.allowed_names.iter().any(|allowed| allowed == name)
        {
            return Ok(verified);
        }
        // Only a holder of a certificate the trusted CA signed gets this far: worth a warning
        // (a misconfigured apiserver, or a certificate the CA should not have issued), but not
        // one per handshake of a client that keeps trying.
        if self.refusals_logged.allow() {
            let shown: Vec<String> = names.iter().map(|name| shown_name(name)).collect();
            tracing::warn!(
                common_names = ?shown,
                allowed = ?self.allowed_names,
                "refused a client certificate of the trusted CA: it does not carry exactly one \
                 common name among --client-allowed-names"
            );
        }
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_name_is_logged_short_on_one_line_and_not_at_every_handshake() {
        let long = format!("evil\x1b[2J{}", "x".repeat(100));
        let shown = shown_name(&long);
        assert!(
            shown.starts_with("evil\\u{1b}[2J") && shown.ends_with('…'),
            "{shown}"
        );
        assert_eq!(shown.len(), 64);
        assert_eq!(shown_name("kubelet"), "kubelet");
        let budget = LogBudget::default();
        assert!(budget.allow());
        assert!(!budget.allow(), "a second line within the interval");
    }

    /// A CA named `name` and a client certificate it signed for `common_name` (DER).
    fn ca_and_client_named(name: &str, common_name: &str) -> (String, CertificateDer<'static>) {
        let (ca_pem, leaves) = crate::tls::testdata::client_pki_named(name, &[&[common_name]]);
        let der = CertificateDer::from_pem_slice(leaves[0].0.as_bytes()).expect("der");
        (ca_pem, der)
    }

    /// A CA named `name` and a client certificate it signed (DER).
    fn ca_and_client(name: &str) -> (String, CertificateDer<'static>) {
        let (ca_pem, cert_pem, _) = crate::tls::testdata::client_pki(name);
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("der");
        (ca_pem, der)
    }

    #[test]
    fn a_rotated_ca_is_trusted_and_a_broken_file_keeps_the_previous_one() {
        let dir = crate::tls::testdata::tempdir::TempDir::new();
        let path = dir.path().join("client-ca.crt");
        let (first_ca, first_client) = ca_and_client("first");
        let (second_ca, second_client) = ca_and_client("second");
        std::fs::write(&path, &first_ca).expect("write");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = ClientCa::load(&path, provider).expect("load");
        let now = UnixTime::now();
        assert!(ca.client_auth_mandatory());
        assert!(ca.verify_client_cert(&first_client, &[], now).is_ok());
        assert!(ca.verify_client_cert(&second_client, &[], now).is_err());
        assert!(!ca.reload_if_changed().expect("check"), "unchanged");

        std::fs::write(&path, "no certificate").expect("write");
        assert!(matches!(
            ca.reload_if_changed(),
            Err(Error::NoCertificate { .. })
        ));
        assert!(ca.verify_client_cert(&first_client, &[], now).is_ok());

        std::fs::write(&path, &second_ca).expect("write");
        assert!(ca.reload_if_changed().expect("reload"));
        assert!(ca.verify_client_cert(&second_client, &[], now).is_ok());
        assert!(ca.verify_client_cert(&first_client, &[], now).is_err());
    }

    #[test]
    fn with_allowed_names_only_certificates_of_those_names_are_accepted() {
        let dir = crate::tls::testdata::tempdir::TempDir::new();
        let path = dir.path().join("client-ca.crt");
        let (ca_pem, leaves) = crate::tls::testdata::client_pki_named(
            "shared-ca",
            &[
                &["kube-apiserver"],
                &["kubelet"],
                &[],
                // Programs disagree on which of several is the name (Go takes the last).
                &["kube-apiserver", "kubelet"],
                &["kubelet", "kube-apiserver"],
            ],
        );
        std::fs::write(&path, &ca_pem).expect("write");
        let der: Vec<CertificateDer<'static>> = leaves
            .iter()
            .map(|(cert, _)| CertificateDer::from_pem_slice(cert.as_bytes()).expect("der"))
            .collect();
        let [apiserver, kubelet, nameless, both, both_reversed] = der.as_slice() else {
            panic!("five certificates asked for");
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let now = UnixTime::now();
        let pinned =
            ClientCa::load_allowing(&path, vec!["kube-apiserver".into()], provider.clone())
                .expect("load");
        assert!(pinned.verify_client_cert(apiserver, &[], now).is_ok());
        for refused in [kubelet, nameless, both, both_reversed] {
            assert!(pinned.verify_client_cert(refused, &[], now).is_err());
        }
        // The right name from another CA is no better.
        let (_, other) = ca_and_client_named("other-ca", "kube-apiserver");
        assert!(pinned.verify_client_cert(&other, &[], now).is_err());
        // Without names, whatever the CA signed.
        let any = ClientCa::load(&path, provider).expect("load");
        assert!(any.verify_client_cert(kubelet, &[], now).is_ok());
        assert!(any.verify_client_cert(nameless, &[], now).is_ok());
    }
}
