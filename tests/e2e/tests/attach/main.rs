//! `kubectl mesh attach` and `detach` against real clusters: what they create on both sides,
//! what the stored credentials may do, every refusal leaving nothing behind, the rollback of
//! an interrupted attach, the remote guard, what `check` says about it, and detach finding
//! everything again.
//!
//! No webhook process runs here but in the tests that start one for a moment: the mesh is
//! installed with an unreachable webhook URL (failurePolicy Ignore), which is all attach needs
//! on the primary. Tests that attach the same remote hold that remote's lock, and every test
//! starts by cleaning its remote, so a failed test cannot make the next one fail.

mod asked_rights;
mod check;
mod detach;
mod guard;
mod lifecycle;
mod primaries;
mod reattach;
mod refusals;
mod rollback;
mod scope;
mod support;
mod wait;
