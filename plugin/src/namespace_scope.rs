//! The namespace scope of a cluster as flags give it: `--exclude-namespaces a,b` and
//! `--namespace-selector 'key!=value,!key'` in `kubectl get -l` syntax, turned into the
//! `MeshCluster`'s `spec.scope`, and back into words.

use json_patch::{AddOperation, PatchOperation, RemoveOperation, jsonptr};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use mesh_core::{cluster::NamespaceScope, labels::SyncRule};

use crate::{
    Error, Result,
    object_names::{dns_label_problem, label_key_problem},
};

/// The scope `exclude` and `selector` (flag values) describe, checked against `rule`.
pub fn from_flags(
    rule: &SyncRule,
    exclude: &[String],
    selector: Option<&str>,
) -> Result<NamespaceScope> {
    let mut exclude_namespaces: Vec<String> = exclude
        .iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    exclude_namespaces.sort();
    exclude_namespaces.dedup();
    // The flags replace the scope whole: an empty value (an unset shell variable, say) would
    // otherwise widen it to every namespace, which only --clear is for.
    if !exclude.is_empty() && exclude_namespaces.is_empty() {
        return Err(empty_flag("--exclude-namespaces names no namespace"));
    }
    for name in &exclude_namespaces {
        if let Some(why) = dns_label_problem(name) {
            return Err(Error::Refused {
                what: format!("invalid --exclude-namespaces name {name:?}: {why}"),
                hint: "give namespace names, comma-separated".into(),
            });
        }
    }
    let namespace_selector = match selector.map(str::trim) {
        None => None,
        Some("") => return Err(empty_flag("--namespace-selector is empty")),
        Some(text) => Some(parse_selector(text).map_err(|what| {
            Error::Refused {
                what: format!("--namespace-selector {text:?}: {what}"),
                hint: "write it as kubectl get -l does, e.g. 'team!=platform,!legacy' or \
                   'tier in (apps,web)'"
                    .into(),
            }
        })?),
    };
    let scope = NamespaceScope {
        exclude_namespaces,
        namespace_selector,
    };
    rule.within(&scope).map_err(|error| Error::Refused {
        what: format!("--namespace-selector cannot be used: {error}"),
        hint: "select namespaces by labels kubectl-mesh does not manage".into(),
    })?;
    Ok(scope)
}

/// The refusal of a scope flag given an empty value.
fn empty_flag(what: &str) -> Error {
    Error::Refused {
        what: what.to_owned(),
        hint: "give it a value, or leave it out; `kubectl mesh scope CLUSTER --clear` removes a \
               cluster's scope"
            .into(),
    }
}

/// `scope` in a few words, e.g. `all namespaces` or `not gateways; only team!=platform`.
pub fn describe(scope: &NamespaceScope) -> String {
    if scope.is_everything() {
        return "all namespaces".to_owned();
    }
    let mut parts = Vec::new();
    if !scope.exclude_namespaces.is_empty() {
        parts.push(format!("not {}", scope.exclude_namespaces.join(", ")));
    }
    if let Some(selector) = selector_text(scope) {
        parts.push(format!("only {selector}"));
    }
    parts.join("; ")
}

/// The scope's selector in `kubectl get -l` syntax, if it has one.
pub fn selector_text(scope: &NamespaceScope) -> Option<String> {
    let selector = scope.namespace_selector.as_ref()?;
    let equal = (selector.match_labels.iter().flatten()).map(|(k, v)| format!("{k}={v}"));
    let expressions = (selector.match_expressions.iter().flatten()).map(|r| {
        let values = r.values.clone().unwrap_or_default();
        match (r.operator.as_str(), values.as_slice()) {
            ("In", [one]) => format!("{}={one}", r.key),
            ("NotIn", [one]) => format!("{}!={one}", r.key),
            ("In", _) => format!("{} in ({})", r.key, values.join(",")),
            ("NotIn", _) => format!("{} notin ({})", r.key, values.join(",")),
            ("Exists", _) => r.key.clone(),
            ("DoesNotExist", _) => format!("!{}", r.key),
            (other, _) => format!("{} {other} ({})", r.key, values.join(",")),
        }
    });
    let text = equal.chain(expressions).collect::<Vec<_>>().join(",");
    (!text.is_empty()).then_some(text)
}

