use super::*;
use crate::queue::review;
use crate::queue::*;
use bytes::Bytes;
use std::time::Duration;

fn limits() -> Limits {
    Limits {
        max_messages: 1000,
        max_bytes: 1 << 30,
        idempotency_window_ms: 86_400_000,
    }
}

fn msg(dest: &str, body: &str) -> NewMessage {
    NewMessage {
        dest: dest.into(),
        method: "POST".into(),
        path: "/x?y=1".into(),
        headers: vec![("content-type".into(), "text/plain".into())],
        body: Bytes::from(body.to_string()),
        idempotency_key: None,
        wants_reply: false,
        producer: None,
        category: None,
        routed_from: None,
        order_key: None,
        review: None,
        received_at: now_ms(),
    }
}

async fn stored(j: &Journal, m: NewMessage) -> u64 {
    match j.append(m.into(), limits()).await.unwrap() {
        Appended::Stored { seq, .. } => seq,
        other => panic!("expected stored, got {other:?}"),
    }
}

/// A stopped journal in a fresh directory holding one message per body,
/// all for destination "d"; returns the directory and their seqs.
async fn stopped_journal(bodies: &[&str]) -> (tempfile::TempDir, Vec<u64>) {
    let (dir, j) = fresh();
    let mut seqs = Vec::new();
    for b in bodies {
        seqs.push(stored(&j, msg("d", b)).await);
    }
    j.close();
    (dir, seqs)
}

/// An empty journal in a directory of its own.
fn fresh() -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    (dir, j)
}

/// The seqs of fetched messages, in order.
fn seqs_of(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Changes a stopped journal behind tidegate's back.
fn tamper(dir: &tempfile::TempDir, sql: &str, params: impl rusqlite::Params) {
    let c = rusqlite::Connection::open(dir.path().join(schema::DB_FILE)).unwrap();
    c.execute(sql, params).unwrap();
}

#[tokio::test]
async fn appended_messages_come_back_in_order_and_leave_on_ack() {
    let (_dir, j) = fresh();
    let a = stored(&j, msg("d", "a")).await;
    let b = stored(&j, msg("d", "b")).await;
    let got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), vec![a, b]);
    assert_eq!(&got[0].body[..], b"a");
    assert_eq!(j.queue("d").depth.load(Ordering::Relaxed), 2);
    j.settle(a, "d", 1, None, Disposition::Delivered { keep_body: false })
        .await
        .unwrap();
    let got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(got.len(), 1);
    assert_eq!(j.queue("d").depth.load(Ordering::Relaxed), 1);
    assert_eq!(j.status(a).await.unwrap().unwrap().state, MessageState::Delivered);
    // Excluding a leased seq hides it.
    assert!(j.fetch_ready("d", 10, &|| vec![b]).await.unwrap().messages.is_empty());
    j.close();
}

fn keyed(key: Option<&str>, body: &str) -> NewMessage {
    NewMessage {
        order_key: key.map(str::to_string),
        ..msg("d", body)
    }
}

/// What a key-ordered worker may take: each key's oldest pending message,
/// when it is due, its key is not halted and nothing of its key is in
/// flight; a message without a key (from before the destination ordered
/// by key) stands alone.
#[tokio::test]
async fn a_keyed_fetch_gives_each_keys_head_and_only_when_its_key_is_free() {
    let (_dir, j) = fresh();
    let none = stored(&j, keyed(None, "n")).await;
    let a1 = stored(&j, keyed(Some("a"), "a1")).await;
    let b1 = stored(&j, keyed(Some("b"), "b1")).await;
    let a2 = stored(&j, keyed(Some("a"), "a2")).await;
    let c1 = stored(&j, keyed(Some("c"), "c1")).await;
    let _c2 = stored(&j, keyed(Some("c"), "c2")).await;
    let fetch = |exclude: Vec<u64>, halted: Vec<&str>| {
        let j = j.clone();
        let halted = halted.into_iter().map(String::from).collect();
        async move {
            j.fetch_keyed("d", 10, exclude.into_iter().collect(), halted, String::new())
                .await
                .unwrap()
                .0
        }
    };
    let due = fetch(vec![], vec![]).await;
    assert_eq!(seqs_of(&due.messages), vec![none, a1, b1, c1]);
    assert_eq!(due.messages[1].order_key.as_deref(), Some("a"));
    // a1 in flight hides a2; c halted hides both of c's.
    assert_eq!(seqs_of(&fetch(vec![none, a1], vec!["c"]).await.messages), vec![b1]);
    // a1 waiting for a retry also hides a2, and bounds the sleep.
    let later = now_ms() + 60_000;
    j.settle(a1, "d", 1, None, Disposition::Reschedule { visible_at: later })
        .await
        .unwrap();
    let due = fetch(vec![none], vec![]).await;
    assert_eq!(seqs_of(&due.messages), vec![b1, c1]);
    assert_eq!(due.next_due, Some(later));
    // Once a1 is done, a2 is a's head.
    j.settle(a1, "d", 2, None, Disposition::Delivered { keep_body: false })
        .await
        .unwrap();
    assert_eq!(seqs_of(&fetch(vec![none, b1, c1], vec![]).await.messages), vec![a2]);
    j.close();
}

/// A key with a backlog longer than the window in front of the others
/// does not hide them: past the window, keys are found by their index,
/// and take turns.
#[tokio::test]
async fn keys_behind_a_long_backlog_are_found_and_take_turns() {
    let (_dir, j) = fresh();
    let mut hot = Vec::new();
    for i in 0..600 {
        hot.push(stored(&j, keyed(Some("hot"), &i.to_string())).await);
    }
    let a = stored(&j, keyed(Some("a"), "a")).await;
    let b = stored(&j, keyed(Some("b"), "b")).await;
    let c = stored(&j, keyed(Some("c"), "c")).await;
    let fetch = |limit: usize, after: String| {
        let j = j.clone();
        let in_flight = [hot[0]].into_iter().collect();
        async move {
            j.fetch_keyed("d", limit, in_flight, Default::default(), after)
                .await
                .unwrap()
        }
    };
    let (due, _) = fetch(10, String::new()).await;
    assert_eq!(seqs_of(&due.messages), vec![a, b, c], "hot's head is in flight");
    let (due, cursor) = fetch(1, "a".into()).await;
    assert_eq!((seqs_of(&due.messages), cursor.as_str()), (vec![b], "b"));
    let (due, cursor) = fetch(1, cursor).await;
    assert_eq!((seqs_of(&due.messages), cursor.as_str()), (vec![c], "c"));
    let (due, cursor) = fetch(1, cursor).await;
    assert_eq!((seqs_of(&due.messages), cursor.as_str()), (vec![a], "a"), "round again");
    j.close();
}

