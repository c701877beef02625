//! `[logging]`, `[resources]` and `[performance]`: what Asterisk logs, the memory it may use and
//! what limits the calls it carries.

use super::super::source::Problem;
use super::super::valid::{Logging, Performance, Resources};
use super::super::{defaults, Spec};
use super::p;

/// Verbosity 0-10.
pub(super) fn logging(spec: &Spec, v: &mut Vec<Problem>) -> Option<Logging> {
    let verbose = spec.logging.verbose.unwrap_or(defaults::VERBOSE);
    match u8::try_from(verbose) {
        Ok(verbose) if verbose <= 10 => Some(Logging { verbose }),
        _ => {
            v.push(p("logging.verbose", format!("{verbose} is outside 0-10")).help(
                "0 is production logging (notices, warnings, errors); 3 adds a line per call step and registration",
            ));
            None
        }
    }
}

/// A memory limit of 64 MiB-64 GiB and a request no larger than it.
pub(super) fn resources(spec: &Spec, v: &mut Vec<Problem>) -> Option<Resources> {
    let before = v.len();
    let mb = |key: &str, value: i64, v: &mut Vec<Problem>| match u32::try_from(value) {
        Ok(n) if (64..=65_536).contains(&n) => n,
        _ => {
            v.push(p(key, format!("{value} MiB is outside 64-65536")).help(
                "Asterisk needs about 64 MiB idle plus 36 KiB per authenticated UDP request within 32 s (README, \"Memory\")",
            ));
            0
        }
    };
    let limit = mb("resources.memory_limit_mb", spec.resources.memory_limit_mb.unwrap_or(defaults::MEMORY_LIMIT_MB), v);
    let request =
        mb("resources.memory_request_mb", spec.resources.memory_request_mb.unwrap_or(defaults::MEMORY_REQUEST_MB), v);
    if v.len() == before && request > limit {
        v.push(p("resources.memory_request_mb", format!("{request} MiB is above the limit of {limit} MiB")));
    }
    (v.len() == before).then_some(Resources { memory_limit_mb: limit, memory_request_mb: request })
}

/// WSS sessions 1-100000.
pub(super) fn performance(spec: &Spec, v: &mut Vec<Problem>) -> Option<Performance> {
    let sessions = spec.performance.wss_sessions.unwrap_or(defaults::WSS_SESSIONS);
    match u32::try_from(sessions) {
        Ok(n) if (1..=100_000).contains(&n) => Some(Performance { wss_sessions: n }),
        _ => {
            v.push(p("performance.wss_sessions", format!("{sessions} is outside 1-100000")).help(
                "every browser keeps one WebSocket open while registered or in a call; each costs Asterisk a thread",
            ));
            None
        }
    }
}
