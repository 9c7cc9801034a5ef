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
