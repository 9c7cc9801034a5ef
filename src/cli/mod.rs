//! The `tidegate` command line: `serve` runs the proxy (`crate::app`);
//! `check`, `journal verify`, `handoff test`, `map` and `plan` work from
//! the config file alone (`local`); the rest are operator commands that
//! talk to a running instance's admin API (`operate`, through `client`),
//! printing tables (`render`) or the API's JSON with `--json`.
//!
//! Output that is not wanted any more (`tidegate status | head`) is not
//! an error: a broken pipe ends the command quietly, never with a panic.

mod args;
mod client;
mod local;
mod operate;
mod render;

use std::process::ExitCode;

use serde_json::json;

pub use args::Args;
use args::{Command, HandoffAction, JournalAction, MapFormat};
pub use client::{CliError, Client};

/// The config file commands read when none is named.
const DEFAULT_CONFIG: &str = "config/tidegate.toml";

/// Runs the command `args` names.
pub fn run(args: Args) -> ExitCode {
    match args.command {
        Command::Check { config } => match crate::config::Config::load(&config) {
            Ok(c) => {
                print!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            ingress_listen,
            admin_listen,
        } => {
            // Through the environment, so that a reload reads them again.
            // Set before any thread starts.
            for (key, value) in [
                (crate::config::INGRESS_LISTEN_ENV, ingress_listen),
                (crate::config::ADMIN_LISTEN_ENV, admin_listen),
            ] {
                if let Some(v) = value {
                    std::env::set_var(key, v);
                }
            }
            local::serve(config)
        }
        Command::Journal {
            action: JournalAction::Verify { config },
        } => local::verify(config),
        Command::Handoff {
            action:
                HandoffAction::Test {
                    config,
                    destination,
                    file,
                    path,
                    content_type,
                    json,
                    explain,
                },
        } => match explain {
            true => local::handoff_explain(config, &destination),
            false => local::handoff_test(config, &destination, file, &path, &content_type, json),
        },
        Command::Map { config, admin, format } => local::chain_command(config, admin, |chain, _, _| {
            let out = match format {
                MapFormat::Mermaid => crate::chain::map::mermaid(chain),
                MapFormat::Dot => crate::chain::map::dot(chain),
                MapFormat::Json => crate::chain::map::json(chain),
            };
            (out, true)
        }),
        Command::Plan { config, admin, json } => local::chain_command(config, admin, move |chain, source, live| {
            if json {
                let plans: Vec<serde_json::Value> = chain
                    .plans()
                    .into_iter()
                    .map(|(l, p)| {
                        json!({"destination": l.destination, "inputs": {
                        "expected_volume": l.expected_volume, "rate": l.plan_inputs().rate,
                        "batch_size": l.batch_size,
                        "latency_objective_seconds": l.latency_objective_seconds,
                        "mean_size": l.plan_inputs().mean_size}, "plan": p})
                    })
                    .collect();
                let ok = chain.plans().iter().all(|(_, p)| !p.verdict.fails());
                (
                    serde_json::to_string_pretty(&json!({"ok": ok, "destinations": plans})).unwrap_or_default() + "\n",
                    ok,
                )
            } else {
                render::render_plan(chain, source, live)
            }
        }),
        other => operate::operator(other),
    }
}

/// The config at `path`, or the exit of a command that cannot run without
/// it (the error, with file:line:col, on standard error).
fn load(path: &std::path::Path) -> Result<crate::config::Config, ExitCode> {
    crate::config::Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })
}

/// An async runtime from `builder`, or the exit of a command that needs one.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// A file's bytes, or standard input's for `-`.
fn read_input(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().lock().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::read(path).map(|b| bytes = b)
    };
    read.map(|()| bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}
