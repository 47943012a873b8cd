//! What the plugin prints: `-o table|wide|json|yaml` on stdout, progress lines on stderr.
//!
//! Results go to stdout and nothing else does, so `kubectl mesh list -o json | jq` works;
//! progress, warnings and errors go to stderr. Colour is used only when the stream is a
//! terminal, so captured output and CI logs stay plain.

use std::io::Write;

use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets::NOTHING};
use mesh_core::printable::one_line;
use serde::Serialize;

use crate::{Error, Result};

/// Output format of `-o/--output`, shaped like kubectl's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Columns with the essential fields.
    #[default]
    Table,
    /// Columns with every field worth a column.
    Wide,
    /// JSON: one object, or a `List` of objects.
    Json,
    /// YAML: one document per object.
    Yaml,
}

impl OutputFormat {
    /// Whether the format is a table (`table` or `wide`).
    pub fn is_table(self) -> bool {
        matches!(self, Self::Table | Self::Wide)
    }
}

/// The primary's column in `status` and `services`, beside one per remote named after its
/// MeshCluster (and its key in their JSON, beside the remotes' names): attach refuses it as a
/// cluster name.
pub const PRIMARY: &str = "primary";

/// A row type that can be printed as a kubectl-like table.
pub trait Tabular {
    /// Column headers; `wide` adds the columns of `-o wide`. Written in any case, printed
    /// in upper case.
    fn headers(wide: bool) -> Vec<&'static str>;
    /// The cells of this row, in the order of [`Tabular::headers`].
    fn row(&self, wide: bool) -> Vec<String>;
}

/// Renders rows as kubectl renders them: no borders, upper-case headers, three spaces
/// between columns, no trailing blanks.
pub fn table<I, R>(headers: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = String>,
{
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        // kubectl never wraps cells; a wrapped table cannot be read by `awk` or a person.
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| h.to_uppercase()));
    for row in rows {
        // Cells quote what clusters say (condition messages, errors): shown, never obeyed.
        table.add_row(
            row.into_iter()
                .map(|cell| one_line(&cell).into_owned())
                .collect::<Vec<_>>(),
        );
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    let mut text = table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
}

/// Renders items as `text` gives them for the table formats, else as JSON or YAML: the one
/// item itself when one was asked for by name (`one_asked`), else a `List` of them, however
/// many there are, so that a script reads one shape.
pub fn render_items<T: Serialize>(
    format: OutputFormat,
    items: &[T],
    one_asked: bool,
    text: impl FnOnce(&[T]) -> String,
) -> Result<String> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => Ok(text(items)),
        OutputFormat::Json | OutputFormat::Yaml => {
            let values = to_values(items)?;
            match values.as_slice() {
                [one] if one_asked => render_values(format, std::slice::from_ref(one)),
                _ => render_list_document(format, values),
            }
        }
    }
}

/// `values` as one kubectl-style `List`, in JSON or YAML.
pub fn render_list_document(
    format: OutputFormat,
    values: Vec<serde_json::Value>,
) -> Result<String> {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": values});
    match format {
        OutputFormat::Json => render_values(format, &[list]),
        _ => yaml_documents(&[list]),
    }
}

/// For a command that found nothing to show: an empty `List` in JSON or YAML (as
/// `kubectl get` prints), nothing in the table formats (a progress line says why).
pub fn print_empty(format: OutputFormat) -> Result<()> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => Ok(()),
        OutputFormat::Json | OutputFormat::Yaml => {
            print_stdout(&render_list_document(format, Vec::new())?)
        }
    }
}

/// One serialized object as JSON or YAML.
pub fn render_value<T: Serialize>(format: OutputFormat, item: &T) -> Result<String> {
    render_values(format, &to_values(std::slice::from_ref(item))?)
}

/// Items as JSON values.
pub fn to_values<T: Serialize>(items: &[T]) -> Result<Vec<serde_json::Value>> {
    items
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::serialize("JSON"))
}

