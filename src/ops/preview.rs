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

/// The preview of `body` sent to `entry`, as the JSON both surfaces answer:
/// `ok: true` with `destination`, `routed_from`, `route_rule`, `category`
/// and `request {method, url, headers, body}`; or `ok: false` with the
/// failing `stage`, `destination`, `message` and schema `errors`.
/// `lookup` finds a destination's config by name (a route's target).
/// `Err` only when the sandbox could not run the programs at all.
pub async fn preview<D: Deref<Target = Destination>>(
    entry: &Destination,
    body: &[u8],
    lookup: impl Fn(&str) -> Option<D>,
) -> Result<Value, String> {
    let admitted = match &entry.handoff {
        None => Admitted::as_received(&entry.name, None),
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
    let sent = match &admitted.rendered {
        Some(r) => {
            headers.insert("content-type".into(), Value::String(r.content_type.clone()));
            String::from_utf8_lossy(&r.body).into_owned()
        }
        None => String::from_utf8_lossy(body).into_owned(),
    };
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
        "request": {"method": "POST", "url": target.redacted_url(), "headers": headers, "body": sent},
    }))
}
