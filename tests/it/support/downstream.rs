//! A programmable downstream: records every request it gets and answers
//! with whatever the test's current `respond` function says.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// The status it was answered with; 0 if its body never fully arrived
    /// (and it was not answered).
    pub status: u16,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }
    pub fn message_id(&self) -> String {
        self.header("x-tidegate-message-id").unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn header(mut self, k: &'static str, v: &str) -> Reply {
        self.headers.push((k, v.to_string()));
        self
    }
    pub fn body(mut self, b: &str) -> Reply {
        self.body = b.to_string();
        self
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

type Respond = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

#[derive(Clone)]
pub struct Downstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Record>>,
    respond: Arc<Mutex<Respond>>,
}

/// Everything seen, with counts by message id kept as it grows: a test
/// that polls them must not copy thousands of requests while the
/// downstream waits for the lock (that starves it into timeouts).
#[derive(Default)]
struct Record {
    all: Vec<Seen>,
    by_id: HashMap<String, usize>,
    ok_by_id: HashMap<String, usize>,
}

impl Record {
    fn push(&mut self, s: Seen) {
        let id = s.message_id();
        if s.status == 200 {
            *self.ok_by_id.entry(id.clone()).or_default() += 1;
        }
        *self.by_id.entry(id).or_default() += 1;
        self.all.push(s);
    }
}

impl Downstream {
    /// Starts a downstream answering 200 to everything.
    pub async fn start() -> Downstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ds = Downstream {
            addr,
            seen: Arc::default(),
            respond: Arc::new(Mutex::new(Arc::new(|_: &Seen, _: usize| Reply::status(200)))),
        };
        let app = axum::Router::new().fallback(handle).with_state(ds.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ds
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets how it answers: `f(request, how many times this message id
    /// was seen before, this one included)`.
    pub fn respond(&self, f: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) {
        *self.respond.lock().unwrap() = Arc::new(f);
    }

    /// Answers `status` to paths under `prefix`, 200 to the rest.
    pub fn refuse_under(&self, prefix: &'static str, status: u16) {
        self.respond(move |s, _| {
            if s.path_and_query.starts_with(prefix) {
                Reply::status(status)
            } else {
                Reply::status(200)
            }
        });
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().all.clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().all.len()
    }

    /// How many times each message id was answered 200.
    pub fn ok_by_id(&self) -> HashMap<String, usize> {
        self.seen.lock().unwrap().ok_by_id.clone()
    }

    /// Requests that got a 2xx answer, by message id.
    pub fn attempts_for(&self, id: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.message_id() == id).collect()
    }
}

async fn handle(State(ds): State<Downstream>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // A request whose body never fully arrived (the sender gave up: a
    // timeout, a kill) was not delivered: recorded with status 0, never
    // answered, so no count of 2xx answers takes it for a delivery.
    let (body, aborted) = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => (b, false),
        Err(_) => (Bytes::new(), true),
    };
    let seen = Seen {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts.headers,
        body,
        at: Instant::now(),
        status: 0,
    };
    if aborted {
        ds.seen.lock().unwrap().push(seen);
        return StatusCode::BAD_REQUEST.into_response();
    }
    let reply = {
        let respond = ds.respond.lock().unwrap().clone();
        let mut seen_all = ds.seen.lock().unwrap();
        let id = seen.message_id();
        let n = 1 + seen_all.by_id.get(&id).copied().unwrap_or(0);
        let reply = respond(&seen, n);
        let mut seen = seen;
        // A reply slower than tidegate's timeout never reaches it.
        seen.status = reply.status;
        seen_all.push(seen);
        reply
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut r = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (k, v) in reply.headers {
        r.headers_mut().insert(k, v.parse().unwrap());
    }
    r
}
