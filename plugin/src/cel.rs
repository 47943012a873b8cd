//! CEL text for the admission rules kubectl-mesh renders: the webhook's matchConditions on the
//! primary and the admission policies on the remotes.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_literals_escape_quotes_and_backslashes() {
        assert_eq!(string(r"a'b\c"), r"'a\'b\\c'");
    }
}
