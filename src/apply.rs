//! `astrtc apply` for a compose deployment: after a render, bring the running Asterisk to the
//! new configs with the least disruptive action, and say which.
//!
//! Owns: finding the running container (its compose project and service), the decision — the
//! container's restart digest label against the one just rendered ([`crate::render::restart`]):
//! equal means every change can be reloaded in place, different means only a restart applies it
//! — and carrying it out: `astrtc-reload once` inside the container (the script that knows each
//! file's reload command; calls go on), or `docker compose up -d --wait`, which replaces the
//! container after its graceful drain (SIGTERM → `astrtc-drain`: new calls 503, calls in progress
//! go on for up to `lifecycle.drain_seconds`). The asking for confirmation is the command's.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use thiserror::Error;

use crate::plan::Plan;
use crate::render::compose::RESTART_DIGEST_LABEL;

pub mod cluster;

/// Errors of `apply`.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum ApplyError {
    /// The Docker engine API failed.
    #[error("the Docker engine API failed while {doing}")]
    Api {
        /// What was being done.
        doing: String,
        /// The engine client's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The reload inside the container failed.
    #[error("reloading inside {container} failed: {output}")]
    #[diagnostic(
        code(astrtc::apply::reload_failed),
        help("the new files are in place; see `docker logs` of the container, fix the spec, apply again")
    )]
    ReloadFailed {
        /// The container.
        container: String,
        /// What the reloader printed.
        output: String,
    },
    /// The running image's reloader would restart for a file this astrtc reloads in place: an
    /// image built by an older astrtc. Taking the reload path with it would leave the file
    /// unloaded (and a rotated edge key refusing every call); no container was touched (the new
    /// files are rendered, as `astrtc render` would).
    #[error("{container} runs an image whose reloader does not reload {}: it was built by an older astrtc", files.join(", "))]
    #[diagnostic(
        code(astrtc::apply::stale_image),
        help(
            "rebuild the image with `astrtc build --spec ...`, then `astrtc apply` again (the new image restarts the \
             container); no container was touched, only the rendered files are new"
        )
    )]
    StaleImage {
        /// The container.
        container: String,
        /// The files it would not reload.
        files: Vec<String>,
    },
    /// The edge's key would change with no rotation holding the key the running edge sends:
    /// between the pool's reload and the edge's restart every call would be refused. Refused
    /// before anything is written.
    #[error(
        "the edge's key changes with no rotation under way: the pool would refuse every call the running edge \
         ({edge}) sends until it had restarted; nothing was written"
    )]
    #[diagnostic(
        code(astrtc::apply::unstaged_key_change),
        help(
            "rotate the key in two steps, applying each: `astrtc secrets --rotate edge-key`, `astrtc apply`, then \
             `astrtc secrets --finish-rotation edge-key`, `astrtc apply`. If a rotation was finished before it was \
             applied, set `edge_key_previous` in the secrets file's [cluster] to the key the running edge sends \
             (the EDGE_KEY in {deployed}, unless an unconfirmed apply or a render has replaced it since) and apply, \
             then finish again. To drop the running key at once, accepting refused calls until the edge is back: \
             `docker compose stop edge` in the deployment's directory, then `astrtc apply`"
        )
    )]
    UnstagedKeyChange {
        /// The running edge's container.
        edge: String,
        /// The rendered file holding the key the running edge sends.
        deployed: String,
    },
    /// psql in the database container refused the users (nothing was written: one transaction).
    #[error("writing the users into the database ({container}) failed: {output}")]
    #[diagnostic(
        code(astrtc::apply::users_not_written),
        help("nothing was changed in the database (one transaction); see `docker logs` of the container, then apply again")
    )]
    UsersNotWritten {
        /// The database container.
        container: String,
        /// psql's error lines (never the statements: they hold the users' digests).
        output: String,
    },
    /// The cluster's pool is one service per member, as an astrtc before the pool was one scaled
    /// service made it: compose would remove those members (orphans) and recreate the pool's
    /// network at once, so nothing is written or applied.
    #[error(
        "the cluster's pool is {}: one service per member, from an astrtc before the pool was one service, \
         `asterisk`, scaled to pool_size",
        services.join(", ")
    )]
    #[diagnostic(
        code(astrtc::apply::old_pool_layout),
        help(
            "nothing was written or applied. Move it once, when no call is in progress (calls end): in {dir}, \
             with its files as they are, `docker compose down` (the database's volume is kept); then `astrtc \
             apply` (it renders) and, in {dir}, `docker compose up -d --wait`"
        )
    )]
    OldPoolLayout {
        /// The old per-member services.
        services: Vec<String>,
        /// The compose directory.
        dir: String,
    },
    /// The edge's dispatcher did not come to hold the running pool.
    #[error("the edge's dispatcher does not hold the running pool: {reason}")]
    #[diagnostic(
        code(astrtc::apply::pool_not_followed),
        help(
            "the pool's members are started or removed as the spec says, but the edge may still hold its old list \
             (a member added gets no calls, one removed is still tried): the pool watcher keeps it; see \
             `docker compose logs pool-watch`"
        )
    )]
    PoolNotReloaded {
        /// What failed.
        reason: String,
    },
    /// `docker compose` failed.
    #[error("`docker compose {args}` in {dir} failed: {output}")]
    #[diagnostic(code(astrtc::apply::compose_failed))]
    Compose {
        /// Its arguments.
        args: String,
        /// The directory.
        dir: String,
        /// What it printed.
        output: String,
    },
}

