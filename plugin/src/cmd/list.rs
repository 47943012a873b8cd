//! `kubectl mesh list`: the attached clusters.

use crate::{Context, Error, Result};

/// List the attached clusters.
#[derive(Debug, clap::Args)]
pub struct List {}

impl List {
    /// Runs the command.
    pub async fn run(self, _ctx: &Context) -> Result<()> {
        let Self {} = self;
        Err(Error::NotImplemented("list"))
    }
}
