//! The sandbox: handoff tables run in worker processes (`tidegate
//! __handoff-worker`, this same binary), never in the server's own threads,
//! unless every program a call may run is native (the `native` module: it
//! terminates by construction, and needs no limits) and the body is of
//! ordinary size; such a call runs in place, in microseconds.
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
//! - a worker serves one batch of calls at a time, over its stdin and
//!   stdout, and is owned by that batch while it runs; a worker that misses
//!   the deadline or breaks the protocol is dropped (which kills it), so no
//!   worker is ever reused in an unknown state. A caller that goes away
//!   (its producer hung up) leaves its call to finish; the answer is
//!   dropped;
//! - each destination may occupy at most `per_destination` workers at once,
//!   so a destination whose program runs away cannot take every worker;
//! - workers get an empty environment (a transform cannot read secrets with
//!   `env`) and die with the server (`PR_SET_PDEATHSIG`).
//!
//! Wire format, all lengths u32 little-endian. At start the server writes
//! the specs (`len, JSON`). A call: `op (0 admit, 1 render), len, dest,
//! len, body`. An answer: `tag (0 ok, 1 failure), len, JSON, len, bytes`,
//! where the JSON is the result without the rendered bytes, which follow.
//! A batch is calls written back to back; the answers come in the same
//! order, flushed together once the worker has read all it was sent.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, Semaphore};

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
///
/// Calls to the workers are batched per destination: a call joins its
/// destination's queue, and each time one of the destination's
/// `per_destination` slots is free, everything queued (up to
/// [`MAX_BATCH`] calls, [`MAX_BATCH_BYTES`]) goes to one worker in one
/// write, with one deadline. Under load a batch costs one round trip for
/// many messages; a call alone waits for nothing. When a batch times out or
/// its worker dies, the calls it had not answered are run again one at a
/// time, so that only the message at fault fails.
pub struct Runner {
    /// The same table, for destinations whose programs are all native
    /// (`Table::admits_natively`): they run here, not in a worker.
    table: Option<Table>,
    /// By destination: (admit, render) run here.
    native: HashMap<String, (bool, bool)>,
    pool: Arc<Pool>,
    queues: HashMap<String, Queue>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("destinations", &self.queues.len())
            .finish()
    }
}

/// How a destination's handoff runs: each program (by its config key) with
/// why it runs in the sandbox, if it does (`None`: compiled), and the
/// program that keeps admissions (at ingress) in the sandbox, if one does.
/// Renderings (at delivery) run only the transform: in place when it is
/// compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub programs: Vec<(String, Option<String>)>,
    pub admission_held_by: Option<String>,
}

/// Most calls one batch carries, and most bytes of their bodies (a batch
/// reaches this only under load: a call alone goes alone).
pub const MAX_BATCH: usize = 64;
const MAX_BATCH_BYTES: usize = 1 << 20;

/// The worker processes of one runner.
struct Pool {
    specs: Vec<u8>,
    idle: Mutex<Vec<Worker>>,
    deadline: Duration,
}

/// One destination's calls waiting for a worker. Its batcher task starts
/// with the first call and ends with the runner (when the sender drops).
struct Queue {
    tx: mpsc::UnboundedSender<Call>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Call>>>,
    slots: Arc<Semaphore>,
}

struct Call {
    op: u8,
    dest: String,
    /// `$message_id` for its programs; empty before the message has one.
    message_id: String,
    body: Vec<u8>,
    answer: oneshot::Sender<Result<Answer, RunError>>,
}

