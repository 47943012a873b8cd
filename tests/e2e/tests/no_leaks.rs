//! The test environment leaves no process behind: neither when dropped, nor when its owner
//! is killed without a chance to clean up.

use std::path::Path;
use std::time::Duration;

use mesh_e2e::{eventually, mesh_testenv};
use mesh_testenv::{Options, TestEnv};

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie is dead for our purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
async fn dropping_the_environment_stops_every_process() -> anyhow::Result<()> {
    let env = TestEnv::start(Options::with_remotes(1)).await?;
    let pids = env.pids();
    // etcd, and an apiserver and a controller-manager per cluster.
    assert_eq!(pids.len(), 5, "processes: {pids:?}");
    assert!(pids.iter().all(|&pid| alive(pid)));
    drop(env);
    let left: Vec<u32> = pids.into_iter().filter(|&pid| alive(pid)).collect();
    assert!(left.is_empty(), "still running after drop: {left:?}");
    Ok(())
}

/// Process ids of every control-plane process whose command line mentions `dir`.
fn processes_using(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && !cmdline.contains("mesh-testenv") && alive(pid) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn killing_the_owner_without_cleanup_stops_every_process() -> anyhow::Result<()> {
    let testenv = mesh_testenv::workspace_binary("mesh-testenv")?;
    let dir = tempfile::tempdir()?;
    let mut up = std::process::Command::new(testenv)
        .args(["up", "--remotes", "1", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    eventually("environment ready", Duration::from_secs(120), || async {
        Ok(dir.path().join("ready").exists().then_some(()))
    })
    .await?;
    assert!(
        !processes_using(dir.path()).is_empty(),
        "control planes running"
    );
    // SIGKILL: no signal handler, no destructor runs in the owner.
    up.kill()?;
    up.wait()?;
    eventually(
        "every control-plane process gone",
        Duration::from_secs(10),
        || async { Ok(processes_using(dir.path()).is_empty().then_some(())) },
    )
    .await?;
    Ok(())
}
