//! Who holds a token: `[[ingress.producer]]` (who may send) and
//! `[[admin.user]]` (who may read, decide and operate, SPEC §18). Both are
//! a name, a token from the environment and an optional list of
//! destinations, validated alike here: names like destinations', unique;
//! tokens set and distinct (a token must say who made a request); listed
//! destinations configured.

use serde::Deserialize;
use toml::Spanned;

use super::destination::{valid_name, Destination};
use super::locate::secret_from_env;
use super::{ConfigError, Locator, Secret};

/// The actor of what the root admin token (`admin.token_env`) does.
pub const ROOT: &str = "admin";
/// The actor (and producer) of a request on a listener that asks for no token.
pub const ANONYMOUS: &str = "anonymous";

/// What a person may do on the admin API, in increasing order: each role
/// may do everything the one before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything an operator reads.
    Viewer,
    /// Also decides reviews and sends feedback, on its destinations.
    Reviewer,
    /// Also pauses, resumes, replays, purges and reloads.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Reviewer => "reviewer",
            Role::Operator => "operator",
        }
    }
}

/// A person with their own admin token (`[[admin.user]]`).
#[derive(Clone, Debug)]
pub struct User {
    /// Recorded as the reviewer of their decisions and the actor of their acts.
    pub name: String,
    pub token: Secret,
    pub role: Role,
    /// The destinations they may act on; `None`: all.
    pub destinations: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: Spanned<String>,
    pub(super) token_env: Spanned<String>,
    pub(super) role: Role,
    pub(super) destinations: Option<Vec<Spanned<String>>>,
}

/// One token holder as written.
pub(super) struct RawHolder<'a> {
    pub(super) name: &'a Spanned<String>,
    pub(super) token_env: &'a Spanned<String>,
    pub(super) destinations: &'a Option<Vec<Spanned<String>>>,
}

/// One token holder, validated.
pub(super) struct Holder {
    pub(super) name: String,
    pub(super) token: Secret,
    pub(super) destinations: Option<Vec<String>>,
}

/// Validates the holders of one kind (`producer`, `user`); `reserved` are
/// names and tokens they may not take (the root's).
pub(super) fn holders<'a>(
    kind: &str,
    raw: impl IntoIterator<Item = RawHolder<'a>>,
    reserved: (&[&str], Option<&Secret>),
    destinations: &[Destination],
    loc: &Locator,
) -> Result<Vec<Holder>, ConfigError> {
    let mut out: Vec<Holder> = Vec::new();
    for p in raw {
        let name = p.name.get_ref().clone();
        if !valid_name(&name) {
            return Err(loc.error(
                p.name.span(),
                format!("{kind} name {name:?} must match [a-z0-9][a-z0-9_-]{{0,62}}"),
            ));
        }
        if reserved.0.contains(&name.as_str()) {
            return Err(loc.error(p.name.span(), format!("{kind} name {name:?} is reserved")));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(loc.error(p.name.span(), format!("{kind} {name:?} is defined twice")));
        }
        let token = secret_from_env(&Some(p.token_env.clone()), loc)?
            .ok_or_else(|| loc.error(p.token_env.span(), "token_env is required".to_string()))?;
        if let Some(other) = out.iter().find(|o| o.token == token) {
            return Err(loc.error(
                p.token_env.span(),
                format!(
                    "{kind}s {:?} and {name:?} have the same token: each needs its own",
                    other.name
                ),
            ));
        }
        if reserved.1 == Some(&token) {
            return Err(loc.error(
                p.token_env.span(),
                format!("{kind} {name:?} has the admin token (admin.token_env): each person needs their own"),
            ));
        }
        let dests = match p.destinations {
            None => None,
            Some(list) => {
                let mut names = Vec::new();
                for d in list {
                    if !destinations.iter().any(|x| x.name == *d.get_ref()) {
                        return Err(loc.error(
                            d.span(),
                            format!(
                                "{kind} {name:?} names destination {:?}, which is not configured",
                                d.get_ref()
                            ),
                        ));
                    }
                    names.push(d.get_ref().clone());
                }
                Some(names)
            }
        };
        out.push(Holder {
            name,
            token,
            destinations: dests,
        });
    }
    Ok(out)
}

/// Validates `[[admin.user]]`. `admin` (the root operator's name) and
/// `anonymous` are reserved, and no one shares the root's token.
pub(super) fn users(
    raw: &[RawUser],
    root: Option<&Secret>,
    destinations: &[Destination],
    loc: &Locator,
) -> Result<Vec<User>, ConfigError> {
    let held = holders(
        "user",
        raw.iter().map(|u| RawHolder {
            name: &u.name,
            token_env: &u.token_env,
            destinations: &u.destinations,
        }),
        (&[ROOT, ANONYMOUS], root),
        destinations,
        loc,
    )?;
    Ok(held
        .into_iter()
        .zip(raw)
        .map(|(h, r)| User {
            name: h.name,
            token: h.token,
            role: r.role,
            destinations: h.destinations,
        })
        .collect())
}
