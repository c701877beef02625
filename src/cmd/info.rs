//! `astrtc info`: what a person needs to use a rendered deployment.

use std::path::{Path, PathBuf};

use super::{load_plan, out_dir, CmdError};
use crate::ui;

/// Runs `info`.
pub fn run(spec: &Path, out: Option<PathBuf>) -> Result<(), CmdError> {
    let plan = load_plan(spec)?;
    let secrets = astrtc::spec::load(spec)?.secrets_path();
    print!("{}", ui::info_text(&plan, spec, &secrets, &out_dir(spec, out)));
    Ok(())
}
