//! The `mesh-webhook` process: admission (a pure decision), the push to every remote under a
//! deadline, the reconciler and its leader election, metrics and the TLS server. What it shares
//! with the plugin (the rule, `MeshCluster`, remote clients, the label writer) is `mesh-core`.
#![forbid(unsafe_code)]

pub mod admission;
pub mod app;
pub mod args;
pub mod backoff;
pub mod client_auth;
pub mod cluster_status;
pub mod events;
pub mod fd_limit;
pub mod http;
pub mod in_flight;
pub mod injectors;
pub mod leader;
pub mod listen;
pub mod metrics;
mod primary_view;
mod primary_write;
pub mod propagate;
pub mod push_outcome;
pub mod push_queue;
pub mod readiness;
pub mod reconcile;
mod reloading;
mod remote_watch;
pub mod renewal;
pub mod shared_state;
pub mod tls;
mod watch_events;
