//! JSON documents addressed by JSON pointer (RFC 6901): the edits the property tests of the
//! webhook and the plugin make to captured AdmissionReviews and kubeconfigs.

use proptest::{prelude::*, sample::Index};
use serde_json::{Value, json};

/// Every JSON pointer in `value`, the root included.
pub fn pointers(value: &Value) -> Vec<String> {
    fn walk(value: &Value, at: String, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let key = key.replace('~', "~0").replace('/', "~1");
                    walk(child, format!("{at}/{key}"), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
        out.push(at);
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

/// Sets the node at `pointer`, creating object members as needed and appending to an array
/// one past its end; a no-op where neither is possible.
pub fn set(doc: &mut Value, pointer: &str, new: Value) {
    if pointer.is_empty() {
        *doc = new;
        return;
    }
    let (parent, last) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    let key = last.replace("~1", "/").replace("~0", "~");
    if doc.pointer(parent).is_none() {
        let container = if key.parse::<usize>().is_ok() {
            json!([])
        } else {
            json!({})
        };
        set(doc, parent, container);
    }
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(key, new);
        }
        Some(Value::Array(items)) => match key.parse::<usize>() {
            Ok(i) if i < items.len() => items[i] = new,
            Ok(i) if i == items.len() => items.push(new),
            _ => {}
        },
        _ => {}
    }
}

pub fn remove(doc: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&key);
        }
        Some(Value::Array(items)) => {
            if let Some(i) = key.parse::<usize>().ok().filter(|i| *i < items.len()) {
                items.remove(i);
            }
        }
        _ => {}
    }
}

/// The text format a document is fuzzed in: how it writes an object and a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Json,
    /// Flow style for what is spliced in.
    Yaml,
}

impl Syntax {
    /// The start of a one-member object whose value follows.
    fn object_open(self) -> &'static str {
        match self {
            Syntax::Json => r#"{"a":"#,
            Syntax::Yaml => "{a: ",
        }
    }

    /// What the format writes around a plain string such as a marker.
    fn quote(self) -> &'static str {
        match self {
            Syntax::Json => "\"",
            Syntax::Yaml => "",
        }
    }
}

/// Values nested too deep to build as a [`Value`] (the test itself would recurse that deep):
/// a marker string stands in their place until the document is text.
#[derive(Debug)]
pub struct Splices {
    syntax: Syntax,
    nested: Vec<String>,
}

impl Splices {
    /// For a document serialized in `syntax`.
    pub fn new(syntax: Syntax) -> Self {
        Self {
            syntax,
            nested: Vec::new(),
        }
    }

    /// Puts at `pointer` a marker that [`Splices::into_text`] replaces by `depth` levels of
    /// arrays (or of objects), written in the document's syntax.
    pub fn put(&mut self, doc: &mut Value, pointer: &str, depth: usize, arrays: bool) {
        set(doc, pointer, Value::from(Self::marker(self.nested.len())));
        let nested = if arrays {
            nested(depth, "[", "]")
        } else {
            nested(depth, self.syntax.object_open(), "}")
        };
        self.nested.push(nested);
    }

    /// `text`, the document serialized, with each marker replaced.
    pub fn into_text(self, mut text: String) -> String {
        let quote = self.syntax.quote();
        for (n, nested) in self.nested.into_iter().enumerate() {
            let marker = format!("{quote}{}{quote}", Self::marker(n));
            text = text.replacen(&marker, &nested, 1);
        }
        text
    }

    /// Closed at both ends, so that no marker is the start of another (1 and 10).
    fn marker(n: usize) -> String {
        format!("deepmarker{n}end")
    }
}

/// `depth` levels of `open`, a zero, then as many `close`: `[[0]]`, `{"a":{"a":0}}`.
fn nested(depth: usize, open: &str, close: &str) -> String {
    format!("{}0{}", open.repeat(depth), close.repeat(depth))
}

