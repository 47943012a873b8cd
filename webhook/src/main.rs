//! `mesh-webhook`: see `mesh_webhook::args::Args` for the command line.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube's client and the server both use rustls with ring; one process-wide provider.
    // An error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    mesh_webhook::args::Args::parse_and_run().await
}
