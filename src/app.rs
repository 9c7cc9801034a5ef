//! Wiring and lifecycle: bind the admin listener (it answers probes while
//! the rest starts), open the queues, start dispatch, bind the ingress
//! listener, then wait for a signal and shut down in order: stop taking
//! requests, let attempts in flight finish (up to `shutdown_timeout`), flush
//! and close the queues.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::admin;
use crate::config::Config;
use crate::config::{current, Live};
use crate::console::{self, Console};
use crate::delivery::HttpDeliverer;
use crate::dispatch::Dispatcher;
use crate::ingress::{self, Ingress};
use crate::listener;
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::queue;
use crate::reload::Reloader;

/// Runs tidegate until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // First of all: until a signal is caught its default action applies, and
    // a SIGTERM during start-up (opening a large journal takes a second or
    // two) would kill the process instead of stopping it cleanly once up.
    let mut signals = Signals::catch();
    // Everything tidegate creates (the journal and its WAL, salt, lock and
    // marks) holds what producers sent: readable by its user only, whatever
    // umask it was started with (SPEC §17).
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let started = std::time::Instant::now();
    let opening = || format!("opening the journal in {}", config.storage.path.display());
    // Before any port: a second tidegate on the same storage is told so,
    // not that a port the first one holds is taken.
    // Cluster mode keeps nothing on local disk: there is nothing to lock.
    let taken = queue::lock(&config).with_context(opening)?;
    // The config in force, for every listener from its first request.
    let live: Live = Arc::new(std::sync::RwLock::new(Arc::new(config.clone())));
    // Each listener's share of the file descriptors, fixed at start: one
    // can never take the other's.
    let (ingress_max, admin_max) = listener::budgets(
        config.ingress.connections.max_connections,
        config.admin.connections.max_connections,
    );
    let admin = AdminListener::bind(&config, &live, admin_max).await?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        admin = %admin.addr,
        storage = %config.storage.path.display(),
        config = %config.source.display(),
        "starting: admin listener up, opening the journal"
    );
    let queues = queue::open(&config, taken).await.map_err(anyhow::Error::msg)?;
    let metrics = Metrics::new();
    let deliver = Arc::new(HttpDeliverer::new().context("building the HTTP client")?);
    let dispatcher = Dispatcher::start(&config, queues.clone(), metrics.clone(), deliver).await?;
    warn_of_unconfigured(&queues, &dispatcher);

    let shutting_down = Arc::new(AtomicBool::new(false));
    let ingress_listener = TcpListener::bind(config.ingress.listen)
        .await
        .with_context(|| format!("binding ingress.listen {}", config.ingress.listen))?;
    let ingress_addr = ingress_listener.local_addr()?;

    let reloader = Arc::new(Reloader::new(
        config.source.clone(),
        live.clone(),
        dispatcher.clone(),
        queues.clone(),
    ));
    let ingress_app = ingress::service(Ingress {
        queues: queues.clone(),
        dispatcher: dispatcher.clone(),
        metrics: metrics.clone(),
        live: live.clone(),
        shutting_down: shutting_down.clone(),
    });
    let station = crate::review::Station::new(queues.clone(), dispatcher.clone(), metrics.clone(), live.clone());
    let ops = Ops {
        station: station.clone(),
        queues: queues.clone(),
        dispatcher: dispatcher.clone(),
        metrics: metrics.clone(),
        reloader: reloader.clone(),
        shutting_down: shutting_down.clone(),
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ingress_server = tokio::spawn(listener::serve(
        "ingress",
        ingress_listener,
        ingress_app,
        limits_of(&config.ingress.connections, ingress_max),
        stop_rx.clone(),
        Duration::from_secs(5),
    ));
    // The admin API and the console share the listener, not each other.
    admin.serve_in_full(admin::router(ops.clone()).merge(console::router(Console::new(ops))));
    let sweeper = tokio::spawn(sweep_history(queues.clone(), live.clone(), stop_rx.clone()));
    let station_loop = tokio::spawn(station.run(stop_rx.clone()));
    if queues.shared() {
        tokio::spawn(dispatcher.clone().follow_records(stop_rx.clone()));
    }
    if let Some(asked) = queues.reload_asked() {
        tokio::spawn(follow_reloads(asked, reloader.clone(), stop_rx.clone()));
    }
    announce_ready(ingress_addr, admin.addr, config.destinations.len(), started);

    let poisoned = wait_for_stop(&mut signals, &reloader, &queues).await;
    tracing::info!("shutdown requested: refusing new requests, draining deliveries in flight");
    shutting_down.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    drain(&mut signals, &dispatcher, &live).await;
    // Give the ingress server a moment to finish replies already committed.
    let _ = tokio::time::timeout(Duration::from_secs(5), ingress_server).await;
    sweeper.abort();
    station_loop.abort();
    let j = queues.clone();
    tokio::task::spawn_blocking(move || j.close()).await?;
    admin.stop().await;
    if poisoned {
        anyhow::bail!("the journal reported corruption while running; restart tidegate to check and salvage it");
    }
    tracing::info!("tidegate stopped cleanly");
    Ok(())
}

/// The admin listener, bound first: probes must see a live process while
/// the journal opens (minutes, when a large journal is salvaged). It serves
/// the full admin API once everything is up (`serve_in_full`), and stays up
/// until the very end so that probes and metrics see the drain.
struct AdminListener {
    addr: std::net::SocketAddr,
    full: Arc<std::sync::OnceLock<axum::Router>>,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl AdminListener {
    async fn bind(config: &Config, live: &Live, max_connections: usize) -> anyhow::Result<AdminListener> {
        let listener = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
        let addr = listener.local_addr()?;
        let full: Arc<std::sync::OnceLock<axum::Router>> = Arc::default();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let app = admin::during_start_up(full.clone(), live.clone());
        let server = tokio::spawn(listener::serve(
            "admin",
            listener,
            app,
            limits_of(&config.admin.connections, max_connections),
            stopped,
            Duration::from_secs(2),
        ));
        Ok(AdminListener {
            addr,
            full,
            stop,
            server,
        })
    }

    fn serve_in_full(&self, app: axum::Router) {
        let _ = self.full.set(app);
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.server).await;
    }
}

