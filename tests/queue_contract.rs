//! The queue's contract (`tidegate::queue`), run against both backends
//! from one source: the SQLite journal on a temporary directory, and
//! JetStream on a real `nats-server` (one per test process, each queue
//! under a stream prefix of its own). `contract!` writes the same tests
//! for each, as apalis' `generic_storage_test!` does for its storages.
//!
//! Each queue is opened as tidegate opens it (`queue::lock`, then
//! `queue::open` on a parsed config), and every expectation is the
//! contract's, stated on the traits in `src/queue/contract.rs`.

#[path = "it/support/nats.rs"]
#[allow(dead_code)]
mod nats;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidegate::config::Config;
use tidegate::queue::review::{Decided, Decision, Verdict};
use tidegate::queue::{
    self, now_ms, Appended, DestinationRecord, Disposition, Limits, MessageState, NewMessage, Queues, ReviewIntent,
};

/// A queue on a backend, the directory its config lives in, kept as long
/// as the queue is.
struct Opened {
    queues: Queues,
    _dir: tempfile::TempDir,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.queues.close();
    }
}

async fn open(storage: &str, destinations: &[&str]) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "[ingress]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n{storage}\n",
        dir.path().join("data").display()
    );
    for d in destinations {
        text.push_str(&format!(
            "[[destination]]\nname = \"{d}\"\nurl = \"http://127.0.0.1:9/\"\nowner = \"t@example.com\"\n[destination.queue]\nmax_messages = 5\nmax_bytes = \"1MiB\"\n"
        ));
    }
    let path = dir.path().join("tidegate.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path).unwrap();
    let taken = queue::lock(&config).unwrap();
    let queues = queue::open(&config, taken).await.unwrap();
    Opened { queues, _dir: dir }
}

async fn sqlite() -> Opened {
    open("", &["d", "e"]).await
}

async fn jetstream() -> Opened {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = format!("C{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let url = tokio::task::spawn_blocking(nats::shared_url).await.unwrap();
    let storage = format!(
        "backend = \"jetstream\"\n[storage.jetstream]\nurls = [\"{url}\"]\nreplicas = 1\nstream_prefix = \"{prefix}\"\n"
    );
    let q = open(&storage, &["d", "e"]).await;
    // One instance dispatches a destination at a time: wait for the lease.
    for dest in ["d", "e"] {
        until(&format!("the lease on {dest}"), || async {
            q.queues.may_dispatch(dest)
        })
        .await;
    }
    q
}

const LIMITS: Limits = Limits {
    max_messages: 5,
    max_bytes: 1 << 20,
    idempotency_window_ms: 86_400_000,
};

fn msg(dest: &str, body: &str) -> NewMessage {
    NewMessage {
        dest: dest.into(),
        method: "POST".into(),
        path: "/x?y=1".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(body.to_string()),
        idempotency_key: None,
        wants_reply: false,
        received_at: now_ms(),
        producer: Some("p".into()),
        category: None,
        routed_from: None,
        order_key: None,
        review: None,
    }
}

async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stored(q: &Queues, m: NewMessage) -> u64 {
    match q.append(Arc::new(m), LIMITS).await.unwrap() {
        Appended::Stored { seq, .. } => seq,
        other => panic!("expected stored, got {other:?}"),
    }
}

/// Everything due now, fetched as dispatch fetches: each read skips what
/// earlier reads handed out (in flight), until a read brings nothing new.
async fn due(q: &Queues, dest: &str) -> Vec<tidegate::queue::Message> {
    let mut all: Vec<tidegate::queue::Message> = Vec::new();
    for _ in 0..5 {
        let leased: Vec<u64> = all.iter().map(|m| m.seq).collect();
        let got = q
            .fetch_ready(dest, 100, &move || leased.clone())
            .await
            .unwrap()
            .messages;
        if got.is_empty() && !all.is_empty() {
            break;
        }
        all.extend(got);
    }
    all
}

fn depth(q: &Queues, dest: &str) -> u64 {
    q.queue(dest).depth.load(Ordering::Relaxed)
}

async fn appended_messages_come_back_in_order_and_leave_when_delivered(q: &Queues) {
    let a = stored(q, msg("d", "a")).await;
    let b = stored(q, msg("d", "b")).await;
    assert_eq!(depth(q, "d"), 2, "counts are exact after this process's own changes");
    let got = due(q, "d").await;
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!(&got[0].body[..], b"a");
    assert_eq!(got[0].path, "/x?y=1");
    assert_eq!(q.parse_id(&q.message_id(a)), Some(a), "ids round-trip");
    q.settle(a, "d", 1, None, Disposition::Delivered { keep_body: false })
        .await
        .unwrap();
    assert_eq!(depth(q, "d"), 1);
    let s = q.status(a).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.dest.as_str(), s.attempts),
        (MessageState::Delivered, "d", 1)
    );
    assert_eq!(s.producer.as_deref(), Some("p"));
    q.settle(b, "d", 1, None, Disposition::Delivered { keep_body: false })
        .await
        .unwrap();
    assert_eq!(depth(q, "d"), 0);
    assert!(due(q, "d").await.is_empty());
}

