//! A TLS server whose every answer is a body that never breaks a line: what a compromised
//! remote, or whatever server a stored kubeconfig was edited to name, may send. No real
//! apiserver can be made to do it on demand, hence this stand-in.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::kubeconfig::token_kubeconfig;
use crate::pki::ClusterPki;

/// Bytes per chunk of an answer.
const CHUNK: usize = 64 * 1024;

/// Serves on loopback until dropped.
pub struct EndlessAnswer {
    address: SocketAddr,
    pki: ClusterPki,
    serving: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl EndlessAnswer {
    /// Each answer brings at least `bytes` bytes without a line break (in whole 64 KiB
    /// chunks), then holds its connection open without a word (so a client that does not
    /// refuse it waits for its own timeout).
    pub async fn start(bytes: usize) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir()?;
        let pki = ClusterPki::generate("endless", dir.path(), None)?;
        let chain = CertificateDer::pem_file_iter(&pki.serving_cert)?
            .collect::<Result<Vec<_>, _>>()
            .context("serving certificate")?;
        let key = PrivateKeyDer::from_pem_file(&pki.serving_key).context("serving key")?;
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let serving = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                tokio::spawn(answer(acceptor.clone(), connection, bytes));
            }
        });
        Ok(Self {
            address,
            pki,
            serving,
            _dir: dir,
        })
    }

    /// A stored kubeconfig for it, as attach writes them (a bearer token, the CA inline).
    pub fn kubeconfig(&self) -> String {
        let server = format!("https://{}", self.address);
        token_kubeconfig("endless", "endless", &server, &self.pki, "t0ken")
    }
}

impl Drop for EndlessAnswer {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// Reads one request's head, then answers 200 with `bytes` of one unbroken line, then waits.
async fn answer(acceptor: TlsAcceptor, connection: TcpStream, bytes: usize) -> anyhow::Result<()> {
    let mut tls = acceptor.accept(connection).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tls.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    tls.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await?;
    let chunk = [b'x'; CHUNK];
    let mut sent = 0;
    while sent < bytes {
        tls.write_all(format!("{CHUNK:x}\r\n").as_bytes()).await?;
        tls.write_all(&chunk).await?;
        tls.write_all(b"\r\n").await?;
        sent += CHUNK;
    }
    tls.flush().await?;
    std::future::pending::<anyhow::Result<()>>().await
}
