//! A real node for the primary: Debian's containerd and runc, a CNI bridge, and a kubelet,
//! kube-proxy and kube-scheduler built like the control plane, all under the environment's
//! directory and stopped with it. Pods run for real: the webhook deployed by `kubectl mesh
//! install` runs in them, reaching the primary through the `kubernetes` Service and each remote at
//! its stored address (the environment must be started with [`crate::Options::node`]).
//!
//! Nothing is pulled: the sandbox image is built here (a static program that waits for signals),
//! and images are imported with [`Node::import_image`] and run with `imagePullPolicy: Never`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node as KubeNode;
use serde_json::json;

use crate::TestEnv;
use crate::binaries::{Binaries, Build};
use crate::ports::free_port;

/// The sandbox image the kubelet asks containerd for.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// The pod network of the one node.
pub const POD_SUBNET: &str = "10.244.0.0/24";
/// The Debian packages a node needs.
pub const PACKAGES: [&str; 5] = [
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "conntrack",
];
/// Where Debian's CNI plugins are.
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The kubelet changes these; they are put back when the node stops.
const SYSCTLS: [&str; 3] = [
    "/proc/sys/vm/overcommit_memory",
    "/proc/sys/kernel/panic",
    "/proc/sys/kernel/panic_on_oops",
];
const READY_TIMEOUT: Duration = Duration::from_secs(90);

