//! The interruptions a command that writes on several clusters must not die of half-way:
//! Ctrl-C, or the end of the job or terminal it runs in (SIGTERM from `timeout`, a CI runner
//! or systemd; SIGHUP when an SSH session drops). Their default action would leave what the
//! run changed so far behind; the commands put it back instead (attach, scope), or stop
//! between two of their steps, saying what is done and that a re-run finishes it (detach,
//! rotate: [`Listener`]).

use std::time::Duration;

use crate::{Context, access::RemoteAdminFlags, render::shell_word, request_timeout};

/// Ends on the first interruption. Once it is polled, those signals no longer end the
/// process, for as long as it runs: whatever waits must select on this future (one received
/// while nothing does is kept for the next poll). If they cannot be listened to, it never
/// ends, and they keep their default actions.
pub async fn signalled() {
    on_signal(interruption()).await;
}

/// The interruptions, listened to from [`Listener::start`] on, for a command that stops only
/// between its steps (detach, rotate): whatever a step writes is written whole, and the waits
/// between the writes end at once. Clones share one listening.
#[derive(Clone, Debug)]
pub struct Listener {
    received: tokio::sync::watch::Receiver<bool>,
}

impl Listener {
    /// Listens from now on (the handlers are in place when it returns): from here, those
    /// signals no longer end the process. Must be called within the runtime.
    pub fn start() -> Self {
        let (tx, received) = tokio::sync::watch::channel(false);
        let mut signal = Box::pin(signalled());
        // Polled once here, where the handlers are registered; the rest is left to a task.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if signal.as_mut().poll(&mut cx).is_ready() {
            tx.send_replace(true);
        } else {
            tokio::spawn(async move {
                signal.await;
                tx.send_replace(true);
            });
        }
        Self { received }
    }

    /// Whether an interruption came.
    pub fn received(&self) -> bool {
        *self.received.borrow()
    }

    /// Ends on the first interruption (at once when one came already).
    pub async fn signalled(&self) {
        let mut received = self.received.clone();
        if received.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `wait` to its end, or `None` once an interruption comes (at once when one came
    /// already): for what only waits, and leaves nothing half-done when cut short.
    pub async fn unless<T>(&self, wait: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.signalled() => None,
            done = wait => Some(done),
        }
    }
}

/// The command that finishes an interrupted run (detach, rotate): the same subcommand with
/// every flag that decides what it does or which clusters it reaches, the primary's last
/// (`--kubeconfig`, `--context`, a `--request-timeout` not the default), each word as a POSIX
/// shell reads it back. A flag left out would not be the same run: without the remote's
/// kubeconfig a re-run cannot reach it, or with `--force` skips it.
#[derive(Clone, Debug)]
pub struct Rerun {
    line: String,
}

impl Rerun {
    /// `kubectl mesh <subcommand>`.
    pub fn new(subcommand: &str) -> Self {
        Self {
            line: format!("kubectl mesh {subcommand}"),
        }
    }

    /// One more word (a cluster's name).
    pub fn word(mut self, word: &str) -> Self {
        self.line.push(' ');
        self.line.push_str(&shell_word(word));
        self
    }

    /// `flag`, when `given`.
    pub fn flag(mut self, flag: &str, given: bool) -> Self {
        if given {
            self.line.push(' ');
            self.line.push_str(flag);
        }
        self
    }

    /// `flag value`, when there is a value.
    pub fn value(self, flag: &str, value: Option<&str>) -> Self {
        match value {
            Some(value) => self.flag(flag, true).word(value),
            None => self,
        }
    }

    /// `--remote-kubeconfig` and `--remote-context`, as given.
    pub fn remote_admin(self, flags: &RemoteAdminFlags) -> Self {
        let kubeconfig = flags
            .remote_kubeconfig
            .as_ref()
            .map(|p| p.to_string_lossy());
        self.value("--remote-kubeconfig", kubeconfig.as_deref())
            .value("--remote-context", flags.remote_context.as_deref())
    }

    /// `--timeout`, unless it is the flag's `default`.
    pub fn timeout(self, timeout: Duration, default: &str) -> Self {
        let given = crate::parse_duration(default) != Ok(timeout);
        let seconds = given.then(|| request_timeout::seconds(timeout));
        self.value("--timeout", seconds.as_deref())
    }

    /// The primary's flags, as `ctx` holds them.
    pub fn primary(self, ctx: &Context) -> Self {
        let kubeconfig = ctx.kubeconfig.as_ref().map(|p| p.to_string_lossy());
        let default = request_timeout::parse(request_timeout::DEFAULT_REQUEST_TIMEOUT);
        let request_timeout = (default != Ok(ctx.request_timeout)).then(|| {
            ctx.request_timeout
                .0
                .map_or_else(|| "0".to_owned(), request_timeout::seconds)
        });
        self.value("--kubeconfig", kubeconfig.as_deref())
            .value("--context", ctx.context.as_deref())
            .value("--request-timeout", request_timeout.as_deref())
    }

