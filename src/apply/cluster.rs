//! `astrtc apply` for a running compose cluster (`topology = "cluster"`): after a render, write
//! the users into the database, reload the pool in place, and name what only a restart applies.
//!
//! Owns: finding the cluster's containers (its compose project's services), the users' write —
//! `db/schema.sql` (tables created if missing) and `db/subscribers.sql` (the users replaced)
//! run by psql inside the database container in one transaction, reading the mounted rendered
//! files, so no password, digest or SQL value is on a command line or in a log; the edge reads
//! the users from there at every REGISTER and call, so it needs no restart for them — and the
//! restart decision for every service: its container's restart digest label against the one just
//! rendered ([`crate::render::cluster::RESTART_VIEWS`] for the edge, relay, database and pool
//! watcher, the Asterisk restart view for the pool). Equal: a pool member reloads what changed in
//! place ([`super::reload`]), the others have nothing to do; different: only `docker compose up`
//! applies it, which the command announces and has confirmed first — and the pool's members
//! ([`pool_members`]: the replicas of the pool's one service, `asterisk-N` by replica number)
//! against the pool as the edge's dispatcher holds it ([`loaded_pool`]), which the pool watcher
//! keeps to the running replicas, so a member added or removed restarts no other service.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;

use super::{exec_apart, ApplyError, Running};
use crate::image;
use crate::plan::Plan;
use crate::render::compose::{EDGE_KEY_LABEL, RESTART_DIGEST_LABEL};

/// The database service's name in compose.yaml.
pub const DB_SERVICE: &str = "db";
/// The pool's service in compose.yaml: one service, its members its replicas.
pub const POOL_SERVICE: &str = "asterisk";

/// The running containers of the plan's compose project, by compose service name, but for the
/// pool's members ([`pool_members`]).
pub async fn find_services(docker: &Docker, plan: &Plan) -> Result<BTreeMap<String, Running>, ApplyError> {
    Ok(project_containers(docker, plan, false)
        .await?
        .into_iter()
        .filter(|c| c.service != POOL_SERVICE)
        .map(|c| (c.service, c.running))
        .collect())
}

/// The compose services of the plan's project that have a container, running or not, by name.
pub async fn project_services(docker: &Docker, plan: &Plan) -> Result<Vec<String>, ApplyError> {
    let mut services: Vec<String> =
        project_containers(docker, plan, true).await?.into_iter().map(|c| c.service).collect();
    services.sort();
    services.dedup();
    Ok(services)
}

/// The name astrtc gives the pool's member with compose replica number `n`: `asterisk-N`.
pub fn member_name(n: u32) -> String {
    format!("{POOL_SERVICE}-{n}")
}

/// Services of a pool from before it was one service (`asterisk-1` … `asterisk-N`, each at a
/// fixed address), among the running services' names.
pub fn old_pool_services<'a>(services: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    services
        .into_iter()
        .filter(|s| s.strip_prefix("asterisk-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        .cloned()
        .collect()
}

/// One member of the pool: a replica of its compose service.
#[derive(Debug, Clone)]
pub struct Member {
    /// `asterisk-N`, N its compose replica number.
    pub name: String,
    /// Its container.
    pub running: Running,
    /// Docker's state of it (`running`, `exited`, …).
    pub state: String,
    /// Its address on the pool's network (none when it is neither running nor paused).
    pub address: Option<Ipv4Addr>,
}

/// Every member of the plan's pool that has a container, running or not, by replica number.
pub async fn pool_members(docker: &Docker, plan: &Plan) -> Result<Vec<Member>, ApplyError> {
    let mut members: Vec<(u32, Member)> = project_containers(docker, plan, true)
        .await?
        .into_iter()
        .filter(|c| c.service == POOL_SERVICE)
        .map(|c| {
            // A paused member is still in the orchestrator's DNS, so in the edge's list.
            let address = matches!(c.state.as_str(), "running" | "paused").then_some(c.address).flatten();
            (c.number, Member { name: member_name(c.number), running: c.running, state: c.state, address })
        })
        .collect();
    members.sort_by_key(|(n, _)| *n);
    Ok(members.into_iter().map(|(_, m)| m).collect())
}

/// A container of the plan's compose project.
struct ProjectContainer {
    service: String,
    number: u32,
    running: Running,
    state: String,
    address: Option<Ipv4Addr>,
}

/// The containers of the plan's compose project (`all`: stopped ones too).
async fn project_containers(docker: &Docker, plan: &Plan, all: bool) -> Result<Vec<ProjectContainer>, ApplyError> {
    let filters = HashMap::from([("label".to_string(), vec![format!("com.docker.compose.project={}", plan.name)])]);
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(all).filters(&filters).build()))
        .await
        .map_err(|source| ApplyError::Api { doing: "listing containers".into(), source })?;
    let network = format!("{}_{}", plan.name, crate::render::compose::CLUSTER_NETWORK_NAME);
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let id = c.id?;
            let labels = c.labels.unwrap_or_default();
            // `docker compose run` containers are no service's.
            if labels.get("com.docker.compose.oneoff").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
                return None;
            }
            let service = labels.get("com.docker.compose.service")?.clone();
            let number = labels.get("com.docker.compose.container-number").and_then(|n| n.parse().ok()).unwrap_or(1);
            let name = c.names.and_then(|n| n.first().cloned()).unwrap_or_else(|| id.clone());
            let restart_digest = labels.get(RESTART_DIGEST_LABEL).cloned();
            let address = c
                .network_settings
                .and_then(|s| s.networks)
                .and_then(|n| n.get(&network).and_then(|e| e.ip_address.clone()))
                .and_then(|a| a.parse().ok());
            let state = c.state.map(|s| s.to_string()).unwrap_or_default();
            let running = Running { id, name: name.trim_start_matches('/').to_string(), restart_digest };
            Some(ProjectContainer { service, number, running, state, address })
        })
        .collect())
}

