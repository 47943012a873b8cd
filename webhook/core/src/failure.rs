//! How a call to a cluster failed: a coarse class for status reasons, Events and metric
//! labels, and the error's text on one line. Shared by every caller of a remote or the primary,
//! so that one failure reads the same in a warning, a condition, a log line and `kubectl mesh`.

use std::{error::Error as StdError, io};

use crate::{call_limits::AnswerTooLarge, printable::one_line};

/// How a call to a remote apiserver failed, coarse enough for status reasons and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer: refused connection, DNS, TLS handshake, 502 to 504.
    Unreachable,
    /// Connect or read timeout.
    TimedOut,
    /// 403: what the credentials may do does not cover the call.
    Forbidden,
    /// 401: the credentials themselves are refused (a token expired, revoked, or not the
    /// server's own), which no retry mends.
    Unauthorized,
    /// 404.
    NotFound,
    /// 409, or 422 from a failed JSON patch `test` operation.
    Conflict,
    /// Anything else: a refused write, an unreadable answer.
    Other,
}

impl Failure {
    /// Classifies an error of a call to a remote.
    pub fn of(error: &kube::Error) -> Self {
        if refused_as_too_large(error) {
            return Self::Other;
        }
        match error {
            kube::Error::Api(status) => match status.code {
                401 => Self::Unauthorized,
                403 => Self::Forbidden,
                404 => Self::NotFound,
                // A JSON patch whose `test` op fails is answered 422 by the apiserver; an
                // invalid label value is too, and retrying that once costs one round trip.
                409 | 422 => Self::Conflict,
                502..=504 => Self::Unreachable,
                _ => Self::Other,
            },
            kube::Error::Auth(_) => Self::Forbidden,
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::RustlsTls(_) => {
                if timed_out(error) {
                    Self::TimedOut
                } else {
                    Self::Unreachable
                }
            }
            _ => {
                if timed_out(error) {
                    Self::TimedOut
                } else {
                    Self::Other
                }
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::TimedOut => "timed_out",
            // Told apart from a 403 in words only: both count as refusals, as they always did.
            Self::Forbidden | Self::Unauthorized => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Other => "failed",
        }
    }

    /// PascalCase reason of a status condition about a call that failed this way.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unreachable => "Unreachable",
            Self::TimedOut => "TimedOut",
            Self::Forbidden | Self::Unauthorized => "Forbidden",
            Self::NotFound | Self::Conflict | Self::Other => "SyncFailed",
        }
    }

    /// Whether the remote answered at all (for the `Reachable` condition).
    pub fn answered(self) -> bool {
        !matches!(self, Self::Unreachable | Self::TimedOut)
    }
}

/// Whether a request that failed with `error` got no answer worth quoting: anything but the
/// apiserver's refusal or the client's own credentials; how the plugin tells "cannot reach"
/// from a refusal before it changes anything. Not `!Failure::of(error).answered()`, on purpose:
/// a 502 to 504 still carries the apiserver's (or its proxy's) message, and an answer that
/// could not be read carries none, so its [`transport_cause`] is the best line there is.
pub fn is_unreachable(error: &kube::Error) -> bool {
    !matches!(error, kube::Error::Api(_) | kube::Error::Auth(_))
}

/// The cause of a transport failure in a few words: "connection refused", "connection timed
/// out", "invalid peer certificate: UnknownIssuer"; else the innermost cause.
pub fn transport_cause(error: &(dyn StdError + 'static)) -> String {
    let redaction = exec_plugin_redaction(error);
    let mut innermost = String::new();
    for err in chain(error) {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                io::ErrorKind::TimedOut => return "connection timed out".into(),
                io::ErrorKind::ConnectionReset => return "connection reset".into(),
                _ => {}
            }
        }
        let text = redacted(err.to_string(), redaction.as_ref());
        if says_timed_out(&text) {
            return "timed out".into();
        }
        if !text.is_empty() {
            innermost = one_line(&text).into_owned();
        }
    }
    innermost
}

