//! `kubectl mesh check`: diagnose the installation and every attached cluster.

use crate::{Context, Error, Result};

/// Check the installation, the webhook and every attached cluster.
#[derive(Debug, clap::Args)]
pub struct Check {}

impl Check {
    /// Runs the command.
    pub async fn run(self, _ctx: &Context) -> Result<()> {
        let Self {} = self;
        Err(Error::NotImplemented("check"))
    }
}