async fn an_idempotency_key_stores_once_and_refuses_a_different_request(q: &Queues) {
    let mut m = msg("d", "one");
    m.idempotency_key = Some("k1".into());
    let first = stored(q, m.clone()).await;
    assert_eq!(
        q.append(Arc::new(m.clone()), LIMITS).await.unwrap(),
        Appended::Duplicate { seq: first }
    );
    m.body = Bytes::from_static(b"other");
    assert_eq!(
        q.append(Arc::new(m), LIMITS).await.unwrap(),
        Appended::KeyReused { seq: first }
    );
    assert_eq!(depth(q, "d"), 1, "nothing more stored");
}

async fn a_full_queue_refuses_and_stores_nothing(q: &Queues) {
    for i in 0..5 {
        stored(q, msg("e", &i.to_string())).await;
    }
    assert_eq!(
        q.append(Arc::new(msg("e", "6")), LIMITS).await.unwrap(),
        Appended::QueueFull
    );
    assert_eq!(depth(q, "e"), 5);
}

async fn a_rescheduled_message_waits_and_its_time_is_reported(q: &Queues) {
    let a = stored(q, msg("d", "a")).await;
    let got = due(q, "d").await;
    assert_eq!(got.len(), 1);
    let later = now_ms() + 60_000;
    let err = tidegate::queue::LastError {
        kind: "http_5xx".into(),
        status: Some(503),
        detail: "busy".into(),
        // The batch it went in is stored with it (SPEC §16).
        batch: Some(tidegate::queue::BatchRef {
            id: "b1".into(),
            size: 3,
            position: 2,
            status: Some(503),
            outcome: "http_5xx".into(),
        }),
    };
    q.settle(
        a,
        "d",
        1,
        Some(err.clone()),
        Disposition::Reschedule { visible_at: later },
    )
    .await
    .unwrap();
    q.give_back("d");
    let d = q.fetch_ready("d", 10, &Vec::new).await.unwrap();
    assert!(d.messages.is_empty(), "not due before its time");
    let s = q.status(a).await.unwrap().unwrap();
    assert_eq!(s.state, MessageState::Scheduled);
    assert_eq!(s.attempts, 1);
    assert_eq!(s.last_error, Some(err));
    assert_eq!(depth(q, "d"), 1, "a scheduled message is in the depth");
    // Delivered in a later batch: its status shows that batch, and no
    // failure.
    let delivered = tidegate::queue::LastError {
        batch: Some(tidegate::queue::BatchRef {
            id: "b2".into(),
            size: 2,
            position: 0,
            status: Some(200),
            outcome: "delivered".into(),
        }),
        ..Default::default()
    };
    q.settle(a, "d", 2, Some(delivered), Disposition::Delivered { keep_body: false })
        .await
        .unwrap();
    let view = q.status(a).await.unwrap().unwrap().view("x", false);
    assert_eq!(view["state"], "delivered");
    assert_eq!(view["last_error"], serde_json::Value::Null, "{view}");
    assert_eq!(view["batch"]["id"], "b2", "{view}");
    assert_eq!(view["batch"]["outcome"], "delivered", "{view}");
}

