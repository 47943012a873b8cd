//! `kubectl mesh detach`: remove a cluster from the mesh.

use crate::{Context, Error, Result};

/// Detach a cluster from the mesh.
///
/// Deletes what attach created, on the remote and on the primary; nothing else.
#[derive(Debug, clap::Args)]
pub struct Detach {
    /// Name of the attached cluster.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Remove the cluster from the primary even if the remote cannot be reached.
    #[arg(long)]
    pub force: bool,
    /// Also remove the managed labels kubectl-mesh set on the remote's namespaces.
    #[arg(long)]
    pub strip_labels: bool,
}

impl Detach {
    /// Runs the command.
    pub async fn run(self, _ctx: &Context) -> Result<()> {
        let Self {
            name: _,
            force: _,
            strip_labels: _,
        } = self;
        Err(Error::NotImplemented("detach"))
    }
}
