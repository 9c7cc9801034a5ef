//! `[destination.handoff]`: read the schema and program files, compile
//! every program and schema once so that a mistake is a config error that
//! points at file:line:col (of the config, and of the jq or schema file),
//! and build the one [`Runner`] the whole config shares.

use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Destination, EnvString, Locator};
use crate::handoff::{jq, CsvLayout, Format, Route, Runner, Spec, Specs};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHandoff {
    schema: Option<Spanned<EnvString>>,
    transform: Option<Spanned<String>>,
    transform_file: Option<Spanned<EnvString>>,
    format: Option<Spanned<String>>,
    csv: Option<Spanned<RawCsv>>,
    category: Option<Spanned<String>>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCsv {
    columns: Option<Vec<String>>,
    header: Option<bool>,
    delimiter: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    when: Spanned<String>,
    to: Spanned<String>,
}

/// A destination's handoff in the validated config: its spec, and the
/// runner shared by every destination of the same config.
#[derive(Clone)]
pub struct Handoff {
    pub spec: Spec,
    pub runner: Arc<Runner>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The spec, not the runner: reload compares configs by their Debug
        // text, and a new runner alone is no change.
        self.spec.fmt(f)
    }
}

const KEY: &str = "destination.handoff";

/// Validates one destination's `[destination.handoff]` table into a spec.
/// Routes are checked against the other destinations later (`link`).
pub(super) fn spec(raw: RawHandoff, loc: &Locator) -> Result<(Spec, Vec<Spanned<String>>), ConfigError> {
    let format = match &raw.format {
        None => Format::Json,
        Some(f) => match f.get_ref().as_str() {
            "json" => Format::Json,
            "ndjson" => Format::Ndjson,
            "csv" => Format::Csv,
            "form" => Format::Form,
            other => {
                return Err(loc.error(
                    f.span(),
                    format!("format must be \"json\", \"ndjson\", \"csv\" or \"form\", got {other:?}"),
                ))
            }
        },
    };
    let csv = match (&raw.csv, format) {
        (None, Format::Csv) => {
            let span = raw.format.as_ref().map(|f| f.span()).unwrap_or(0..0);
            return Err(loc.error(
                span,
                "format \"csv\" needs csv = { columns = [...] }: the columns, in order".to_string(),
            ));
        }
        (Some(c), Format::Csv) => {
            let columns = c.get_ref().columns.clone().unwrap_or_default();
            if columns.is_empty() {
                return Err(loc.error(c.span(), "csv.columns must name at least one column".to_string()));
            }
            let delimiter = match &c.get_ref().delimiter {
                None => b',',
                Some(d) => match d.get_ref().as_bytes() {
                    [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => *b,
                    _ => {
                        return Err(loc.error(
                            d.span(),
                            format!(
                                "csv.delimiter must be one ASCII character (not a quote or newline), got {:?}",
                                d.get_ref()
                            ),
                        ))
                    }
                },
            };
            Some(CsvLayout {
                columns,
                header: c.get_ref().header.unwrap_or(true),
                delimiter,
            })
        }
        (Some(c), _) => return Err(loc.error(c.span(), "csv settings apply only with format = \"csv\"".to_string())),
        (None, _) => None,
    };
    let schema = match &raw.schema {
        None => None,
        Some(p) => {
            let path = loc.resolve(&p.get_ref().0);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| loc.error(p.span(), format!("cannot read schema {}: {e}", path.display())))?;
            let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                loc.error(
                    p.span(),
                    format!("{}:{}:{}: not JSON: {e}", path.display(), e.line(), e.column()),
                )
            })?;
            if let Err(e) = jsonschema::validator_for(&value) {
                return Err(loc.error(
                    p.span(),
                    format!(
                        "{}: not a usable JSON Schema: {e} (at {})",
                        path.display(),
                        e.schema_path()
                    ),
                ));
            }
            Some(value)
        }
    };
    let transform = match (&raw.transform, &raw.transform_file) {
        (Some(_), Some(f)) => return Err(loc.error(f.span(), "set transform or transform_file, not both".to_string())),
        (Some(t), None) => {
            inline_program(t, &format!("{KEY}.transform"), loc)?;
            Some(t.get_ref().clone())
        }
        (None, Some(f)) => {
            let path = loc.resolve(&f.get_ref().0);
            let code = std::fs::read_to_string(&path)
                .map_err(|e| loc.error(f.span(), format!("cannot read {}: {e}", path.display())))?;
            if let Err(e) = jq::Program::compile(&code) {
                let (line, col) = line_col(&code, e.offset);
                return Err(loc.error(f.span(), format!("{}:{line}:{col}: jq: {}", path.display(), e.message)));
            }
            Some(code)
        }
        (None, None) => None,
    };
    if let Some(c) = &raw.category {
        inline_program(c, &format!("{KEY}.category"), loc)?;
    }
    let mut routes = Vec::new();
    let mut targets = Vec::new();
    for r in raw.route {
        inline_program(&r.when, &format!("{KEY}.route.when"), loc)?;
        routes.push(Route {
            when: r.when.get_ref().clone(),
            to: r.to.get_ref().clone(),
        });
        targets.push(r.to);
    }
    Ok((
        Spec {
            schema,
            transform,
            format,
            csv,
            category: raw.category.map(|c| c.into_inner()),
            routes,
            key: None,
            hold_when: None,
            passthrough: false,
        },
        targets,
    ))
}