async fn a_batch_of_outcomes_is_settled_together(q: &Queues) {
    use tidegate::queue::Settlement;
    let a = stored(q, msg("d", "a")).await;
    let b = stored(q, msg("d", "b")).await;
    let c = stored(q, msg("d", "c")).await;
    assert_eq!(due(q, "d").await.len(), 3);
    let later = now_ms() + 60_000;
    q.settle_many(
        "d",
        vec![
            Settlement {
                seq: a,
                attempts: 1,
                last_error: None,
                disposition: Disposition::Delivered { keep_body: false },
            },
            Settlement {
                seq: b,
                attempts: 1,
                last_error: None,
                disposition: Disposition::DeadLetter {
                    reason: "http_4xx".into(),
                },
            },
            Settlement {
                seq: c,
                attempts: 1,
                last_error: None,
                disposition: Disposition::Reschedule { visible_at: later },
            },
        ],
    )
    .await
    .unwrap();
    q.give_back("d");
    assert_eq!(q.status(a).await.unwrap().unwrap().state, MessageState::Delivered);
    assert_eq!(q.status(b).await.unwrap().unwrap().state, MessageState::DeadLettered);
    assert_eq!(q.status(c).await.unwrap().unwrap().state, MessageState::Scheduled);
    assert_eq!(depth(q, "d"), 1, "the rescheduled one is still queued");
    assert!(due(q, "d").await.is_empty(), "none is due: one waits, two are finished");
}

async fn a_message_given_back_is_handed_out_again(q: &Queues) {
    let a = stored(q, msg("d", "a")).await;
    assert_eq!(due(q, "d").await.len(), 1);
    q.give_back("d");
    let again = due(q, "d").await;
    assert_eq!(again.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![a]);
    let leased = move || vec![a];
    q.give_back("d");
    assert!(
        q.fetch_ready("d", 10, &leased).await.unwrap().messages.is_empty(),
        "a message in flight is skipped"
    );
}

async fn dead_letters_are_listed_replayed_and_purged(q: &Queues) {
    let a = stored(q, msg("d", "a")).await;
    let b = stored(q, msg("d", "b")).await;
    due(q, "d").await;
    for seq in [a, b] {
        q.settle(
            seq,
            "d",
            2,
            None,
            Disposition::DeadLetter {
                reason: "http_4xx".into(),
            },
        )
        .await
        .unwrap();
    }
    until("two dead letters counted", || async {
        q.queue("d").dead_letters.load(Ordering::Relaxed) == 2
    })
    .await;
    assert_eq!(depth(q, "d"), 0);
    let listed = q.dead_letters("d", None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|l| l.seq).collect::<HashSet<_>>(),
        HashSet::from([a, b])
    );
    assert!(listed.iter().all(|l| l.reason == "http_4xx" && l.attempts == 2));
    let s = q.status(a).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.reason.as_deref()),
        (MessageState::DeadLettered, Some("http_4xx"))
    );
    assert_eq!(q.replay("d", Some(vec![a])).await.unwrap(), 1);
    q.give_back("d");
    until("the replayed message due again", || async {
        due(q, "d").await.iter().any(|m| m.seq == a || m.body[..] == b"a"[..])
    })
    .await;
    assert_eq!(q.purge_dead_letters("d").await.unwrap(), 1);
    until("no dead letters", || async {
        q.queue("d").dead_letters.load(Ordering::Relaxed) == 0
    })
    .await;
}

async fn a_key_ordered_fetch_gives_each_keys_oldest_only(q: &Queues) {
    let keyed = |k: &str, body: &str| NewMessage {
        order_key: Some(k.to_string()),
        ..msg("d", body)
    };
    let k1 = stored(q, keyed("k", "1")).await;
    let _k2 = stored(q, keyed("k", "2")).await;
    let j1 = stored(q, keyed("j", "1")).await;
    let heads = || async {
        let (due, _) = q
            .fetch_keyed("d", 10, HashSet::new(), HashSet::new(), String::new())
            .await
            .unwrap();
        due.messages.iter().map(|m| m.seq).collect::<HashSet<_>>()
    };
    until("each key's head", || async { heads().await == HashSet::from([k1, j1]) }).await;
    let (due, _) = q
        .fetch_keyed(
            "d",
            10,
            HashSet::from([k1]),
            HashSet::from(["j".to_string()]),
            String::new(),
        )
        .await
        .unwrap();
    assert!(
        due.messages.is_empty(),
        "a key in flight and a halted key hand out nothing"
    );
}

