//! Request bodies: read whole with a size limit and a deadline, and what a
//! refusal does with a body it did not want.
//!
//! A server that answers early (413, 401, 404, 415) and closes while the
//! client is still sending makes the kernel reset the connection, and most
//! clients then report a broken pipe, never the answer: a retrying
//! producer retries forever. So, as nginx's lingering close does, a
//! refused body is read and thrown away first, bounded in bytes and in
//! time ([`LINGER_BYTES`], [`LINGER_TIME`], [`LINGER_IDLE`]) so that a
//! refusal cannot be made into a way to hold a connection. A client that
//! sent `Expect: 100-continue` and was not told to continue has sent no
//! body: nothing is read, so it is never told to.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use tokio::time::Instant;

/// Most bytes of a refused body read and dropped.
pub const LINGER_BYTES: usize = 64 << 20;
/// Longest a refused body is read for, in all.
pub const LINGER_TIME: Duration = Duration::from_secs(30);
/// Longest wait for the next chunk of a refused body.
pub const LINGER_IDLE: Duration = Duration::from_secs(5);

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Over the limit (the rest was drained).
    TooLarge,
    /// Not received within the deadline.
    TimedOut,
    /// The connection failed while it was sent.
    Broken(String),
}

/// The whole body, at most `limit` bytes, received within `timeout`.
/// Over the limit, the rest is drained (as [`linger`] does) before the
/// error, so the client reads the answer.
pub async fn read(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    read_within(body, limit, timeout, LINGER_BYTES).await
}

/// As [`read`], draining at most `linger` bytes of a body over the limit
/// (less where the caller is not yet authenticated: the sign-in page).
pub async fn read_within(body: Body, limit: usize, timeout: Duration, linger: usize) -> Result<Bytes, BodyError> {
    let deadline = Instant::now() + timeout;
    let mut stream = body.into_data_stream();
    let mut out = BytesMut::new();
    loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(n) => n,
            Err(_) => return Err(BodyError::TimedOut),
        };
        match next {
            None => return Ok(out.freeze()),
            Some(Err(e)) => return Err(BodyError::Broken(e.to_string())),
            Some(Ok(chunk)) => {
                if out.len() + chunk.len() > limit {
                    drain(stream, chunk.len(), linger).await;
                    return Err(BodyError::TooLarge);
                }
                out.extend_from_slice(&chunk);
            }
        }
    }
}

/// Reads and drops a body nobody will use (see the module documentation).
pub async fn linger(body: Body, headers: &HeaderMap) {
    if expects_continue(headers) {
        return;
    }
    drain(body.into_data_stream(), 0, LINGER_BYTES).await;
}

/// Whether the client waits for `100 Continue` before it sends the body.
pub fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

async fn drain(mut stream: axum::body::BodyDataStream, mut seen: usize, most: usize) {
    let end = Instant::now() + LINGER_TIME;
    while seen <= most {
        let wait = (end - Instant::now().min(end)).min(LINGER_IDLE);
        match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(Ok(chunk))) => seen += chunk.len(),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole_and_one_over_it_is_refused() {
        let ok = read(Body::from("hello"), 5, Duration::from_secs(1)).await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"hello"));
        let over = read(Body::from("hello!"), 5, Duration::from_secs(1)).await;
        assert_eq!(over, Err(BodyError::TooLarge));
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_refused() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let body = Body::from_stream(tokio_stream(rx));
        tx.send(Ok(Bytes::from_static(b"{"))).await.unwrap();
        let got = read(body, 100, Duration::from_millis(100)).await;
        assert_eq!(got, Err(BodyError::TimedOut));
        drop(tx);
    }

    #[test]
    fn only_an_expect_100_continue_keeps_the_body_unread() {
        let mut h = HeaderMap::new();
        assert!(!expects_continue(&h));
        h.insert(header::EXPECT, "100-Continue".parse().unwrap());
        assert!(expects_continue(&h));
    }

    fn tokio_stream(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
