//! Real signals sent to the plugin's processes at a chosen moment of their run: what Ctrl-C,
//! a cancelled CI job or a dropped SSH session do.

use std::path::Path;

use anyhow::{Context as _, ensure};

use crate::DEFAULT_TIMEOUT;

/// Spawns `command` (its stderr read line by line), waits until it writes a line containing
/// `marker`, then sends it the signal `kill -<signal>` sends (`INT`, a real Ctrl-C; `TERM`,
/// `HUP`) and waits `exit_within` for it to exit; returns every line it wrote and how it exited.
pub async fn signalled_after(
    command: std::process::Command,
    marker: &str,
    signal: &str,
    exit_within: std::time::Duration,
) -> anyhow::Result<(Vec<String>, std::process::ExitStatus)> {
    signalled_after_doing(command, marker, async { Ok(()) }, signal, exit_within).await
}

/// [`signalled_after`], doing `meanwhile` between the line with `marker` and the signal.
pub async fn signalled_after_doing(
    command: std::process::Command,
    marker: &str,
    meanwhile: impl std::future::Future<Output = anyhow::Result<()>>,
    signal: &str,
    exit_within: std::time::Duration,
) -> anyhow::Result<(Vec<String>, std::process::ExitStatus)> {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut child = tokio::process::Command::from(command)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let mut seen = Vec::new();
    let reached = tokio::time::timeout(DEFAULT_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            let reached = line.contains(marker);
            seen.push(line);
            if reached {
                return anyhow::Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await
    .with_context(|| format!("no line with {marker:?} within {DEFAULT_TIMEOUT:?}"))??;
    ensure!(
        reached,
        "ended without a line with {marker:?}:\n{}",
        seen.join("\n")
    );
    meanwhile.await?;
    let pid = child.id().context("already exited")?;
    let interrupted = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    ensure!(interrupted.success(), "kill -{signal} {pid} failed");
    let status = tokio::time::timeout(exit_within, async {
        while let Some(line) = lines.next_line().await? {
            seen.push(line);
        }
        anyhow::Ok(child.wait().await?)
    })
    .await;
    let status = match status {
        Ok(status) => status?,
        Err(_) => anyhow::bail!(
            "still running {exit_within:?} after SIG{signal}:\n{}",
            seen.join("\n")
        ),
    };
    Ok((seen, status))
}

/// The command an interrupted `kubectl mesh` run says finishes it: `kubectl mesh` and `words`,
/// each quoted as the plugin quotes them for a shell.
pub fn rerun_line(words: &[impl AsRef<str>]) -> String {
    let quoted: Vec<String> = (words.iter())
        .map(|word| kubectl_mesh::render::shell_word(word.as_ref()))
        .collect();
    format!("kubectl mesh {}", quoted.join(" "))
}

/// The words of the re-run an interrupted `kubectl mesh <command> <name>` says finishes it
/// when it was given neither kubeconfig: it names both, the remote's and the primary's.
pub fn rerun_naming_kubeconfigs(
    command: &str,
    name: &str,
    remote_kubeconfig: &Path,
    primary_kubeconfig: &Path,
) -> Vec<String> {
    let path = |kubeconfig: &Path| kubeconfig.to_string_lossy().into_owned();
    vec![
        command.to_owned(),
        name.to_owned(),
        "--remote-kubeconfig".to_owned(),
        path(remote_kubeconfig),
        "--kubeconfig".to_owned(),
        path(primary_kubeconfig),
    ]
}
