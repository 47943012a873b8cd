//! `kubectl mesh`: manage a multi-cluster Istio mesh from its primary cluster.
//!
//! The CLI lives in the library so that it can be tested (help text, argument parsing)
//! without running the binary.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mesh_core::{
    failure::{error_chain, status_message},
    printable::one_line,
};

pub mod access;
pub mod age;
pub mod cel;
pub mod cmd;
pub mod credentials;
pub mod installed_rule;
pub mod interrupt;
pub mod kubeconfig;
pub mod mesh_state;
pub mod namespace_contents;
pub mod namespace_scope;
pub mod object_names;
pub mod output;
pub mod poll;
pub mod preview;
pub mod remote_policies;
pub mod remote_setup;
pub mod render;
pub mod request_timeout;
pub mod restart;
pub mod sync_scope;
pub mod target;
pub mod tokens;
pub mod view;

pub use output::OutputFormat;

/// Manage a multi-cluster Istio mesh from its primary cluster.
///
/// The cluster of the current context is the primary: it holds the mesh's state and the
/// webhook that mirrors namespace sidecar-injection labels (istio-injection, istio.io/rev,
/// istio.io/dataplane-mode) to every attached remote cluster.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-mesh",
    bin_name = "kubectl mesh",
    version,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes, shaped like kubectl's.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Kubeconfig of the primary cluster [default: KUBECONFIG, or ~/.kube/config].
    // Not `env = "KUBECONFIG"`: clap would refuse an empty KUBECONFIG and take a list of files
    // for one path; kube's own loader reads KUBECONFIG the way kubectl does.
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context of the primary cluster [default: the current context].
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Output format.
    #[arg(
        short,
        long,
        global = true,
        value_enum,
        default_value_t,
        value_name = "FORMAT"
    )]
    pub output: OutputFormat,
    /// How long one request to the primary may take, from connecting to the end of its
    /// answer (a watch: to its start); 0 waits as long as it takes.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = request_timeout::DEFAULT_REQUEST_TIMEOUT,
        value_parser = request_timeout::parse
    )]
    pub request_timeout: request_timeout::RequestTimeout,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    Install(cmd::install::Install),
    Uninstall(cmd::uninstall::Uninstall),
    Attach(cmd::attach::Attach),
    Detach(cmd::detach::Detach),
    Rotate(cmd::rotate::Rotate),
    List(cmd::list::List),
    Status(cmd::status::Status),
    Plan(cmd::plan::Plan),
    Scope(cmd::scope::Scope),
    Services(cmd::services::Services),
    Dashboard(cmd::dashboard::Dashboard),
    Sync(cmd::sync::Sync),
    Check(cmd::check::Check),
    Completion(cmd::completion::Completion),
}

/// What every command runs with: the global flags and the progress printer.
#[derive(Clone, Debug)]
pub struct Context {
    /// `--kubeconfig` (or KUBECONFIG).
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `-o/--output`.
    pub output: OutputFormat,
    /// `--request-timeout`: the deadline of each request to the primary.
    pub request_timeout: request_timeout::RequestTimeout,
    /// Progress lines on stderr.
    pub progress: output::Progress,
}

impl Context {
    /// A context from the global flags, printing progress on stderr.
    pub fn new(global: GlobalArgs) -> Self {
        let GlobalArgs {
            kubeconfig,
            context,
            output,
            request_timeout,
        } = global;
        Self {
            kubeconfig,
            context,
            output,
            request_timeout,
            progress: output::Progress::stderr(),
        }
    }

    /// The user's kubeconfig (from `--kubeconfig`, KUBECONFIG or `~/.kube/config`).
    pub fn load_kubeconfig(&self) -> Result<kube::config::Kubeconfig> {
        Ok(kubeconfig::load(self.kubeconfig.as_deref())?)
    }

