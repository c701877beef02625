//! `topology` and `[cluster]`: the pool's size and network, the edge's probe interval, the relay's
//! control port and address, the bundled database and its password (secrets file), the edge's,
//! relay's and database's image references.
//!
//! Owns: refusing what a cluster would silently ignore. The edge (Kamailio) and the relay
//! (rtpengine) take over what one Asterisk did for clients, so settings that only Asterisk's own
//! client-facing side reads — `[turn]`, `performance.wss_sessions`, `codec_preference = "spec"`,
//! SIP over TLS, bridge networking, NAT rewriting, ACME, Asterisk's own STUN/TURN, the guard and
//! `/metrics` — are refused with a cluster rather than dropped. The database password is held to
//! the URL-unreserved characters, so it can be written into a PostgreSQL URL, a pgpass line, SQL
//! and Kamailio's config without quoting; the database lives at an IPv4 address in the pool's
//! subnet, so no URL ever needs IPv6 brackets.

use std::net::{IpAddr, Ipv4Addr};

use super::super::secrets::Secrets;
use super::super::source::{KeyPath, Problem};
use super::super::valid::{Cluster, Secret};
use super::super::{defaults, ClusterSpec, CodecPreference, DatabaseMode, NetworkMode, Spec, TlsMode};
use super::rules::image_reference;
use super::{mask, p, parse_cidr, MIN_PORT};

/// The cluster's image keys: (key, its value in `[cluster]`, its default).
type ImageKey = (&'static str, fn(&ClusterSpec) -> &Option<String>, &'static str);
const CLUSTER_IMAGE_KEYS: [ImageKey; 3] = [
    ("cluster.edge_image", |c| &c.edge_image, crate::image::EDGE_IMAGE),
    ("cluster.relay_image", |c| &c.relay_image, crate::image::RELAY_IMAGE),
    ("cluster.db_image", |c| &c.db_image, crate::image::DB_IMAGE),
];

/// The most Asterisk servers a pool may have.
pub const MAX_POOL_SIZE: i64 = 50;
/// The database's host number in the subnet (the edge, its gateway, is `.1`).
pub const DATABASE_HOST: u32 = 2;

/// Whether a database password is safe everywhere it is written: 32-128 characters of
/// `A-Z a-z 0-9 - _ . ~` (RFC 3986's unreserved set).
pub fn database_password(s: &str) -> Result<(), String> {
    if !(32..=128).contains(&s.len()) {
        return Err(format!("the database password is {} characters; it must be 32-128", s.len()));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.~".contains(*c))) {
        return Err(format!(
            "the database password contains {c:?}; use only A-Z a-z 0-9 - _ . ~ (it goes into a URL and SQL unquoted)"
        ));
    }
    Ok(())
}

/// Whether the pool's key for the edge is safe everywhere it is written: 32-128 letters and
/// digits. It goes into a Kamailio string, an Asterisk `[globals]` value and a dialplan
/// comparison, and the pool compares it with the header's value filtered to the same letters
/// and digits, so nothing in it can change those files or that comparison.
pub fn edge_key(s: &str) -> Result<(), String> {
    if !(32..=128).contains(&s.len()) {
        return Err(format!("the edge's key is {} characters; it must be 32-128", s.len()));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_alphanumeric()) {
        return Err(format!("the edge's key contains {c:?}; use only A-Z a-z 0-9"));
    }
    Ok(())
}

/// The cluster, `Some(None)` for one Asterisk; `None` when invalid.
/// The longest `tls.domain` a cluster takes (Kamailio's `domain` columns are VARCHAR(64)).
const MAX_DOMAIN: usize = 64;

