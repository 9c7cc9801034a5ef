use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("t.toml"), text)
}

/// The smallest config that loads: a loopback ingress (a public one
/// needs producers or `allow_anonymous`) and one destination.
const MIN: &str = "[ingress]\nlisten = \"127.0.0.1:8080\"\n[[destination]]\nname = \"crm\"\nurl = \"http://127.0.0.1:9/api\"\nowner = \"ops@example.com\"\n";

#[test]
fn storage_backends_are_checked_where_they_are_written() {
    let js = "[storage]\nbackend = \"jetstream\"\n[storage.jetstream]\nurls = [\"nats://127.0.0.1:4222\"]\n";
    let c = parse(&format!("{js}{MIN}")).unwrap();
    match &c.storage.backend {
        Backend::JetStream(j) => {
            assert_eq!(j.urls, ["nats://127.0.0.1:4222"]);
            assert_eq!((j.replicas, j.stream_prefix.as_str()), (3, "TIDEGATE"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(parse(MIN).unwrap().storage.backend, Backend::Sqlite);
    let e = parse(&format!("[storage]\nbackend = \"jetstream\"\n{MIN}"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("t.toml:2:") && e.contains("needs a [storage.jetstream]"),
        "{e}"
    );
    let e = parse(&format!("[storage]\nbackend = \"redis\"\n{MIN}"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("t.toml:2:") && e.contains("\"sqlite\" or \"jetstream\""),
        "{e}"
    );
    let e = parse(&format!("[storage.jetstream]\nurls = [\"nats://a:4222\"]\n{MIN}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("storage.backend is not \"jetstream\""), "{e}");
    let e = parse(&format!(
        "[storage]\nbackend = \"jetstream\"\n[storage.jetstream]\nurls = [\"http://a:4222\"]\n{MIN}"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("t.toml:4:") && e.contains("not a NATS URL"), "{e}");
    let e = parse(&format!("{js}replicas = 7\n{MIN}")).unwrap_err().to_string();
    assert!(e.starts_with("t.toml:5:") && e.contains("1 to 5"), "{e}");
    let e = parse(&format!("{js}stream_prefix = \"a.b\"\n{MIN}"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t.toml:5:") && e.contains("stream_prefix"), "{e}");
    // The review station works in cluster mode too.
    let c = parse(&format!(
        "{js}{MIN}[destination.review]\nsample = 0.1\n[destination.governance]\nerror_threshold = 0.5\n"
    ))
    .unwrap();
    assert!(c.destinations[0].review.is_some());
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.ingress.max_body, 1 << 20);
    assert_eq!(c.destinations[0].retry.max_attempts, 8);
    assert_eq!(c.destinations[0].on_failure, FailureMode::Retry);
    assert!(c.admin.listen.ip().is_loopback());
}

#[test]
fn key_ordering_takes_exactly_one_key_source_and_checks_it() {
    let q = |lines: &str| parse(&format!("{MIN}[destination.queue]\n{lines}"));
    let e = q("ordering = \"key\"\n").unwrap_err().to_string();
    assert!(e.starts_with("t.toml:8:12:") && e.contains("key_header"), "{e}");
    let e = q("ordering = \"key\"\nkey = \".a\"\nkey_header = \"X-K\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t.toml:10:") && e.contains("not both"), "{e}");
    let e = q("ordering = \"fifo\"\nkey = \".a\"\n").unwrap_err().to_string();
    assert!(e.contains("only with ordering"), "{e}");
    let e = q("ordering = \"key\"\nkey = \".a |\"\n").unwrap_err().to_string();
    assert!(e.starts_with("t.toml:9:") && e.contains("destination.queue.key"), "{e}");
    let e = q("ordering = \"key\"\nkey_header = \"bad header\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a valid HTTP header name"), "{e}");
    let c = q("ordering = \"key\"\nkey_header = \"X-Ordering-Key\"\n").unwrap();
    assert_eq!(
        c.destinations[0].queue.key,
        Some(OrderingKey::Header(http::HeaderName::from_static("x-ordering-key")))
    );
    assert!(c.destinations[0].handoff.is_none(), "a header key needs no sandbox");
    let c = q("ordering = \"key\"\nkey = \".contact_id\"\n").unwrap();
    let h = c.destinations[0]
        .handoff
        .as_ref()
        .expect("the key program runs in the handoff");
    assert_eq!(h.spec.key.as_deref(), Some(".contact_id"));
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = format!("{MIN}[destination.retry]\nmax_atempts = 3\n");
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.starts_with("t.toml:8:1:"), "{e}");
    assert!(e.contains("max_atempts"), "{e}");
}

#[test]
fn bad_duration_points_at_the_value() {
    let text = format!("{MIN}timeout = \"10 parsecs\"\n");
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.starts_with("t.toml:7:11:"), "{e}");
    assert!(e.contains("destination.timeout"), "{e}");
}

#[test]
fn missing_owner_is_an_error() {
    let e = parse("[[destination]]\nname = \"a\"\nurl = \"http://x/\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("owner"), "{e}");
}

#[test]
fn non_loopback_admin_without_token_is_refused() {
    let e = parse(&format!("[admin]\nlisten = \"0.0.0.0:9090\"\n{MIN}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("token_env"), "{e}");
}

#[test]
fn header_values_never_appear_in_errors_or_debug() {
    std::env::set_var("TIDEGATE_CFG_TEST_SECRET", "s3cr3t-value");
    let c = parse(&format!(
        "{MIN}headers = {{ Authorization = \"Bearer ${{TIDEGATE_CFG_TEST_SECRET}}\" }}\n"
    ))
    .unwrap();
    assert_eq!(c.destinations[0].headers[0].1.expose(), "Bearer s3cr3t-value");
    assert!(!format!("{c:?}").contains("s3cr3t"));
    assert!(!c.summary().contains("s3cr3t"));
}

#[test]
fn bad_destination_names_are_refused() {
    for bad in ["Crm", "-x", "", "a/b"] {
        let text = MIN.replace("\"crm\"", &format!("{bad:?}"));
        assert!(parse(&text).is_err(), "{bad}");
    }
}

fn key_of(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid { key, .. } => key.unwrap_or_default(),
        other => panic!("not an Invalid error: {other}"),
    }
}

#[test]
fn errors_name_the_key_they_are_about() {
    // A missing owner, not the table the parser was in.
    let e =
        parse("[server]\nshutdown_timeout = \"5s\"\n[[destination]]\nname = \"a\"\nurl = \"http://x/\"\n").unwrap_err();
    assert_eq!(key_of(e), "destination.owner");
    // An unknown sub-table of a destination.
    let e = parse(&format!("{MIN}[destination.retries]\nmax_attempts = 3\n")).unwrap_err();
    assert_eq!(key_of(e), "destination.retries");
    // An unknown top-level table after a destination's sub-table.
    let e = parse(&format!(
        "{MIN}[destination.queue]\nmax_messages = 5\n[alarms]\nwebhook_url = \"x\"\n"
    ))
    .unwrap_err();
    assert_eq!(key_of(e), "alarms");
    // A webhook that is not a URL.
    let e = parse(&format!("{MIN}[alerts]\nwebhook_url = \"x\"\n")).unwrap_err();
    assert_eq!(key_of(e), "alerts.webhook_url");
    // A wrong type.
    let e = parse(&format!("{MIN}[destination.rate_limit]\nburst = \"ten\"\n")).unwrap_err();
    assert_eq!(key_of(e), "destination.rate_limit.burst");
}

#[test]
fn max_backoff_below_initial_backoff_is_an_error() {
    let e = parse(&format!(
        "{MIN}[destination.retry]\ninitial_backoff = \"10s\"\nmax_backoff = \"1s\"\n"
    ))
    .unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("t.toml:9:15:"), "{text}");
    assert_eq!(key_of(e), "destination.retry.max_backoff");
    // Only initial_backoff set, above the default max_backoff of 1m.
    let e = parse(&format!("{MIN}[destination.retry]\ninitial_backoff = \"2m\"\n")).unwrap_err();
    assert_eq!(key_of(e), "destination.retry.initial_backoff");
    assert!(parse(&format!(
        "{MIN}[destination.retry]\ninitial_backoff = \"1s\"\nmax_backoff = \"1s\"\n"
    ))
    .is_ok());
}

#[test]
fn a_config_without_destinations_loads_with_a_warning() {
    let c = parse("[ingress]\nlisten = \"127.0.0.1:8080\"\n[log]\nlevel = \"info\"\n").unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.summary().contains("warning: t.toml: no [[destination]]"),
        "{}",
        c.summary()
    );
    assert!(parse(MIN).unwrap().warnings.is_empty());
}

#[test]
fn relative_paths_are_resolved_against_the_config_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("etc");
    std::fs::create_dir(&conf).unwrap();
    let base = conf.canonicalize().unwrap();
    let at = |p: &str| {
        Config::parse(&conf.join("t.toml"), &format!("[storage]\npath = {p:?}\n{MIN}"))
            .unwrap()
            .storage
            .path
    };
    assert_eq!(at("./data"), base.join("data"));
    assert_eq!(at("q/data"), base.join("q/data"));
    assert_eq!(at("../data"), base.parent().unwrap().join("data"));
    assert_eq!(at("/var/lib/tidegate"), PathBuf::from("/var/lib/tidegate"));
    // The summary `check` prints shows where the queue really is.
    let c = Config::parse(&conf.join("t.toml"), MIN).unwrap();
    assert!(
        c.summary().contains(&format!("path={}", base.join("data").display())),
        "{}",
        c.summary()
    );
}

/// The shipped config, one key at a time: renamed to an unknown key,
/// given a value of the wrong type, or (name, url, owner) removed.
/// Each error must name the key path it is about.
mod single_key_mutations {
    use super::*;
    use proptest::prelude::*;

    const SHIPPED: &str = include_str!("../../config/tidegate.toml");

    /// (line index, table path, key) for every `key = value` line.
    fn keys() -> Vec<(usize, String, String)> {
        let mut table = String::new();
        let mut out = Vec::new();
        for (i, line) in SHIPPED.lines().enumerate() {
            let t = line.trim();
            if t.starts_with('#') || t.is_empty() {
                continue;
            }
            if t.starts_with('[') {
                table = t.trim_matches(|c| c == '[' || c == ']').to_string();
                continue;
            }
            if let Some((k, _)) = t.split_once('=') {
                out.push((i, table.clone(), k.trim().to_string()));
            }
        }
        out
    }

    fn with_line(i: usize, new: Option<String>) -> String {
        SHIPPED
            .lines()
            .enumerate()
            .filter_map(|(j, l)| if j == i { new.clone() } else { Some(l.to_string()) })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn dotted(table: &str, key: &str) -> String {
        if table.is_empty() {
            key.to_string()
        } else {
            format!("{table}.{key}")
        }
    }

    #[test]
    fn the_shipped_config_loads() {
        parse(SHIPPED).unwrap();
        assert!(keys().len() > 25);
    }

    proptest! {
        #[test]
        fn each_mutation_names_its_own_key(pick in any::<prop::sample::Index>(), how in 0..3u8) {
            let keys = keys();
            let (i, table, key) = &keys[pick.index(keys.len())];
            let line = SHIPPED.lines().nth(*i).unwrap();
            let value = line.split_once('=').unwrap().1.split('#').next().unwrap().trim();
            let (text, expect) = match how {
                0 => (with_line(*i, Some(format!("{key}_typo = {value}"))), dotted(table, &format!("{key}_typo"))),
                1 => {
                    let wrong = if value.starts_with('"') { "12345".to_string() } else { "\"wrong\"".to_string() };
                    (with_line(*i, Some(format!("{key} = {wrong}"))), dotted(table, key))
                }
                _ if table == "destination" && ["name", "url", "owner"].contains(&key.as_str()) => {
                    (with_line(*i, None), dotted(table, key))
                }
                _ => return Ok(()),
            };
            let e = parse(&text).expect_err(&text);
            prop_assert_eq!(key_of(e), expect);
        }
    }
}

#[test]
fn userinfo_is_redacted() {
    let c = parse(&MIN.replace("http://127.0.0.1:9/api", "http://user:pw@127.0.0.1:9/api")).unwrap();
    assert!(!c.destinations[0].redacted_url().contains("pw"));
}

#[test]
fn admin_users_are_checked_where_they_are_written() {
    std::env::set_var("TG_CFG_ROOT", "root-token-aaaa");
    std::env::set_var("TG_CFG_ANA", "ana-token-aaaa");
    std::env::set_var("TG_CFG_BO", "bo-token-aaaa");
    let with = |users: &str| parse(&format!("{MIN}[admin]\ntoken_env = \"TG_CFG_ROOT\"\n{users}"));
    let ana =
        "[[admin.user]]\nname = \"ana\"\ntoken_env = \"TG_CFG_ANA\"\nrole = \"reviewer\"\ndestinations = [\"crm\"]\n";
    let c = with(ana).unwrap();
    let u = &c.admin.users[0];
    assert_eq!((u.name.as_str(), u.role), ("ana", Role::Reviewer));
    assert_eq!(u.destinations.as_deref(), Some(&["crm".to_string()][..]));
    assert_eq!(c.admin.audit_retention, std::time::Duration::from_secs(365 * 86400));
    assert!(!format!("{c:?}").contains("ana-token-aaaa"), "a token in Debug");
    let err = |users: &str| with(users).unwrap_err().to_string();
    let cases = [
        (ana.replace("\"ana\"", "\"admin\""), "reserved"),
        (ana.replace("\"ana\"", "\"Ana Lopez\""), "must match"),
        (
            format!("{ana}{}", ana.replace("TG_CFG_ANA", "TG_CFG_BO")),
            "defined twice",
        ),
        (format!("{ana}{}", ana.replace("\"ana\"", "\"bo\"")), "same token"),
        (ana.replace("TG_CFG_ANA", "TG_CFG_ROOT"), "admin token"),
        (ana.replace("[\"crm\"]", "[\"erp\"]"), "not configured"),
        (ana.replace("reviewer", "superuser"), "unknown variant"),
        (ana.replace("TG_CFG_ANA", "TG_CFG_NOBODY_SET"), "TG_CFG_NOBODY_SET"),
    ];
    for (text, says) in cases {
        let e = err(&text);
        assert!(e.starts_with("t.toml:") && e.contains(says), "{says}: {e}");
    }
    // People guard a public admin listener as a root token does.
    let public = format!("{MIN}[admin]\nlisten = \"0.0.0.0:9090\"\n{ana}");
    assert!(parse(&public).is_ok());
}

#[test]
fn batch_settings_are_checked_where_they_are_written() {
    let c = parse(&format!(
        "{MIN}[destination.batch]\nmax_messages = 100\nmax_bytes = \"512KiB\"\nmax_wait = \"1s\"\n\
         envelope = '{{inputs: .}}'\npath = \"/v3/batch/create\"\nresults = '.results | map(.status)'\n"
    ))
    .unwrap();
    let b = c.destinations[0].batch.as_ref().expect("batch");
    assert_eq!((b.max_messages, b.max_bytes), (100, 512 << 10));
    assert_eq!(b.max_wait, std::time::Duration::from_secs(1));
    assert_eq!(b.encoding, Encoding::JsonArray);
    assert_eq!(b.path.as_deref(), Some("/v3/batch/create"));
    assert_eq!(b.envelope.as_ref().map(|p| p.source()), Some("{inputs: .}"));
    // `tidegate check` shows it.
    assert!(
        c.summary().contains(
            "  batch max_messages=100 max_bytes=512KiB max_wait=1s encoding=json_array path=/v3/batch/create envelope results\n"
        ),
        "{}",
        c.summary()
    );
    // Defaults: one message per request, no batching table, no batch.
    assert!(parse(MIN).unwrap().destinations[0].batch.is_none());
    let err = |extra: &str| parse(&format!("{MIN}{extra}")).unwrap_err().to_string();
    let e = err("[destination.batch]\nmax_messages = 0\n");
    assert!(
        e.starts_with("t.toml:8:") && e.contains("max_messages must be at least 1"),
        "{e}"
    );
    let e = err("[destination.batch]\nmax_messages = 20000\n");
    assert!(e.starts_with("t.toml:8:") && e.contains("at most 10000"), "{e}");
    let e = err("[destination.batch]\nmax_wait = \"0s\"\n");
    assert!(e.starts_with("t.toml:8:") && e.contains("max_wait"), "{e}");
    let e = err("[destination.batch]\nencoding = \"ndjson\"\nenvelope = '{a: .}'\n");
    assert!(
        e.starts_with("t.toml:9:") && e.contains("only with encoding = \"json_array\""),
        "{e}"
    );
    let e = err("[destination.batch]\nencoding = \"csv\"\n");
    assert!(e.starts_with("t.toml:8:") && e.contains("format = \"csv\""), "{e}");
    let e = err("[destination.batch]\nresults = '.results | map(.status'\n");
    assert!(
        e.starts_with("t.toml:8:") && e.contains("destination.batch.results"),
        "{e}"
    );
    let e = err("[destination.batch]\npath = \"../admin\"\n");
    assert!(e.starts_with("t.toml:8:") && e.contains("must be a path"), "{e}");
    let e = err("[destination.batch]\nmax_message = 5\n");
    assert!(e.contains("max_message"), "{e}");
    let e = err("[destination.queue]\nordering = \"fifo\"\n[destination.batch]\nmax_messages = 5\n");
    assert!(e.contains("fifo"), "{e}");
    // CSV batches need the handoff to write CSV rows.
    let c = parse(&format!(
        "{MIN}[destination.handoff]\nformat = \"csv\"\ncsv = {{ columns = [\"a\"] }}\n[destination.batch]\nencoding = \"csv\"\n"
    ))
    .unwrap();
    assert_eq!(c.destinations[0].batch.as_ref().unwrap().encoding, Encoding::Csv);
}

#[test]
fn a_zero_connection_timeout_is_refused_with_its_file_line_and_key() {
    for (table, key) in [
        ("ingress", "header_read_timeout"),
        ("ingress", "idle_timeout"),
        ("admin", "body_timeout"),
    ] {
        let line = format!("[{table}]\n{key} = \"0s\"\n");
        // MIN has an [ingress] table: the key goes into it.
        let text = match table {
            "ingress" => MIN.replacen("[ingress]\n", &line, 1),
            _ => format!("{line}{MIN}"),
        };
        let e = parse(&text).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("t.toml:2:"), "{text}");
        assert!(text.contains("longer than 0"), "{text}");
        assert_eq!(key_of(e), format!("{table}.{key}"));
    }
    // The smallest real value stands.
    let c = parse(&MIN.replacen("[ingress]\n", "[ingress]\nheader_read_timeout = \"1ms\"\n", 1)).unwrap();
    assert_eq!(
        c.ingress.connections.header_read_timeout,
        std::time::Duration::from_millis(1)
    );
}