    /// The primary as the user's kubeconfig names it: that kubeconfig, the context's name, and
    /// the target errors about reaching it name.
    pub fn primary_target(&self) -> Result<(kube::config::Kubeconfig, String, access::Target)> {
        let kc = self.load_kubeconfig()?;
        let selected = kubeconfig::select(&kc, self.context.as_deref())?;
        let context = selected.context.to_owned();
        let target = access::Target {
            label: "the primary".into(),
            server: selected.server()?.to_owned(),
            where_configured: format!("the server of context {context} in your kubeconfig"),
        };
        Ok((kc, context, target))
    }

    /// A client for the primary, with the kubeconfig and the target of
    /// [`Context::primary_target`]. Each request ends within `--request-timeout`
    /// ([`request_timeout::client`]); a request that does not fails with
    /// [`request_timeout::Unanswered`], whose line says so.
    pub async fn primary_client(
        &self,
    ) -> Result<(kube::config::Kubeconfig, access::Target, kube::Client)> {
        let (kc, context, target) = self.primary_target()?;
        let client = self
            .primary_client_of(kc.clone(), &context, &target)
            .await?;
        Ok((kc, target, client))
    }

    /// A client for `context` of `kc`, the primary `target`, whose requests end within
    /// `--request-timeout`.
    pub async fn primary_client_of(
        &self,
        kc: kube::config::Kubeconfig,
        context: &str,
        target: &access::Target,
    ) -> Result<kube::Client> {
        request_timeout::client(kc, context, target, self.request_timeout).await
    }

    /// A client of the primary for watches that run as long as the command: a connection that
    /// stays silent past [`mesh_core::remote::WATCH_READ_TIMEOUT`] fails, so that a frozen
    /// apiserver or a connection dropped on the way shows instead of a picture that stopped.
    pub async fn primary_watch_client(&self) -> Result<kube::Client> {
        let (kc, context, target) = self.primary_target()?;
        let read_timeout = Some(mesh_core::remote::WATCH_READ_TIMEOUT);
        request_timeout::client_with_read_timeout(
            kc,
            &context,
            &target,
            self.request_timeout,
            read_timeout,
        )
        .await
    }

    /// A client for the primary cluster ([`Context::primary_client`]).
    pub async fn client(&self) -> Result<kube::Client> {
        Ok(self.client_and_kubeconfig().await?.0)
    }

    /// [`Context::client`] and the user's kubeconfig it was made from, read once.
    pub async fn client_and_kubeconfig(&self) -> Result<(kube::Client, kube::config::Kubeconfig)> {
        let (kc, _, client) = self.primary_client().await?;
        Ok((client, kc))
    }
}

