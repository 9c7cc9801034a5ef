//! Preview: what the handoff would do with one producer body, without
//! storing it: the route taken, the category, and the exact request the
//! first delivery attempt would send, or each error. One function, so the
//! admin endpoint (`POST /v1/destinations/{name}/preview`) and the offline
//! `tidegate handoff test` cannot disagree.
//!
//! Configured header values are secrets: a preview names them, never shows
//! them; the URL's userinfo is redacted the same way.

use std::ops::Deref;

use serde_json::{json, Map, Value};

use crate::config::Destination;
use crate::handoff::{Admitted, RunError};

/// The request a producer would send: its method, the path after the
/// destination's name (with its query), its `Content-Type`.
#[derive(Clone, Debug)]
pub struct Sent<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub content_type: Option<&'a str>,
}

impl Default for Sent<'_> {
    fn default() -> Self {
        Sent {
            method: "POST",
            path: "",
            content_type: Some("application/json"),
        }
    }
}

/// The preview of `body` sent to `entry`, as the JSON both surfaces answer:
/// `ok: true` with `destination`, `routed_from`, `route_rule`, `category`
/// and `request {method, url, headers, body}`; or `ok: false` with the
/// failing `stage`, `destination`, `message` and schema `errors`.
/// It refuses what ingress refuses, as ingress would: a body that is not
/// JSON where a handoff reads it (`stage: parse`). `lookup` finds a
/// destination's config by name (a route's target). `Err` only when the
/// sandbox could not run the programs at all.
pub async fn preview<D: Deref<Target = Destination>>(
    entry: &Destination,
    sent: &Sent<'_>,
    body: &[u8],
    lookup: impl Fn(&str) -> Option<D>,
) -> Result<Value, String> {
    let admitted = match &entry.handoff {
        None => Admitted::as_received(&entry.name, None),
        Some(_) if sent.content_type.is_some_and(|ct| !crate::handoff::is_json(ct)) => {
            return Ok(json!({
                "ok": false,
                "destination": entry.name,
                "stage": "parse",
                "message": format!(
                    "destination {:?} takes JSON (application/json), not {:?}",
                    entry.name,
                    sent.content_type.unwrap_or_default()
                ),
                "errors": [],
            }))
        }
        Some(h) => match h.runner.admit(&entry.name, body).await {
            Ok(a) => a,
            Err(RunError::Failed(f)) => {
                return Ok(json!({
                    "ok": false,
                    "destination": f.destination,
                    "stage": f.stage.as_str(),
                    "message": f.message,
                    "errors": f.violations,
                }))
            }
            Err(RunError::Unavailable(e)) => return Err(e),
        },
    };
    // Config validation guarantees a route's target exists; a reload racing
    // this call is the one way it cannot be found.
    let target = lookup(&admitted.destination)
        .ok_or_else(|| format!("route target {:?} is not configured", admitted.destination))?;
    let mut headers = Map::new();
    let sent_body = match &admitted.rendered {
        Some(r) => {
            headers.insert("content-type".into(), Value::String(r.content_type.clone()));
            String::from_utf8_lossy(&r.body).into_owned()
        }
        None => {
            if let Some(ct) = sent.content_type {
                headers.insert("content-type".into(), Value::String(ct.to_string()));
            }
            String::from_utf8_lossy(body).into_owned()
        }
    };
    // A batching destination sends it as a batch of one (SPEC §16): the
    // batch's encoding, envelope and path.
    let mut path = sent.path;
    let sent_body = match &target.batch {
        None => sent_body,
        Some(b) => {
            let item = match &admitted.rendered {
                Some(r) => r.body.clone(),
                None => body.to_vec(),
            };
            match crate::dispatch::batch::encode(b, &[("", &item)]).await {
                Ok(encoded) => {
                    headers.insert(
                        "content-type".into(),
                        Value::String(crate::dispatch::batch::content_type(b.encoding).into()),
                    );
                    path = b.path.as_deref().unwrap_or(sent.path);
                    String::from_utf8_lossy(&encoded).into_owned()
                }
                Err(e) => {
                    return Ok(json!({
                        "ok": false,
                        "destination": target.name,
                        "stage": "format",
                        "message": e,
                        "errors": [],
                    }))
                }
            }
        }
    };
    // Where the first attempt goes: the destination's URL and the
    // producer's path (or the batch's), joined as delivery joins them.
    let url = crate::delivery::join_url(&target.url, path)
        .map(|u| {
            if target.secret_url {
                crate::config::redact_url_path(&u)
            } else {
                crate::config::redact_url(&u)
            }
        })
        .unwrap_or_else(|| target.redacted_url());
    for (k, _) in &target.headers {
        headers.insert(k.as_str().to_string(), Value::String("<redacted>".into()));
    }
    Ok(json!({
        "ok": true,
        "destination": admitted.destination,
        "routed_from": admitted.routed_from.as_ref().map(|r| &r.0),
        "route_rule": admitted.routed_from.as_ref().map(|r| r.1),
        "category": admitted.category,
        "held": admitted.hold.map(|h| h.as_str()),
        "request": {"method": sent.method, "url": url, "headers": headers, "body": sent_body},
    }))
}
