//! The review station's records (SPEC §10), kept in the journal beside the
//! messages they judge so that a decision and the change it makes to its
//! message commit together.
//!
//! Table `reviews` holds one row per message a human looks at: a *held*
//! message (state 5 in `messages`, never fetched for delivery until
//! decided), an *audit* item (delivered at once, listed for grading), or
//! *feedback* given on a delivered message that was neither. A row keeps
//! the producer's original body, so that corrections can be exported as
//! training data long after the message's own body is gone; rows are kept
//! for `[review] retention`, separately from message history.
//!
//! Invariants: the first decision on a row wins (a later one is answered
//! `AlreadyDecided` and changes nothing); a held message leaves state 5 only
//! in the commit that records its decision or its timeout; the queue
//! counts (`held`, `open_reviews`, depth, bytes, dead letters) move with
//! each commit through the writer's `Effect`.

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::effect::{Answer, Effect};
use super::record::checksum;
use crate::queue::review::{replacing_note, Decided, Decision, Item, OnAppend, Tally, Verdict};
use crate::queue::{stored, MessageState, NewMessage};

/// Lists a new message for review when the station took it; returns the
/// hold reason when it is held.
pub(super) fn record_item(
    tx: &Transaction<'_>,
    seq: i64,
    msg: &NewMessage,
    what: &OnAppend,
) -> rusqlite::Result<Option<&'static str>> {
    let (kind, reason, held) = match what {
        OnAppend::Hold { reason, .. } => ("held", *reason, Some(*reason)),
        OnAppend::Audit => ("audit", "audit", None),
        OnAppend::Pass => return Ok(None),
    };
    tx.prepare_cached(
        "INSERT INTO reviews (seq, dest, category, kind, reason, received_at, created_at, original)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
    )?
    .execute(params![
        seq,
        msg.dest,
        msg.category.as_deref().unwrap_or(crate::handoff::UNCATEGORISED),
        kind,
        reason,
        msg.received_at,
        &msg.body[..]
    ])?;
    Ok(held)
}

/// Applies one decision (see [`Decided`] for the outcomes).
pub(super) fn decide(tx: &Transaction<'_>, seq: u64, d: &Decision) -> rusqlite::Result<(Answer, Effect)> {
    let seq = seq as i64;
    let nothing = |answer: Decided| Ok((Answer::Decided(answer), Effect::default()));
    // (dest, category, kind, decision, reviewer)
    type Row = (String, String, String, Option<String>, Option<String>);
    let row: Option<Row> = tx
        .prepare_cached("SELECT dest, category, kind, decision, reviewer FROM reviews WHERE seq = ?1")?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()?;
    let message: Option<(String, i64, Option<String>)> = tx
        .prepare_cached("SELECT dest, state, category FROM messages WHERE seq = ?1")?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    // Whether the row still counts as awaiting a decision.
    let mut open = true;
    let mut note = d.note.clone();
    let (dest, category, kind) = match (row, &message) {
        (Some((dest, category, kind, Some(decision), earlier_reviewer)), _) if d.verdict.replaces(&decision) => {
            // A timeout nobody looked at, or an approval overridden
            // downstream: see `Verdict::replaces`.
            open = false;
            note = replacing_note(&decision, earlier_reviewer.as_deref(), d.note.as_deref());
            (dest, category, kind)
        }
        (Some((_, _, _, Some(decision), reviewer)), _) => {
            return nothing(Decided::AlreadyDecided { decision, reviewer });
        }
        (Some((dest, category, kind, None, _)), _) => {
            if kind == "held" && d.verdict.is_feedback() {
                // Feedback is for what was delivered; this was not, yet.
                return nothing(Decided::NotReviewable {
                    state: MessageState::Held,
                });
            }
            (dest, category, kind)
        }
        (None, None) => return nothing(Decided::NotFound),
        (None, Some((dest, state, category))) => {
            if !d.verdict.is_feedback() || *state != stored::DELIVERED {
                return nothing(Decided::NotReviewable {
                    state: MessageState::from_stored(*state, 0, 0),
                });
            }
            // Feedback on a message nobody reviewed before: the original
            // is its body, kept after delivery on a destination under
            // review (else gone, and the row has none).
            let category = category
                .clone()
                .unwrap_or_else(|| crate::handoff::UNCATEGORISED.to_string());
            tx.prepare_cached(
                "INSERT INTO reviews (seq, dest, category, kind, reason, received_at, created_at, original)
                 SELECT seq, dest, ?2, 'feedback', 'feedback', received_at, ?3, body FROM messages WHERE seq = ?1",
            )?
            .execute(params![seq, category, d.at])?;
            (dest.clone(), category, "feedback".to_string())
        }
    };
    let mut eff = Effect {
        dest: Some(dest.clone()),
        open_reviews: if kind == "feedback" || !open { 0 } else { -1 },
        ..Effect::default()
    };
    if kind == "held" && open {
        release(
            tx,
            seq,
            d.verdict,
            d.corrected.as_ref(),
            "rejected_by_reviewer",
            &mut eff,
        )?;
    }
    tx.prepare_cached(
        "UPDATE reviews SET decision = ?2, reviewer = ?3, note = ?4, corrected = ?5, patch = ?6, decided_at = ?7
         WHERE seq = ?1",
    )?
    .execute(params![
        seq,
        d.verdict.as_str(),
        d.reviewer,
        note,
        d.corrected.as_deref(),
        d.patch,
        d.at
    ])?;
    Ok((Answer::Decided(Decided::Done { dest, category, kind }), eff))
}

