//! `mesh-bench`: see `mesh_bench::Cli`. Run as `cargo run --release -p mesh-bench -- <scenario|all>`.
#![forbid(unsafe_code)]

use clap::Parser as _;

#[tokio::main]
async fn main() {
    // kube's clients and the load generator all use rustls with ring; one provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(error) = mesh_bench::Cli::parse().run().await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
