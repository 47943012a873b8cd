//! How `check` prints its report: as `linkerd check` prints its own, or as JSON/YAML.

use mesh_core::printable::one_line;

use super::report::{CheckReport, Outcome};
use crate::{
    Result,
    output::{self, OutputFormat, plural},
};

impl Outcome {
    fn mark(self) -> &'static str {
        match self {
            Self::Ok => "✓",
            Self::Warning => "‼",
            Self::Error => "×",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Self::Ok => output::GREEN,
            Self::Warning => output::YELLOW,
            Self::Error => output::RED,
        }
    }

    /// The mark, coloured when asked.
    fn painted(self, color: bool) -> String {
        if color {
            format!("{}{}{}", self.color(), self.mark(), output::RESET)
        } else {
            self.mark().to_owned()
        }
    }
}

/// `report` in `format`: text (coloured on a terminal unless NO_COLOR is set) for a table,
/// else the serialized report.
pub fn render(report: &CheckReport, format: OutputFormat) -> Result<String> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => {
            let color = output::colors_for(&std::io::stdout());
            Ok(report.text(color))
        }
        format => output::render_value(format, &report),
    }
}

impl CheckReport {
    /// The report as `linkerd check` prints its own.
    pub fn text(&self, color: bool) -> String {
        let mut out = String::new();
        for section in &self.sections {
            // A cluster's section names the server its MeshCluster records.
            let name = one_line(&section.name);
            out.push_str(&name);
            out.push('\n');
            out.push_str(&"-".repeat(name.chars().count()));
            out.push('\n');
            for check in &section.checks {
                let mark = check.result.painted(color);
                // Details quote what clusters answered: shown, never obeyed by the terminal.
                let detail = check.detail.as_deref().map(one_line);
                let hint = check.hint.as_deref().map(one_line);
                match (&check.result, detail) {
                    (Outcome::Ok, Some(detail)) => {
                        out.push_str(&format!("{mark} {} ({detail})\n", check.description));
                    }
                    (Outcome::Ok, None) => {
                        out.push_str(&format!("{mark} {}\n", check.description));
                    }
                    (_, detail) => {
                        out.push_str(&format!("{mark} {}\n", check.description));
                        if let Some(detail) = detail {
                            out.push_str(&format!("    {detail}\n"));
                        }
                        if let Some(hint) = hint {
                            out.push_str(&format!("    hint: {hint}\n"));
                        }
                    }
                }
            }
            out.push('\n');
        }
        let verdict = if self.errors > 0 {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        out.push_str(&format!(
            "Status check results are {} ({}, {})\n",
            verdict.painted(color),
            plural(self.errors, "error"),
            plural(self.warnings, "warning")
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::{CheckResult, Section};
    use super::*;

    fn report() -> CheckReport {
        CheckReport::new(vec![
            Section {
                name: "kubectl-mesh installation".into(),
                checks: vec![
                    CheckResult::ok("MeshCluster CustomResourceDefinition is established", None),
                    CheckResult::ok(
                        "clientConfig says where the webhook is",
                        Some("https://127.0.0.1:1/mutate".into()),
                    ),
                    CheckResult::error(
                        "webhook answers admission requests",
                        "a dry-run label change went through without an answer",
                        "check that mesh-webhook runs",
                    ),
                ],
            },
            Section {
                name: "cluster east (https://10.0.0.1:6443)".into(),
                checks: vec![CheckResult::warning(
                    "credentials have exactly the rights label sync needs",
                    "over-privileged: also allowed secrets list",
                    "remove the extra bindings",
                )],
            },
        ])
    }

    #[test]
    fn text_snapshot() {
        insta::assert_snapshot!("check_text", report().text(false));
    }

    #[test]
    fn counts_and_json() {
        let r = report();
        assert_eq!((r.errors, r.warnings), (1, 1));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["sections"][0]["checks"][2]["result"], "error");
        assert_eq!(v["sections"][0]["checks"][0].get("detail"), None);
        assert_eq!(v["sections"][1]["checks"][0]["result"], "warning");
    }

    #[test]
    fn colour_only_when_asked() {
        let text = report().text(true);
        assert!(text.contains("\x1b[31m×\x1b[0m webhook answers"), "{text}");
        assert!(!report().text(false).contains('\x1b'));
    }

    #[test]
    fn what_a_cluster_answered_cannot_drive_the_terminal() {
        let report = CheckReport::new(vec![Section {
            name: "cluster east (https://10.0.0.1:6443\x1b[2J)".into(),
            checks: vec![
                CheckResult::error("reachable", "403: no\x1b[2J\x1b[Hall ok", "hint\x1b[8m"),
                CheckResult::ok("answers", Some("v1\u{202e}".into())),
            ],
        }]);
        let text = report.text(false);
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
            "{text:?}"
        );
        assert!(
            text.contains("    403: no\\u{1b}[2J\\u{1b}[Hall ok\n"),
            "{text}"
        );
        assert!(
            text.starts_with("cluster east (https://10.0.0.1:6443\\u{1b}[2J)\n"),
            "{text}"
        );
    }
}