pub(super) fn cluster(
    spec: &Spec,
    secrets: &Secrets,
    v: &mut Vec<Problem>,
    s: &mut Vec<Problem>,
) -> Option<Option<Cluster>> {
    if !spec.is_cluster() {
        if spec.cluster.is_some() {
            v.push(
                p("cluster", "[cluster] is only read with topology = \"cluster\"")
                    .help("add topology = \"cluster\" at the top of the spec, or remove [cluster]"),
            );
            return None;
        }
        return Some(None);
    }
    let before = (v.len(), s.len());
    refuse_single_only(spec, v);
    let c = spec.cluster.clone().unwrap_or_default();
    // The users' realm goes into Kamailio's tables, whose domain columns hold 64 characters: a
    // longer one would stop the database from loading the users (the stack never gets healthy).
    if let Some(domain) = spec.tls.domain.as_deref().filter(|d| d.len() > MAX_DOMAIN) {
        v.push(
            p("tls.domain", format!("{} characters; a cluster's database holds at most {MAX_DOMAIN}", domain.len()))
                .help("use a shorter name for the edge's domain"),
        );
    }

    let pool_size = c.pool_size.unwrap_or(defaults::POOL_SIZE);
    if !(1..=MAX_POOL_SIZE).contains(&pool_size) {
        v.push(p("cluster.pool_size", format!("{pool_size} is outside 1-{MAX_POOL_SIZE}")));
    }
    let subnet_text = c.subnet.clone().unwrap_or_else(|| defaults::CLUSTER_SUBNET.to_string());
    let subnet = match parse_cidr(&subnet_text) {
        Ok((IpAddr::V4(base), prefix)) if (16..=28).contains(&prefix) => Some((base, prefix)),
        Ok((IpAddr::V4(_), prefix)) => {
            v.push(p("cluster.subnet", format!("/{prefix} is outside /16-/28")));
            None
        }
        Ok((IpAddr::V6(_), _)) => {
            v.push(
                p("cluster.subnet", format!("{subnet_text:?} is IPv6; the pool's network is IPv4"))
                    .help("e.g. \"172.29.0.0/24\""),
            );
            None
        }
        Err(e) => {
            v.push(p("cluster.subnet", e).help("e.g. \"172.29.0.0/24\""));
            None
        }
    };
    let mut addresses = None;
    if let (Some((base, prefix)), true) = (subnet, (1..=MAX_POOL_SIZE).contains(&pool_size)) {
        // The members take their addresses from the upper half (Docker's `ip_range`), less the
        // subnet's broadcast address and the pool watcher's; the fixed ones are in the lower half.
        let net = u32::from(base) & mask(prefix);
        let half = 1u32 << (31 - prefix);
        let room = half - 2;
        if pool_size as u32 > room {
            v.push(p("cluster.subnet", format!("/{prefix} has no room for {pool_size} pool members")).help(format!(
                "members take addresses from the subnet's upper half, {room} of them (one more is the pool \
                 watcher's): use a larger network or a smaller pool"
            )));
        } else {
            addresses = Some((
                format!("{}/{prefix}", Ipv4Addr::from(net)),
                Ipv4Addr::from(net + 1),
                Ipv4Addr::from(net + DATABASE_HOST),
                format!("{}/{}", Ipv4Addr::from(net + half), prefix + 1),
            ));
        }
    }

    let probe = c.probe_seconds.unwrap_or(defaults::PROBE_SECONDS);
    if !(1..=60).contains(&probe) {
        v.push(
            p("cluster.probe_seconds", format!("{probe} is outside 1-60"))
                .help("a member that stops answering takes no new calls after about this many seconds"),
        );
    }
    let natping = c.natping_seconds.unwrap_or(defaults::NATPING_SECONDS);
    if !(5..=300).contains(&natping) {
        v.push(p("cluster.natping_seconds", format!("{natping} is outside 5-300")).help(
            "the edge sends a keepalive to each phone behind a NAT this often; many NATs forget an idle UDP \
             mapping after 30 s",
        ));
    }
    let flood = c.flood_requests_per_second.unwrap_or(defaults::FLOOD_REQUESTS_PER_SECOND);
    if !(10..=100_000).contains(&flood) {
        v.push(p("cluster.flood_requests_per_second", format!("{flood} is outside 10-100000")).help(
            "an address sending more requests a second than this has them dropped (UDP) or is banned for \
             security.ban_seconds (over a connection); put trusted senders of many requests in security.allow",
        ));
    }
    let control = c.relay_control_port.unwrap_or(defaults::RELAY_CONTROL_PORT);
    let control_port = match u16::try_from(control) {
        Ok(port) if control >= MIN_PORT => Some(port),
        _ => {
            v.push(p("cluster.relay_control_port", format!("{control} is outside {MIN_PORT}-65535")));
            None
        }
    };
    if let Some(port) = control_port {
        let n = &spec.network;
        let used = [
            ("network.sip_port", n.sip_port.unwrap_or(defaults::SIP_PORT)),
            ("network.wss_port", n.wss_port.unwrap_or(defaults::WSS_PORT)),
            ("network.http_port", n.http_port.unwrap_or(defaults::HTTP_PORT)),
            ("network.sip_tls_port", n.sip_tls_port.unwrap_or(defaults::SIP_TLS_PORT)),
        ];
        for (key, value) in used {
            if i64::from(port) == value {
                v.push(
                    p("cluster.relay_control_port", format!("port {port} is also {key}"))
                        .help("each listener on the host needs its own port"),
                );
            }
        }
        let (start, end) = (spec.rtp.start.unwrap_or(defaults::RTP_START), spec.rtp.end.unwrap_or(defaults::RTP_END));
        if (start..=end).contains(&i64::from(port)) {
            v.push(p("cluster.relay_control_port", format!("port {port} is inside the RTP range {start}-{end}")));
        }
    }
    let relay_address = match c.relay_address.or(spec.network.local_address) {
        Some(IpAddr::V4(a)) if !a.is_unspecified() && !a.is_loopback() && !a.is_multicast() => Some(IpAddr::V4(a)),
        Some(other) => {
            let key = if c.relay_address.is_some() { "cluster.relay_address" } else { "network.local_address" };
            v.push(p(key, format!("{other} cannot be the relay's address")).help(
                "an IPv4 address of this host that browsers and the pool reach (not loopback: ICE never picks it)",
            ));
            None
        }
        None => None,
    };
    let database = c.database.unwrap_or(DatabaseMode::Bundled);
    let images = CLUSTER_IMAGE_KEYS.map(|(key, set, default)| {
        let set = set(&c);
        let image = set.clone().unwrap_or_else(|| default.to_string());
        if let Err(e) = image_reference(&image) {
            v.push(p(key, e).help(format!("e.g. {default:?} or \"registry.example:5000/pbx/edge:1\"")));
        }
        image
    });
    // Each image under its own reference: `astrtc build` tags every build with its reference, so
    // two services sharing one would both run whichever was built last.
    let asterisk = spec.image.clone().unwrap_or_else(|| defaults::IMAGE.to_string());
    for (i, (key, _, _)) in CLUSTER_IMAGE_KEYS.iter().enumerate() {
        let earlier = std::iter::once(("image", &asterisk))
            .chain(CLUSTER_IMAGE_KEYS.iter().map(|(k, _, _)| *k).zip(images.iter()).take(i));
        if let Some((other, _)) = earlier.into_iter().find(|(_, image)| **image == images[i]) {
            v.push(
                p(key, format!("{:?} is also {other}", images[i]))
                    .help("each service needs an image of its own: `astrtc build` tags each build with its reference"),
            );
        }
    }

    let database_password = match secrets.cluster.as_ref().map(|c| c.database_password.as_str()) {
        None => {
            s.push(
                p("cluster", "topology = \"cluster\" needs [cluster] database_password here")
                    .help("run `astrtc secrets` to generate one"),
            );
            None
        }
        Some(pw) => match database_password(pw) {
            Ok(()) => Some(pw.to_string()),
            Err(e) => {
                s.push(
                    p("cluster.database_password", e).help("run `astrtc secrets` after removing it to generate one"),
                );
                None
            }
        },
    };

    let edge_key = match secrets.cluster.as_ref().map(|c| c.edge_key.as_deref()) {
        // No [cluster] at all is reported once, above.
        None => None,
        Some(None) => {
            s.push(p("cluster", "topology = \"cluster\" needs [cluster] edge_key here (the pool's key for the edge)").help(
                "run `astrtc secrets` to generate one (secrets files written before the pool checked the edge's key lack it)",
            ));
            None
        }
        Some(Some(key)) => match edge_key(key) {
            Ok(()) => Some(key.to_string()),
            Err(e) => {
                s.push(p("cluster.edge_key", e).help("run `astrtc secrets` after removing it to generate one"));
                None
            }
        },
    };

    let edge_key_previous = match secrets.cluster.as_ref().and_then(|c| c.edge_key_previous.as_deref()) {
        None => Some(None),
        Some(old) => match self::edge_key(old) {
            Err(e) => {
                s.push(p("cluster.edge_key_previous", e).help(
                    "remove it (`astrtc secrets --finish-rotation edge-key`): it only keeps the key before a rotation",
                ));
                None
            }
            Ok(()) if edge_key.as_deref() == Some(old) => {
                s.push(
                    p("cluster.edge_key_previous", "the previous key is the key itself")
                        .help("start a rotation with `astrtc secrets --rotate edge-key`, or remove the line"),
                );
                None
            }
            Ok(()) => Some(Some(old.to_string())),
        },
    };

    if (v.len(), s.len()) != before {
        return None;
    }
    let (subnet, edge_address, database_address, pool_range) = addresses?;
    let [edge_image, relay_image, db_image] = images;
    Some(Some(Cluster {
        pool_size: pool_size as u32,
        subnet,
        edge_address,
        database_address,
        pool_range,
        probe_seconds: probe as u32,
        natping_seconds: natping as u32,
        flood_requests_per_second: flood as u32,
        relay_control_port: control_port?,
        relay_address,
        database,
        database_password: Secret::new(database_password?),
        edge_key: Secret::new(edge_key?),
        edge_key_previous: edge_key_previous?.map(Secret::new),
        edge_image,
        relay_image,
        db_image,
    }))
}

