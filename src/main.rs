//! The `tidegate` binary: parse the command line, then either run the proxy
//! (`serve`), validate a config (`check`), or act as an operator client of a
//! running instance's admin API. All the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tidegate::cli::{self, Client};
use tidegate::config::{Config, LogFormat};

// glibc's allocator took about a tenth of the CPU under relay load (small,
// short-lived buffers freed on other threads); mimalloc halves that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tidegate",
    version,
    about = "A durable, rate-matching HTTP proxy between AI producers and downstream APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Admin {
    /// The admin API of the running instance.
    #[arg(long, env = "TIDEGATE_ADMIN", default_value = "http://127.0.0.1:9090", global = true)]
    admin: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, env = "TIDEGATE_CONFIG", default_value = "config/tidegate.toml")]
        config: PathBuf,
    },
    /// Validate a config and print its effective values.
    Check {
        #[arg(long, env = "TIDEGATE_CONFIG", default_value = "config/tidegate.toml")]
        config: PathBuf,
    },
    /// Show every destination of a running instance.
    Status {
        #[command(flatten)]
        admin: Admin,
        /// Sampling interval for delivered/s.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
    },
    /// Stop deliveries to a destination (ingress keeps accepting).
    Pause {
        destination: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Resume a paused, halted or degraded destination.
    Resume {
        destination: String,
        /// On a halted destination (or key), dead-letter the failed head first.
        #[arg(long)]
        skip_head: bool,
        /// On a key-ordered destination, resume this halted key alone.
        #[arg(long)]
        key: Option<String>,
        /// Who resumes (required, with --reason, to lift a governance pause).
        #[arg(long)]
        by: Option<String>,
        /// Why it is safe to resume.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Held and audit items awaiting a human decision, and the decisions.
    Reviews {
        #[command(subcommand)]
        action: ReviewAction,
    },
    /// The owner's quality report: volume, delivered, dead letters and the
    /// override rate per category, categories over threshold first.
    Report {
        /// The window: "7d", "24h"...
        #[arg(long, default_value = "7d")]
        since: String,
        #[arg(long)]
        destination: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        #[command(flatten)]
        admin: Admin,
    },
    /// Draw the chain: producers → tidegate → each destination → what it
    /// feeds, every edge annotated; live state and rates with --admin.
    Map {
        #[arg(long, env = "TIDEGATE_CONFIG", default_value = "config/tidegate.toml")]
        config: PathBuf,
        /// A running instance's admin API, for live figures.
        #[arg(long)]
        admin: Option<String>,
        #[arg(long, value_enum, default_value_t = MapFormat::Mermaid)]
        format: MapFormat,
    },
    /// Check capacity before going live: per destination, peak volume
    /// against the rate, queue growth, latency objective, outage drain and
    /// disk. Exit 1 when an objective cannot be met.
    Plan {
        #[arg(long, env = "TIDEGATE_CONFIG", default_value = "config/tidegate.toml")]
        config: PathBuf,
        /// A running instance's admin API, for its effective rates and
        /// message sizes.
        #[arg(long)]
        admin: Option<String>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The corrections reviewers made: the training data.
    Corrections {
        #[command(subcommand)]
        action: CorrectionAction,
    },
    /// Inspect, replay or purge a destination's dead letters.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Show one message's state.
    Message {
        id: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Ask a running instance to re-read its config file.
    Reload {
        #[command(flatten)]
        admin: Admin,
    },
    /// Exit 0 if the instance answers /healthz (or /readyz with --ready); for
    /// container health checks, where there is no curl.
    Healthcheck {
        /// Check readiness instead of liveness.
        #[arg(long)]
        ready: bool,
        #[command(flatten)]
        admin: Admin,
    },
    /// Offline operations on the journal of a stopped instance.
    Journal {
        #[command(subcommand)]
        action: JournalAction,
    },
    /// Try a destination's handoff (schema, routes, transform, format) on a
    /// body, offline.
    Handoff {
        #[command(subcommand)]
        action: HandoffAction,
    },
}

#[derive(Subcommand)]
enum HandoffAction {
    /// Show the route, category and exact request a producer body would
    /// give, or each error; stores and sends nothing. Exit 1 on an error.
    Test {
        #[arg(long, env = "TIDEGATE_CONFIG", default_value = "config/tidegate.toml")]
        config: PathBuf,
        /// The destination the producer posts to.
        #[arg(long)]
        destination: String,
        /// The body: a file, or `-` (the default) for standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// Print the preview as JSON (as the admin API's preview answers).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JournalAction {
    /// Check the queue files: integrity, checksums, counts. Exit 1 if damaged.
    Verify {
        #[arg(long, env = "TIDEGATE_CONFIG", default_value = "config/tidegate.toml")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MapFormat {
    Mermaid,
    Dot,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Subcommand)]
enum ReviewAction {
    /// Items awaiting a decision, oldest first.
    List {
        #[arg(long)]
        destination: Option<String>,
        #[arg(long)]
        category: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Deliver a held message as it is.
    Approve {
        id: String,
        #[arg(long)]
        reviewer: String,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Deliver a corrected body instead (checked against the schema).
    Edit {
        id: String,
        #[arg(long)]
        reviewer: String,
        /// The corrected producer body: a JSON file, or `-` for standard input.
        #[arg(long, default_value = "-")]
        body: PathBuf,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Never deliver it: dead-lettered as rejected_by_reviewer.
    Reject {
        id: String,
        #[arg(long)]
        reviewer: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Subcommand)]
enum CorrectionAction {
    /// Every edit and override since --since, one per line (JSONL) or CSV.
    Export {
        #[arg(long)]
        destination: Option<String>,
        #[arg(long, default_value = "30d")]
        since: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// List a destination's dead letters, oldest first: id, reason,
    /// attempts, when, and the last error.
    List {
        destination: String,
        /// At most this many (the API caps it at 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this message id (the `more: --after ID` line of the
        /// previous page).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Back into the queue: all of them, or the given ids.
    Replay {
        destination: String,
        #[arg(long = "id")]
        ids: Vec<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Delete a destination's dead letters for good. Asks first on a
    /// terminal, saying how many will go; elsewhere it needs --yes.
    Purge {
        destination: String,
        /// Do not ask (for scripts).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        admin: Admin,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<tidegate::config::HumanDuration>().map(|d| d.0)
}

fn main() -> ExitCode {
    // A handoff worker (see `tidegate::handoff`): started by the server
    // itself, before anything else (no runtime, no logging, no arguments).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == tidegate::handoff::WORKER_ARG)
    {
        return tidegate::handoff::worker_main();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => serve(config),
        Command::Journal {
            action: JournalAction::Verify { config },
        } => verify(config),
        Command::Handoff {
            action:
                HandoffAction::Test {
                    config,
                    destination,
                    file,
                    json,
                },
        } => handoff_test(config, &destination, file, json),
        Command::Map { config, admin, format } => chain_command(config, admin, |chain, _, _| {
            let out = match format {
                MapFormat::Mermaid => tidegate::chain::map::mermaid(chain),
                MapFormat::Dot => tidegate::chain::map::dot(chain),
                MapFormat::Json => tidegate::chain::map::json(chain),
            };
            (out, true)
        }),
        Command::Plan { config, admin, json } => chain_command(config, admin, move |chain, source, live| {
            if json {
                let plans: Vec<serde_json::Value> = chain
                    .plans()
                    .into_iter()
                    .map(|(l, p)| {
                        json!({"destination": l.destination, "inputs": {
                        "expected_volume": l.expected_volume, "rate": l.plan_inputs().rate,
                        "latency_objective_seconds": l.latency_objective_seconds,
                        "mean_size": l.plan_inputs().mean_size}, "plan": p})
                    })
                    .collect();
                let ok = chain
                    .plans()
                    .iter()
                    .all(|(_, p)| p.verdict != tidegate::chain::plan::Verdict::Breaches);
                (
                    serde_json::to_string_pretty(&json!({"ok": ok, "destinations": plans})).unwrap_or_default() + "\n",
                    ok,
                )
            } else {
                cli::render_plan(chain, source, live)
            }
        }),
        other => operator(other),
    }
}

/// `map` and `plan`: the chain of the config at `config`, with a running
/// instance's figures when `admin` is given; `show` renders it and says
/// whether the command succeeds.
fn chain_command(
    config: PathBuf,
    admin: Option<String>,
    show: impl FnOnce(&tidegate::chain::Chain, &str, bool) -> (String, bool),
) -> ExitCode {
    let loaded = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut chain = tidegate::chain::Chain::of(&loaded);
    if let Some(url) = &admin {
        let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
            Ok(rt) => rt,
            Err(code) => return code,
        };
        let client = Client::new(url, std::env::var("TIDEGATE_ADMIN_TOKEN").ok());
        match rt.block_on(cli::live_chain(&client, chain, Duration::from_secs(1))) {
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

/// The config at `path`, or the exit of a command that cannot run without
/// it (the error, with file:line:col, on standard error).
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
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

fn serve(config: PathBuf) -> ExitCode {
    let config = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_tracing(config.log.format, &config.log.level);
    let rt = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(tidegate::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "tidegate failed");
            eprintln!("tidegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn verify(config: PathBuf) -> ExitCode {
    let config = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match tidegate::journal::verify(&config.storage.path) {
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
fn handoff_test(config: PathBuf, destination: &str, file: PathBuf, json: bool) -> ExitCode {
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
    let preview = rt.block_on(tidegate::handoff::preview(entry, &body, |n| config.destination(n)));
    match preview {
        Ok(v) => {
            let out = if json {
                serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
            } else {
                tidegate::handoff::render_preview(&v)
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

/// Runs an operator subcommand against the admin API.
fn operator(cmd: Command) -> ExitCode {
    let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let token = std::env::var("TIDEGATE_ADMIN_TOKEN").ok();
    let client = |a: &Admin| Client::new(&a.admin, token.clone());
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    // An admin answer as the operator asked for it: the JSON, or the table.
    let shown = |json: bool, v: &serde_json::Value, human: fn(&serde_json::Value) -> String| {
        if json {
            pretty(v)
        } else {
            human(v)
        }
    };
    let result = rt.block_on(async {
        match cmd {
            Command::Status { admin, interval } => cli::status(&client(&admin), interval, admin.json).await,
            Command::Pause { destination, admin } => {
                let v = client(&admin)
                    .post(&format!("/v1/destinations/{destination}/pause"), None)
                    .await?;
                Ok(shown(admin.json, &v, cli::render_destination))
            }
            Command::Resume {
                destination,
                skip_head,
                key,
                by,
                reason,
                admin,
            } => {
                let mut query = form_urlencoded::Serializer::new(String::new());
                query.append_pair("skip_head", &skip_head.to_string());
                for (k, v) in [("key", &key), ("by", &by), ("reason", &reason)] {
                    if let Some(v) = v {
                        query.append_pair(k, v);
                    }
                }
                let path = format!("/v1/destinations/{destination}/resume?{}", query.finish());
                let v = client(&admin).post(&path, None).await?;
                Ok(shown(admin.json, &v, cli::render_destination))
            }
            Command::Reviews { action } => reviews(action, &token).await,
            Command::Report {
                since,
                destination,
                format,
                admin,
            } => {
                let mut query = form_urlencoded::Serializer::new(String::new());
                query.append_pair("window", &since);
                if let Some(d) = &destination {
                    query.append_pair("destination", d);
                }
                let v = client(&admin).get(&format!("/v1/quality?{}", query.finish())).await?;
                match (admin.json, format) {
                    (true, _) | (_, ReportFormat::Json) => Ok(pretty(&v)),
                    (_, ReportFormat::Table) => cli::render_report(&v, &since),
                    (_, ReportFormat::Csv) => cli::report_csv(&v),
                }
            }
            Command::Corrections {
                action:
                    CorrectionAction::Export {
                        destination,
                        since,
                        format,
                        admin,
                    },
            } => {
                let mut query = form_urlencoded::Serializer::new(String::new());
                query.append_pair("since", &since);
                query.append_pair(
                    "format",
                    match format {
                        ExportFormat::Jsonl => "jsonl",
                        ExportFormat::Csv => "csv",
                    },
                );
                if let Some(d) = &destination {
                    query.append_pair("destination", d);
                }
                client(&admin)
                    .get_text(&format!("/v1/corrections?{}", query.finish()))
                    .await
            }
            Command::Message { id, admin } => {
                let v = client(&admin).get(&format!("/v1/messages/{id}")).await?;
                Ok(shown(admin.json, &v, cli::render_message))
            }
            Command::Healthcheck { ready, admin } => {
                let path = if ready { "/readyz" } else { "/healthz" };
                let status = client(&admin).probe(path).await?;
                if status == 200 {
                    Ok(format!("{path}: ok"))
                } else {
                    Err(cli::CliError::Problem {
                        status,
                        code: "unhealthy".into(),
                        detail: format!("{path} answered {status}"),
                    })
                }
            }
            Command::Reload { admin } => {
                let v = client(&admin).post("/v1/reload", None).await?;
                Ok(shown(admin.json, &v, cli::render_reload))
            }
            Command::DeadLetters { action } => match action {
                DeadLetterAction::List {
                    destination,
                    limit,
                    after,
                    admin,
                } => {
                    let mut path = format!("/v1/destinations/{destination}/dead-letters?limit={limit}");
                    if let Some(a) = after {
                        path.push_str(&format!("&after={a}"));
                    }
                    let v = client(&admin).get(&path).await?;
                    Ok(shown(admin.json, &v, cli::render_dead_letters))
                }
                DeadLetterAction::Replay {
                    destination,
                    ids,
                    admin,
                } => {
                    let body = if ids.is_empty() {
                        json!({})
                    } else {
                        json!({ "ids": ids })
                    };
                    let path = format!("/v1/destinations/{destination}/dead-letters/replay");
                    let v = client(&admin).post(&path, Some(body)).await?;
                    Ok(if admin.json {
                        pretty(&v)
                    } else {
                        format!("replayed {}", v["replayed"])
                    })
                }
                DeadLetterAction::Purge {
                    destination,
                    yes,
                    admin,
                } => {
                    let c = client(&admin);
                    if !yes {
                        let d = c.get(&format!("/v1/destinations/{destination}")).await?;
                        let n = d["queue"]["dead_letters"].as_u64().unwrap_or(0);
                        confirm(&format!(
                            "purge {n} dead letter{} of destination {destination} for good",
                            if n == 1 { "" } else { "s" }
                        ))?;
                    }
                    let path = format!("/v1/destinations/{destination}/dead-letters");
                    let v = c.call(reqwest::Method::DELETE, &path, None).await?;
                    Ok(if admin.json {
                        pretty(&v)
                    } else {
                        format!("purged {}", v["purged"])
                    })
                }
            },
            Command::Serve { .. }
            | Command::Check { .. }
            | Command::Journal { .. }
            | Command::Handoff { .. }
            | Command::Map { .. }
            | Command::Plan { .. } => {
                unreachable!("handled in main")
            }
        }
    });
    match result {
        Ok(out) => {
            use std::io::Write;
            // A reader that went away (`tidegate status | head`) is not an
            // error, and must not be a panic, as println! would make it.
            match writeln!(std::io::stdout().lock(), "{}", out.trim_end()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("tidegate: cannot write the answer: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("tidegate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A decision as the CLI prints it: the API's JSON, or one line.
fn decided(json: bool, v: serde_json::Value) -> String {
    if json {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    } else {
        format!(
            "{} {}: {} by {}",
            v["id"].as_str().unwrap_or_default(),
            v["destination"].as_str().unwrap_or_default(),
            v["decision"].as_str().unwrap_or_default(),
            v["reviewer"].as_str().unwrap_or_default()
        )
    }
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

/// `tidegate reviews ...`.
async fn reviews(action: ReviewAction, token: &Option<String>) -> Result<String, cli::CliError> {
    let client = |a: &Admin| Client::new(&a.admin, token.clone());
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let decide = |admin: &Admin, id: &str, what: &str, body: serde_json::Value| {
        let (client, path) = (client(admin), format!("/v1/reviews/{id}/{what}"));
        let json = admin.json;
        async move {
            let v = client.post(&path, Some(body)).await?;
            Ok::<_, cli::CliError>(decided(json, v))
        }
    };
    match action {
        ReviewAction::List {
            destination,
            category,
            limit,
            after,
            admin,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            for (k, v) in [
                ("destination", &destination),
                ("category", &category),
                ("after", &after),
            ] {
                if let Some(v) = v {
                    query.append_pair(k, v);
                }
            }
            let v = client(&admin).get(&format!("/v1/reviews?{}", query.finish())).await?;
            Ok(if admin.json {
                pretty(&v)
            } else {
                cli::render_reviews(&v)
            })
        }
        ReviewAction::Approve {
            id,
            reviewer,
            note,
            admin,
        } => decide(&admin, &id, "approve", json!({"reviewer": reviewer, "note": note})).await,
        ReviewAction::Edit {
            id,
            reviewer,
            body,
            note,
            admin,
        } => {
            let text = read_input(&body).map_err(cli::CliError::BadAnswer)?;
            let corrected: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| cli::CliError::BadAnswer(format!("{} is not JSON: {e}", body.display())))?;
            decide(
                &admin,
                &id,
                "edit",
                json!({"reviewer": reviewer, "note": note, "body": corrected}),
            )
            .await
        }
        ReviewAction::Reject {
            id,
            reviewer,
            reason,
            admin,
        } => decide(&admin, &id, "reject", json!({"reviewer": reviewer, "reason": reason})).await,
    }
}

/// Asks the operator to confirm `what` on the terminal; refuses when
/// standard input is not one (a script must say --yes).
fn confirm(what: &str) -> Result<(), cli::CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(cli::CliError::NotConfirmed(format!(
            "refusing to {what} without confirmation: run it on a terminal, or pass --yes"
        )));
    }
    eprint!("{what}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(cli::CliError::NotConfirmed("nothing purged".to_string()))
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
