//! `mesh-testenv up|down`: local control planes for humans and scripts.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use mesh_testenv::istio::{DEFAULT_REVISION, Istio, IstioBinaries, IstioOptions};
use mesh_testenv::mesh::{Mesh, MeshOptions};
use mesh_testenv::node::{Node, NodeBinaries};
use mesh_testenv::{Options, TestEnv};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

/// Real Kubernetes control planes on loopback: a primary and N remote clusters.
#[derive(Parser)]
#[command(name = "mesh-testenv", version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the clusters, write DIR/<cluster>.kubeconfig and DIR/ready, and stay in the
    /// foreground until SIGINT or SIGTERM, which stops everything.
    Up {
        /// Directory for kubeconfigs, certificates, logs and etcd data.
        #[arg(long, env = "MESH_TESTENV_DIR")]
        dir: PathBuf,
        /// Number of remote clusters besides the primary.
        #[arg(long, default_value_t = 2)]
        remotes: usize,
        /// Also build kubectl-mesh and mesh-webhook, install the mesh on the primary with a
        /// local webhook process, attach every remote, and write DIR/env.sh.
        #[arg(long)]
        mesh: bool,
        /// Also build Istio (once per machine), install its CRDs and configuration on the
        /// primary, run istiod for the primary and point every remote's sidecar injector at it;
        /// with --mesh, remotes are attached with --istio-remote-secret.
        #[arg(long)]
        istio: bool,
        /// Also start a node for the primary (containerd, kubelet, kube-proxy, kube-scheduler;
        /// needs root and Debian's containerd, runc and containernetworking-plugins): pods run,
        /// and every apiserver listens on the host's address, which pods can reach.
        #[arg(long)]
        node: bool,
    },
    /// Build (once per machine) and cache the control-plane binaries, then print where they are.
    Build {
        /// Also build Istio's pilot-discovery and istioctl.
        #[arg(long)]
        istio: bool,
        /// Also build a node's kubelet, kube-proxy, kube-scheduler and sandbox program.
        #[arg(long)]
        node: bool,
    },
    /// Stop the environment running in DIR.
    Down {
        /// The directory given to `up`.
        #[arg(long, env = "MESH_TESTENV_DIR")]
        dir: PathBuf,
    },
    /// Build mesh-webhook (dist profile) and pack it into a one-layer docker-archive from
    /// scratch, the image webhook/Containerfile builds, for `ctr -n k8s.io images import`.
    Image {
        /// The archive to write.
        #[arg(long, default_value = "mesh-webhook.tar")]
        out: PathBuf,
        /// The image reference (RepoTags) to tag it with.
        #[arg(long, default_value = mesh_testenv::image::LOCAL_REFERENCE)]
        tag: String,
        /// Pack this binary instead of building one.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

const PID_FILE: &str = "testenv.pid";
const READY_FILE: &str = "ready";

#[tokio::main]
async fn main() {
    if let Err(error) = run(Args::parse()).await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Up {
            dir,
            remotes,
            mesh,
            istio,
            node,
        } => up(dir, remotes, mesh, istio, node).await,
        Cmd::Down { dir } => down(&dir).await,
        Cmd::Image { out, tag, binary } => image(out, tag, binary).await,
        Cmd::Build { istio, node } => {
            let binaries = tokio::task::spawn_blocking(mesh_testenv::Binaries::ensure).await??;
            println!("{}", binaries.dir.display());
            if istio {
                let istio = tokio::task::spawn_blocking(IstioBinaries::ensure).await??;
                println!("{}", istio.dir.display());
            }
            if node {
                tokio::task::spawn_blocking(NodeBinaries::ensure).await??;
            }
            Ok(())
        }
    }
}

async fn up(
    dir: PathBuf,
    remotes: usize,
    with_mesh: bool,
    with_istio: bool,
    node: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    if let Some(pid) = running_pid(&dir) {
        bail!(
            "an environment (pid {pid}) already runs in {}; stop it first: mesh-testenv down --dir {}",
            dir.display(),
            dir.display()
        );
    }
    let _ = std::fs::remove_file(dir.join(READY_FILE));
    std::fs::write(dir.join(PID_FILE), std::process::id().to_string())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let env = tokio::select! {
        env = TestEnv::start(Options { remotes, dir: Some(dir.clone()), node, ..Options::default() }) => env?,
        _ = sigterm.recv() => return cleanup(&dir),
        _ = sigint.recv() => return cleanup(&dir),
    };
    let started = tokio::select! {
        started = start_on(&env, node, with_istio, with_mesh) => started,
        _ = sigterm.recv() => return cleanup(&dir),
        _ = sigint.recv() => return cleanup(&dir),
    };
    let (started_node, istio) = match started {
        Ok(started) => started,
        Err(error) => {
            drop(env);
            cleanup(&dir)?;
            return Err(error);
        }
    };
    std::fs::write(dir.join(READY_FILE), "")?;
    println!("clusters ready in {}:", dir.display());
    for cluster in env.clusters() {
        println!(
            "  {:<10} {}  kubectl --kubeconfig {}",
            cluster.name,
            cluster.server,
            cluster.kubeconfig.display()
        );
    }
    if let Some(istio) = &istio {
        let istiod = istio.istiod(DEFAULT_REVISION)?;
        println!(
            "  istiod     http://{}/debug/clusterz  (log: {})",
            istiod.http,
            dir.join(format!("{}.log", istiod.process_name())).display()
        );
    }
    println!(
        "stop with Ctrl-C or: mesh-testenv down --dir {}",
        dir.display()
    );
    let mut health = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = health.tick() => {
                if let Err(error) = env.check_alive() {
                    eprintln!("error: {error:#}");
                    drop(env);
                    cleanup(&dir)?;
                    std::process::exit(1);
                }
            }
        }
    }
    // The node first: its cleanup stops the kubelet before the containers under it.
    drop(started_node);
    drop(env);
    eprintln!("stopped");
    cleanup(&dir)
}

