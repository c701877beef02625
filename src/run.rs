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
    /// ACME issuance failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Acme(#[from] crate::certs::acme::AcmeError),
    /// `certs` needs an ACME-mode spec.
    #[error("{spec} is not in ACME mode (tls.mode = \"acme\")")]
    #[diagnostic(code(astrtc::certs::not_acme), help("in self-signed mode `astrtc render` makes the certificate"))]
    NotAcme {
        /// The spec path.
        spec: String,
    },
    /// Writing the keys failed.
    #[error("failed to write the certificate into {}", path.display())]
    WriteKeys {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
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
            RunError::NotAcme { .. } => 2,
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
            let built = runtime.block_on(async {
                let docker = image::connect().await?;
                image::build(&docker, &ctx, extra_ca.as_deref(), &plan.image, verbose).await
            })?;
            println!("built {} in {:.0?}", built.tag, built.elapsed);
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
        Command::Certs { command } => {
            let (spec, keys, force) = match command {
                crate::cli::CertsCommand::Issue { spec, keys, force } => (spec, keys, force),
                crate::cli::CertsCommand::Renew { spec, keys } => (spec, keys, false),
            };
            let plan = load_plan(&spec)?;
            let acme_plan =
                plan.tls.acme.clone().ok_or_else(|| RunError::NotAcme { spec: spec.display().to_string() })?;
            match crate::certs::store::due(&keys, &plan.tls.names) {
                crate::certs::store::Due::NotDue { days_left } if !force => {
                    println!(
                        "{}: the certificate for {} is valid for {days_left} more days; not due (renews when a third \
                         of its lifetime is left; --force to issue anyway)",
                        keys.display(),
                        plan.tls.names.join(", ")
                    );
                    return Ok(());
                }
                state => eprintln!("issuing a certificate for {} ({state:?})", plan.tls.names.join(", ")),
            }
            let method = match acme_plan.challenge {
                crate::spec::AcmeChallenge::Http01 => crate::certs::acme::ChallengeMethod::Http01 {
                    listen: std::net::SocketAddr::from(([0, 0, 0, 0], acme_plan.http_port)),
                },
                crate::spec::AcmeChallenge::Dns01 => crate::certs::acme::ChallengeMethod::Dns01Hook {
                    hook: acme_plan.dns_hook.clone().expect("validated"),
                },
            };
            let request = crate::certs::acme::AcmeRequest {
                account_file: crate::certs::acme::account_file(&acme_plan.account_dir, &acme_plan.directory),
                directory: acme_plan.directory,
                email: Some(acme_plan.email),
                server_roots: acme_plan.ca_bundle,
                names: plan.tls.names.clone(),
                method,
                timeout: std::time::Duration::from_secs(120),
            };
            let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
            let issued = runtime.block_on(crate::certs::acme::issue(&request))?;
            crate::certs::store::write(&keys, &issued.cert, plan.secret_access)
                .map_err(|source| RunError::WriteKeys { path: keys.clone(), source })?;
            let facts = crate::certs::cert_facts(&issued.cert.chain_pem).expect("the CA returned a certificate");
            println!(
                "wrote {} (asterisk.crt, asterisk.key, asterisk.pem): {}, serial {}, {} days",
                keys.display(),
                plan.tls.names.join(", "),
                facts.serial,
                facts.seconds_left / 86400
            );
            println!("a running Asterisk picks it up with: asterisk -rx \"module reload http\"");
            Ok(())
        }
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