/// What went wrong, with what to do about it ([`Error::hint`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kubeconfig problem.
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::Error),
    /// A rendering problem.
    #[error(transparent)]
    Render(#[from] render::Error),
    /// A sync rule flag of `install` that cannot be used.
    #[error(transparent)]
    Rule(#[from] installed_rule::Error),
    /// A request to a cluster failed.
    #[error("{action}")]
    Kube {
        /// What was being done, e.g. "cannot apply Namespace kubectl-mesh".
        action: String,
        /// Why it failed.
        #[source]
        source: kube::Error,
    },
    /// A local file or stream failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Output could not be serialized.
    #[error("cannot write {format}")]
    Serialize {
        /// JSON or YAML.
        format: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Something did not happen in time.
    #[error("timed out after {after} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: String,
        /// What to do.
        hint: String,
    },
    /// The command refuses to go on; the user can change something and re-run it.
    #[error("{what}")]
    Refused {
        /// What is wrong.
        what: String,
        /// What to do.
        hint: String,
    },
    /// The command ran to its end and its verdict is the exit status alone, like
    /// `git diff --exit-code`: the output already said everything, no error line follows.
    #[error("exit status {0}")]
    Exit(u8),
}

/// Result of the plugin.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a kube error with what was being done: `.map_err(Error::kube("cannot apply X"))`.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Kube { action, source }
    }

    /// Wraps an error met writing `format` (JSON, YAML): `.map_err(Error::serialize("JSON"))`.
    pub fn serialize<E>(format: &'static str) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |source| Self::Serialize {
            format,
            source: Box::new(source),
        }
    }

    /// The primary's not answering in time, when that is what went wrong: said as such,
    /// whatever was being asked.
    fn unanswered(&self) -> Option<Error> {
        match self {
            Self::Kube { action, source } => {
                request_timeout::Unanswered::within(source).map(|late| late.refusal(action))
            }
            _ => None,
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> String {
        if let Some(refusal) = self.unanswered() {
            return refusal.hint();
        }
        match self {
            Self::Kubeconfig(e) => e.hint(),
            Self::Render(e) => e.hint(),
            Self::Rule(e) => e.hint(),
            Self::Kube { source, .. } => kube_hint(source),
            Self::Io { .. } => "check the path and its permissions".into(),
            Self::Serialize { .. } => {
                "this is a bug in kubectl-mesh; please report it with the command you ran".into()
            }
            Self::Timeout { hint, .. } | Self::Refused { hint, .. } => hint.clone(),
            Self::Exit(_) => String::new(),
        }
    }

    /// The process's exit status for this error: 1, or the one [`Error::Exit`] carries.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Exit(code) => i32::from(*code),
            _ => 1,
        }
    }

    /// Whether an `error: ...` line should be printed ([`Error::Exit`] prints none).
    pub fn is_silent(&self) -> bool {
        matches!(self, Self::Exit(_))
    }

    /// What went wrong, on one line, without the hint. Causes are joined with ": ", each
    /// said once ([`error_chain`]); an apiserver's answer by its own message.
    pub fn what(&self) -> String {
        if let Some(refusal) = self.unanswered() {
            return refusal.what();
        }
        let what = match self {
            Self::Kube { source, .. } => format!("{self}: {}", describe_kube(source)),
            other => error_chain(other),
        };
        one_line(&what).into_owned()
    }

    /// The whole error on one line: `<what went wrong>; <what to do>`.
    pub fn line(&self) -> String {
        format!("{}; {}", self.what(), one_line(&self.hint()))
    }
}

/// A kube error in a few words: the apiserver's own message when it answered.
pub fn describe_kube(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status_message(status),
        other => error_chain(other),
    }
}

/// What to do about a kube error, from its HTTP status.
pub fn kube_hint(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(s) if s.code == 401 => {
            "the cluster did not accept the credentials; refresh them and check with \
             `kubectl auth whoami`"
                .into()
        }
        kube::Error::Api(s) if s.code == 403 => {
            "this needs more rights on the cluster; check with `kubectl auth can-i --list`".into()
        }
        kube::Error::Api(s) if s.code == 404 => {
            "is kubectl-mesh installed? run `kubectl mesh install`".into()
        }
        kube::Error::Api(s) if s.code == 409 => {
            "something changed meanwhile; re-run the command".into()
        }
        kube::Error::Api(_) => {
            "check the cluster's state with kubectl and re-run the command".into()
        }
        _ => "check that the cluster is reachable: `kubectl get --raw /readyz`".into(),
    }
}

impl Cli {
    /// Parses the process's arguments and runs the command on a fresh runtime.
    pub fn parse_and_run() -> Result<()> {
        let cli = Self::parse();
        init_tracing();
        let runtime = if matches!(cli.command, Command::Dashboard(_)) {
            // A long-running server that mostly waits: one thread keeps its memory in one
            // allocator arena (two workers measured a third more resident memory).
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            // A CLI waits on the network; two workers are plenty and start fast.
            builder.worker_threads(2);
            builder
        }
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "cannot start the async runtime".into(),
            source,
        })?;
        runtime.block_on(cli.run())
    }

    /// Runs the parsed command.
    pub async fn run(self) -> Result<()> {
        let Self { global, command } = self;
        let ctx = Context::new(global);
        match command {
            Command::Install(c) => c.run(&ctx).await,
            Command::Uninstall(c) => c.run(&ctx).await,
            Command::Attach(c) => c.run(&ctx).await,
            Command::Detach(c) => c.run(&ctx).await,
            Command::Rotate(c) => c.run(&ctx).await,
            Command::List(c) => c.run(&ctx).await,
            Command::Status(c) => c.run(&ctx).await,
            Command::Plan(c) => c.run(&ctx).await,
            Command::Scope(c) => c.run(&ctx).await,
            Command::Services(c) => c.run(&ctx).await,
            Command::Dashboard(c) => c.run(&ctx).await,
            Command::Sync(c) => c.run(&ctx).await,
            Command::Check(c) => c.run(&ctx).await,
            Command::Completion(c) => c.run(&ctx).await,
        }
    }
}

