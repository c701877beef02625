//! `[turn]`: the TURN relay browsers use — bundled (coturn beside Asterisk, on the host network)
//! or external — and its shared secret in the secrets file.
//!
//! Bundled coturn shares the host's ports with Asterisk, so its listeners and relay range must
//! not collide with Asterisk's listeners, the ACME responder or the RTP range. The relay refuses
//! private peers except Asterisk's addresses; those are gathered here (`network.local_address`,
//! `network.public_address`, the bridge address, `turn.allowed_peers`).

use std::net::IpAddr;

use super::super::secrets::Secrets;
use super::super::source::{KeyPath, Problem};
use super::super::valid::{BundledTurn, Network, Rtp, Secret, Tls, TurnService};
use super::super::{defaults, NetworkMode, Spec, TurnMode};
use super::{dns_name, p, password, simple_token, MIN_PORT};

/// The TURN service, `Some(None)` when the spec has no `[turn]`; `None` when it is invalid.
pub(super) fn turn(
    spec: &Spec,
    network: Option<&Network>,
    rtp: Option<&Rtp>,
    tls: Option<&Tls>,
    secrets: &Secrets,
    v: &mut Vec<Problem>,
    s: &mut Vec<Problem>,
) -> Option<Option<TurnService>> {
    let Some(t) = &spec.turn else { return Some(None) };
    let before = (v.len(), s.len());
    let mode = t.mode.unwrap_or(TurnMode::Bundled);
    let bundled = mode == TurnMode::Bundled;

    let host = match (&t.host, bundled) {
        (Some(h), _) => {
            if dns_name(h).is_err() && h.parse::<std::net::Ipv4Addr>().is_err() {
                v.push(
                    p("turn.host", format!("{h:?} is not a DNS name or IPv4 address"))
                        .help("the name clients reach the TURN server at, e.g. \"turn.example.com\""),
                );
            }
            h.to_ascii_lowercase()
        }
        (None, true) => tls.map(|t| t.domain.clone()).unwrap_or_default(),
        (None, false) => {
            v.push(
                p("turn", "mode = \"external\" needs host: the name clients reach your TURN server at")
                    .help("host = \"turn.example.com\""),
            );
            String::new()
        }
    };

    // Bundled coturn runs unprivileged; 443 for TLS is the one low port it may take (with a
    // capability), since firewalls that let nothing else out let HTTPS through.
    let port_rule = |key: &str, value: i64, tls: bool, v: &mut Vec<Problem>| -> Option<u16> {
        match u16::try_from(value) {
            Ok(0) | Err(_) => v.push(p(key, format!("{value} is not a port number"))),
            Ok(p) if !bundled || i64::from(p) >= MIN_PORT || (tls && p == 443) => return Some(p),
            Ok(_) => v.push(p(key, format!("{value} is below {MIN_PORT}")).help(if tls {
                "coturn runs unprivileged; use 443 (granted as a capability) or a port from 1024 up"
            } else {
                "coturn runs unprivileged; use a port from 1024 up (3478 is TURN's own)"
            })),
        }
        None
    };
    let port = port_rule("turn.port", t.port.unwrap_or(defaults::TURN_PORT), false, v);
    let tls_port = match t.tls_port.or(bundled.then_some(defaults::TURN_TLS_PORT)) {
        Some(value) => port_rule("turn.tls_port", value, true, v).map(Some),
        None => Some(None),
    };
    if let (Some(a), Some(Some(b))) = (port, tls_port) {
        if a == b {
            v.push(p("turn.tls_port", format!("port {b} is also turn.port")).help("TURN over TLS needs its own port"));
        }
    }

    let only_bundled = |key: &str, set: bool, v: &mut Vec<Problem>| {
        if set && !bundled {
            v.push(p(key, "only used with mode = \"bundled\" (your own TURN server has its own settings)"));
        }
    };
    only_bundled("turn.relay_start", t.relay_start.is_some(), v);
    only_bundled("turn.relay_end", t.relay_end.is_some(), v);
    only_bundled("turn.realm", t.realm.is_some(), v);
    only_bundled("turn.user_quota", t.user_quota.is_some(), v);
    only_bundled("turn.total_quota", t.total_quota.is_some(), v);
    only_bundled("turn.allowed_peers", t.allowed_peers.is_some(), v);

    let bundled_settings =
        if bundled { bundled_turn(spec, network, rtp, tls, port, tls_port.flatten(), v) } else { Some(None) };

    let secret = match secrets.turn.as_ref().and_then(|t| t.secret.as_ref()) {
        None => {
            s.push(
                p("turn", "the spec has a [turn] section but [turn] secret is missing here")
                    .help("run `astrtc secrets` to generate one"),
            );
            None
        }
        Some(secret) => match password(secret) {
            Err(e) => {
                s.push(p("turn.secret", e.replace("password", "secret")));
                None
            }
            Ok(()) if secret.len() < 32 => {
                s.push(p("turn.secret", format!("the secret is {} characters; it must be 32-128", secret.len())));
                None
            }
            Ok(()) => Some(secret.clone()),
        },
    };

    // Asterisk's own TURN use (rtp.turn, static credentials) cannot be the bundled server, which
    // accepts only credentials made with the secret.
    if let (true, Some(asterisk_turn), Some(port)) = (bundled, &spec.rtp.turn, port) {
        if asterisk_turn.eq_ignore_ascii_case(&format!("{host}:{port}")) {
            v.push(p("rtp.turn", "names the bundled TURN server, which accepts only short-lived credentials").help(
                "Asterisk needs no relay beside the bundled TURN server: remove rtp.turn and rtp.turn_username \
                 (they are for a TURN server Asterisk itself allocates on, with a fixed user)",
            ));
        }
    }

    if (v.len(), s.len()) != before {
        return None;
    }
    match (port, tls_port, bundled_settings, secret) {
        (Some(port), Some(tls_port), Some(bundled), Some(secret)) => {
            Some(Some(TurnService { mode, host, port, tls_port, bundled, secret: Secret::new(secret) }))
        }
        _ => None,
    }
}

