//! Debian's tinyproxy: the HTTP proxy (CONNECT included) that users' networks put between
//! their tools and their clusters, for tests of clients that must go through one as kubectl
//! does. It logs every request it forwards.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::ports::{free_port, wait_listening};

/// A running tinyproxy; dropping it stops it.
#[derive(Debug)]
pub struct HttpProxy {
    url: String,
    log: PathBuf,
    _process: Child,
}

impl HttpProxy {
    /// Starts tinyproxy on a free loopback port, its configuration and log in `dir`.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let log = dir.join(format!("tinyproxy-{port}.log"));
        let config = dir.join(format!("tinyproxy-{port}.conf"));
        // No ConnectPort line: CONNECT is allowed to any port (the apiservers' are not 443).
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\nMaxClients 50\n\
                 LogFile \"{}\"\nLogLevel Connect\n",
                log.display()
            ),
        )?;
        let mut process = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start tinyproxy (Debian package tinyproxy; .ci/run installs it)")?;
        let address = format!("127.0.0.1:{port}");
        // In the foreground (-d), so an exit is tinyproxy giving up.
        let running = || match process.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("tinyproxy exited ({status})"),
        };
        wait_listening("tinyproxy", &address, &log, running).await?;
        Ok(Self {
            url: format!("http://{address}"),
            log,
            _process: process,
        })
    }

    /// Its URL, as `HTTPS_PROXY` takes it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The requests it has forwarded so far, as it logs them (`CONNECT host:port HTTP/1.1`).
    pub fn requests(&self) -> anyhow::Result<Vec<String>> {
        let log = std::fs::read_to_string(&self.log)
            .with_context(|| format!("reading {}", self.log.display()))?;
        Ok(log
            .lines()
            .filter_map(|line| line.split_once("): ").map(|(_, request)| request))
            .filter(|request| request.starts_with("CONNECT ") || request.starts_with("GET "))
            .map(str::to_owned)
            .collect())
    }
}
