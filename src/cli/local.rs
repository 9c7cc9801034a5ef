//! The commands that need no running instance: `serve` (which starts one),
//! and `check`, `journal verify`, `handoff test`, `map` and `plan`, which
//! read the config file (`map` and `plan` add a live instance's figures
//! when given `--admin`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::render;
use super::{load, read_input, runtime, Client};
use crate::config::LogFormat;

/// `map` and `plan`: the chain of the config at `config`, with a running
/// instance's figures when `admin` is given; `show` renders it and says
/// whether the command succeeds.
pub(super) fn chain_command(
    config: PathBuf,
    admin: Option<String>,
    show: impl FnOnce(&crate::chain::Chain, &str, bool) -> (String, bool),
) -> ExitCode {
    let loaded = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut chain = crate::chain::Chain::of(&loaded);
    if let Some(url) = &admin {
        let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
            Ok(rt) => rt,
            Err(code) => return code,
        };
        let client = Client::new(url, std::env::var("TIDEGATE_ADMIN_TOKEN").ok());
        match rt.block_on(super::client::live_chain(&client, chain, Duration::from_secs(1))) {
            Ok(c) => chain = c,
            Err(e) => {
                eprintln!("tidegate: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let (out, ok) = show(&chain, &config.display().to_string(), admin.is_some());
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub(super) fn serve(config: PathBuf) -> ExitCode {
    let config = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_tracing(config.log.format, &config.log.level);
    let rt = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(crate::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "tidegate failed");
            eprintln!("tidegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn verify(config: PathBuf) -> ExitCode {
    let config = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::queue::sqlite::verify(&config.storage.path) {
        Ok(report) => {
            print!("{}", report.render(&config.storage.path));
            if report.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tidegate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tidegate handoff test`: the preview the admin API would give, from the
/// config file alone.
pub(super) fn handoff_test(config: PathBuf, destination: &str, file: PathBuf, json: bool) -> ExitCode {
    let config = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(entry) = config.destination(destination) else {
        let names: Vec<&str> = config.destinations.iter().map(|d| d.name.as_str()).collect();
        eprintln!(
            "tidegate: no destination {destination:?} in the config (it has: {})",
            names.join(", ")
        );
        return ExitCode::FAILURE;
    };
    let body = match read_input(&file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tidegate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let preview = rt.block_on(crate::ops::preview(entry, &body, |n| config.destination(n)));
    match preview {
        Ok(v) => {
            let out = if json {
                serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
            } else {
                render::render_preview(&v)
            };
            use std::io::Write;
            // A reader gone away (`| head`) is not worth a panic.
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            if v["ok"] == serde_json::Value::Bool(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tidegate: the handoff could not run: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (the reader of stderr has gone
        // away) is dropped. By default the subscriber reports it with
        // eprintln!, which panics on the same broken pipe, in whichever
        // thread logged: the journal writer's, say.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}