/// A halted key is recorded in the commit that reschedules its head, lasts
/// through a reopen, and is let go once, with or without its head.
#[tokio::test]
async fn a_halted_key_is_durable_and_released_once() {
    let (dir, j) = fresh();
    let k1 = stored(&j, keyed(Some("k"), "1")).await;
    let k2 = stored(&j, keyed(Some("k"), "2")).await;
    let halt = Disposition::HaltKey {
        key: "k".into(),
        reason: "permanent".into(),
    };
    j.settle(k1, "d", 1, None, halt).await.unwrap();
    j.close();
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    let halted = j.halted_keys().await.unwrap();
    assert_eq!(halted.len(), 1);
    assert_eq!((halted[0].key.as_str(), halted[0].seq), ("k", k1));
    assert_eq!(j.release_key("d", "other", true).await.unwrap(), None);
    assert_eq!(j.release_key("d", "k", true).await.unwrap(), Some(k1));
    assert_eq!(j.release_key("d", "k", true).await.unwrap(), None, "released once");
    let s = j.status(k1).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.reason.as_deref()),
        (MessageState::DeadLettered, Some("skipped_by_operator"))
    );
    assert_eq!(j.queue("d").dead_letters.load(Ordering::Relaxed), 1);
    assert_eq!(j.queue("d").depth.load(Ordering::Relaxed), 1);
    let (due, _) = j
        .fetch_keyed("d", 10, Default::default(), Default::default(), String::new())
        .await
        .unwrap();
    assert_eq!(seqs_of(&due.messages), vec![k2]);
    assert!(j.halted_keys().await.unwrap().is_empty());
    j.close();
}

#[tokio::test]
async fn a_fetch_skips_leased_messages_and_says_when_the_next_is_due() {
    let (_dir, j) = fresh();
    let a = stored(&j, msg("d", "a")).await;
    let b = stored(&j, msg("d", "b")).await;
    let c = stored(&j, msg("d", "c")).await;
    let later = now_ms() + 60_000;
    j.settle(c, "d", 1, None, Disposition::Reschedule { visible_at: later })
        .await
        .unwrap();
    // `a` leased: `b` is due; `c` waits for its retry and bounds the sleep.
    let due = j.fetch_ready("d", 10, &|| vec![a]).await.unwrap();
    assert_eq!(seqs_of(&due.messages), vec![b]);
    assert_eq!(&due.messages[0].body[..], b"b");
    assert_eq!(due.next_due, Some(later));
    // The limit counts messages returned, not leased ones skipped.
    let due = j.fetch_ready("d", 1, &|| vec![a]).await.unwrap();
    assert_eq!(seqs_of(&due.messages), vec![b]);
    // Everything due is leased: nothing to return, and nothing due before `c`.
    let due = j.fetch_ready("d", 10, &|| vec![a, b]).await.unwrap();
    assert!(due.messages.is_empty());
    assert_eq!(due.next_due, Some(later));
    j.settle(c, "d", 2, None, Disposition::Delivered { keep_body: false })
        .await
        .unwrap();
    assert_eq!(j.fetch_ready("d", 10, &|| vec![a, b]).await.unwrap().next_due, None);
    j.close();
}

#[tokio::test]
async fn queue_limits_are_exact_within_one_batch() {
    let (_dir, j) = fresh();
    let l = Limits {
        max_messages: 5,
        ..limits()
    };
    let mut tasks = Vec::new();
    for i in 0..20 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            j.append(msg("d", &i.to_string()).into(), l).await.unwrap()
        }));
    }
    let mut stored_n = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Appended::Stored { .. }) {
            stored_n += 1;
        }
    }
    assert_eq!(stored_n, 5);
    assert_eq!(j.queue("d").depth.load(Ordering::Relaxed), 5);
    j.close();
}

#[tokio::test]
async fn a_repeated_idempotency_key_stores_nothing_new() {
    let (_dir, j) = fresh();
    let mut m = msg("d", "a");
    m.idempotency_key = Some("k1".into());
    let first = stored(&j, m.clone()).await;
    assert_eq!(
        j.append(m.clone().into(), limits()).await.unwrap(),
        Appended::Duplicate { seq: first }
    );
    // The same key on another destination is a different message.
    m.dest = "e".into();
    assert!(matches!(
        j.append(m.into(), limits()).await.unwrap(),
        Appended::Stored { .. }
    ));
    assert_eq!(j.queue("d").depth.load(Ordering::Relaxed), 1);
    j.close();
}

#[tokio::test]
async fn a_key_reused_for_another_method_path_or_body_is_refused_and_stores_nothing() {
    let (_dir, j) = fresh();
    let mut m = msg("d", "a");
    m.idempotency_key = Some("k1".into());
    let first = stored(&j, m.clone()).await;
    let mut other_body = m.clone();
    other_body.body = Bytes::from_static(b"b");
    let mut other_path = m.clone();
    other_path.path = "/x?y=2".into();
    let mut other_method = m.clone();
    other_method.method = "PUT".into();
    for reused in [other_body, other_path, other_method] {
        assert_eq!(
            j.append(reused.into(), limits()).await.unwrap(),
            Appended::KeyReused { seq: first }
        );
    }
    // Other headers are not covered: the same request again is a repeat.
    m.headers.push(("x-trace".into(), "2".into()));
    assert_eq!(
        j.append(m.into(), limits()).await.unwrap(),
        Appended::Duplicate { seq: first }
    );
    assert_eq!(j.queue("d").depth.load(Ordering::Relaxed), 1);
    j.close();
}

#[tokio::test]
async fn a_journal_from_before_fingerprints_opens_and_its_keys_answer_as_repeats() {
    let (dir, j) = fresh();
    let mut m = msg("d", "a");
    m.idempotency_key = Some("k1".into());
    let first = stored(&j, m.clone()).await;
    j.close();
    {
        let c = rusqlite::Connection::open(dir.path().join(schema::DB_FILE)).unwrap();
        // The table as builds before fingerprints made it.
        c.execute_batch("ALTER TABLE idempotency DROP COLUMN fingerprint")
            .unwrap();
    }
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    m.body = Bytes::from_static(b"changed");
    assert_eq!(
        j.append(m.into(), limits()).await.unwrap(),
        Appended::Duplicate { seq: first }
    );
    j.close();
}

#[tokio::test]
async fn rescheduled_messages_stay_hidden_until_visible() {
    let (_dir, j) = fresh();
    let a = stored(&j, msg("d", "a")).await;
    let later = now_ms() + 60_000;
    j.settle(a, "d", 1, None, Disposition::Reschedule { visible_at: later })
        .await
        .unwrap();
    let due = j.fetch_ready("d", 10, &Vec::new).await.unwrap();
    assert!(due.messages.is_empty());
    assert_eq!(due.next_due, Some(later));
    let (head, vis) = j.head("d").await.unwrap().unwrap();
    assert_eq!((head.seq, head.attempts, vis), (a, 1, later));
    assert_eq!(j.queue_detail("d").await.unwrap().1, 1);
    j.close();
}