/// A worker's answer: tag, JSON, rendered bytes.
type Answer = (u8, Vec<u8>, Vec<u8>);

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
        let table = Table::compile(specs).ok();
        let native = match &table {
            None => HashMap::new(),
            Some(t) => specs
                .iter()
                .map(|(name, _)| (name.clone(), (t.admits_natively(name), t.renders_natively(name))))
                .collect(),
        };
        Runner {
            table,
            native,
            pool: Arc::new(Pool {
                specs: serde_json::to_vec(specs).unwrap_or_default(),
                idle: Mutex::new(Vec::new()),
                deadline: DEADLINE,
            }),
            queues: specs
                .iter()
                .map(|(name, _)| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let queue = Queue {
                        tx,
                        rx: Mutex::new(Some(rx)),
                        slots: Arc::new(Semaphore::new(per_destination)),
                    };
                    (name.clone(), queue)
                })
                .collect(),
        }
    }

    /// The ingress pipeline (`Table::admit`) for a body sent to `dest`.
    pub async fn admit(&self, dest: &str, body: &[u8]) -> Result<Admitted, RunError> {
        if let Some(t) = self.here(dest, body, |(admit, _)| admit) {
            return t.admit(dest, body).map_err(RunError::Failed);
        }
        let (meta, bytes) = self.call(OP_ADMIT, dest, body, "").await?;
        let mut a: Admitted = serde_json::from_slice(&meta).map_err(|e| RunError::Unavailable(e.to_string()))?;
        if let Some(r) = a.rendered.as_mut() {
            r.body = bytes;
        }
        Ok(a)
    }

    /// What a delivery attempt of message `message_id` sends
    /// (`Table::render`).
    pub async fn render(&self, dest: &str, body: &[u8], message_id: &str) -> Result<Option<Rendered>, RunError> {
        if let Some(t) = self.here(dest, body, |(_, render)| render) {
            return t.render(dest, body, message_id).map_err(RunError::Failed);
        }
        self.rendered(OP_RENDER, dest, body, message_id).await
    }

    /// A reviewer's correction checked (`Table::check`): the schema, then
    /// what it would send.
    pub async fn check(&self, dest: &str, body: &[u8]) -> Result<Option<Rendered>, RunError> {
        if let Some(t) = self.here(dest, body, |(_, render)| render) {
            return t.check(dest, body).map_err(RunError::Failed);
        }
        self.rendered(OP_CHECK, dest, body, "").await
    }

    /// How `dest`'s programs run (`tidegate handoff test --explain`).
    pub fn explain(&self, dest: &str) -> Explanation {
        Explanation {
            programs: self.table.as_ref().map(|t| t.explain(dest)).unwrap_or_default(),
            admission_held_by: self.table.as_ref().and_then(|t| t.why_admitted_in_sandbox(dest)),
        }
    }

    /// The table, when `dest`'s call of that kind on `body` runs in this
    /// process.
    fn here(&self, dest: &str, body: &[u8], which: impl Fn((bool, bool)) -> bool) -> Option<&Table> {
        let native = body.len() <= IN_LINE_BODY && self.native.get(dest).copied().is_some_and(which);
        self.table.as_ref().filter(|_| native)
    }

    async fn rendered(&self, op: u8, dest: &str, body: &[u8], message_id: &str) -> Result<Option<Rendered>, RunError> {
        let (meta, bytes) = self.call(op, dest, body, message_id).await?;
        let m: RenderMeta = serde_json::from_slice(&meta).map_err(|e| RunError::Unavailable(e.to_string()))?;
        Ok(m.content_type.map(|content_type| Rendered {
            content_type,
            body: bytes,
        }))
    }

    /// One call through `dest`'s queue (a destination the config does not
    /// know has none, and goes alone): the answer's JSON and bytes, or
    /// the message's failure.
    async fn call(&self, op: u8, dest: &str, body: &[u8], message_id: &str) -> Result<(Vec<u8>, Vec<u8>), RunError> {
        let (answer, answered) = oneshot::channel();
        let call = Call {
            op,
            dest: dest.to_string(),
            message_id: message_id.to_string(),
            body: body.to_vec(),
            answer,
        };
        match self.queues.get(dest) {
            Some(q) => {
                if let Some(rx) = q.rx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    tokio::spawn(batcher(self.pool.clone(), rx, q.slots.clone()));
                }
                if q.tx.send(call).is_err() {
                    return Err(RunError::Unavailable("the handoff batcher stopped".into()));
                }
            }
            None => self.pool.run(VecDeque::from([call])).await,
        }
        let (tag, meta, bytes) = answered
            .await
            .map_err(|_| RunError::Unavailable("the handoff batcher dropped a call".into()))??;
        if tag & !TAG_RETIRING == 0 {
            Ok((meta, bytes))
        } else {
            let f: Failure = serde_json::from_slice(&meta).map_err(|e| RunError::Unavailable(e.to_string()))?;
            Err(RunError::Failed(f))
        }
    }
}

/// Takes what a destination's queue holds whenever one of its slots is
/// free, and runs it as one batch.
async fn batcher(pool: Arc<Pool>, mut rx: mpsc::UnboundedReceiver<Call>, slots: Arc<Semaphore>) {
    while let Some(first) = rx.recv().await {
        // Calls that arrive while every slot is busy join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Requests already read on other connections are a yield away from
        // joining this batch: one more round trip saved each.
        tokio::task::yield_now().await;
        let mut bytes = first.body.len();
        let mut calls = VecDeque::from([first]);
        while calls.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(c) => {
                    bytes += c.body.len();
                    calls.push_back(c);
                }
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.run(calls).await;
            drop(slot);
        });
    }
}

/// Why a worker left calls of its batch unanswered (they are still in
/// the batch).
enum Fault {
    /// It died (how, as its exit status says).
    Died(String),
    /// The deadline passed.
    TimedOut,
}

