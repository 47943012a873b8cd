//! The question before a first sync that takes labels away from the remote: asked on a
//! terminal, refused without one (a script says `--yes`), never asked with `--yes`.

use std::io::{BufRead, IsTerminal, Write};

use crate::{Error, Result, output::plural, preview::Preview};
use mesh_core::printable::{few, one_line};

/// Goes on when the first sync removes or changes nothing, or the user says yes.
pub(super) fn first_sync(preview: &Preview) -> Result<()> {
    let Some(what) = question(preview) else {
        return Ok(());
    };
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !terminal {
        return Err(Error::Refused {
            what: format!("{what}; nothing was changed"),
            hint: "review the lines above (or attach --dry-run), leave namespaces out with \
                   --exclude-namespaces, or accept with --yes"
                .into(),
        });
    }
    // `what` names the remote's namespaces.
    eprint!("{}. Attach anyway? [y/N] ", one_line(&what));
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    // An unreadable answer is a no.
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if is_yes(&answer) {
        Ok(())
    } else {
        Err(Error::Refused {
            what: "attach cancelled; nothing was changed".into(),
            hint: "re-run it when the preview is what you want, or with --exclude-namespaces \
                   for namespaces the remote keeps for itself"
                .into(),
        })
    }
}

/// What the user is asked about, when anything.
fn question(preview: &Preview) -> Option<String> {
    let destructive: Vec<String> = preview
        .destructive()
        .into_iter()
        .map(str::to_owned)
        .collect();
    (!destructive.is_empty()).then(|| {
        format!(
            "the first sync of {} would remove or change managed labels on {} ({})",
            preview.cluster,
            plural(destructive.len(), "namespace"),
            few(&destructive)
        )
    })
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preview::Change;

    #[test]
    fn only_removals_and_changes_are_asked_about() {
        let mut preview = Preview {
            cluster: "east".into(),
            changes: vec![Change {
                namespace: "shop".into(),
                add: [("istio-injection".into(), "enabled".into())].into(),
                ..Change::default()
            }],
            ..Preview::default()
        };
        assert_eq!(question(&preview), None);
        preview.changes.push(Change {
            namespace: "gateways".into(),
            remove: [("istio-injection".into(), "enabled".into())].into(),
            ..Change::default()
        });
        assert_eq!(
            question(&preview).unwrap(),
            "the first sync of east would remove or change managed labels on 1 namespace \
             (gateways)"
        );
    }

    #[test]
    fn only_yes_is_yes() {
        assert!(is_yes("y\n") && is_yes(" YES "));
        assert!(!is_yes("") && !is_yes("n") && !is_yes("yep"));
    }
}
