//! Ports for the environment's servers, chosen below the kernel's range for outgoing
//! connections: between finding a port free and a server binding it, any client connecting
//! anywhere may be given an ephemeral port, and on a busy machine sometimes this one (the
//! apiserver then exits with "address already in use"). Ports under that range are never
//! handed out that way. Another test choosing the same port before either binds it (tests of
//! one binary start their environments at once, binaries may run side by side) would see it
//! free too: each chosen port is also claimed, with a lock on a file named after it, which
//! every test process on the machine respects and the kernel drops when the process exits.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};

/// The lowest port tried: clear of well-known and common development ports.
const FLOOR: u16 = 20_000;

/// A loopback port no one listens on now, outside the ephemeral range.
pub fn free_port() -> anyhow::Result<u16> {
    free_port_below(ephemeral_start().unwrap_or(32_768))
}

/// [`free_port`] for a machine whose ephemeral range starts at `ceiling`.
fn free_port_below(ceiling: u16) -> anyhow::Result<u16> {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    if ceiling > FLOOR + 1_000 {
        let random = RandomState::new();
        let draws = (0..500).map(|_| {
            let draw = random.hash_one(DRAWS.fetch_add(1, Ordering::Relaxed));
            FLOOR + u16::try_from(draw % u64::from(ceiling - FLOOR)).unwrap_or(0)
        });
        if let Some(port) = first_free(draws) {
            return Ok(port);
        }
    }
    // A machine whose ephemeral range starts low: ports the kernel gives, claimed alike.
    let given = std::iter::repeat_with(|| {
        let listener = TcpListener::bind(("127.0.0.1", 0)).ok()?;
        Some(listener.local_addr().ok()?.port())
    });
    first_free(given.take(100).flatten()).context("no loopback port is free to claim")
}

/// The first of `ports` no one listens on now and no test process has claimed; it is claimed.
fn first_free(mut ports: impl Iterator<Item = u16>) -> Option<u16> {
    ports.find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok() && claim(*port))
}

/// Claims `port` for this process until it exits; false if another claim holds it.
fn claim(port: u16) -> bool {
    /// Held for the life of the process: a port is never chosen twice, even after its server
    /// stopped (a restarted server may want it back).
    static CLAIMS: Mutex<Vec<Flock<File>>> = Mutex::new(Vec::new());
    let Ok(file) = claims_dir().and_then(|dir| {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
    }) else {
        // Nowhere to record claims: the bind test alone, as on a machine without /tmp.
        return true;
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(claimed) => {
            CLAIMS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(claimed);
            true
        }
        Err(_) => false,
    }
}

/// One lock file per claimed port, shared by every test process of the machine.
fn claims_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join("mesh-testenv-ports");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Waits until server `name` accepts connections on `address` (`host:port`). Fails as soon as
/// `alive` does (the server has died), or after 30 s, pointing at `log`.
pub(crate) async fn wait_listening(
    name: &str,
    address: &str,
    log: &Path,
    alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    crate::env::poll_until(
        &format!("{name} did not listen on {address}"),
        log,
        Duration::from_secs(30),
        Duration::from_millis(50),
        alive,
        || std::future::ready(std::net::TcpStream::connect(address).is_ok()),
    )
    .await
}

/// `127.0.0.1:<free_port>`.
pub fn free_address() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

/// The first port of the kernel's range for outgoing connections.
fn ephemeral_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range() {
        let ceiling = ephemeral_start().unwrap_or(32_768);
        for _ in 0..20 {
            let port = free_port().unwrap();
            assert!((FLOOR..ceiling).contains(&port), "{port}");
        }
    }

    /// Rebinding a port `free_port` returned would race with every other server on the machine
    /// (a CI run once lost that race); a port held here is deterministic.
    #[test]
    fn a_port_someone_listens_on_is_passed_over() {
        let listening = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let held = listening.local_addr().unwrap().port();
        let spare = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let spare_port = spare.local_addr().unwrap().port();
        drop(spare);
        assert_eq!(first_free([held].into_iter()), None);
        assert_eq!(first_free([held, spare_port].into_iter()), Some(spare_port));
    }

    /// A port another test chose and has not bound yet looked free (how a CI run most likely
    /// lost an apiserver's port); its claim is seen. A lock through another open file stands
    /// in for the other process: flock locks conflict between open files alike.
    #[test]
    fn a_port_another_process_claimed_is_passed_over() {
        let spare = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let claimed = spare.local_addr().unwrap().port();
        drop(spare);
        let file = File::create(claims_dir().unwrap().join(claimed.to_string())).unwrap();
        let _claim = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
        assert_eq!(first_free([claimed].into_iter()), None);
    }

    #[test]
    fn a_chosen_port_is_not_chosen_again() {
        let spare = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = spare.local_addr().unwrap().port();
        drop(spare);
        assert_eq!(first_free([port].into_iter()), Some(port));
        assert_eq!(first_free([port].into_iter()), None);
    }

    #[test]
    fn a_port_the_kernel_gives_is_claimed_too() {
        let port = free_port_below(FLOOR).unwrap();
        assert_eq!(first_free([port].into_iter()), None);
    }
}
