//! `kubectl mesh completion`: shell completion scripts.

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::{Cli, Context, Result, output};

/// Print a shell completion script.
///
/// bash: `source <(kubectl-mesh completion bash)`; zsh: `kubectl-mesh completion zsh >
/// "${fpath[1]}/_kubectl-mesh"`; fish: `kubectl-mesh completion fish | source`.
#[derive(Debug, clap::Args)]
pub struct Completion {
    /// The shell.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// Shells with completion scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for Shell {
    fn from(s: CompletionShell) -> Self {
        match s {
            CompletionShell::Bash => Shell::Bash,
            CompletionShell::Zsh => Shell::Zsh,
            CompletionShell::Fish => Shell::Fish,
        }
    }
}

/// The script for `shell`, completing the binary `kubectl-mesh` (what shells can complete;
/// `kubectl mesh` itself is completed by kubectl's plugin completion, which runs this binary).
pub fn script(shell: CompletionShell) -> String {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(Shell::from(shell), &mut cmd, "kubectl-mesh", &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

impl Completion {
    /// Runs the command.
    pub async fn run(self, _ctx: &Context) -> Result<()> {
        let Self { shell } = self;
        output::print_stdout(&script(shell))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_the_binary_and_subcommands() {
        for shell in [
            CompletionShell::Bash,
            CompletionShell::Zsh,
            CompletionShell::Fish,
        ] {
            let s = script(shell);
            assert!(s.contains("kubectl-mesh"), "{shell:?}");
            assert!(
                s.contains("attach") && s.contains("remote-guard"),
                "{shell:?}"
            );
        }
    }
}
