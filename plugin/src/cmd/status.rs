//! `kubectl mesh status`: managed labels of namespaces across the mesh.

use crate::{Context, Error, Result};

/// Show the managed labels of namespaces on the primary and every remote.
#[derive(Debug, clap::Args)]
pub struct Status {
    /// Namespaces to show [default: every namespace with a managed label].
    #[arg(value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
}

impl Status {
    /// Runs the command.
    pub async fn run(self, _ctx: &Context) -> Result<()> {
        let Self { namespaces: _ } = self;
        Err(Error::NotImplemented("status"))
    }
}
