//! `kubectl mesh dashboard`: a read-only web page of the mesh, served by the plugin itself on
//! loopback, kept current by watches and pushed to the page (server-sent events).
//!
//! [`live`] watches the clusters and turns what it sees into snapshots with the judges of
//! `status` and `services`; [`server`] serves the embedded page and the snapshots.

pub mod live;
mod reduce;
pub mod server;
pub mod snapshot;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

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
        let client = ctx.primary_watch_client().await?;
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
        let token = server::Token::generate().map_err(|_| Error::Refused {
            what: "cannot read random bytes for the dashboard's token".into(),
            hint: "the operating system's random source failed; run it again".into(),
        })?;
        // In the fragment: a browser sends it neither to the server nor in a Referer, and the
        // page moves it out of the address bar.
        let url = format!("http://127.0.0.1:{port}/#token={}", token.as_str());
        let feed = live::start(client, rule).await;
        let serving = tokio::spawn(server::serve(
            listener,
            feed,
            token,
            server::Limits::default(),
        ));

        output::print_stdout(&format!("{url}\n"))?;
        ctx.progress
            .info(format!("Dashboard at {url} (read-only; Ctrl-C stops it)"));
        // Removed when the dashboard stops.
        let _opened = if no_browser {
            None
        } else {
            open_browser(&url)
                .inspect_err(|e| {
                    ctx.progress
                        .warn(format!("cannot write the page that opens a browser: {e}"));
                })
                .ok()
        };
        let stopped = tokio::signal::ctrl_c().await;
        serving.abort();
        stopped.map_err(|source| Error::Io {
            what: "cannot wait for Ctrl-C".into(),
            source,
        })
    }
}

/// Asks the desktop to open `url`; without one (a server, a container) the printed URL is
/// all there is, which is fine. The URL holds the token and any local user can read a
/// command's arguments (`/proc/PID/cmdline`): the browser is given a file only this user can
/// read, which sends it on to `url`, as Jupyter does. A browser confined away from that file
/// (a snap's) shows an error instead; the printed URL still works.
fn open_browser(url: &str) -> std::io::Result<Redirect> {
    let redirect = Redirect::write(url)?;
    let _ = std::process::Command::new("xdg-open")
        .arg(&redirect.file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    Ok(redirect)
}

/// A page, readable by its owner only, that sends the browser on to a URL; removed on drop.
struct Redirect {
    file: PathBuf,
    /// The private directory made for it, without `$XDG_RUNTIME_DIR`.
    made_dir: Option<PathBuf>,
}

impl Redirect {
    /// Writes it in `$XDG_RUNTIME_DIR` (the user's own, mode 0700), else in a directory of
    /// its own made in the temporary directory.
    fn write(url: &str) -> std::io::Result<Self> {
        // Not a name another user could guess and take first.
        let random =
            server::random_hex(8).map_err(|_| std::io::Error::other("the random source failed"))?;
        let name = format!("kubectl-mesh-dashboard-{random}");
        let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute() && dir.is_dir());
        let (dir, made_dir) = match runtime_dir {
            Some(dir) => (dir, None),
            None => {
                // Made anew, never one that is there already: another user may have made it.
                let dir = std::env::temp_dir().join(&name);
                std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
                (dir.clone(), Some(dir))
            }
        };
        let redirect = Self {
            file: dir.join(format!("{name}.html")),
            made_dir,
        };
        write_private(&redirect.file, &redirect_page(url))?;
        Ok(redirect)
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        if let Some(dir) = &self.made_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Creates `path` (never one that is there, nor through a link) readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// A page that sends the browser on to `url` (loopback, hex token: nothing to escape).
fn redirect_page(url: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"0;url={url}\">\n\
         <title>kubectl mesh dashboard</title></head>\n\
         <body><a href=\"{url}\">kubectl mesh dashboard</a></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_browser_is_sent_through_a_file_only_its_user_reads() {
        let url = "http://127.0.0.1:8123/#token=00ff";
        let redirect = Redirect::write(url).unwrap();
        let file = redirect.file.clone();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        if let Some(dir) = &redirect.made_dir {
            let mode = std::fs::metadata(dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        }
        let page = std::fs::read_to_string(&file).unwrap();
        assert!(page.contains(&format!("content=\"0;url={url}\"")), "{page}");
        drop(redirect);
        assert!(!file.exists(), "{} is left behind", file.display());
    }
}