/// Every service of the compose.yaml rendered in `out` with its restart digest label (none for
/// a service without one), in the file's order.
pub fn rendered_services(out: &Path) -> Vec<(String, Option<String>)> {
    let text = std::fs::read_to_string(out.join(crate::render::templates::COMPOSE_YAML)).unwrap_or_default();
    services_of(&text)
}

/// [`rendered_services`] of a compose file's text (its own layout: `services:` at the top, each
/// service's name indented by two spaces).
fn services_of(text: &str) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    let mut in_services = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty() {
            in_services = line == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            if !name.starts_with([' ', '#']) {
                out.push((name.trim_matches('"').to_string(), None));
                continue;
            }
        }
        let value = line.trim().strip_prefix(RESTART_DIGEST_LABEL).and_then(|v| v.strip_prefix(':'));
        if let (Some(v), Some(last)) = (value, out.last_mut()) {
            last.1 = Some(v.trim().trim_matches('"').to_string());
        }
    }
    out
}

/// Kamailio's control socket in the edge container.
const EDGE_CTL: &str = "unix:/run/kamailio/kamailio_ctl";

/// The pool as the running edge's dispatcher holds it: each destination's URI and flags
/// (`AP`: active and probed, …), from `kamcmd dispatcher.list`.
pub async fn loaded_pool(docker: &Docker, edge: &Running) -> Result<Vec<(String, String)>, ApplyError> {
    let out = kamcmd(docker, edge, "dispatcher.list").await?;
    let pool = crate::verify::cli_output::parse_dispatcher_list(&out);
    if pool.is_empty() {
        return Err(ApplyError::ReloadFailed {
            container: edge.name.clone(),
            output: format!("`kamcmd dispatcher.list` listed no destination: {}", out.trim()),
        });
    }
    Ok(pool)
}

/// The addresses of the running members, as the edge's dispatcher names them
/// (`sip:ADDRESS:PORT`).
pub fn member_uris(members: &[Member], sip_port: u16) -> Vec<String> {
    let mut uris: Vec<String> = members.iter().filter_map(|m| Some(format!("sip:{}:{sip_port}", m.address?))).collect();
    uris.sort();
    uris
}

/// Runs one kamcmd command in the edge container (10 s at most). kamcmd exits 0 when the RPC
/// fails, so an `error` in its output is a failure too.
async fn kamcmd(docker: &Docker, edge: &Running, command: &str) -> Result<String, ApplyError> {
    let cmd = ["timeout", "10", "kamcmd", "-s", EDGE_CTL, command];
    let (code, out, err) = exec_apart(docker, &edge.id, &cmd).await?;
    if code != 0 || out.trim_start().starts_with("error") || err.contains("error") {
        return Err(ApplyError::ReloadFailed {
            container: edge.name.clone(),
            output: format!("`kamcmd {command}` exited with {code}: {}", format!("{out}{err}").trim()),
        });
    }
    Ok(out)
}

/// What writing the users changed, user by user (ids only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersWritten {
    /// Users now in the database.
    pub total: usize,
    /// Users that were not there.
    pub added: Vec<String>,
    /// Users that are gone (their registrations stay until they expire; nobody can log in).
    pub removed: Vec<String>,
    /// Users whose password (HA1 digest) changed.
    pub password_changed: Vec<String>,
    /// Users whose `max_contacts` changed.
    pub max_contacts_changed: Vec<String>,
    /// Users whose transport changed.
    pub transport_changed: Vec<String>,
}

