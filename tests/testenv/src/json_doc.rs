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
