//! The sandbox: handoff tables run in worker processes (`tidegate
//! __handoff-worker`, this same binary), never in the server's own threads.
//!
//! Why processes: jq programs have no step, memory or stack limits (jaq has
//! none to set), and a thread cannot be stopped from outside. A worker that
//! runs past the deadline is killed; one that recurses past its stack or
//! allocates past its address-space limit dies on its own. Either way only
//! the one message fails (`transform_failed`); the server, its other
//! destinations and the next message are untouched, and a fresh worker is
//! started for the next call.
//!
//! Invariants:
//! - a worker serves one call at a time, over its stdin and stdout, and is
//!   owned by that call while it runs: a call abandoned half-way (its
//!   producer hung up) drops the worker, which kills it, so no worker is
//!   ever reused in an unknown state;
//! - each destination may occupy at most `per_destination` workers at once,
//!   so a destination whose program runs away cannot take every worker;
//! - workers get an empty environment (a transform cannot read secrets with
//!   `env`) and die with the server (`PR_SET_PDEATHSIG`).
//!
//! Wire format, all lengths u32 little-endian. At start the server writes
//! the specs (`len, JSON`). A call: `op (0 admit, 1 render), len, dest,
//! len, body`. An answer: `tag (0 ok, 1 failure), len, JSON, len, bytes`,
//! where the JSON is the result without the rendered bytes, which follow.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use super::{Admitted, Failure, Rendered, Specs, Stage, Table};

/// The hidden first argument that makes the binary a worker.
pub const WORKER_ARG: &str = "__handoff-worker";

/// How long one call may take before its worker is killed. Generous: a
/// real transform takes microseconds, and a loaded machine must never fail
/// a sound one.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// A worker's address-space limit: what a program that builds ever larger
/// values reaches before its allocation fails and the worker dies.
const ADDRESS_SPACE: u64 = 2 << 30;

/// Idle workers kept for the next call; more are started when needed.
const MAX_IDLE: usize = 8;

/// Resident memory past which a worker retires after its answer: a heavy
/// program leaves its allocator holding memory it will not give back, and
/// an idle worker must not keep hundreds of MiB (a fresh one starts in
/// milliseconds).
const RETIRE_RESIDENT: u64 = 64 << 20;

/// Set on an answer's tag by a worker that exits after it.
const TAG_RETIRING: u8 = 0x80;

const OP_ADMIT: u8 = 0;
const OP_RENDER: u8 = 1;
const OP_CHECK: u8 = 2;

/// Why a call has no answer about the message itself.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The message's programs failed (or ran away): the message's fault.
    #[error("{0}")]
    Failed(Failure),
    /// No worker could be started: tidegate's fault, not the message's.
    #[error("the handoff sandbox is unavailable: {0}")]
    Unavailable(String),
}

/// Runs one config's handoff table in worker processes. Built with the
/// config, so a reload swaps programs and workers together; dropping it
/// kills its idle workers.
pub struct Runner {
    specs: Arc<Vec<u8>>,
    idle: Mutex<Vec<Worker>>,
    permits: HashMap<String, Arc<Semaphore>>,
    deadline: Duration,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("destinations", &self.permits.len())
            .finish()
    }
}

struct Worker {
    /// Killed when dropped.
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

#[derive(Serialize, Deserialize)]
struct RenderMeta {
    content_type: Option<String>,
}

impl Runner {
    /// A runner for `specs` (already compiled once by the config loader, so
    /// workers do not fail to compile them).
    pub fn new(specs: &Specs) -> Runner {
        let per_destination = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        Runner {
            specs: Arc::new(serde_json::to_vec(specs).unwrap_or_default()),
            idle: Mutex::new(Vec::new()),
            permits: specs
                .iter()
                .map(|(name, _)| (name.clone(), Arc::new(Semaphore::new(per_destination))))
                .collect(),
            deadline: DEADLINE,
        }
    }

