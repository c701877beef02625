//! `astrtc secrets`: passwords for endpoints added to the spec later (and for `/metrics`).

use std::path::Path;

use super::CmdError;

/// Runs `secrets`.
pub fn run(spec: &Path) -> Result<(), CmdError> {
    let loaded = astrtc::spec::load(spec)?;
    let path = loaded.secrets_path();
    let existing = if path.exists() { Some(astrtc::spec::secrets::load(&path)?.secrets) } else { None };
    let ids: Vec<String> = loaded.spec.endpoints.iter().map(|e| e.id.clone()).collect();
    let metrics = loaded.spec.metrics.enabled.unwrap_or(astrtc::spec::defaults::METRICS_ENABLED);
    let added = astrtc::init::fill_secrets(&path, existing, &ids, metrics)?;
    if added.is_empty() {
        println!("every endpoint (and metrics) already has a password in {}", path.display());
    } else {
        println!("generated passwords for {} in {}", added.join(", "), path.display());
    }
    Ok(())
}
