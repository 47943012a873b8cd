//! `kubectl mesh dashboard`: a read-only web page of the mesh, served by the plugin itself on
//! loopback, kept current by watches and pushed to the page (server-sent events).
//!
//! [`live`] watches the clusters and turns what it sees into snapshots with the judges of
//! `status` and `services`; [`server`] serves the embedded page and the snapshots.

pub mod live;
mod reduce;
pub mod server;
pub mod snapshot;

use std::net::{Ipv4Addr, SocketAddr};

use crate::{Context, Error, Result, mesh_state, output};

/// Serve a read-only web page of the mesh on 127.0.0.1 and open it in a browser.
///
/// The page shows the attached clusters (reachable from here now, the webhook's sync state,
/// when the stored token expires), the managed labels of every namespace on every cluster
/// with drift and missing namespaces marked, services across clusters as `kubectl mesh
/// services` shows them, and the webhook's latest Events. It updates itself as the clusters
/// change. It changes nothing. Stop it with Ctrl-C.
#[derive(Debug, clap::Args)]
pub struct Dashboard {
    /// Port on 127.0.0.1 to listen on; 0 picks a free one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub port: u16,
    /// Print the URL without opening a browser.
    #[arg(long)]
    pub no_browser: bool,
}

impl Dashboard {
    /// Runs the command until interrupted.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self { port, no_browser } = self;
        let client = ctx.client().await?;
        // Fails with the install hint when there is no mesh on this cluster.
        mesh_state::clusters(&client).await?;
        let rule = mesh_state::rule(&client).await?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| Error::Refused {
                what: format!("cannot listen on {address}: {source}"),
                hint: "pick another port with --port, or --port 0 for any free one".into(),
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| Error::Io {
                what: "cannot read the listening address".into(),
                source,
            })?
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let feed = live::start(client, rule).await;
        let serving = tokio::spawn(server::serve(listener, feed));

        output::print_stdout(&format!("{url}\n"))?;
        ctx.progress
            .info(format!("Dashboard at {url} (read-only; Ctrl-C stops it)"));
        if !no_browser {
            open_browser(&url);
        }
        let stopped = tokio::signal::ctrl_c().await;
        serving.abort();
        stopped.map_err(|source| Error::Io {
            what: "cannot wait for Ctrl-C".into(),
            source,
        })
    }
}

/// Asks the desktop to open `url`; without one (a server, a container) the printed URL is
/// all there is, which is fine.
fn open_browser(url: &str) {
    let _ = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}
