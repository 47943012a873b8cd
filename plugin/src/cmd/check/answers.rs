//! What the answer of one read says, as every judge of `check` takes it.

use k8s_openapi::api::authentication::v1::SelfSubjectReview;

use crate::mesh_state::{RemoteError, RemoteResult};

/// A read of one object by name: absent is `Ok(None)`.
pub type Fetched<T> = std::result::Result<Option<T>, kube::Error>;

/// Whether the remote answered who the stored credentials are: a refusal (403) counts, as
/// the remote authenticated them; any other failure ends the cluster's checks.
pub fn reached(whoami: &RemoteResult<SelfSubjectReview>) -> bool {
    match whoami {
        Ok(_) => true,
        Err(e) => refused(e),
    }
}

/// Whether the remote authenticated the caller, then refused (403).
pub fn refused(e: &RemoteError) -> bool {
    matches!(e, RemoteError::Call(kube::Error::Api(s)) if s.code == 403)
}