/// `error` and its causes, outermost first: the one walk every question about a chain takes.
fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&err| err.source())
}

/// Whether [`crate::call_limits`] refused the answer: the remote answered, too much.
fn refused_as_too_large(error: &(dyn StdError + 'static)) -> bool {
    chain(error).any(|err| err.is::<AnswerTooLarge>())
}

fn timed_out(error: &(dyn StdError + 'static)) -> bool {
    chain(error).any(|err| {
        err.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
            || says_timed_out(&err.to_string())
    })
}

/// hyper-timeout and tower's timeout do not always surface an io::Error, only this text.
fn says_timed_out(text: &str) -> bool {
    text.contains("timed out") || text.contains("deadline has elapsed")
}

/// The error and its causes on one line, skipping causes already quoted by their parent
/// (kube's Display of a service error repeats its source, and the innermost cause is the one
/// that tells a connection refused from a certificate mismatch).
/// An apiserver's refusal reads as `401 Unauthorized: <message>` instead of kube's Display,
/// which dumps the whole `Status` struct. Every piece is [`one_line`]: a remote's words end up
/// on terminals.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let redaction = exec_plugin_redaction(error);
    let mut out = String::new();
    for err in chain(error) {
        let status = match err.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(status)) => Some(status.as_ref()),
            _ => err.downcast_ref::<kube::core::Status>(),
        };
        let text = match status {
            Some(status) => describe_status(status),
            None if is_elapsed(err) => "timed out".to_owned(),
            None => one_line(&redacted(err.to_string(), redaction.as_ref())).into_owned(),
        };
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        if status.is_some() {
            // A Status is the end of the story; its source is itself.
            break;
        }
    }
    out
}

