//! Human units in config values: durations ("250ms", "10s", "5m", "24h"),
//! sizes with binary units ("512KiB", "1MiB", "10GiB") and rates ("50/s",
//! "3000/m", "1000/h", or "unlimited").
//!
//! Each type implements `Deserialize` itself so that a bad value fails while
//! toml still knows where it is: the error then carries the file position of
//! the offending value, not just a message. `${NAME}` expansion happens here
//! too, for the same reason.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Replaces every `${NAME}` with the environment variable `NAME`.
///
/// A missing variable is an error that names it, never an empty string:
/// a silently empty `Authorization` header is a nasty thing to debug.
pub fn expand_env(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in {raw:?}"))?;
        let name = &after[..end];
        if name.is_empty() {
            return Err("empty variable name in `${}`".to_string());
        }
        let value = std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A string with `${NAME}` expanded at load time.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvString(pub String);

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw).map(EnvString).map_err(serde::de::Error::custom)
    }
}

macro_rules! parsed_from_string {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                let expanded = expand_env(&raw).map_err(serde::de::Error::custom)?;
                expanded.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A duration written with a unit: `ms`, `s`, `m`, `h` or `d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h, d)"))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("duration {s:?} does not start with a number"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            other => return Err(format!("unknown duration unit {other:?} in {s:?} (use ms, s, m, h, d)")),
        };
        if !secs.is_finite() || secs > 10.0 * 365.0 * 86400.0 {
            return Err(format!("duration {s:?} is out of range"));
        }
        Ok(HumanDuration(Duration::from_secs_f64(secs)))
    }
}
parsed_from_string!(HumanDuration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 3_600_000 == 0 && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A byte size: a plain number of bytes, or a number with `B`, `KiB`, `MiB`,
/// `GiB` or `TiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("size {s:?} does not start with a whole number"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, TiB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is out of range"))
    }
}
parsed_from_string!(ByteSize);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if self.0 >= 1 << shift && self.0 % (1 << shift) == 0 {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// A rate: "N/s", "N/m", "N/h", or "unlimited".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Messages per second; `None` means no token bucket at all.
    pub per_second: Option<f64>,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "unlimited" {
            return Ok(Rate { per_second: None });
        }
        let (num, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("rate {s:?} must look like \"50/s\", \"300/m\" or \"unlimited\""))?;
        let n: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("rate {s:?} does not start with a number"))?;
        let per = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("unknown rate unit {other:?} in {s:?} (use s, m, h)")),
        };
        let per_second = n / per;
        if !per_second.is_finite() || per_second <= 0.0 {
            return Err(format!("rate {s:?} must be positive"));
        }
        if per_second > 1_000_000.0 {
            return Err(format!("rate {s:?} is above 1000000/s; use \"unlimited\""));
        }
        Ok(Rate {
            per_second: Some(per_second),
        })
    }
}
parsed_from_string!(Rate);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per_second {
            None => f.write_str("unlimited"),
            Some(r) => write!(f, "{r}/s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!("250ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(250));
        assert_eq!("10s".parse::<HumanDuration>().unwrap().0, Duration::from_secs(10));
        assert_eq!("5m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(300));
        assert_eq!("24h".parse::<HumanDuration>().unwrap().0, Duration::from_secs(86400));
        assert!("10".parse::<HumanDuration>().is_err());
        assert!("10 parsecs".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!("512KiB".parse::<ByteSize>().unwrap().0, 512 * 1024);
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert_eq!("10GiB".parse::<ByteSize>().unwrap().0, 10 << 30);
        assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
        assert!("1MB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
    }

    #[test]
    fn rates_normalise_to_per_second() {
        assert_eq!("50/s".parse::<Rate>().unwrap().per_second, Some(50.0));
        assert_eq!("120/m".parse::<Rate>().unwrap().per_second, Some(2.0));
        assert_eq!("unlimited".parse::<Rate>().unwrap().per_second, None);
        assert!("0/s".parse::<Rate>().is_err());
        assert!("50".parse::<Rate>().is_err());
    }

    #[test]
    fn env_expansion_names_the_missing_variable() {
        std::env::set_var("TIDEGATE_UNITS_TEST", "abc");
        assert_eq!(expand_env("x-${TIDEGATE_UNITS_TEST}-y").unwrap(), "x-abc-y");
        let err = expand_env("${TIDEGATE_SURELY_UNSET_VAR}").unwrap_err();
        assert!(err.contains("TIDEGATE_SURELY_UNSET_VAR"));
    }
}
