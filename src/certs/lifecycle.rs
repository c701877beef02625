//! The certificate's life in ACME mode: issue when missing or due, and the sidecar's watch loop
//! (sleep until due, renew, and on failure back off exponentially, within bounds, while the
//! current certificate stays in place and keeps being served).
//!
//! Owns: *when* to issue. Issuance is [`super::acme`]; the files are [`super::store`]; telling
//! Asterisk is the reloader inside the Asterisk container, which watches the files (so this
//! loop needs no power over Asterisk at all).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::acme::{self, AcmeError, AcmeRequest, ChallengeMethod, Progress};
use super::store::{self, Due, RenewPolicy};
use crate::plan::{Acme, SecretAccess};
use crate::spec::AcmeChallenge;

/// How long the CA gets to validate and issue.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(180);

/// One keys directory kept by ACME.
#[derive(Debug, Clone)]
pub struct Job {
    /// What to ask for and how.
    pub acme: Acme,
    /// The keys directory.
    pub keys: PathBuf,
    /// Who may read the key files.
    pub access: SecretAccess,
    /// Told about each step of an issuance.
    pub progress: Progress,
}

/// What [`Job::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The current certificate is fine.
    NotDue {
        /// Days left.
        days_left: i64,
        /// Seconds until it becomes due.
        due_in_seconds: i64,
    },
    /// A new certificate was written.
    Issued {
        /// What made it necessary: missing, other names, key mismatch, due, or forced.
        reason: Due,
        /// Its serial (hex).
        serial: String,
        /// Days it is valid for.
        days: i64,
        /// Orders placed.
        attempts: u32,
        /// How long it took.
        elapsed: Duration,
        /// Seconds until it becomes due.
        due_in_seconds: i64,
    },
}

/// Why a certificate could not be obtained or stored.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum LifecycleError {
    /// Issuance failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Acme(#[from] AcmeError),
    /// The CA's answer is not a usable certificate; nothing was written.
    #[error("the ACME server at {directory} sent something that is not a certificate: {reason}")]
    #[diagnostic(help("the current certificate stays in place; this is a fault of the ACME server"))]
    BadCertificate {
        /// The ACME directory.
        directory: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The files could not be written.
    #[error("failed to write the certificate into {}", path.display())]
    Write {
        /// The keys directory.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

impl Job {
    /// When to renew.
    pub fn policy(&self) -> RenewPolicy {
        self.acme.renew_before_days.map_or(RenewPolicy::ThirdOfLifetime, RenewPolicy::DaysLeft)
    }

    /// The state of the keys directory.
    pub fn due(&self) -> Due {
        store::due(&self.keys, &self.acme.names, self.policy())
    }

    /// The ACME request for this job.
    pub fn request(&self) -> AcmeRequest {
        let a = &self.acme;
        AcmeRequest {
            account_file: acme::account_file(&a.account_dir, &a.directory),
            directory: a.directory.clone(),
            email: Some(a.email.clone()),
            server_roots: a.ca_bundle.clone(),
            names: a.names.clone(),
            method: match a.challenge {
                AcmeChallenge::Http01 => {
                    ChallengeMethod::Http01 { listen: std::net::SocketAddr::from(([0, 0, 0, 0], a.http_port)) }
                }
                AcmeChallenge::Dns01 => ChallengeMethod::Dns01 {
                    hook: a.dns_hook.clone(),
                    resolvers: a.dns_resolvers.clone(),
                    wait: Duration::from_secs(a.dns_timeout),
                },
            },
            timeout: ORDER_TIMEOUT,
            progress: self.progress.clone(),
        }
    }

    /// Issues a certificate when there is none, it is for other names, its key does not match,
    /// or it is due (always with `force`); otherwise does nothing. On failure the files in place
    /// are untouched.
    pub async fn ensure(&self, force: bool) -> Result<Outcome, LifecycleError> {
        // A writer killed mid-switch (this loop before a restart) may have left garbage; the
        // next switch removes it too, but that can be months away. Best effort: a directory
        // this process cannot write is reported by the switch, when there is one.
        let _ = store::tidy(&self.keys, self.access);
        let reason = match self.due() {
            Due::NotDue { days_left, due_in_seconds } if !force => {
                return Ok(Outcome::NotDue { days_left, due_in_seconds })
            }
            other => other,
        };
        let start = Instant::now();
        let issued = acme::issue(&self.request()).await?;
        let facts = super::cert_facts(&issued.cert.chain_pem)
            .map_err(|reason| LifecycleError::BadCertificate { directory: self.acme.directory.clone(), reason })?;
        store::write(&self.keys, &issued.cert, self.access)
            .map_err(|source| LifecycleError::Write { path: self.keys.clone(), source })?;
        let mut due_in_seconds = facts.seconds_left - self.policy().renew_before_seconds(facts.lifetime_seconds);
        if due_in_seconds <= 0 {
            // renew_before_days is longer than this CA's certificates live: renewing at once
            // would loop; fall back to a third of the lifetime.
            due_in_seconds =
                facts.seconds_left - RenewPolicy::ThirdOfLifetime.renew_before_seconds(facts.lifetime_seconds);
        }
        Ok(Outcome::Issued {
            reason,
            serial: facts.serial,
            days: facts.lifetime_seconds / 86400,
            attempts: issued.attempts,
            elapsed: start.elapsed(),
            due_in_seconds,
        })
    }
}

/// Timing of the watch loop.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// First wait after a failure; doubled after each further failure.
    pub retry_initial: Duration,
    /// Longest wait after a failure.
    pub retry_max: Duration,
    /// Longest sleep between checks while not due (the files are looked at again after it, so
    /// a deleted or replaced certificate is noticed).
    pub recheck_max: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            recheck_max: Duration::from_secs(12 * 3600),
        }
    }
}

