//! The command line (SPEC §1): every subcommand and flag, as clap reads it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tidegate",
    version,
    about = "A durable, rate-matching HTTP proxy between AI producers and downstream APIs"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(ClapArgs)]
pub struct Admin {
    /// The admin API of the running instance [default: $TIDEGATE_ADMIN,
    /// else http://127.0.0.1:9090].
    // Not clap's `env`: clap would print `--admin <ADMIN>` as required in
    // every usage line whenever the variable is set.
    #[arg(long, global = true)]
    admin: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Admin {
    /// The admin API's base URL: `--admin`, else `$TIDEGATE_ADMIN`, else
    /// the default listen address.
    pub fn url(&self) -> String {
        self.admin
            .clone()
            .or_else(|| std::env::var("TIDEGATE_ADMIN").ok().filter(|v| !v.trim().is_empty()))
            .unwrap_or_else(|| "http://127.0.0.1:9090".to_string())
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, env = "TIDEGATE_CONFIG", default_value = "config/tidegate.toml")]
        config: PathBuf,
        /// Listen for producers here instead of at `ingress.listen` (two
        /// instances from one config file; also TIDEGATE_INGRESS_LISTEN).
        #[arg(long)]
        ingress_listen: Option<String>,
        /// Listen for operators here instead of at `admin.listen` (also
        /// TIDEGATE_ADMIN_LISTEN).
        #[arg(long)]
        admin_listen: Option<String>,
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
        /// `reviewer`: one row per reviewer, with how far reviewers of one
        /// category agree.
        #[arg(long, value_enum, default_value_t = ReportBy::Category)]
        by: ReportBy,
        #[command(flatten)]
        admin: Admin,
    },
    /// The audit trail: who paused, resumed, lifted a halt, replayed,
    /// purged, reloaded, decided or sent feedback, and when.
    Audit {
        /// How far back: "24h", "7d", or an RFC 3339 time (default: all
        /// that is kept).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        /// pause, resume, lift_halt, replay, purge, reload, approve, edit,
        /// reject or feedback.
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        destination: Option<String>,
        /// Print every matching act as JSON Lines (the export).
        #[arg(long)]
        jsonl: bool,
        #[command(flatten)]
        admin: Admin,
    },
    /// Draw the chain: producers → tidegate → each destination → what it
    /// feeds, every edge annotated; live state and rates with --admin.
    Map {
        /// The config to draw (default config/tidegate.toml; with --admin
        /// alone, the running instance's own).
        #[arg(long, env = "TIDEGATE_CONFIG")]
        config: Option<PathBuf>,
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
        /// The config to check (default config/tidegate.toml; with --admin
        /// alone, the running instance's own).
        #[arg(long, env = "TIDEGATE_CONFIG")]
        config: Option<PathBuf>,
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
pub enum HandoffAction {
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
        /// The producer's path after the destination's name, with its query
        /// (`/orders/batch?x=1`).
        #[arg(long, default_value = "")]
        path: String,
        /// The body's Content-Type.
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// Print the preview as JSON (as the admin API's preview answers).
        #[arg(long)]
        json: bool,
        /// Instead of a preview: how each of the destination's programs
        /// runs, compiled (in place, no sandbox) or in the sandbox, and why.
        #[arg(long)]
        explain: bool,
    },
}

#[derive(Subcommand)]
pub enum JournalAction {
    /// Check the queue files: integrity, checksums, counts. Exit 1 if damaged.
    Verify {
        #[arg(long, env = "TIDEGATE_CONFIG", default_value = "config/tidegate.toml")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MapFormat {
    Mermaid,
    Dot,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportBy {
    Category,
    Reviewer,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Subcommand)]
pub enum ReviewAction {
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
        /// Who decided: required with the admin token; with a person's own
        /// token it is them (naming someone else is refused).
        #[arg(long)]
        reviewer: Option<String>,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
    /// Deliver a corrected body instead (checked against the schema).
    Edit {
        id: String,
        /// Who decided: required with the admin token; with a person's own
        /// token it is them (naming someone else is refused).
        #[arg(long)]
        reviewer: Option<String>,
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
        /// Who decided: required with the admin token; with a person's own
        /// token it is them (naming someone else is refused).
        #[arg(long)]
        reviewer: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: Admin,
    },
}

#[derive(Subcommand)]
pub enum CorrectionAction {
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
pub enum DeadLetterAction {
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

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<crate::config::HumanDuration>().map(|d| d.0)
}