const PAUSE_SOURCE: &str = r#"// The sandbox of every pod: holds its namespaces, reaps orphans, exits on SIGINT/SIGTERM.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s == syscall.SIGCHLD {
			for {
				if pid, _ := syscall.Wait4(-1, nil, syscall.WNOHANG, nil); pid <= 0 {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
"#;

const PAUSE_BUILD: &str = r#"#!/usr/bin/env bash
# Builds the static sandbox program into "$1".
set -euo pipefail
out=${1:?usage: build-pause.sh OUT_DIR SOURCE}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$2" "$work/main.go"
cd "$work"
go mod init local/pause >/dev/null 2>&1
CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags "-s -w" -o "$out/pause.tmp" .
mv "$out/pause.tmp" "$out/pause"
"#;

/// The node's binaries: the control plane's cache holds the Kubernetes ones.
#[derive(Clone, Debug)]
pub struct NodeBinaries {
    pub dir: PathBuf,
}

impl NodeBinaries {
    /// Builds kubelet, kube-proxy, kube-scheduler and the sandbox program once per machine,
    /// and checks that the Debian packages are installed.
    pub fn ensure() -> anyhow::Result<Self> {
        let binaries = Binaries::ensure()?;
        let node = Self {
            dir: binaries.dir.clone(),
        };
        let kube = ["kubelet", "kube-proxy", "kube-scheduler"];
        Build {
            script: include_str!("../scripts/build-control-plane.sh"),
            args: &[
                crate::KUBERNETES_VERSION,
                crate::ETCD_VERSION,
                &kube.join(" "),
            ],
            outputs: &kube,
            what: "kubelet, kube-proxy and kube-scheduler (2-6 min)",
        }
        .once(&node.dir)?;
        let source = node.dir.join("pause.go");
        std::fs::write(&source, PAUSE_SOURCE)?;
        Build {
            script: PAUSE_BUILD,
            args: &[&source.display().to_string()],
            outputs: &["pause"],
            what: "the sandbox program",
        }
        .once(&node.dir)?;
        for tool in ["containerd", "ctr", "runc"] {
            if which(tool).is_none() {
                bail!(
                    "{tool} is not installed; install the node's Debian packages: apt-get install {}",
                    PACKAGES.join(" ")
                );
            }
        }
        if !Path::new(CNI_BIN_DIR).join("bridge").is_file() {
            bail!("no CNI plugins in {CNI_BIN_DIR}; apt-get install containernetworking-plugins");
        }
        Ok(node)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A running node. Its processes belong to the [`TestEnv`]; dropping the node puts back the
/// host settings the kubelet changed.
pub struct Node {
    /// The node's name (the host's, which resolves here: the apiserver dials the kubelet by it).
    pub name: String,
    dir: PathBuf,
    containerd_socket: PathBuf,
    sysctls: Vec<(PathBuf, String)>,
    /// Stops what outlives the environment's process group: containerd's shims and the
    /// containers under them, their mounts, kube-proxy's rules, the bridge; puts the sysctls
    /// back. Run on drop, and by a watchdog if the owner dies without dropping.
    cleanup: PathBuf,
}

impl Node {
    /// Starts containerd, the kubelet, kube-proxy and kube-scheduler for the primary of `env`
    /// and waits until the node is Ready.
    pub async fn start(env: &TestEnv) -> anyhow::Result<Self> {
        if !env.has_node_network() {
            bail!("the environment was started without Options::node: pods could not reach it");
        }
        let started = Instant::now();
        let binaries = tokio::task::spawn_blocking(NodeBinaries::ensure).await??;
        let dir = env.dir().join("node");
        std::fs::create_dir_all(&dir)?;
        let name = hostname()?;
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|p| Some((PathBuf::from(p), std::fs::read_to_string(p).ok()?)))
            .collect();
        let node = Self {
            name,
            containerd_socket: dir.join("containerd.sock"),
            cleanup: dir.join("cleanup.sh"),
            dir,
            sysctls,
        };
        let containerd = node.start_containerd(env).await?;
        node.import_pause(&binaries).await?;
        let kubelet = node.start_kubelet(env, &binaries)?;
        node.write_cleanup(&binaries, &[kubelet, containerd])?;
        spawn_cleanup_watchdog(&node.cleanup)?;
        node.start_proxy_and_scheduler(env, &binaries)?;
        node.wait_ready(env).await?;
        eprintln!("[node] {} Ready: {:.2?}", node.name, started.elapsed());
        Ok(node)
    }

    /// Imports a docker-archive or OCI archive into the node's containerd, for pods with
    /// `imagePullPolicy: Never`.
    pub async fn import_image(&self, archive: &Path) -> anyhow::Result<()> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.containerd_socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive);
        crate::mesh::run(cmd).await?;
        Ok(())
    }

    /// Starts containerd; returns its pid.
    async fn start_containerd(&self, env: &TestEnv) -> anyhow::Result<u32> {
        let d = &self.dir;
        let config = containerd_config(d, &self.containerd_socket);
        std::fs::create_dir_all(d.join("cni"))?;
        let network = json!({
            "cniVersion": "1.0.0",
            "name": "mesh-testenv",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "mesh-cni0",
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                             "routes": [{"dst": "0.0.0.0/0"}],
                             "dataDir": d.join("cni-ipam").display().to_string()},
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(d.join("cni/10-mesh-testenv.conflist"), network.to_string())?;
        let config_path = d.join("containerd.toml");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config_path);
        let pid = env.spawn_process("node/containerd", cmd)?;
        env.wait_until(
            "containerd's socket not there",
            env.dir(),
            Duration::from_secs(30),
            Duration::from_millis(50),
            || std::future::ready(self.containerd_socket.exists()),
        )
        .await?;
        Ok(pid)
    }

    async fn import_pause(&self, binaries: &NodeBinaries) -> anyhow::Result<()> {
        let archive = self.dir.join("pause.tar");
        sandbox_image_archive(
            &binaries.path("pause"),
            &self.dir.join("pause-image"),
            &archive,
        )?;
        self.import_image(&archive).await
    }

    /// Starts the kubelet; returns its pid.
    fn start_kubelet(&self, env: &TestEnv, binaries: &NodeBinaries) -> anyhow::Result<u32> {
        let d = &self.dir;
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // This machine has cgroup v1 hierarchies only.
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": format!("unix://{}", self.containerd_socket.display()),
            "authentication": {"anonymous": {"enabled": true}, "webhook": {"enabled": false}},
            "authorization": {"mode": "AlwaysAllow"},
            "failSwapOn": false,
            "readOnlyPort": 0,
            "port": free_port()?,
            "healthzPort": 0,
            // Imported images cannot be pulled again: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%"},
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": false,
            "podLogsDir": d.join("pod-logs").display().to_string(),
        });
        let config_path = d.join("kubelet.json");
        std::fs::write(&config_path, config.to_string())?;
        let mut cmd = Command::new(binaries.path("kubelet"));
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--kubeconfig")
            .arg(&env.primary().kubeconfig)
            .arg("--root-dir")
            .arg(d.join("kubelet"))
            .arg("--cert-dir")
            .arg(d.join("kubelet-pki"))
            .args(["--hostname-override", &self.name])
            .args(["--node-ip", &env.primary().host().to_string()])
            .arg("--v=1");
        env.spawn_process("node/kubelet", cmd)
    }

    /// Writes [`Node::cleanup`]: the kubelet and containerd (`pids`) first, so that nothing
    /// restarts a container being killed.
    fn write_cleanup(&self, binaries: &NodeBinaries, pids: &[u32]) -> anyhow::Result<()> {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let restore: String = self
            .sysctls
            .iter()
            .map(|(path, value)| format!("echo {} > {}\n", value.trim(), path.display()))
            .collect();
        let script = format!(
            r#"# Generated by mesh-testenv: stops the node of {dir}.
kill -KILL {pids} 2>/dev/null
kill_tree() {{ for c in $(pgrep -P "$1"); do kill_tree "$c"; done; kill -KILL "$1" 2>/dev/null; }}
for shim in $(pgrep -f -- "-address {socket}"); do kill_tree "$shim"; done
awk -v d="{dir}/" 'index($2, d) == 1 {{print $2}}' /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
{proxy} --cleanup >/dev/null 2>&1
ip link delete mesh-cni0 2>/dev/null
for table in nat filter mangle; do iptables -t $table -X KUBE-KUBELET-CANARY 2>/dev/null; done
for chain in INPUT OUTPUT; do iptables -D $chain -j KUBE-FIREWALL 2>/dev/null; done
iptables -F KUBE-FIREWALL 2>/dev/null; iptables -X KUBE-FIREWALL 2>/dev/null
# Pod network namespaces no process uses any more.
for ns in $(ls /run/netns 2>/dev/null | grep '^cni-'); do [ -n "$(ip netns pids "$ns")" ] || ip netns delete "$ns"; done
{restore}true
"#,
            dir = self.dir.display(),
            pids = pids.join(" "),
            socket = self.containerd_socket.display(),
            proxy = binaries.path("kube-proxy").display(),
        );
        std::fs::write(&self.cleanup, script)?;
        Ok(())
    }

    fn start_proxy_and_scheduler(
        &self,
        env: &TestEnv,
        binaries: &NodeBinaries,
    ) -> anyhow::Result<()> {
        let kubeconfig = &env.primary().kubeconfig;
        let mut proxy = Command::new(binaries.path("kube-proxy"));
        proxy
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--hostname-override", &self.name])
            .args(["--proxy-mode", "iptables"])
            .args(["--cluster-cidr", POD_SUBNET])
            // Setting nf_conntrack_max needs rights this machine withholds.
            .arg("--conntrack-max-per-core=0")
            .arg(format!("--metrics-bind-address=127.0.0.1:{}", free_port()?))
            .arg(format!("--healthz-bind-address=127.0.0.1:{}", free_port()?))
            // Lowering its OOM score needs rights this machine withholds.
            .arg("--oom-score-adj=0")
            .arg("--v=1");
        env.spawn_process("node/kube-proxy", proxy)?;
        let mut scheduler = Command::new(binaries.path("kube-scheduler"));
        scheduler
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--authentication-kubeconfig")
            .arg(kubeconfig)
            .arg("--authorization-kubeconfig")
            .arg(kubeconfig)
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()?))
            .arg("--v=1");
        env.spawn_process("node/kube-scheduler", scheduler)?;
        Ok(())
    }

    async fn wait_ready(&self, env: &TestEnv) -> anyhow::Result<()> {
        let nodes: kube::Api<KubeNode> = kube::Api::all(env.primary().client().await?);
        let ready_and_untainted = || async {
            let Ok(Some(node)) = nodes.get_opt(&self.name).await else {
                return false;
            };
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let tainted = node
                .spec
                .and_then(|s| s.taints)
                .is_some_and(|t| !t.is_empty());
            ready && !tainted
        };
        env.wait_until(
            &format!("node {} not Ready and untainted", self.name),
            &env.dir().join("node"),
            READY_TIMEOUT,
            Duration::from_millis(200),
            ready_and_untainted,
        )
        .await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("sh").arg(&self.cleanup).status();
    }
}