/// What the watch loop reports.
#[derive(Debug)]
pub enum WatchEvent<'a> {
    /// A pass ended; sleeping until the next.
    Pass {
        /// What the pass did.
        outcome: &'a Outcome,
        /// Until the next pass.
        next_in: Duration,
    },
    /// A pass failed; the current certificate (if any) stays.
    Failed {
        /// The failure, with its sources.
        error: &'a LifecycleError,
        /// Failures in a row.
        failures: u32,
        /// Until the retry.
        retry_in: Duration,
        /// The certificate in place meanwhile.
        current: Due,
    },
}

/// The delay before retry number `failures` (1-based): `initial · 2^(failures-1)`, at most `max`.
pub fn backoff(opts: &WatchOptions, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1).min(30)).unwrap_or(u32::MAX);
    opts.retry_initial.saturating_mul(factor).min(opts.retry_max)
}

/// Runs forever: [`Job::ensure`], then sleep until due (at most `recheck_max`), or after a
/// failure until the backoff delay has passed.
pub async fn watch(job: &Job, opts: &WatchOptions, on: impl Fn(WatchEvent<'_>)) {
    let mut failures = 0u32;
    loop {
        let pause = match job.ensure(false).await {
            Ok(outcome) => {
                failures = 0;
                let due_in = match &outcome {
                    Outcome::NotDue { due_in_seconds, .. } | Outcome::Issued { due_in_seconds, .. } => *due_in_seconds,
                };
                let next_in = Duration::from_secs(u64::try_from(due_in.max(1)).unwrap_or(1)).min(opts.recheck_max);
                on(WatchEvent::Pass { outcome: &outcome, next_in });
                next_in
            }
            Err(error) => {
                failures += 1;
                let retry_in = backoff(opts, failures);
                on(WatchEvent::Failed { error: &error, failures, retry_in, current: job.due() });
                retry_in
            }
        };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let opts = WatchOptions {
            retry_initial: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            ..WatchOptions::default()
        };
        let delays: Vec<u64> = (1..=10).map(|n| backoff(&opts, n).as_secs()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(backoff(&opts, u32::MAX), Duration::from_secs(3600));
    }
}
