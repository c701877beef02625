//! The outcome of `astrtc verify`: one line per check, a remedy for each failure, and the same
//! as JSON for CI pipelines.

use std::fmt;

use serde::Serialize;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short name, e.g. `tls`, `register 199`, `module res_srtp.so`.
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What was seen.
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

impl Check {
    /// A passed check.
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Pass, detail: detail.into(), remedy: None }
    }

    /// A failed check with its remedy.
    pub fn fail(name: impl Into<String>, detail: impl Into<String>, remedy: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Fail, detail: detail.into(), remedy: Some(remedy.into()) }
    }

    /// A check that could not run.
    pub fn skip(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Skip, detail: detail.into(), remedy: None }
    }
}

/// All checks of one run.
#[derive(Debug, Clone, Default, Serialize)]
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
        }
        let failed = self.checks.iter().filter(|c| c.status == Status::Fail).count();
        let passed = self.checks.iter().filter(|c| c.status == Status::Pass).count();
        let skipped = self.checks.len() - failed - passed;
        writeln!(f, "{passed} passed, {failed} failed, {skipped} skipped")
    }
}