#[tokio::test]
async fn dead_letters_replay_and_purge() {
    let (_dir, j) = fresh();
    let a = stored(&j, msg("d", "a")).await;
    let b = stored(&j, msg("d", "b")).await;
    for s in [a, b] {
        let reason = "permanent_failure".to_string();
        j.settle(s, "d", 3, None, Disposition::DeadLetter { reason })
            .await
            .unwrap();
    }
    let q = j.queue("d");
    assert_eq!(
        (q.depth.load(Ordering::Relaxed), q.dead_letters.load(Ordering::Relaxed)),
        (0, 2)
    );
    let dl = j.dead_letters("d", None, 1).await.unwrap();
    assert_eq!(dl[0].seq, a);
    assert_eq!(j.dead_letters("d", Some(a), 10).await.unwrap()[0].seq, b);
    assert_eq!(j.replay("d", Some(vec![a])).await.unwrap(), 1);
    let back = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!((back[0].seq, back[0].attempts), (a, 0));
    assert_eq!(j.purge_dead_letters("d").await.unwrap(), 1);
    assert_eq!(
        (q.depth.load(Ordering::Relaxed), q.dead_letters.load(Ordering::Relaxed)),
        (1, 0)
    );
    j.close();
}

#[tokio::test]
async fn reopening_keeps_pending_messages_and_counts() {
    let (dir, j) = fresh();
    let a = stored(&j, msg("d", "hello")).await;
    let id = j.message_id(a);
    j.close();
    drop(j);
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    assert_eq!(j.parse_id(&id), Some(a));
    assert_eq!(j.queue("d").depth.load(Ordering::Relaxed), 1);
    assert_eq!(j.queue("d").bytes.load(Ordering::Relaxed), 5);
    assert_eq!(
        &j.fetch_ready("d", 1, &Vec::new).await.unwrap().messages[0].body[..],
        b"hello"
    );
    j.close();
}

#[tokio::test]
async fn a_row_with_a_bad_checksum_is_quarantined_and_others_still_flow() {
    let (dir, seqs) = stopped_journal(&["a", "b"]).await;
    let (a, b) = (seqs[0], seqs[1]);
    tamper(&dir, "UPDATE messages SET body = x'7a7a' WHERE seq = ?1", [a as i64]);
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    let got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), vec![b]);
    assert_eq!(j.status(a).await.unwrap().unwrap().state, MessageState::Quarantined);
    assert_eq!(j.stats().corrupt_records.load(Ordering::Relaxed), 1);
    assert_eq!(j.queue("d").depth.load(Ordering::Relaxed), 1);
    j.close();
}

#[tokio::test]
async fn a_row_whose_columns_no_longer_decode_is_quarantined_and_others_still_flow() {
    // Found by `lifecycle::random_bytes_...`: random bytes turned a method
    // into invalid UTF-8, and the failed decode stalled the whole queue.
    let (dir, seqs) = stopped_journal(&["a", "b", "c"]).await;
    let (a, b, c) = (seqs[0], seqs[1], seqs[2]);
    tamper(
        &dir,
        "UPDATE messages SET method = CAST(x'ff80' AS TEXT) WHERE seq = ?1",
        [a as i64],
    );
    tamper(&dir, "UPDATE messages SET attempts = 'many' WHERE seq = ?1", [b as i64]);
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    let got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), vec![c]);
    for seq in [a, b] {
        assert_eq!(j.status(seq).await.unwrap().unwrap().state, MessageState::Quarantined);
    }
    assert_eq!(j.stats().corrupt_records.load(Ordering::Relaxed), 2);
    j.close();
}

#[tokio::test]
async fn an_unreadable_destination_state_is_left_out_not_fatal() {
    let (dir, j) = fresh();
    for name in ["crm", "erp"] {
        let record = DestinationRecord {
            state: "paused".into(),
            reason: "paused by an operator".into(),
            head_seq: None,
            revision: 0,
        };
        j.set_destination_record(name, record).await.unwrap();
    }
    j.close();
    tamper(
        &dir,
        "UPDATE destinations SET reason = CAST(x'ff80' AS TEXT) WHERE dest = 'crm'",
        [],
    );
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    let records = j.destination_records().await.unwrap();
    assert_eq!(records.keys().collect::<Vec<_>>(), vec!["erp"]);
    assert_eq!(records["erp"].state, "paused");
    j.close();
}

#[tokio::test]
async fn a_queue_count_that_cannot_be_read_sends_the_journal_to_salvage() {
    // Text that is not UTF-8 in a pending row's destination fails the count
    // at open: damage, so salvaged, where it used to refuse to start.
    let (dir, seqs) = stopped_journal(&["a", "b"]).await;
    tamper(
        &dir,
        "UPDATE messages SET dest = CAST(x'ff80' AS TEXT) WHERE seq = ?1",
        [seqs[0] as i64],
    );
    let (_, bodies) = ids_and_bodies(&dir, &seqs).await;
    assert!(dir.path().join("quarantine").exists(), "salvaged");
    assert_eq!(bodies, vec![b"b".to_vec()]);
}

#[tokio::test]
async fn a_garbage_database_file_is_quarantined_and_start_up_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(schema::DB_FILE), vec![0xAB; 8192]).unwrap();
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    assert!(dir.path().join("quarantine").read_dir().unwrap().next().is_some());
    assert!(matches!(
        j.append(msg("d", "a").into(), limits()).await.unwrap(),
        Appended::Stored { .. }
    ));
    j.close();
}

#[tokio::test]
async fn corruption_seen_while_running_sends_the_next_start_to_salvage() {
    let (dir, j) = fresh();
    let a = stored(&j, msg("d", "a")).await;
    let b = stored(&j, msg("d", "b")).await;
    // What a poisoned journal leaves behind: damage the quick check may not
    // see (an index that disagrees with its table) must still be salvaged.
    j.inner
        .health
        .note_error(&QueueError::Corrupt("index disagrees with table".into()));
    j.close();
    drop(j);
    assert!(dir.path().join(schema::SUSPECT_FILE).exists());
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    assert!(dir.path().join("quarantine").read_dir().unwrap().next().is_some());
    assert!(!dir.path().join(schema::SUSPECT_FILE).exists());
    let got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), vec![a, b]);
    assert_eq!(j.stats().corrupt_records.load(Ordering::Relaxed), 0);
    j.close();
}

/// The ids a journal in `dir` gives its messages, and its bodies.
async fn ids_and_bodies(dir: &tempfile::TempDir, seqs: &[u64]) -> (Vec<String>, Vec<Vec<u8>>) {
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    let ids = seqs.iter().map(|&s| j.message_id(s)).collect();
    let bodies = j
        .fetch_ready("d", 10, &Vec::new)
        .await
        .unwrap()
        .messages
        .iter()
        .map(|m| m.body.to_vec())
        .collect();
    j.close();
    (ids, bodies)
}

