//! A TCP forwarder in front of a cluster's apiserver that a test can freeze: it then stops
//! passing bytes in both directions while every socket stays open, as a network partition or
//! a half-open connection does to one client; or freeze only the connections open now, as a
//! NAT or load balancer that silently dropped them does while new ones get through. It can
//! also trickle: pass a few bytes at a time, as a congested link or a hostile peer does, often
//! enough that no read timeout trips.
//! No real part produces either on demand for one client alone (a stopped apiserver refuses
//! or resets connections, a paused one freezes every client), so the harness does.
//!
//! The bytes are forwarded untouched, TLS included: the apiserver's serving certificate names
//! 127.0.0.1, which is where the proxy listens too.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    flow: watch::Sender<Flow>,
    /// Connections accepted so far; each is numbered in that order from 0.
    accepted: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

/// How the proxy passes bytes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Open,
    Frozen,
    /// Connections numbered below `before` are frozen, later ones open.
    FrozenBefore {
        before: u64,
    },
    /// `bytes` at a time, each piece `every` after the one before.
    Trickle {
        bytes: usize,
        every: Duration,
    },
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
        Self::forwarding_to(upstream).await
    }

    async fn forwarding_to(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (flow, _) = watch::channel(Flow::Open);
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept(listener, upstream, flow.clone(), accepted.clone()));
        Ok(Self {
            addr,
            flow,
            accepted,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops forwarding: bytes already read are held back, connections (new ones too) stay
    /// open and silent.
    pub fn freeze(&self) {
        self.flow.send_replace(Flow::Frozen);
    }

    /// Freezes the connections open now, as a NAT or a load balancer that dropped them does:
    /// nothing arrives on them and nothing says so. New connections get through.
    pub fn freeze_open_connections(&self) {
        let before = self.accepted.load(Ordering::SeqCst);
        self.flow.send_replace(Flow::FrozenBefore { before });
    }

    /// Forwards again at full speed, held-back bytes first.
    pub fn thaw(&self) {
        self.flow.send_replace(Flow::Open);
    }

    /// Forwards `bytes` at a time in each direction, waiting `every` before each piece.
    pub fn trickle(&self, bytes: usize, every: Duration) {
        self.flow.send_replace(Flow::Trickle {
            bytes: bytes.max(1),
            every,
        });
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

impl Flow {
    /// Whether connection number `connection` holds its bytes back.
    fn holds(self, connection: u64) -> bool {
        match self {
            Self::Frozen => true,
            Self::FrozenBefore { before } => connection < before,
            Self::Open | Self::Trickle { .. } => false,
        }
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    flow: watch::Sender<Flow>,
    accepted: Arc<AtomicU64>,
) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let connection = accepted.fetch_add(1, Ordering::SeqCst);
        while connections.try_join_next().is_some() {}
        let flow = flow.subscribe();
        connections.spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            // Either direction ending ends the connection.
            tokio::select! {
                _ = pump(client_read, server_write, connection, flow.clone()) => {}
                _ = pump(server_read, client_write, connection, flow) => {}
            }
        });
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    connection: u64,
    mut flow: watch::Receiver<Flow>,
) -> std::io::Result<()> {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            // Asked before each piece, so that a change of flow applies mid-chunk.
            let Ok(now) = flow
                .wait_for(|flow| !flow.holds(connection))
                .await
                .map(|now| *now)
            else {
                return Ok(());
            };
            let piece = match now {
                Flow::Trickle { bytes, every } => {
                    tokio::time::sleep(every).await;
                    bytes.min(rest.len())
                }
                Flow::Open | Flow::Frozen | Flow::FrozenBefore { .. } => rest.len(),
            };
            to.write_all(&rest[..piece]).await?;
            rest = &rest[piece..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A plain echo server behind a proxy.
    async fn echo_proxy() -> anyhow::Result<Proxy> {
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
        Proxy::forwarding_to(echo_addr).await
    }

    /// A new connection through `proxy`, once bytes went through it both ways.
    async fn connected(proxy: &Proxy) -> anyhow::Result<TcpStream> {
        let mut client = TcpStream::connect(proxy.local_addr()).await?;
        echoes(&mut client, b"hello").await?;
        Ok(client)
    }

    /// Sends `bytes` and reads them back, within seconds.
    async fn echoes(client: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
        client.write_all(bytes).await?;
        receives(client, bytes).await
    }

    /// Reads `bytes`, within seconds.
    async fn receives(client: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
        let mut got = vec![0u8; bytes.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got)).await??;
        assert_eq!(got, bytes);
        Ok(())
    }

    /// Sends `bytes`; nothing comes back for a while.
    async fn holds_back(client: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
        client.write_all(bytes).await?;
        let mut got = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(300), client.read(&mut got)).await;
        assert!(read.is_err(), "bytes passed a frozen connection: {read:?}");
        Ok(())
    }

    /// What [`frozen_connection`] sends on the connection it froze.
    const HELD: &[u8] = b"again";

    /// An echo proxy and a connection through it that bytes went through both ways before
    /// `freeze` (of the proxy); then [`HELD`], sent on it, does not come back.
    async fn frozen_connection(freeze: fn(&Proxy)) -> anyhow::Result<(Proxy, TcpStream)> {
        let proxy = echo_proxy().await?;
        let mut client = connected(&proxy).await?;
        freeze(&proxy);
        holds_back(&mut client, HELD).await?;
        Ok((proxy, client))
    }

    /// Forwards, holds bytes while frozen without closing anything, then delivers them when
    /// thawed.
    #[tokio::test]
    async fn freezes_and_thaws_without_closing() -> anyhow::Result<()> {
        let (proxy, mut client) = frozen_connection(Proxy::freeze).await?;
        proxy.thaw();
        receives(&mut client, HELD).await
    }

    /// Connections open when frozen stay silent; a new one gets through.
    #[tokio::test]
    async fn freezes_only_the_connections_open_then() -> anyhow::Result<()> {
        // The old connection stays open (and frozen) while the new one is made.
        let (proxy, _old) = frozen_connection(Proxy::freeze_open_connections).await?;
        connected(&proxy).await.map(drop)
    }

    /// A trickling proxy passes everything, a few bytes at a time and no faster.
    #[tokio::test]
    async fn trickles_a_few_bytes_at_a_time() -> anyhow::Result<()> {
        let proxy = echo_proxy().await?;
        proxy.trickle(8, Duration::from_millis(50));
        let mut client = TcpStream::connect(proxy.local_addr()).await?;
        let sent: Vec<u8> = (0..64).collect();
        let started = std::time::Instant::now();
        client.write_all(&sent).await?;
        let mut first = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut first)).await??;
        assert!((1..=8).contains(&n), "the first read got {n} bytes");
        let mut rest = vec![0u8; 64 - n];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut rest)).await??;
        assert_eq!([&first[..n], &rest[..]].concat(), sent);
        // Eight pieces each way, each after a wait of 50 ms.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(400),
            "took only {elapsed:?}"
        );
        Ok(())
    }
}
