//! Real Kubernetes control planes on loopback, for kubectl-mesh's tests and demo.
//!
//! [`TestEnv::start`] brings up a primary and N remote clusters, each its own kube-apiserver and
//! kube-controller-manager with its own CA, serving certificate, admin client certificate and
//! service-account key pair, over one shared etcd with a distinct prefix per cluster. The
//! binaries are built once per machine from the Go module proxy ([`binaries`]).
//!
//! Every process joins one process group. Dropping the [`TestEnv`] kills the group; a watchdog
//! kills it too when the owning process dies without dropping (a panic in a static, SIGKILL),
//! so no test run leaks control planes.
#![forbid(unsafe_code)]

pub mod binaries;
pub mod endless_answer;
mod env;
pub mod http;
pub mod http_proxy;
pub mod image;
pub mod istio;
pub mod json_doc;
mod kubeconfig;
pub mod mesh;
pub mod node;
mod pki;
pub mod ports;
mod process;
pub mod proxy;
mod webhook_client;

pub use binaries::Binaries;
pub use env::{Cluster, Options, TestEnv, client_from};
pub use webhook_client::WebhookClient;

/// Kubernetes release the test environment builds and runs.
pub const KUBERNETES_VERSION: &str = "1.35.4";
/// etcd release the test environment builds and runs.
pub const ETCD_VERSION: &str = "3.6.16";

/// Where a workspace binary (`kubectl-mesh`, `mesh-webhook`) built by cargo lives, seen from
/// the running test or tool: test executables sit in `target/<profile>/deps/`, tools in
/// `target/<profile>/`.
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent();
    }
    anyhow::bail!(
        "binary {name} not found next to {}; build it first: cargo build --workspace --bins",
        exe.display()
    )
}