/// Moves a held message out of state 5: queued at once (approve, edit, with
/// the corrected body in place of the original) or dead-lettered (reject).
fn release(
    tx: &Transaction<'_>,
    seq: i64,
    verdict: Verdict,
    corrected: Option<&Bytes>,
    reject_reason: &str,
    eff: &mut Effect,
) -> rusqlite::Result<()> {
    // The real time, not a cutoff a caller passed: a released message is
    // due now.
    let now = crate::queue::now_ms();
    let row: Option<(String, String, Option<Vec<u8>>, i64)> = tx
        .prepare_cached("SELECT method, path, headers, size FROM messages WHERE seq = ?1 AND state = 5")?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((method, path, headers, size)) = row else {
        return Ok(());
    };
    eff.held = -1;
    match (verdict, corrected) {
        (Verdict::Reject, _) => {
            tx.prepare_cached(
                "UPDATE messages SET state = ?2, finished_at = ?3, reason = ?4 WHERE seq = ?1 AND state = 5",
            )?
            .execute(params![seq, stored::DEAD, now, reject_reason])?;
            eff.depth = -1;
            eff.bytes = -size;
            eff.dead = 1;
        }
        (Verdict::Edit, Some(body)) => {
            // The corrected body replaces the stored one, checksum and all:
            // it is what the transform runs on at each attempt from now.
            let headers = headers.unwrap_or_default();
            let crc = checksum(&method, &path, &headers, body);
            tx.prepare_cached(
                "UPDATE messages SET state = 0, visible_at = ?2, body = ?3, size = ?4, crc = ?5
                 WHERE seq = ?1 AND state = 5",
            )?
            .execute(params![seq, now, &body[..], body.len() as i64, crc])?;
            eff.bytes = body.len() as i64 - size;
            eff.ready = true;
            eff.requeued = true;
        }
        _ => {
            tx.prepare_cached("UPDATE messages SET state = 0, visible_at = ?2 WHERE seq = ?1 AND state = 5")?
                .execute(params![seq, now])?;
            eff.ready = true;
            eff.requeued = true;
        }
    }
    Ok(())
}

/// Most holds ended by one timeout command.
const EXPIRE_CHUNK: i64 = 1000;

