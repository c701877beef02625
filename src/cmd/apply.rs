//! `astrtc apply`: render, then reload the running compose deployment in place or restart it
//! gracefully (announced, confirmed), saying which.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use astrtc::apply;
use astrtc::deploy::{self, Written};

use super::{load_plan, out_dir, CmdError};
use crate::ui;

/// Runs `apply`.
pub async fn run(spec: &Path, out: Option<PathBuf>, yes: bool) -> Result<(), CmdError> {
    let plan = load_plan(spec)?;
    let out = out_dir(spec, out);
    let written = deploy::write(&plan, &out)?;
    let rendered = match written {
        Written::Changed => format!("rendered {}", out.display()),
        Written::Unchanged => format!("{} was up to date", out.display()),
    };
    if plan.cluster.is_some() {
        // The reload/restart decision is made for one Asterisk service; a cluster's is not done.
        println!("{rendered}; astrtc apply does not bring a running cluster to it yet");
        println!(
            "apply it: cd {} && docker compose up -d --wait && docker compose restart db edge   (the database \
             loads the users from deploy/db when it starts; registrations stay)",
            out.display()
        );
        return Ok(());
    }
    let docker = astrtc::image::connect().await?;
    let Some(running) = apply::find_running(&docker, &plan).await? else {
        println!("{rendered}; no running deployment of project {:?} here", plan.name);
        println!("start it: cd {} && docker compose up -d --wait", out.display());
        return Ok(());
    };
    let wanted = apply::rendered_digest(&out);
    let pending = apply::pending(&docker, &running).await?;
    if wanted.is_some() && running.restart_digest == wanted {
        if pending.is_empty() {
            println!("{rendered}; {} already runs it: nothing to apply", running.name);
            return Ok(());
        }
        println!("{rendered}; reloading {} in place (calls go on):", running.name);
        for line in apply::reload(&docker, &running).await? {
            println!("  {line}");
        }
        return Ok(());
    }
    let calls = apply::calls_in_progress(&docker, &running).await;
    println!("{rendered}; {}", ui::restart_announcement(&running.name, &pending, calls, plan.lifecycle.drain_seconds));
    if !yes {
        confirm()?;
    }
    println!("restarting {} (draining first) ...", running.name);
    let took = apply::restart(&plan, &out)?;
    println!("restarted: the new Asterisk is healthy after {}", ui::human_duration(took));
    Ok(())
}

/// Asks on the terminal; refuses without one.
fn confirm() -> Result<(), CmdError> {
    if !std::io::stdin().is_terminal() {
        return Err(CmdError::RestartNotConfirmed { reason: "no terminal to confirm on and no --yes".into() });
    }
    print!("proceed with the restart? [y/N] ");
    std::io::stdout().flush().map_err(|source| CmdError::Output { source })?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|source| CmdError::Output { source })?;
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(CmdError::RestartNotConfirmed { reason: "declined".into() }),
    }
}
