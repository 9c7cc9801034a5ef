//! The producer listener's connection handling: a cap on open connections
//! (one over it gets a 503 and is closed, so file descriptors never run
//! out), a deadline for a request's headers (slowloris), and graceful
//! shutdown. axum's `serve` has neither cap nor header deadline, so
//! connections are served with hyper directly.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Limits for producer connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

const OVER_LIMIT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 178\r\n\r\n{\"type\":\"https://tidegate.dev/problems/too_many_connections\",\"title\":\"Too many connections\",\"status\":503,\"detail\":\"ingress.max_connections reached\",\"code\":\"too_many_connections\"}";

/// File descriptors kept for everything but producer connections: the
/// journal's files and readers, the admin listener and its clients,
/// downstream connections, the refusal written to one connection over the
/// limit.
const FD_RESERVE: u64 = 256;

/// The producer connections tidegate can hold without running out of file
/// descriptors: raises the soft open-files limit to the hard one, then caps
/// `configured` so that the connection limit, with its clear 503, is always
/// reached before the process limit (where `accept` would fail silently for
/// producers and `open` for the journal).
pub fn connection_budget(configured: usize) -> usize {
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    };
    let budget = budget_within(configured, nofile);
    if budget < configured {
        tracing::warn!(
            configured,
            effective = budget,
            open_files_limit = nofile,
            "ingress.max_connections lowered to fit the open-files limit; raise the limit (ulimit -n, LimitNOFILE) to allow more"
        );
    }
    budget
}

fn budget_within(configured: usize, nofile: u64) -> usize {
    let room = nofile.saturating_sub(FD_RESERVE).max(1);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Serves `app` on `listener` until `stop` turns true, then waits for open
/// connections to finish their current request.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (mut stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, or similar: back off, keep serving.
                tracing::warn!(error = %e, "accepting a producer connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVER_LIMIT)).await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    // Connections finish the request they are in, then close.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_connection_limit_fits_inside_the_open_files_limit() {
        assert_eq!(super::budget_within(4096, 1024), 768);
        assert_eq!(super::budget_within(4096, 1 << 20), 4096);
        assert_eq!(super::budget_within(4096, 100), 1);
    }
}
