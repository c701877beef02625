//! Runs a parsed command: the glue between the CLI and the library's steps
//! (spec → plan → bundle → disk). Owns exit codes: 0 success, 1 failure at run time, 2 bad input.

use std::path::Path;

use thiserror::Error;

use crate::certs::local_ca::LocalCa;
use crate::certs::CertError;
use crate::cli::Command;
use crate::image::{self, BuildContext, ImageError};
use crate::init::{self, InitError};
use crate::plan::{self, HostFacts, Plan};
use crate::render::{self, CheckReport, RenderError};
use crate::spec::{self, SpecError, TlsMode};
use crate::verify;

/// Any failure of a command.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum RunError {
    /// Bad spec or secrets.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Spec(#[from] SpecError),
    /// `init` failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Init(#[from] InitError),
    /// Rendering or writing failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Render(#[from] RenderError),
    /// Certificates failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Cert(#[from] CertError),
    /// Building the image failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Image(#[from] ImageError),
    /// ACME issuance or storing its result failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Certs(#[from] crate::certs::lifecycle::LifecycleError),
    /// The sidecar's ACME settings file is unreadable or malformed.
    #[error("{}: {message}", path.display())]
    #[diagnostic(
        code(astrtc::certs::acme_config),
        help("it is written by `astrtc render` in ACME mode; render again")
    )]
    AcmeConfig {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `certs check`: no usable certificate.
    #[error("{}: no usable certificate for {names}: {state}", keys.display())]
    #[diagnostic(code(astrtc::certs::unusable))]
    CertUnusable {
        /// The keys directory.
        keys: std::path::PathBuf,
        /// The names.
        names: String,
        /// What is wrong.
        state: String,
    },
    /// `certs` needs an ACME-mode spec.
    #[error("{spec} is not in ACME mode (tls.mode = \"acme\")")]
    #[diagnostic(code(astrtc::certs::not_acme), help("in self-signed mode `astrtc render` makes the certificate"))]
    NotAcme {
        /// The spec path.
        spec: String,
    },
    /// `verify` found failures.
    #[error("{failed} check{s} failed", s = if *failed == 1 { "" } else { "s" })]
    #[diagnostic(code(astrtc::verify::failed), help("each failure above says what to do"))]
    VerifyFailed {
        /// Number of failed checks.
        failed: usize,
    },
    /// A file could not be read.
    #[error("failed to read {}", path.display())]
    ReadFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `render --check` found differences.
    #[error("{out} is out of date with {spec}: {count} difference{s}", s = if *count == 1 { "" } else { "s" })]
    #[diagnostic(code(astrtc::render::out_of_date), help("run `astrtc render` to update it"))]
    OutOfDate {
        /// Spec path.
        spec: String,
        /// Output path.
        out: String,
        /// Number of differences.
        count: usize,
    },
}

impl RunError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Spec(_) => 2,
            RunError::Init(e) if e.is_bad_input() => 2,
            RunError::NotAcme { .. } | RunError::AcmeConfig { .. } => 2,
            _ => 1,
        }
    }
}

