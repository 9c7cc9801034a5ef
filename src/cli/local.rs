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
    config: Option<PathBuf>,
    admin: Option<String>,
    show: impl FnOnce(&crate::chain::Chain, &str, bool) -> (String, bool),
) -> ExitCode {
    // A config file when one is named (or nothing else is); else the
    // running instance's own chain, from its admin API.
    let from_file = match (&config, &admin) {
        (Some(path), _) => Some(path.clone()),
        (None, None) => Some(PathBuf::from(super::DEFAULT_CONFIG)),
        (None, Some(_)) => None,
    };
    let mut chain = None;
    if let Some(path) = &from_file {
        match load(path) {
            Ok(c) => chain = Some(crate::chain::Chain::of(&c)),
            Err(code) => return code,
        }
    }
    let source = match (&from_file, &admin) {
        (Some(path), _) => path.display().to_string(),
        (None, Some(url)) => format!("the instance at {url}"),
        (None, None) => String::new(),
    };
    if let Some(url) = &admin {
        let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
            Ok(rt) => rt,
            Err(code) => return code,
        };
        let client = Client::new(url, std::env::var("TIDEGATE_ADMIN_TOKEN").ok());
        let live = rt.block_on(async {
            let declared = match chain.take() {
                Some(c) => c,
                None => client.get_as::<crate::chain::Chain>("/v1/chain").await?,
            };
            super::client::live_chain(&client, declared, Duration::from_secs(1)).await
        });
        match live {
            Ok(c) => chain = Some(c),
            Err(e) => {
                eprintln!("tidegate: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let Some(chain) = chain else {
        return ExitCode::FAILURE;
    };
    let (out, ok) = show(&chain, &source, admin.is_some());
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

/// Runs `run` on the config at `path` and its destination `name`; exits 1
/// when the config does not load or has no such destination (naming those
/// it has).
fn with_destination(
    path: PathBuf,
    name: &str,
    run: impl FnOnce(&crate::config::Config, &crate::config::Destination) -> ExitCode,
) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(entry) = config.destination(name) else {
        let names: Vec<&str> = config.destinations.iter().map(|d| d.name.as_str()).collect();
        eprintln!(
            "tidegate: no destination {name:?} in the config (it has: {})",
            names.join(", ")
        );
        return ExitCode::FAILURE;
    };
    run(&config, entry)
}

/// `tidegate handoff test --explain`: how the destination's programs run.
pub(super) fn handoff_explain(config: PathBuf, destination: &str) -> ExitCode {
    with_destination(config, destination, |_, entry| {
        let explanation = entry.handoff.as_ref().map(|h| h.runner.explain(destination));
        use std::io::Write;
        let out = render::render_explanation(destination, explanation.as_ref());
        let _ = std::io::stdout().lock().write_all(out.as_bytes());
        ExitCode::SUCCESS
    })
}

/// `tidegate handoff test`: the preview the admin API would give, from the
/// config file alone.
pub(super) fn handoff_test(
    config: PathBuf,
    destination: &str,
    file: PathBuf,
    path: &str,
    content_type: &str,
    json: bool,
) -> ExitCode {
    with_destination(config, destination, |config, entry| {
        preview_file(config, entry, file, path, content_type, json)
    })
}

/// The preview of `file` sent to `entry`, printed.
fn preview_file(
    config: &crate::config::Config,
    entry: &crate::config::Destination,
    file: PathBuf,
    path: &str,
    content_type: &str,
    json: bool,
) -> ExitCode {
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
    let sent = crate::ops::Sent {
        method: "POST",
        path,
        content_type: Some(content_type),
    };
    let preview = rt.block_on(crate::ops::preview(entry, &sent, &body, |n| config.destination(n)));
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

/// Standard error, one event per line whatever the event's fields hold: a
/// field with a line break (AI text, a downstream's answer) cannot forge a
/// log line (SPEC §17). The formatter hands each event over in one write;
/// JSON lines escape their own line breaks already.
struct OneLine;

impl std::io::Write for OneLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().lock().write_all(&crate::text::one_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn init_tracing(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| OneLine)
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
