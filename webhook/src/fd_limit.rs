//! The open-files limit. Every connection is a file descriptor, and the usual soft limit
//! (1024) is far below what `--max-connections` allows: raise it to the hard limit at startup,
//! as Go's runtime does.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read or raise the open-files limit (RLIMIT_NOFILE)")]
    Rlimit(#[source] nix::Error),
}

/// Raises the soft RLIMIT_NOFILE to the hard one; returns the limit now in force.
pub fn raise() -> Result<u64, Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(Error::Rlimit)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(Error::Rlimit)?;
    }
    Ok(hard)
}

#[cfg(test)]
mod tests {
    #[test]
    fn soft_limit_is_the_hard_one_after_raising() {
        let limit = super::raise().expect("raise");
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .expect("read");
        assert_eq!((soft, hard), (limit, limit));
    }
}