    /// The ingress pipeline (`Table::admit`) for a body sent to `dest`.
    pub async fn admit(&self, dest: &str, body: &[u8]) -> Result<Admitted, RunError> {
        let (meta, bytes) = self.call(OP_ADMIT, dest, body).await?;
        let mut a: Admitted = serde_json::from_slice(&meta).map_err(|e| RunError::Unavailable(e.to_string()))?;
        if let Some(r) = a.rendered.as_mut() {
            r.body = bytes;
        }
        Ok(a)
    }

    /// What a delivery attempt sends (`Table::render`).
    pub async fn render(&self, dest: &str, body: &[u8]) -> Result<Option<Rendered>, RunError> {
        self.rendered(OP_RENDER, dest, body).await
    }

    /// A reviewer's correction checked (`Table::check`): the schema, then
    /// what it would send.
    pub async fn check(&self, dest: &str, body: &[u8]) -> Result<Option<Rendered>, RunError> {
        self.rendered(OP_CHECK, dest, body).await
    }

    async fn rendered(&self, op: u8, dest: &str, body: &[u8]) -> Result<Option<Rendered>, RunError> {
        let (meta, bytes) = self.call(op, dest, body).await?;
        let m: RenderMeta = serde_json::from_slice(&meta).map_err(|e| RunError::Unavailable(e.to_string()))?;
        Ok(m.content_type.map(|content_type| Rendered {
            content_type,
            body: bytes,
        }))
    }

    async fn call(&self, op: u8, dest: &str, body: &[u8]) -> Result<(Vec<u8>, Vec<u8>), RunError> {
        let permits = self.permits.get(dest).cloned();
        let _permit = match &permits {
            Some(p) => Some(p.acquire().await.map_err(|e| RunError::Unavailable(e.to_string()))?),
            None => None,
        };
        let popped = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut worker = match popped {
            Some(w) => w,
            None => self.spawn().await?,
        };
        match tokio::time::timeout(self.deadline, worker.call(op, dest, body)).await {
            Ok(Ok((tag, meta, bytes))) => {
                if tag & TAG_RETIRING == 0 {
                    let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() < MAX_IDLE {
                        idle.push(worker);
                    }
                }
                if tag & !TAG_RETIRING == 0 {
                    Ok((meta, bytes))
                } else {
                    let f: Failure = serde_json::from_slice(&meta).map_err(|e| RunError::Unavailable(e.to_string()))?;
                    Err(RunError::Failed(f))
                }
            }
            Ok(Err(e)) => {
                let status = worker.finish().await;
                tracing::warn!(destination = dest, error = %e, status, "handoff worker died during a call");
                Err(RunError::Failed(Failure {
                    stage: Stage::Transform,
                    destination: dest.to_string(),
                    message: format!("the transform ran out of stack or memory and was stopped ({status})"),
                    violations: Vec::new(),
                }))
            }
            Err(_) => {
                // Dropping the worker kills it.
                drop(worker);
                Err(RunError::Failed(Failure {
                    stage: Stage::Transform,
                    destination: dest.to_string(),
                    message: format!(
                        "the transform ran longer than {} s and was stopped",
                        self.deadline.as_secs()
                    ),
                    violations: Vec::new(),
                }))
            }
        }
    }

    async fn spawn(&self) -> Result<Worker, RunError> {
        let exe: PathBuf = std::env::current_exe().map_err(|e| RunError::Unavailable(e.to_string()))?;
        let mut child = Command::new(&exe)
            .arg(WORKER_ARG)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RunError::Unavailable(format!("cannot start {}: {e}", exe.display())))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(RunError::Unavailable("worker pipes missing".into()));
        };
        let mut frame = Vec::with_capacity(self.specs.len() + 4);
        put(&mut frame, &self.specs);
        stdin
            .write_all(&frame)
            .await
            .map_err(|e| RunError::Unavailable(format!("cannot start a handoff worker: {e}")))?;
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }
}

