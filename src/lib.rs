//! tidegate: a durable, rate-matching HTTP proxy between AI producers and
//! the downstream APIs they feed. The modules follow a message, then stand
//! to the side (docs/architecture.md has the map and what each may import;
//! `tests/architecture.rs` keeps it true):
//!
//! - [`ingress`] takes a producer's request and admits it (auth, destination,
//!   path, size, backpressure); the 202 goes out only once the queue has
//!   made the message durable.
//! - [`handoff`] validates, routes and labels a body on the way in, and
//!   transforms and formats it at each delivery attempt (jq in a sandbox,
//!   JSON Schema, CSV/form); pure functions of a body, no I/O.
//! - [`queue`] is the durable queue behind one contract: the SQLite journal
//!   of a single instance ([`queue::sqlite`]) or NATS JetStream in cluster
//!   mode ([`queue::jetstream`]).
//! - [`dispatch`] runs one worker per destination: it takes deliverable
//!   messages at the destination's rate and concurrency and decides, through
//!   a pure policy, what happens after each attempt.
//! - [`delivery`] performs one HTTP attempt and classifies its outcome.
//!
//! To the side:
//!
//! - [`review`]: held messages, decisions, corrections, quality, and the
//!   governance thresholds that pause a flow and raise alerts.
//! - [`chain`]: the map of producers, destinations and what they feed, and
//!   the capacity plan; pure functions of the config and live figures.
//! - [`ops`]: what the admin API and the console share (describe, find,
//!   pause, resume, replay, purge, preview).
//! - [`admin`] (health, metrics endpoint, the `/v1` API), [`console`] (the
//!   web pages at `/ui/`) and [`cli`] (the command line): the surfaces, which
//!   never import each other.
//! - [`config`] (parsing and validation, and the config in force),
//!   [`auth`] (tokens and the Origin and Host checks), [`problem`]
//!   (problem+json answers), [`metrics`], [`reload`] (applying a new config
//!   to a running instance), and [`app`], which wires it all and owns
//!   graceful shutdown.

pub mod admin;
pub mod app;
pub mod auth;
pub mod chain;
pub mod cli;
pub mod config;
pub mod console;
pub mod delivery;
pub mod dispatch;
pub mod handoff;
pub mod ingress;
pub mod listener;
pub mod metrics;
pub mod ops;
pub mod problem;
pub mod queue;
pub mod reload;
pub mod review;
pub mod text;
