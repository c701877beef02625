//! `astrtc render [--check]`: the plan's output directory, written atomically or compared.

use std::path::{Path, PathBuf};

use astrtc::deploy::{self, Written};

use super::{load_plan, out_dir, CmdError};

/// Runs `render`.
pub fn run(spec: &Path, out: Option<PathBuf>, check: bool) -> Result<(), CmdError> {
    let plan = load_plan(spec)?;
    let out = out_dir(spec, out);
    if check {
        let report = deploy::check(&plan, &out)?;
        if report.is_up_to_date() {
            println!("{} is up to date", out.display());
            return Ok(());
        }
        print!("{report}");
        return Err(CmdError::OutOfDate {
            spec: spec.display().to_string(),
            out: out.display().to_string(),
            count: report.changes.len(),
        });
    }
    match deploy::write(&plan, &out)? {
        Written::Unchanged => println!("{} is up to date with {}", out.display(), spec.display()),
        Written::Changed => {
            println!("rendered {} from {}", out.display(), spec.display());
            println!(
                "start it: cd {} && docker compose up -d --wait\n\
                 or bring a running stack to it (reload in place, or a graceful restart): astrtc apply --spec {}",
                out.display(),
                spec.display()
            );
        }
    }
    Ok(())
}