/// Messages kept for a destination no longer configured are kept, not
/// delivered: said once at start so that nobody waits for them.
fn warn_of_unconfigured(queues: &queue::Queues, dispatcher: &Dispatcher) {
    for name in queues.known_destinations() {
        let depth = queues.queue(&name).depth.load(Ordering::Relaxed);
        if dispatcher.destination(&name).is_none() && depth > 0 {
            tracing::warn!(destination = %name, depth, "the journal holds messages for a destination that is no longer configured; they are kept, not delivered");
        }
    }
}

/// Reloads whenever another instance of the cluster asks for it.
async fn follow_reloads(
    asked: Arc<tokio::sync::Notify>,
    reloader: Arc<Reloader>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = asked.notified() => reloader.follow().await,
            _ = stop.changed() => return,
        }
    }
}

fn announce_ready(
    ingress: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    destinations: usize,
    started: std::time::Instant,
) {
    tracing::info!(
        %ingress,
        %admin,
        destinations,
        startup_ms = started.elapsed().as_millis() as u64,
        "tidegate ready"
    );
    // One machine-readable line for scripts and tests that bind port 0.
    // Not println!: a reader of stdout that has gone away must not panic a
    // running tidegate.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "tidegate listening ingress={ingress} admin={admin}").and_then(|()| out.flush());
}

/// Waits for a stop signal (reloading on SIGHUP meanwhile) or for the
/// journal to report corruption; true for the latter.
async fn wait_for_stop(signals: &mut Signals, reloader: &Reloader, queues: &queue::Queues) -> bool {
    let stats = queues.stats().clone();
    tokio::select! {
        _ = signals.stop_requested(Some(reloader)) => false,
        _ = async {
            loop {
                let n = stats.poison.notified();
                if stats.poisoned.load(Ordering::SeqCst) { break }
                n.await;
            }
        } => true,
    }
}

/// Lets attempts in flight finish, up to `shutdown_timeout`. A second stop
/// signal cuts the wait short, as if it had run out: the journal still
/// closes cleanly, and what was in flight is still pending in it, to be
/// delivered again after the restart.
async fn drain(signals: &mut Signals, dispatcher: &Dispatcher, live: &Live) {
    let left = tokio::select! {
        left = dispatcher.shutdown(current(live).server.shutdown_timeout) => left,
        _ = signals.stop_requested(None) => {
            tracing::warn!("second stop signal: not waiting for attempts in flight");
            dispatcher.shutdown(Duration::ZERO).await
        }
    };
    if left > 0 {
        tracing::warn!(
            in_flight = left,
            "shutdown_timeout passed with attempts in flight; they will be delivered again after restart"
        );
    }
}

/// A listener's limits: its connection budget and its timeouts.
fn limits_of(c: &crate::config::Connections, max_connections: usize) -> listener::Limits {
    listener::Limits {
        max_connections,
        header_read_timeout: c.header_read_timeout,
        idle_timeout: c.idle_timeout,
    }
}

/// SIGTERM and SIGINT (stop) and SIGHUP (reload), caught from the start of
/// `run`; one that arrives before tidegate is up is kept until it is.
struct Signals {
    caught: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn catch() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let caught = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Some([term, int, hup]),
            _ => {
                tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
                None
            }
        };
        Signals { caught }
    }

    /// Returns once a stop is asked for, reloading on every SIGHUP meanwhile
    /// (ignoring it once shutting down, when there is no `reloader`).
    async fn stop_requested(&mut self, reloader: Option<&Reloader>) {
        let Some([term, int, hup]) = &mut self.caught else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => match reloader {
                    Some(reloader) => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        match reloader.reload().await {
                            Ok(changed) => {
                                let act = queue::audit::Act::now(queue::audit::SIGNAL, "reload", None, None, changed);
                                if let Err(e) = reloader.queues.record_act(act).await {
                                    tracing::error!(error = %e, "reloaded, but the audit trail could not record it");
                                }
                            }
                            Err(e) => tracing::error!(reason = %e, "reload refused; nothing changed"),
                        }
                    }
                    None => tracing::info!("SIGHUP while shutting down: not reloading"),
                },
            }
        }
    }
}

/// Runs a sweep until it answers less than a full chunk (the journal
/// deletes at most [`queue::SWEEP_CHUNK`] rows a call, so the writer is
/// never held long), or fails.
async fn in_chunks<F, Fut>(what: &str, mut sweep: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = queue::Result<u64>>,
{
    loop {
        match sweep().await {
            Ok(n) if n >= queue::SWEEP_CHUNK => continue,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed");
                return;
            }
        }
    }
}

/// Forgets finished messages past `history_retention`, review records
/// past `[review] retention` and acts past `[admin] audit_retention`, and
/// returns the space.
async fn sweep_history(queues: queue::Queues, live: Live, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let config = current(&live);
        let retention = config.storage.history_retention;
        let review_retention = config.review.retention.as_millis().min(i64::MAX as u128) as i64;
        let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let history_ms = retention.as_millis().min(i64::MAX as u128) as i64;
        in_chunks("history sweep", || queues.sweep(history_ms, review_retention)).await;
        let before = queue::now_ms() - config.admin.audit_retention.as_millis().min(i64::MAX as u128) as i64;
        in_chunks("audit trail sweep", || queues.sweep_acts(before)).await;
    }
}
