//! `kubectl mesh attach`: join a remote cluster to the mesh.

use std::path::PathBuf;

use crate::{Context, Error, Result};

/// Attach a remote cluster to the mesh.
///
/// Creates a service account with the rights label sync needs on the remote, stores a
/// kubeconfig holding only its token on the primary, and records a MeshCluster.
#[derive(Debug, clap::Args)]
pub struct Attach {
    /// Kubeconfig of the remote cluster (only its chosen context is used).
    // Not named `kubeconfig`: that id belongs to the global --kubeconfig of the primary.
    #[arg(value_name = "KUBECONFIG")]
    pub remote_kubeconfig: PathBuf,
    /// Context of the remote's kubeconfig [default: its current context].
    #[arg(long, value_name = "CONTEXT")]
    pub remote_context: Option<String>,
    /// Name of the cluster in the mesh [default: the remote context's cluster name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Print what would be created and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until the remote is reachable and in sync.
    #[arg(long)]
    pub wait: bool,
    /// Also create the Istio remote secret, so istiod discovers the cluster's endpoints.
    #[arg(long)]
    pub istio_remote_secret: bool,
    /// What happens to managed-label edits made directly on the remote.
    #[arg(long, value_enum, default_value_t, value_name = "MODE")]
    pub remote_guard: RemoteGuardArg,
}

/// `--remote-guard`: the flag form of [`mesh::cluster::RemoteGuard`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RemoteGuardArg {
    /// Allow the edit and warn that the primary will undo it.
    #[default]
    Warn,
    /// Refuse the edit.
    Deny,
    /// Install no guard.
    Off,
}

impl From<RemoteGuardArg> for mesh::cluster::RemoteGuard {
    fn from(g: RemoteGuardArg) -> Self {
        match g {
            RemoteGuardArg::Warn => Self::Warn,
            RemoteGuardArg::Deny => Self::Deny,
            RemoteGuardArg::Off => Self::Off,
        }
    }
}

impl Attach {
    /// Runs the command.
    pub async fn run(self, _ctx: &Context) -> Result<()> {
        let Self {
            remote_kubeconfig: _,
            remote_context: _,
            name: _,
            dry_run: _,
            wait: _,
            istio_remote_secret: _,
            remote_guard: _,
        } = self;
        Err(Error::NotImplemented("attach"))
    }
}