/// Starts what `up` was asked for on the clusters of `env`, in order: the node, Istio, the
/// mesh. On a failure, a node already started stops before the clusters under it.
async fn start_on(
    env: &TestEnv,
    node: bool,
    with_istio: bool,
    with_mesh: bool,
) -> anyhow::Result<(Option<Node>, Option<Istio>)> {
    let node = if node {
        Some(Node::start(env).await?)
    } else {
        None
    };
    let istio = if with_istio {
        Some(Istio::start(env, IstioOptions::default()).await?)
    } else {
        None
    };
    if with_mesh {
        start_mesh(env, with_istio).await?;
    }
    Ok((node, istio))
}

/// Builds the product binaries with the profile this tool was built with, then sets up the mesh.
async fn start_mesh(env: &TestEnv, with_istio: bool) -> anyhow::Result<()> {
    let release = std::env::current_exe()?
        .parent()
        .is_some_and(|d| d.ends_with("release"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = tokio::process::Command::new(cargo);
    build.args(["build", "-p", "kubectl-mesh", "-p", "mesh-webhook"]);
    if release {
        build.arg("--release");
    }
    eprintln!("[mesh] building kubectl-mesh and mesh-webhook");
    let status = build.status().await.context("running cargo")?;
    if !status.success() {
        bail!("building kubectl-mesh and mesh-webhook failed; see the cargo output above");
    }
    let mut options = MeshOptions::from_workspace()?;
    if with_istio {
        options.attach_args.push("--istio-remote-secret".to_owned());
    }
    let mesh = Mesh::start(env, options).await?;
    let env_sh = mesh.write_env_sh(env)?;
    let remote = env
        .remotes()
        .first()
        .map_or("remote-1", |r| r.name.as_str());
    let injected = if with_istio {
        format!(
            "  kubectl --kubeconfig {dir}/{remote}.kubeconfig -n shop run web --image=nginx --dry-run=server -o jsonpath='{{.spec.containers[*].name}}'   # web istio-proxy\n",
            dir = env.dir().display()
        )
    } else {
        String::new()
    };
    println!(
        "\nThe mesh is up: mesh-webhook at {url} (callers need the primary apiserver's client certificate, {cert}), metrics at https://{metrics}/metrics, {n} remote(s) attached.\nTry, in another shell:\n\n  source {env_sh}\n  kubectl mesh list\n  kubectl create namespace shop\n  kubectl --kubeconfig {dir}/{remote}.kubeconfig create namespace shop\n  kubectl label namespace shop istio-injection=enabled      # kubectl prints where it landed\n  kubectl --kubeconfig {dir}/{remote}.kubeconfig get namespace shop --show-labels\n{injected}  kubectl mesh status\n  kubectl mesh check\n",
        url = mesh.webhook_url(),
        cert = env.webhook_client().cert.display(),
        metrics = mesh.metrics_address(),
        n = env.remotes().len(),
        env_sh = env_sh.display(),
        dir = env.dir().display(),
    );
    Ok(())
}

fn cleanup(dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(dir.join(READY_FILE));
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    Ok(())
}

fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    kill(Pid::from_raw(pid), None).ok().map(|_| pid)
}

async fn down(dir: &Path) -> anyhow::Result<()> {
    let Some(pid) = running_pid(dir) else {
        bail!("no environment runs in {}; nothing to stop", dir.display());
    };
    kill(Pid::from_raw(pid), Signal::SIGTERM).context("signalling the environment")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while kill(Pid::from_raw(pid), None).is_ok() {
        if Instant::now() > deadline {
            bail!(
                "environment (pid {pid}) still running 30s after SIGTERM; kill it: kill -9 {pid}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("stopped the environment in {}", dir.display());
    Ok(())
}

async fn image(out: PathBuf, tag: String, binary: Option<PathBuf>) -> anyhow::Result<()> {
    let binary = match binary {
        Some(binary) => binary,
        None => tokio::task::spawn_blocking(mesh_testenv::image::build_dist_webhook).await??,
    };
    let archive = mesh_testenv::image::build_webhook_image(&binary, &tag, &out)?;
    eprintln!(
        "{tag} from {}; load it with: ctr -n k8s.io images import {}",
        binary.display(),
        archive.display()
    );
    println!("{}", archive.display());
    Ok(())
}
