//! `mesh-bench`: benchmarks of kubectl-mesh against real local control planes.
//!
//! Every scenario starts its own control planes (mesh-testenv), installs the mesh with a local
//! mesh-webhook process the primary's apiserver calls over TLS, measures, and prints markdown
//! tables of figures beside the baseline they are compared with, measured in the same run.
//! Progress goes to stderr, figures to stdout.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

pub mod bed;
pub mod https;
pub mod procfs;
pub mod scenario;
pub mod soak;
pub mod stats;
pub mod watch;

/// Benchmarks of kubectl-mesh against real local control planes; prints figures with their
/// baselines (p50/p95/p99 and ratios) as markdown.
#[derive(Clone, Debug, Parser)]
#[command(name = "mesh-bench", version)]
pub struct Cli {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// Label changes per mode and remote count (propagation), PATCHes per mode
    /// (admission-overhead).
    #[arg(long, env = "MESH_BENCH_CHANGES", default_value_t = 200)]
    pub changes: usize,

    /// Unmeasured changes first, to open every connection on the path.
    #[arg(long, env = "MESH_BENCH_WARMUP", default_value_t = 10)]
    pub warmup: usize,

    /// Remote counts of the propagation scenario (comma-separated).
    #[arg(long, env = "MESH_BENCH_REMOTES", value_delimiter = ',', default_values_t = [1, 2, 4])]
    pub remotes: Vec<usize>,

    /// Namespaces the propagation changes rotate over.
    #[arg(long, env = "MESH_BENCH_NAMESPACES", default_value_t = 4)]
    pub namespaces: usize,

    /// Quiet time between two measured changes, so that each is measured alone (the
    /// reconciler's follow-up sync of the previous change, debounced 100 ms, is over).
    #[arg(long, env = "MESH_BENCH_PAUSE", default_value = "150ms", value_parser = mesh_core::duration::parse)]
    pub pause: Duration,

    /// Alternations of webhook registered / not registered (admission-overhead): drift of the
    /// machine's load hits both alike.
    #[arg(long, env = "MESH_BENCH_CYCLES", default_value_t = 2)]
    pub cycles: usize,

    /// Concurrent keep-alive connections of the throughput load generator (comma-separated:
    /// one run per value).
    #[arg(long, env = "MESH_BENCH_CONNECTIONS", value_delimiter = ',', default_values_t = [1, 4, 16])]
    pub connections: Vec<usize>,

    /// Worker threads of the throughput load generator (its own runtime, like `wrk -t`).
    #[arg(long, env = "MESH_BENCH_LOADGEN_THREADS", default_value_t = 1)]
    pub loadgen_threads: usize,

    /// Seconds of load per throughput run (after one second of warm-up).
    #[arg(long, env = "MESH_BENCH_SECONDS", default_value_t = 10)]
    pub seconds: u64,

    /// Namespaces on the primary and on each remote in the resync scenario; half of them are
    /// labelled on the primary.
    #[arg(long, env = "MESH_BENCH_RESYNC_NAMESPACES", default_value_t = 2000)]
    pub resync_namespaces: usize,

    /// Remotes attached in the resync scenario.
    #[arg(long, env = "MESH_BENCH_RESYNC_REMOTES", default_value_t = 3)]
    pub resync_remotes: usize,

    /// The webhook's resync period in the resync scenario.
    #[arg(long, env = "MESH_BENCH_RESYNC_PERIOD", default_value = "10s", value_parser = mesh_core::duration::parse)]
    pub resync_period: Duration,

    /// Namespaces per cluster in the services scenario.
    #[arg(long, env = "MESH_BENCH_SERVICES_NAMESPACES", default_value_t = 2000)]
    pub services_namespaces: usize,

    /// Services per namespace in the services scenario.
    #[arg(long, env = "MESH_BENCH_SERVICES_PER_NAMESPACE", default_value_t = 5)]
    pub services_per_namespace: usize,

    /// Remotes attached in the services scenario.
    #[arg(long, env = "MESH_BENCH_SERVICES_REMOTES", default_value_t = 2)]
    pub services_remotes: usize,

    /// Remotes of the scale scenario.
    #[arg(long, env = "MESH_BENCH_SCALE_REMOTES", default_value_t = 20)]
    pub scale_remotes: usize,

    /// Namespaces on the primary and on each remote in the scale scenario; half of them are
    /// labelled on the primary.
    #[arg(long, env = "MESH_BENCH_SCALE_NAMESPACES", default_value_t = 10000)]
    pub scale_namespaces: usize,

