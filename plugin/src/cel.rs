//! CEL text for the admission rules kubectl-mesh renders: the webhook's matchConditions on the
//! primary and the admission policies on the remotes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A CEL string literal.
pub fn string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Stands for a missing label in CEL comparisons. Not a valid label value (those hold only
/// alphanumerics, '-', '_' and '.'), so it never equals a real one.
pub const ABSENT: &str = "<absent>";

/// CEL: the value of the label whose key is the CEL expression `key` on `var` (`object` or
/// `oldObject`), or [`ABSENT`]. `object` is null on DELETE and `oldObject` on CREATE, and a
/// namespace may have no labels map at all: the guards come first, and CEL's `&&` yields false
/// without evaluating (or despite errors in) the rest once a guard is false.
pub fn label_value(var: &str, key: &str) -> String {
    format!(
        "({var} != null && has({var}.metadata.labels) && {key} in {var}.metadata.labels \
         ? {var}.metadata.labels[{key}] : {})",
        string(ABSENT)
    )
}

/// CEL: whether the labels of `var` (`object` or `oldObject`) match `selector`, as the
/// apiserver matches a label selector (an absent key is not `In` and is `NotIn` any values).
/// An operator the apiserver would not take matches nothing.
pub fn selects(var: &str, selector: &LabelSelector) -> String {
    let value = |key: &str| label_value(var, &string(key));
    let list = |values: &Option<Vec<String>>| {
        let items: Vec<String> = values.iter().flatten().map(|v| string(v)).collect();
        format!("[{}]", items.join(", "))
    };
    let labels = selector.match_labels.iter().flatten();
    let by_label = labels.map(|(key, wanted)| format!("{} == {}", value(key), string(wanted)));
    let expressions = selector.match_expressions.iter().flatten();
    let by_expression = expressions.map(|e| match e.operator.as_str() {
        "In" => format!("{} in {}", value(&e.key), list(&e.values)),
        "NotIn" => format!("!({} in {})", value(&e.key), list(&e.values)),
        "Exists" => format!("{} != {}", value(&e.key), string(ABSENT)),
        "DoesNotExist" => format!("{} == {}", value(&e.key), string(ABSENT)),
        _ => "false".to_owned(),
    });
    let terms: Vec<String> = by_label.chain(by_expression).collect();
    if terms.is_empty() {
        return "true".to_owned();
    }
    terms.join(" && ")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn a_selector_is_every_one_of_its_terms() {
        let selector = LabelSelector {
            match_labels: Some([("team".to_owned(), "a".to_owned())].into()),
            match_expressions: Some(vec![
                requirement("tier", "In", &["web", "api"]),
                requirement("zone", "NotIn", &["x"]),
                requirement("owner", "Exists", &[]),
                requirement("legacy", "DoesNotExist", &[]),
            ]),
        };
        let value = |key: &str| label_value("oldObject", &string(key));
        assert_eq!(
            selects("oldObject", &selector),
            [
                format!("{} == 'a'", value("team")),
                format!("{} in ['web', 'api']", value("tier")),
                format!("!({} in ['x'])", value("zone")),
                format!("{} != '<absent>'", value("owner")),
                format!("{} == '<absent>'", value("legacy")),
            ]
            .join(" && ")
        );
    }

    #[test]
    fn an_empty_selector_selects_everything_and_an_unknown_operator_nothing() {
        assert_eq!(selects("oldObject", &LabelSelector::default()), "true");
        let odd = LabelSelector {
            match_expressions: Some(vec![requirement("team", "Gt", &["1"])]),
            ..Default::default()
        };
        assert_eq!(selects("oldObject", &odd), "false");
    }

    #[test]
    fn string_literals_escape_quotes_and_backslashes() {
        assert_eq!(string(r"a'b\c"), r"'a\'b\\c'");
    }
}