/// Checks every route's target, then gives each destination with a handoff
/// the config's one runner.
pub(super) fn link(
    destinations: &mut [Destination],
    specs: Vec<(String, Spec, Vec<Spanned<String>>)>,
    loc: &Locator,
) -> Result<(), ConfigError> {
    for (name, _, targets) in &specs {
        for to in targets {
            let target = to.get_ref();
            if target == crate::handoff::REVIEW {
                // Held on the destination addressed (SPEC §10).
                continue;
            }
            if target == name {
                return Err(loc.error(to.span(), format!("destination {name:?} routes to itself")));
            }
            if !destinations.iter().any(|d| d.name == *target) {
                return Err(loc.error(
                    to.span(),
                    format!("route target {target:?} is not a configured destination"),
                ));
            }
        }
    }
    let table: Specs = specs.into_iter().map(|(n, s, _)| (n, s)).collect();
    if table.is_empty() {
        return Ok(());
    }
    let runner = Arc::new(Runner::new(&table));
    for (name, spec) in table {
        if let Some(d) = destinations.iter_mut().find(|d| d.name == name) {
            d.handoff = Some(Handoff {
                spec,
                runner: runner.clone(),
            });
        }
    }
    Ok(())
}

/// Compiles a program written in the config file itself; an error points
/// at its line and column in the config.
pub(super) fn inline_program(code: &Spanned<String>, key: &str, loc: &Locator) -> Result<(), ConfigError> {
    let Err(e) = jq::Program::compile(code.get_ref()) else {
        return Ok(());
    };
    let start = code.span().start.min(loc.text.len());
    let raw = &loc.text[start..];
    // Where the string's content starts: after its quotes, and after the
    // newline that directly follows triple quotes (TOML drops it). Exact for
    // literal strings; for basic strings with escapes, close.
    let mut skip = if raw.starts_with("'''") || raw.starts_with("\"\"\"") {
        3
    } else {
        1
    };
    if skip == 3 {
        if raw[3..].starts_with("\r\n") {
            skip += 2;
        } else if raw[3..].starts_with('\n') {
            skip += 1;
        }
    }
    let at = (start + skip + e.offset).min(loc.text.len());
    Err(loc.error_with_key(at, key, format!("jq: {}", e.message)))
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

pub fn describe(spec: &Spec) -> String {
    let mut parts = vec![format!("format={}", spec.format.name())];
    if spec.schema.is_some() {
        parts.push("schema".into());
    }
    if spec.transform.is_some() {
        parts.push("transform".into());
    }
    if spec.category.is_some() {
        parts.push("category".into());
    }
    if spec.key.is_some() {
        parts.push("key".into());
    }
    if spec.hold_when.is_some() {
        parts.push("hold_when".into());
    }
    for (i, r) in spec.routes.iter().enumerate() {
        parts.push(format!("route[{i}]→{}", r.to));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn load(dest_extra: &str, dir: &std::path::Path) -> Result<Config, ConfigError> {
        let text = format!(
            "[ingress]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"data\"\n\n[[destination]]\nname = \"crm\"\nurl = \"http://127.0.0.1:1/\"\nowner = \"o\"\n{dest_extra}\n\n[[destination]]\nname = \"triage\"\nurl = \"http://127.0.0.1:1/\"\nowner = \"o\"\n"
        );
        Config::parse(&dir.join("tidegate.toml"), &text)
    }

    fn invalid(r: Result<Config, ConfigError>) -> (usize, usize, Option<String>, String) {
        match r {
            Err(ConfigError::Invalid {
                line, col, key, reason, ..
            }) => (line, col, key, reason),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn a_program_that_does_not_compile_is_located_in_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        // Line 10 is `[destination.handoff]`; the program starts on line 12.
        let (line, col, key, reason) = invalid(load(
            "[destination.handoff]\ntransform = '''\n{ name: .a,\n  email: .b | nosuch }\n'''",
            dir.path(),
        ));
        assert_eq!((line, col), (13, 15), "{reason}");
        assert_eq!(key.as_deref(), Some("destination.handoff.transform"));
        assert!(reason.contains("nosuch"), "{reason}");
        let (line, col, key, _) = invalid(load(
            "[destination.handoff]\n[[destination.handoff.route]]\nwhen = \".c < \"\nto = \"triage\"",
            dir.path(),
        ));
        assert_eq!(line, 12);
        assert!(col > 8, "{col}");
        assert_eq!(key.as_deref(), Some("destination.handoff.route.when"));
    }

    #[test]
    fn files_are_read_relative_to_the_config_and_their_errors_name_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.jq"), "{\n  a: .a,\n  b: (.b +)\n}").unwrap();
        let (line, _, _, reason) = invalid(load("[destination.handoff]\ntransform_file = \"t.jq\"", dir.path()));
        assert_eq!(line, 11);
        assert!(reason.contains("t.jq:3:"), "{reason}");
        std::fs::write(dir.path().join("s.json"), "{\n \"type\": \"object\",\n}").unwrap();
        let (_, _, _, reason) = invalid(load("[destination.handoff]\nschema = \"s.json\"", dir.path()));
        assert!(reason.contains("s.json:3:1"), "{reason}");
        std::fs::write(dir.path().join("s.json"), r#"{"type": "objekt"}"#).unwrap();
        let (_, _, _, reason) = invalid(load("[destination.handoff]\nschema = \"s.json\"", dir.path()));
        assert!(reason.contains("not a usable JSON Schema"), "{reason}");
        std::fs::write(dir.path().join("s.json"), r#"{"type": "object"}"#).unwrap();
        let c = load(
            "[destination.handoff]\nschema = \"s.json\"\ntransform_file = \"t2.jq\"",
            dir.path(),
        );
        assert!(format!("{:?}", c.err()).contains("t2.jq"));
    }

    #[test]
    fn routes_must_name_another_configured_destination_or_review() {
        let dir = tempfile::tempdir().unwrap();
        let route =
            |to: &str| format!("[destination.handoff]\n[[destination.handoff.route]]\nwhen = \"true\"\nto = \"{to}\"");
        assert!(load(&route("review"), dir.path()).is_ok());
        let (_, _, _, reason) = invalid(load(&route("nowhere"), dir.path()));
        assert!(reason.contains("not a configured destination"), "{reason}");
        let (_, _, _, reason) = invalid(load(&route("crm"), dir.path()));
        assert!(reason.contains("itself"), "{reason}");
        let ok = load(&route("triage"), dir.path());
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    #[test]
    fn csv_needs_columns_and_a_one_character_delimiter() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, _, reason) = invalid(load("[destination.handoff]\nformat = \"csv\"", dir.path()));
        assert!(reason.contains("columns"), "{reason}");
        let (_, _, key, _) = invalid(load(
            "[destination.handoff]\nformat = \"csv\"\ncsv = { columns = [\"a\"], delimiter = \"::\" }",
            dir.path(),
        ));
        assert_eq!(key.as_deref(), Some("destination.handoff.csv"));
        let (_, _, _, reason) = invalid(load("[destination.handoff]\nformat = \"xml\"", dir.path()));
        assert!(reason.contains("\"xml\""), "{reason}");
        let (_, _, _, reason) = invalid(load(
            "[destination.handoff]\nformat = \"json\"\ncsv = { columns = [\"a\"] }",
            dir.path(),
        ));
        assert!(reason.contains("only with format"), "{reason}");
    }
}