/// Ends the holds of `dest` whose time ran out by `now`; answers how many.
pub(super) fn expire_holds(
    tx: &Transaction<'_>,
    dest: &str,
    deliver: bool,
    now: i64,
) -> rusqlite::Result<(Answer, Effect)> {
    let seqs: Vec<i64> = tx
        .prepare_cached(
            "SELECT seq FROM messages INDEXED BY messages_held WHERE dest = ?1 AND state = 5 AND visible_at <= ?2
             ORDER BY visible_at LIMIT ?3",
        )?
        .query_map(params![dest, now, EXPIRE_CHUNK], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut total = Effect {
        dest: Some(dest.to_string()),
        ..Effect::default()
    };
    let verdict = if deliver { Verdict::Approve } else { Verdict::Reject };
    for &seq in &seqs {
        let mut eff = Effect::default();
        release(tx, seq, verdict, None, "hold_timeout", &mut eff)?;
        let n = tx
            .prepare_cached(
                "UPDATE reviews SET decision = 'timed_out', note = ?2, decided_at = ?3
                 WHERE seq = ?1 AND decision IS NULL",
            )?
            .execute(params![seq, if deliver { "delivered" } else { "rejected" }, now])?;
        total.depth += eff.depth;
        total.bytes += eff.bytes;
        total.dead += eff.dead;
        total.held += eff.held;
        total.open_reviews -= n as i64;
        total.ready |= eff.ready;
        total.requeued |= eff.requeued;
    }
    Ok((Answer::Count(seqs.len() as u64), total))
}

/// Deletes review rows created before `cutoff`, except those of messages
/// still held (their decision is still owed).
pub(super) fn sweep(tx: &Transaction<'_>, cutoff: i64, chunk: i64) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM reviews WHERE seq IN (SELECT seq FROM reviews INDEXED BY reviews_age
         WHERE created_at < ?1 AND NOT (kind = 'held' AND decision IS NULL) LIMIT ?2)",
        params![cutoff, chunk],
    )
}

// ---------------------------------------------------------------- reading

const ITEM_COLUMNS: &str = "seq, dest, category, kind, reason, received_at, original, decision, reviewer, note,
    corrected, patch, decided_at";

fn item(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    Ok(Item {
        seq: r.get::<_, i64>(0)? as u64,
        dest: r.get(1)?,
        category: r.get(2)?,
        kind: r.get(3)?,
        reason: r.get(4)?,
        received_at: r.get(5)?,
        original: r.get::<_, Option<Vec<u8>>>(6)?.map(Bytes::from),
        decision: r.get(7)?,
        reviewer: r.get(8)?,
        note: r.get(9)?,
        corrected: r.get::<_, Option<Vec<u8>>>(10)?.map(Bytes::from),
        patch: r.get(11)?,
        decided_at: r.get(12)?,
    })
}

pub(super) fn kept_body(conn: &Connection, seq: u64) -> rusqlite::Result<Option<Bytes>> {
    Ok(conn
        .prepare_cached("SELECT body FROM messages WHERE seq = ?1 AND state = ?2")?
        .query_row(params![seq as i64, stored::DELIVERED], |r| {
            r.get::<_, Option<Vec<u8>>>(0)
        })
        .optional()?
        .flatten()
        .map(Bytes::from))
}

pub(super) fn get(conn: &Connection, seq: u64) -> rusqlite::Result<Option<Item>> {
    conn.prepare_cached(&format!("SELECT {ITEM_COLUMNS} FROM reviews WHERE seq = ?1"))?
        .query_row([seq as i64], item)
        .optional()
}

/// Items awaiting a decision, oldest first, after `after` (a seq).
pub(super) fn open(
    conn: &Connection,
    dest: Option<&str>,
    category: Option<&str>,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<Item>> {
    let after = after.min(i64::MAX as u64) as i64;
    let mut stmt = match dest {
        Some(_) => conn.prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS} FROM reviews INDEXED BY reviews_open
             WHERE dest = ?1 AND decision IS NULL AND seq > ?2 AND (?3 IS NULL OR category = ?3) ORDER BY seq LIMIT ?4"
        ))?,
        None => conn.prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS} FROM reviews INDEXED BY reviews_open_all
             WHERE ?1 IS NULL AND decision IS NULL AND seq > ?2 AND (?3 IS NULL OR category = ?3) ORDER BY seq LIMIT ?4"
        ))?,
    };
    let rows = stmt.query_map(params![dest, after, category, limit as i64], item)?;
    rows.collect()
}