/// The Asterisk container of a running compose deployment.
#[derive(Debug, Clone)]
pub struct Running {
    /// Container id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The restart digest it was created with (none: made by an astrtc before `apply`).
    pub restart_digest: Option<String>,
}

/// One changed file as the running Asterisk would take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The file (`pjsip.conf`, `keys/asterisk.crt`).
    pub file: String,
    /// Its reload command, or `restart`.
    pub action: String,
}

/// The changed files the running image's reloader would restart for although astrtc's table
/// ([`crate::render::restart::apply_of`]) reloads them in place: its `astrtc-reload` is older
/// than this astrtc. Empty when they agree.
pub fn stale_reloads(pending: &[Pending]) -> Vec<String> {
    use crate::render::restart::{apply_of, Apply};
    pending
        .iter()
        .filter(|p| p.action == "restart")
        .filter(|p| !p.file.starts_with("keys/"))
        .filter(|p| !matches!(apply_of(p.file.trim_start_matches("secrets/")), Apply::Restart))
        .map(|p| p.file.clone())
        .collect()
}

/// [`pending`], refused with [`ApplyError::StaleImage`] when the image's reloader would not
/// reload what astrtc reloads (checked before anything is done).
pub async fn pending_checked(docker: &Docker, running: &Running) -> Result<Vec<Pending>, ApplyError> {
    let pending = pending(docker, running).await?;
    let files = stale_reloads(&pending);
    if !files.is_empty() {
        return Err(ApplyError::StaleImage { container: running.name.clone(), files });
    }
    Ok(pending)
}

/// The running Asterisk container of the plan's compose project, if any.
pub async fn find_running(docker: &Docker, plan: &Plan) -> Result<Option<Running>, ApplyError> {
    let labels =
        vec![format!("com.docker.compose.project={}", plan.name), "com.docker.compose.service=asterisk".into()];
    let filters = HashMap::from([("label".to_string(), labels)]);
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().filters(&filters).build()))
        .await
        .map_err(|source| ApplyError::Api { doing: "listing containers".into(), source })?;
    Ok(list.into_iter().find_map(|c| {
        let id = c.id?;
        let name = c.names.and_then(|n| n.first().cloned()).unwrap_or_else(|| id.clone());
        let restart_digest = c.labels.and_then(|l| l.get(RESTART_DIGEST_LABEL).cloned());
        Some(Running { id, name: name.trim_start_matches('/').to_string(), restart_digest })
    }))
}

/// The restart digest of the compose.yaml rendered in `out` (the Asterisk service's label).
pub fn rendered_digest(out: &Path) -> Option<String> {
    let text = std::fs::read_to_string(out.join(crate::render::templates::COMPOSE_YAML)).ok()?;
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix(RESTART_DIGEST_LABEL)?.strip_prefix(':')?;
        Some(v.trim().trim_matches('"').to_string())
    })
}

