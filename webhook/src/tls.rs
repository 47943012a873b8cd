//! Serving certificate of the webhook, reloaded when its files change ([`crate::reloading`]).
//!
//! The certificate and key usually come from a Secret mounted as a volume (cert-manager or
//! `kubectl mesh install` rotate it). A half-written rotation (new certificate, old key) fails
//! the key-match check, and the old pair keeps serving until both files agree.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ServerConfig,
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_util::sync::CancellationToken;

use crate::client_auth::ClientCa;
use crate::reloading::Reloading;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no PEM certificate in {}", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("invalid PEM in {}", .path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the key in {} does not fit the certificate in {}", .key.display(), .cert.display())]
    Key {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A [`ResolvesServerCert`] serving the pair last loaded from its two files.
pub struct CertResolver {
    provider: Arc<CryptoProvider>,
    pair: Arc<Reloading<Arc<CertifiedKey>, Error>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("CertResolver")
            .field("files", &self.pair.paths())
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    /// Loads the pair once; fails if it is unusable (the process must not start without one).
    pub fn load(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Result<Arc<Self>> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let provider = Arc::new(ring::default_provider());
        let pair = Reloading::load(
            "serving certificate",
            vec![cert_path.clone(), key_path.clone()],
            |path, source| Error::Read { path, source },
            {
                let provider = provider.clone();
                move || load_pair(&cert_path, &key_path, &provider)
            },
        )?;
        Ok(Arc::new(Self { provider, pair }))
    }

    /// Reloads the pair if the files changed since the last load. `Ok(true)` when a new pair
    /// is now served; on error the previous pair stays.
    pub fn reload_if_changed(&self) -> Result<bool> {
        self.pair.reload_if_changed()
    }

    /// Checks the files every [`crate::reloading::RELOAD_INTERVAL`] until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        self.pair.clone().watch(shutdown).await;
    }

    /// The crypto provider of the pair, for the rest of the server's TLS.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }

    /// The pair served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.pair.current()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| Error::Pem {
        path: key.to_owned(),
        source,
    })?;
    // from_der checks that the key belongs to the certificate.
    let pair =
        CertifiedKey::from_der(chain, private_key, provider).map_err(|source| Error::Key {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    Ok(Arc::new(pair))
}

/// The server configuration: TLS 1.2 and 1.3 only, the certificate from `resolver`, HTTP/2
/// and HTTP/1.1 over ALPN; with `client_ca`, a client certificate it verifies is required
/// (else none is asked for).
pub fn server_config(
    resolver: Arc<CertResolver>,
    client_ca: Option<Arc<ClientCa>>,
) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(resolver.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(Error::Config)?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(ca),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Test certificates: a throwaway CA (its key was discarded) and two P-256 leaf pairs for
/// `localhost`/127.0.0.1 it signed, valid for 100 years. Nothing else trusts them.
#[cfg(test)]
pub(crate) mod testdata {
    use std::path::PathBuf;

    pub(crate) const CA: &str = include_str!("tls/testdata/ca.crt");
    pub(crate) const CERT_A: &str = include_str!("tls/testdata/a.crt");
    pub(crate) const KEY_A: &str = include_str!("tls/testdata/a.key");
    pub(crate) const CERT_B: &str = include_str!("tls/testdata/b.crt");
    pub(crate) const KEY_B: &str = include_str!("tls/testdata/b.key");

    /// A fresh CA named `ca_name` and a client certificate it signed: (CA, certificate, key),
    /// PEM.
    pub(crate) fn client_pki(ca_name: &str) -> (String, String, String) {
        let (ca_pem, mut leaves) = client_pki_named(ca_name, &[&[]]);
        let (cert_pem, key_pem) = leaves.remove(0);
        (ca_pem, cert_pem, key_pem)
    }

    /// A client CA named `ca_name` and one client certificate (PEM) and key per entry of
    /// `common_names`, each with those subject common names, in that order.
    pub(crate) fn client_pki_named(
        ca_name: &str,
        common_names: &[&[&str]],
    ) -> (String, Vec<(String, String)>) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaves = common_names
            .iter()
            .map(|names| {
                let key = KeyPair::generate().expect("key");
                let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
                leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                // rcgen keeps one entry per type: a second common name is given by its OID
                // (2.5.4.3), and a third could not be.
                assert!(names.len() <= 2, "at most two common names");
                let types = [DnType::CommonName, DnType::CustomDnType(vec![2, 5, 4, 3])];
                for (common_name, name) in types.into_iter().zip(names.iter()) {
                    leaf.distinguished_name.push(common_name, *name);
                }
                let cert_pem = leaf.signed_by(&key, &issuer).expect("leaf").pem();
                (cert_pem, key.serialize_pem())
            })
            .collect();
        (ca_pem, leaves)
    }

    /// A directory holding `tls.crt`/`tls.key` with pair A.
    pub(crate) fn dir() -> (tempdir::TempDir, PathBuf, PathBuf) {
        let dir = tempdir::TempDir::new();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, CERT_A).expect("write cert");
        std::fs::write(&key, KEY_A).expect("write key");
        (dir, cert, key)
    }

    /// A minimal self-deleting temporary directory (no tempfile dependency in this crate).
    pub(crate) mod tempdir {
        use std::path::{Path, PathBuf};

        pub(crate) struct TempDir(PathBuf);

        impl TempDir {
            pub(crate) fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "mesh-webhook-test-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).expect("create temp dir");
                Self(path)
            }

            pub(crate) fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testdata::*, *};

    #[test]
    fn loads_and_reloads_when_files_change() {
        let (_dir, cert, key) = dir();
        let resolver = CertResolver::load(&cert, &key).expect("load");
        let first = resolver.current();
        assert!(
            !resolver.reload_if_changed().expect("check"),
            "unchanged files"
        );

        // Half a rotation: the new certificate with the old key is refused, the old pair stays.
        std::fs::write(&cert, CERT_B).expect("write");
        let err = resolver.reload_if_changed().expect_err("mismatch");
        assert!(matches!(err, Error::Key { .. }), "{err}");
        assert_eq!(resolver.current().cert, first.cert);

        std::fs::write(&key, KEY_B).expect("write");
        assert!(resolver.reload_if_changed().expect("reload"));
        assert_ne!(resolver.current().cert, first.cert);
    }

    #[test]
    fn refuses_files_without_pem() {
        let (_dir, cert, key) = dir();
        std::fs::write(&cert, "not a certificate").expect("write");
        let err = CertResolver::load(&cert, &key).expect_err("no cert");
        assert!(matches!(err, Error::NoCertificate { .. }), "{err}");
    }

    #[tokio::test]
    async fn handshakes_with_tls12_and_tls13_clients() {
        use rustls::pki_types::ServerName;

        let (_dir, cert, key) = dir();
        let config =
            server_config(CertResolver::load(&cert, &key).expect("load"), None).expect("config");
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(CA.as_bytes()) {
            roots.add(der.expect("pem")).expect("root");
        }
        let provider = Arc::new(ring::default_provider());
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let client = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[version])
                .expect("versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let name = ServerName::try_from("localhost").expect("name");
            let (server, client) = tokio::join!(
                acceptor.accept(server_io),
                connector.connect(name, client_io)
            );
            let server = server.expect("server handshake");
            client.expect("client handshake");
            assert_eq!(server.get_ref().1.protocol_version(), Some(version.version));
        }
    }
}
