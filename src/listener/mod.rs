//! How both listeners (ingress and admin) hold their connections (SPEC
//! §17): a cap on open connections, past which new ones wait in the
//! kernel's backlog (an `accept` happens only when a slot is free, so file
//! descriptors never run out and one listener can never take the other's);
//! a deadline for a request's headers (`header_read_timeout`, slowloris),
//! counted from the connection's start for its first request and from the
//! first byte of each later one; and a deadline on a connection between
//! requests that does nothing at all (`idle_timeout`: no byte read or
//! written), so a kept-alive connection lives `idle_timeout`, not
//! `header_read_timeout`. While a request is being served, its body has
//! `body_timeout` and its handler its own bounds. Each request carries its
//! peer's address (`ConnectInfo`). Shutdown is graceful: connections
//! finish the request they are in.
//!
//! [`body`] reads request bodies with a size limit and a deadline
//! (`body_timeout`), and drains what is refused so the client reads the
//! answer instead of a reset.

pub mod body;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tower::ServiceExt as _;

/// Limits for one listener's connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most; more wait in the backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, counted from
    /// when the connection is ready for the next request.
    pub header_read_timeout: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
}

/// File descriptors kept for everything but the listeners' connections:
/// the journal's files and readers, downstream connections, the handoff
/// workers' pipes.
const FD_RESERVE: u64 = 256;

/// The connections each listener may hold without the process running out
/// of file descriptors: raises the soft open-files limit to the hard one,
/// then fits `(ingress, admin)` inside it, the admin listener first (it is
/// small, and it is how an operator sees a process in trouble). Each
/// lowered limit is logged with the limit that lowered it.
pub fn budgets(ingress: usize, admin: usize) -> (usize, usize) {
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    };
    let (i, a) = budgets_within(ingress, admin, nofile);
    for (key, configured, effective) in [("ingress", ingress, i), ("admin", admin, a)] {
        if effective < configured {
            tracing::warn!(
                configured,
                effective,
                open_files_limit = nofile,
                "{key}.max_connections lowered to fit the open-files limit; raise the limit (ulimit -n, LimitNOFILE) to allow more"
            );
        }
    }
    (i, a)
}

