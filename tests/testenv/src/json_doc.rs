//! JSON documents addressed by JSON pointer (RFC 6901): the edits the property tests of the
//! webhook and the plugin make to captured AdmissionReviews and kubeconfigs.

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

/// Values nested too deep to build as a [`Value`] (the test itself would recurse that deep):
/// a marker string stands in their place until the document is text.
#[derive(Debug, Default)]
pub struct Splices {
    nested: Vec<String>,
}

impl Splices {
    /// Puts at `pointer` a marker that [`Splices::into_text`] replaces by `nested`.
    pub fn put(&mut self, doc: &mut Value, pointer: &str, nested: String) {
        set(doc, pointer, Value::from(Self::marker(self.nested.len())));
        self.nested.push(nested);
    }

    /// `text`, the document serialized, with each marker replaced; `quote` is what the format
    /// writes around the marker string (`"` in JSON, nothing for a plain YAML scalar).
    pub fn into_text(self, mut text: String, quote: &str) -> String {
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
pub fn nested(depth: usize, open: &str, close: &str) -> String {
    format!("{}0{}", open.repeat(depth), close.repeat(depth))
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
        let mut splices = Splices::default();
        for n in 0..=10 {
            splices.put(&mut doc, &format!("/k{n:02}"), nested(n + 1, "[", "]"));
        }
        let text = splices.into_text(doc.to_string(), "\"");
        let parsed: Value = serde_json::from_str(&text).expect(&text);
        // Marker 1 is a prefix of none of the others (10 comes first in the text).
        assert_eq!(parsed["k01"], json!([[0]]));
        assert_eq!(parsed["k10"].to_string(), nested(11, "[", "]"));
    }
}
