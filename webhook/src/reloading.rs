//! Values made from files and made again when the files change: the serving certificate
//! ([`crate::tls`]) and the client CA ([`crate::client_auth`]), both usually mounted from a
//! Secret or ConfigMap that the kubelet swaps in place.
//!
//! Handshakes take the value loaded last. A background task checks the files' modification
//! time and size about once a second and loads them again when either changed. A file that
//! cannot be used keeps the previous value and is retried on the next tick: a rotation caught
//! halfway (new certificate, old key) fails once or twice, never serves half a pair.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;

/// How often the files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileVersion(Option<SystemTime>, u64);

/// A value `load`ed from `paths`, loaded again when one of them changes.
pub(crate) struct Reloading<T, E> {
    /// What the value is, in log lines.
    what: &'static str,
    paths: Vec<PathBuf>,
    /// The error of a file that cannot be looked at.
    unreadable: fn(PathBuf, io::Error) -> E,
    load: Box<dyn Fn() -> Result<T, E> + Send + Sync>,
    current: RwLock<(T, Vec<FileVersion>)>,
}

impl<T, E> Reloading<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: std::error::Error + Send + 'static,
{
    /// Loads the value once; fails if it cannot be (the process must not start without it).
    pub(crate) fn load(
        what: &'static str,
        paths: Vec<PathBuf>,
        unreadable: fn(PathBuf, io::Error) -> E,
        load: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, E> {
        // The versions before the load: a change during it is loaded again at the next check.
        let versions = versions(&paths, unreadable)?;
        let value = load()?;
        Ok(Arc::new(Self {
            what,
            paths,
            unreadable,
            load: Box::new(load),
            current: RwLock::new((value, versions)),
        }))
    }

    /// The value loaded last.
    pub(crate) fn current(&self) -> T {
        // Only whole values are ever stored, so a poisoned lock still holds a valid one.
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.0.clone()
    }

    /// Loads the value again if a file changed since the last load. `Ok(true)` when the new
    /// value is used now; on error the previous one stays.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, E> {
        let versions = versions(&self.paths, self.unreadable)?;
        let unchanged = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            current.1 == versions
        };
        if unchanged {
            return Ok(false);
        }
        let value = (self.load)()?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (value, versions);
        Ok(true)
    }

    /// Checks the files every [`RELOAD_INTERVAL`] until `shutdown`.
    pub(crate) async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let path = self.paths.first().cloned().unwrap_or_default();
        reload_periodically(self.what, path, move || self.reload_if_changed(), shutdown).await;
    }

    /// The files the value is made from.
    pub(crate) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

fn versions<E>(
    paths: &[PathBuf],
    unreadable: fn(PathBuf, io::Error) -> E,
) -> Result<Vec<FileVersion>, E> {
    paths
        .iter()
        .map(|path| version(path).map_err(|source| unreadable(path.clone(), source)))
        .collect()
}

fn version(path: &Path) -> io::Result<FileVersion> {
    std::fs::metadata(path).map(|m| FileVersion(m.modified().ok(), m.len()))
}

/// Calls `reload` every [`RELOAD_INTERVAL`] until `shutdown` and logs what it swapped in. A
/// failure keeps what is loaded and is logged once until a reload succeeds again: a rotation in
/// progress fails once or twice.
async fn reload_periodically<E: std::error::Error + Send + 'static>(
    what: &'static str,
    path: PathBuf,
    reload: impl Fn() -> Result<bool, E> + Clone + Send + 'static,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(RELOAD_INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
        // Blocking file reads stay off the async workers.
        match tokio::task::spawn_blocking(reload.clone()).await {
            Ok(Ok(true)) => {
                failing = false;
                tracing::info!(path = %path.display(), "reloaded {what}");
            }
            Ok(Ok(false)) => failing = false,
            Ok(Err(error)) => {
                if !failing {
                    tracing::warn!(
                        error = %mesh_core::failure::error_chain(&error),
                        "cannot reload {what}, keeping the current one"
                    );
                }
                failing = true;
            }
            Err(error) => tracing::warn!(error = %error, "{what} reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log lines written while the subscriber this returns is the default.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("log").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {}", .0.display())]
    struct Unreadable(PathBuf, #[source] io::Error);

    #[tokio::test]
    async fn a_failed_reload_is_logged_with_its_cause() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let missing = PathBuf::from("/nonexistent/tls.crt");
        let reload = {
            let path = missing.clone();
            move || -> Result<bool, Unreadable> {
                Err(Unreadable(
                    path.clone(),
                    io::Error::from(io::ErrorKind::NotFound),
                ))
            }
        };
        let logged = async {
            while !log.text().contains("cannot reload") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            () = reload_periodically("certificate", missing, reload, CancellationToken::new()) => {}
            result = tokio::time::timeout(RELOAD_INTERVAL * 10, logged) => {
                result.expect("no reload failure logged");
            }
        }
        let text = log.text();
        assert!(
            text.contains("cannot read /nonexistent/tls.crt: entity not found"),
            "{text}"
        );
    }

    #[test]
    fn a_value_is_loaded_again_only_when_a_file_changed_and_kept_when_it_cannot_be() {
        let dir = crate::tls::testdata::tempdir::TempDir::new();
        let path = dir.path().join("value");
        std::fs::write(&path, "1").expect("write");
        let read = {
            let path = path.clone();
            move || -> Result<u32, Unreadable> {
                let text =
                    std::fs::read_to_string(&path).map_err(|e| Unreadable(path.clone(), e))?;
                text.trim().parse().map_err(|_| {
                    Unreadable(path.clone(), io::Error::from(io::ErrorKind::InvalidData))
                })
            }
        };
        let value = Reloading::load("value", vec![path.clone()], Unreadable, read).expect("load");
        assert_eq!(value.current(), 1);
        assert!(!value.reload_if_changed().expect("check"), "unchanged");
        std::fs::write(&path, "not a number").expect("write");
        assert!(value.reload_if_changed().is_err());
        assert_eq!(value.current(), 1, "the previous value stays");
        std::fs::write(&path, "22").expect("write");
        assert!(value.reload_if_changed().expect("reload"));
        assert_eq!(value.current(), 22);
        std::fs::remove_file(&path).expect("remove");
        assert!(value.reload_if_changed().is_err());
        assert_eq!(value.current(), 22);
    }
}
