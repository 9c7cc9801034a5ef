//! Outcomes for producers that asked to wait (`Prefer: wait=N`).
//!
//! Only messages stored with `wants_reply` are tracked. Either side may come
//! first: a finished message leaves its outcome here for a while, and a
//! waiter that arrives later takes it; a waiter that arrives first is woken.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::delivery::Response;

/// How long an outcome nobody has collected is kept.
const KEEP: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct Completion {
    /// `delivered`, `dead_lettered` or `dropped`.
    pub state: &'static str,
    /// The downstream's last response, if the last attempt got one.
    pub response: Option<Response>,
    /// Why the last attempt failed, when it got no response.
    pub detail: String,
}

enum Slot {
    Waiting(Vec<oneshot::Sender<Completion>>),
    Done(Completion, Instant),
}

/// Where outcomes go beyond this process (cluster mode: to the other
/// instances, one of which the producer may be waiting on).
pub type Relay = Box<dyn Fn(u64, &Completion) + Send + Sync>;

#[derive(Default)]
pub struct Completions {
    slots: Mutex<HashMap<u64, Slot>>,
    relay: std::sync::OnceLock<Relay>,
}

impl Completions {
    /// Records how message `seq` finished, here and through the relay.
    pub fn finish(&self, seq: u64, c: Completion) {
        if let Some(relay) = self.relay.get() {
            relay(seq, &c);
        }
        self.finish_here(seq, c);
    }

    /// Sends every outcome finished here to `relay` too (set once).
    pub fn relay_to(&self, relay: Relay) {
        let _ = self.relay.set(relay);
    }

    /// Records an outcome another instance relayed.
    pub fn finish_here(&self, seq: u64, c: Completion) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        slots.retain(|_, s| !matches!(s, Slot::Done(_, at) if now.duration_since(*at) > KEEP));
        match slots.remove(&seq) {
            Some(Slot::Waiting(waiters)) => {
                for w in waiters {
                    let _ = w.send(c.clone());
                }
            }
            _ => {
                slots.insert(seq, Slot::Done(c, now));
            }
        }
    }

    /// Waits up to `timeout` for message `seq` to finish.
    pub async fn wait(&self, seq: u64, timeout: Duration) -> Option<Completion> {
        let rx = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.remove(&seq) {
                Some(Slot::Done(c, _)) => return Some(c),
                Some(Slot::Waiting(mut w)) => {
                    let (tx, rx) = oneshot::channel();
                    w.push(tx);
                    slots.insert(seq, Slot::Waiting(w));
                    rx
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    slots.insert(seq, Slot::Waiting(vec![tx]));
                    rx
                }
            }
        };
        let got = tokio::time::timeout(timeout, rx).await.ok().and_then(Result::ok);
        if got.is_none() {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(Slot::Waiting(w)) = slots.get_mut(&seq) {
                w.retain(|tx| !tx.is_closed());
                if w.is_empty() {
                    slots.remove(&seq);
                }
            }
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done() -> Completion {
        Completion {
            state: "delivered",
            response: None,
            detail: String::new(),
        }
    }

    #[tokio::test]
    async fn a_waiter_gets_an_outcome_that_came_first_or_later() {
        let c = std::sync::Arc::new(Completions::default());
        c.finish(1, done());
        assert_eq!(c.wait(1, Duration::from_millis(1)).await.unwrap().state, "delivered");
        let c2 = c.clone();
        let w = tokio::spawn(async move { c2.wait(2, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        while c.slots.lock().unwrap().get(&2).is_none() {
            tokio::task::yield_now().await;
        }
        c.finish(2, done());
        assert!(w.await.unwrap().is_some());
        assert!(c.wait(3, Duration::from_millis(1)).await.is_none());
        assert!(c.slots.lock().unwrap().is_empty());
    }
}