impl UsersWritten {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !(self.added.is_empty()
            && self.removed.is_empty()
            && self.password_changed.is_empty()
            && self.max_contacts_changed.is_empty()
            && self.transport_changed.is_empty())
    }
}

/// One user as the database holds it: HA1 digest, max_contacts and transport (`-` for both: no
/// astrtc_user row), as [`crate::render::cluster::USER_ROW`] gives them.
type Stored = BTreeMap<String, (String, String, String)>;

/// Marks the lines of the old users in psql's output.
const ROW_MARK: &str = "astrtc-user ";

/// Writes the rendered users into the running database (`db` container), in one transaction:
/// the schema (tables created if missing), then `subscribers.sql` (users replaced as a whole).
/// Reads the users as they were inside the same transaction, to say what changed.
pub async fn write_users(docker: &Docker, db: &Running, plan: &Plan) -> Result<UsersWritten, ApplyError> {
    let schema = format!("--file={}/schema.sql", image::DB_CONFIG_DIR);
    let users = format!("--file={}/subscribers.sql", image::DB_CONFIG_DIR);
    use crate::render::cluster::{USER_ROW, USER_ROWS_FROM};
    let read = format!("--command=SELECT '{ROW_MARK}' || {USER_ROW} {USER_ROWS_FROM}");
    let cmd = [
        "psql",
        "--no-psqlrc",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        "--username=postgres",
        "--host=/run/postgresql",
        "--dbname=kamailio",
        "--tuples-only",
        "--no-align",
        "--single-transaction",
        schema.as_str(),
        read.as_str(),
        users.as_str(),
    ];
    let (code, out, err) = exec_apart(docker, &db.id, &cmd).await?;
    if code != 0 {
        // Only psql's error lines: its echo of a failed statement would show a digest.
        let errors: Vec<&str> =
            err.lines().filter(|l| l.contains("ERROR:") || l.contains("FATAL:") || l.contains("error:")).collect();
        return Err(ApplyError::UsersNotWritten {
            container: db.name.clone(),
            output: if errors.is_empty() { format!("psql exited with {code}") } else { errors.join("\n") },
        });
    }
    let before: Stored = out.lines().filter_map(|l| stored(l.strip_prefix(ROW_MARK)?)).collect();
    Ok(compare(&before, &wanted(plan)))
}

/// A user's row, split.
fn stored(row: &str) -> Option<(String, (String, String, String))> {
    let mut f = row.split(' ');
    let (user, ha1, max, transport) = (f.next()?, f.next()?, f.next()?, f.next()?);
    Some((user.to_string(), (ha1.to_string(), max.to_string(), transport.to_string())))
}

/// The users a plan puts in the database.
fn wanted(plan: &Plan) -> Stored {
    plan.endpoints.iter().filter_map(|e| stored(&crate::render::cluster::user_row(plan, e))).collect()
}

/// What going from `before` to `after` changes.
fn compare(before: &Stored, after: &Stored) -> UsersWritten {
    let mut w = UsersWritten { total: after.len(), ..Default::default() };
    for (user, (ha1, max, transport)) in after {
        match before.get(user) {
            None => w.added.push(user.clone()),
            Some((old_ha1, old_max, old_transport)) => {
                // (A row from before the column, or none: set now, not changed.)
                if old_transport != transport && old_transport != "any" && old_transport != "-" {
                    w.transport_changed.push(user.clone());
                }
                if old_ha1 != ha1 {
                    w.password_changed.push(user.clone());
                }
                if old_max != max {
                    w.max_contacts_changed.push(user.clone());
                }
            }
        }
    }
    w.removed = before.keys().filter(|u| !after.contains_key(*u)).cloned().collect();
    w
}

/// The key the edge rendered in `out` sends (`edge/edge_key.cfg`'s `EDGE_KEY`): the key the
/// running edge was started with only if the last render of `out` was applied — the fallback
/// for an edge created before its [`EDGE_KEY_LABEL`].
pub fn deployed_edge_key(out: &Path) -> Option<String> {
    let text = std::fs::read_to_string(out.join(crate::render::cluster::EDGE_KEY_FILE)).ok()?;
    text.lines().find_map(|l| l.strip_prefix("#!define EDGE_KEY \"")?.strip_suffix('"').map(str::to_string))
}

/// The running edge of the plan's cluster, if one runs: its container's name and the fingerprint
/// of the key it was created with ([`EDGE_KEY_LABEL`]; none on an edge created before it).
pub async fn running_edge_key(docker: &Docker, plan: &Plan) -> Result<Option<(String, Option<String>)>, ApplyError> {
    let labels = vec![format!("com.docker.compose.project={}", plan.name), "com.docker.compose.service=edge".into()];
    let filters = HashMap::from([("label".to_string(), labels)]);
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().filters(&filters).build()))
        .await
        .map_err(|source| ApplyError::Api { doing: "listing containers".into(), source })?;
    Ok(list.into_iter().next().map(|c| {
        let name = c.names.and_then(|n| n.first().cloned()).unwrap_or_default();
        let sha1 = c.labels.and_then(|l| l.get(EDGE_KEY_LABEL).cloned());
        (name.trim_start_matches('/').to_string(), sha1)
    }))
}

