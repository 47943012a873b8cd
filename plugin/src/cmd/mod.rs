//! One module per subcommand. Each command is a clap `Args` struct with
//! `async fn run(self, ctx: &Context) -> Result<()>` that destructures `let Self { .. } = self`,
//! so a flag added to the struct cannot be forgotten in its body.

pub mod apply;
pub mod attach;
pub mod check;
pub mod completion;
pub mod dashboard;
pub mod detach;
pub mod install;
pub mod install_check;
pub mod list;
pub mod plan;
pub mod rotate;
pub mod scope;
pub mod services;
pub mod status;
pub mod sync;
pub mod uninstall;
