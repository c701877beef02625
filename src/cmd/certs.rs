//! `astrtc certs issue|renew|check|watch`: the ACME certificate of a keys directory.

use std::time::Duration;

use astrtc::certs::lifecycle::{self, Job, Outcome, WatchEvent, WatchOptions};
use astrtc::certs::store::Due;
use astrtc::cli::{CertsCommand, CertsInput};
use astrtc::plan::{Acme, HostFacts, SecretAccess};

use super::{load_plan, CmdError};
use crate::ui;

/// The ACME job `certs` works on: settings from the spec or from a rendered sidecar config; the
/// keys directory from `--keys`, else beside them (`deploy/keys`).
fn job(input: &CertsInput) -> Result<Job, CmdError> {
    let (acme, default_keys) = match &input.acme_config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| CmdError::ReadFile { path: path.clone(), source })?;
            let acme = toml::from_str::<Acme>(&text)
                .map_err(|e| CmdError::AcmeConfig { path: path.clone(), message: e.message().to_string() })?;
            // DIR/certs/acme.toml → DIR/keys
            let deploy = astrtc::fsx::parent_of(&astrtc::fsx::parent_of(path));
            (acme, deploy.join("keys"))
        }
        None => {
            let acme = load_plan(&input.spec)?
                .tls
                .acme
                .ok_or_else(|| CmdError::NotAcme { spec: input.spec.display().to_string() })?;
            (acme, astrtc::deploy::default_out(&input.spec).join("keys"))
        }
    };
    Ok(Job {
        acme,
        keys: input.keys.clone().unwrap_or(default_keys),
        access: SecretAccess::for_host(HostFacts::detect()),
        progress: ui::acme_progress(),
    })
}

/// Runs a `certs` subcommand.
pub async fn run(command: CertsCommand) -> Result<(), CmdError> {
    match command {
        CertsCommand::Issue { input, force } => {
            let job = job(&input)?;
            let outcome = job.ensure(force).await?;
            println!("{}", ui::certs_outcome(&job, &outcome));
            if let Outcome::NotDue { .. } = outcome {
                println!("(renews when due; --force to issue anyway)");
            }
            Ok(())
        }
        CertsCommand::Renew { input } => {
            let job = job(&input)?;
            let outcome = job.ensure(false).await?;
            println!("{}", ui::certs_outcome(&job, &outcome));
            Ok(())
        }
        CertsCommand::Check { input } => check(&job(&input)?),
        CertsCommand::Watch { input, retry_initial, retry_max } => {
            let job = job(&input)?;
            let opts = WatchOptions {
                retry_initial: Duration::from_secs(retry_initial),
                retry_max: Duration::from_secs(retry_max.max(retry_initial)),
                ..WatchOptions::default()
            };
            watch(&job, &opts).await;
            Ok(())
        }
    }
}

/// Exit 0 when the keys directory holds a usable certificate, else a [`CmdError::CertUnusable`].
fn check(job: &Job) -> Result<(), CmdError> {
    match job.due() {
        Due::NotDue { days_left, .. } | Due::Renew { days_left } if days_left >= 0 => {
            println!("{}: usable, {days_left} days left", job.keys.display());
            Ok(())
        }
        state => Err(CmdError::CertUnusable {
            keys: job.keys.clone(),
            names: job.acme.names.join(", "),
            state: match state {
                Due::Missing => "missing".into(),
                Due::NamesChanged => "it is for other names".into(),
                Due::KeyMismatch => "the key does not match the certificate".into(),
                _ => "expired".into(),
            },
        }),
    }
}

/// The sidecar's loop, until SIGTERM or SIGINT.
async fn watch(job: &Job, opts: &WatchOptions) {
    eprintln!(
        "astrtc certs watch: keeping {} valid for {} ({})",
        job.keys.display(),
        job.acme.names.join(", "),
        job.acme.directory
    );
    let on_event = |event: WatchEvent<'_>| match event {
        WatchEvent::Pass { outcome, next_in } => {
            println!("{}", ui::certs_outcome(job, outcome));
            println!("next check in {}", ui::human_duration(next_in));
        }
        WatchEvent::Failed { error, failures, retry_in, current } => {
            eprintln!("error: {}", ui::error_chain(error));
            let keeping = match current {
                Due::NotDue { days_left, .. } | Due::Renew { days_left } if days_left >= 0 => {
                    format!("the current certificate stays in place ({days_left} days left)")
                }
                _ => "there is no usable certificate yet".into(),
            };
            eprintln!("failure {failures} in a row; {keeping}; retrying in {}", ui::human_duration(retry_in));
        }
    };
    tokio::select! {
        _ = lifecycle::watch(job, opts, on_event) => {}
        _ = shutdown_signal() => eprintln!("astrtc certs watch: stopping"),
    }
}

/// SIGTERM (docker stop, Kubernetes) or SIGINT; if no handler can be installed, only SIGINT.
async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