/// Runs a command in the container; returns its exit code and what it printed (stdout, stderr).
pub async fn exec(docker: &Docker, id: &str, cmd: &[&str]) -> Result<(i64, String), ApplyError> {
    let mut out = String::new();
    let code = exec_with(docker, id, cmd, |chunk| out.push_str(&chunk.to_string())).await?;
    Ok((code, out))
}

/// [`exec`] with stdout and stderr apart: a line of one is never cut by the other (their chunks
/// arrive as each stream is written). Returns the exit code, stdout and stderr.
pub async fn exec_apart(docker: &Docker, id: &str, cmd: &[&str]) -> Result<(i64, String, String), ApplyError> {
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let code = exec_with(docker, id, cmd, |chunk| match chunk {
        LogOutput::StdErr { message } => stderr.push_str(&String::from_utf8_lossy(&message)),
        other => stdout.push_str(&other.to_string()),
    })
    .await?;
    Ok((code, stdout, stderr))
}

/// Runs a command in the container, handing each chunk of its output to `take`; its exit code.
async fn exec_with(
    docker: &Docker,
    id: &str,
    cmd: &[&str],
    mut take: impl FnMut(LogOutput),
) -> Result<i64, ApplyError> {
    let api = |doing: &str| {
        let doing = format!("{doing} {cmd:?} in {id}");
        move |source| ApplyError::Api { doing, source }
    };
    let created = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(api("creating"))?;
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await.map_err(api("starting"))?
    {
        while let Some(chunk) = output.next().await {
            take(chunk.map_err(api("reading"))?);
        }
    }
    Ok(docker.inspect_exec(&created.id).await.map_err(api("inspecting"))?.exit_code.unwrap_or(-1))
}

/// What the running Asterisk has not loaded yet, file by file (`astrtc-reload diff`).
pub async fn pending(docker: &Docker, running: &Running) -> Result<Vec<Pending>, ApplyError> {
    let (_, out) = exec(docker, &running.id, &["/usr/local/bin/astrtc-reload", "diff"]).await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (file, action) = l.split_once(' ')?;
            Some(Pending { file: file.to_string(), action: action.to_string() })
        })
        .collect())
}

/// Calls in progress (`core show channels count`), when Asterisk answers.
pub async fn calls_in_progress(docker: &Docker, running: &Running) -> Option<u32> {
    let (_, out) = exec(docker, &running.id, &["/usr/sbin/asterisk", "-rx", "core show channels count"]).await.ok()?;
    out.lines().find_map(|l| l.strip_suffix(" active call").or(l.strip_suffix(" active calls"))?.trim().parse().ok())
}

