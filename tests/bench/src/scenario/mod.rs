//! One module per scenario; each returns its figures as markdown.

pub mod admission;
pub mod propagation;
pub mod resync;
pub mod scale;
pub mod services;
pub mod throughput;
