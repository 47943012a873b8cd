//! A TCP forwarder in front of a cluster's apiserver that a test can freeze: it then stops
//! passing bytes in both directions while every socket stays open, as a network partition or
//! a half-open connection does to one client. No real part produces that on demand for one
//! client alone (a stopped apiserver refuses or resets connections, a paused one freezes
//! every client), so the harness does.
//!
//! The bytes are forwarded untouched, TLS included: the apiserver's serving certificate names
//! 127.0.0.1, which is where the proxy listens too.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::Cluster;

/// A running forwarder; dropping it closes every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `cluster`'s apiserver.
    pub async fn start(cluster: &Cluster) -> anyhow::Result<Self> {
        let upstream: SocketAddr = cluster
            .server
            .strip_prefix("https://")
            .unwrap_or(&cluster.server)
            .parse()
            .with_context(|| format!("apiserver address of {}", cluster.name))?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (frozen, _) = watch::channel(false);
        let accept = tokio::spawn(accept(listener, upstream, frozen.clone()));
        Ok(Self {
            addr,
            frozen,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding: bytes already read are held back, connections (new ones too) stay
    /// open and silent.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again, held-back bytes first.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Writes to `path` a copy of `kubeconfig` whose server `server` (e.g. the cluster's) is
    /// this proxy instead.
    pub fn kubeconfig(&self, kubeconfig: &Path, server: &str, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        anyhow::ensure!(
            text.contains(server),
            "{} does not name {server}",
            kubeconfig.display()
        );
        let proxied = text.replace(server, &format!("https://{}", self.addr));
        std::fs::write(path, proxied).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: aborting it drops them all.
        self.accept.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, frozen: watch::Sender<bool>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let frozen = frozen.subscribe();
        connections.spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            // Either direction ending ends the connection.
            tokio::select! {
                _ = pump(client_read, server_write, frozen.clone()) => {}
                _ = pump(server_read, client_write, frozen) => {}
            }
        });
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if frozen.wait_for(|frozen| !frozen).await.is_err() {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The proxy against a plain echo server: forwards, holds bytes while frozen without
    /// closing anything, then delivers them when thawed.
    #[tokio::test]
    async fn freezes_and_thaws_without_closing() -> anyhow::Result<()> {
        let echo = TcpListener::bind(("127.0.0.1", 0)).await?;
        let echo_addr = echo.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (frozen, _) = watch::channel(false);
        let proxy = Proxy {
            addr,
            accept: tokio::spawn(accept(listener, echo_addr, frozen.clone())),
            frozen,
        };

        let mut client = TcpStream::connect(proxy.local_addr()).await?;
        let mut got = [0u8; 5];
        client.write_all(b"hello").await?;
        client.read_exact(&mut got).await?;
        assert_eq!(&got, b"hello");

        proxy.freeze();
        client.write_all(b"again").await?;
        let read = tokio::time::timeout(Duration::from_millis(300), client.read(&mut got)).await;
        assert!(read.is_err(), "bytes passed a frozen proxy: {read:?}");

        proxy.thaw();
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got)).await??;
        assert_eq!(&got, b"again");
        Ok(())
    }
}
