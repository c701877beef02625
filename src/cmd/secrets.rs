//! `astrtc secrets`: passwords for endpoints added to the spec later (and for `/metrics`), and the
//! TURN shared secret once the spec has a `[turn]` section, the cluster's database password and
//! the pool's key for the edge once it has `topology = "cluster"` (the key also for a secrets file
//! written before it existed).

use std::path::Path;

use super::CmdError;

/// Runs `secrets --rotate edge-key` or `--finish-rotation edge-key`: the secrets file changed
/// (nothing secret printed), and what to run next.
pub fn rotate(spec: &Path, step: astrtc::init::Rotation) -> Result<(), CmdError> {
    use astrtc::init::Rotation;
    let loaded = astrtc::spec::load(spec)?;
    let path = loaded.secrets_path();
    let existing = astrtc::spec::secrets::load(&path)?.secrets;
    astrtc::init::rotate_edge_key(&path, existing, step)?;
    let apply = format!("astrtc apply --spec {}", spec.display());
    match step {
        Rotation::Start => println!(
            "a new key for the edge in {}; the previous one is kept and still taken by the pool.\n\
             next: `{apply}` (the pool reloads and takes both keys, then the edge restarts with the new one: calls go \
             on); then `astrtc secrets --spec {} --finish-rotation edge-key` and `{apply}` again",
            path.display(),
            spec.display()
        ),
        Rotation::Finish => println!(
            "the previous key for the edge removed from {}.\nnext: `{apply}` (the pool reloads and takes only the \
             new key; nothing restarts)",
            path.display()
        ),
    }
    Ok(())
}

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