#[tokio::test]
async fn message_ids_survive_a_salvage_that_cannot_read_the_salt() {
    // Found by `lifecycle::random_bytes_...`: random bytes in the meta
    // table gave the salvaged journal a new salt, so every message id
    // changed (and with it the default Idempotency-Key downstream).
    let (dir, seqs) = stopped_journal(&["a", "b"]).await;
    let (before, _) = ids_and_bodies(&dir, &seqs).await;
    tamper(&dir, "UPDATE meta SET value = 'zz' WHERE key = 'salt'", []);
    let (after, bodies) = ids_and_bodies(&dir, &seqs).await;
    assert!(dir.path().join("quarantine").exists(), "salvaged");
    assert_eq!(after, before);
    assert_eq!(bodies, vec![b"a".to_vec(), b"b".to_vec()]);

    // A salt row gone altogether: no salvage needed, same ids.
    tamper(&dir, "DELETE FROM meta WHERE key = 'salt'", []);
    assert_eq!(ids_and_bodies(&dir, &seqs).await.0, before);
}

#[tokio::test]
async fn an_unreadable_format_version_is_damage_not_a_newer_format() {
    let (dir, seqs) = stopped_journal(&["a"]).await;
    tamper(
        &dir,
        "UPDATE meta SET value = 'q\u{1}' WHERE key = 'format_version'",
        [],
    );
    let (_, bodies) = ids_and_bodies(&dir, &seqs).await;
    assert!(dir.path().join("quarantine").exists(), "salvaged");
    assert_eq!(bodies, vec![b"a".to_vec()]);
}

#[tokio::test]
async fn a_journal_from_a_newer_format_is_refused_and_left_untouched() {
    let (dir, _) = stopped_journal(&["a"]).await;
    tamper(&dir, "UPDATE meta SET value = '999' WHERE key = 'format_version'", []);
    let err = Journal::open(dir.path(), u64::MAX).err().expect("refused");
    assert!(err.to_string().contains("format version 999"), "{err}");
    assert!(!dir.path().join("quarantine").exists(), "nothing was quarantined");
    let c = rusqlite::Connection::open(dir.path().join(schema::DB_FILE)).unwrap();
    let n: i64 = c.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn disk_limit_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1).unwrap();
    assert!(matches!(
        j.append(msg("d", "a").into(), limits()).await,
        Err(QueueError::StorageFull)
    ));
    j.close();
}

#[tokio::test]
async fn sweep_forgets_finished_history() {
    let (_dir, j) = fresh();
    let a = stored(&j, msg("d", "a")).await;
    j.settle(a, "d", 1, None, Disposition::Delivered { keep_body: false })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await; // history must be strictly older than the cutoff
    assert_eq!(j.sweep(0, i64::MAX).await.unwrap(), 1);
    assert!(j.status(a).await.unwrap().is_none());
    j.close();
}

#[tokio::test]
async fn messages_missing_below_the_high_water_mark_are_counted_as_lost() {
    let (dir, j) = fresh();
    for i in 0..3 {
        stored(&j, msg("d", &i.to_string())).await;
    }
    j.close();
    drop(j);
    assert_eq!(
        std::fs::read_to_string(dir.path().join(schema::HWM_FILE))
            .unwrap()
            .trim(),
        "00000000000000000003"
    );
    // As if the WAL holding seqs 4..=10 had been deleted while stopped.
    std::fs::write(dir.path().join(schema::HWM_FILE), "10").unwrap();
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    assert_eq!(j.stats().corrupt_records.load(Ordering::Relaxed), 7);
    // Ids of lost messages are never handed out again.
    assert_eq!(stored(&j, msg("d", "new")).await, 11);
    j.close();
}

#[tokio::test]
async fn a_salvage_counts_only_what_is_missing_above_everything_known() {
    let (dir, j) = fresh();
    let a = stored(&j, msg("d", "a")).await;
    j.close();
    drop(j);
    // Far ahead, as after purging millions of dead letters: the floor and
    // the mark agree, so nothing is missing; then two more acknowledged
    // messages whose rows are gone.
    let far: i64 = 5_000_000;
    let c = rusqlite::Connection::open(dir.path().join(schema::DB_FILE)).unwrap();
    schema::set_meta(&c, "seq_floor", &far.to_string()).unwrap();
    drop(c);
    std::fs::write(dir.path().join(schema::HWM_FILE), (far + 2).to_string()).unwrap();
    std::fs::write(dir.path().join(schema::SUSPECT_FILE), "test").unwrap();
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    assert_eq!(j.stats().corrupt_records.load(Ordering::Relaxed), 2);
    let got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), vec![a]);
    assert_eq!(stored(&j, msg("d", "new")).await, far as u64 + 3);
    j.close();
}

#[tokio::test]
async fn salvage_survives_text_that_is_not_utf8() {
    // Found by `lifecycle::random_bytes_...`: the salvage itself panicked on
    // such a row, so tidegate could not start at all.
    let (dir, seqs) = stopped_journal(&["a", "b"]).await;
    let (a, b) = (seqs[0], seqs[1]);
    tamper(
        &dir,
        "UPDATE messages SET path = CAST(x'ff80' AS TEXT) WHERE seq = ?1",
        [a as i64],
    );
    std::fs::write(dir.path().join(schema::SUSPECT_FILE), "test").unwrap();
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    assert_eq!(j.stats().corrupt_records.load(Ordering::Relaxed), 1);
    let got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), vec![b]);
    j.close();
}

