//! The output directory of a plan (`deploy/`): gather what rendering needs from disk, render,
//! then write the bundle atomically or compare it with what is there.
//!
//! Owns: the reads that keep [`crate::render`] pure — the local CA and the certificate a
//! previous render left (self-signed mode: reused while still good), the certificate `astrtc
//! certs` keeps (ACME mode: carried over), and the files the spec names (a private ACME CA
//! bundle, a DNS hook) — and the rule that a render which changes nothing writes nothing.

use std::path::{Path, PathBuf};

use crate::certs::local_ca::LocalCa;
use crate::certs::{files, CertError, CertLayout};
use crate::plan::Plan;
use crate::render::{self, CheckReport, Inputs, RenderError};
use crate::spec::TlsMode;

/// Where the output goes when no `--out` is given: `deploy` beside the spec (the layout
/// `astrtc init` and `make up` make).
pub fn default_out(spec: &Path) -> PathBuf {
    crate::fsx::parent_of(spec).join("deploy")
}

/// Errors while gathering inputs, rendering or writing.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DeployError {
    /// Rendering or writing failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Render(#[from] RenderError),
    /// The local CA or the certificate failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Cert(#[from] CertError),
}

/// How [`gather`] treats the local CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaUse {
    /// Make one when there is none (render).
    Create,
    /// Fail when there is none (check: writes nothing).
    Existing,
}

/// Reads everything rendering the plan into `out` needs from disk.
pub fn gather(plan: &Plan, out: &Path, ca: CaUse) -> Result<Inputs, DeployError> {
    let previous = existing_certs(out);
    let certs = match plan.tls.mode {
        TlsMode::SelfSigned => {
            let ca = match ca {
                CaUse::Create => LocalCa::load_or_create(&plan.tls.ca_dir, &plan.tls.domain)?,
                CaUse::Existing => {
                    LocalCa::load(&plan.tls.ca_dir)?.ok_or_else(|| CertError::NoCa { dir: plan.tls.ca_dir.clone() })?
                }
            };
            Some(ca.leaf(&plan.tls.names, previous.as_ref())?)
        }
        // `astrtc certs issue` writes them; a render carries them over.
        TlsMode::Acme => previous,
    };
    let read =
        |path: &Path| std::fs::read(path).map_err(|source| RenderError::Read { path: path.to_path_buf(), source });
    let acme = plan.tls.acme.as_ref();
    Ok(Inputs {
        certs,
        acme_ca_bundle: acme.and_then(|a| a.ca_bundle.as_deref()).map(read).transpose()?,
        dns_hook: acme.and_then(|a| a.dns_hook.as_deref()).map(read).transpose()?,
    })
}

/// Reads the WSS certificate files a previous render left in `out/keys`, if complete.
pub fn existing_certs(out: &Path) -> Option<CertLayout> {
    let keys = out.join("keys");
    Some(CertLayout {
        chain_pem: std::fs::read_to_string(keys.join(files::CERT)).ok()?,
        key_pem: std::fs::read_to_string(keys.join(files::KEY)).ok()?,
        ca_pem: std::fs::read_to_string(keys.join(files::CA)).ok(),
    })
}

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The output was already up to date; nothing was touched.
    Unchanged,
    /// The output directory was replaced.
    Changed,
}

/// Renders a plan into `out` atomically, creating the local CA on first use.
///
/// When `out` already holds exactly this output, nothing is written: a running container keeps
/// its mounts (the output directory is swapped as a whole, so a container started before a
/// write sees the old directory until it is recreated).
pub fn write(plan: &Plan, out: &Path) -> Result<Written, DeployError> {
    let bundle = render::render(plan, &gather(plan, out, CaUse::Create)?)?;
    if out.exists() && bundle.check(out)?.is_up_to_date() {
        return Ok(Written::Unchanged);
    }
    bundle.write_atomic(out, plan.secret_access)?;
    Ok(Written::Changed)
}

/// Compares what [`write`] would write with `out`, writing nothing.
pub fn check(plan: &Plan, out: &Path) -> Result<CheckReport, DeployError> {
    Ok(render::render(plan, &gather(plan, out, CaUse::Existing)?)?.check(out)?)
}
