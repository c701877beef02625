//! The plan: every value the outputs need, resolved once — the validated spec ([`Valid`]) plus
//! the facts of the host that renders (who owns secret files) and of the images (uids, paths
//! inside the containers, image references split once).
//!
//! Owns: derived values. Renderers, the certificate code, the image builder and `verify` read the
//! plan and never look at the spec again. It is serialisable: the plan is the intermediate
//! representation every template sees (passwords excepted).

use serde::Serialize;

use crate::image::{self, ImageRef};
pub use crate::spec::valid::{
    Acme, Bridge, Dialplan, Endpoint, Logging, Nat, Network, Performance, Resources, Rtp, Tls, Turn, Valid,
};
use crate::spec::{LoadedSpec, SpecError};

/// Facts about the machine that renders, which decide file ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// Effective uid of this process.
    pub uid: u32,
    /// Effective gid of this process.
    pub gid: u32,
}

impl HostFacts {
    /// The running process's facts.
    pub fn detect() -> Self {
        // SAFETY: geteuid/getegid cannot fail and touch no memory.
        unsafe { HostFacts { uid: libc::geteuid(), gid: libc::getegid() } }
    }
}

/// Who may read secret files (keys, passwords) inside the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SecretAccess {
    /// Group the secret files belong to (mode 0640).
    pub gid: u32,
    /// Whether files must be chowned to `gid` (only root can give files to another group).
    pub chown: bool,
    /// Extra group the container process needs to read them (`group_add`), if any.
    pub group_add: Option<u32>,
}

impl SecretAccess {
    /// Root gives the files to the image's asterisk group; anyone else keeps their own group
    /// and lets the container join it.
    pub fn for_host(host: HostFacts) -> Self {
        if host.uid == 0 {
            SecretAccess { gid: image::ASTERISK_UID, chown: true, group_add: None }
        } else {
            SecretAccess { gid: host.gid, chown: false, group_add: Some(host.gid) }
        }
    }

    /// The group to give secret files, when this process may give them one.
    pub fn chgrp(&self) -> Option<u32> {
        self.chown.then_some(self.gid)
    }
}

/// The complete, resolved deployment.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Deployment name.
    pub name: String,
    /// Asterisk image reference.
    pub image: String,
    /// The spec file this plan came from (for headers in generated files).
    pub spec_file: String,
    /// Network attachment and ports.
    pub network: Network,
    /// Media ports and ICE helpers.
    pub rtp: Rtp,
    /// The WSS certificate.
    pub tls: Tls,
    /// Dialplan.
    pub dialplan: Dialplan,
    /// Endpoints, in spec order.
    pub endpoints: Vec<Endpoint>,
    /// What Asterisk logs.
    pub logging: Logging,
    /// Memory the Asterisk container may use.
    pub resources: Resources,
    /// What limits how many calls it carries.
    pub performance: Performance,
    /// Ownership of secret files.
    pub secret_access: SecretAccess,
}

impl Plan {
    /// The plan of validated values, rendered on a host with these facts.
    pub fn new(valid: Valid, spec_file: &str, host: HostFacts) -> Plan {
        let Valid { name, image, network, rtp, tls, dialplan, endpoints, logging, resources, performance } = valid;
        Plan {
            name,
            image,
            spec_file: spec_file.to_string(),
            network,
            rtp,
            tls,
            dialplan,
            endpoints,
            logging,
            resources,
            performance,
            secret_access: SecretAccess::for_host(host),
        }
    }

    /// The Asterisk image reference, split.
    pub fn image_ref(&self) -> ImageRef {
        ImageRef::parse(&self.image)
    }
}

/// Validates a loaded spec with its secrets and resolves the plan; every problem at once.
pub fn build(
    spec: &LoadedSpec,
    secrets: &crate::spec::secrets::LoadedSecrets,
    host: HostFacts,
) -> Result<Plan, SpecError> {
    let valid = spec.validate(secrets)?;
    let spec_file =
        spec.source.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "astrtc.toml".into());
    Ok(Plan::new(valid, &spec_file, host))
}

/// Reads a spec file and its secrets and resolves the plan.
pub fn load(spec_path: &std::path::Path, host: HostFacts) -> Result<Plan, SpecError> {
    let spec = crate::spec::load(spec_path)?;
    let secrets = spec.load_secrets()?;
    build(&spec, &secrets, host)
}
