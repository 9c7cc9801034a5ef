//! Where a config error is: file, line, column and the dotted key
//! ([`Locator`]), with the small value checks every section shares
//! (a positive count, a secret from the environment, a listen address).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::{ConfigError, EnvString, Secret};

/// The directory relative paths in the config file at `path` are resolved
/// against: its own, made absolute (and free of symbolic links where it
/// exists) so that the resolved paths can be printed and compared.
pub(super) fn config_dir(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    dir.canonicalize()
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf())
}

/// `base.join(p)`, with the `..` of `p` that climb out of `base` taken off
/// `base` (whose components are real directories: see `config_dir`), so
/// that `../data` beside `/srv/app/config/` reads `/srv/app/data`.
fn resolve_against(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let mut out = base.to_path_buf();
    let mut climbing = true;
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if climbing && out.parent().is_some() => {
                out.pop();
            }
            other => {
                climbing = false;
                out.push(other);
            }
        }
    }
    out
}

/// The dotted key an error from deserializing is about. `path` is where
/// serde was (`destination[0].retry`); a missing or unknown field named in
/// the message is the key itself. Array indexes are dropped: the line
/// number says which `[[destination]]` it is.
pub(super) fn key_path(path: &str, message: &str) -> String {
    let mut parts: Vec<String> = path
        .split('.')
        .map(|p| p.split('[').next().unwrap_or(p).to_string())
        // Spanned values are a private inner map to serde: not a key.
        .filter(|p| !p.is_empty() && p != "?" && !p.starts_with("$__serde"))
        .collect();
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    if let Some(field) = named {
        if parts.last().map(String::as_str) != Some(field) {
            parts.push(field.to_string());
        }
    }
    parts.join(".")
}

pub(super) struct Locator<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    /// Where relative paths in the file are resolved (`config_dir`).
    pub(super) base: PathBuf,
}

impl Locator<'_> {
    pub(super) fn resolve(&self, p: &str) -> PathBuf {
        resolve_against(&self.base, Path::new(p))
    }

    pub(super) fn error(&self, span: std::ops::Range<usize>, reason: String) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            line,
            col,
            key: self.key_at(start),
            reason,
        }
    }

    /// An error at `offset` about `key`, whatever line that offset is on
    /// (inside a multi-line program, say).
    pub(super) fn error_with_key(&self, offset: usize, key: &str, reason: String) -> ConfigError {
        named(self.error(offset..offset, reason), key, true)
    }

    /// As `error`, naming `key` when the span does not (a defaulted value).
    pub(super) fn error_at_key(&self, span: std::ops::Range<usize>, key: &str, reason: String) -> ConfigError {
        named(self.error(span, reason), key, false)
    }

    /// The dotted key whose value starts at `offset`: the table header above
    /// it plus the bare key on its line, e.g. `destination.retry.multiplier`.
    fn key_at(&self, offset: usize) -> Option<String> {
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = self.text[line_start..]
            .find('\n')
            .map(|i| line_start + i)
            .unwrap_or(self.text.len());
        let line = &self.text[line_start..line_end];
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        let table = before[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        match (table, key) {
            (Some(t), Some(k)) => Some(format!("{t}.{k}")),
            (None, Some(k)) => Some(k),
            (Some(t), None) if line.trim_start().starts_with('[') => Some(t),
            _ => None,
        }
    }
}

/// `e` naming `key`: always, or only where it names none.
fn named(e: ConfigError, key: &str, always: bool) -> ConfigError {
    match e {
        ConfigError::Invalid {
            path,
            line,
            col,
            key: k,
            reason,
        } if always || k.is_none() => ConfigError::Invalid {
            path,
            line,
            col,
            key: Some(key.to_string()),
            reason,
        },
        e => e,
    }
}

pub(super) fn positive<T>(v: &Option<Spanned<i64>>, default: T, loc: &Locator, what: &str) -> Result<T, ConfigError>
where
    T: TryFrom<i64> + Copy,
{
    match v {
        None => Ok(default),
        Some(s) => {
            let n = *s.get_ref();
            if n < 1 {
                return Err(loc.error(s.span(), format!("{what} must be at least 1, got {n}")));
            }
            T::try_from(n).map_err(|_| loc.error(s.span(), format!("{what} is too large: {n}")))
        }
    }
}

pub(super) fn secret_from_env(name: &Option<Spanned<String>>, loc: &Locator) -> Result<Option<Secret>, ConfigError> {
    let Some(name) = name else { return Ok(None) };
    match std::env::var(name.get_ref()) {
        Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
        _ => Err(loc.error(
            name.span(),
            format!("environment variable `{}` is not set or empty", name.get_ref()),
        )),
    }
}

/// A listener's address: the environment's `env_key` when set (how two
/// instances run from one config file: `tidegate serve --ingress-listen`
/// sets it, and a reload reads it again), else the file's, else `default`.
pub(super) fn listen_addr(
    env_key: &str,
    key: &str,
    v: &Option<Spanned<EnvString>>,
    default: &str,
    loc: &Locator,
) -> Result<SocketAddr, ConfigError> {
    match std::env::var(env_key) {
        Ok(text) if !text.trim().is_empty() => text.trim().parse().map_err(|_| {
            loc.error_at_key(
                0..0,
                key,
                format!("{env_key}={text:?} (which overrides it) is not an address like \"127.0.0.1:9090\""),
            )
        }),
        _ => socket_addr(v, default, loc),
    }
}

fn socket_addr(v: &Option<Spanned<EnvString>>, default: &str, loc: &Locator) -> Result<SocketAddr, ConfigError> {
    match v {
        None => Ok(default.parse().expect("default listen address is valid")),
        Some(s) => s.get_ref().0.parse().map_err(|_| {
            loc.error(
                s.span(),
                format!("{:?} is not an address like \"127.0.0.1:9090\"", s.get_ref().0),
            )
        }),
    }
}