/// Overwrites the root page of `name` (a table or an index) in a stopped
/// journal with bytes no b-tree page starts with, and marks the journal
/// suspect so the next open salvages it. Returns the page's type byte.
fn wreck_root_page(dir: &tempfile::TempDir, name: &str) -> u8 {
    let path = dir.path().join(schema::DB_FILE);
    let c = rusqlite::Connection::open(&path).unwrap();
    let root: u64 = c
        .query_row("SELECT rootpage FROM sqlite_master WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .unwrap();
    let page: u64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    drop(c);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = ((root - 1) * page) as usize;
    let kind = bytes[at];
    bytes[at..at + page as usize].fill(0xa5);
    std::fs::write(&path, bytes).unwrap();
    std::fs::write(dir.path().join(schema::SUSPECT_FILE), "test").unwrap();
    kind
}

/// A table's interior page: below it are leaves a b-tree walk can no longer
/// reach once it is damaged.
const TABLE_INTERIOR: u8 = 0x05;

/// Mostly 500-byte bodies; every tenth is 9,000 bytes, more than a page
/// holds, so its row continues on overflow pages.
fn bodies(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{i:04}{}", "w".repeat(if i % 10 == 3 { 9000 } else { 500 })))
        .collect()
}

#[tokio::test]
async fn a_damaged_interior_page_costs_none_of_the_messages_on_the_leaves_below_it() {
    let bodies = bodies(300);
    let (dir, seqs) = stopped_journal(&bodies.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(wreck_root_page(&dir, "messages"), TABLE_INTERIOR);

    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    assert!(dir.path().join("quarantine").exists(), "salvaged");
    assert_eq!(j.stats().corrupt_records.load(Ordering::Relaxed), 0, "nothing lost");
    let got = j.fetch_ready("d", 1000, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), seqs);
    assert!(got.iter().zip(&bodies).all(|(m, b)| m.body == b.as_bytes()));
    // Ids go on from where they were.
    assert_eq!(stored(&j, msg("d", "next")).await, seqs[299] + 1);
    j.close();
}

#[tokio::test]
async fn with_the_queue_index_damaged_too_finished_messages_stay_finished() {
    let bodies = bodies(300);
    let (dir, seqs) = stopped_journal(&bodies.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let db = dir.path().join(schema::DB_FILE);
    let all_pending = std::fs::read(&db).unwrap();
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    for &seq in &seqs[..100] {
        j.settle(seq, "d", 1, None, Disposition::Delivered { keep_body: false })
            .await
            .unwrap();
    }
    j.close();
    drop(j);
    // Stale copies of every row, from before the first 100 were delivered,
    // on pages read before the current ones: the file as it was, then the
    // file as it is (beyond the size the header gives, which SQLite
    // ignores, but a page-by-page read does not).
    let mut file = all_pending;
    file.extend(std::fs::read(&db).unwrap());
    std::fs::write(&db, file).unwrap();
    // No index left to say which rows are owed: every copy found on a leaf
    // speaks for itself, and a finished copy must win over a pending one
    // whichever is read first.
    assert_eq!(wreck_root_page(&dir, "messages"), TABLE_INTERIOR);
    wreck_root_page(&dir, "messages_pending");

    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    assert_eq!(j.stats().corrupt_records.load(Ordering::Relaxed), 0, "nothing lost");
    let got = j.fetch_ready("d", 1000, &Vec::new).await.unwrap().messages;
    assert_eq!(
        seqs_of(&got),
        seqs[100..].to_vec(),
        "the delivered ones are not sent again"
    );
    assert_eq!(
        j.status(seqs[0]).await.unwrap().map(|m| m.state),
        Some(MessageState::Delivered)
    );
    j.close();
}

/// Leaves `dir` as a crash partway through a salvage would: the marker
/// naming a quarantine directory, and `moved` of the database's files in it.
fn cut_short_salvage(dir: &tempfile::TempDir, moved: &[&str]) -> std::path::PathBuf {
    let qdir = dir.path().join("quarantine").join("1");
    std::fs::create_dir_all(&qdir).unwrap();
    std::fs::write(dir.path().join(schema::SALVAGE_FILE), format!("{}\n", qdir.display())).unwrap();
    for name in moved {
        std::fs::rename(dir.path().join(name), qdir.join(name)).unwrap();
    }
    qdir
}

#[tokio::test]
async fn a_salvage_cut_short_after_the_move_is_carried_out_again_at_the_next_start() {
    let bodies = bodies(300);
    let (dir, seqs) = stopped_journal(&bodies.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(wreck_root_page(&dir, "messages"), TABLE_INTERIOR);
    // Cut short while filling the fresh journal: it exists beside the
    // marker, with nothing committed in it yet.
    cut_short_salvage(&dir, &["journal.db"]);
    drop(schema::open_checked(&dir.path().join(schema::DB_FILE)).unwrap());

    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    assert_eq!(j.stats().corrupt_records.load(Ordering::Relaxed), 0, "nothing lost");
    let got = j.fetch_ready("d", 1000, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), seqs);
    assert!(!dir.path().join(schema::SALVAGE_FILE).exists(), "done");
    j.close();
}

#[tokio::test]
async fn a_salvage_cut_short_before_the_files_moved_moves_them_and_loses_nothing() {
    let bodies = bodies(300);
    let (dir, seqs) = stopped_journal(&bodies.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(wreck_root_page(&dir, "messages"), TABLE_INTERIOR);
    // The marker written, the damaged database still where it was.
    let qdir = cut_short_salvage(&dir, &[]);

    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    assert!(
        qdir.join("journal.db").exists(),
        "moved to the quarantine the marker names"
    );
    assert_eq!(j.stats().corrupt_records.load(Ordering::Relaxed), 0, "nothing lost");
    let got = j.fetch_ready("d", 1000, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), seqs);
    j.close();
}

/// A model-based test of the journal API: random sequences of operations,
/// including crashes (the writer stops without checkpointing or marking the
/// journal clean) and clean restarts, checked after every step against an
/// in-memory model of what must be there.
mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug)]
    enum Op {
        Append { dest: u8, size: usize },
        Ack { pick: usize },
        Reschedule { pick: usize, later: bool },
        DeadLetter { pick: usize },
        Drop { pick: usize },
        Replay { dest: u8 },
        Purge { dest: u8 },
        Restart { crash: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..2, 0usize..3000).prop_map(|(dest, size)| Op::Append { dest, size }),
            2 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
            2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, later)| Op::Reschedule { pick, later }),
            1 => any::<usize>().prop_map(|pick| Op::DeadLetter { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
            1 => (0u8..2).prop_map(|dest| Op::Replay { dest }),
            1 => (0u8..2).prop_map(|dest| Op::Purge { dest }),
            1 => any::<bool>().prop_map(|crash| Op::Restart { crash }),
        ]
    }

    #[derive(Clone, Debug, PartialEq)]
    enum St {
        Ready,
        Later,
        Dead,
        Done,
    }

    #[derive(Clone, Debug)]
    struct M {
        dest: String,
        size: u64,
        body: Vec<u8>,
        st: St,
    }

    fn dest_name(d: u8) -> String {
        format!("d{d}")
    }

    async fn check(j: &Journal, model: &BTreeMap<u64, M>) {
        for d in ["d0", "d1"] {
            let pending: Vec<&M> = model
                .values()
                .filter(|m| m.dest == d && matches!(m.st, St::Ready | St::Later))
                .collect();
            let q = j.queue(d);
            assert_eq!(q.depth.load(Ordering::Relaxed), pending.len() as u64, "depth of {d}");
            assert_eq!(
                q.bytes.load(Ordering::Relaxed),
                pending.iter().map(|m| m.size).sum::<u64>(),
                "bytes of {d}"
            );
            let dead = model.values().filter(|m| m.dest == d && m.st == St::Dead).count() as u64;
            assert_eq!(q.dead_letters.load(Ordering::Relaxed), dead, "dead letters of {d}");
            let mut want: Vec<u64> = model
                .iter()
                .filter(|(_, m)| m.dest == d && m.st == St::Ready)
                .map(|(s, _)| *s)
                .collect();
            want.sort();
            let got = j.fetch_ready(d, 10_000, &Vec::new).await.unwrap().messages;
            if !got.is_empty() {
                // Looked at, not attempted: the worker's protocol.
                j.give_back(d);
            }
            let mut got_seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
            got_seqs.sort();
            assert_eq!(got_seqs, want, "deliverable messages of {d}");
            for m in got {
                assert_eq!(&m.body[..], &model[&m.seq].body[..], "body of {}", m.seq);
            }
        }
    }

    fn pick(model: &BTreeMap<u64, M>, pick: usize, want: impl Fn(&M) -> bool) -> Option<(u64, String)> {
        let c: Vec<(u64, String)> = model
            .iter()
            .filter(|(_, m)| want(m))
            .map(|(s, m)| (*s, m.dest.clone()))
            .collect();
        (!c.is_empty()).then(|| c[pick % c.len()].clone())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn the_journal_matches_its_model_across_crashes(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let mut j = Journal::open(dir.path(), u64::MAX).unwrap();
                let mut model: BTreeMap<u64, M> = BTreeMap::new();
                for op in ops {
                    match op {
                        Op::Append { dest, size } => {
                            let mut m = msg(&dest_name(dest), "");
                            let body: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
                            m.body = Bytes::from(body.clone());
                            let seq = stored(&j, m).await;
                            model.insert(seq, M { dest: dest_name(dest), size: size as u64, body, st: St::Ready });
                        }
                        Op::Ack { pick: p } => {
                            if let Some((seq, d)) = pick(&model, p, |m| matches!(m.st, St::Ready | St::Later)) {
                                j.settle(seq, &d, 1, None, Disposition::Delivered { keep_body: false }).await.unwrap();
                                model.get_mut(&seq).unwrap().st = St::Done;
                            }
                        }
                        Op::Reschedule { pick: p, later } => {
                            if let Some((seq, d)) = pick(&model, p, |m| matches!(m.st, St::Ready | St::Later)) {
                                let visible_at = if later { now_ms() + 3_600_000 } else { 0 };
                                j.settle(seq, &d, 1, None, Disposition::Reschedule { visible_at }).await.unwrap();
                                model.get_mut(&seq).unwrap().st = if later { St::Later } else { St::Ready };
                            }
                        }
                        Op::DeadLetter { pick: p } => {
                            if let Some((seq, d)) = pick(&model, p, |m| matches!(m.st, St::Ready | St::Later)) {
                                let reason = "test".to_string();
                                j.settle(seq, &d, 1, None, Disposition::DeadLetter { reason }).await.unwrap();
                                model.get_mut(&seq).unwrap().st = St::Dead;
                            }
                        }
                        Op::Drop { pick: p } => {
                            if let Some((seq, d)) = pick(&model, p, |m| matches!(m.st, St::Ready | St::Later)) {
                                let reason = "test".to_string();
                                j.settle(seq, &d, 1, None, Disposition::Dropped { reason }).await.unwrap();
                                model.get_mut(&seq).unwrap().st = St::Done;
                            }
                        }
                        Op::Replay { dest } => {
                            let n = j.replay(&dest_name(dest), None).await.unwrap();
                            let mut expect = 0;
                            for m in model.values_mut().filter(|m| m.dest == dest_name(dest) && m.st == St::Dead) {
                                m.st = St::Ready;
                                expect += 1;
                            }
                            assert_eq!(n, expect);
                        }
                        Op::Purge { dest } => {
                            let n = j.purge_dead_letters(&dest_name(dest)).await.unwrap();
                            let before = model.len();
                            model.retain(|_, m| !(m.dest == dest_name(dest) && m.st == St::Dead));
                            assert_eq!(n as usize, before - model.len());
                        }
                        Op::Restart { crash } => {
                            if crash { j.crash() } else { j.close() }
                            drop(j);
                            j = Journal::open(dir.path(), u64::MAX).unwrap();
                            assert_eq!(j.stats().corrupt_records.load(Ordering::Relaxed), 0, "nothing lost");
                        }
                    }
                    check(&j, &model).await;
                }
                j.close();
            });
        }
    }
}

