//! Serving certificate of the webhook, reloaded when its files change.
//!
//! The certificate and key usually come from a Secret mounted as a volume (cert-manager or
//! `kubectl mesh install` rotate it); the kubelet swaps the files in place. A background task
//! checks the files' modification time and size about once a second and swaps the
//! [`CertifiedKey`] handed to new handshakes. A half-written rotation (new certificate, old key)
//! fails the key-match check and is retried on the next tick while the old pair keeps serving.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime},
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

/// How often the files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileVersion(Option<SystemTime>, u64);

impl FileVersion {
    pub(crate) fn of(path: &Path) -> io::Result<Self> {
        std::fs::metadata(path).map(|m| Self(m.modified().ok(), m.len()))
    }
}

/// What identifies one version of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    cert: FileVersion,
    key: FileVersion,
}

impl Stamp {
    fn of(cert: &Path, key: &Path) -> Result<Self> {
        let stat = |path: &Path| {
            FileVersion::of(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Self {
            cert: stat(cert)?,
            key: stat(key)?,
        })
    }
}

/// A [`ResolvesServerCert`] serving the pair last loaded from `cert_path` and `key_path`.
pub struct CertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("CertResolver")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    /// Loads the pair once; fails if it is unusable (the process must not start without one).
    pub fn load(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Result<Arc<Self>> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let provider = Arc::new(ring::default_provider());
        let stamp = Stamp::of(&cert_path, &key_path)?;
        let key = load_pair(&cert_path, &key_path, &provider)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            provider,
            current: RwLock::new((key, stamp)),
        }))
    }

    /// Reloads the pair if the files changed since the last load. `Ok(true)` when a new pair
    /// is now served; on error the previous pair stays.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let stamp = Stamp::of(&self.cert_path, &self.key_path)?;
        if self.read().1 == stamp {
            return Ok(false);
        }
        let key = load_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (key, stamp);
        Ok(true)
    }

    /// Checks the files every [`RELOAD_INTERVAL`] until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let path = self.cert_path.clone();
        reload_periodically(
            "serving certificate",
            path,
            move || self.reload_if_changed(),
            shutdown,
        )
        .await;
    }

    /// The crypto provider of the pair, for the rest of the server's TLS.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }

    /// The pair served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.read().0.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Arc<CertifiedKey>, Stamp)> {
        // Only whole values are ever stored, so a poisoned lock still holds a valid pair.
        self.current.read().unwrap_or_else(PoisonError::into_inner)
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

/// Calls `reload` every [`RELOAD_INTERVAL`] until `shutdown` and logs what it swapped in. A
/// failure keeps what is loaded and is logged once until a reload succeeds again: a rotation in
/// progress fails once or twice.
pub(crate) async fn reload_periodically<E: std::error::Error + Send + 'static>(
    what: &'static str,
    path: PathBuf,
    reload: impl Fn() -> std::result::Result<bool, E> + Clone + Send + 'static,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(RELOAD_INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
        // Blocking file reads stay off the async workers.
        match tokio::task::spawn_blocking(reload.clone()).await {
            Ok(Ok(true)) => {
                failing = false;
                tracing::info!(path = %path.display(), "reloaded {what}");
            }
            Ok(Ok(false)) => failing = false,
            Ok(Err(error)) => {
                if !failing {
                    tracing::warn!(
                        error = %mesh_core::failure::error_chain(&error),
                        "cannot reload {what}, keeping the current one"
                    );
                }
                failing = true;
            }
            Err(error) => tracing::warn!(error = %error, "{what} reload task failed"),
        }
    }
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
        let (ca_pem, mut leaves) = client_pki_named(ca_name, &[None]);
        let (cert_pem, key_pem) = leaves.remove(0);
        (ca_pem, cert_pem, key_pem)
    }

    /// A client CA named `ca_name` and one client certificate (PEM) and key per entry of
    /// `common_names`, each with that subject common name, if any.
    pub(crate) fn client_pki_named(
        ca_name: &str,
        common_names: &[Option<&str>],
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
            .map(|name| {
                let key = KeyPair::generate().expect("key");
                let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
                leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                if let Some(name) = name {
                    leaf.distinguished_name.push(DnType::CommonName, *name);
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

    /// Log lines written while the subscriber this returns is the default.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("log").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
        }
    }

    #[tokio::test]
    async fn a_failed_reload_is_logged_with_its_cause() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let missing = PathBuf::from("/nonexistent/tls.crt");
        let reload = {
            let path = missing.clone();
            move || -> Result<bool> {
                Err(Error::Read {
                    path: path.clone(),
                    source: io::Error::from(io::ErrorKind::NotFound),
                })
            }
        };
        let logged = async {
            while !log.text().contains("cannot reload") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            () = reload_periodically("certificate", missing, reload, CancellationToken::new()) => {}
            result = tokio::time::timeout(RELOAD_INTERVAL * 10, logged) => {
                result.expect("no reload failure logged");
            }
        }
        let text = log.text();
        assert!(
            text.contains("cannot read /nonexistent/tls.crt: entity not found"),
            "{text}"
        );
    }

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
