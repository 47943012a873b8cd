//! The control-plane binaries: built from source once per machine, cached outside the repo.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::{ETCD_VERSION, KUBERNETES_VERSION};

const BUILD_SCRIPT: &str = include_str!("../scripts/build-control-plane.sh");
const NAMES: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
];

/// Paths of the cached etcd, kube-apiserver, kube-controller-manager and kubectl.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// Where every cached build goes: `$MESH_TESTENV_CACHE` or `$XDG_CACHE_HOME/kubectl-mesh`
    /// or `~/.cache/kubectl-mesh`.
    pub fn cache_root() -> PathBuf {
        std::env::var_os("MESH_TESTENV_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("kubectl-mesh"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kubectl-mesh"))
            })
            .unwrap_or_else(|| std::env::temp_dir().join("kubectl-mesh-cache"))
    }

    /// Returns the cached binaries (under [`Binaries::cache_root`], keyed by the version
    /// pair), building the missing ones first (10-20 minutes on 2 cores, once).
    pub fn ensure() -> anyhow::Result<Self> {
        let dir = Build {
            script: BUILD_SCRIPT,
            args: &[KUBERNETES_VERSION, ETCD_VERSION],
            outputs: &NAMES,
            what: &format!("Kubernetes v{KUBERNETES_VERSION} and etcd v{ETCD_VERSION} (10-20 min)"),
        }
        .cached(&format!("k8s-v{KUBERNETES_VERSION}-etcd-v{ETCD_VERSION}"))?;
        Ok(Self { dir })
    }

    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }
    pub fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }
    pub fn kube_controller_manager(&self) -> PathBuf {
        self.dir.join("kube-controller-manager")
    }
    pub fn kubectl(&self) -> PathBuf {
        self.dir.join("kubectl")
    }
}

/// A build script run once per machine, and the files it makes.
pub(crate) struct Build<'a> {
    /// Bash, run with the output directory and `args` as arguments.
    pub script: &'a str,
    pub args: &'a [&'a str],
    /// What it leaves in the output directory; when all are there, it is not run.
    pub outputs: &'a [&'a str],
    /// Its name in the progress line.
    pub what: &'a str,
}

impl Build<'_> {
    /// The directory `name` under [`Binaries::cache_root`], once built there.
    pub(crate) fn cached(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = Binaries::cache_root().join(name);
        self.once(&dir)?;
        Ok(dir)
    }

    /// Runs the script unless `dir` already holds every one of its outputs. A file lock keeps
    /// concurrent test binaries from building twice.
    pub(crate) fn once(&self, dir: &Path) -> anyhow::Result<()> {
        let Self {
            script,
            args,
            outputs,
            what,
        } = self;
        let complete = || outputs.iter().all(|name| dir.join(name).is_file());
        if complete() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = std::fs::File::create(dir.join(".build.lock"))?;
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking the build of {what}"))?;
        if complete() {
            return Ok(());
        }
        let script_path = dir.join(".build.sh");
        std::fs::write(&script_path, script)?;
        eprintln!(
            "[testenv] building {what} from the Go module proxy into {} (once per machine)",
            dir.display()
        );
        let started = Instant::now();
        let status = Command::new("bash")
            .arg(&script_path)
            .arg(dir)
            .args(*args)
            .status()
            .context("running bash; is it installed?")?;
        if !status.success() || !complete() {
            bail!(
                "building {what} failed ({status}); see the output above, check that `go` is on PATH and the Go module proxy is reachable"
            );
        }
        eprintln!("[testenv] built in {:.0?}", started.elapsed());
        Ok(())
    }
}
