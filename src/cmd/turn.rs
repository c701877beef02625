//! `astrtc turn-credentials`: short-lived credentials for the spec's TURN server, as the
//! `iceServers` entry a browser takes.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{load_plan, CmdError};
use crate::ui;

/// Runs `turn-credentials`.
pub fn credentials(spec: &Path, user: &str, ttl: Duration, json: bool) -> Result<(), CmdError> {
    let plan = load_plan(spec)?;
    let turn = plan.turn.as_ref().ok_or_else(|| {
        CmdError::BadArgument(format!(
            "{} has no [turn] section: add one (mode = \"bundled\" deploys coturn) and run `astrtc secrets`",
            spec.display()
        ))
    })?;
    astrtc::turn::user_id(user).map_err(|e| CmdError::BadArgument(format!("--user: {e}")))?;
    let (entry, cred) = astrtc::turn::ice_server(turn, user, ttl, SystemTime::now());
    if json {
        println!("{}", serde_json::to_string(&entry).unwrap_or_default());
    } else {
        print!("{}", ui::turn_credentials_text(user, ttl, &entry, &cred));
    }
    Ok(())
}
