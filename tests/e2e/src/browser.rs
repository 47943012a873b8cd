//! A real headless Chromium driven through the DevTools protocol over a pipe
//! (`--remote-debugging-pipe`: JSON messages ended by a NUL byte, commands on the browser's
//! fd 3, answers on its fd 4), which needs no WebSocket client. A shell puts the two pipes
//! on those descriptors before it becomes the browser.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long one protocol command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One browser with one page, and more on demand ([`Browser::open_page`]).
pub struct Browser {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

/// A page opened with [`Browser::open_page`]: its target, and the protocol's session that
/// drives it.
pub struct Page {
    session: String,
    target_id: String,
}

/// The browser binary: `MESH_E2E_CHROMIUM`, else Debian's `chromium` on PATH.
pub fn chromium() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("MESH_E2E_CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
        .context(
            "no chromium on PATH; install Debian's package (`apt-get install -y chromium`) or \
             set MESH_E2E_CHROMIUM",
        )
}

impl Browser {
    /// Starts headless Chromium with a fresh profile and a `width` x `height` page; its
    /// stderr goes to `log`.
    pub async fn start(width: u32, height: u32, log: &Path) -> anyhow::Result<Self> {
        let profile = tempfile::tempdir()?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(chromium()?)
            .args([
                "--headless",
                // Tests run as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting chromium")?;
        let input = child.stdin.take().context("no pipe to chromium")?;
        let output = BufReader::new(child.stdout.take().context("no pipe from chromium")?);
        let mut browser = Self {
            child,
            input,
            output,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        browser.session = browser.create_page("about:blank").await?.session;
        browser.page("Page.enable", json!({})).await?;
        browser
            .page(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await?;
        Ok(browser)
    }

    /// Opens a page (a tab) at `url`.
    async fn create_page(&mut self, url: &str) -> anyhow::Result<Page> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": url}))
            .await?;
        let target_id = target["targetId"]
            .as_str()
            .context("createTarget: no targetId")?
            .to_owned();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .context("attachToTarget: no sessionId")?
            .to_owned();
        Ok(Page { session, target_id })
    }

    /// Opens another page (a tab) of the same browser at `url`, to be read with
    /// [`Browser::eval_in`].
    pub async fn open_page(&mut self, url: &str) -> anyhow::Result<Page> {
        self.create_page(url).await
    }

    /// Closes `page`, as its tab's close button does.
    pub async fn close_page(&mut self, page: Page) -> anyhow::Result<()> {
        let params = json!({"targetId": page.target_id});
        self.call(None, "Target.closeTarget", params).await?;
        Ok(())
    }

    /// Sends one command (to the page's session, or the browser's) and waits for its answer,
    /// skipping the events in between.
    async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.input.write_all(&bytes).await?;
        self.input.flush().await?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let mut buf = Vec::new();
            let read =
                tokio::time::timeout_at(deadline.into(), self.output.read_until(0, &mut buf))
                    .await
                    .with_context(|| format!("{method}: no answer within {COMMAND_TIMEOUT:?}"))??;
            if read == 0 {
                bail!("{method}: chromium exited ({:?})", self.child.try_wait());
            }
            buf.pop_if(|b| *b == 0);
            let answer: Value = serde_json::from_slice(&buf)?;
            if answer["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                bail!("{method}: {error}");
            }
            return Ok(answer["result"].clone());
        }
    }

    async fn page(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let session = self.session.clone();
        self.call(Some(&session), method, params).await
    }

    /// Loads `url` in the page.
    pub async fn navigate(&mut self, url: &str) -> anyhow::Result<()> {
        let result = self.page("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = result.get("errorText") {
            bail!("navigating to {url}: {error}");
        }
        Ok(())
    }

    /// The value of a JavaScript expression in the first page; an error when it throws.
    pub async fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        self.evaluate(self.session.clone(), expression).await
    }

    /// The value of a JavaScript expression in `page`; an error when it throws.
    pub async fn eval_in(&mut self, page: &Page, expression: &str) -> anyhow::Result<Value> {
        self.evaluate(page.session.clone(), expression).await
    }

    async fn evaluate(&mut self, session: String, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .call(
                Some(&session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("{expression}: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Saves a PNG of the whole page to `path`.
    pub async fn screenshot(&mut self, path: &Path) -> anyhow::Result<()> {
        let shot = self
            .page(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await?;
        let data = shot["data"]
            .as_str()
            .context("captureScreenshot: no data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }
}