/// One change to a parsed document. `Index`es pick a node of the document as it is when the
/// change is made, so a sequence of changes can reach what earlier ones created.
#[derive(Clone, Debug)]
pub enum TreeEdit {
    /// Drop a member or an element.
    Remove(Index),
    /// Put another value in its place.
    Replace(Index, Value),
    /// A well-known field set to something.
    Field(&'static str, Value),
    /// A string of `len` copies of `ch`.
    Huge(Index, usize, char),
    /// Arrays (or objects) nested `depth` deep, spliced in as text (see [`Splices`]).
    Deep(Index, usize, bool),
}

impl TreeEdit {
    /// Makes the change on `doc`; deep nesting waits in `splices` until `doc` is text.
    pub fn apply(&self, doc: &mut Value, splices: &mut Splices) {
        let pick = |doc: &Value, i: &Index| i.get(&pointers(doc)).clone();
        match self {
            TreeEdit::Remove(i) => remove(doc, &pick(doc, i)),
            TreeEdit::Replace(i, value) => set(doc, &pick(doc, i), value.clone()),
            TreeEdit::Field(field, value) => set(doc, field, value.clone()),
            TreeEdit::Huge(i, len, ch) => {
                set(doc, &pick(doc, i), Value::from(ch.to_string().repeat(*len)));
            }
            TreeEdit::Deep(i, depth, arrays) => splices.put(doc, &pick(doc, i), *depth, *arrays),
        }
    }
}

/// Tree edits with values from `values`, fields from `fields`, huge strings of `huge` bytes
/// and nesting `deep` levels deep; fields weigh most because the code under test reads them.
pub fn tree_edit(
    values: impl Strategy<Value = Value> + 'static,
    fields: &'static [&'static str],
    huge: impl Strategy<Value = usize> + 'static,
    deep: impl Strategy<Value = usize> + 'static,
) -> impl Strategy<Value = TreeEdit> {
    let values = values.boxed();
    prop_oneof![
        3 => any::<Index>().prop_map(TreeEdit::Remove),
        3 => (any::<Index>(), values.clone()).prop_map(|(i, v)| TreeEdit::Replace(i, v)),
        4 => (prop::sample::select(fields), values).prop_map(|(f, v)| TreeEdit::Field(f, v)),
        1 => (any::<Index>(), huge, any::<char>()).prop_map(|(i, n, c)| TreeEdit::Huge(i, n, c)),
        1 => (any::<Index>(), deep, any::<bool>()).prop_map(|(i, d, a)| TreeEdit::Deep(i, d, a)),
    ]
}

/// Byte-level damage at `at`: `op` modulo 3 cuts there, overwrites with `byte` or inserts it.
pub fn damage_byte(bytes: &mut Vec<u8>, at: usize, op: u8, byte: u8) {
    match op % 3 {
        0 => bytes.truncate(at),
        1 => bytes[at] = byte,
        _ => bytes.insert(at, byte),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_splice_lands_at_its_own_marker() {
        let mut doc = json!({});
        let mut splices = Splices::new(Syntax::Json);
        for n in 0..=10 {
            splices.put(&mut doc, &format!("/k{n:02}"), n + 1, true);
        }
        let text = splices.into_text(doc.to_string());
        let parsed: Value = serde_json::from_str(&text).expect(&text);
        // Marker 1 is a prefix of none of the others (10 comes first in the text).
        assert_eq!(parsed["k01"], json!([[0]]));
        assert_eq!(parsed["k10"].to_string(), nested(11, "[", "]"));
    }

    #[test]
    fn deep_objects_are_written_in_the_documents_syntax() {
        for (syntax, serialize, want) in [
            (
                Syntax::Json,
                Value::to_string as fn(&Value) -> String,
                r#"{"x":{"a":{"a":0}}}"#,
            ),
            (
                Syntax::Yaml,
                |v: &Value| serde_yaml::to_string(v).unwrap(),
                "x: {a: {a: 0}}\n",
            ),
        ] {
            let mut doc = json!({});
            let mut splices = Splices::new(syntax);
            splices.put(&mut doc, "/x", 2, false);
            assert_eq!(splices.into_text(serialize(&doc)), want, "{syntax:?}");
        }
    }
}
