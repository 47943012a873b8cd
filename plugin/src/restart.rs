//! What to run to restart the workloads whose pods' sidecars contradict their namespace's
//! labels: `status` and `check` say it alike.

use crate::render::shell_word;

/// What restarts the workloads of `namespaces` on cluster `name`, through `context` (the
/// remote context attach recorded) when known: the user's current context is usually the
/// primary's, where the same command would restart the wrong deployments.
pub fn restart_advice(name: &str, context: Option<&str>, namespaces: &[&str]) -> String {
    let Some(context) = context else {
        return format!(
            "restart their workloads on {name}, in each of these namespaces (`kubectl \
             rollout restart deployment -n <namespace>` with a context of {name}, not the \
             primary's)"
        );
    };
    let kubectl = format!(
        "kubectl --context {} rollout restart deployment",
        shell_word(context)
    );
    let words: Vec<String> = namespaces.iter().map(|ns| shell_word(ns)).collect();
    match &words[..] {
        [one] => format!("restart their workloads (`{kubectl} -n {one}`)"),
        many => format!(
            "restart their workloads (`for ns in {}; do {kubectl} -n \"$ns\"; done`)",
            many.join(" ")
        ),
    }
}
