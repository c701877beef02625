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

/// WSS sessions 1-100000; opus complexity 0-10.
pub(super) fn performance(spec: &Spec, v: &mut Vec<Problem>) -> Option<Performance> {
    let before = v.len();
    let sessions = spec.performance.wss_sessions.unwrap_or(defaults::WSS_SESSIONS);
    let wss_sessions = match u32::try_from(sessions) {
        Ok(n) if (1..=100_000).contains(&n) => n,
        _ => {
            v.push(p("performance.wss_sessions", format!("{sessions} is outside 1-100000")).help(
                "every browser keeps one WebSocket open while registered or in a call; each costs Asterisk a thread",
            ));
            0
        }
    };
    let opus_complexity = match spec.performance.opus_complexity {
        None => None,
        Some(c) => match u8::try_from(c) {
            Ok(n) if n <= 10 => Some(n),
            _ => {
                v.push(p("performance.opus_complexity", format!("{c} is outside 0-10")).help(
                    "libopus' scale: 10 encodes best and costs most; lower values cost less CPU per transcoded call",
                ));
                None
            }
        },
    };
    (v.len() == before).then_some(Performance { wss_sessions, opus_complexity })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec_text: &str) -> (Option<Performance>, Vec<String>) {
        let spec: Spec = toml::from_str(spec_text).unwrap();
        let mut v = Vec::new();
        let perf = performance(&spec, &mut v);
        (perf, v.into_iter().map(|p| format!("{}: {}", p.path, p.message)).collect())
    }

    #[test]
    fn opus_complexity_is_libopus_scale_or_unset() {
        for (text, want) in [("", None), ("opus_complexity = 0", Some(0)), ("opus_complexity = 10", Some(10))] {
            let (perf, problems) = check(&format!("[performance]\n{text}"));
            assert!(problems.is_empty(), "{problems:?}");
            assert_eq!(perf.unwrap().opus_complexity, want, "{text}");
        }
        for bad in ["-1", "11", "300"] {
            let (perf, problems) = check(&format!("[performance]\nopus_complexity = {bad}"));
            assert!(perf.is_none());
            assert_eq!(problems, [format!("performance.opus_complexity: {bad} is outside 0-10")]);
        }
    }
}
