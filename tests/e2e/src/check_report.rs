//! `kubectl mesh check -o json`, read back: tests look at its checks as data rather than at
//! the lines of its text report.

use std::process::Output;

use anyhow::Context as _;
use serde::Deserialize;

/// The report `check -o json` prints.
#[derive(Clone, Debug, Deserialize)]
pub struct CheckReport {
    /// The installation's section, then one per attached cluster.
    pub sections: Vec<CheckSection>,
    /// Checks that failed.
    pub errors: usize,
    /// Checks worth a look.
    pub warnings: usize,
}

/// A group of checks.
#[derive(Clone, Debug, Deserialize)]
pub struct CheckSection {
    /// `kubectl-mesh installation`, or `cluster <name> (<server>)`.
    pub name: String,
    pub checks: Vec<CheckEntry>,
}

/// One check: what should hold, whether it does (`ok`, `warning` or `error`), what was found
/// and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CheckEntry {
    pub description: String,
    pub result: String,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub hint: Option<String>,
}

impl CheckEntry {
    /// Whether its result is `result` (`ok`, `warning`, `error`) and what it found mentions
    /// `text`.
    pub fn says(&self, result: &str, text: &str) -> bool {
        self.result == result && self.detail.as_deref().is_some_and(|d| d.contains(text))
    }

    /// Whether what it says to do mentions `text`.
    pub fn hint_mentions(&self, text: &str) -> bool {
        self.hint.as_deref().is_some_and(|h| h.contains(text))
    }
}

impl CheckReport {
    /// The report on the stdout of a `check -o json` run (which exits 1 when a check failed).
    pub fn parse(out: &Output) -> anyhow::Result<Self> {
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("check -o json: {}", crate::describe(out)))
    }

    /// `<plugin> check -o json`, whatever its exit status (`plugin`: a `kubectl-mesh` command
    /// set up for the primary).
    pub async fn of(plugin: std::process::Command) -> anyhow::Result<Self> {
        Ok(Self::with_exit_code(plugin).await?.1)
    }

    /// [`CheckReport::of`] and check's exit code: 0 when every check passed, 1 when one failed
    /// (-1 when it was killed by a signal).
    pub async fn with_exit_code(mut plugin: std::process::Command) -> anyhow::Result<(i32, Self)> {
        plugin.args(["check", "-o", "json"]);
        let out = tokio::process::Command::from(plugin).output().await?;
        Ok((out.status.code().unwrap_or(-1), Self::parse(&out)?))
    }

    /// The checks of cluster `cluster`'s section (none without one).
    pub fn cluster_checks(&self, cluster: &str) -> Vec<&CheckEntry> {
        let title = format!("cluster {cluster} (");
        self.sections
            .iter()
            .filter(|s| s.name.starts_with(&title))
            .flat_map(|s| &s.checks)
            .collect()
    }

    /// The first check of `cluster`'s section described as `description`.
    pub fn cluster_check(&self, cluster: &str, description: &str) -> Option<&CheckEntry> {
        self.cluster_checks(cluster)
            .into_iter()
            .find(|c| c.description == description)
    }

    /// The first check of any section described as `description`; an error naming the report
    /// when there is none.
    pub fn check(&self, description: &str) -> anyhow::Result<&CheckEntry> {
        self.sections
            .iter()
            .flat_map(|s| &s.checks)
            .find(|c| c.description == description)
            .with_context(|| format!("no check {description:?} in {self:#?}"))
    }

    /// The failed checks of every section.
    pub fn failed(&self) -> Vec<&CheckEntry> {
        self.sections
            .iter()
            .flat_map(|s| &s.checks)
            .filter(|c| c.result == "error")
            .collect()
    }
}

impl CheckEntry {
    /// A passed check, `detail` in parentheses after it in the text report.
    pub fn ok(description: &str, detail: &str) -> Self {
        Self {
            description: description.to_owned(),
            result: "ok".to_owned(),
            detail: Some(detail.to_owned()),
            hint: None,
        }
    }

    /// A failed check.
    pub fn error(description: &str, detail: &str, hint: &str) -> Self {
        Self {
            description: description.to_owned(),
            result: "error".to_owned(),
            detail: Some(detail.to_owned()),
            hint: Some(hint.to_owned()),
        }
    }
}
