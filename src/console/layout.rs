//! What every page shares: the frame (head, navigation, notice, footer),
//! a state in words and colour, the CSRF field and the error page. Rendered
//! with maud, which escapes every interpolated value: names, bodies and
//! reasons come from producers and operators, and are shown, never run.

use maud::{html, Markup, DOCTYPE};

/// What every page needs besides its content.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The nav entry to mark current.
    pub section: &'a str,
    /// The CSRF value for this session's forms.
    pub csrf: &'a str,
    /// Who is signed in, when a login is in force (shown, with "sign out").
    pub signed_in: Option<&'a crate::auth::Actor>,
    /// A one-line notice at the top (what the last action did, or why not).
    pub notice: Option<(bool, String)>,
}

/// Every page's `<head>`; the sign-in page runs no script.
pub(super) fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · tidegate" }
            link rel="stylesheet" href="/ui/static/console.css";
            @if script { script src="/ui/static/console.js" defer {} }
        }
    }
}

pub fn page(f: &Frame, content: Markup) -> Markup {
    let nav = [
        ("overview", "/ui/", "Overview", "o"),
        ("map", "/ui/map", "Chain map", "m"),
        ("reviews", "/ui/reviews", "Reviews", "v"),
        ("quality", "/ui/quality", "Quality", "q"),
        ("audit", "/ui/audit", "Audit", "u"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(f.title, true))
            body data-section=(f.section) {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { "tidegate" }
                    nav aria-label="Console" {
                        ul {
                            @for (key, href, label, shortcut) in nav {
                                li {
                                    a href=(href) aria-current=[(key == f.section).then_some("page")] data-key=(shortcut) {
                                        (label)
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(who) = f.signed_in {
                        span.who #who { (who.name) " · " (who.role.as_str()) }
                        form.signout method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(f.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    @if let Some((ok, text)) = &f.notice {
                        p.notice.(if *ok { "good" } else { "bad" }) role="status" { (text) }
                    }
                    (content)
                }
                footer { "Keys: " kbd { "g o" } " overview · " kbd { "g m" } " map · " kbd { "g v" } " reviews · " kbd { "g q" } " quality · " kbd { "g u" } " audit · " kbd { "j" } "/" kbd { "k" } " next/previous item" }
            }
        }
    }
}

/// A state in words, coloured: the colour is never the only sign.
pub fn state(s: &str) -> Markup {
    let class = match s {
        "running" => "ok",
        "paused" | "degraded" => "warn",
        "halted" => "bad",
        _ => "plain",
    };
    html! { span.state.(class) { (s) } }
}

pub(super) fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

pub fn error_page(f: &Frame, status: u16, text: &str) -> Markup {
    page(
        f,
        html! {
            h1 { "Not done (" (status) ")" }
            p.notice.bad role="alert" { (text) }
            p { a href="/ui/" { "Back to the overview" } }
        },
    )
}
