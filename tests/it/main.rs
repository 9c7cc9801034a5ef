//! End-to-end tests: the real `tidegate` binary, real downstream HTTP
//! servers on 127.0.0.1 ephemeral ports, real signals and files.

mod support;

/// The queue these tests run on (see `tests/cluster_suite.rs` for the same
/// behaviour tests on JetStream).
pub const BACKEND: support::Backend = support::Backend::Sqlite;

mod backpressure;
mod batching;
mod browser;
mod chain;
mod cluster;
mod console;
mod crash_loop;
mod dashboards;
mod data_traps;
mod disk;
mod downstream_faults;
mod failure_modes;
mod forwarding;
mod handoff;
mod hardening;
mod hostile;
mod lifecycle;
mod openapi;
mod operations;
mod ordering;
mod people;
mod problems;
mod producers;
mod rate;
mod reference;
mod review;
mod sessions;
