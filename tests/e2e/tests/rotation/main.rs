//! Token rotation: `kubectl mesh rotate` replaces the stored tokens while label changes flow,
//! revokes the old ones, survives an interruption, and repairs an expired token; status,
//! check, list and the webhook's metrics say when a token expires; the webhook renews
//! time-bound tokens; a cluster another primary took over gets no token back; a view token
//! whose Secret the primary lost is not left valid; a dry run goes on past a remote it cannot
//! reach.
//!
//! Every test starts a mesh of its own: rotation revokes the tokens the webhook syncs with,
//! and some tests stop the webhook or edit the stored credentials.

mod asked_rights;
mod edited_server;
mod expired;
mod follower;
mod interrupted;
mod renewal;
mod support;
mod taken_over;
mod under_load;
mod unreachable;
mod unsyncable;
mod view_identity;
