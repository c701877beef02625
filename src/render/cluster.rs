//! The cluster's outputs (`topology = "cluster"`): `deploy/edge/` (Kamailio's `kamailio.cfg`,
//! `tls.cfg` and, secret, `database.cfg` and `edge_key.cfg`),
//! `deploy/relay/rtpengine.conf`, `deploy/db/` (Kamailio's schema, `pg_hba.conf` and, secret, the
//! users' HA1 digests and the database password) and `deploy/cluster/topology.mmd` (the topology
//! as a Mermaid diagram).
//!
//! Owns: the contexts of those templates, keeping secrets apart (the database password reaches
//! only `edge/database.cfg` and `db/password`, the endpoints' digests only `db/subscribers.sql`,
//! the pool's key for the edge only `edge/edge_key.cfg`, and its SHA-1 only the pool's
//! `asterisk/extensions_edge.conf`, each through a context of its own). Every value is one
//! validation restricted to characters that cannot end a Kamailio string, an SQL literal or a
//! Mermaid label (ids, DNS names, addresses, numbers, the URL-unreserved database password, the
//! edge's key of letters and digits); no passwords in clear anywhere: users are stored as HA1
//! digests.

use md5::{Digest, Md5};
use minijinja::context;
use minijinja::value::{Serde, Value};

use crate::image;
use crate::plan::Plan;

/// `edge/database.cfg` (secret): the database URL with the password.
pub const EDGE_DATABASE_FILE: &str = "edge/database.cfg";
/// `db/subscribers.sql` (secret): the users as HA1 digests.
pub const DB_SUBSCRIBERS_FILE: &str = "db/subscribers.sql";
/// `db/password` (secret): the edge's database password alone.
pub const DB_PASSWORD_FILE: &str = "db/password";
/// `edge/edge_key.cfg` (secret): the pool's key for the edge, as a Kamailio define.
pub const EDGE_KEY_FILE: &str = "edge/edge_key.cfg";
/// The header the edge puts the pool's key in, on every request it sends to a pool member (and
/// removes from every message it receives).
pub const EDGE_KEY_HEADER: &str = "X-Astrtc-Edge";
/// `cluster/topology.mmd`: the topology diagram.
pub const TOPOLOGY_FILE: &str = "cluster/topology.mmd";
/// The output directories that exist only in a cluster.
pub const DIRS: &[&str] = &["edge/", "relay/", "db/", "cluster/"];
/// PostgreSQL's port on the pool's network.
pub const DATABASE_PORT: u16 = 5432;