/// What kube says of a failed exec credential plugin (of the caller's own kubeconfig: stored
/// ones may not run programs), and what is said instead. kube quotes the command as `Debug`
/// shows it, with the environment it was given, and the plugin's whole output: secrets, often,
/// and this text reaches logs, Events and the dashboard. Every error around it quotes it too.
fn exec_plugin_redaction(error: &(dyn StdError + 'static)) -> Option<(String, String)> {
    chain(error).find_map(|err| match err.downcast_ref::<kube::client::AuthError>()? {
        kube::client::AuthError::AuthExecRun { out, .. } => Some((
            err.to_string(),
            format!(
                "the kubeconfig's exec credential plugin failed ({}; its command and output are \
                 not shown: run kubectl with that kubeconfig to see them)",
                out.status
            ),
        )),
        _ => None,
    })
}

/// `text` with what [`exec_plugin_redaction`] found replaced.
fn redacted(text: String, redaction: Option<&(String, String)>) -> String {
    match redaction {
        Some((quoted, instead)) => text.replace(quoted.as_str(), instead),
        None => text,
    }
}

/// A timeout of kube-client's own (its connect timeout): tokio's error inside, whose text
/// ("deadline has elapsed") says neither what ran late nor that it was a timeout.
fn is_elapsed(err: &(dyn StdError + 'static)) -> bool {
    let inner = match err.downcast_ref::<std::io::Error>() {
        Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
        None => Some(err),
    };
    inner.is_some_and(|inner| inner.is::<tokio::time::error::Elapsed>())
}

/// The reason kube-client gives a `Status` it made up from an error body that was not one.
const UNPARSED_BODY: &str = "Failed to parse error data";

/// `<code> <reason>: <message>` of an apiserver's `Status`, on one line. A body that was not a
/// `Status` (an HTML page of whatever server a stored kubeconfig points at) is reduced to its
/// HTTP status: its text could be anything, and it ends up in MeshCluster status and Events.
fn describe_status(status: &kube::core::Status) -> String {
    if let Some(unparsed) = unparsed_body(status) {
        return unparsed;
    }
    let mut text = status.code.to_string();
    if !status.reason.is_empty() {
        text.push(' ');
        text.push_str(&one_line(&status.reason));
    }
    if !status.message.is_empty() && status.message != status.reason {
        text.push_str(": ");
        text.push_str(&one_line(&status.message));
    }
    text
}

/// The short form of an apiserver's answer, as `kubectl mesh` quotes it after what it was
/// doing: the apiserver's own message, else its reason and code; on one line, and a body that
/// was not a `Status` reduced as [`error_chain`] reduces it.
pub fn status_message(status: &kube::core::Status) -> String {
    if let Some(unparsed) = unparsed_body(status) {
        return unparsed;
    }
    if status.message.is_empty() {
        format!("{} ({})", one_line(&status.reason), status.code)
    } else {
        one_line(&status.message).into_owned()
    }
}

/// `<code> <reason> (the response was not a Kubernetes Status)` when kube-client made the
/// `Status` up from a body that was not one.
fn unparsed_body(status: &kube::core::Status) -> Option<String> {
    if status.reason != UNPARSED_BODY {
        return None;
    }
    let reason = http::StatusCode::from_u16(status.code)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("error");
    Some(format!(
        "{} {reason} (the response was not a Kubernetes Status)",
        status.code
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Status::failure("boom", "Reason").with_code(code).boxed())
    }

    /// A request that got no answer, failing with an I/O error of `kind`.
    fn service_error(kind: io::ErrorKind, text: &str) -> kube::Error {
        kube::Error::Service(Box::new(io::Error::new(kind, text)))
    }

    #[test]
    fn api_errors_are_classified_by_code() {
        assert_eq!(Failure::of(&api_error(403)), Failure::Forbidden);
        assert_eq!(Failure::of(&api_error(401)), Failure::Unauthorized);
        assert_eq!(Failure::of(&api_error(404)), Failure::NotFound);
        assert_eq!(Failure::of(&api_error(409)), Failure::Conflict);
        assert_eq!(Failure::of(&api_error(422)), Failure::Conflict);
        assert_eq!(Failure::of(&api_error(503)), Failure::Unreachable);
        assert_eq!(Failure::of(&api_error(500)), Failure::Other);
    }

    #[test]
    fn transport_errors_tell_timeouts_from_refusals() {
        let refused = service_error(io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(Failure::of(&refused), Failure::Unreachable);
        let timed_out = service_error(io::ErrorKind::TimedOut, "slow");
        assert_eq!(Failure::of(&timed_out), Failure::TimedOut);
        assert!(!Failure::TimedOut.answered());
        assert!(Failure::Forbidden.answered());
    }

    #[test]
    fn transport_causes_are_said_in_a_few_words() {
        let refused = service_error(
            io::ErrorKind::ConnectionRefused,
            "tcp connect error: Connection refused (os error 111)",
        );
        assert!(is_unreachable(&refused));
        assert_eq!(transport_cause(&refused), "connection refused");
        let slow = service_error(io::ErrorKind::TimedOut, "slow");
        assert_eq!(transport_cause(&slow), "connection timed out");
        let late = service_error(io::ErrorKind::Other, "deadline has elapsed");
        assert_eq!(transport_cause(&late), "timed out");
        let tls = service_error(
            io::ErrorKind::Other,
            "invalid peer certificate: UnknownIssuer",
        );
        assert_eq!(
            transport_cause(&tls),
            "invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn only_a_refusal_or_the_credentials_count_as_reached() {
        assert!(!is_unreachable(&api_error(401)));
        // Unlike Failure::of: a gateway's answer is quoted, not called unreachable.
        assert!(!is_unreachable(&api_error(503)));
        assert!(!Failure::of(&api_error(503)).answered());
    }

    #[test]
    fn error_chain_keeps_the_innermost_cause() {
        let err = service_error(io::ErrorKind::ConnectionRefused, "tcp connect error");
        let text = error_chain(&err);
        assert!(text.contains("tcp connect error"), "{text}");
        assert_eq!(text.matches("tcp connect error").count(), 1, "{text}");
    }

    /// A failed exec plugin of the caller's kubeconfig, as kube reports it: its command with
    /// the environment it was given, and its output, quoted by every error around it.
    #[test]
    fn a_failed_exec_plugin_is_named_without_its_command_or_output() {
        use std::os::unix::process::ExitStatusExt as _;
        let failed = kube::Error::Auth(kube::client::AuthError::AuthExecRun {
            cmd: r#"TOKEN="s3cr3t" "/usr/bin/login-plugin" "--secret=s3cr3t""#.into(),
            out: Box::new(std::process::Output {
                status: std::process::ExitStatus::from_raw(256),
                stdout: b"token s3cr3t".to_vec(),
                stderr: b"s3cr3t expired".to_vec(),
            }),
        });
        let listed = kube::runtime::watcher::Error::InitialListFailed(failed);
        for text in [error_chain(&listed), transport_cause(&listed)] {
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(
                text.contains("the kubeconfig's exec credential plugin failed (exit status: 1;"),
                "{text}"
            );
        }
    }

    #[test]
    fn api_errors_read_as_code_reason_message() {
        let err = kube::Error::Api(
            Status::failure(
                "namespaces is forbidden: User \"x\" cannot list",
                "Forbidden",
            )
            .with_code(403)
            .boxed(),
        );
        assert_eq!(
            error_chain(&err),
            r#"403 Forbidden: namespaces is forbidden: User "x" cannot list"#
        );
        let err = kube::Error::Api(
            Status::failure("Unauthorized", "Unauthorized")
                .with_code(401)
                .boxed(),
        );
        assert_eq!(error_chain(&err), "401 Unauthorized");
    }

    /// A 401 refuses the credentials, a 403 what they may do. Told by the code: a 401 whose
    /// Status has no reason (a proxy's) reads `401: ...` and was once taken for a 403.
    #[test]
    fn only_a_401_refuses_the_credentials() {
        let status = |message: &str, reason: &str| {
            kube::Error::Api(Status::failure(message, reason).with_code(401).boxed())
        };
        let refused = [
            status("Unauthorized", "Unauthorized"),
            status("<html>", UNPARSED_BODY),
            status("token rejected", ""),
        ];
        for error in refused {
            assert_eq!(Failure::of(&error), Failure::Unauthorized, "{error}");
        }
        let transport = service_error(io::ErrorKind::Other, "401 bytes read");
        for error in [api_error(403), transport] {
            assert_ne!(Failure::of(&error), Failure::Unauthorized, "{error}");
        }
    }

    #[test]
    fn a_body_that_is_not_a_status_is_reduced_to_its_http_status() {
        // What kube-client makes of an HTML error page.
        let page = "<html><body>internal admin console: db=10.0.0.7</body></html>";
        let err = kube::Error::Api(Status::failure(page, UNPARSED_BODY).with_code(502).boxed());
        assert_eq!(
            error_chain(&err),
            "502 Bad Gateway (the response was not a Kubernetes Status)"
        );
        assert_eq!(
            status_message(&err_status(&err)),
            "502 Bad Gateway (the response was not a Kubernetes Status)"
        );
    }

    #[test]
    fn a_status_cannot_drive_the_terminal_that_shows_it() {
        let hostile = "denied\x1b[2J\x1b[1A\r\nall good";
        let err = kube::Error::Api(
            Status::failure(hostile, "Forbidden\x1b[32m")
                .with_code(403)
                .boxed(),
        );
        for shown in [error_chain(&err), status_message(&err_status(&err))] {
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
            assert!(shown.contains("denied\\u{1b}[2J"), "{shown:?}");
        }
        let transport = service_error(io::ErrorKind::Other, "bad frame \x1b]0;title\x07");
        assert!(!transport_cause(&transport).chars().any(char::is_control));
    }

    #[test]
    fn status_message_is_the_apiservers_own_words() {
        let err = api_error(409);
        assert_eq!(status_message(&err_status(&err)), "boom");
        let bare = Status::failure("", "Conflict").with_code(409);
        assert_eq!(status_message(&bare), "Conflict (409)");
    }

    fn err_status(err: &kube::Error) -> Status {
        match err {
            kube::Error::Api(status) => status.as_ref().clone(),
            other => panic!("not an apiserver's answer: {other}"),
        }
    }
}
