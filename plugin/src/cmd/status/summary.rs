//! What `status` counts and says after its table: the totals, and per cluster the namespaces
//! whose labels no injector serves, injectors that could not be read, and pods whose sidecar
//! contradicts their namespace's labels.

use std::collections::BTreeMap;

use mesh_core::printable::few;
use serde::Serialize;

use super::{InjectionCell, NamespaceRow, PodsColumn, StatusReport};
use crate::output::plural;
use crate::restart::restart_advice;
use crate::view;

/// What a matrix's cells add up to, as the summary and `--exit-code` count them; the matrices
/// of a page's chunks add up to the page's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Cells whose managed labels differ from the primary's, on the clusters that are synced.
    pub drifted: usize,
    /// Cells of namespaces that carry managed labels on the primary and are absent there, on
    /// the clusters that are synced.
    pub missing: usize,
    /// Cells whose labels ask for sidecars no injector of the cluster adds.
    pub uninjected: usize,
    /// Pods whose sidecar contradicts their namespace's labels, on every cluster whose pods
    /// were read.
    pub contrary_pods: usize,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, other: Self) {
        self.drifted += other.drifted;
        self.missing += other.missing;
        self.uninjected += other.uninjected;
        self.contrary_pods += other.contrary_pods;
    }
}

impl StatusReport {
    /// Lines worth a warning after the table: per cluster, the namespaces whose labels ask
    /// for sidecars no injector adds there, and clusters whose injectors could not be read.
    pub fn injection_summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for cluster in &self.clusters {
            let injection = |row: &NamespaceRow| row.clusters.get(&cluster.name)?.injection.clone();
            let unserved: Vec<String> = self
                .namespaces
                .iter()
                .filter_map(|row| match injection(row)? {
                    InjectionCell::Unserved { requested } => {
                        Some(format!("{} ({requested})", row.name))
                    }
                    _ => None,
                })
                .collect();
            let unknown = self
                .namespaces
                .iter()
                .any(|row| injection(row) == Some(InjectionCell::Unknown));
            let name = &cluster.name;
            if !unserved.is_empty() {
                lines.push(format!(
                    "{name}: no injector for {}: their pods will not get sidecars there",
                    few(&unserved)
                ));
            }
            match cluster.injectors_unread.as_ref().filter(|_| unknown) {
                // Only a refusal is what an older attach's role explains.
                Some(unread) if unread.forbidden => lines.push(format!(
                    "{name}: its injectors cannot be read with the stored credentials; re-run \
                     `kubectl mesh attach` for {name} to see whether pods get sidecars there"
                )),
                Some(unread) => {
                    lines.push(format!("{name}: cannot read injectors: {}", unread.error))
                }
                None => {}
            }
        }
        lines
    }
}

impl StatusReport {
    /// Lines after the table about pods, per cluster, each with whether it is a warning:
    /// pods that need a restart (with what restarts them on that cluster: `contexts` holds,
    /// by cluster name, the remote context attach recorded), and clusters whose pods could
    /// not be read or have no view credentials (with what to run to give it some).
    pub fn pods_summary(&self, contexts: &BTreeMap<String, String>) -> Vec<(bool, String)> {
        let mut lines = Vec::new();
        for cluster in &self.clusters {
            let name = &cluster.name;
            match &cluster.pods {
                None | Some(PodsColumn::Read { .. }) => {}
                // A refused Istio remote secret may be the caller's rights: worth a warning.
                Some(PodsColumn::NoCredentials { enable, error }) => lines.push((
                    error.is_some(),
                    format!(
                        "{name}: pods not read ({}); `{enable}` lets status and check count \
                         those that need a restart",
                        view::no_credentials(error.as_deref())
                    ),
                )),
                Some(PodsColumn::Failed { credentials, error }) => lines.push((
                    true,
                    format!("{name}: cannot read pods with the {credentials} credentials: {error}"),
                )),
            }
            let mut count = 0;
            let mut namespaces = Vec::new();
            for row in &self.namespaces {
                let pods = row
                    .clusters
                    .get(name)
                    .and_then(|c| c.contrary_pods.as_ref());
                if let Some(pods) = pods.filter(|p| !p.is_empty()) {
                    count += pods.len();
                    namespaces.push(row.name.as_str());
                }
            }
            if count > 0 {
                lines.push((
                    true,
                    format!(
                        "{name}: {} in {} {} or {} istio-proxy contrary to the namespace's \
                         labels; {}",
                        plural(count, "pod"),
                        namespaces.join(", "),
                        if count == 1 { "lacks" } else { "lack" },
                        if count == 1 { "carries" } else { "carry" },
                        restart_advice(name, contexts.get(name).map(String::as_str), &namespaces),
                    ),
                ));
            }
        }
        lines
    }
}