/// The cluster's own services whose containers carry a restart digest (as the pool's members do),
/// with the outputs only their restart applies: everything the edge reads but its certificate
/// (its config and the database URL: Kamailio reloads neither; the certificate is reloaded in
/// place, `tls.reload`, by the edge's entrypoint when its files change; its dispatcher list is
/// not rendered: the pool watcher writes it), nothing but its service for the pool watcher, the
/// relay's config, the
/// database's access rules, password and schema (a new astrtc's schema reaches a database that
/// `docker compose up -d` alone would leave as it was, while it starts an edge that reads the new
/// one; `astrtc apply` writes it first, then restarts the database once). Not in any:
/// `db/subscribers.sql`, which `astrtc apply` writes into the running database (the edge reads
/// the users from there). The digests of secret files are in a container label: anyone who can
/// read labels can read the files themselves (`docker exec`), and the password is 190 random bits.
pub const RESTART_VIEWS: &[(&str, &[&str])] = &[
    ("db", &["db/pg_hba.conf", "db/password", "db/schema.sql"]),
    ("relay", &["relay/"]),
    ("edge", &["edge/"]),
    ("pool-watch", &[]),
];
/// What of a file in a [`RESTART_VIEWS`] directory is in its view: the whole file, except
/// `edge/edge_key.cfg`, whose previous key (sent, during a rotation, beside the key) is left out:
/// finishing a rotation then restarts no edge — the running one goes on sending the previous key,
/// which no member takes any more, until it next starts.
pub fn restart_view_of<'a>(path: &str, text: &'a str) -> std::borrow::Cow<'a, str> {
    if path == EDGE_KEY_FILE {
        text.lines().filter(|l| l.starts_with("#!define EDGE_KEY \"")).map(|l| format!("{l}\n")).collect()
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Whether `path` is one of the cluster's outputs.
pub fn is_cluster_file(path: &str) -> bool {
    DIRS.iter().any(|d| path.starts_with(d))
}

/// The context of the public cluster files: the plan (no secret in it) and the paths in the
/// containers.
pub fn context(plan: &Plan) -> Value {
    context! {
        plan => Value::from(Serde(plan)),
        cluster => Value::from(Serde(&plan.cluster)),
        config_dir => image::EDGE_CONFIG_DIR,
        keys_dir => image::EDGE_KEYS_DIR,
        run_dir => image::EDGE_RUN_DIR,
        pool_list => image::POOL_LIST,
        tls_ciphers => super::asterisk::TLS_CIPHERS.join(":"),
        never_banned => never_banned(plan),
        flood_exempt => flood_exempt(plan),
        edge_key_header => EDGE_KEY_HEADER,
    }
}

/// The networks whose requests are never taken for a flood: those never banned, and the pool
/// (whose calls to users all come from its few addresses).
fn flood_exempt(plan: &Plan) -> Vec<String> {
    let mut nets = never_banned(plan);
    nets.extend(plan.cluster.as_ref().map(|c| c.subnet.clone()));
    nets
}

/// The networks the edge never bans: loopback, then `security.allow` (validated and normalised to
/// `address/prefix`, so each is one item of ipops' comma-separated list).
fn never_banned(plan: &Plan) -> Vec<String> {
    let mut nets = vec!["127.0.0.0/8".to_string(), "::1/128".to_string()];
    nets.extend(plan.security.allow.iter().cloned());
    nets
}

/// The context of `edge/database.cfg` and `db/password`: the password and the URL, nothing else.
pub fn secret_context(plan: &Plan) -> Value {
    let Some(c) = &plan.cluster else { return context! {} };
    context! {
        password => c.database_password.expose(),
        database_url => format!(
            "postgres://kamailio:{}@{}:{DATABASE_PORT}/kamailio",
            c.database_password.expose(), c.database_address
        ),
    }
}

/// The SHA-1 of the pool's key for the edge, in lower-case hex as Asterisk's `SHA1()` gives it:
/// what each pool member holds and compares the header's SHA-1 with (so a member holds no key,
/// and its check's expression holds only hex, whatever the header).
pub fn edge_key_sha1(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, key.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The edge container's label for its key (`io.astrtc.edge-key`, in the public compose.yaml):
/// SHA-256 of the key behind a prefix of astrtc's, so it tells which key an edge was created
/// with and is not the hash a pool member compares (that one stays in secret files).
pub fn edge_key_fingerprint(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("astrtc edge key label\n{key}").as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The context of `edge/edge_key.cfg`: the pool's key for the edge and, during a rotation, the
/// previous one, nothing else.
pub fn edge_key_context(plan: &Plan) -> Value {
    let c = plan.cluster.as_ref();
    context! {
        edge_key => c.map(|c| c.edge_key.expose()),
        edge_key_previous => c.and_then(|c| c.edge_key_previous.as_ref()).map(|k| k.expose()),
    }
}

/// One user as `astrtc apply` and `astrtc verify` read it back from the database:
/// `username ha1 max_contacts transport` (`-` for each of the last two when the user has no
/// `astrtc_user` row); put [`USER_ROWS_FROM`] after it.
pub const USER_ROW: &str = "s.username || ' ' || s.ha1 || ' ' || COALESCE(u.max_contacts::text, '-') || ' ' \
                            || COALESCE(u.transport, '-')";
/// Where [`USER_ROW`] reads from: every subscriber, by name.
pub const USER_ROWS_FROM: &str = "FROM subscriber s LEFT JOIN astrtc_user u ON u.username = s.username \
                                  ORDER BY s.username";

/// The [`USER_ROW`] the database holds for `e` once `plan` is written.
pub fn user_row(plan: &Plan, e: &crate::plan::Endpoint) -> String {
    format!(
        "{} {} {} {}",
        e.id,
        ha1(&e.id, &plan.tls.domain, e.password.expose()),
        e.max_contacts,
        e.transport.as_str()
    )
}

/// HA1 of RFC 2617 digest authentication: MD5 of `user:realm:password`, in hex.
pub fn ha1(user: &str, realm: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(format!("{user}:{realm}:{password}").as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The context of `db/subscribers.sql`: each endpoint as a user with its HA1 for the realm
/// browsers and phones authenticate in (the TLS domain), its `max_contacts` and its transport.
pub fn subscribers_context(plan: &Plan) -> Value {
    let realm = &plan.tls.domain;
    let subscribers: Vec<Value> = plan
        .endpoints
        .iter()
        .map(|e| {
            context! {
                username => &e.id,
                ha1 => ha1(&e.id, realm, e.password.expose()),
                max_contacts => e.max_contacts,
                transport => e.transport.as_str(),
            }
        })
        .collect();
    context! { realm => realm, subscribers => subscribers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha1_is_rfc_2617s() {
        // RFC 2617 section 3.5's example: Mufasa, testrealm@host.com, "Circle Of Life".
        assert_eq!(ha1("Mufasa", "testrealm@host.com", "Circle Of Life"), "939e7578ed9e3c518a452acee763bce9");
    }
}
