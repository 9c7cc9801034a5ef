//! `[log]` and `[server]`: how the process logs and how long it waits for
//! deliveries in flight when asked to stop.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, EnvString, HumanDuration, Locator};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub shutdown_timeout: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<Spanned<String>>,
    pub(super) level: Option<EnvString>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) shutdown_timeout: Option<HumanDuration>,
}

pub(super) fn log(raw: RawLog, loc: &Locator) -> Result<LogConfig, ConfigError> {
    let format = match &raw.format {
        None => LogFormat::Text,
        Some(f) => match f.get_ref().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(loc.error(
                    f.span(),
                    format!("log.format must be \"text\" or \"json\", got {other:?}"),
                ))
            }
        },
    };
    Ok(LogConfig {
        format,
        level: raw.level.map(|l| l.0).unwrap_or_else(|| "info".into()),
    })
}

pub(super) fn server(raw: RawServer) -> ServerConfig {
    ServerConfig {
        shutdown_timeout: raw.shutdown_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
    }
}
