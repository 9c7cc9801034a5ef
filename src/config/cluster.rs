//! `[storage] backend` and `[storage.jetstream]` (SPEC §13): where the
//! queue lives. `sqlite` (the default) is one process's journal on local
//! disk; `jetstream` is a NATS JetStream cluster shared by any number of
//! tidegate instances. URLs are checked to be `nats://` (or `tls://`)
//! addresses, `replicas` to be 1..=5, the stream prefix to be a valid
//! stream-name part, so a mistake is an error at its file:line:col.

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, EnvString, Locator, Secret};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJetStream {
    #[serde(default)]
    urls: Vec<Spanned<EnvString>>,
    replicas: Option<Spanned<i64>>,
    credentials_file: Option<Spanned<EnvString>>,
    token_env: Option<Spanned<String>>,
    stream_prefix: Option<Spanned<String>>,
}

/// Which storage holds the queue.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Backend {
    #[default]
    Sqlite,
    JetStream(JetStreamConfig),
}

#[derive(Clone, Debug, PartialEq)]
pub struct JetStreamConfig {
    /// The servers, without any credentials they were written with (those
    /// are in `url_credentials`): safe to print.
    pub urls: Vec<String>,
    /// Replicas of every stream and bucket tidegate creates.
    pub replicas: usize,
    pub credentials_file: Option<std::path::PathBuf>,
    pub token: Option<Secret>,
    /// Credentials written into the URLs (`nats://user:password@host` or
    /// `nats://token@host`), taken out of them: used to connect, never
    /// shown.
    pub url_credentials: Option<UrlCredentials>,
    /// Names every stream and bucket, so clusters can share a NATS account.
    pub stream_prefix: String,
}

/// A user and password, or a token alone (NATS reads `nats://t@host` as
/// the token `t`).
#[derive(Clone, Debug, PartialEq)]
pub struct UrlCredentials {
    pub user: Secret,
    pub password: Option<Secret>,
}

impl JetStreamConfig {
    /// How tidegate authenticates to NATS, as `check` shows it.
    pub fn auth_summary(&self) -> &'static str {
        match (&self.credentials_file, &self.token, &self.url_credentials) {
            (Some(_), _, _) => "credentials_file",
            (_, Some(_), _) => "token_env",
            (_, _, Some(UrlCredentials { password: Some(_), .. })) => "user and password from the URL",
            (_, _, Some(_)) => "token from the URL",
            _ => "none",
        }
    }
}

pub(super) fn backend(
    name: &Option<Spanned<String>>,
    raw: Option<&Spanned<RawJetStream>>,
    loc: &Locator,
) -> Result<Backend, ConfigError> {
    match name.as_ref().map(|n| (n.get_ref().as_str(), n.span())) {
        None | Some(("sqlite", _)) => {
            if let Some(raw) = raw {
                return Err(loc.error_at_key(
                    raw.span(),
                    "storage.jetstream",
                    "[storage.jetstream] is set but storage.backend is not \"jetstream\"".into(),
                ));
            }
            Ok(Backend::Sqlite)
        }
        Some(("jetstream", span)) => {
            let Some(raw) = raw else {
                return Err(loc.error_at_key(
                    span,
                    "storage.backend",
                    "backend \"jetstream\" needs a [storage.jetstream] table with urls".into(),
                ));
            };
            jetstream(raw, loc).map(Backend::JetStream)
        }
        Some((other, span)) => Err(loc.error(
            span,
            format!("unknown storage backend {other:?}; expected \"sqlite\" or \"jetstream\""),
        )),
    }
}

fn jetstream(raw: &Spanned<RawJetStream>, loc: &Locator) -> Result<JetStreamConfig, ConfigError> {
    let r = raw.get_ref();
    if r.urls.is_empty() {
        return Err(loc.error_at_key(
            raw.span(),
            "storage.jetstream.urls",
            "urls must name at least one NATS server (\"nats://host:4222\")".into(),
        ));
    }
    let mut urls = Vec::new();
    let mut url_credentials: Option<UrlCredentials> = None;
    for u in &r.urls {
        let s = u.get_ref().0.trim();
        let parsed = reqwest::Url::parse(s)
            .ok()
            .filter(|p| matches!(p.scheme(), "nats" | "tls") && p.host().is_some());
        let Some(mut url) = parsed else {
            // Never the text itself: it may hold a password.
            return Err(loc.error(
                u.span(),
                "not a NATS URL (nats://host:port or tls://host:port)".to_string(),
            ));
        };
        if !url.username().is_empty() {
            let decode = |t: &str| Secret::new(crate::text::percent_decoded(t));
            let found = UrlCredentials {
                user: decode(url.username()),
                password: url.password().map(decode),
            };
            if url_credentials.as_ref().is_some_and(|c| *c != found) {
                return Err(loc.error(u.span(), "the URLs carry different credentials: give one set".into()));
            }
            url_credentials = Some(found);
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        urls.push(url.as_str().trim_end_matches('/').to_string());
    }
    if url_credentials.is_some() && (r.credentials_file.is_some() || r.token_env.is_some()) {
        return Err(loc.error_at_key(
            raw.span(),
            "storage.jetstream.urls",
            "credentials in the URLs and credentials_file or token_env: give one".into(),
        ));
    }
    let replicas = match &r.replicas {
        None => 3,
        Some(n) if (1..=5).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            return Err(loc.error(
                n.span(),
                format!("replicas must be 1 to 5 (JetStream's limit), got {}", n.get_ref()),
            ))
        }
    };
    let stream_prefix = match &r.stream_prefix {
        None => "TIDEGATE".to_string(),
        Some(p) => {
            let s = p.get_ref();
            if s.is_empty() || s.len() > 32 || !s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
                return Err(loc.error(
                    p.span(),
                    format!("stream_prefix {s:?} must be 1 to 32 letters, digits, '_' or '-'"),
                ));
            }
            s.clone()
        }
    };
    if let (Some(_), Some(t)) = (&r.credentials_file, &r.token_env) {
        return Err(loc.error(t.span(), "set credentials_file or token_env, not both".into()));
    }
    let token = super::locate::secret_from_env(&r.token_env, loc)?;
    Ok(JetStreamConfig {
        urls,
        replicas,
        credentials_file: r.credentials_file.as_ref().map(|c| loc.resolve(&c.get_ref().0)),
        token,
        url_credentials,
        stream_prefix,
    })
}
