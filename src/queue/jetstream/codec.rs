//! How cluster mode writes things down: the records kept in the
//! key-value buckets (a retry schedule, a finished message's status, an
//! `Idempotency-Key`, a destination's state) and the headers a queued
//! message carries (`Tg-*`), with the announcements instances send each
//! other on core NATS.

use async_nats::HeaderMap;
use bytes::Bytes;

use serde::{Deserialize, Serialize};

use crate::queue::{LastError, NewMessage, Outcome};

/// A message's retry schedule, as `r.<dest>.<stream seq>` holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Retry {
    pub(super) id: u64,
    pub(super) attempts: u32,
    pub(super) visible_at: i64,
    pub(super) last_error: Option<LastError>,
}

/// A finished message, as `P_STATUS` holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Finished {
    pub(super) dest: String,
    pub(super) state: i64,
    pub(super) attempts: u32,
    pub(super) received_at: i64,
    pub(super) finished_at: i64,
    pub(super) last_error: Option<LastError>,
    pub(super) reason: Option<String>,
    pub(super) producer: Option<String>,
    pub(super) category: Option<String>,
    #[serde(default)]
    pub(super) order_key: Option<String>,
    /// The producer's body, kept after delivery on a destination under
    /// review (late feedback's original); swept with the record.
    #[serde(default, with = "base64_body", skip_serializing_if = "Option::is_none")]
    pub(super) original: Option<Bytes>,
}

/// An `Idempotency-Key` record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct KeyRecord {
    pub(super) id: u64,
    pub(super) fingerprint: String,
    pub(super) at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) state: String,
    pub(super) reason: String,
    pub(super) head_seq: Option<u64>,
}

pub(super) fn encode(msg: &NewMessage, id: Option<u64>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Tg-Method", msg.method.as_str());
    h.insert("Tg-Path", msg.path.as_str());
    h.insert("Tg-Received", msg.received_at.to_string().as_str());
    if !msg.headers.is_empty() {
        h.insert(
            "Tg-Headers",
            serde_json::to_string(&msg.headers).unwrap_or_default().as_str(),
        );
    }
    if let Some(k) = &msg.idempotency_key {
        h.insert("Tg-Idem", k.as_str());
    }
    if msg.wants_reply {
        h.insert("Tg-Reply", "1");
    }
    if let Some(p) = &msg.producer {
        h.insert("Tg-Producer", p.as_str());
    }
    if let Some(c) = &msg.category {
        h.insert("Tg-Category", c.as_str());
    }
    if let Some(k) = &msg.order_key {
        // Header values end at a line break: keys are stored escaped.
        h.insert("Tg-Key", serde_json::to_string(k).unwrap_or_default().as_str());
    }
    if let Some(id) = id {
        h.insert("Tg-Id", id.to_string().as_str());
    }
    h
}

/// An outcome another instance announced; `None` for this instance's own.
pub(super) fn decode_outcome(m: &async_nats::Message, me: &str) -> Option<Outcome> {
    let h = m.headers.as_ref()?;
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
    if get("Tg-Instance").as_deref() == Some(me) {
        return None;
    }
    Some(Outcome {
        seq: get("Tg-Id")?.parse().ok()?,
        state: get("Tg-State")?,
        detail: get("Tg-Detail").unwrap_or_default(),
        response: get("Tg-Status")
            .and_then(|s| s.parse().ok())
            .map(|status| (status, get("Tg-Content-Type"), m.payload.clone())),
    })
}

/// Bodies inside JSON records, as base64 text.
pub(super) mod base64_body {
    use base64::Engine as _;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map(Bytes::from)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}
