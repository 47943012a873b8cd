//! Kubernetes' rules for the names a user gives kubectl-mesh (label keys, namespace and cluster
//! names), each said as the reason a name breaks it, so that a flag is refused with the same
//! words wherever it is checked.

/// Why `key` is not a label key (`[prefix/]name`, as `kubectl label` accepts it), if it is not.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Some("the prefix before '/' is empty".into());
        }
        if let Some(why) = dns_subdomain_problem(prefix) {
            return Some(format!("its prefix {why}"));
        }
    }
    short_name_problem(
        name,
        "the name",
        |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
        "letters, digits, '-', '_' and '.'",
    )
}

/// Why `text` is not a DNS-1123 subdomain (a label prefix), if it is not.
fn dns_subdomain_problem(text: &str) -> Option<String> {
    if text.len() > 253 {
        return Some("is longer than 253 characters".into());
    }
    text.split('.').find_map(|part| {
        dns_label_problem(part).map(|why| format!("is not a DNS subdomain ({part:?}: {why})"))
    })
}

/// Why `text` is not a DNS-1123 label (a namespace name), if it is not.
pub fn dns_label_problem(text: &str) -> Option<String> {
    short_name_problem(
        text,
        "it",
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        "lowercase letters, digits and '-'",
    )
}

/// Why `text` is not 1 to 63 characters out of `allowed` (said as `alphabet`) that start and
/// end with a letter or digit, if it is not: the form Kubernetes gives both the name of a
/// label key and a DNS-1123 label, with different alphabets. `subject` names `text` in the
/// reason.
fn short_name_problem(
    text: &str,
    subject: &str,
    allowed: impl Fn(char) -> bool,
    alphabet: &str,
) -> Option<String> {
    if text.is_empty() {
        return Some(format!("{subject} is empty"));
    }
    if text.len() > 63 {
        return Some(format!("{subject} is longer than 63 characters"));
    }
    if !text.chars().all(allowed) {
        return Some(format!("{subject} may hold only {alphabet}"));
    }
    if !text.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !text.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Some(format!(
            "{subject} must start and end with a letter or digit"
        ));
    }
    None
}
