//! Untrusted text on its way out of tidegate (SPEC §17). AI output, and the
//! names and notes reviewers type, reach spreadsheets, chat webhooks,
//! terminals, log files and metric labels. Each of those reads some text as
//! instructions; every place that writes untrusted text to one of them goes
//! through the function for it here, so the rule for each sink is written
//! once.

use std::borrow::Cow;

/// A CSV cell a spreadsheet will not run: a cell that begins with `=`,
/// `+`, `-`, `@`, a tab or a carriage return is a formula to Excel and its
/// kin, so it is written with a leading `'` (OWASP's advice for CSV
/// injection).
pub fn csv_cell(s: &str) -> Cow<'_, str> {
    match s.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{s}")),
        _ => Cow::Borrowed(s),
    }
}

/// Most characters of one untrusted field in an alert.
pub const ALERT_FIELD_MAX: usize = 200;

/// A field of an alert's text for a chat webhook: at most
/// [`ALERT_FIELD_MAX`] characters, with Slack's (and Mattermost's)
/// control characters `&`, `<` and `>` escaped, so `<!channel>` or a
/// `<https://…|link>` in a category is shown, never acted on.
pub fn for_webhook(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(ALERT_FIELD_MAX + 8));
    for (n, c) in s.chars().enumerate() {
        if n == ALERT_FIELD_MAX {
            out.push('…');
            break;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Text for a terminal: every control character (escape sequences, a
/// carriage return that rewrites a line, a line break inside a field) is
/// shown as `\u{…}`, so printed data cannot move the cursor, recolour or
/// forge lines.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    format!("\\u{{{:x}}}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Most characters of a category (a metric label, a column in reports).
pub const CATEGORY_MAX: usize = 128;

/// Why a category cannot be used, if it cannot: longer than
/// [`CATEGORY_MAX`] characters, empty, or holding a control character.
pub fn category_problem(s: &str) -> Option<String> {
    let n = s.chars().count();
    if n == 0 {
        return Some("the category is empty".into());
    }
    if n > CATEGORY_MAX {
        return Some(format!("the category is {n} characters long; at most {CATEGORY_MAX}"));
    }
    if s.chars().any(char::is_control) {
        return Some("the category holds a control character".into());
    }
    None
}

/// A log line with its line breaks escaped: what a text-format log writes
/// is one event per line, whatever the fields hold. The line's own final
/// newline is kept.
pub fn one_line(line: &[u8]) -> Cow<'_, [u8]> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    if !body.iter().any(|b| *b == b'\n' || *b == b'\r') {
        return Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len() + 8);
    for b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(*b),
        }
    }
    if line.ends_with(b"\n") {
        out.push(b'\n');
    }
    Cow::Owned(out)
}

/// A count as people read it in a table: `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `%XX` escapes decoded; `None` for a broken escape or what is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// As [`percent_decode`], keeping the text as it is where it does not
/// decode.
pub fn percent_decoded(s: &str) -> String {
    percent_decode(s).unwrap_or_else(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_get_a_leading_quote() {
        for bad in [
            "=HYPERLINK(\"http://x\")",
            "+cmd|' /C calc'!A0",
            "-2+3",
            "@SUM(1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(csv_cell(bad), format!("'{bad}"));
        }
        for ok in ["contract", "", "a=b", "{\"x\": 1}"] {
            assert_eq!(csv_cell(ok), ok);
        }
    }

    #[test]
    fn webhook_fields_escape_markup_and_are_capped() {
        assert_eq!(
            for_webhook("<!channel> <https://evil.example|click> & co"),
            "&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; co"
        );
        let long = "x".repeat(900);
        assert_eq!(for_webhook(&long).chars().count(), ALERT_FIELD_MAX + 1);
    }

    #[test]
    fn terminal_text_shows_control_characters_instead_of_obeying_them() {
        assert_eq!(for_terminal("plain"), "plain");
        assert_eq!(for_terminal("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        assert_eq!(for_terminal("two\nlines"), "two\\u{a}lines");
    }

    #[test]
    fn a_category_is_short_printable_text() {
        assert!(category_problem("nda").is_none());
        assert!(category_problem(&"é".repeat(128)).is_none());
        assert!(category_problem(&"x".repeat(129)).is_some());
        assert!(category_problem("a\nb").is_some());
        assert!(category_problem("").is_some());
    }

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn a_log_line_stays_one_line() {
        assert_eq!(&*one_line(b"ok\n"), b"ok\n");
        assert_eq!(&*one_line(b"category=a\nforged=1\n"), b"category=a\\nforged=1\n");
        assert_eq!(&*one_line(b"x\ry"), b"x\\ry");
    }
}
