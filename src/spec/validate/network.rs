//! `[network]` and `[rtp]`: ports, the RTP range, host or bridge networking, NAT, STUN and TURN.

use std::net::IpAddr;

use super::super::secrets::Secrets;
use super::super::source::{KeyPath, Problem};
use super::super::valid::{Bridge, Nat, Network, Rtp, Secret, Turn};
use super::super::{defaults, NetworkMode, Spec};
use super::{host_port, in_v4_subnet, mask, p, parse_cidr, password, simple_token, MAX_BRIDGE_RTP_PORTS, MIN_PORT};

/// The RTP range, once it is valid.
pub(super) struct RtpRange {
    start: u16,
    end: u16,
}

/// Ports, the RTP range, network mode, bridge and NAT settings.
pub(super) fn network(spec: &Spec, v: &mut Vec<Problem>) -> Option<(Network, RtpRange)> {
    let net = &spec.network;
    let sip = net.sip_port.unwrap_or(defaults::SIP_PORT);
    let sip_tls = net.sip_tls_port.unwrap_or(defaults::SIP_TLS_PORT);
    let wss = net.wss_port.unwrap_or(defaults::WSS_PORT);
    let http = net.http_port.unwrap_or(defaults::HTTP_PORT);
    let start = spec.rtp.start.unwrap_or(defaults::RTP_START);
    let end = spec.rtp.end.unwrap_or(defaults::RTP_END);
    let port = |key: &str, value: i64, v: &mut Vec<Problem>| match u16::try_from(value) {
        Ok(p) if i64::from(p) >= MIN_PORT => Some(p),
        _ => {
            v.push(
                p(key, format!("{value} is outside {MIN_PORT}-65535"))
                    .help("Asterisk runs unprivileged in its container; ports below 1024 need a proxy in front"),
            );
            None
        }
    };
    let ports = (
        port("network.sip_port", sip, v),
        port("network.sip_tls_port", sip_tls, v),
        port("network.wss_port", wss, v),
        port("network.http_port", http, v),
        port("rtp.start", start, v),
        port("rtp.end", end, v),
    );
    let mut range_ok = false;
    if let (Some(_), Some(_), Some(_), Some(_), Some(_), Some(_)) = ports {
        range_ok = start < end;
        if !range_ok {
            v.push(p("rtp.start", format!("RTP start {start} must be below RTP end {end}")));
        }
        let named = [
            ("network.sip_port", sip),
            ("network.sip_tls_port", sip_tls),
            ("network.wss_port", wss),
            ("network.http_port", http),
        ];
        for (i, (ka, a)) in named.iter().enumerate() {
            for (kb, b) in &named[i + 1..] {
                if a == b {
                    v.push(p(kb, format!("port {b} is also {ka}")).help("each listener needs its own port"));
                }
            }
            if range_ok && (start..=end).contains(a) {
                v.push(
                    p(ka, format!("port {a} lies inside the RTP range {start}-{end}"))
                        .help("move the listener or the RTP range so they do not overlap"),
                );
            }
        }
    }

    let mode = net.mode.unwrap_or(NetworkMode::Host);
    let bridge = if mode == NetworkMode::Bridge {
        let count = end - start + 1;
        if range_ok && count > MAX_BRIDGE_RTP_PORTS {
            v.push(
                p(
                    "rtp.end",
                    format!(
                        "bridge mode publishes every RTP port through Docker's proxy; {start}-{end} is {count} ports, \
                         the limit is {MAX_BRIDGE_RTP_PORTS}"
                    ),
                )
                .help(format!(
                    "narrow the range (e.g. start = {start}, end = {}), or use network.mode = \"host\", \
                     which serves the full range with no proxy",
                    start + MAX_BRIDGE_RTP_PORTS - 1
                )),
            );
        }
        bridge(net.bridge_subnet.as_deref(), net.bridge_address, v)
    } else {
        if net.bridge_subnet.is_some() {
            v.push(p("network.bridge_subnet", "only used with network.mode = \"bridge\""));
        }
        if net.bridge_address.is_some() {
            v.push(p("network.bridge_address", "only used with network.mode = \"bridge\""));
        }
        None
    };
    if net.local_nets.is_some() && net.public_address.is_none() {
        v.push(p("network.local_nets", "only used together with network.public_address"));
    }
    let local_nets: Vec<String> = match &net.local_nets {
        Some(nets) => nets
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match parse_cidr(n) {
                // Normalised to "address/prefix", as Asterisk wants.
                Ok((addr, prefix)) => Some(format!("{addr}/{prefix}")),
                Err(e) => {
                    v.push(Problem::at(KeyPath::parse("network.local_nets").index(i), e));
                    None
                }
            })
            .collect(),
        None => defaults::LOCAL_NETS.iter().map(|n| n.to_string()).collect(),
    };
    if net.local_address.is_some() && net.public_address.is_none() {
        v.push(p("network.local_address", "only used together with network.public_address"));
    }
    if let (Some(local), Some(public)) = (net.local_address, net.public_address) {
        if local.is_ipv4() != public.is_ipv4() {
            v.push(p("network.local_address", "must be of the same IP version as network.public_address"));
        }
    }
    // In bridge mode the container's own address is known: the NAT forwards to it.
    let local_address = net.local_address.or_else(|| bridge.as_ref().map(|b| b.address));
    let nat = net.public_address.map(|public_address| Nat { public_address, local_nets, local_address });

    match ports {
        (Some(sip_port), Some(sip_tls_port), Some(wss_port), Some(http_port), Some(start), Some(end)) if range_ok => {
            let bridge_ok = mode == NetworkMode::Host || bridge.is_some();
            bridge_ok.then_some((
                Network { mode, sip_port, sip_tls_port, wss_port, http_port, nat, bridge },
                RtpRange { start, end },
            ))
        }
        _ => None,
    }
}