/// Bundled coturn's relay range, realm, quotas and allowed peers; its ports checked against
/// everything else on the host network.
fn bundled_turn(
    spec: &Spec,
    network: Option<&Network>,
    rtp: Option<&Rtp>,
    tls: Option<&Tls>,
    port: Option<u16>,
    tls_port: Option<u16>,
    v: &mut Vec<Problem>,
) -> Option<Option<BundledTurn>> {
    let Some(t) = &spec.turn else { return Some(None) };
    let before = v.len();
    let start = t.relay_start.unwrap_or(defaults::TURN_RELAY_START);
    let end = t.relay_end.unwrap_or(defaults::TURN_RELAY_END);
    let range_port = |key: &str, value: i64, v: &mut Vec<Problem>| match u16::try_from(value) {
        Ok(p) if i64::from(p) >= MIN_PORT => Some(p),
        _ => {
            v.push(p(key, format!("{value} is outside {MIN_PORT}-65535")));
            None
        }
    };
    let relay = match (range_port("turn.relay_start", start, v), range_port("turn.relay_end", end, v)) {
        (Some(s), Some(e)) if s < e => Some((s, e)),
        (Some(s), Some(e)) => {
            v.push(p("turn.relay_start", format!("relay start {s} must be below relay end {e}")));
            None
        }
        _ => None,
    };
    // Everything that shares the host's ports with coturn.
    let mut taken: Vec<(&str, u16)> = Vec::new();
    if let Some(n) = network {
        taken.extend([("network.sip_port", n.sip_port), ("network.http_port", n.http_port)]);
        taken.extend([("network.wss_port", n.wss_port), ("network.sip_tls_port", n.sip_tls_port)]);
    }
    // The monitoring profile's Prometheus listens on the host's loopback, where coturn listens too.
    if spec.metrics_enabled() {
        let prometheus = spec.metrics.prometheus_port.unwrap_or(defaults::PROMETHEUS_PORT);
        if let Ok(pp) = u16::try_from(prometheus) {
            taken.push(("metrics.prometheus_port", pp));
        }
        let exporter = spec.metrics.exporter_port.unwrap_or(defaults::EXPORTER_PORT);
        if let Ok(ep) = u16::try_from(exporter) {
            taken.push(("metrics.exporter_port", ep));
        }
    }
    if let Some(acme) = tls.and_then(|t| t.acme.as_ref()) {
        if acme.challenge == super::super::AcmeChallenge::Http01 {
            taken.push(("tls.acme.http_port", acme.http_port));
        }
    }
    for (key, mine) in [("turn.port", port), ("turn.tls_port", tls_port)] {
        let Some(mine) = mine else { continue };
        if let Some((other, _)) = taken.iter().find(|(_, p)| *p == mine) {
            v.push(p(key, format!("port {mine} is also {other}")).help("coturn shares the host's ports with Asterisk"));
        }
        if let Some(r) = rtp.filter(|r| (r.start..=r.end).contains(&mine)) {
            v.push(p(key, format!("port {mine} lies inside the RTP range {}-{}", r.start, r.end)));
        }
        if let Some((s, e)) = relay.filter(|(s, e)| (*s..=*e).contains(&mine)) {
            v.push(p(key, format!("port {mine} lies inside the relay range {s}-{e}")));
        }
    }
    if let Some((s, e)) = relay {
        if let Some(r) = rtp.filter(|r| s <= r.end && r.start <= e) {
            v.push(
                p("turn.relay_start", format!("the relay range {s}-{e} overlaps the RTP range {}-{}", r.start, r.end))
                    .help("coturn and Asterisk share the host's ports: give each its own range"),
            );
        }
        for (key, listener) in &taken {
            if (s..=e).contains(listener) {
                v.push(p("turn.relay_start", format!("the relay range {s}-{e} contains {key} {listener}")));
            }
        }
    }
    let realm = match &t.realm {
        Some(r) => {
            if let Err(e) = simple_token(r, 128, ".-_") {
                v.push(p("turn.realm", e));
            }
            r.clone()
        }
        None => tls.map(|t| t.domain.clone()).unwrap_or_default(),
    };
    let quota = |key: &str, value: i64, max: u32, v: &mut Vec<Problem>| match u32::try_from(value) {
        Ok(n) if (1..=max).contains(&n) => n,
        _ => {
            v.push(p(key, format!("{value} is outside 1-{max}")));
            0
        }
    };
    let user_quota = quota("turn.user_quota", t.user_quota.unwrap_or(defaults::TURN_USER_QUOTA), 10_000, v);
    let total_quota = t.total_quota.map(|q| quota("turn.total_quota", q, 1_000_000, v));

    let mut allowed_peers: Vec<IpAddr> = Vec::new();
    for (i, ip) in t.allowed_peers.iter().flatten().enumerate() {
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            v.push(
                Problem::at(KeyPath::parse("turn.allowed_peers").index(i), format!("{ip}: the relay never sends here"))
                    .help("list Asterisk's own (private) addresses; loopback, 0.0.0.0 and multicast stay refused"),
            );
        } else if !allowed_peers.contains(ip) {
            allowed_peers.push(*ip);
        }
    }
    let mut external_ip = None;
    if let Some(n) = network {
        if let Some(nat) = &n.nat {
            for ip in [nat.local_address, Some(nat.public_address)].into_iter().flatten() {
                if !allowed_peers.contains(&ip) {
                    allowed_peers.push(ip);
                }
            }
            // Behind NAT the relayed addresses coturn reports must be the public one; with host
            // networking and a 1:1 NAT, mapped from the server's own address.
            external_ip = Some(match (n.mode, nat.local_address) {
                (NetworkMode::Host, Some(local)) => format!("{}/{local}", nat.public_address),
                _ => nat.public_address.to_string(),
            });
        }
        if let Some(b) = &n.bridge {
            if !allowed_peers.contains(&b.address) {
                allowed_peers.push(b.address);
            }
        }
    }
    match relay {
        Some((relay_start, relay_end)) if v.len() == before => Some(Some(BundledTurn {
            relay_start,
            relay_end,
            realm,
            user_quota,
            total_quota,
            allowed_peers,
            external_ip,
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::validate;
    use crate::spec::secrets::{MetricsSecrets, Secrets, TurnSecrets};
    use crate::spec::valid::Valid;
    use crate::spec::TurnMode;

    const SECRET: &str = "unit-test-turn-shared-secret-0123456789";

    fn check(spec: &str) -> Result<Valid, Vec<String>> {
        let text = format!("{spec}\n[[endpoints]]\nid = \"3001\"\nkind = \"sip\"\n");
        let parsed = crate::spec::parse("astrtc.toml", &text).unwrap();
        let mut secrets = Secrets::default();
        secrets.endpoints.insert("3001".into(), "unit-test-password-3001".into());
        secrets.turn = Some(TurnSecrets { password: None, secret: Some(SECRET.into()) });
        secrets.metrics = Some(MetricsSecrets { password: "unit-test-metrics-password".into() });
        validate(&parsed.spec, std::path::Path::new("."), &secrets)
            .map_err(|p| p.spec.iter().chain(&p.secrets).map(|p| format!("{}: {}", p.path, p.message)).collect())
    }

    #[test]
    fn bundled_defaults_come_from_the_deployment() {
        let v = check("[tls]\ndomain = \"pbx.example.test\"\n[network]\npublic_address = \"203.0.113.10\"\nlocal_address = \"10.0.0.5\"\n[turn]\n").unwrap();
        let t = v.turn.unwrap();
        assert_eq!(
            (t.mode, t.host.as_str(), t.port, t.tls_port),
            (TurnMode::Bundled, "pbx.example.test", 3478, Some(5349))
        );
        let b = t.bundled.unwrap();
        assert_eq!(
            (b.relay_start, b.relay_end, b.realm.as_str(), b.user_quota),
            (49152, 65535, "pbx.example.test", 12)
        );
        assert_eq!(b.allowed_peers, ["10.0.0.5".parse::<std::net::IpAddr>().unwrap(), "203.0.113.10".parse().unwrap()]);
        assert_eq!(b.external_ip.as_deref(), Some("203.0.113.10/10.0.0.5"));
        assert_eq!(t.secret.expose(), SECRET);
        // Bridge mode: the container's address is a peer; coturn (on the host) maps only the public one.
        let v = check(
            "[network]\nmode = \"bridge\"\npublic_address = \"203.0.113.10\"\n[rtp]\nstart = 10000\nend = 10099\n[turn]\n",
        )
        .unwrap();
        let b = v.turn.unwrap().bundled.unwrap();
        assert!(b.allowed_peers.contains(&"172.28.0.10".parse().unwrap()));
        assert_eq!(b.external_ip.as_deref(), Some("203.0.113.10"));
    }

    #[test]
    fn external_servers_need_a_host_and_take_no_coturn_settings() {
        let v = check("[turn]\nmode = \"external\"\nhost = \"turn.example.org\"\nport = 443\n").unwrap();
        let t = v.turn.unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls_port), ("turn.example.org", 443, None));
        assert!(t.bundled.is_none());
        let e = check("[turn]\nmode = \"external\"\n").unwrap_err();
        assert!(e[0].starts_with("turn: mode = \"external\" needs host"), "{e:?}");
        let e = check("[turn]\nmode = \"external\"\nhost = \"t.example.org\"\nrealm = \"x\"\nuser_quota = 3\n")
            .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().all(|p| p.contains("only used with mode = \"bundled\"")), "{e:?}");
    }

    #[test]
    fn bundled_ports_share_the_host_with_asterisk() {
        for (spec, key) in [
            ("[turn]\nport = 5060\n", "turn.port: port 5060 is also network.sip_port"),
            ("[turn]\ntls_port = 8089\n", "turn.tls_port: port 8089 is also network.wss_port"),
            ("[turn]\ntls_port = 5061\n", "turn.tls_port: port 5061 is also network.sip_tls_port"),
            ("[turn]\nport = 9090\n", "turn.port: port 9090 is also metrics.prometheus_port"),
            ("[turn]\nport = 9101\n", "turn.port: port 9101 is also metrics.exporter_port"),
            ("[turn]\nport = 12000\n", "turn.port: port 12000 lies inside the RTP range 10000-20000"),
            (
                "[turn]\nrelay_start = 19000\nrelay_end = 21000\n",
                "turn.relay_start: the relay range 19000-21000 overlaps",
            ),
            (
                "[turn]\nrelay_start = 5000\nrelay_end = 6000\n",
                "turn.relay_start: the relay range 5000-6000 contains network.sip_port",
            ),
            ("[turn]\ntls_port = 1023\n", "turn.tls_port: 1023 is below 1024"),
            ("[turn]\nport = 3478\ntls_port = 3478\n", "turn.tls_port: port 3478 is also turn.port"),
            ("[turn]\nallowed_peers = [\"0.0.0.0\"]\n", "turn.allowed_peers[0]: 0.0.0.0: the relay never sends here"),
            (
                "[rtp]\nturn = \"localhost:3478\"\nturn_username = \"a\"\n[turn]\n",
                "rtp.turn: names the bundled TURN server",
            ),
        ] {
            let e = check(spec).unwrap_err();
            assert!(e.iter().any(|p| p.starts_with(key)), "{spec}: {e:?}");
        }
        // 443 is the one low port bundled coturn takes (TURN over TLS through firewalls).
        assert_eq!(check("[turn]\ntls_port = 443\n").unwrap().turn.unwrap().tls_port, Some(443));
    }
}
