//! What `check` reports: checks grouped in sections, each passed, worth a look or broken.

use serde::Serialize;

use crate::{describe_kube, kube_hint};

/// The result of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Passed.
    Ok,
    /// Works, but worth a look.
    Warning,
    /// Broken.
    Error,
}

/// One line of `check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// What is checked, said as what should hold.
    pub description: String,
    /// Whether it holds.
    pub result: Outcome,
    /// What was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl CheckResult {
    /// A passed check; `detail` is shown after it in parentheses.
    pub fn ok(description: impl Into<String>, detail: Option<String>) -> Self {
        Self {
            description: description.into(),
            result: Outcome::Ok,
            detail,
            hint: None,
        }
    }

    /// A check worth a look.
    pub fn warning(
        description: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::not_ok(Outcome::Warning, description, detail, hint)
    }

    /// A failed check.
    pub fn error(
        description: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::not_ok(Outcome::Error, description, detail, hint)
    }

    /// A check that did not pass, with what was found; an empty `hint` is none.
    fn not_ok(
        result: Outcome,
        description: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            description: description.into(),
            result,
            detail: Some(detail.into()),
            hint: Some(hint.into()).filter(|h: &String| !h.is_empty()),
        }
    }

    /// A check that failed because a request to the primary failed while `doing` something.
    pub fn kube_failure(what: &str, doing: &str, e: &kube::Error) -> Self {
        Self::error(what, format!("{doing}: {}", describe_kube(e)), kube_hint(e))
    }
}

#[cfg(test)]
impl CheckResult {
    /// Whether it has a hint that mentions `text` (the command to run, the flag to use).
    pub(crate) fn hint_mentions(&self, text: &str) -> bool {
        self.hint.as_deref().is_some_and(|h| h.contains(text))
    }

    /// Whether what it found mentions `text`.
    pub(crate) fn detail_mentions(&self, text: &str) -> bool {
        self.detail.as_deref().is_some_and(|d| d.contains(text))
    }
}

/// A group of checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Section {
    /// Its title.
    pub name: String,
    /// Its checks, in the order they ran.
    pub checks: Vec<CheckResult>,
}

/// Everything `check` found, as `-o json|yaml` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The sections: the installation, then one per attached cluster.
    pub sections: Vec<Section>,
    /// Checks that failed.
    pub errors: usize,
    /// Checks worth a look.
    pub warnings: usize,
}

impl CheckReport {
    /// A report of `sections`, counted.
    pub fn new(sections: Vec<Section>) -> Self {
        let count = |o: Outcome| {
            sections
                .iter()
                .flat_map(|s| &s.checks)
                .filter(|c| c.result == o)
                .count()
        };
        Self {
            errors: count(Outcome::Error),
            warnings: count(Outcome::Warning),
            sections,
        }
    }
}