    /// The command line.
    pub fn line(self) -> String {
        self.line
    }
}

/// `listening` (the signals' registration, then the wait for one) as a future that ends only
/// on a signal. Had the registration failed, it would end at once, and a second `select!`
/// would poll it again after that (a panic); it never ends then, and the signals keep their
/// default actions.
async fn on_signal(listening: impl Future<Output = std::io::Result<()>>) {
    if listening.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Ctrl-C, SIGTERM or SIGHUP.
async fn interruption() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted,
            _ = terminate.recv() => Ok(()),
            _ = hangup.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

/// The words of `line` as a POSIX shell splits them, for what [`Rerun`] writes: plain words,
/// single quotes, backslashes.
#[cfg(test)]
pub(crate) fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut in_word) = (Vec::new(), String::new(), false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => (quoted, in_word) = (!quoted, true),
            '\\' if !quoted => {
                word.extend(chars.next());
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `kubectl mesh <args>` as the plugin parses them: its global flags' context, and the
/// command.
#[cfg(test)]
pub(crate) fn parsed(args: &[&str]) -> (crate::GlobalArgs, crate::Command) {
    use clap::Parser;
    let cli =
        crate::Cli::try_parse_from(std::iter::once("kubectl-mesh").chain(args.iter().copied()))
            .expect("parses");
    (cli.global, cli.command)
}

/// The line `rerun` says for `kubectl mesh <args>`, checked to parse back to the same command
/// and global flags: pasted, it is the same run.
#[cfg(test)]
pub(crate) fn rerun_parsed_back(
    args: &[&str],
    rerun: impl Fn(&crate::Command, &Context) -> String,
) -> String {
    let (global, command) = parsed(args);
    let said = rerun(&command, &Context::new(global.clone()));
    let words = shell_words(&said);
    assert_eq!(words[..2], ["kubectl", "mesh"], "{said}");
    let words: Vec<&str> = words[2..].iter().map(String::as_str).collect();
    let (global_again, again) = parsed(&words);
    assert_eq!(
        format!("{global_again:?} {again:?}"),
        format!("{global:?} {command:?}"),
        "{said} is another command than {args:?}"
    );
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_reads_back_what_shell_word_quotes() {
        let words = ["east", "my dir/it's.yaml", "", "a\\b", "--flag"];
        let line: Vec<String> = words.iter().map(|w| shell_word(w)).collect();
        assert_eq!(shell_words(&line.join(" ")), words);
    }

    /// The primary's flags go along; defaults are left out.
    #[test]
    fn a_rerun_names_the_primary_as_the_run_did() {
        let rerun = |args: &[&str]| {
            let (global, _) = parsed(args);
            Rerun::new("list").primary(&Context::new(global)).line()
        };
        assert_eq!(rerun(&["list"]), "kubectl mesh list");
        assert_eq!(
            rerun(&["list", "--request-timeout", "30s"]),
            "kubectl mesh list"
        );
        assert_eq!(
            rerun(&[
                "--kubeconfig",
                "/home/me/my clusters.yaml",
                "list",
                "--context",
                "main",
                "--request-timeout",
                "0"
            ]),
            "kubectl mesh list --kubeconfig '/home/me/my clusters.yaml' --context main \
             --request-timeout 0"
        );
        assert_eq!(
            rerun(&["list", "--request-timeout", "1m30s"]),
            "kubectl mesh list --request-timeout 90s"
        );
    }

    /// A failed registration ended the wait at once: the `select!` after attach's steps then
    /// polled the finished future again, and panicked.
    #[tokio::test]
    async fn a_failed_signal_registration_never_ends_the_wait() {
        let failed = async { Err(std::io::Error::other("no signal handlers")) };
        let waiting = on_signal(failed);
        tokio::pin!(waiting);
        for _ in 0..2 {
            let polled = tokio::time::timeout(std::time::Duration::from_millis(10), &mut waiting);
            assert!(polled.await.is_err(), "ended without a signal");
        }
        let signalled = on_signal(async { Ok(()) });
        tokio::time::timeout(std::time::Duration::from_secs(1), signalled)
            .await
            .expect("a signal ends it");
    }

    /// A listener catches a signal sent before anything waits on it (the process lives on),
    /// keeps it for every later look, and cuts a wait short, one already under way or not.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_listener_keeps_a_signal_for_every_later_look() {
        let listener = Listener::start();
        assert!(!listener.received());
        let short = std::time::Duration::from_millis(20);
        assert_eq!(listener.unless(async { 1 }).await, Some(1));
        let waiting = listener.unless(std::future::pending::<()>());
        let hangup = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .expect("kill");
        assert!(hangup.success());
        let cut = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert_eq!(cut.expect("cut short by the signal"), None);
        assert!(listener.received() && listener.clone().received());
        assert_eq!(listener.unless(async { 1 }).await, None, "after the signal");
        tokio::time::timeout(short, listener.signalled())
            .await
            .expect("at once");
    }
}
