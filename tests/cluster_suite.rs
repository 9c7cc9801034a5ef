//! The behaviour tests of `tests/it` that do not depend on SQLite's files
//! (forwarding, idempotency, `Prefer: wait`, retries and `Retry-After`, the
//! four failure modes, dead letters and replay, pause and resume, rate and
//! in-flight limits, backpressure, order per key and halted keys, problem
//! codes, reload, metrics, the review station and governance, people,
//! roles and the audit trail), run
//! again from the same source with the queue on NATS JetStream (SPEC §13):
//! `support::backend_storage` gives every tidegate of this binary
//! `storage.backend = "jetstream"` on one real `nats-server` started for
//! the process, each under a stream prefix of its own.

#[path = "it/support/mod.rs"]
mod support;

pub const BACKEND: support::Backend = support::Backend::JetStream;

#[path = "it/backpressure.rs"]
mod backpressure;
#[path = "it/batching.rs"]
mod batching;
#[path = "it/failure_modes.rs"]
mod failure_modes;
#[path = "it/forwarding.rs"]
mod forwarding;
#[path = "it/operations.rs"]
mod operations;
#[path = "it/ordering.rs"]
mod ordering;
#[path = "it/people.rs"]
mod people;
#[path = "it/problems.rs"]
mod problems;
#[path = "it/rate.rs"]
mod rate;
#[path = "it/review.rs"]
mod review;