/// When each destination's oldest open review item was received.
pub(super) fn oldest_open(conn: &Connection, dest: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT received_at FROM reviews INDEXED BY reviews_open WHERE dest = ?1 AND decision IS NULL
         ORDER BY seq LIMIT 1",
    )?
    .query_row([dest], |r| r.get(0))
    .optional()
}

/// Decisions since `since`, by destination and category.
pub(super) fn tallies(
    conn: &Connection,
    dest: Option<&str>,
    since: i64,
) -> rusqlite::Result<Vec<((String, String), Tally)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT dest, category, decision, count(*) FROM reviews INDEXED BY reviews_decided
         WHERE decision IS NOT NULL AND decided_at >= ?2 AND (?1 IS NULL OR dest = ?1)
         GROUP BY dest, category, decision",
    )?;
    let rows = stmt.query_map(params![dest, since], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out: std::collections::BTreeMap<(String, String), Tally> = Default::default();
    for row in rows {
        let (dest, category, decision, n) = row?;
        out.entry((dest, category)).or_default().count(&decision, n as u64);
    }
    Ok(out.into_iter().collect())
}

/// Decisions since `since`, by destination, category and reviewer.
pub(super) fn reviewer_tallies(
    conn: &Connection,
    dest: Option<&str>,
    since: i64,
) -> rusqlite::Result<Vec<(crate::queue::review::ReviewerKey, Tally)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT dest, category, reviewer, decision, count(*) FROM reviews INDEXED BY reviews_decided
         WHERE decision IS NOT NULL AND reviewer IS NOT NULL AND decided_at >= ?2 AND (?1 IS NULL OR dest = ?1)
         GROUP BY dest, category, reviewer, decision",
    )?;
    let rows = stmt.query_map(params![dest, since], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?),
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out: std::collections::BTreeMap<crate::queue::review::ReviewerKey, Tally> = Default::default();
    for row in rows {
        let (key, decision, n) = row?;
        out.entry(key).or_default().count(&decision, n as u64);
    }
    Ok(out.into_iter().collect())
}

/// One destination and category's decisions since `since`.
pub(super) fn tally(conn: &Connection, dest: &str, category: &str, since: i64) -> rusqlite::Result<Tally> {
    let mut stmt = conn.prepare_cached(
        "SELECT decision, count(*) FROM reviews INDEXED BY reviews_decided
         WHERE dest = ?1 AND category = ?2 AND decided_at >= ?3 AND decision IS NOT NULL GROUP BY decision",
    )?;
    let mut t = Tally::default();
    for row in stmt.query_map(params![dest, category, since], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })? {
        let (decision, n) = row?;
        t.count(&decision, n as u64);
    }
    Ok(t)
}

/// Message counts since `since` by destination, category and state: the
/// volume side of quality and of the owner's report.
pub(super) fn volumes(
    conn: &Connection,
    dest: Option<&str>,
    since: i64,
) -> rusqlite::Result<Vec<(String, String, MessageState, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT dest, coalesce(category, 'uncategorised'), state, count(*) FROM messages
         WHERE received_at >= ?2 AND (?1 IS NULL OR dest = ?1) GROUP BY 1, 2, 3",
    )?;
    let rows = stmt.query_map(params![dest, since], |r| {
        let state = MessageState::from_stored(r.get(2)?, 0, 0);
        Ok((r.get(0)?, r.get(1)?, state, r.get::<_, i64>(3)? as u64))
    })?;
    rows.collect()
}

/// Edits and overrides decided since `since`, oldest first, after `after`.
pub(super) fn corrections(
    conn: &Connection,
    dest: Option<&str>,
    since: i64,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<Item>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ITEM_COLUMNS} FROM reviews WHERE decision IN ('edit', 'overridden') AND decided_at >= ?2
         AND (?1 IS NULL OR dest = ?1) AND seq > ?3 ORDER BY seq LIMIT ?4"
    ))?;
    let rows = stmt.query_map(
        params![dest, since, after.min(i64::MAX as u64) as i64, limit as i64],
        item,
    )?;
    rows.collect()
}
