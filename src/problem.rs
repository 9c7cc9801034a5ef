//! RFC 9457 problem details: the one error shape both listeners answer
//! with. Each [`Problem`] carries a stable `code` that scripts can match on;
//! its `detail` says what happened without leaking internals.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// Sent as `Allow` with 405.
    pub allow: Option<&'static str>,
    /// Extension members merged into the body (`errors` of a schema
    /// violation).
    pub extra: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            title,
            detail: detail.into(),
            retry_after: None,
            allow: None,
            extra: None,
        }
    }
    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", "Invalid request", detail)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid bearer token is required",
        )
    }
    /// A browser request from a page the listener does not serve.
    pub fn forbidden_origin(origin: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "Forbidden origin",
            format!("requests from origin {origin:?} are not allowed here (see allowed_origins)"),
        )
    }
    /// A `Host` that is not this loopback listener's: DNS rebinding, or a
    /// name the operator has not listed in `allowed_hosts`.
    pub fn forbidden_host(host: &str) -> Self {
        Self::new(
            StatusCode::MISDIRECTED_REQUEST,
            "forbidden_host",
            "Forbidden host",
            format!("host {host:?} is not a loopback name of this listener (see allowed_hosts)"),
        )
    }
    /// A producer's or a person's token does not cover this destination;
    /// `detail` says whose and what.
    pub fn forbidden_destination(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden_destination",
            "Forbidden destination",
            detail,
        )
    }
    /// A person's role does not include this act (SPEC §18).
    pub fn forbidden_role(who: &str, role: &str, needs: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden_role",
            "Forbidden for this role",
            format!("{who:?} is a {role}; this needs a {needs} or above"),
        )
    }
    /// A decision made with a person's token that names someone else.
    pub fn reviewer_mismatch(who: &str, named: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "reviewer_mismatch",
            "Reviewer is not the token's holder",
            format!(
                "this token is {who:?}'s; a decision made with it is recorded as theirs, not {:?}",
                named.chars().take(64).collect::<String>()
            ),
        )
    }
    pub fn unknown_destination(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_destination",
            "Unknown destination",
            format!("no destination named {name:?} is configured"),
        )
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "Not found", detail)
    }
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut p = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            format!("producer paths accept {allow}"),
        );
        p.allow = Some(allow);
        p
    }
    /// A 405 on an admin path; the router adds the `Allow` header itself.
    pub fn method_not_allowed_here() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "this path does not take that method; Allow lists the ones it does",
        )
    }
    /// The body did not arrive within `body_timeout` (SPEC §17).
    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "Body timeout",
            format!(
                "the body was not received within {:?} (body_timeout); nothing was stored",
                timeout
            ),
        )
    }
    /// A path that could be read as another one downstream (SPEC §17).
    pub fn invalid_path(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_path", "Invalid path", detail)
    }
    /// A producer's query repeats a name the destination's URL sets.
    pub fn forbidden_query(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "forbidden_query",
            "Forbidden query",
            format!("the destination's URL sets the query parameter {name:?}; a producer may not send it again"),
        )
    }
    pub fn payload_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload too large",
            format!("the body is larger than ingress.max_body ({limit} bytes)"),
        )
    }
    pub fn queue_full(dest: &str, retry_after: u64) -> Self {
        let mut p = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            "Queue full",
            format!("the queue of destination {dest:?} is at its limit"),
        );
        p.retry_after = Some(retry_after.max(1));
        p
    }
    /// An `Idempotency-Key` reused for a different request within
    /// `history_retention`: storing it would drop the new body silently.
    pub fn idempotency_key_reused(first_id: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "Idempotency key reused",
            format!(
                "this Idempotency-Key was first used for message {first_id} with a different method, \
                 path or body; nothing was stored (use a new key for a new request)"
            ),
        )
    }
    pub fn destination_halted(dest: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "destination_halted",
            "Destination halted",
            format!("destination {dest:?} is halted; an operator must resume it"),
        )
    }
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "Shutting down",
            "tidegate is shutting down",
        )
    }
    pub fn starting() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "Starting",
            "tidegate is starting: its journal is not open yet",
        )
    }
    pub fn storage_full() -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "storage_full",
            "Storage full",
            "the journal has reached storage.max_disk or the disk is full",
        )
    }
    pub fn storage_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "Storage unavailable",
            "the queue's storage (the NATS JetStream cluster) cannot be reached; nothing was stored, retry",
        )
    }
    pub fn downstream_unreachable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "downstream_unreachable",
            "Downstream unreachable",
            detail,
        )
    }
    pub fn invalid_config(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_config",
            "Invalid configuration",
            detail,
        )
    }
    pub fn reload_refused(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "reload_refused", "Reload refused", detail)
    }
    /// The body is not the JSON a destination's handoff needs.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            detail,
        )
    }
    /// The body fails the destination's JSON Schema; `errors` lists how.
    pub fn schema_violation(detail: impl Into<String>, errors: &[impl serde::Serialize]) -> Self {
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "schema_violation",
            "Schema violation",
            detail,
        );
        let mut extra = serde_json::Map::new();
        extra.insert("errors".into(), serde_json::to_value(errors).unwrap_or_default());
        p.extra = Some(Box::new(extra));
        p
    }
    /// The category program's answer cannot be a category (SPEC §17).
    pub fn invalid_category(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_category",
            "Invalid category",
            format!(
                "{}; a category is at most 128 characters of printable text",
                detail.into()
            ),
        )
    }
    /// A route, category or transform program failed on the body, or its
    /// output cannot be written in the destination's format.
    pub fn transform_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "transform_failed",
            "Transform failed",
            detail,
        )
    }
    /// A resume named a key that halt mode has not stopped.
    pub fn key_not_halted(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "key_not_halted", "Key not halted", detail)
    }
    /// A key-ordered destination found no usable ordering key in the
    /// request (none, `null`, or too long).
    pub fn invalid_ordering_key(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_ordering_key",
            "Invalid ordering key",
            detail,
        )
    }
    /// A review item somebody decided first.
    pub fn already_decided(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "already_decided", "Already decided", detail)
    }
    /// A decision on a message that is not waiting for review.
    pub fn not_held(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "not_held", "Not held for review", detail)
    }
    /// Feedback on a message that has not been delivered.
    pub fn not_delivered(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "not_delivered", "Not delivered", detail)
    }
    /// Resuming a governance pause without saying who and why.
    pub fn reason_required(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "Who and why required",
            detail,
        )
    }
    /// Something failed inside tidegate; details go to the log, not the
    /// client.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal error",
            "tidegate could not complete the request; see its log",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": format!("https://tidegate.dev/problems/{}", self.code),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        if let (Some(extra), Some(obj)) = (self.extra, body.as_object_mut()) {
            obj.extend(*extra);
        }
        let mut resp = (self.status, body.to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(a) = self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(a));
        }
        resp
    }
}
