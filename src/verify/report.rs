//! The outcome of `astrtc verify`: one line per check, a remedy for each failure, the figures of
//! each call (`--call`) below its line, and the same as JSON for CI pipelines (a call check
//! carries its whole [`CallReport`] as `call`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::media::{CallReport, Leg};

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It passed.
    Pass,
    /// It failed; the deployment does not work as the spec says.
    Fail,
    /// It could not run here (e.g. no local container); not a failure.
    Skip,
}

/// One check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// Short name, e.g. `tls`, `register 199`, `module res_srtp.so`.
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What was seen.
    pub detail: String,
    /// What to do about a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// What a call measured (`call ID` checks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<Box<CallReport>>,
}

impl Check {
    /// A passed check.
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Pass, detail: detail.into(), remedy: None, call: None }
    }

    /// A failed check with its remedy.
    pub fn fail(name: impl Into<String>, detail: impl Into<String>, remedy: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            remedy: Some(remedy.into()),
            call: None,
        }
    }

    /// A check that could not run.
    pub fn skip(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Skip, detail: detail.into(), remedy: None, call: None }
    }
}

/// All checks of one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// True when no check failed.
    pub ok: bool,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// Adds a check and updates `ok`.
    pub fn push(&mut self, c: Check) {
        self.checks.push(c);
        self.ok = self.checks.iter().all(|c| c.status != Status::Fail);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let mark = match c.status {
                Status::Pass => "ok  ",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            writeln!(f, "{mark} {:<width$}  {}", c.name, c.detail)?;
            if let Some(r) = &c.remedy {
                writeln!(f, "     {:<width$}  -> {r}", "")?;
            }
            if let Some(call) = &c.call {
                for (key, value) in call_lines(call) {
                    writeln!(f, "     {:<width$}     {key:<10} {value}", "")?;
                }
            }
        }
        let failed = self.checks.iter().filter(|c| c.status == Status::Fail).count();
        let passed = self.checks.iter().filter(|c| c.status == Status::Pass).count();
        let skipped = self.checks.len() - failed - passed;
        writeln!(f, "{passed} passed, {failed} failed, {skipped} skipped")
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "never".into())
}

/// A call's figures as `key value` lines, in the order the call went. Times are from the first
/// INVITE.
pub fn call_lines(c: &CallReport) -> Vec<(&'static str, String)> {
    let mut lines = vec![("signalling", c.signalling.clone())];
    if let Some(r) = c.registered_ms {
        lines.push(("register", format!("200 OK in {r:.1} ms (digest challenge included)")));
    }
    if c.invites > 0 {
        let s = if c.invites == 1 { "" } else { "s" };
        lines
            .push(("answer", format!("200 OK {} after the first INVITE ({} INVITE{s})", ms(c.answered_ms), c.invites)));
    }
    if !c.answered_codecs.is_empty() || c.answered_ms.is_some() {
        let codec = c.codec.clone().unwrap_or_else(|| "none".into());
        lines.push((
            "codec",
            format!("{codec} (offered {}; answer {})", c.offered.join(", "), c.answered_codecs.join(", ")),
        ));
    }
    if c.leg == Leg::Webrtc && c.answered_ms.is_some() {
        let theirs = c.remote_candidates.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        lines.push(("asterisk", if theirs.is_empty() { "no ICE candidates".into() } else { theirs }));
        if let Some(r) = &c.relay {
            let mapped = r.mapped.map(|m| format!(", which sees us as {m}")).unwrap_or_default();
            let over = if r.transport.is_empty() { String::new() } else { format!(" over {}", r.transport) };
            lines.push(("relay", format!("{} allocated on TURN server {}{over}{mapped}", r.relayed, r.server)));
            if !r.refused.is_empty() {
                lines.push(("refused", format!("the TURN server may not relay to {}", r.refused.join(", "))));
            }
        }
        lines.push(("ice", format!("connected {}", ms(c.ice_connected_ms))));
        lines.push(("dtls", format!("connected {}", ms(c.dtls_connected_ms))));
        if let Some(p) = &c.pair {
            lines.push(("pair", format!("{} -> {}", p.local, p.remote)));
        }
    }
    if let Some((local, remote)) = c.rtp_path {
        lines.push(("rtp", format!("{local} -> {remote}")));
    }
    if let Some(m) = &c.media {
        lines.push(("first rtp", ms(c.first_rtp_ms)));
        lines.push(("packets", format!("sent {}, received {}, matched {}", m.sent, m.received, m.matched)));
        if let Some(r) = &m.rtt_ms {
            lines.push((
                "rtt",
                format!("p50 {:.1} ms, p99 {:.1} ms (min {:.1}, max {:.1})", r.p50, r.p99, r.min, r.max),
            ));
        }
        if m.sent > 0 && m.matched > 0 && m.sent_before_first_echo > 0 {
            lines.push((
                "loss",
                format!(
                    "{:.2} % ({:.2} % from the first echo on; {} sent before it)",
                    m.loss_percent, m.steady_loss_percent, m.sent_before_first_echo
                ),
            ));
        } else if m.sent > 0 {
            lines.push(("loss", format!("{:.2} %", m.loss_percent)));
        }
        if m.received > 1 {
            lines.push(("jitter", format!("{:.2} ms (RFC 3550, received stream)", m.jitter_ms)));
        }
    }
    if let (Some(i), Some(o)) = (c.datagrams_in, c.datagrams_out) {
        lines.push(("datagrams", format!("in {i}; out {o}")));
    }
    if let Some(h) = &c.hangup {
        lines.push(("hangup", h.clone()));
    }
    if c.failure.is_some() {
        // A failed call shows its signalling, message by message (ms from connecting).
        for (i, step) in c.ladder.iter().take(12).enumerate() {
            lines.push((if i == 0 { "sip" } else { "" }, step.clone()));
        }
    }
    lines
}