/// Bridge mode's subnet and fixed address.
fn bridge(subnet: Option<&str>, address: Option<IpAddr>, v: &mut Vec<Problem>) -> Option<Bridge> {
    let subnet = subnet.unwrap_or(defaults::BRIDGE_SUBNET);
    let addr = address.unwrap_or(defaults::BRIDGE_ADDRESS);
    match parse_cidr(subnet) {
        Err(e) => v.push(p("network.bridge_subnet", e)),
        Ok((IpAddr::V4(_), prefix)) if prefix > 29 => {
            v.push(p("network.bridge_subnet", "the subnet must be /29 or wider"))
        }
        Ok((IpAddr::V4(base), prefix)) => match addr {
            IpAddr::V4(a) if in_v4_subnet(a, base, prefix) => {
                let host = u32::from(a) & !mask(prefix);
                if host == 0 || host == !mask(prefix) || host == 1 {
                    v.push(p(
                        "network.bridge_address",
                        format!("{a} is the network, broadcast or gateway address of {subnet}"),
                    ));
                } else {
                    return Some(Bridge { subnet: subnet.to_string(), address: addr });
                }
            }
            _ => v.push(
                p("network.bridge_address", format!("{addr} is not inside {subnet}"))
                    .help("pick an address inside network.bridge_subnet"),
            ),
        },
        Ok(_) => v.push(p("network.bridge_subnet", "must be an IPv4 subnet")),
    }
    None
}

/// The RTP range with STUN and TURN; the TURN password is checked in the secrets file (`s`).
pub(super) fn rtp(
    spec: &Spec,
    network: Option<&(Network, RtpRange)>,
    secrets: &Secrets,
    v: &mut Vec<Problem>,
    s: &mut Vec<Problem>,
) -> Option<Rtp> {
    let mut ok = true;
    if let Some(stun) = &spec.rtp.stun {
        if let Err(e) = host_port(stun) {
            ok = false;
            v.push(p("rtp.stun", e).help("e.g. \"stun.example.org:3478\""));
        }
    }
    let turn = match (&spec.rtp.turn, &spec.rtp.turn_username) {
        (Some(address), user) => {
            if let Err(e) = host_port(address) {
                v.push(p("rtp.turn", e).help("e.g. \"turn.example.org:3478\""));
            }
            let username = match user {
                None => {
                    v.push(p("rtp", "rtp.turn is set but rtp.turn_username is missing"));
                    None
                }
                Some(u) => match simple_token(u, 64, "._@-") {
                    Err(e) => {
                        v.push(p("rtp.turn_username", e));
                        None
                    }
                    Ok(()) => Some(u.clone()),
                },
            };
            let password = match secrets.turn.as_ref().and_then(|t| t.password.as_ref()) {
                None => {
                    s.push(p("turn", "rtp.turn is set in the spec but [turn] password is missing here"));
                    None
                }
                Some(pw) => match password(pw) {
                    Err(e) => {
                        s.push(p("turn.password", e));
                        None
                    }
                    Ok(()) => Some(pw.clone()),
                },
            };
            match (host_port(address), username, password) {
                (Ok(()), Some(username), Some(password)) => {
                    Some(Some(Turn { address: address.clone(), username, password: Secret::new(password) }))
                }
                _ => None,
            }
        }
        (None, Some(_)) => {
            v.push(p("rtp.turn_username", "only used together with rtp.turn"));
            None
        }
        (None, None) => Some(None),
    };
    let (_, range) = network?;
    match (ok, turn) {
        (true, Some(turn)) => Some(Rtp { start: range.start, end: range.end, stun: spec.rtp.stun.clone(), turn }),
        _ => None,
    }
}