impl Worker {
    async fn call(&mut self, op: u8, dest: &str, body: &[u8]) -> std::io::Result<(u8, Vec<u8>, Vec<u8>)> {
        let mut frame = Vec::with_capacity(body.len() + dest.len() + 9);
        frame.push(op);
        put(&mut frame, dest.as_bytes());
        put(&mut frame, body);
        self.stdin.write_all(&frame).await?;
        self.stdin.flush().await?;
        let tag = self.stdout.read_u8().await?;
        let meta = read_async(&mut self.stdout).await?;
        let bytes = read_async(&mut self.stdout).await?;
        Ok((tag, meta, bytes))
    }

    /// How the worker ended, for the log and the failure's message.
    async fn finish(mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await {
            Ok(Ok(status)) => {
                use std::os::unix::process::ExitStatusExt;
                match status.signal() {
                    Some(s) => format!("worker killed by signal {s}"),
                    None => format!("worker exited with {status}"),
                }
            }
            _ => "worker did not answer".to_string(),
        }
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

async fn read_async(r: &mut BufReader<ChildStdout>) -> std::io::Result<Vec<u8>> {
    let len = r.read_u32_le().await? as usize;
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

fn read_frame(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut buf = vec![0; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// The worker process: limits itself, compiles the specs it is sent, then
/// answers calls until its stdin closes. Never returns normally on a
/// runaway program: it is killed, or dies of its own limits.
/// This process's resident memory, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

pub fn worker_main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and
    // touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let _ = rlimit::setrlimit(rlimit::Resource::AS, ADDRESS_SPACE, ADDRESS_SPACE);
    let mut input = std::io::BufReader::new(std::io::stdin().lock());
    let mut output = std::io::BufWriter::new(std::io::stdout().lock());
    let table = match read_frame(&mut input)
        .ok()
        .and_then(|f| serde_json::from_slice::<Specs>(&f).ok())
        .and_then(|specs| Table::compile(&specs).ok())
    {
        Some(t) => t,
        None => return std::process::ExitCode::from(2),
    };
    loop {
        let mut op = [0u8; 1];
        if input.read_exact(&mut op).is_err() {
            return std::process::ExitCode::SUCCESS;
        }
        let (Ok(dest), Ok(body)) = (read_frame(&mut input), read_frame(&mut input)) else {
            return std::process::ExitCode::from(2);
        };
        let dest = String::from_utf8_lossy(&dest);
        let (tag, meta, bytes) = match op[0] {
            OP_ADMIT => match table.admit(&dest, &body) {
                Ok(mut a) => {
                    let bytes = a
                        .rendered
                        .as_mut()
                        .map(|r| std::mem::take(&mut r.body))
                        .unwrap_or_default();
                    (0u8, serde_json::to_vec(&a), bytes)
                }
                Err(f) => (1, serde_json::to_vec(&f), Vec::new()),
            },
            op @ (OP_RENDER | OP_CHECK) => match if op == OP_RENDER {
                table.render(&dest, &body)
            } else {
                table.check(&dest, &body)
            } {
                Ok(r) => {
                    let content_type = r.as_ref().map(|r| r.content_type.clone());
                    (
                        0,
                        serde_json::to_vec(&RenderMeta { content_type }),
                        r.map(|r| r.body).unwrap_or_default(),
                    )
                }
                Err(f) => (1, serde_json::to_vec(&f), Vec::new()),
            },
            _ => return std::process::ExitCode::from(2),
        };
        let Ok(meta) = meta else {
            return std::process::ExitCode::from(2);
        };
        let retiring = resident_bytes().is_some_and(|r| r > RETIRE_RESIDENT);
        let mut frame = Vec::with_capacity(meta.len() + bytes.len() + 9);
        frame.push(if retiring { tag | TAG_RETIRING } else { tag });
        put(&mut frame, &meta);
        put(&mut frame, &bytes);
        if output.write_all(&frame).and_then(|_| output.flush()).is_err() || retiring {
            return std::process::ExitCode::SUCCESS;
        }
    }
}