/// The configuration of a node's containerd: its root and state under `dir`, its socket at
/// `socket`, its CNI networks in `dir/cni`, and the settings this machine needs (cgroupfs, no
/// OOM score changes).
pub fn containerd_config(dir: &Path, socket: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The machine withholds CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni}"
"#,
        root = dir.join("containerd-root").display(),
        state = dir.join("containerd-state").display(),
        socket = socket.display(),
        cni = dir.join("cni").display(),
    )
}

/// Runs `cleanup` once this process is gone, from a process of its own group (the
/// environment's group is killed at the same time).
fn spawn_cleanup_watchdog(cleanup: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let owner = std::process::id();
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {owner} 2>/dev/null; do sleep 0.5; done; sh \"$0\""
        ))
        .arg(cleanup)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the node's cleanup watchdog (sh)")?;
    Ok(())
}

/// A one-layer docker-archive of the static program `program` as `/pause`, tagged
/// [`PAUSE_IMAGE`]: what `ctr images import` loads.
fn sandbox_image_archive(program: &Path, work: &Path, archive: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(work);
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::copy(program, rootfs.join("pause"))?;
    let shell = |script: &str| -> anyhow::Result<String> {
        let out = Command::new("bash")
            .args(["-c", script])
            .current_dir(work)
            .output()
            .context("running bash")?;
        if !out.status.success() {
            bail!(
                "building the sandbox image: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    shell("tar --numeric-owner --owner=0 --group=0 -C rootfs -cf layer.tar pause")?;
    let digest = shell("sha256sum layer.tar | cut -d' ' -f1")?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    std::fs::write(work.join("config.json"), config.to_string())?;
    let manifest = json!([{
        "Config": "config.json",
        "RepoTags": [PAUSE_IMAGE],
        "Layers": ["layer.tar"],
    }]);
    std::fs::write(work.join("manifest.json"), manifest.to_string())?;
    shell(&format!(
        "tar -cf '{}' manifest.json config.json layer.tar",
        archive.display()
    ))?;
    Ok(())
}

fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name")?
        .trim()
        .to_lowercase();
    Ok(name)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}