/// Runs one command, printing progress to stderr and results to stdout.
pub fn run(command: Command) -> Result<(), RunError> {
    match command {
        Command::Init {
            dir,
            domain,
            force,
            tls,
            acme_email,
            acme_directory,
            acme_ca,
            challenge,
            http_port,
            dns_hook,
        } => {
            let acme = match tls {
                crate::cli::InitTls::SelfSigned => None,
                crate::cli::InitTls::Acme => Some(init::InitAcme {
                    email: acme_email.ok_or_else(|| InitError::Flags {
                        reason: "--tls acme needs --acme-email (the CA sends expiry notices there)".into(),
                    })?,
                    directory: acme_directory,
                    ca: acme_ca.map(|p| std::path::absolute(&p).unwrap_or(p)),
                    challenge: match challenge {
                        crate::cli::InitChallenge::Http01 => "http-01",
                        crate::cli::InitChallenge::Dns01 => "dns-01",
                    },
                    http_port,
                    dns_hook: dns_hook.map(|p| std::path::absolute(&p).unwrap_or(p)),
                }),
            };
            let w = init::init(&dir, &domain, force, acme.as_ref())?;
            println!("wrote {} and {} (mode 0600)", w.spec.display(), w.secrets.display());
            println!("endpoints: {} (passwords in {})", w.endpoints.join(", "), w.secrets.display());
            println!("next: astrtc render --spec {} --out {}", w.spec.display(), dir.join("deploy").display());
            Ok(())
        }
        Command::Render { spec, out, check } => {
            let plan = load_plan(&spec)?;
            if check {
                let report = check_output(&plan, &out)?;
                if report.is_up_to_date() {
                    println!("{} is up to date", out.display());
                    Ok(())
                } else {
                    print!("{report}");
                    Err(RunError::OutOfDate {
                        spec: spec.display().to_string(),
                        out: out.display().to_string(),
                        count: report.changes.len(),
                    })
                }
            } else {
                match write_output(&plan, &out)? {
                    Written::Unchanged => println!("{} is up to date with {}", out.display(), spec.display()),
                    Written::Changed => {
                        println!("rendered {} from {}", out.display(), spec.display());
                        println!(
                            "start it, or apply the change to a running stack (Asterisk reads its configs at start):\n  \
                             cd {} && docker compose up -d --force-recreate --wait",
                            out.display()
                        );
                    }
                }
                Ok(())
            }
        }
        Command::Build { spec, context, extra_ca, verbose } => {
            let plan = load_plan(&spec)?;
            let ctx = context.map(BuildContext::Dir).unwrap_or(BuildContext::Embedded);
            let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
            let (built, sidecar) = runtime.block_on(async {
                let docker = image::connect().await?;
                let built = image::build(&docker, &ctx, extra_ca.as_deref(), &plan.image, verbose).await?;
                let sidecar = match plan.tls.mode {
                    TlsMode::Acme => {
                        let exe = std::env::current_exe()
                            .map_err(|source| ImageError::Context { path: "astrtc".into(), source })?;
                        Some(image::build_sidecar(&docker, &exe, plan::image::SIDECAR_IMAGE, verbose).await?)
                    }
                    TlsMode::SelfSigned => None,
                };
                Ok::<_, ImageError>((built, sidecar))
            })?;
            println!("built {} in {:.0?}", built.tag, built.elapsed);
            if let Some(s) = sidecar {
                println!("built {} (the ACME sidecar) in {:.0?}", s.tag, s.elapsed);
            }
            Ok(())
        }
        Command::Info { spec, out } => {
            let plan = load_plan(&spec)?;
            let loaded = spec::load(&spec)?;
            print!("{}", info_text(&plan, &spec, &plan::secrets_path(&loaded), &out));
            Ok(())
        }
        Command::Verify { spec, out, host, ca, container, json } => {
            let plan = load_plan(&spec)?;
            let ca_path = ca.unwrap_or_else(|| {
                let local = out.join("keys").join(crate::certs::files::CA);
                if local.exists() {
                    local
                } else {
                    system_trust_store()
                }
            });
            let ca_pem = std::fs::read_to_string(&ca_path)
                .map_err(|source| RunError::ReadFile { path: ca_path.clone(), source })?;
            let target = verify::Target {
                host: host.unwrap_or_else(|| plan.tls.domain.clone()),
                ca_pem,
                ca_file: ca_path.display().to_string(),
                container,
            };
            let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
            let report = runtime.block_on(verify::verify(&plan, &target));
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
            } else {
                print!("{report}");
            }
            let failed = report.checks.iter().filter(|c| c.status == verify::Status::Fail).count();
            if failed == 0 {
                Ok(())
            } else {
                Err(RunError::VerifyFailed { failed })
            }
        }
        Command::Certs { command } => certs(command),
        Command::Secrets { spec } => {
            let loaded = spec::load(&spec)?;
            let path = plan::secrets_path(&loaded);
            let existing = if path.exists() { Some(spec::secrets::load(&path)?.secrets) } else { None };
            let ids: Vec<String> = loaded.spec.endpoints.iter().map(|e| e.id.clone()).collect();
            let added = init::fill_secrets(&path, existing, &ids)?;
            if added.is_empty() {
                println!("every endpoint already has a password in {}", path.display());
            } else {
                println!("generated passwords for {} in {}", added.join(", "), path.display());
            }
            Ok(())
        }
    }
}