/// Reloads what changed in place (`astrtc-reload once`); returns its report lines
/// (`reloaded: COMMAND: FILES`).
pub async fn reload(docker: &Docker, running: &Running) -> Result<Vec<String>, ApplyError> {
    let (code, out) = exec(docker, &running.id, &["/usr/local/bin/astrtc-reload", "once"]).await?;
    if code != 0 {
        return Err(ApplyError::ReloadFailed { container: running.name.clone(), output: out.trim().to_string() });
    }
    Ok(out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
}

/// Replaces the Asterisk container (`docker compose up -d --wait`): compose stops the old one
/// with SIGTERM (its drain) and waits up to the plan's stop grace period, then starts the new one
/// and waits until it is healthy. Returns how long it took.
pub fn restart(plan: &Plan, out: &Path) -> Result<Duration, ApplyError> {
    compose_up(plan, out, false)
}

/// `docker compose up -d --wait` (with `--remove-orphans`: services no longer rendered, a pool
/// that shrank, are stopped and removed, each after its drain): compose recreates exactly the
/// services whose definition changed (their restart digest labels among it) and starts missing
/// ones. Returns how long it took.
pub fn compose_up(plan: &Plan, out: &Path, remove_orphans: bool) -> Result<Duration, ApplyError> {
    let started = Instant::now();
    let timeout = plan.lifecycle.stop_grace_seconds().to_string();
    let mut args = vec!["compose", "up", "-d", "--wait", "--timeout", timeout.as_str()];
    if remove_orphans {
        args.push("--remove-orphans");
    }
    let output = std::process::Command::new("docker").args(&args).current_dir(out).output().map_err(|e| {
        ApplyError::Compose { args: args[1..].join(" "), dir: out.display().to_string(), output: e.to_string() }
    })?;
    if !output.status.success() {
        let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        return Err(ApplyError::Compose {
            args: args[1..].join(" "),
            dir: out.display().to_string(),
            output: format!("{}{}", printed.trim(), not_ready_report(out)),
        });
    }
    Ok(started.elapsed())
}

/// After a failed `docker compose up --wait`: each of the project's containers that is not
/// running, or whose healthcheck does not pass, with its last healthchecks as Docker keeps them
/// (exit code and output, each cut at 300 characters) — what compose's "is unhealthy" leaves out.
/// Only the healthchecks' own output, never a container's log (a service may log its settings).
pub fn not_ready_report(out: &Path) -> String {
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .current_dir(out)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(ids) = docker(&["compose", "ps", "-aq"]) else { return String::new() };
    let mut ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return String::new();
    }
    ids.insert(0, "inspect");
    let Some(json) = docker(&ids) else { return String::new() };
    let containers: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
    let mut report = String::new();
    for c in &containers {
        let state = &c["State"];
        let (status, health) = (state["Status"].as_str().unwrap_or("?"), state["Health"]["Status"].as_str());
        if status == "running" && health.is_none_or(|h| h == "healthy") {
            continue;
        }
        let name = c["Name"].as_str().unwrap_or("?").trim_start_matches('/');
        let _ = write!(report, "\n{name}: {status}");
        // A container that exited and was restarted reads "unhealthy" while it restarts (Docker
        // stops its health monitor on exit) though no healthcheck failed: say so.
        // (Its exit code only while it is not running: a running container's reads 0.)
        let restarts = c["RestartCount"].as_i64().filter(|n| *n > 0);
        if let Some(restarts) = restarts {
            let _ = write!(report, ", restarted {restarts} times");
            if let Some(code) = state["ExitCode"].as_i64().filter(|_| status != "running") {
                let _ = write!(report, " (last exit code {code})");
            }
        }
        if let Some(h) = health {
            let _ = write!(report, ", {h}; its last healthchecks:");
            for check in state["Health"]["Log"].as_array().into_iter().flatten() {
                let output: String = check["Output"].as_str().unwrap_or("").trim().chars().take(300).collect();
                let _ = write!(
                    report,
                    "\n  {} exit {}: {}",
                    check["Start"].as_str().unwrap_or("?"),
                    check["ExitCode"].as_i64().map_or("?".into(), |c| c.to_string()),
                    output.replace('\n', " | ")
                );
            }
        } else if let Some(code) = state["ExitCode"].as_i64().filter(|_| restarts.is_none()) {
            let _ = write!(report, " (exit code {code})");
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(file: &str, action: &str) -> Pending {
        Pending { file: file.to_string(), action: action.to_string() }
    }

    /// An image whose reloader restarts for a file astrtc reloads (one built before
    /// `extensions_edge.conf` was reloadable) is named; one that agrees, a file astrtc restarts for
    /// too, and the certificate are not.
    #[test]
    fn a_reloader_older_than_astrtc_is_caught_file_by_file() {
        let old_image = [
            p("extensions_edge.conf", "restart"),
            p("secrets/extensions_edge.conf", "restart"),
            p("pjsip_auth.conf", "module reload res_pjsip.so"),
            p("modules.conf", "restart"),
            p("keys/asterisk.crt", "module reload http"),
        ];
        assert_eq!(stale_reloads(&old_image), ["extensions_edge.conf", "secrets/extensions_edge.conf"]);
        let current = [p("extensions_edge.conf", "dialplan reload"), p("modules.conf", "restart")];
        assert!(stale_reloads(&current).is_empty());
    }
}
