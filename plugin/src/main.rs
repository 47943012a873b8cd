//! `kubectl-mesh`, run by kubectl as `kubectl mesh`.
#![forbid(unsafe_code)]

fn main() {
    // kube's rustls client needs a process-wide crypto provider; ring is the one compiled in.
    // Installing fails only if one is already installed, which is then as good.
    let _ = rustls::crypto::ring::default_provider().install_default();

    if let Err(err) = kubectl_mesh::Cli::parse_and_run() {
        if err.is_silent() {
            std::process::exit(err.exit_code());
        }
        let prefix = if kubectl_mesh::output::colors_for(&std::io::stderr()) {
            "\x1b[31merror:\x1b[0m"
        } else {
            "error:"
        };
        eprintln!("{prefix} {}", err.line());
        std::process::exit(err.exit_code());
    }
}