#[tokio::test]
async fn a_journal_in_use_is_refused_to_a_second_opener_until_it_closes() {
    let (dir, j) = fresh();
    let err = Journal::open(dir.path(), u64::MAX).err().expect("refused");
    assert!(matches!(err, QueueError::InUse(_)), "{err}");
    assert!(
        err.to_string().contains(&format!("(pid {})", std::process::id())),
        "{err}"
    );
    j.close();
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    j.close();
}

/// Fetches destination "d" of an empty journal (so it is caught up), then
/// appends `body` and fetches again: that message, from the tail.
async fn caught_up_then_one_handed_out(j: &Journal, body: &str) -> (u64, Message) {
    assert!(j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages.is_empty());
    let seq = stored(j, msg("d", body)).await;
    let mut got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), vec![seq]);
    (seq, got.remove(0))
}

/// A worker's hand-outs from a caught-up queue come from the tail; a
/// settle of a message the tail still holds (an operator's, say) must not
/// leave its stale copy to be handed out.
#[tokio::test]
async fn once_caught_up_new_messages_are_handed_out_once_and_settled_ones_never() {
    let (_dir, j) = fresh();
    let (a, got) = caught_up_then_one_handed_out(&j, "a").await;
    assert_eq!(&got.body[..], b"a");
    assert!(
        j.fetch_ready("d", 10, &|| vec![a]).await.unwrap().messages.is_empty(),
        "handed out once"
    );
    j.settle(a, "d", 1, None, Disposition::Delivered { keep_body: false })
        .await
        .unwrap();

    let b = stored(&j, msg("d", "b")).await;
    let c = stored(&j, msg("d", "c")).await;
    let reason = "by hand".to_string();
    j.settle(b, "d", 0, None, Disposition::DeadLetter { reason })
        .await
        .unwrap();
    let got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), vec![c], "b was dead-lettered while the tail held it");
}

/// The worker's protocol under concurrency: producers append while a
/// consumer fetches, leases, and settles from other tasks, some attempts
/// retried (released, then given back). Every message must be handed out
/// while not already out, and delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrent_appends_and_settles_every_message_is_delivered_exactly_once() {
    use std::collections::HashSet;
    use std::sync::Mutex;
    const PRODUCERS: u64 = 8;
    const EACH: u64 = 400;
    let (_dir, j) = fresh();
    let roomy = Limits {
        max_messages: 1 << 20,
        ..limits()
    };
    for p in 0..PRODUCERS {
        let j = j.clone();
        tokio::spawn(async move {
            for i in 0..EACH {
                let body = format!("{p}-{i}");
                j.append(msg("d", &body).into(), roomy).await.unwrap();
            }
        });
    }
    let leased: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let delivered: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut handed_out = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let queue = j.queue("d");
    while delivered.lock().unwrap().len() < (PRODUCERS * EACH) as usize {
        assert!(tokio::time::Instant::now() < deadline, "not all delivered in time");
        let ready = queue.ready.notified();
        let due = j
            .fetch_ready("d", 64, &|| leased.lock().unwrap().iter().copied().collect())
            .await
            .unwrap();
        if due.messages.is_empty() {
            // Settles wake no `ready`: re-check now and then.
            let _ = tokio::time::timeout(Duration::from_millis(20), ready).await;
            continue;
        }
        for m in due.messages {
            handed_out += 1;
            assert!(leased.lock().unwrap().insert(m.seq), "{} handed out while out", m.seq);
            assert!(
                !delivered.lock().unwrap().contains(&m.seq),
                "{} handed out after delivery",
                m.seq
            );
            let (j, leased, delivered) = (j.clone(), leased.clone(), delivered.clone());
            tokio::spawn(async move {
                let retry = m.seq % 7 == 0 && m.attempts == 0;
                let disposition = if retry {
                    Disposition::Reschedule { visible_at: now_ms() }
                } else {
                    Disposition::Delivered { keep_body: false }
                };
                j.settle(m.seq, "d", m.attempts + 1, None, disposition).await.unwrap();
                leased.lock().unwrap().remove(&m.seq);
                if retry {
                    j.give_back("d");
                } else {
                    assert!(delivered.lock().unwrap().insert(m.seq), "{} delivered twice", m.seq);
                }
            });
        }
    }
    let retried = (1..=PRODUCERS * EACH).filter(|s| s % 7 == 0).count() as u64;
    assert_eq!(handed_out, PRODUCERS * EACH + retried);
    assert_eq!(j.queue("d").depth.load(Ordering::Relaxed), 0);
    j.close();
}

