//! `kubectl mesh sync`: converge remotes on the primary's labels now.

use crate::{Context, Error, Result};

/// Make every remote's managed labels equal the primary's, now.
#[derive(Debug, clap::Args)]
pub struct Sync {
    /// Print the changes and make none.
    #[arg(long)]
    pub dry_run: bool,
    /// Sync only this cluster (repeatable) [default: all].
    #[arg(long, value_name = "NAME")]
    pub cluster: Vec<String>,
}

impl Sync {
    /// Runs the command.
    pub async fn run(self, _ctx: &Context) -> Result<()> {
        let Self {
            dry_run: _,
            cluster: _,
        } = self;
        Err(Error::NotImplemented("sync"))
    }
}
