//! Values that must never reach a log line or an API answer: [`Secret`]
//! (header values, tokens), and URLs shown with their credentials redacted.

use std::fmt;

/// A value that must never reach a log line or an API answer.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What stands for a secret wherever one would be shown.
pub const REDACTED: &str = "<redacted>";

/// A URL fit for logs, answers, pages and maps (SPEC §17): its user-info
/// and every query value shown as `<redacted>`, query names kept (an API
/// key in `?apikey=…` is as secret as a password). Written out by hand:
/// set back into a URL, `<redacted>` would be percent-encoded.
pub fn redact_url(url: &reqwest::Url) -> String {
    redact_parts(url, url.path())
}

/// As [`redact_url`], with the path itself hidden too (a webhook's URL is
/// its secret).
pub fn redact_url_path(url: &reqwest::Url) -> String {
    let mut s = redact_parts(url, "/");
    s.push_str(REDACTED);
    s
}

fn redact_parts(url: &reqwest::Url, path: &str) -> String {
    let mut s = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        s.push_str(REDACTED);
        s.push('@');
    }
    s.push_str(url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        s.push_str(&format!(":{port}"));
    }
    s.push_str(path);
    if path == url.path() {
        if let Some(q) = url.query() {
            let names: Vec<String> = q
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((name, _)) => format!("{name}={REDACTED}"),
                    None => p.to_string(),
                })
                .collect();
            s.push('?');
            s.push_str(&names.join("&"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_and_query_values_are_redacted_and_names_kept() {
        let u = reqwest::Url::parse("https://bob:pw@crm.example:8443/api/v1?apikey=s3cret&tenant=acme&flag").unwrap();
        assert_eq!(
            redact_url(&u),
            "https://<redacted>@crm.example:8443/api/v1?apikey=<redacted>&tenant=<redacted>&flag"
        );
        assert_eq!(redact_url_path(&u), "https://<redacted>@crm.example:8443/<redacted>");
        let plain = reqwest::Url::parse("http://127.0.0.1:9200/api").unwrap();
        assert_eq!(redact_url(&plain), "http://127.0.0.1:9200/api");
    }
}