impl Pool {
    /// Answers every call of `calls`, in as few worker round trips as it
    /// can.
    async fn run(&self, mut calls: VecDeque<Call>) {
        while !calls.is_empty() {
            let mut worker = match self.take_worker().await {
                Ok(w) => w,
                Err(e) => {
                    for c in calls {
                        let _ = c.answer.send(Err(RunError::Unavailable(e.clone())));
                    }
                    return;
                }
            };
            let alone = calls.len() == 1;
            let ended = match tokio::time::timeout(self.deadline, worker.exchange(&mut calls)).await {
                Ok(Ok(false)) => {
                    let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() < MAX_IDLE {
                        idle.push(worker);
                    }
                    return;
                }
                Ok(Ok(true)) => continue,
                Ok(Err(_)) => Fault::Died(worker.finish().await),
                // Dropping the worker kills it.
                Err(_) => Fault::TimedOut,
            };
            match ended {
                fault if alone => {
                    if let Some(c) = calls.pop_front() {
                        let message = match fault {
                            Fault::Died(status) => {
                                tracing::warn!(destination = %c.dest, %status, "handoff worker died during a call");
                                format!("the transform ran out of stack or memory and was stopped ({status})")
                            }
                            Fault::TimedOut => format!(
                                "the transform ran longer than {} s and was stopped",
                                self.deadline.as_secs()
                            ),
                        };
                        let _ = c.answer.send(Err(RunError::Failed(Failure {
                            stage: Stage::Transform,
                            destination: c.dest,
                            message,
                            violations: Vec::new(),
                        })));
                    }
                    return;
                }
                // Which unanswered call was at fault is not certain from
                // here: each goes again alone, with a deadline of its own.
                fault => {
                    let why = match fault {
                        Fault::Died(status) => status,
                        Fault::TimedOut => "deadline passed".to_string(),
                    };
                    tracing::warn!(
                        unanswered = calls.len(),
                        reason = %why,
                        "a handoff batch failed; running its unanswered calls one at a time"
                    );
                    for c in calls.drain(..) {
                        Box::pin(self.run(VecDeque::from([c]))).await;
                    }
                    return;
                }
            }
        }
    }

    async fn take_worker(&self) -> Result<Worker, String> {
        let popped = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match popped {
            Some(w) => Ok(w),
            None => self.spawn().await,
        }
    }

    async fn spawn(&self) -> Result<Worker, String> {
        let exe: PathBuf = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(&exe)
            .arg(WORKER_ARG)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("worker pipes missing".into());
        };
        let mut frame = Vec::with_capacity(self.specs.len() + 4);
        put(&mut frame, &self.specs);
        stdin
            .write_all(&frame)
            .await
            .map_err(|e| format!("cannot start a handoff worker: {e}"))?;
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }
}

/// Largest body a native call runs on the caller's (async) thread: a
/// larger one's parse and schema check would hold up the other tasks
/// there, so it goes to a worker like any other call.
const IN_LINE_BODY: usize = 64 << 10;

impl Worker {
    /// Sends every call of `calls` in one write and answers them in order
    /// as the answers come (reading while writing: a batch larger than the
    /// pipes must not wait on itself). An answered call leaves `calls`.
    /// `Ok(true)`: the worker retires after the last answer it gave.
    async fn exchange(&mut self, calls: &mut VecDeque<Call>) -> std::io::Result<bool> {
        let mut frame = Vec::with_capacity(
            calls
                .iter()
                .map(|c| c.body.len() + c.dest.len() + c.message_id.len() + 13)
                .sum(),
        );
        for c in calls.iter() {
            frame.push(c.op);
            put(&mut frame, c.dest.as_bytes());
            put(&mut frame, c.message_id.as_bytes());
            put(&mut frame, &c.body);
        }
        let (stdin, stdout) = (&mut self.stdin, &mut self.stdout);
        let write = async {
            stdin.write_all(&frame).await?;
            stdin.flush().await
        };
        let read = async {
            while !calls.is_empty() {
                let tag = stdout.read_u8().await?;
                let meta = read_async(stdout).await?;
                let bytes = read_async(stdout).await?;
                if let Some(c) = calls.pop_front() {
                    let _ = c.answer.send(Ok((tag, meta, bytes)));
                }
                if tag & TAG_RETIRING != 0 {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        };
        let (written, retired) = tokio::join!(write, read);
        // A worker that retired mid-batch stops reading: the write's error
        // then says nothing.
        match retired? {
            true => Ok(true),
            false => written.map(|()| false),
        }
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

/// Pages first touched after which a worker looks at its resident size: a
/// fault maps 4 KiB, or 2 MiB with transparent huge pages (which the
/// allocator asks for), so the count cannot be turned into bytes; 32 is
/// 128 KiB of small pages or 64 MiB of huge ones.
const LOOK_AFTER_FAULTS: u64 = 32;

/// How a worker knows it holds too much memory, cheaply. Its resident size
/// (`/proc/self/statm`) is what matters, but reading it after every batch
/// cost a tenth of a busy worker's time; `getrusage`'s peak (`ru_maxrss`)
/// is one system call but wrong here: Linux carries the parent's peak into
/// a child across `exec`, so every worker of a tidegate that once held more
/// than the limit would retire after every batch. So the count of pages
/// first touched (`ru_minflt`, one system call) says when the worker has
/// grown since it last looked ([`LOOK_AFTER_FAULTS`]), and only then is
/// the resident size read: a worker that reuses what its allocator holds
/// does not look at all.
struct Memory {
    faults_at_last_look: u64,
    page: u64,
}

impl Memory {
    fn new() -> Memory {
        // SAFETY: sysconf takes a constant and touches no memory.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let mut m = Memory {
            faults_at_last_look: 0,
            page: u64::try_from(page).unwrap_or(4096).max(1),
        };
        m.faults_at_last_look = m.faults();
        m
    }

    /// Pages this process has touched for the first time (minor faults).
    fn faults(&self) -> u64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a `rusage` into the pointer it is given,
        // which points to one.
        let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
        // SAFETY: zeroed is a valid `rusage`, and getrusage filled it when ok.
        let usage = unsafe { usage.assume_init() };
        if ok {
            u64::try_from(usage.ru_minflt).unwrap_or(0)
        } else {
            0
        }
    }

    /// Resident bytes now, from `/proc/self/statm` (its second field).
    fn resident(&self) -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * self.page)
    }