/// Loads and validates a spec and its secrets into a plan.
pub fn load_plan(spec_path: &Path) -> Result<Plan, RunError> {
    let loaded = spec::load(spec_path)?;
    let secrets = plan::load_secrets(&loaded)?;
    if let Some(mode) = secrets_mode_too_open(&secrets.source.path) {
        eprintln!(
            "warning: {} is readable by others (mode {mode:o}); run `chmod 600 {}`",
            secrets.source.path.display(),
            secrets.source.path.display()
        );
    }
    Ok(plan::build(&loaded, &secrets, HostFacts::detect())?)
}

/// The file's mode when group or others may read or write it.
fn secrets_mode_too_open(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Renders a plan into `out` atomically, creating the local CA on first use.
///
/// When `out` already holds exactly this output, nothing is written: a running container keeps
/// its mounts (the output directory is swapped as a whole, so a container started before a
/// write sees the old directory until it is recreated).
pub fn write_output(plan: &Plan, out: &Path) -> Result<Written, RunError> {
    let certs = match plan.tls.mode {
        TlsMode::SelfSigned => {
            let ca = LocalCa::load_or_create(&plan.tls.ca_dir, &plan.tls.domain)?;
            Some(ca.leaf(&plan.tls.names, render::existing_certs(out).as_ref())?)
        }
        // `astrtc certs issue` writes them; a render carries them over.
        TlsMode::Acme => render::existing_certs(out),
    };
    let bundle = render::render(plan, certs.as_ref())?;
    if out.exists() && bundle.check(out)?.is_up_to_date() {
        return Ok(Written::Unchanged);
    }
    bundle.write_atomic(out, plan.secret_access)?;
    Ok(Written::Changed)
}

/// What [`write_output`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The output was already up to date; nothing was touched.
    Unchanged,
    /// The output directory was replaced.
    Changed,
}

/// Compares what `write_output` would write with `out`, writing nothing.
pub fn check_output(plan: &Plan, out: &Path) -> Result<CheckReport, RunError> {
    let certs = match plan.tls.mode {
        TlsMode::SelfSigned => {
            let ca =
                LocalCa::load(&plan.tls.ca_dir)?.ok_or_else(|| CertError::NoCa { dir: plan.tls.ca_dir.clone() })?;
            Some(ca.leaf(&plan.tls.names, render::existing_certs(out).as_ref())?)
        }
        TlsMode::Acme => render::existing_certs(out),
    };
    Ok(render::render(plan, certs.as_ref())?.check(out)?)
}

