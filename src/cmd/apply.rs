//! `astrtc apply`: render, then reload the running compose deployment in place or restart it
//! gracefully (announced, confirmed), saying which; for a cluster, write the users into its
//! database, reload its pool in place, scale the pool to the spec's size (the edge's pool watcher
//! follows), restarting only what must be (announced, confirmed).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use astrtc::apply;
use astrtc::deploy::{self, Written};
use astrtc::plan::Plan;

use super::{load_plan, out_dir, CmdError};
use crate::ui;

/// Runs `apply`.
pub async fn run(spec: &Path, out: Option<PathBuf>, yes: bool) -> Result<(), CmdError> {
    let plan = load_plan(spec)?;
    let out = out_dir(spec, out);
    if let Some(c) = &plan.cluster {
        refuse_old_pool_layout(&plan, &out).await?;
        refuse_unstaged_key_change(c, &plan, &out).await?;
    }
    let written = deploy::write(&plan, &out)?;
    let rendered = match written {
        Written::Changed => format!("rendered {}", out.display()),
        Written::Unchanged => format!("{} was up to date", out.display()),
    };
    if plan.cluster.is_some() {
        return cluster(&plan, &out, &rendered, yes).await;
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
        // Reloads only: the image's reloader must take each file as astrtc does.
        let stale = apply::stale_reloads(&pending);
        if !stale.is_empty() {
            return Err(apply::ApplyError::StaleImage { container: running.name.clone(), files: stale }.into());
        }
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

/// Before anything is written: a cluster whose pool is one compose service per member (running or
/// stopped), as an astrtc before the pool was one scaled service made it, is refused; its
/// compose.yaml stays the one that made it, so `docker compose down` there removes it whole.
async fn refuse_old_pool_layout(plan: &Plan, out: &Path) -> Result<(), CmdError> {
    let docker = astrtc::image::connect().await?;
    let services = apply::cluster::project_services(&docker, plan).await?;
    let old = apply::cluster::old_pool_services(&services);
    if old.is_empty() {
        return Ok(());
    }
    Err(apply::ApplyError::OldPoolLayout { services: old, dir: out.display().to_string() }.into())
}

/// Before anything is written: a key the running edge sends that the new pool would not take
/// (a rotation finished before it was applied, a key edited by hand) is refused while that edge
/// runs. The key it sends is its container's label (the fingerprint of the key it was created with):
/// the rendered files may be newer (an apply that wrote them and was not confirmed); an edge
/// created before the label is taken to run the rendered key. No edge running: no call to refuse.
async fn refuse_unstaged_key_change(c: &astrtc::plan::Cluster, plan: &Plan, out: &Path) -> Result<(), CmdError> {
    let docker = astrtc::image::connect().await?;
    let Some((edge, label)) = apply::cluster::running_edge_key(&docker, plan).await? else { return Ok(()) };
    let sent = match label {
        Some(print) => print,
        None => match apply::cluster::deployed_edge_key(out) {
            Some(key) => astrtc::render::cluster::edge_key_fingerprint(&key),
            None => return Ok(()),
        },
    };
    if !apply::cluster::unstaged_key_change(&sent, c) {
        return Ok(());
    }
    Err(apply::ApplyError::UnstagedKeyChange {
        edge,
        deployed: out.join(astrtc::render::cluster::EDGE_KEY_FILE).display().to_string(),
    }
    .into())
}

/// A cluster: the users into the database, the pool reloaded in place, and every service whose
/// restart digest changed (or that is not running) brought up by compose once confirmed.
async fn cluster(plan: &Plan, out: &Path, rendered: &str, yes: bool) -> Result<(), CmdError> {
    let docker = astrtc::image::connect().await?;
    let mut running = apply::cluster::find_services(&docker, plan).await?;
    let Some(db) = running.remove(apply::cluster::DB_SERVICE) else {
        println!("{rendered}; no running cluster of project {:?} here (no database container)", plan.name);
        println!("start it: cd {} && docker compose up -d --wait", out.display());
        return Ok(());
    };
    let wanted = apply::cluster::rendered_services(out);
    // Each rendered service: reload (pool members with an unchanged digest), nothing (the edge,
    // relay, database and pool watcher with an unchanged digest) or a restart (digest changed, or
    // not running); the pool scaled to the spec's size.
    let mut reloads = Vec::new();
    let mut unchanged = Vec::new();
    let mut restarts = Vec::new();
    let mut starts = Vec::new();
    let pool_size = plan.cluster.as_ref().map_or(0, |c| c.pool_size as usize);
    for (service, digest) in &wanted {
        if service == apply::cluster::POOL_SERVICE {
            // Its replicas by number; compose picks which to remove when the pool shrinks.
            let members = apply::cluster::pool_members(&docker, plan).await?;
            let n = members.len();
            for (i, m) in members.iter().enumerate() {
                if m.state != "running" {
                    if i < pool_size {
                        starts.push(format!("{} ({}, {})", m.name, m.running.name, m.state));
                    }
                } else if digest.is_some() && m.running.restart_digest == *digest {
                    reloads.push((m.name.clone(), m.running.clone()));
                } else {
                    let c = &m.running;
                    let pending = apply::pending(&docker, c).await?;
                    let calls = apply::calls_in_progress(&docker, c).await;
                    restarts.push(ui::restart_announcement(&c.name, &pending, calls, plan.lifecycle.drain_seconds));
                }
            }
            if n < pool_size {
                starts.push(format!(
                    "{} new pool member(s) (the spec's pool_size is {pool_size}, {n} run)",
                    pool_size - n
                ));
            } else if n > pool_size {
                restarts.push(format!(
                    "asterisk: the pool scales from {n} to the spec's pool_size, {pool_size}: {} member(s) stopped and \
                     removed (compose picks which: the highest-numbered, unless some are to be recreated; each drains: \
                     new calls get 503, calls in progress go on for up to {}s)",
                    n - pool_size,
                    plan.lifecycle.drain_seconds
                ));
            }
            continue;
        }
        let container = if service == apply::cluster::DB_SERVICE { Some(&db) } else { running.get(service) };
        match container {
            None => restarts.push(format!("{service}: not running: started")),
            Some(c) if digest.is_some() && c.restart_digest == *digest => unchanged.push(service.clone()),
            Some(c) => restarts.push(cluster_restart_announcement(service, &c.name)),
        }
    }
    let orphans: Vec<&String> = running.keys().filter(|s| !wanted.iter().any(|(w, _)| w == *s)).collect();
    for orphan in &orphans {
        restarts.push(format!(
            "{orphan}: no longer in the spec: stopped and removed (a pool member drains first: new calls get 503, \
             calls in progress go on for up to {}s)",
            plan.lifecycle.drain_seconds
        ));
    }
    // Before anything is done: each member to be reloaded must reload what astrtc reloads (an
    // image built by an older astrtc would leave a file unloaded — a rotated key refusing calls
    // once the edge restarts with the new one).
    for (_, c) in &reloads {
        apply::pending_checked(&docker, c).await?;
    }
    println!("{rendered}; applying to the running cluster {:?}:", plan.name);
    if !restarts.is_empty() {
        println!("only a restart applies part of this change:");
        for r in &restarts {
            println!("  {r}");
        }
        if !yes {
            confirm()?;
        }
    }
    let users = apply::cluster::write_users(&docker, &db, plan).await?;
    let list = |v: &[String]| if v.is_empty() { String::new() } else { format!(": {}", v.join(", ")) };
    println!(
        "users: {} written to the database ({} added{}, {} removed{}, {} password(s) changed{}, {} max_contacts \
         changed{}, {} transport(s) changed{}); the edge reads them from there",
        users.total,
        users.added.len(),
        list(&users.added),
        users.removed.len(),
        list(&users.removed),
        users.password_changed.len(),
        list(&users.password_changed),
        users.max_contacts_changed.len(),
        list(&users.max_contacts_changed),
        users.transport_changed.len(),
        list(&users.transport_changed),
    );
    for service in &unchanged {
        println!("{service}: unchanged, not restarted");
    }
    let (mut reloaded, mut same) = (Vec::new(), Vec::new());
    let mut details = Vec::new();
    for (service, c) in &reloads {
        if apply::pending(&docker, c).await?.is_empty() {
            same.push(service.as_str());
            continue;
        }
        for line in apply::reload(&docker, c).await? {
            details.push(format!("  {service}: {line}"));
        }
        reloaded.push(service.as_str());
    }
    if !reloads.is_empty() {
        let mut parts = Vec::new();
        if !reloaded.is_empty() {
            parts.push(format!("{} reloaded in place (calls go on)", reloaded.join(", ")));
        }
        if !same.is_empty() {
            parts.push(format!("{} unchanged", same.join(", ")));
        }
        println!("pool: {}", parts.join("; "));
        for d in details {
            println!("{d}");
        }
    }
    if !starts.is_empty() && restarts.is_empty() {
        println!("starting {} (docker compose up; nothing else restarts) ...", starts.join(", "));
        let took = apply::compose_up(plan, out, false)?;
        println!("started: every service healthy after {}", ui::human_duration(took));
    } else if !restarts.is_empty() {
        if !starts.is_empty() {
            println!("starting {}", starts.join(", "));
        }
        println!("restarting what changed (docker compose up; pool members drain first) ...");
        let took = apply::compose_up(plan, out, !orphans.is_empty())?;
        println!("restarted: every service healthy after {}", ui::human_duration(took));
    }
    pool_followed(&docker, plan).await
}

/// How long `apply` waits for the edge's dispatcher to hold the running pool: the pool watcher
/// looks every 5 s.
const POOL_FOLLOW_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until the running edge's dispatcher holds the pool's running members, as the pool
/// watcher keeps it (a member added, once up; one removed, once gone), and says what it holds.
/// Compared as sets: the dispatcher lists its members in its own order.
async fn pool_followed(docker: &bollard::Docker, plan: &Plan) -> Result<(), CmdError> {
    let running = apply::cluster::find_services(docker, plan).await?;
    let Some(edge) = running.get("edge") else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    loop {
        let members = apply::cluster::pool_members(docker, plan).await?;
        let want = apply::cluster::member_uris(&members, plan.network.sip_port);
        let held = apply::cluster::loaded_pool(docker, edge).await;
        let mut uris: Vec<String> = held.iter().flatten().map(|(uri, _)| uri.clone()).collect();
        uris.sort();
        if uris == want {
            let held = held.unwrap_or_default();
            println!(
                "edge: its dispatcher holds the {} running member(s), not restarted: {}",
                want.len(),
                held.iter().map(|(uri, flags)| format!("{uri} {flags}")).collect::<Vec<_>>().join(", ")
            );
            return Ok(());
        }
        if started.elapsed() > POOL_FOLLOW_LIMIT {
            let reason = match held {
                Err(e) => e.to_string(),
                Ok(_) => format!(
                    "after {}s it holds [{}], the running members are [{}]",
                    POOL_FOLLOW_LIMIT.as_secs(),
                    uris.join(", "),
                    want.join(", ")
                ),
            };
            return Err(apply::ApplyError::PoolNotReloaded { reason }.into());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What restarting the edge, relay or database does to calls and clients.
fn cluster_restart_announcement(service: &str, container: &str) -> String {
    let what = match service {
        "edge" => {
            "what Kamailio reads only at start changed (kamailio.cfg, tls.cfg, database.cfg, edge_key.cfg, or its service in \
             compose.yaml): the restart closes every browser's WebSocket (browsers \
             reconnect and register again); registrations and answered calls are kept in the database"
        }
        "relay" => {
            "rtpengine.conf or its service in compose.yaml changed: the restart ends the media of every call in \
             progress"
        }
        "db" => {
            "pg_hba.conf, the database password, schema.sql (a new astrtc's tables) or its service in \
             compose.yaml changed: the edge cannot \
             authenticate, register or route to users while it restarts (a few seconds)"
        }
        _ => "its service in compose.yaml changed",
    };
    format!("{service} ({container}): {what}")
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
