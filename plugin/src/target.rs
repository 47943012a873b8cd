//! Which cluster a command reached, as its messages name it.

/// One cluster as a command reaches it, for messages.
#[derive(Clone, Debug)]
pub struct Target {
    /// How messages name it: "the primary", "remote cluster east".
    pub label: String,
    /// Its API server URL.
    pub server: String,
    /// What to check when it cannot be reached: "the server address in east.yaml".
    pub where_configured: String,
}