/// Renders serialized objects as JSON (one object, or a kubectl-style `List`) or as
/// multi-document YAML. Table formats fall back to YAML: callers that have a table print
/// it themselves.
pub fn render_values(format: OutputFormat, values: &[serde_json::Value]) -> Result<String> {
    match format {
        OutputFormat::Json => {
            let doc = match values {
                [one] => one.clone(),
                many => serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": many,
                }),
            };
            let mut text = serde_json::to_string_pretty(&doc).map_err(Error::serialize("JSON"))?;
            text.push('\n');
            Ok(text)
        }
        OutputFormat::Yaml | OutputFormat::Table | OutputFormat::Wide => yaml_documents(values),
    }
}

/// Joins values into one YAML stream, `---` between documents.
pub fn yaml_documents<T: Serialize>(values: &[T]) -> Result<String> {
    let docs = values
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::serialize("YAML"))?;
    Ok(docs.join("---\n"))
}

/// Writes a result to stdout. A closed pipe (`| head`) is not an error worth a message.
pub fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|source| Error::Io {
            what: "cannot write to stdout".into(),
            source,
        }),
    }
}

/// Whether text for `stream` is coloured: anstream's choice, which asks whether the stream
/// is a terminal and honours NO_COLOR, CLICOLOR and CLICOLOR_FORCE.
pub fn colors_for(stream: &impl anstream::stream::RawStream) -> bool {
    anstream::AutoStream::choice(stream) != anstream::ColorChoice::Never
}

/// Progress lines on stderr: `✓ Namespace kubectl-mesh applied`.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    color: bool,
    quiet: bool,
}

impl Progress {
    /// Progress on stderr, coloured as [`colors_for`] says.
    pub fn stderr() -> Self {
        let color = colors_for(&std::io::stderr());
        Self {
            color,
            quiet: false,
        }
    }

    /// Progress that prints nothing (tests, and commands whose stdout is the point).
    pub fn quiet() -> Self {
        Self {
            color: false,
            quiet: true,
        }
    }

    /// A step that succeeded.
    pub fn ok(&self, msg: impl std::fmt::Display) {
        self.line("✓", GREEN, msg);
    }

    /// A step that is under way or a neutral fact.
    pub fn info(&self, msg: impl std::fmt::Display) {
        self.line("•", BLUE, msg);
    }

    /// Something the user should know about but that did not stop the command.
    pub fn warn(&self, msg: impl std::fmt::Display) {
        self.line("!", YELLOW, msg);
    }

    /// A step that failed while the command goes on.
    pub fn fail(&self, msg: impl std::fmt::Display) {
        self.line("✗", RED, msg);
    }

    /// The text of one line, as [`Progress::ok`] and friends print it.
    pub fn format(&self, mark: &str, color: &str, msg: impl std::fmt::Display) -> String {
        let msg = one_line(&msg.to_string()).into_owned();
        if self.color {
            format!("{color}{mark}{RESET} {msg}")
        } else {
            format!("{mark} {msg}")
        }
    }

    fn line(&self, mark: &str, color: &str, msg: impl std::fmt::Display) {
        if self.quiet {
            return;
        }
        // A failed write to stderr has nowhere to be reported; progress is best effort.
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}",
            self.format(mark, color, msg)
        );
    }
}

/// ANSI colours of the progress marks.
pub const GREEN: &str = "\x1b[32m";
/// Warnings.
pub const YELLOW: &str = "\x1b[33m";
/// Failures.
pub const RED: &str = "\x1b[31m";
/// Neutral steps.
pub const BLUE: &str = "\x1b[34m";
/// Back to the terminal's default.
pub const RESET: &str = "\x1b[0m";

