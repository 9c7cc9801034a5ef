//! tidegate: a durable, rate-matching HTTP proxy between AI producers and
//! the downstream APIs they feed.
//!
//! The modules follow a message:
//!
//! - [`ingress`] takes a producer's request, admits it (destination, size,
//!   auth, backpressure) and hands it to the journal; the 202 goes out only
//!   once the journal has committed it.
//! - [`handoff`] validates, routes and labels the body on the way in, and
//!   transforms and formats it at each delivery attempt.
//! - [`journal`] is the durable queue (SQLite, group commit): per-destination
//!   FIFO, scheduled retries, dead letters, history.
//! - [`dispatch`] runs one worker per destination: it takes deliverable
//!   messages at the destination's rate and concurrency, and decides, through
//!   a pure policy, what happens after each attempt.
//! - [`delivery`] performs one HTTP attempt and classifies its outcome.
//!
//! To the side: [`console`] (the web pages at `/ui/` on the admin
//! listener), [`chain`] (the map of producers, destinations and what
//! they feed, and the capacity plan), [`review`] (held messages, decisions, corrections, quality
//! and the governance thresholds that pause a flow, alerts), [`admin`] (health, operations, metrics endpoint), [`auth`]
//! (tokens, and the Origin and Host checks both listeners apply), [`metrics`],
//! [`config`] (parsing and validation), [`cli`] (the operator commands,
//! which talk to the admin API), [`reload`] (applying a new config to
//! a running instance), and [`app`], which wires it all and owns graceful
//! shutdown.

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
pub mod journal;
pub mod metrics;
pub mod problem;
pub mod reload;
pub mod review;