/// The summary `astrtc info` (and `make up`) prints. Never includes a password.
pub fn info_text(plan: &Plan, spec: &Path, secrets: &Path, out: &Path) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "WSS URL:    wss://{}:{}/ws", plan.tls.domain, plan.network.wss_port);
    let _ = writeln!(t, "SIP (UDP):  {}:{}", plan.tls.domain, plan.network.sip_port);
    let _ = writeln!(
        t,
        "phone:      https://{}:{}/static/phone/index.html (demo softphone, served by Asterisk)",
        plan.tls.domain, plan.network.wss_port
    );
    let _ = writeln!(t, "endpoints:");
    for e in &plan.endpoints {
        let how = match e.kind {
            spec::EndpointKind::Webrtc => "browser, WSS",
            spec::EndpointKind::Sip => "SIP phone, UDP",
        };
        let _ = writeln!(t, "  {:<12} {how}", e.id);
    }
    let _ = writeln!(t, "  {:<12} echo test (call it to hear yourself)", plan.dialplan.echo_extension);
    let _ = writeln!(t, "passwords:  {}", secrets.display());
    if plan.tls.mode == TlsMode::SelfSigned {
        let _ = writeln!(
            t,
            "browser CA: {} (import it as a trusted authority; see README, \"Trusting the local CA\")",
            out.join("keys").join(crate::certs::files::CA).display()
        );
    }
    if let Some(a) = &plan.tls.acme {
        let challenge = match a.challenge {
            crate::spec::AcmeChallenge::Http01 => format!("HTTP-01 on port {}", a.http_port),
            crate::spec::AcmeChallenge::Dns01 if a.dns_hook.is_some() => "DNS-01 through the hook".to_string(),
            crate::spec::AcmeChallenge::Dns01 => "DNS-01 by hand (the record is printed in the certs log)".to_string(),
        };
        let _ = writeln!(t, "certificate: ACME from {} ({challenge}), kept valid by the `certs` service", a.directory);
        let _ = writeln!(
            t,
            "             images: astrtc build --spec {}; progress: docker compose logs certs",
            spec.display()
        );
    }
    let _ = writeln!(t, "logs:       cd {} && docker compose logs -f", out.display());
    let _ = writeln!(t, "check:      astrtc verify --spec {} --out {}", spec.display(), out.display());
    t
}

/// The system's CA bundle: `SSL_CERT_FILE` when set, else Debian's bundle.
fn system_trust_store() -> std::path::PathBuf {
    std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .filter(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from("/etc/ssl/certs/ca-certificates.crt"))
}

/// The ACME job `certs` works on: from the spec, or from a rendered sidecar config.
fn certs_job(input: &crate::cli::CertsInput) -> Result<crate::certs::lifecycle::Job, RunError> {
    let acme = match &input.acme_config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| RunError::ReadFile { path: path.clone(), source })?;
            toml::from_str::<crate::plan::AcmePlan>(&text)
                .map_err(|e| RunError::AcmeConfig { path: path.clone(), message: e.message().to_string() })?
        }
        None => load_plan(&input.spec)?
            .tls
            .acme
            .ok_or_else(|| RunError::NotAcme { spec: input.spec.display().to_string() })?,
    };
    Ok(crate::certs::lifecycle::Job {
        acme,
        keys: input.keys.clone(),
        access: crate::plan::SecretAccess::for_host(HostFacts::detect()),
        progress: progress_printer(),
    })
}

/// Shows issuance steps on stderr: a spinner while waiting when stderr is a terminal, plain
/// lines otherwise (sidecar logs).
fn progress_printer() -> crate::certs::acme::Progress {
    use crate::certs::acme::Event;
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let spinner: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);
    crate::certs::acme::Progress::new(move |event| {
        let mut spinner = spinner.lock().expect("not poisoned");
        let wait = |msg: String| {
            if tty {
                let pb = indicatif::ProgressBar::new_spinner().with_message(msg);
                pb.enable_steady_tick(std::time::Duration::from_millis(120));
                Some(pb)
            } else {
                eprintln!("{msg}");
                None
            }
        };
        let done = |spinner: &mut Option<indicatif::ProgressBar>, msg: String| {
            if let Some(pb) = spinner.take() {
                pb.finish_and_clear();
            }
            eprintln!("{msg}");
        };
        match event {
            Event::OrderPlaced { attempt: 1 } => eprintln!("placing an ACME order"),
            Event::OrderPlaced { attempt } => eprintln!("placing an ACME order (attempt {attempt}: the server rejected nonces)"),
            Event::CreateRecord { name, value } => done(
                &mut spinner,
                format!("create this DNS record now (astrtc waits until it is visible):\n\n    {name}. 60 IN TXT \"{value}\"\n"),
            ),
            Event::WaitingForDns { records } => {
                *spinner = wait(format!("waiting until {records} TXT record(s) are visible (checked every 2 s)…"))
            }
            Event::DnsVisible { after } => done(&mut spinner, format!("TXT record(s) visible after {:.1} s", after.as_secs_f64())),
            Event::Validating { names } => *spinner = wait(format!("waiting for the CA to validate {names} name(s)…")),
            Event::Validated { after } => done(&mut spinner, format!("validated in {:.1} s", after.as_secs_f64())),
            Event::RemoveRecords { names } => {
                done(&mut spinner, format!("done: the TXT record(s) at {} may be removed now", names.join(", ")))
            }
        }
    })
}