    /// Whether the worker holds more than `limit` now (looked at only after
    /// [`LOOK_AFTER_FAULTS`] new pages since the last look).
    fn over(&mut self, limit: u64) -> bool {
        let faults = self.faults();
        if faults.saturating_sub(self.faults_at_last_look) < LOOK_AFTER_FAULTS {
            return false;
        }
        self.faults_at_last_look = faults;
        self.resident().is_some_and(|r| r > limit)
    }
}

/// The worker process: limits itself, compiles the specs it is sent, then
/// answers calls until its stdin closes. Never returns normally on a
/// runaway program: it is killed, or dies of its own limits.
pub fn worker_main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and
    // touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let _ = rlimit::setrlimit(rlimit::Resource::AS, ADDRESS_SPACE, ADDRESS_SPACE);
    let mut memory = Memory::new();
    let mut input = std::io::BufReader::with_capacity(64 << 10, std::io::stdin().lock());
    let mut output = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
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
        let (Ok(dest), Ok(message_id), Ok(body)) =
            (read_frame(&mut input), read_frame(&mut input), read_frame(&mut input))
        else {
            return std::process::ExitCode::from(2);
        };
        let dest = String::from_utf8_lossy(&dest);
        let message_id = String::from_utf8_lossy(&message_id);
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
                table.render(&dest, &body, &message_id)
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
        // The rest of a batch already read: its answers go out together,
        // and the worker retires only between batches (one that retires
        // mid-batch still leaves the server nothing lost: it sends the rest
        // to another worker).
        let batch_done = input.buffer().is_empty();
        let retiring = batch_done && memory.over(RETIRE_RESIDENT);
        let mut frame = Vec::with_capacity(meta.len() + bytes.len() + 9);
        frame.push(if retiring { tag | TAG_RETIRING } else { tag });
        put(&mut frame, &meta);
        put(&mut frame, &bytes);
        let sent = output
            .write_all(&frame)
            .and_then(|_| if batch_done { output.flush() } else { Ok(()) });
        if sent.is_err() || retiring {
            let _ = output.flush();
            return std::process::ExitCode::SUCCESS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The fault counts are the whole test process's (other tests run in
    // its threads), so only what growth of this test's own must cause is
    // asserted: that "not looked at" holds would depend on the others.
    fn memory_is_looked_at_after_growth_and_judged_by_what_is_resident() {
        let mut m = Memory::new();
        // Touch 48 MiB and keep it: looked at, and over a limit below what
        // this process holds.
        let held: Vec<u8> = vec![1; 48 << 20];
        let resident = m.resident().unwrap();
        assert!(resident >= 48 << 20, "{resident}");
        assert!(m.over(resident / 2));
        // Grown again since that look: looked at again, and judged by what
        // is resident now (over the old figure, under twice the new).
        let more: Vec<u8> = vec![1; 32 << 20];
        assert!(m.over(resident));
        let now = m.resident().unwrap();
        let more2: Vec<u8> = vec![1; 32 << 20];
        assert!(!m.over(now * 2));
        drop(more2);
        drop((held, more));
    }
}
