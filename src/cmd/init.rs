//! `astrtc init`: turn the flags into the starter spec's choices, write it and the secrets file.

use astrtc::cli::{Command, InitChallenge, InitTls};
use astrtc::init::{self, InitAcme, InitError};

use super::CmdError;

/// Runs `init` (the flags are checked before anything is written).
pub fn run(command: Command) -> Result<(), CmdError> {
    let Command::Init { dir, domain, force, tls, acme_email, acme_directory, acme_ca, challenge, http_port, dns_hook } =
        command
    else {
        unreachable!("dispatched on Command::Init");
    };
    let acme = match tls {
        InitTls::SelfSigned => None,
        InitTls::Acme => Some(InitAcme {
            email: acme_email.ok_or_else(|| InitError::Flags {
                reason: "--tls acme needs --acme-email (the CA sends expiry notices there)".into(),
            })?,
            directory: acme_directory,
            ca: acme_ca.map(|p| std::path::absolute(&p).unwrap_or(p)),
            challenge: match challenge {
                InitChallenge::Http01 => "http-01",
                InitChallenge::Dns01 => "dns-01",
            },
            http_port,
            dns_hook: dns_hook.map(|p| std::path::absolute(&p).unwrap_or(p)),
        }),
    };
    let w = init::init(&dir, &domain, force, acme.as_ref())?;
    println!("wrote {} and {} (mode 0600)", w.spec.display(), w.secrets.display());
    println!("endpoints: {} (passwords in {})", w.endpoints.join(", "), w.secrets.display());
    println!("next: astrtc render --spec {}", w.spec.display());
    Ok(())
}
