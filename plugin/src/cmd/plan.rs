//! `kubectl mesh plan`: what a sync would change on every remote now, changing nothing.

use kube::ResourceExt;
use mesh_core::printable::one_line;
use serde::Serialize;

use super::sync::Targets;
use crate::{Context, Error, Result, mesh_state, output, preview::Preview};

/// Exit status when a sync would change something, as `terraform plan -detailed-exitcode`.
pub const CHANGES_EXIT_CODE: u8 = 2;

/// Show what a sync would change on every remote now, changing nothing.
///
/// Per cluster: labels added, changed and removed per namespace, the namespaces only the
/// remote has, and those its scope leaves alone. Exits 0 when every remote is converged, 2 when a sync would write, 1 when a cluster
/// could not be read.
#[derive(Debug, clap::Args)]
pub struct Plan {
    #[command(flatten)]
    pub targets: Targets,
}

/// One cluster's plan, or why there is none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ClusterPlan {
    Read(Preview),
    Failed { cluster: String, error: String },
}

impl Plan {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self { targets } = self;
        let Some(inputs) = targets.inputs(ctx).await? else {
            return output::print_empty(ctx.output);
        };
        let remote_timeout = targets.remote_timeout;
        let plans = mesh_state::for_each(&inputs.clusters, |c| {
            let inputs = &inputs;
            async move {
                let name = c.name_any();
                let read = async {
                    let (rule, remote) = inputs.open(c, remote_timeout).await?;
                    let namespaces = mesh_state::remote_namespaces(&remote)
                        .await
                        .map_err(|e| e.to_string())?;
                    // After the remote, as sync reads them.
                    let primary = mesh_state::primary_namespaces(&inputs.primary)
                        .await
                        .map_err(|e| e.line())?;
                    Ok::<_, String>(Preview::compute(&name, &rule, &primary, &namespaces, false))
                };
                match read.await {
                    Ok(preview) => ClusterPlan::Read(preview),
                    Err(error) => ClusterPlan::Failed {
                        cluster: name,
                        error,
                    },
                }
            }
        })
        .await;

        let text = output::render_items(ctx.output, &plans, targets.one_asked(), render_text)?;
        output::print_stdout(&text)?;

        let failed: Vec<&str> = plans
            .iter()
            .filter_map(|p| match p {
                ClusterPlan::Failed { cluster, .. } => Some(cluster.as_str()),
                ClusterPlan::Read(_) => None,
            })
            .collect();
        if !failed.is_empty() {
            return Err(Error::Refused {
                what: format!("cannot plan {}", failed.join(", ")),
                hint: "see the lines above; `kubectl mesh check` diagnoses a cluster".into(),
            });
        }
        let changes = plans
            .iter()
            .any(|p| matches!(p, ClusterPlan::Read(preview) if preview.has_changes()));
        if changes {
            return Err(Error::Exit(CHANGES_EXIT_CODE));
        }
        Ok(())
    }
}

fn render_text(plans: &[ClusterPlan]) -> String {
    let mut text = String::new();
    for plan in plans {
        let lines = match plan {
            ClusterPlan::Read(preview) => preview.lines(),
            ClusterPlan::Failed { cluster, error } => vec![format!("{cluster}: {error}")],
        };
        for line in lines {
            // Label values and namespace names as the remote holds them: shown, never obeyed.
            text.push_str(&one_line(&line));
            text.push('\n');
        }
    }
    text
}