fn certs(command: crate::cli::CertsCommand) -> Result<(), RunError> {
    use crate::certs::lifecycle::{Outcome, WatchEvent, WatchOptions};
    use crate::certs::store::Due;
    use crate::cli::CertsCommand;
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let report = |job: &crate::certs::lifecycle::Job, outcome: &Outcome| match outcome {
        Outcome::NotDue { days_left, .. } => println!(
            "{}: the certificate for {} is valid for {days_left} more days; not due",
            job.keys.display(),
            job.acme.names.join(", ")
        ),
        Outcome::Issued { serial, days, attempts, elapsed, .. } => println!(
            "wrote {} (asterisk.crt, asterisk.key, asterisk.pem): {}, serial {serial}, valid {days} days; \
             {attempts} order(s), {:.1} s",
            job.keys.display(),
            job.acme.names.join(", "),
            elapsed.as_secs_f64()
        ),
    };
    match command {
        CertsCommand::Issue { input, force } => {
            let job = certs_job(&input)?;
            let outcome = runtime.block_on(job.ensure(force))?;
            report(&job, &outcome);
            if let Outcome::NotDue { .. } = outcome {
                println!("(renews when due; --force to issue anyway)");
            }
            Ok(())
        }
        CertsCommand::Renew { input } => {
            let job = certs_job(&input)?;
            let outcome = runtime.block_on(job.ensure(false))?;
            report(&job, &outcome);
            Ok(())
        }
        CertsCommand::Check { input } => {
            let job = certs_job(&input)?;
            match job.due() {
                Due::NotDue { days_left, .. } | Due::Renew { days_left } if days_left >= 0 => {
                    println!("{}: usable, {days_left} days left", job.keys.display());
                    Ok(())
                }
                state => Err(RunError::CertUnusable {
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
        CertsCommand::Watch { input, retry_initial, retry_max } => {
            let job = certs_job(&input)?;
            let opts = WatchOptions {
                retry_initial: std::time::Duration::from_secs(retry_initial),
                retry_max: std::time::Duration::from_secs(retry_max.max(retry_initial)),
                ..WatchOptions::default()
            };
            eprintln!(
                "astrtc certs watch: keeping {} valid for {} ({})",
                job.keys.display(),
                job.acme.names.join(", "),
                job.acme.directory
            );
            let on_event = |event: WatchEvent<'_>| match event {
                WatchEvent::Pass { outcome, next_in } => {
                    report(&job, outcome);
                    println!("next check in {}", human_duration(next_in));
                }
                WatchEvent::Failed { error, failures, retry_in, current } => {
                    let mut text = error.to_string();
                    let mut source = std::error::Error::source(error);
                    while let Some(e) = source {
                        text.push_str(&format!(": {e}"));
                        source = e.source();
                    }
                    eprintln!("error: {text}");
                    let keeping = match current {
                        Due::NotDue { days_left, .. } | Due::Renew { days_left } if days_left >= 0 => {
                            format!("the current certificate stays in place ({days_left} days left)")
                        }
                        _ => "there is no usable certificate yet".into(),
                    };
                    eprintln!("failure {failures} in a row; {keeping}; retrying in {}", human_duration(retry_in));
                }
            };
            runtime.block_on(async {
                tokio::select! {
                    _ = crate::certs::lifecycle::watch(&job, &opts, on_event) => {}
                    _ = shutdown_signal() => eprintln!("astrtc certs watch: stopping"),
                }
            });
            Ok(())
        }
    }
}

/// SIGTERM (docker stop, Kubernetes) or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}
