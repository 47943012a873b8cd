//! HTTPS in tests: a test CA and server certificate, a small HTTPS server, and TLS clients of
//! the mesh's webhook and metrics ports.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};

/// A CA and a certificate for 127.0.0.1 signed by it.
pub struct TestCertificate {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCertificate {
    pub fn for_loopback() -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name.push(DnType::CommonName, "e2e-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
        leaf.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        let cert = leaf.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Serves `router` over TLS on a loopback port until dropped.
pub struct HttpsServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsServer {
    pub async fn start(router: axum::Router, cert: &TestCertificate) -> anyhow::Result<Self> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Who a test's TLS client of the webhook port says it is.
#[derive(Clone, Copy, Debug)]
pub enum Caller {
    /// No client certificate.
    Anonymous,
    /// The client certificate the primary's apiserver calls webhooks with.
    Apiserver,
    /// A certificate of the apiserver's CA issued to another name.
    OtherNameOfItsCa,
}

/// A TLS client of the mesh's webhook trusting only its CA, presenting `caller`'s certificate.
pub fn webhook_tls_client(
    mesh: &mesh_testenv::mesh::Mesh,
    caller: Caller,
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(mesh.ca_pem()?.as_bytes()) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let identity = || {
        mesh.client_identity()
            .context("this mesh's webhook requires no client certificate")
    };
    let (cert, key) = match caller {
        Caller::Anonymous => {
            return Ok(tokio_rustls::TlsConnector::from(Arc::new(
                builder.with_no_client_auth(),
            )));
        }
        Caller::Apiserver => (&identity()?.cert, &identity()?.key),
        Caller::OtherNameOfItsCa => (&identity()?.other_cert, &identity()?.other_key),
    };
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let config = builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `GET https://<addr><path>` trusting only `ca_pem`; returns the response body.
pub async fn https_get(addr: &str, ca_pem: &str, path: &str) -> anyhow::Result<String> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_string();
    let mut tls = connector.connect(ServerName::try_from(host)?, tcp).await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    // The server may close without close_notify; what was read is what counts.
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).to_string();
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("no HTTP response from {addr}{path}: {response:?}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {path} on {addr}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_string())
}