/// Logs go to stderr, off unless RUST_LOG asks for them: the CLI speaks through progress
/// lines and errors, logs are for debugging.
fn init_tracing() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off"));
    // Fails only if a subscriber is already set (tests); nothing to report then.
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A duration flag of the plugin (`90s`, `2m`, `1h30m`, the grammar the webhook's flags share):
/// above zero, as every one is a time to wait for something (zero would give up before asking).
pub fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let duration = mesh_core::duration::parse(text)?;
    if duration.is_zero() {
        return Err(format!("{text:?} is no time at all; use e.g. 5s, 2m or 1h"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_the_line_without_its_hint() {
        let err = Error::Refused {
            what: "a".into(),
            hint: "b".into(),
        };
        assert_eq!((err.what().as_str(), err.line().as_str()), ("a", "a; b"));
    }

    /// What a server answered is quoted, never obeyed by the terminal, and a page that is not
    /// a Kubernetes answer is not quoted at all.
    #[test]
    fn what_a_server_answered_is_shown_on_one_inert_line() {
        let answer = |message: &str, reason: &str| {
            let status = kube::core::Status::failure(message, reason).with_code(500);
            Error::kube("cannot read MeshCluster east")(kube::Error::Api(status.boxed()))
        };
        let hostile = answer("fine\x1b[2J\x1b[1Aall clear\nsecond line", "InternalError");
        assert_eq!(
            hostile.what(),
            "cannot read MeshCluster east: fine\\u{1b}[2J\\u{1b}[1Aall clear second line"
        );
        let hinted = Error::Refused {
            what: "no context".into(),
            hint: "choose one of admin\u{202e}lirpa".into(),
        };
        assert_eq!(
            hinted.line(),
            "no context; choose one of admin\\u{202e}lirpa"
        );
        let page = answer(
            "<html>console: db=10.0.0.7</html>",
            "Failed to parse error data",
        );
        assert_eq!(
            page.what(),
            "cannot read MeshCluster east: 500 Internal Server Error (the response was not a \
             Kubernetes Status)"
        );
    }
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn duration_flags_must_be_above_zero() {
        assert_eq!(
            parse_duration("90s"),
            Ok(std::time::Duration::from_secs(90))
        );
        for zero in ["0", "0s", "0m0s"] {
            let error = parse_duration(zero).unwrap_err();
            assert!(error.contains("no time at all"), "{zero}: {error}");
        }
        assert!(Cli::try_parse_from(["kubectl-mesh", "status", "--remote-timeout", "0"]).is_err());
    }

    #[test]
    fn help_snapshot() {
        let mut cmd = Cli::command();
        insta::assert_snapshot!("help", cmd.render_help().to_string());
        // Every subcommand, so that a new one cannot be left out.
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|sub| sub.get_name().to_owned())
            .filter(|name| name != "help")
            .collect();
        assert!(names.len() > 10, "{names:?}");
        for name in &names {
            let mut sub = Cli::command();
            sub.build();
            let sub = sub
                .find_subcommand_mut(name)
                .unwrap_or_else(|| panic!("no subcommand {name}"));
            insta::assert_snapshot!(format!("help_{name}"), sub.render_help().to_string());
        }
    }

    /// detach, rotate and scope reach a remote with the same credentials the same way: their
    /// help says so in the same words.
    #[test]
    fn remote_admin_flags_read_alike_everywhere() {
        let mut cli = Cli::command();
        cli.build();
        let help = |command: &str, flag: &str| {
            let sub = cli.find_subcommand(command).expect(command);
            let arg = sub.get_arguments().find(|a| a.get_long() == Some(flag));
            arg.and_then(|a| a.get_help()).map(ToString::to_string)
        };
        for flag in ["remote-kubeconfig", "remote-context"] {
            let detach = help("detach", flag);
            assert!(detach.is_some(), "detach has no --{flag}");
            for command in ["rotate", "scope"] {
                assert_eq!(help(command, flag), detach, "{command} --{flag}");
            }
        }
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli =
            Cli::try_parse_from(["kubectl-mesh", "list", "-o", "json", "--context", "primary"])
                .unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.context.as_deref(), Some("primary"));
    }

    /// `rotate --all` takes each cluster's recorded context: one remote's credentials would
    /// reach the first cluster and be refused by the next, half-way through.
    #[test]
    fn rotate_all_refuses_one_remotes_credentials() {
        for flag in ["--remote-context", "--remote-kubeconfig"] {
            let parsed = Cli::try_parse_from(["kubectl-mesh", "rotate", "--all", flag, "x"]);
            let error = parsed.expect_err(flag);
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{flag}"
            );
        }
        assert!(Cli::try_parse_from(["kubectl-mesh", "rotate", "--all"]).is_ok());
    }

    /// With `--webhook-url` no Deployment is installed: its flags would be ignored.
    #[test]
    fn install_refuses_deployment_flags_with_a_webhook_url() {
        for flags in [&["--wait"][..], &["--replicas", "3"]] {
            let url = [
                "kubectl-mesh",
                "install",
                "--webhook-url",
                "https://10.0.0.1/mutate",
            ];
            let parsed = Cli::try_parse_from(url.iter().chain(flags));
            let error = parsed.expect_err(flags[0]);
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{flags:?}"
            );
        }
    }

    #[test]
    fn attach_flags() {
        let cli = Cli::try_parse_from([
            "kubectl-mesh",
            "attach",
            "remote.yaml",
            "--kubeconfig",
            "primary.yaml",
            "--remote-context",
            "admin@east",
            "--name",
            "east",
            "--remote-guard",
            "deny",
            "--dry-run",
        ])
        .unwrap();
        let Command::Attach(a) = cli.command else {
            panic!("not attach");
        };
        assert_eq!(a.remote_kubeconfig, PathBuf::from("remote.yaml"));
        assert_eq!(cli.global.kubeconfig, Some(PathBuf::from("primary.yaml")));
        assert_eq!(a.remote_guard, Some(cmd::attach::RemoteGuardArg::Deny));
        assert!(a.dry_run && !a.wait);
    }

    #[test]
    fn sync_cluster_repeats() {
        let cli = Cli::try_parse_from(["kubectl-mesh", "sync", "--cluster", "a", "--cluster", "b"])
            .unwrap();
        let Command::Sync(s) = cli.command else {
            panic!("not sync");
        };
        assert_eq!(s.targets.cluster, ["a", "b"]);
    }

    #[test]
    fn error_line_has_what_and_hint() {
        let err = Error::from(kubeconfig::Error::NoCurrentContext);
        assert_eq!(
            err.line(),
            "the kubeconfig has no current context; pass --context, or run \
             `kubectl config use-context <name>`"
        );
        let err = Error::Kube {
            action: "cannot apply Namespace kubectl-mesh".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("namespaces is forbidden", "Forbidden")
                    .with_code(403)
                    .boxed(),
            ),
        };
        assert_eq!(
            err.line(),
            "cannot apply Namespace kubectl-mesh: namespaces is forbidden; this needs more \
             rights on the cluster; check with `kubectl auth can-i --list`"
        );
        let err = Error::Io {
            what: "cannot write /x/tls.key".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file"),
        };
        assert_eq!(
            err.line(),
            "cannot write /x/tls.key: No such file; check the path and its permissions"
        );
        let err = Error::Kube {
            action: "cannot list namespaces".into(),
            source: mesh_core::fixtures::refused_connection(),
        };
        assert_eq!(
            err.what(),
            "cannot list namespaces: ServiceError: connection refused"
        );
    }
}