fn budgets_within(ingress: usize, admin: usize, nofile: u64) -> (usize, usize) {
    let room = usize::try_from(nofile.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    // The admin listener keeps at least a few connections, and at most a
    // quarter of the room; ingress has the rest.
    let admin = admin.min((room / 4).max(4)).max(1);
    let ingress = ingress.min(room.saturating_sub(admin)).max(1);
    (ingress, admin)
}

/// Serves `app` on `listener` until `stop` turns true, then lets open
/// connections finish their current request (at most `drain`).
pub async fn serve<S>(
    name: &'static str,
    listener: TcpListener,
    app: S,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) where
    S: tower::Service<axum::extract::Request, Response = axum::response::Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's own header deadline starts as soon as a kept-alive connection
    // goes idle, which would close every idle connection after
    // `header_read_timeout`: `Activity` keeps both deadlines instead.
    http.timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    loop {
        // A slot first: past the limit, connections wait in the backlog.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, or similar: back off, keep serving.
                tracing::warn!(listener = name, error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(limits));
        let io = Watched {
            stream,
            activity: activity.clone(),
        };
        let (begun, ended) = (activity.clone(), activity.clone());
        let app = app
            .clone()
            .map_request(move |req: axum::http::Request<hyper::body::Incoming>| {
                begun.set(Phase::Serving);
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            })
            .map_response(move |res| {
                ended.set(Phase::Between);
                res
            });
        let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                why = activity.overdue() => {
                    tracing::debug!(listener = name, %peer, "closing a connection: {why}");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    // Connections finish the request they are in, then close.
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}

/// Where a connection is between its requests.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Reading a request's headers: `header_read_timeout` runs.
    Headers = 0,
    /// A request is being served: its body and handler have their own
    /// deadlines.
    Serving = 1,
    /// Answered; waiting for the next request: `idle_timeout` runs until
    /// its first byte.
    Between = 2,
}

/// What the watcher of one connection knows of it. Times are in ms since
/// `start`.
///
/// The connection's task records its bytes and phases in atomics and wakes
/// the watcher only when a phase change brings a deadline earlier than the
/// time the watcher already sleeps to (`armed`): with the usual timeouts, a
/// kept-alive connection's next request starting.
/// Every other change moves deadlines later, which the watcher finds when
/// it wakes. Waking it at each phase change, and arming a new timer each
/// time, cost 4% of ingress throughput (HTTP alone, 256 connections).
struct Activity {
    start: Instant,
    header_read_ms: u64,
    idle_ms: u64,
    /// The last byte read or written.
    last: AtomicU64,
    phase: AtomicU8,
    /// When `phase` began.
    since: AtomicU64,
    /// When the watcher next looks (`u64::MAX` before it first does).
    armed: AtomicU64,
    changed: Notify,
}

impl Activity {
    fn new(limits: Limits) -> Activity {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Activity {
            start: Instant::now(),
            header_read_ms: ms(limits.header_read_timeout),
            idle_ms: ms(limits.idle_timeout),
            last: AtomicU64::new(0),
            phase: AtomicU8::new(Phase::Headers as u8),
            since: AtomicU64::new(0),
            armed: AtomicU64::new(u64::MAX),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Headers,
            1 => Phase::Serving,
            _ => Phase::Between,
        }
    }

    fn set(&self, phase: Phase) {
        let now = self.now();
        self.since.store(now, Ordering::Release);
        // SeqCst here and in the watcher (store, then load the other's):
        // either this sees the watcher's new `armed`, or the watcher sees
        // this phase.
        self.phase.store(phase as u8, Ordering::SeqCst);
        // With the usual timeouts only a request's headers starting bring
        // a deadline before the watcher's next look.
        if self.due().is_some_and(|(at, _)| at < self.armed.load(Ordering::SeqCst)) {
            self.changed.notify_one();
        }
    }

    /// A byte came in: between requests, that is the next one starting.
    fn read(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
        if self.phase() == Phase::Between {
            self.set(Phase::Headers);
        }
    }

    fn wrote(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// When the connection is next due in its phase, and why; `None` while
    /// a request is served (its body and handler have their own bounds).
    fn due(&self) -> Option<(u64, &'static str)> {
        let idle_at = self.last.load(Ordering::Relaxed).saturating_add(self.idle_ms);
        match self.phase() {
            Phase::Serving => None,
            Phase::Between => Some((idle_at, "idle past idle_timeout")),
            Phase::Headers => {
                let headers_at = self.since.load(Ordering::Acquire).saturating_add(self.header_read_ms);
                Some(if headers_at <= idle_at {
                    (headers_at, "headers not received within header_read_timeout")
                } else {
                    (idle_at, "idle past idle_timeout")
                })
            }
        }
    }

    /// Returns, saying why, once the connection is past a deadline of its
    /// phase.
    async fn overdue(&self) -> &'static str {
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            // Registered before the state is read: a notification after
            // the read is kept for the wait below.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = self.now();
            let look_at = match self.due() {
                Some((at, why)) if now >= at => return why,
                Some((at, _)) => at,
                // Serving: look again later (at least a second on: a
                // zero timeout must not spin); with the usual timeouts the
                // request's end moves the next deadline past this.
                None => now.saturating_add(self.header_read_ms.min(self.idle_ms).max(1000)),
            };
            self.armed.store(look_at, Ordering::SeqCst);
            // A request that started while this looked compared its
            // deadline with the old `armed`: look again.
            if self.due().is_some_and(|(at, _)| at < look_at) {
                continue;
            }
            // Long timeouts from the config must not overflow the instant.
            let wait = Duration::from_millis(look_at.saturating_sub(now));
            let from = tokio::time::Instant::now();
            sleep
                .as_mut()
                .reset(from.checked_add(wait).unwrap_or(from + Duration::from_secs(1 << 30)));
            tokio::select! {
                _ = &mut sleep => {}
                _ = changed => {}
            }
        }
    }
}

/// A connection that tells its [`Activity`] of every byte.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::budgets_within;

    #[test]
    fn both_listeners_fit_inside_the_open_files_limit_and_neither_takes_the_others_share() {
        assert_eq!(budgets_within(4096, 256, 1 << 20), (4096, 256));
        // 400 descriptors: 144 for connections, a quarter for admin.
        assert_eq!(budgets_within(4096, 256, 400), (108, 36));
        assert_eq!(budgets_within(4096, 256, 100), (1, 4));
    }
}