/// `1 namespace`, `2 namespaces`.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_a_list_unless_one_was_asked_for_by_name() {
        let text = |_: &[serde_json::Value]| String::new();
        let one = [serde_json::json!({"cluster": "east"})];
        let shape = |format, items: &[serde_json::Value], one_asked| {
            let rendered = render_items(format, items, one_asked, text).unwrap();
            let doc: serde_json::Value = serde_yaml::from_str(&rendered).unwrap();
            doc["kind"].as_str().unwrap_or("object").to_owned()
        };
        for format in [OutputFormat::Json, OutputFormat::Yaml] {
            assert_eq!(shape(format, &one, false), "List", "{format:?}");
            assert_eq!(shape(format, &one, true), "object", "{format:?}");
            assert_eq!(shape(format, &[], false), "List", "{format:?}");
            let two = [one[0].clone(), serde_json::json!({"cluster": "west"})];
            assert_eq!(shape(format, &two, false), "List", "{format:?}");
        }
    }

    #[derive(Serialize)]
    struct Row {
        name: &'static str,
        server: &'static str,
    }

    impl Tabular for Row {
        fn headers(wide: bool) -> Vec<&'static str> {
            if wide {
                vec!["name", "server"]
            } else {
                vec!["name"]
            }
        }
        fn row(&self, wide: bool) -> Vec<String> {
            let mut r = vec![self.name.to_owned()];
            if wide {
                r.push(self.server.to_owned());
            }
            r
        }
    }

    const ROWS: [Row; 2] = [
        Row {
            name: "east",
            server: "https://127.0.0.1:6443",
        },
        Row {
            name: "west-long-name",
            server: "https://10.0.0.1",
        },
    ];

    #[test]
    fn table_is_kubectl_like() {
        let rows_table = |wide| table(&Row::headers(wide), ROWS.iter().map(|r| r.row(wide)));
        let text = rows_table(true);
        assert_eq!(
            text,
            "NAME             SERVER\n\
             east             https://127.0.0.1:6443\n\
             west-long-name   https://10.0.0.1\n"
        );
        assert_eq!(rows_table(false), "NAME\neast\nwest-long-name\n");
    }

    #[test]
    fn cells_and_progress_cannot_drive_the_terminal() {
        let text = table(
            &["message"],
            [vec!["ok\x1b[2J\x1b]0;t\x07\nnext".to_owned()]],
        );
        assert_eq!(text, "MESSAGE\nok\\u{1b}[2J\\u{1b}]0;t\\u{7} next\n");
        let line = Progress::quiet().format("!", YELLOW, "remote says \x1b[31mred");
        assert_eq!(line, "! remote says \\u{1b}[31mred");
    }

    #[test]
    fn json_is_a_list_unless_one_was_asked_for() {
        let json = |rows: &[Row], one_asked| {
            let text = render_items(OutputFormat::Json, rows, one_asked, |_| String::new());
            serde_json::from_str::<serde_json::Value>(&text.unwrap()).unwrap()
        };
        let all = json(&ROWS, false);
        assert_eq!(all["kind"], "List");
        assert_eq!(all["items"][1]["name"], "west-long-name");
        // One found among all asked for is still a list: a script reads one shape.
        assert_eq!(json(&ROWS[..1], false)["items"][0]["name"], "east");
        assert_eq!(json(&ROWS[..1], true)["name"], "east");
    }

    #[test]
    fn yaml_is_multi_document() {
        let text = render_values(OutputFormat::Yaml, &to_values(&ROWS).unwrap()).unwrap();
        assert_eq!(
            text,
            "name: east\nserver: https://127.0.0.1:6443\n---\nname: west-long-name\nserver: https://10.0.0.1\n"
        );
    }

    #[test]
    fn progress_colour_only_when_asked() {
        let plain = Progress::quiet();
        assert_eq!(plain.format("✓", GREEN, "done"), "✓ done");
        let color = Progress {
            color: true,
            quiet: false,
        };
        assert_eq!(color.format("✓", GREEN, "done"), "\x1b[32m✓\x1b[0m done");
    }
}