/// A record reads back with the revision its write got, and a later write
/// gets a later revision (or 0 throughout, where reads are always current):
/// what lets a follower tell a replica's stale answer from a new change.
async fn destination_records_are_kept(q: &Queues) {
    let mut rec = DestinationRecord {
        state: "paused".into(),
        reason: "operator".into(),
        head_seq: None,
        revision: 0,
    };
    let first = q.set_destination_record("d", rec.clone()).await.unwrap();
    rec.state = "running".into();
    let second = q.set_destination_record("d", rec.clone()).await.unwrap();
    assert!(second > first || second == 0 && first == 0, "{first} then {second}");
    rec.revision = second;
    until("the newer record read back", || async {
        q.destination_records().await.unwrap().get("d") == Some(&rec)
    })
    .await;
}

async fn a_held_message_waits_for_a_decision_and_the_first_decision_wins(q: &Queues) {
    let mut m = msg("d", r#"{"x": 1}"#);
    m.review = Some(ReviewIntent {
        hold: Some("predicate"),
        ..ReviewIntent::default()
    });
    let seq = match q.append(Arc::new(m), LIMITS).await.unwrap() {
        Appended::Stored { seq, held } => {
            assert_eq!(held, Some("predicate"));
            seq
        }
        other => panic!("{other:?}"),
    };
    // Nothing held is handed out (JetStream parks it as it meets it).
    for _ in 0..3 {
        assert!(due(q, "d").await.iter().all(|m| m.seq != seq));
    }
    until("the item open for review", || async {
        q.open_reviews(Some("d".into()), None, 0, 10)
            .await
            .unwrap()
            .iter()
            .any(|i| i.seq == seq)
    })
    .await;
    let decision = |verdict, who: &str| Decision {
        verdict,
        reviewer: who.to_string(),
        note: None,
        corrected: None,
        patch: None,
        at: now_ms(),
    };
    match q.decide(seq, decision(Verdict::Approve, "ann")).await.unwrap() {
        Decided::Done { dest, kind, .. } => assert_eq!((dest.as_str(), kind.as_str()), ("d", "held")),
        other => panic!("{other:?}"),
    }
    match q.decide(seq, decision(Verdict::Reject, "bob")).await.unwrap() {
        Decided::AlreadyDecided { decision, reviewer } => {
            assert_eq!((decision.as_str(), reviewer.as_deref()), ("approve", Some("ann")))
        }
        other => panic!("{other:?}"),
    }
    q.give_back("d");
    until("the approved message handed out", || async {
        due(q, "d")
            .await
            .iter()
            .any(|m| q.message_id(m.seq) == q.message_id(seq))
    })
    .await;
    let item = q.review_item(seq).await.unwrap().unwrap();
    assert_eq!(
        (item.decision.as_deref(), item.reviewer.as_deref()),
        (Some("approve"), Some("ann"))
    );
}

async fn late_feedback_finds_its_original_and_an_override_replaces_an_approval(q: &Queues) {
    let decision = |verdict, who: &str, corrected: Option<&str>| Decision {
        verdict,
        reviewer: who.to_string(),
        note: None,
        corrected: corrected.map(|c| Bytes::from(c.to_string())),
        patch: None,
        at: now_ms(),
    };
    // Delivered on a destination under review: the body is kept.
    let kept = stored(q, msg("d", r#"{"a": 1}"#)).await;
    let gone = stored(q, msg("d", r#"{"b": 1}"#)).await;
    let fetched = due(q, "d").await;
    assert_eq!(fetched.len(), 2);
    q.settle(kept, "d", 1, None, Disposition::Delivered { keep_body: true })
        .await
        .unwrap();
    q.settle(gone, "d", 1, None, Disposition::Delivered { keep_body: false })
        .await
        .unwrap();
    assert_eq!(q.kept_body(kept).await.unwrap().as_deref(), Some(&br#"{"a": 1}"#[..]));
    assert_eq!(q.kept_body(gone).await.unwrap(), None);
    // Feedback with a correction on it: the original is on the record.
    match q
        .decide(kept, decision(Verdict::Overridden, "ops", Some(r#"{"a": 2}"#)))
        .await
        .unwrap()
    {
        Decided::Done { kind, .. } => assert_eq!(kind, "feedback"),
        other => panic!("{other:?}"),
    }
    let item = q.review_item(kept).await.unwrap().unwrap();
    assert_eq!(item.original.as_deref(), Some(&br#"{"a": 1}"#[..]));
    assert_eq!(item.corrected.as_deref(), Some(&br#"{"a": 2}"#[..]));

    // An approved item overridden downstream counts as overridden.
    let mut m = msg("e", r#"{"c": 1}"#);
    m.review = Some(ReviewIntent {
        hold: Some("predicate"),
        ..ReviewIntent::default()
    });
    let held = stored(q, m).await;
    until("the item open for review", || async {
        q.open_reviews(Some("e".into()), None, 0, 10)
            .await
            .unwrap()
            .iter()
            .any(|i| i.seq == held)
    })
    .await;
    assert!(matches!(
        q.decide(held, decision(Verdict::Approve, "ann", None)).await.unwrap(),
        Decided::Done { .. }
    ));
    // "correct" says nothing the approval did not.
    assert!(matches!(
        q.decide(held, decision(Verdict::Correct, "ops", None)).await.unwrap(),
        Decided::AlreadyDecided { .. }
    ));
    assert!(matches!(
        q.decide(held, decision(Verdict::Overridden, "ops", None))
            .await
            .unwrap(),
        Decided::Done { .. }
    ));
    let item = q.review_item(held).await.unwrap().unwrap();
    assert_eq!(item.decision.as_deref(), Some("overridden"));
    assert_eq!(item.note.as_deref(), Some("approved by ann"));
    // And a second override is refused: the first decision wins again.
    assert!(matches!(
        q.decide(held, decision(Verdict::Overridden, "bob", None))
            .await
            .unwrap(),
        Decided::AlreadyDecided { .. }
    ));
    let category = item.category.clone();
    until("the tally to count the override", || async {
        let t = q.review_tally("e", &category, 0).await.unwrap();
        t.overridden == 1 && t.approved == 0 && t.reviewed() == 1
    })
    .await;
}

/// Acts come back in the order recorded, filtered, from the front or (the
/// newest) from the back, across more than one read chunk.
async fn the_audit_trail_keeps_acts_in_order_and_filters_them(q: &Queues) {
    use tidegate::queue::audit::{Act, Filter};
    let now = now_ms();
    for i in 0..600u64 {
        let actor = if i % 3 == 0 { "ana" } else { "bo" };
        let act = Act::now(
            actor,
            "pause",
            Some("d"),
            Some(i.to_string()),
            serde_json::json!({ "i": i }),
        );
        q.record_act(Act { at: now, ..act }).await.unwrap();
    }
    let targets = |acts: &[tidegate::queue::audit::Entry]| -> Vec<u64> {
        acts.iter()
            .map(|e| e.act.target.as_deref().unwrap().parse().unwrap())
            .collect()
    };
    let all = q
        .acts(Filter {
            limit: 1000,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(targets(&all), (0..600).collect::<Vec<_>>());
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let ana = q
        .acts(Filter {
            actor: Some("ana".into()),
            limit: 1000,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(targets(&ana), (0..600).step_by(3).collect::<Vec<_>>());
    let page = q
        .acts(Filter {
            after: all[299].seq,
            limit: 3,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(targets(&page), [300, 301, 302]);
    let newest = q
        .acts(Filter {
            limit: 5,
            newest: true,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(targets(&newest), [595, 596, 597, 598, 599]);
    let newest_ana = q
        .acts(Filter {
            actor: Some("ana".into()),
            limit: 2,
            newest: true,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(targets(&newest_ana), [594, 597]);
    let none = q
        .acts(Filter {
            since: now + 1,
            limit: 10,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

macro_rules! contract {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let q = super::$backend().await;
                    super::$case(&q.queues).await;
                }
            )*
        }
    };
}

macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        contract!(sqlite: $($case),*);
        contract!(jetstream: $($case),*);
    };
}

on_both!(
    appended_messages_come_back_in_order_and_leave_when_delivered,
    an_idempotency_key_stores_once_and_refuses_a_different_request,
    a_full_queue_refuses_and_stores_nothing,
    a_rescheduled_message_waits_and_its_time_is_reported,
    a_batch_of_outcomes_is_settled_together,
    a_message_given_back_is_handed_out_again,
    dead_letters_are_listed_replayed_and_purged,
    a_key_ordered_fetch_gives_each_keys_oldest_only,
    destination_records_are_kept,
    a_held_message_waits_for_a_decision_and_the_first_decision_wins,
    late_feedback_finds_its_original_and_an_override_replaces_an_approval,
    the_audit_trail_keeps_acts_in_order_and_filters_them,
);
