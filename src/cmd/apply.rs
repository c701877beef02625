//! `astrtc apply`: render, then reload the running compose deployment in place or restart it
//! gracefully (announced, confirmed), saying which; for a cluster, write the users into its
//! database, reload its pool in place, start members added, have the edge's dispatcher reload
//! the pool, restarting only what must be (announced, confirmed).

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
    let pool = apply::cluster::rendered_pool(out)?;
    // The members the running edge's dispatcher already names: one of them not running was
    // stopped, and starting it again is announced; a member it does not name is new.
    let loaded: Vec<String> = match running.get("edge") {
        Some(edge) => apply::cluster::loaded_pool(&docker, edge).await?.into_iter().map(|(uri, _)| uri).collect(),
        None => Vec::new(),
    };
    let is_new = |service: &str| pool.iter().any(|(name, uri)| name == service && !loaded.contains(uri));
    // Each rendered service: reload (pool members with an unchanged digest), nothing (the edge,
    // relay and database with an unchanged digest) or a restart (digest changed, or not running).
    let mut reloads = Vec::new();
    let mut unchanged = Vec::new();
    let mut restarts = Vec::new();
    let mut starts = Vec::new();
    for (service, digest) in &wanted {
        let container = if service == apply::cluster::DB_SERVICE { Some(&db) } else { running.get(service) };
        match container {
            None if is_pool_member(service) && is_new(service) => starts.push(service.clone()),
            None => restarts.push(format!("{service}: not running: started")),
            Some(c) if digest.is_some() && c.restart_digest == *digest => {
                if is_pool_member(service) {
                    reloads.push((service.clone(), c.clone()));
                } else {
                    unchanged.push(service.clone());
                }
            }
            Some(c) if is_pool_member(service) => {
                let pending = apply::pending(&docker, c).await?;
                let calls = apply::calls_in_progress(&docker, c).await;
                restarts.push(ui::restart_announcement(&c.name, &pending, calls, plan.lifecycle.drain_seconds));
            }
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
    // A member removed leaves the dispatcher before it drains (no new call is tried on it); one
    // added joins it once it is up.
    if !orphans.is_empty() {
        sync_pool(&docker, plan, out).await?;
    }
    if !starts.is_empty() && restarts.is_empty() {
        println!(
            "starting the new pool member(s) {} (docker compose up; nothing else restarts) ...",
            starts.join(", ")
        );
        let took = apply::compose_up(plan, out, false)?;
        println!("started: every service healthy after {}", ui::human_duration(took));
    } else if !restarts.is_empty() {
        if !starts.is_empty() {
            println!("starting the new pool member(s) {}", starts.join(", "));
        }
        println!("restarting what changed (docker compose up; pool members drain first) ...");
        let took = apply::compose_up(plan, out, !orphans.is_empty())?;
        println!("restarted: every service healthy after {}", ui::human_duration(took));
    }
    sync_pool(&docker, plan, out).await
}

/// The pool in the running edge's dispatcher made the rendered one: when they differ (a member
/// added and up, or removed), the dispatcher reloads its list in place — the edge keeps its
/// connections, registrations and calls. Compared as sets: the dispatcher lists its members in
/// its own order, and a reload resets every member's state until the next probe, so it is done
/// only when the members differ.
async fn sync_pool(docker: &bollard::Docker, plan: &Plan, out: &Path) -> Result<(), CmdError> {
    use std::collections::BTreeSet;
    let running = apply::cluster::find_services(docker, plan).await?;
    let Some(edge) = running.get("edge") else {
        return Ok(());
    };
    let failed = |e: apply::ApplyError| apply::ApplyError::PoolNotReloaded { reason: e.to_string() };
    let wanted: BTreeSet<String> = apply::cluster::rendered_pool(out)?.into_iter().map(|(_, uri)| uri).collect();
    let loaded: BTreeSet<String> =
        apply::cluster::loaded_pool(docker, edge).await.map_err(failed)?.into_iter().map(|(uri, _)| uri).collect();
    if loaded == wanted {
        return Ok(());
    }
    let added: Vec<&str> = wanted.difference(&loaded).map(String::as_str).collect();
    let removed: Vec<&str> = loaded.difference(&wanted).map(String::as_str).collect();
    apply::cluster::reload_pool(docker, edge).await.map_err(failed)?;
    let now = apply::cluster::loaded_pool(docker, edge).await.map_err(failed)?;
    let show = |v: &[&str]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    println!(
        "edge: its dispatcher reloaded the pool in place (added {}; removed {}), not restarted; now {}",
        show(&added),
        show(&removed),
        now.iter().map(|(uri, flags)| format!("{uri} {flags}")).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// Whether a compose service is one of the pool's Asterisk servers.
fn is_pool_member(service: &str) -> bool {
    service.strip_prefix("asterisk-").is_some_and(|n| n.parse::<u32>().is_ok())
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