    /// The webhook's resync period in the scale scenario.
    #[arg(long, env = "MESH_BENCH_SCALE_RESYNC_PERIOD", default_value = "30s", value_parser = mesh_core::duration::parse)]
    pub scale_resync_period: Duration,

    /// Label changes per series (healthy, one remote frozen) in the scale scenario.
    #[arg(long, env = "MESH_BENCH_SCALE_CHANGES", default_value_t = 40)]
    pub scale_changes: usize,

    /// Start the scale scenario's remotes with the primary's labels already set (the cold sync
    /// then has nothing to write) instead of none.
    #[arg(long, env = "MESH_BENCH_SCALE_LABELLED_REMOTES")]
    pub scale_labelled_remotes: bool,

    /// Keep every environment's kubeconfigs and logs under this directory (one folder per
    /// figure) instead of a temporary directory.
    #[arg(long, env = "MESH_BENCH_DIR")]
    pub dir: Option<PathBuf>,

    /// Use the kubectl-mesh and mesh-webhook already built instead of running cargo build.
    #[arg(long, env = "MESH_BENCH_NO_BUILD")]
    pub no_build: bool,

    /// Measure the kubectl-mesh and mesh-webhook of this cargo profile (`dist`: the stripped
    /// binaries users download) instead of those of this tool's own profile; they are built
    /// with it unless --no-build.
    #[arg(long, env = "MESH_BENCH_PROFILE", value_name = "PROFILE")]
    pub profile: Option<String>,

    /// Run the webhook without `--client-ca-file` (callers unauthenticated), to compare with
    /// the default, where it requires the apiserver's client certificate.
    #[arg(long, env = "MESH_BENCH_NO_CLIENT_AUTH")]
    pub no_client_auth: bool,

    /// Propagation with a real istiod running for the primary (built once per machine), its
    /// watches on every apiserver, the remotes attached with --istio-remote-secret.
    #[arg(long, env = "MESH_BENCH_ISTIO")]
    pub istio: bool,

    /// Seed of the soak's operations and faults (the same seed, the same schedule).
    #[arg(long, env = "MESH_BENCH_SEED", default_value_t = 1)]
    pub seed: u64,

    /// How long the soak's operations and faults go on.
    #[arg(long, env = "MESH_BENCH_DURATION", default_value = "60s", value_parser = mesh_core::duration::parse)]
    pub duration: Duration,

    /// The soak's operations per second (on average).
    #[arg(long, env = "MESH_BENCH_RATE", default_value_t = 2.0)]
    pub rate: f64,

    /// Mean time between two of the soak's faults.
    #[arg(long, env = "MESH_BENCH_FAULT_EVERY", default_value = "4s", value_parser = mesh_core::duration::parse)]
    pub fault_every: Duration,

    /// Soak: run no environment; check the history recorded in this file
    /// (`soak-history.json`) again and print its report.
    #[arg(long, env = "MESH_BENCH_RECHECK")]
    pub recheck: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Label change on the primary until visible on every remote, vs one direct write, vs
    /// the reconciler alone.
    Propagation,
    /// Latency of primary namespace updates that touch no managed label, webhook registered
    /// vs not.
    AdmissionOverhead,
    /// No-op AdmissionReviews per second over TLS keep-alive, and CPU per review.
    Throughput,
    /// Cold full sync of many namespaces to several remotes, then a converged resync.
    Resync,
    /// mesh-webhook's memory during the resync scenario (runs it).
    Footprint,
    /// `kubectl mesh services -A` over many services on every cluster vs plain kubectl, and
    /// the dashboard's memory with them.
    Services,
    /// Many remotes x many namespaces: cold convergence, converged resync, the webhook's
    /// memory, propagation, and one remote frozen. Not part of `all` (it takes tens of minutes).
    Scale,
    /// Every scenario, resync and footprint once.
    All,
    /// Random operations and faults on a real mesh for `--duration`, recorded and checked
    /// (convergence, no phantom values, no stale writer, nothing else touched, the primary
    /// writable). Not part of `all`.
    Soak,
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        if self.scenario == Scenario::Soak {
            return self.soak().await;
        }
        let Self {
            scenario,
            changes,
            warmup,
            remotes,
            namespaces,
            pause,
            cycles,
            connections,
            loadgen_threads,
            seconds,
            resync_namespaces,
            resync_remotes,
            resync_period,
            services_namespaces,
            services_per_namespace,
            services_remotes,
            scale_remotes,
            scale_namespaces,
            scale_resync_period,
            scale_changes,
            scale_labelled_remotes,
            dir,
            no_build,
            profile,
            no_client_auth,
            istio,
            ..
        } = self;
        let started = Instant::now();
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        println!("# mesh-bench\n");
        println!("- command: `{command}`");
        println!("- machine: {}", procfs::machine());
        println!(
            "- load average at start (1/5/15 min): {}",
            procfs::load_averages()
        );
        if procfs::load_1m() > 1.0 {
            println!(
                "- **warning: the machine is busy (1-minute load above 1.0): figures are noisy**"
            );
        }
        println!(
            "- webhook callers: {}",
            if no_client_auth {
                "any TLS client (no --client-ca-file)"
            } else {
                "the apiserver's client certificate required (--client-ca-file)"
            }
        );
        let mut options = bed::product_binaries(no_build, profile.as_deref())?;
        println!(
            "- binaries measured: `{}` and `{}`",
            options.plugin.display(),
            options.webhook.display()
        );
        println!();