/// Whether the plan changes the edge's key from the one whose fingerprint is `sent` (the running
/// edge's, [`crate::render::cluster::edge_key_fingerprint`]) with no rotation holding it —
/// `sent` is neither the new key's nor the new previous one's: the pool, reloaded before the
/// edge restarts, would refuse every call the running edge sends until it had restarted. A
/// rotation finished (`--finish-rotation`) before it was applied, or a key edited by hand.
pub fn unstaged_key_change(sent: &str, cluster: &crate::plan::Cluster) -> bool {
    let print = crate::render::cluster::edge_key_fingerprint;
    unheld(
        sent,
        &print(cluster.edge_key.expose()),
        cluster.edge_key_previous.as_ref().map(|p| print(p.expose())).as_deref(),
    )
}

fn unheld(sent: &str, key: &str, previous: Option<&str>) -> bool {
    sent != key && previous != Some(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_key_is_read_from_the_rendered_file_and_an_unheld_change_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(deployed_edge_key(dir.path()), None, "no render yet");
        std::fs::create_dir(dir.path().join("edge")).unwrap();
        let file = dir.path().join(crate::render::cluster::EDGE_KEY_FILE);
        std::fs::write(&file, "# the key\n#!define EDGE_KEY \"oldKey0123\"\n").unwrap();
        assert_eq!(deployed_edge_key(dir.path()).as_deref(), Some("oldKey0123"));
        std::fs::write(&file, "#!define EDGE_KEY \"\"\n").unwrap();
        assert_eq!(deployed_edge_key(dir.path()).as_deref(), Some(""), "an empty key is a key");
        std::fs::write(&file, "#!define EDGE_KEYS \"x\"\n").unwrap();
        assert_eq!(deployed_edge_key(dir.path()), None, "another define");
        // The same key, a rotation holding the running key, the rotation's finish: held. A
        // finish before its rotation was applied, a key edited by hand: not held.
        assert!(!unheld("a", "a", None));
        assert!(!unheld("a", "b", Some("a")));
        assert!(!unheld("b", "b", Some("a")));
        assert!(unheld("a", "b", None));
        assert!(unheld("a", "c", Some("b")));
    }

    #[test]
    fn each_service_gets_its_own_label() {
        let compose = "# head\nname: x\nservices:\n  # the db\n  \"db\":\n    image: a\n    labels:\n      \
                       io.astrtc.restart-digest: \"d1\"\n  relay:\n    image: b\n  edge:\n    labels:\n      \
                       io.astrtc.restart-digest: e1\nvolumes:\n  db-data:\n";
        assert_eq!(
            services_of(compose),
            vec![
                ("db".to_string(), Some("d1".to_string())),
                ("relay".to_string(), None),
                ("edge".to_string(), Some("e1".to_string())),
            ]
        );
    }

    #[test]
    fn a_pool_from_before_it_was_one_service_is_told_apart() {
        let names: Vec<String> =
            ["asterisk", "asterisk-1", "asterisk-12", "asterisk-x", "asterisk-", "db", "pool-watch"]
                .map(String::from)
                .into();
        assert_eq!(old_pool_services(&names), ["asterisk-1", "asterisk-12"]);
        assert!(old_pool_services(&names[..1]).is_empty());
    }

    #[test]
    fn added_removed_and_changed_users_are_told_apart() {
        let s = |v: &[&str]| -> Stored { v.iter().filter_map(|row| stored(row)).collect() };
        let before = s(&["a h1 1 udp", "b h2 1 udp", "c h3 1 udp", "e h5 1 tls", "f h6 1 any", "g h7 - -"]);
        let after =
            s(&["a h1 1 udp", "b h9 1 udp", "c h3 2 udp", "d h4 1 wss", "e h5 1 udp", "f h6 1 tls", "g h7 1 wss"]);
        let w = compare(&before, &after);
        assert_eq!(w.total, 7);
        assert_eq!(w.added, ["d"]);
        assert!(w.removed.is_empty());
        assert_eq!(w.password_changed, ["b"]);
        assert_eq!(w.max_contacts_changed, ["c", "g"]);
        assert_eq!(
            w.transport_changed,
            ["e"],
            "a transport from before the column (any) or none (-) is set, not changed"
        );
        assert!(w.changed());
        let w = compare(&after, &before);
        assert_eq!(w.removed, ["d"]);
        assert!(!compare(&before, &before).changed());
    }
}