/// A lease let go just as a read begins: the read must not skip the
/// message as leased and then call the queue caught up, or the message
/// waits for the next unrelated read.
#[tokio::test]
async fn a_lease_let_go_as_a_read_begins_is_not_skipped() {
    let (_dir, j) = fresh();
    let (m, _) = caught_up_then_one_handed_out(&j, "m").await;
    j.settle(m, "d", 1, None, Disposition::Reschedule { visible_at: 0 })
        .await
        .unwrap();
    // Another message went back meanwhile: the next fetch reads the journal.
    j.give_back("d");
    // m's release lands while that read asks for the leases.
    let due = j
        .fetch_ready("d", 10, &|| {
            j.give_back("d");
            vec![m]
        })
        .await
        .unwrap();
    assert!(due.messages.is_empty());
    let due = j.fetch_ready("d", 10, &Vec::new).await.unwrap();
    assert_eq!(seqs_of(&due.messages), vec![m], "given back, due, and not leased");
}

#[test]
fn a_storage_directory_it_creates_is_its_users_alone_and_an_existing_one_is_left_as_is() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let created = root.path().join("a/b");
    drop(Journal::lock(&created).unwrap());
    for d in [root.path().join("a"), created] {
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700,
            "{d:?}"
        );
    }
    let existing = root.path().join("shared");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o750)).unwrap();
    drop(Journal::lock(&existing).unwrap());
    assert_eq!(
        std::fs::metadata(&existing).unwrap().permissions().mode() & 0o777,
        0o750
    );
}

// ---------------------------------------------------------------- review

fn intent(hold: Option<&'static str>, sample: f64, audit: f64) -> Option<ReviewIntent> {
    Some(ReviewIntent {
        hold,
        sample,
        audit,
        hold_for_ms: None,
    })
}

fn decision(verdict: review::Verdict, reviewer: &str, corrected: Option<&str>) -> review::Decision {
    review::Decision {
        verdict,
        reviewer: reviewer.into(),
        note: None,
        corrected: corrected.map(|c| Bytes::from(c.to_string())),
        patch: None,
        at: now_ms(),
    }
}

async fn held(j: &Journal, body: &str) -> u64 {
    let m = NewMessage {
        review: intent(Some("predicate"), 0.0, 0.0),
        category: Some("nda".into()),
        ..msg("d", body)
    };
    match j.append(m.into(), limits()).await.unwrap() {
        Appended::Stored {
            seq,
            held: Some("predicate"),
        } => seq,
        other => panic!("expected held, got {other:?}"),
    }
}