/// Settings one Asterisk reads but a cluster has no place for (yet): refused, never dropped.
fn refuse_single_only(spec: &Spec, v: &mut Vec<Problem>) {
    let refuse = |key: &str, what: &str, help: &str, v: &mut Vec<Problem>| {
        v.push(p(key, format!("{what} is not used with topology = \"cluster\"")).help(help.to_string()));
    };
    if spec.turn.is_some() {
        refuse(
            "turn",
            "[turn]",
            "the relay (rtpengine) carries the media; remove [turn] or use topology = \"single\"",
            v,
        );
    }
    if spec.performance.wss_sessions.is_some() {
        refuse(
            "performance.wss_sessions",
            "performance.wss_sessions",
            "browsers connect to the edge (Kamailio), not to Asterisk; remove it",
            v,
        );
    }
    if spec.network.mode == Some(NetworkMode::Bridge) {
        refuse("network.mode", "network.mode = \"bridge\"", "the edge and the relay use host networking", v);
    }
    for (key, set) in [
        ("network.bridge_subnet", spec.network.bridge_subnet.is_some()),
        ("network.bridge_address", spec.network.bridge_address.is_some()),
        ("network.public_address", spec.network.public_address.is_some()),
        ("network.local_nets", spec.network.local_nets.is_some()),
        ("rtp.stun", spec.rtp.stun.is_some()),
        ("rtp.turn", spec.rtp.turn.is_some()),
        ("rtp.turn_username", spec.rtp.turn_username.is_some()),
    ] {
        if set {
            refuse(key, key, "not implemented for a cluster yet (README, \"Cluster topology\"); remove it", v);
        }
    }
    if spec.tls.mode == Some(TlsMode::Acme) {
        refuse(
            "tls.mode",
            "tls.mode = \"acme\"",
            "a cluster uses the local CA's certificate for now (README, \"Cluster topology\")",
            v,
        );
    }
    if spec.metrics.enabled == Some(true) {
        refuse("metrics.enabled", "metrics.enabled = true", "the pool's /metrics is not scraped yet; remove it", v);
    }
    if spec.security.guard == Some(true) {
        refuse(
            "security.guard",
            "security.guard = true",
            "the guard reads Asterisk's security log; in a cluster the edge authenticates and bans (ban_after, find_seconds, ban_seconds and allow apply there). Remove it",
            v,
        );
    }
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let at = |k: &str| KeyPath::parse("endpoints").index(i).key(k);
        if ep.id == crate::render::asterisk::EDGE_ENDPOINT {
            v.push(
                Problem::at(at("id"), format!("{:?} is the pool's endpoint for the edge in a cluster", ep.id))
                    .help("choose another id"),
            );
        }
        if ep.codec_preference == Some(CodecPreference::Spec) {
            v.push(
                Problem::at(
                    at("codec_preference"),
                    "codec_preference = \"spec\" is not used with topology = \"cluster\"",
                )
                .help("the edge passes the clients' offers through; remove it"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::secrets::ClusterSecrets;

    fn check(spec_text: &str, password: Option<&str>) -> (Option<Option<Cluster>>, Vec<String>) {
        let spec: Spec = toml::from_str(spec_text).unwrap();
        let secrets = Secrets {
            cluster: password.map(|p| ClusterSecrets {
                database_password: p.to_string(),
                edge_key: Some(KEY.to_string()),
                edge_key_previous: None,
            }),
            ..Default::default()
        };
        let (mut v, mut s) = (Vec::new(), Vec::new());
        let c = cluster(&spec, &secrets, &mut v, &mut s);
        (c, v.into_iter().chain(s).map(|p| format!("{}: {}", p.path, p.message)).collect())
    }

    const PW: &str = "abcdefghijklmnopqrstuvwxyz012345";
    const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

    #[test]
    fn edge_keys_are_letters_and_digits_and_long() {
        assert!(edge_key(KEY).is_ok());
        assert!(edge_key(&crate::spec::secrets::generate_password()).is_ok());
        for bad in [
            &KEY[..31],
            &format!("{KEY}-"),
            &format!("{KEY}\""),
            &format!("{KEY} "),
            &format!("{KEY}\n"),
            &"a".repeat(129),
        ] {
            assert!(edge_key(bad).is_err(), "{bad:?}");
        }
        let spec: Spec = toml::from_str("topology = \"cluster\"").unwrap();
        for (key, want) in
            [(None, "cluster: topology = \"cluster\" needs [cluster] edge_key"), (Some("short"), "cluster.edge_key:")]
        {
            let secrets = Secrets {
                cluster: Some(ClusterSecrets {
                    database_password: PW.to_string(),
                    edge_key: key.map(str::to_string),
                    edge_key_previous: None,
                }),
                ..Default::default()
            };
            let (mut v, mut s) = (Vec::new(), Vec::new());
            assert!(cluster(&spec, &secrets, &mut v, &mut s).is_none());
            let problems: Vec<String> = v.into_iter().chain(s).map(|p| format!("{}: {}", p.path, p.message)).collect();
            assert!(problems.iter().any(|p| p.starts_with(want)), "{key:?}: {problems:?}");
        }
    }

    #[test]
    fn a_cluster_gets_fixed_addresses_below_the_pools_range() {
        let (c, problems) =
            check("topology = \"cluster\"\n[cluster]\npool_size = 3\nsubnet = \"10.9.8.0/24\"", Some(PW));
        assert!(problems.is_empty(), "{problems:?}");
        let c = c.unwrap().unwrap();
        assert_eq!(
            (c.edge_address.to_string(), c.database_address.to_string()),
            ("10.9.8.1".into(), "10.9.8.2".into())
        );
        assert_eq!(c.pool_range, "10.9.8.128/25");
        // A /28 has room for 6 members (.24-.30 less the pool watcher's); .31 is its broadcast
        // address.
        let (c, problems) =
            check("topology = \"cluster\"\n[cluster]\npool_size = 6\nsubnet = \"10.9.8.16/28\"", Some(PW));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.unwrap().unwrap().pool_range, "10.9.8.24/29");
    }

    #[test]
    fn a_phone_over_tls_is_the_edges_and_its_port_is_kept_from_the_relay() {
        let spec = "topology = \"cluster\"\n[network]\nsip_tls_port = 5062\n\
                    [[endpoints]]\nid = \"3003\"\nkind = \"sip\"\ntransport = \"tls\"";
        let (c, problems) = check(spec, Some(PW));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(c.is_some_and(|c| c.is_some()));
        let spec = "topology = \"cluster\"\n[network]\nsip_tls_port = 5062\n[cluster]\nrelay_control_port = 5062";
        let (_, problems) = check(spec, Some(PW));
        assert!(
            problems.iter().any(|p| p == "cluster.relay_control_port: port 5062 is also network.sip_tls_port"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_domain_longer_than_the_database_holds_is_refused() {
        let long = format!("{}.example.org", "a".repeat(60));
        let (_, problems) = check(&format!("topology = \"cluster\"\n[tls]\ndomain = \"{long}\""), Some(PW));
        assert!(problems.iter().any(|p| p.starts_with("tls.domain: 72 characters")), "{problems:?}");
        let ok = format!("{}.example.org", "a".repeat(52));
        let (_, problems) = check(&format!("topology = \"cluster\"\n[tls]\ndomain = \"{ok}\""), Some(PW));
        assert!(problems.is_empty(), "64 characters fit: {problems:?}");
    }

    #[test]
    fn one_asterisk_has_no_cluster_and_cluster_keys_need_the_topology() {
        assert!(matches!(check("", None), (Some(None), ref p) if p.is_empty()));
        let (c, problems) = check("[cluster]\npool_size = 3", Some(PW));
        assert!(c.is_none() && problems[0].starts_with("cluster:"), "{problems:?}");
    }

    #[test]
    fn database_passwords_are_url_safe_and_long() {
        assert!(database_password(PW).is_ok());
        assert!(database_password("a-b_c.d~e0123456789012345678901234").is_ok());
        for bad in
            ["short", &format!("{PW}\""), &format!("{PW}@x"), &format!("{PW}:"), &format!("{PW}/"), &format!("{PW} ")]
        {
            assert!(database_password(bad).is_err(), "{bad:?}");
        }
        let (_, problems) = check("topology = \"cluster\"", None);
        assert!(problems.iter().any(|p| p.contains("database_password")), "{problems:?}");
    }

    #[test]
    fn what_a_cluster_would_ignore_is_refused() {
        let spec = "topology = \"cluster\"\n[performance]\nwss_sessions = 5\n[turn]\nmode = \"external\"\nhost = \"t.example\"\n\
                    [[endpoints]]\nid = \"edge\"\nkind = \"sip\"\ncodec_preference = \"spec\"";
        let (c, problems) = check(spec, Some(PW));
        assert!(c.is_none());
        for key in ["turn", "performance.wss_sessions", "endpoints[0].codec_preference", "endpoints[0].id"] {
            assert!(problems.iter().any(|p| p.starts_with(&format!("{key}:"))), "{key} not refused: {problems:?}");
        }
    }

    #[test]
    fn ipv6_and_full_subnets_are_refused() {
        let (_, problems) = check("topology = \"cluster\"\n[cluster]\nsubnet = \"fd00::/64\"", Some(PW));
        assert!(problems.iter().any(|p| p.starts_with("cluster.subnet:")), "{problems:?}");
        let (_, problems) =
            check("topology = \"cluster\"\n[cluster]\nsubnet = \"10.0.0.0/28\"\npool_size = 7", Some(PW));
        assert!(problems.iter().any(|p| p.contains("no room")), "{problems:?}");
        let (_, problems) = check("topology = \"cluster\"\n[cluster]\nrelay_address = \"::1\"", Some(PW));
        assert!(problems.iter().any(|p| p.starts_with("cluster.relay_address:")), "{problems:?}");
    }

    #[test]
    fn each_image_has_a_reference_of_its_own() {
        let (c, problems) =
            check("topology = \"cluster\"\n[cluster]\nedge_image = \"registry.example/edge:1\"", Some(PW));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.unwrap().unwrap().edge_image, "registry.example/edge:1");
        let shared = "topology = \"cluster\"\n[cluster]\nedge_image = \"x/one:1\"\nrelay_image = \"x/one:1\"";
        let (_, problems) = check(shared, Some(PW));
        assert!(
            problems.iter().any(|p| p == "cluster.relay_image: \"x/one:1\" is also cluster.edge_image"),
            "{problems:?}"
        );
        let asterisk = "topology = \"cluster\"\nimage = \"x/pbx:1\"\n[cluster]\ndb_image = \"x/pbx:1\"";
        let (_, problems) = check(asterisk, Some(PW));
        assert!(problems.iter().any(|p| p == "cluster.db_image: \"x/pbx:1\" is also image"), "{problems:?}");
        let (_, problems) = check("topology = \"cluster\"\n[cluster]\nedge_image = \"Bad Image\"", Some(PW));
        assert!(problems.iter().any(|p| p.starts_with("cluster.edge_image:")), "{problems:?}");
    }
}
