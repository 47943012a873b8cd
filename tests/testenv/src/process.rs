//! Child processes of one environment, kept in one process group so they die together.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Owns every process an environment started. Drop kills the whole group.
#[derive(Default)]
pub struct ProcessGroup {
    pgid: Option<u32>,
    children: Vec<Managed>,
    watchdog: Option<Child>,
    /// Removed by the watchdog after the kill, when the owner could not remove it itself.
    scratch_dir: Option<PathBuf>,
}

impl ProcessGroup {
    /// A group whose watchdog also deletes `scratch_dir` if the owner dies without cleanup.
    pub fn with_scratch_dir(scratch_dir: Option<PathBuf>) -> Self {
        Self {
            pgid: None,
            children: Vec::new(),
            watchdog: None,
            scratch_dir,
        }
    }

    /// Starts `cmd` with stdout and stderr appended to `log`, inside the group.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<u32> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // 0 makes the first child the group leader; later children join its group.
            .process_group(self.pgid.unwrap_or(0) as i32);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let pid = child.id();
        if self.pgid.is_none() {
            self.pgid = Some(pid);
            self.watchdog = Some(spawn_watchdog(pid, self.scratch_dir.as_deref())?);
        }
        self.children.push(Managed {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        });
        Ok(pid)
    }

    /// Kills one process (e.g. a remote's apiserver in a fault test) and waits for it.
    pub fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(index) = self.children.iter().position(|m| m.name == name) else {
            bail!("no running process named {name}");
        };
        let mut managed = self.children.remove(index);
        let _ = managed.child.kill();
        managed.child.wait()?;
        Ok(())
    }

    /// Sends `signal` to one running process: SIGSTOP freezes it with its sockets open, so
    /// peers see a server that accepts connections and never answers; SIGCONT resumes it.
    pub fn signal(&self, name: &str, signal: Signal) -> anyhow::Result<()> {
        let Some(managed) = self.children.iter().find(|m| m.name == name) else {
            bail!("no running process named {name}");
        };
        nix::sys::signal::kill(Pid::from_raw(managed.child.id() as i32), signal)
            .with_context(|| format!("sending {signal} to {name}"))
    }

    /// Fails with the tail of its log if any process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for managed in &mut self.children {
            if let Some(status) = managed.child.try_wait()? {
                bail!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    managed.name,
                    managed.log.display(),
                    log_tail(&managed.log, 15)
                );
            }
        }
        Ok(())
    }

    /// Whether the process `name` has exited because another socket held its port, as its
    /// log says ("address already in use"); if so it is forgotten, so that it can start again.
    pub fn exited_on_taken_port(&mut self, name: &str) -> bool {
        let Some(index) = self.children.iter_mut().position(|m| {
            m.name == name
                && matches!(m.child.try_wait(), Ok(Some(_)))
                && log_tail(&m.log, 15).contains("address already in use")
        }) else {
            return false;
        };
        self.children.remove(index);
        true
    }

    /// Process ids of every running child, for leak checks.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|m| m.child.id()).collect()
    }

    /// Kills every process of the group and reaps them.
    pub fn kill_all(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
        }
        for managed in &mut self.children {
            let _ = managed.child.kill();
            let _ = managed.child.wait();
        }
        self.children.clear();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A shell that kills the group once this process is gone, whatever way it went: a static
/// environment is never dropped, and a SIGKILLed test runs no destructor. It sits in its own
/// process group so a Ctrl-C aimed at the test does not take it down first.
fn spawn_watchdog(pgid: u32, scratch_dir: Option<&Path>) -> anyhow::Result<Child> {
    let owner = std::process::id();
    // Plain POSIX sh (dash): `kill -KILL -PGID` signals the group; dash rejects `--` there.
    let mut script = format!(
        "while kill -0 {owner} 2>/dev/null; do sleep 0.5; done; kill -KILL -{pgid} 2>/dev/null"
    );
    if let Some(dir) = scratch_dir {
        script.push_str("; sleep 0.5; rm -rf \"$0\"");
        return watchdog_command(&script)
            .arg(dir)
            .spawn()
            .context("starting the cleanup watchdog (sh)");
    }
    watchdog_command(&script)
        .spawn()
        .context("starting the cleanup watchdog (sh)")
}

fn watchdog_command(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    cmd
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