/// A held message counts in the queue but is never fetched; approve makes
/// it deliverable as stored, edit with the correction, reject a dead
/// letter; a second decision changes nothing.
#[tokio::test]
async fn held_messages_wait_for_a_decision_and_the_first_decision_wins() {
    use crate::queue::review::{Decided, Verdict};
    let (_dir, j) = fresh();
    let a = held(&j, r#"{"n":1}"#).await;
    let b = held(&j, r#"{"n":2}"#).await;
    let c = held(&j, r#"{"n":3}"#).await;
    let q = j.queue("d");
    assert_eq!(
        (q.depth.load(Ordering::Relaxed), q.held.load(Ordering::Relaxed)),
        (3, 3)
    );
    assert!(j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages.is_empty());
    assert_eq!(j.open_reviews(Some("d".into()), None, 0, 10).await.unwrap().len(), 3);

    let done = j.decide(a, decision(Verdict::Approve, "ann", None)).await.unwrap();
    assert!(
        matches!(done, Decided::Done { ref kind, .. } if kind == "held"),
        "{done:?}"
    );
    let again = j.decide(a, decision(Verdict::Reject, "bob", None)).await.unwrap();
    assert_eq!(
        again,
        Decided::AlreadyDecided {
            decision: "approve".into(),
            reviewer: Some("ann".into())
        }
    );
    j.decide(b, decision(Verdict::Edit, "ann", Some(r#"{"n":20}"#)))
        .await
        .unwrap();
    j.decide(c, decision(Verdict::Reject, "ann", None)).await.unwrap();

    let got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), vec![a, b]);
    assert_eq!(&got[0].body[..], br#"{"n":1}"#);
    assert_eq!(
        &got[1].body[..],
        br#"{"n":20}"#,
        "the correction replaces the body, checksum and all"
    );
    let dead = j.status(c).await.unwrap().unwrap();
    assert_eq!(
        (dead.state, dead.reason.as_deref()),
        (MessageState::DeadLettered, Some("rejected_by_reviewer"))
    );
    assert_eq!(
        (q.depth.load(Ordering::Relaxed), q.held.load(Ordering::Relaxed)),
        (2, 0)
    );
    assert_eq!(q.open_reviews.load(Ordering::Relaxed), 0);
    assert_eq!(q.dead_letters.load(Ordering::Relaxed), 1);
    let t = j.review_tally("d", "nda", 0).await.unwrap();
    assert_eq!((t.approved, t.edited, t.rejected, t.overrides()), (1, 1, 1, 2));
    let edited = j.review_item(b).await.unwrap().unwrap();
    assert_eq!(edited.original.as_deref(), Some(&br#"{"n":2}"#[..]));
    assert_eq!(edited.corrected.as_deref(), Some(&br#"{"n":20}"#[..]));
}

#[tokio::test]
async fn decisions_on_what_is_not_held_are_refused_and_feedback_needs_a_delivery() {
    use crate::queue::review::{Decided, Verdict};
    let (_dir, j) = fresh();
    let plain = stored(&j, msg("d", "x")).await;
    let h = held(&j, "{}").await;
    assert_eq!(
        j.decide(plain, decision(Verdict::Approve, "ann", None)).await.unwrap(),
        Decided::NotReviewable {
            state: MessageState::Queued
        }
    );
    assert_eq!(
        j.decide(9999, decision(Verdict::Approve, "ann", None)).await.unwrap(),
        Decided::NotFound
    );
    assert_eq!(
        j.decide(h, decision(Verdict::Overridden, "ann", None)).await.unwrap(),
        Decided::NotReviewable {
            state: MessageState::Held
        }
    );
    assert_eq!(
        j.decide(plain, decision(Verdict::Correct, "ann", None)).await.unwrap(),
        Decided::NotReviewable {
            state: MessageState::Queued
        }
    );
    j.settle(plain, "d", 1, None, Disposition::Delivered { keep_body: false })
        .await
        .unwrap();
    let done = j
        .decide(plain, decision(Verdict::Overridden, "dee", Some("{}")))
        .await
        .unwrap();
    assert!(
        matches!(done, Decided::Done { ref kind, .. } if kind == "feedback"),
        "{done:?}"
    );
    let t = j.review_tally("d", "uncategorised", 0).await.unwrap();
    assert_eq!((t.overridden, t.reviewed()), (1, 1));
}

/// Sampling is a function of the message id: the same ids sample alike in
/// a second journal that shares the salt, and the rate holds.
#[tokio::test]
async fn sampling_is_deterministic_per_id() {
    let run = |dir: std::path::PathBuf| async move {
        let j = Journal::open(&dir, u64::MAX).unwrap();
        let mut held = Vec::new();
        for i in 0..2000 {
            let m = NewMessage {
                review: intent(None, 0.05, 0.0),
                ..msg("d", &i.to_string())
            };
            let roomy = Limits {
                max_messages: 10_000,
                ..limits()
            };
            if let Appended::Stored { seq, held: Some(_) } = j.append(m.into(), roomy).await.unwrap() {
                held.push(j.message_id(seq));
            }
        }
        j.close();
        held
    };
    let one = tempfile::tempdir().unwrap();
    let first = run(one.path().to_path_buf()).await;
    let two = tempfile::tempdir().unwrap();
    std::fs::copy(one.path().join(schema::SALT_FILE), two.path().join(schema::SALT_FILE)).unwrap();
    let second = run(two.path().to_path_buf()).await;
    assert_eq!(first, second);
    assert!((60..=140).contains(&first.len()), "{} of 2000 at 5%", first.len());
    for id in &first {
        assert!(sampled("sample", id, 0.05));
    }
}

#[tokio::test]
async fn holds_time_out_into_delivery_or_a_dead_letter() {
    let (_dir, j) = fresh();
    let m = |body: &str| NewMessage {
        review: Some(ReviewIntent {
            hold: Some("predicate"),
            hold_for_ms: Some(1000),
            ..ReviewIntent::default()
        }),
        ..msg("d", body)
    };
    let a = stored(&j, m("a")).await;
    let b = stored(&j, m("b")).await;
    assert_eq!(j.expire_holds("d", true, now_ms()).await.unwrap(), 0, "not yet");
    assert_eq!(j.expire_holds("d", true, now_ms() + 60_000).await.unwrap(), 2);
    let got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), vec![a, b]);
    let item = j.review_item(a).await.unwrap().unwrap();
    assert_eq!(item.decision.as_deref(), Some("timed_out"));
    let c = stored(&j, m("c")).await;
    assert_eq!(j.expire_holds("d", false, now_ms() + 60_000).await.unwrap(), 1);
    let s = j.status(c).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.reason.as_deref()),
        (MessageState::DeadLettered, Some("hold_timeout"))
    );
    assert_eq!(j.queue("d").held.load(Ordering::Relaxed), 0);
}

/// Held messages and their records survive a restart and a salvage.
/// `j` marked damaged, closed and opened again: the open salvages it.
fn salvaged(dir: &tempfile::TempDir, j: Journal) -> Journal {
    j.inner.health.note_error(&QueueError::Corrupt("test".into()));
    j.close();
    drop(j);
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    assert!(
        dir.path().join("quarantine").read_dir().unwrap().next().is_some(),
        "salvaged"
    );
    j
}

#[tokio::test]
async fn held_messages_survive_reopening_and_salvage() {
    let (dir, j) = fresh();
    let a = held(&j, r#"{"n":1}"#).await;
    let b = stored(&j, msg("d", "plain")).await;
    j.close();
    drop(j);
    let j = Journal::open(dir.path(), u64::MAX).unwrap();
    let q = j.queue("d");
    assert_eq!(
        (q.depth.load(Ordering::Relaxed), q.held.load(Ordering::Relaxed)),
        (2, 1)
    );
    assert_eq!(q.open_reviews.load(Ordering::Relaxed), 1);
    let j = salvaged(&dir, j);
    assert_eq!(j.status(a).await.unwrap().unwrap().state, MessageState::Held);
    let items = j.open_reviews(None, None, 0, 10).await.unwrap();
    assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![a]);
    assert_eq!(items[0].original.as_deref(), Some(&br#"{"n":1}"#[..]));
    let got = j.fetch_ready("d", 10, &Vec::new).await.unwrap().messages;
    assert_eq!(seqs_of(&got), vec![b]);
    j.close();
}

#[tokio::test]
async fn what_a_reviewer_rejected_is_never_replayed() {
    let (_dir, j) = fresh();
    let rejected = held(&j, "{}").await;
    j.decide(rejected, decision(review::Verdict::Reject, "ann", None))
        .await
        .unwrap();
    let failed = stored(&j, msg("d", "x")).await;
    j.settle(
        failed,
        "d",
        1,
        None,
        Disposition::DeadLetter {
            reason: "permanent_failure".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(j.replay("d", None).await.unwrap(), 1, "only the failed one");
    assert_eq!(j.replay("d", Some(vec![rejected])).await.unwrap(), 0, "not even by id");
    assert_eq!(
        j.status(rejected).await.unwrap().unwrap().state,
        MessageState::DeadLettered
    );
    assert_eq!(j.purge_dead_letters("d").await.unwrap(), 1);
}

#[tokio::test]
async fn the_audit_trail_survives_reopening_and_salvage_and_is_swept_by_age() {
    use crate::queue::audit::{Act, Filter};
    let (dir, j) = fresh();
    let act = |actor: &str, action: &str, at: i64| Act {
        at,
        actor: actor.into(),
        action: action.into(),
        destination: Some("d".into()),
        target: None,
        detail: serde_json::json!({"reason": "it's <b>fine</b>"}),
    };
    let now = now_ms();
    j.record_act(act("ana", "pause", now - 10_000)).await.unwrap();
    j.record_act(act("bo", "resume", now)).await.unwrap();
    let all = |j: &Journal| {
        let j = j.clone();
        async move {
            j.acts(Filter {
                limit: 100,
                ..Filter::default()
            })
            .await
            .unwrap()
        }
    };
    let before = all(&j).await;
    assert_eq!(before.len(), 2);
    let j = salvaged(&dir, j);
    assert_eq!(all(&j).await, before, "every act, with its number, after salvage");
    // Numbers are never handed out again, and filters hold.
    j.record_act(act("ana", "purge", now)).await.unwrap();
    let ana = j
        .acts(Filter {
            actor: Some("ana".into()),
            limit: 100,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ana.iter().map(|e| e.act.action.as_str()).collect::<Vec<_>>(),
        ["pause", "purge"]
    );
    assert!(ana[1].seq > before[1].seq);
    assert_eq!(j.sweep_acts(now - 5_000).await.unwrap(), 1, "only the old pause");
    assert_eq!(all(&j).await.len(), 2);
    j.close();
}
