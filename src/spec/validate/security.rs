//! `[security]`: the guard's ban settings and the networks it never bans.

use super::super::source::{KeyPath, Problem};
use super::super::valid::Security;
use super::super::{defaults, Spec};
use super::{p, parse_cidr};

/// Longest ban and window astrtc accepts: a week. fail2ban keeps longer ones, but its database
/// is purged of older entries (`dbpurgeage`, rendered from `ban_seconds`), and a longer ban is
/// better written as a firewall rule.
pub const MAX_SECONDS: i64 = 7 * 24 * 3600;
/// Most failures `ban_after` may allow before a ban.
pub const MAX_BAN_AFTER: i64 = 1000;

/// The ban settings with their defaults.
pub(super) fn security(spec: &Spec, v: &mut Vec<Problem>) -> Option<Security> {
    let s = &spec.security;
    let before = v.len();
    let mut bounded = |key: &str, value: i64, max: i64| match u32::try_from(value) {
        Ok(n) if n >= 1 && i64::from(n) <= max => n,
        _ => {
            v.push(p(key, format!("{value} is outside 1-{max}")));
            0
        }
    };
    let ban_after = bounded("security.ban_after", s.ban_after.unwrap_or(defaults::BAN_AFTER), MAX_BAN_AFTER);
    let find_seconds = bounded("security.find_seconds", s.find_seconds.unwrap_or(defaults::FIND_SECONDS), MAX_SECONDS);
    let ban_seconds = bounded("security.ban_seconds", s.ban_seconds.unwrap_or(defaults::BAN_SECONDS), MAX_SECONDS);
    let allow: Vec<String> = s
        .allow
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, n)| match parse_cidr(n) {
            Ok((_, 0)) => {
                v.push(
                    Problem::at(KeyPath::parse("security.allow").index(i), format!("{n:?} allows every address"))
                        .help("to run without bans, set security.guard = false"),
                );
                None
            }
            // Normalised to "address/prefix", as fail2ban's ignoreip takes it.
            Ok((addr, prefix)) => Some(format!("{addr}/{prefix}")),
            Err(e) => {
                v.push(
                    Problem::at(KeyPath::parse("security.allow").index(i), e)
                        .help("networks never banned, e.g. \"192.0.2.0/24\" (a single address is \"192.0.2.7/32\")"),
                );
                None
            }
        })
        .collect();
    (v.len() == before).then_some(Security { guard: spec.guard_enabled(), ban_after, find_seconds, ban_seconds, allow })
}
