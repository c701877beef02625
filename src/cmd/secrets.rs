//! `astrtc secrets`: passwords for endpoints added to the spec later (and for `/metrics`), and the
//! TURN shared secret once the spec has a `[turn]` section, the cluster's database password and
//! the pool's key for the edge once it has `topology = "cluster"` (the key also for a secrets file
//! written before it existed).

use std::path::Path;

use super::CmdError;

/// Runs `secrets`.
pub fn run(spec: &Path) -> Result<(), CmdError> {
    let loaded = astrtc::spec::load(spec)?;
    let path = loaded.secrets_path();
    let existing = if path.exists() { Some(astrtc::spec::secrets::load(&path)?.secrets) } else { None };
    let ids: Vec<String> = loaded.spec.endpoints.iter().map(|e| e.id.clone()).collect();
    let metrics = loaded.spec.metrics_enabled();
    let added = astrtc::init::fill_secrets(
        &path,
        existing,
        &ids,
        metrics,
        loaded.spec.turn.is_some(),
        loaded.spec.is_cluster(),
    )?;
    if added.is_empty() {
        println!("every endpoint (and metrics) already has a password in {}", path.display());
    } else {
        println!("generated passwords for {} in {}", added.join(", "), path.display());
    }
    Ok(())
}
