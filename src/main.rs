//! The `tidegate` binary: parse the command line and run it (`cli::run`,
//! which runs the proxy itself for `serve`). All the work is in the library.

use std::process::ExitCode;

use clap::Parser;

// glibc's allocator took about a tenth of the CPU under relay load (small,
// short-lived buffers freed on other threads); mimalloc halves that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A handoff worker (see `tidegate::handoff`): started by the server
    // itself, before anything else (no runtime, no logging, no arguments).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == tidegate::handoff::WORKER_ARG)
    {
        return tidegate::handoff::worker_main();
    }
    tidegate::cli::run(tidegate::cli::Args::parse())
}