        options.client_auth = !no_client_auth;
        let subdir = |name: &str| dir.as_ref().map(|d| d.join(name));
        let wants = |s: Scenario| scenario == s || scenario == Scenario::All;
        if wants(Scenario::Propagation) {
            let config = scenario::propagation::Config {
                changes,
                warmup,
                remotes: remotes.clone(),
                namespaces,
                pause,
                istio,
            };
            section(scenario::propagation::run(&options, &config, &subdir).await?);
        }
        if wants(Scenario::AdmissionOverhead) {
            let config = scenario::admission::Config {
                changes,
                warmup,
                cycles,
            };
            section(
                scenario::admission::run(&options, &config, subdir("admission-overhead")).await?,
            );
        }
        if wants(Scenario::Throughput) {
            let config = scenario::throughput::Config {
                connections: connections.clone(),
                duration: Duration::from_secs(seconds),
                threads: loadgen_threads,
            };
            section(scenario::throughput::run(&options, &config, subdir("throughput")).await?);
        }
        if wants(Scenario::Resync) || wants(Scenario::Footprint) {
            let config = scenario::resync::Config {
                namespaces: resync_namespaces,
                remotes: resync_remotes,
                resync_period,
            };
            section(scenario::resync::run(&options, &config, subdir("resync")).await?);
        }
        if wants(Scenario::Services) {
            let config = scenario::services::Config {
                namespaces: services_namespaces,
                services: services_per_namespace,
                remotes: services_remotes,
            };
            section(scenario::services::run(&options, &config, subdir("services")).await?);
        }
        if scenario == Scenario::Scale {
            let config = scenario::scale::Config {
                remotes: scale_remotes,
                namespaces: scale_namespaces,
                resync_period: scale_resync_period,
                changes: scale_changes,
                labelled_remotes: scale_labelled_remotes,
            };
            section(scenario::scale::run(&options, &config, subdir("scale")).await?);
        }
        println!(
            "- load average at end (1/5/15 min): {}; total time {:.0?}",
            procfs::load_averages(),
            started.elapsed()
        );
        Ok(())
    }
}

impl Cli {
    /// `mesh-bench soak`: prints the report; fails when the checker found a violation.
    async fn soak(self) -> anyhow::Result<()> {
        if let Some(path) = &self.recheck {
            let run = soak::recheck(path)?;
            println!("{}", run.report);
            anyhow::ensure!(
                run.verdict.violations.is_empty(),
                "{} violation(s); the report above shows each",
                run.verdict.violations.len()
            );
            return Ok(());
        }
        let options = bed::product_binaries(self.no_build, self.profile.as_deref())?;
        let config = soak::SoakConfig {
            seed: self.seed,
            duration: self.duration,
            rate: self.rate,
            fault_every: self.fault_every,
            dir: self.dir.clone(),
            ..soak::SoakConfig::default()
        };
        println!("# mesh-bench soak\n");
        println!(
            "- command: `{}`",
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        println!("- machine: {}", procfs::machine());
        println!(
            "- load average at start (1/5/15 min): {}\n",
            procfs::load_averages()
        );
        let run = soak::run(&options, &config).await?;
        println!("{}", run.report);
        println!(
            "- load average at end (1/5/15 min): {}",
            procfs::load_averages()
        );
        anyhow::ensure!(
            run.verdict.violations.is_empty(),
            "{} violation(s); the report above shows each",
            run.verdict.violations.len()
        );
        Ok(())
    }
}

/// Prints one scenario's markdown with the load it ran under.
fn section(markdown: String) {
    println!("{markdown}");
    println!(
        "- load average after it (1/5/15 min): {}\n",
        procfs::load_averages()
    );
}

/// `MET` or `MISSED` for a target line.
pub fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "MISSED" }
}