/// Parses a label selector as `kubectl get -l` takes it: comma-separated `key=value`,
/// `key==value`, `key!=value`, `key`, `!key`, `key in (a,b)`, `key notin (a,b)`.
pub fn parse_selector(text: &str) -> std::result::Result<LabelSelector, String> {
    let mut requirements = Vec::new();
    for term in split_terms(text)? {
        let term = term.trim();
        if term.is_empty() {
            return Err("empty requirement".into());
        }
        let requirement = |key: &str, operator: &str, values: Option<Vec<String>>| {
            let key = key.trim();
            check_key(key)?;
            Ok::<_, String>(LabelSelectorRequirement {
                key: key.to_owned(),
                operator: operator.to_owned(),
                values,
            })
        };
        let parsed = if let Some(key) = term.strip_prefix('!') {
            requirement(key, "DoesNotExist", None)?
        } else if let Some((key, value)) = term.split_once("!=") {
            requirement(key, "NotIn", Some(vec![value.trim().to_owned()]))?
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            requirement(key, "In", Some(vec![value.trim().to_owned()]))?
        } else if let Some((key, values)) = set_term(term, " notin ") {
            requirement(key, "NotIn", Some(values?))?
        } else if let Some((key, values)) = set_term(term, " in ") {
            requirement(key, "In", Some(values?))?
        } else {
            requirement(term, "Exists", None)?
        };
        requirements.push(parsed);
    }
    Ok(LabelSelector {
        match_expressions: Some(requirements),
        match_labels: None,
    })
}

/// The comma-separated terms of a selector, commas inside `( )` kept.
fn split_terms(text: &str) -> std::result::Result<Vec<&str>, String> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced parentheses")?,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    terms.push(&text[start..]);
    Ok(terms)
}

/// `key in (a,b)` split at `operator`.
fn set_term<'a>(
    term: &'a str,
    operator: &str,
) -> Option<(&'a str, std::result::Result<Vec<String>, String>)> {
    let (key, rest) = term.split_once(operator)?;
    let values = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map(|inner| inner.split(',').map(|v| v.trim().to_owned()).collect())
        .ok_or_else(|| format!("{operator:?} needs a list in parentheses"));
    Some((key, values))
}

/// The label-key rule of `--managed-labels`, so that the apiserver never refuses a key that
/// passed here (in the sync scope's admission policy binding, for one).
fn check_key(key: &str) -> std::result::Result<(), String> {
    match label_key_problem(key) {
        Some(why) => Err(format!("{key:?} is not a label key: {why}")),
        None => Ok(()),
    }
}

/// The JSON Patch that makes a MeshCluster's `spec.scope` `scope` (it differs from the one
/// there, so a scope of everything removes one that is there). Replaced whole: a merge patch
/// merges maps, so a selector's `matchLabels` set by hand stayed beside the new selector, and
/// a server-side apply keeps what another writer set and it leaves out.
pub fn mesh_cluster_patch(scope: &NamespaceScope) -> json_patch::Patch {
    let path = jsonptr::PointerBuf::from_tokens(["spec", "scope"]);
    let operation = if scope.is_everything() {
        PatchOperation::Remove(RemoveOperation { path })
    } else {
        PatchOperation::Add(AddOperation {
            path,
            value: serde_json::to_value(scope).unwrap_or_default(),
        })
    };
    json_patch::Patch(vec![operation])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(selector: &str) -> String {
        let scope = NamespaceScope {
            exclude_namespaces: vec![],
            namespace_selector: Some(parse_selector(selector).unwrap()),
        };
        selector_text(&scope).unwrap()
    }

    #[test]
    fn selector_syntax_round_trips() {
        assert_eq!(text("team!=platform,!legacy"), "team!=platform,!legacy");
        assert_eq!(text("tier in (apps, web),mesh"), "tier in (apps,web),mesh");
        assert_eq!(text("a==b"), "a=b");
        assert_eq!(text("zone notin (x)"), "zone!=x");
    }

    #[test]
    fn bad_selectors_say_why() {
        assert_eq!(parse_selector("a,").unwrap_err(), "empty requirement");
        assert_eq!(
            parse_selector("tier in (a").unwrap_err(),
            "unbalanced parentheses"
        );
        for bad in [
            "no spaces=x",
            "-team=x",
            "a/b/c",
            "example.com/",
            &"k".repeat(64),
        ] {
            let why = parse_selector(bad).unwrap_err();
            assert!(why.contains("is not a label key: "), "{bad}: {why}");
        }
    }

    #[test]
    fn flags_refuse_a_managed_key_and_describe_the_rest() {
        let rule = SyncRule::default();
        let err = from_flags(&rule, &[], Some("istio-injection")).unwrap_err();
        assert!(err.line().contains("istio-injection"), "{}", err.line());
        let scope = from_flags(
            &rule,
            &["gw".into(), " a ".into(), "gw".into()],
            Some("team!=x"),
        )
        .unwrap();
        assert_eq!(describe(&scope), "not a, gw; only team!=x");
        let err = from_flags(&rule, &["Gateways".into()], None).unwrap_err();
        assert!(
            err.line()
                .starts_with("invalid --exclude-namespaces name \"Gateways\": "),
            "{}",
            err.line()
        );
        assert_eq!(describe(&NamespaceScope::default()), "all namespaces");
    }

    /// An empty flag value (`--exclude-namespaces "$UNSET"`) used to make the scope every
    /// namespace, as `--clear` does, without a word.
    #[test]
    fn an_empty_flag_value_is_refused_not_taken_for_no_scope() {
        let rule = SyncRule::default();
        let refusals = [
            (vec![String::new()], None),
            (vec![" ".into(), String::new()], Some("team!=x")),
            (vec![], Some(" ")),
            (vec!["gw".into()], Some("")),
        ];
        for (exclude, selector) in refusals {
            let line = from_flags(&rule, &exclude, selector).unwrap_err().line();
            assert!(
                line.contains(" is empty") || line.contains("names no namespace"),
                "{line}"
            );
            assert!(line.contains("--clear"), "{line}");
        }
        // A trailing comma among names is not an empty value.
        let scope = from_flags(&rule, &["gw".into(), String::new()], None).unwrap();
        assert_eq!(describe(&scope), "not gw");
    }

    /// The scope was a merge patch: a selector's `matchLabels` set by hand stayed beside the
    /// new selector, which then selected far fewer namespaces than `scope` said.
    #[test]
    fn a_new_scope_replaces_the_old_one_whole() {
        let mut stored = json!({"spec": {"secretName": "cluster-east", "scope": {
            "excludeNamespaces": ["gw"],
            "namespaceSelector": {"matchLabels": {"team": "apps"}},
        }}});
        let selector = parse_selector("team in (apps,web)").expect("selector");
        let scope = NamespaceScope {
            exclude_namespaces: Vec::new(),
            namespace_selector: Some(selector.clone()),
        };
        json_patch::patch(&mut stored, &mesh_cluster_patch(&scope)).expect("applies");
        assert_eq!(
            stored["spec"]["scope"],
            json!({"namespaceSelector": serde_json::to_value(&selector).unwrap()})
        );
        json_patch::patch(&mut stored, &mesh_cluster_patch(&NamespaceScope::default()))
            .expect("applies");
        assert_eq!(stored, json!({"spec": {"secretName": "cluster-east"}}));
    }
}
