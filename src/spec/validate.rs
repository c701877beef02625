//! Semantic checks of a parsed spec and its secrets: everything serde cannot see (ranges,
//! collisions, names Asterisk and YAML can represent safely, missing passwords).
//!
//! Owns: the rules for every value that reaches a generated file. Anything that passes here is
//! safe to write verbatim into Asterisk configs, YAML and shell; renderers rely on it and do no
//! escaping of their own (compose YAML is JSON-escaped as a second line of defence). Returns all
//! problems at once; it never stops at the first.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use super::secrets::Secrets;
use super::source::{KeyPath, Problem};
use super::{AcmeChallenge, EndpointKind, NetworkMode, Spec, TlsMode};
use crate::plan::defaults;

/// Codecs astrtc's image builds, by their Asterisk names.
pub const KNOWN_CODECS: &[&str] = &["opus", "ulaw", "alaw", "g722", "gsm", "g726", "slin"];
/// Codecs browsers negotiate over WebRTC.
pub const WEBRTC_CODECS: &[&str] = &["opus", "ulaw", "alaw", "g722"];
/// Widest RTP range allowed in bridge mode. Docker publishes each UDP port through its own
/// userland proxy processes (measured: 100 ports took 1.8 s and 149 MiB to start, 500 ports
/// 11.4 s and 747 MiB); 200 ports carry 100 simultaneous calls. Use host mode for more.
pub const MAX_BRIDGE_RTP_PORTS: i64 = 200;
/// Lowest port astrtc will configure: Asterisk runs unprivileged in its container.
pub const MIN_PORT: i64 = 1024;

/// The checks' outcome for one input pair.
#[derive(Debug, Default)]
pub struct Problems {
    /// Problems located in the spec file.
    pub spec: Vec<Problem>,
    /// Problems located in the secrets file.
    pub secrets: Vec<Problem>,
}

impl Problems {
    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.spec.is_empty() && self.secrets.is_empty()
    }
}

fn p(path: &str, msg: impl Into<String>) -> Problem {
    Problem::at(KeyPath::parse(path), msg)
}

/// Checks a spec, and its secrets when given (render needs them; some commands do not).
pub fn validate(spec: &Spec, secrets: Option<&Secrets>) -> Problems {
    let mut out = Problems::default();
    let v = &mut out.spec;

    if let Some(name) = &spec.name {
        if let Err(e) = project_name(name) {
            v.push(p("name", e).help("use lowercase letters, digits, '-' and '_', starting with a letter or digit"));
        }
    }
    if let Some(image) = &spec.image {
        if let Err(e) = image_reference(image) {
            v.push(p("image", e).help("e.g. \"astrtc/asterisk:22.10.1\" or \"registry.example:5000/pbx/asterisk:1\""));
        }
    }
    if let Some(path) = &spec.secrets {
        if path.as_os_str().is_empty() {
            v.push(p("secrets", "must not be empty"));
        }
    }

    // Ports and RTP.
    let net = &spec.network;
    let sip = net.sip_port.unwrap_or(defaults::SIP_PORT);
    let wss = net.wss_port.unwrap_or(defaults::WSS_PORT);
    let http = net.http_port.unwrap_or(defaults::HTTP_PORT);
    let start = spec.rtp.start.unwrap_or(defaults::RTP_START);
    let end = spec.rtp.end.unwrap_or(defaults::RTP_END);
    let mut ports_ok = true;
    for (key, value) in [
        ("network.sip_port", sip),
        ("network.wss_port", wss),
        ("network.http_port", http),
        ("rtp.start", start),
        ("rtp.end", end),
    ] {
        if !(MIN_PORT..=65535).contains(&value) {
            ports_ok = false;
            v.push(
                p(key, format!("{value} is outside {MIN_PORT}-65535"))
                    .help("Asterisk runs unprivileged in its container; ports below 1024 need a proxy in front"),
            );
        }
    }
    if ports_ok {
        if start >= end {
            v.push(p("rtp.start", format!("RTP start {start} must be below RTP end {end}")));
        }
        let named = [("network.sip_port", sip), ("network.wss_port", wss), ("network.http_port", http)];
        for (i, (ka, a)) in named.iter().enumerate() {
            for (kb, b) in &named[i + 1..] {
                if a == b {
                    v.push(p(kb, format!("port {b} is also {ka}")).help("each listener needs its own port"));
                }
            }
            if start < end && (start..=end).contains(a) {
                v.push(
                    p(ka, format!("port {a} lies inside the RTP range {start}-{end}"))
                        .help("move the listener or the RTP range so they do not overlap"),
                );
            }
        }
    }

    // Network mode.
    let mode = net.mode.unwrap_or(NetworkMode::Host);
    if mode == NetworkMode::Bridge {
        let count = end - start + 1;
        if ports_ok && start < end && count > MAX_BRIDGE_RTP_PORTS {
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
        let subnet = net.bridge_subnet.as_deref().unwrap_or(defaults::BRIDGE_SUBNET);
        match parse_cidr(subnet) {
            Err(e) => v.push(p("network.bridge_subnet", e)),
            Ok((IpAddr::V4(base), prefix)) => {
                if prefix > 29 {
                    v.push(p("network.bridge_subnet", "the subnet must be /29 or wider"));
                } else {
                    let addr = net.bridge_address.unwrap_or(defaults::BRIDGE_ADDRESS);
                    match addr {
                        IpAddr::V4(a) if in_v4_subnet(a, base, prefix) => {
                            let host = u32::from(a) & !mask(prefix);
                            if host == 0 || host == !mask(prefix) || host == 1 {
                                v.push(p(
                                    "network.bridge_address",
                                    format!("{a} is the network, broadcast or gateway address of {subnet}"),
                                ));
                            }
                        }
                        _ => v.push(
                            p("network.bridge_address", format!("{addr} is not inside {subnet}"))
                                .help("pick an address inside network.bridge_subnet"),
                        ),
                    }
                }
            }
            Ok(_) => v.push(p("network.bridge_subnet", "must be an IPv4 subnet")),
        }
    } else {
        if net.bridge_subnet.is_some() {
            v.push(p("network.bridge_subnet", "only used with network.mode = \"bridge\""));
        }
        if net.bridge_address.is_some() {
            v.push(p("network.bridge_address", "only used with network.mode = \"bridge\""));
        }
    }
    if let Some(nets) = &net.local_nets {
        if net.public_address.is_none() {
            v.push(p("network.local_nets", "only used together with network.public_address"));
        }
        for (i, n) in nets.iter().enumerate() {
            if let Err(e) = parse_cidr(n) {
                v.push(Problem::at(KeyPath::parse("network.local_nets").index(i), e));
            }
        }
    }

    // STUN / TURN.
    if let Some(stun) = &spec.rtp.stun {
        if let Err(e) = host_port(stun) {
            v.push(p("rtp.stun", e).help("e.g. \"stun.example.org:3478\""));
        }
    }
    match (&spec.rtp.turn, &spec.rtp.turn_username) {
        (Some(turn), user) => {
            if let Err(e) = host_port(turn) {
                v.push(p("rtp.turn", e).help("e.g. \"turn.example.org:3478\""));
            }
            match user {
                None => v.push(p("rtp", "rtp.turn is set but rtp.turn_username is missing")),
                Some(u) => {
                    if let Err(e) = simple_token(u, 64, "._@-") {
                        v.push(p("rtp.turn_username", e));
                    }
                }
            }
        }
        (None, Some(_)) => v.push(p("rtp.turn_username", "only used together with rtp.turn")),
        (None, None) => {}
    }

    // TLS.
    if let Some(domain) = &spec.tls.domain {
        if let Err(e) = dns_name(domain) {
            v.push(
                p("tls.domain", e).help("the DNS name browsers use in wss://NAME:PORT/ws, e.g. \"pbx.example.com\""),
            );
        }
    }
    let acme_dns01 = spec.tls.mode == Some(TlsMode::Acme)
        && spec.tls.acme.as_ref().and_then(|a| a.challenge) == Some(AcmeChallenge::Dns01);
    if let Some(names) = &spec.tls.extra_names {
        let domain = spec.tls.domain.as_deref().unwrap_or(defaults::DOMAIN);
        let mut seen = BTreeSet::from([domain.to_ascii_lowercase()]);
        for (i, n) in names.iter().enumerate() {
            let path = KeyPath::parse("tls.extra_names").index(i);
            let wildcard = n.strip_prefix("*.");
            if let (Some(rest), true) = (wildcard, acme_dns01) {
                if let Err(e) = dns_name(rest) {
                    v.push(Problem::at(path, e));
                } else if !seen.insert(n.to_ascii_lowercase()) {
                    v.push(Problem::at(path, format!("{n} is listed twice")));
                }
            } else if wildcard.is_some() {
                v.push(Problem::at(path, format!("{n}: wildcard names need ACME with the dns-01 challenge")));
            } else if let Err(e) = dns_name(n) {
                v.push(Problem::at(path, e));
            } else if !seen.insert(n.to_ascii_lowercase()) {
                v.push(Problem::at(path, format!("{n} is listed twice (tls.domain counts too)")));
            }
        }
    }
    if let Some(dir) = &spec.tls.ca_dir {
        if dir.as_os_str().is_empty() {
            v.push(p("tls.ca_dir", "must not be empty"));
        }
    }

    match (spec.tls.mode.unwrap_or(TlsMode::SelfSigned), &spec.tls.acme) {
        (TlsMode::Acme, None) => v.push(
            p("tls", "mode = \"acme\" needs a [tls.acme] table with at least email")
                .help("[tls.acme]\nemail = \"ops@example.com\""),
        ),
        (TlsMode::SelfSigned, Some(_)) => {
            v.push(p("tls.acme", "only used with tls.mode = \"acme\""));
        }
        (TlsMode::Acme, Some(a)) => validate_acme(a, v),
        (TlsMode::SelfSigned, None) => {}
    }

    // Dialplan.
    if let Some(ctx) = &spec.dialplan.context {
        if let Err(e) = simple_token(ctx, 79, "_-") {
            v.push(p("dialplan.context", e));
        }
    }
    let echo = spec.dialplan.echo_extension.as_deref().unwrap_or(defaults::ECHO_EXTENSION);
    if let Some(ext) = &spec.dialplan.echo_extension {
        if let Err(e) = endpoint_id(ext) {
            v.push(p("dialplan.echo_extension", e));
        }
    }

    // Endpoints.
    if spec.endpoints.is_empty() {
        v.push(
            p("endpoints", "no endpoints: add at least one [[endpoints]] table")
                .help("e.g.\n[[endpoints]]\nid = \"199\"\nkind = \"webrtc\""),
        );
    }
    let mut ids = BTreeSet::new();
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let base = KeyPath::parse("endpoints").index(i);
        if let Err(e) = endpoint_id(&ep.id) {
            v.push(Problem::at(base.key("id"), e));
        } else if !ids.insert(ep.id.clone()) {
            v.push(
                Problem::at(base.key("id"), format!("endpoint id {:?} is used twice", ep.id))
                    .help("endpoint ids are SIP user names and extensions: each must be unique"),
            );
        } else if ep.id == echo {
            v.push(
                Problem::at(base.key("id"), format!("{:?} is the echo test extension", ep.id))
                    .help("pick another id, or move dialplan.echo_extension"),
            );
        }
        if let Some(codecs) = &ep.codecs {
            if codecs.is_empty() {
                v.push(Problem::at(base.key("codecs"), "needs at least one codec"));
            }
            let allowed = match ep.kind {
                EndpointKind::Webrtc => WEBRTC_CODECS,
                EndpointKind::Sip => KNOWN_CODECS,
            };
            let mut seen = BTreeSet::new();
            for (j, c) in codecs.iter().enumerate() {
                let cp = base.key("codecs").index(j);
                if !KNOWN_CODECS.contains(&c.as_str()) {
                    v.push(
                        Problem::at(cp, format!("unknown codec {c:?}"))
                            .help(format!("known codecs: {}", KNOWN_CODECS.join(", "))),
                    );
                } else if !allowed.contains(&c.as_str()) {
                    v.push(
                        Problem::at(cp, format!("browsers cannot use {c:?} over WebRTC"))
                            .help(format!("WebRTC codecs: {}", WEBRTC_CODECS.join(", "))),
                    );
                } else if !seen.insert(c) {
                    v.push(Problem::at(cp, format!("codec {c:?} is listed twice")));
                }
            }
        }
        if let Some(name) = &ep.display_name {
            if let Err(e) = display_name(name) {
                v.push(Problem::at(base.key("display_name"), e));
            }
        }
        if let Some(n) = ep.max_contacts {
            if !(1..=100).contains(&n) {
                v.push(Problem::at(base.key("max_contacts"), format!("{n} is outside 1-100")));
            }
        }
    }

    // Secrets.
    if let Some(secrets) = secrets {
        let s = &mut out.secrets;
        for ep in &spec.endpoints {
            if endpoint_id(&ep.id).is_err() {
                continue;
            }
            match secrets.endpoints.get(&ep.id) {
                None => s.push(
                    p("endpoints", format!("no password for endpoint {:?}", ep.id))
                        .help("run `astrtc secrets` to generate passwords for new endpoints, or add one by hand"),
                ),
                Some(pw) => {
                    if let Err(e) = password(pw) {
                        s.push(Problem::at(KeyPath::parse("endpoints").key(&ep.id), e));
                    }
                }
            }
        }
        if spec.rtp.turn.is_some() {
            match &secrets.turn {
                None => s.push(p("turn", "rtp.turn is set in the spec but [turn] password is missing here")),
                Some(t) => {
                    if let Err(e) = password(&t.password) {
                        s.push(p("turn.password", e));
                    }
                }
            }
        }
    }
    out
}

fn validate_acme(a: &super::AcmeSpec, v: &mut Vec<Problem>) {
    match &a.email {
        None => v.push(p("tls.acme", "email is required: the ACME CA sends expiry notices there")),
        Some(e) => {
            let ok = e.len() <= 254
                && e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && dns_name(d).is_ok())
                && !e.chars().any(|c| c.is_whitespace() || c.is_control() || "\"<>;[]=#\\$&,".contains(c));
            if !ok {
                v.push(p("tls.acme.email", format!("{e:?} is not an e-mail address")));
            }
        }
    }
    if let Some(d) = &a.directory {
        let ok = d.starts_with("https://") && d.len() > 8 && !d.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            v.push(p("tls.acme.directory", format!("{d:?} is not an https:// URL")));
        }
        if a.staging == Some(true) {
            v.push(p(
                "tls.acme.staging",
                "staging = true picks Let's Encrypt's staging directory; drop one of the two",
            ));
        }
    }
    if let Some(port) = a.http_port {
        if !(1..=65535).contains(&port) {
            v.push(p("tls.acme.http_port", format!("{port} is outside 1-65535")));
        }
    }
    let dns01 = a.challenge == Some(AcmeChallenge::Dns01);
    if a.dns_hook.is_some() && !dns01 {
        v.push(p("tls.acme.dns_hook", "only used with challenge = \"dns-01\""));
    }
    if let Some(resolvers) = &a.dns_resolvers {
        if !dns01 {
            v.push(p("tls.acme.dns_resolvers", "only used with challenge = \"dns-01\""));
        }
        if resolvers.is_empty() {
            v.push(p("tls.acme.dns_resolvers", "list at least one name server, or leave the key out"));
        }
        for (i, r) in resolvers.iter().enumerate() {
            if crate::spec::parse_resolver(r).is_none() {
                v.push(Problem::at(
                    KeyPath::parse("tls.acme.dns_resolvers").index(i),
                    format!("{r:?} is not an IP address or IP:PORT"),
                ));
            }
        }
    }
    if let Some(t) = a.dns_timeout {
        if !dns01 {
            v.push(p("tls.acme.dns_timeout", "only used with challenge = \"dns-01\""));
        }
        if !(1..=86_400).contains(&t) {
            v.push(p("tls.acme.dns_timeout", format!("{t} is outside 1-86400 seconds")));
        }
    }
    if let Some(d) = a.renew_before_days {
        if !(1..=365).contains(&d) {
            v.push(p("tls.acme.renew_before_days", format!("{d} is outside 1-365 days")));
        }
    }
}

/// A DNS name a certificate and a browser can use: 1-253 characters, labels of 1-63 letters,
/// digits and inner hyphens, at least one letter in the last label.
pub fn dns_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("{s:?} is not a DNS name (1-253 characters)"));
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("{s:?} is not a DNS name: each label must be 1-63 letters, digits or inner hyphens"));
        }
    }
    if s.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("{s:?} is not a DNS name (it looks like an IP address)"));
    }
    Ok(())
}

/// An endpoint id or extension: 1-40 ASCII letters, digits, `-` or `_`, not starting with `_`
/// (Asterisk reads a leading `_` as a pattern).
pub fn endpoint_id(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !s.starts_with(['_', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid endpoint id: use 1-40 letters, digits, '-' or '_', starting with a letter or digit"
        ))
    }
}

/// A token of letters, digits and the given punctuation, 1..=max long, starting alphanumeric.
fn simple_token(s: &str, max: usize, extra: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not allowed: use 1-{max} letters, digits or any of {extra:?}, starting with a letter or digit"
        ))
    }
}

/// Characters allowed in passwords besides letters and digits: none of them can end a value,
/// start a comment or a section in Asterisk configs, or need quoting in YAML or shell.
pub const PASSWORD_PUNCTUATION: &str = "-_.~+/!@%^*(),:?";

/// A SIP or TURN password: 16-128 characters of letters, digits and [`PASSWORD_PUNCTUATION`].
pub fn password(s: &str) -> Result<(), String> {
    if s.len() < 16 || s.len() > 128 {
        return Err(format!("password is {} characters; it must be 16-128", s.chars().count()));
    }
    if let Some(bad) = s.chars().find(|c| !c.is_ascii_alphanumeric() && !PASSWORD_PUNCTUATION.contains(*c)) {
        return Err(format!("password contains {bad:?}; allowed are letters, digits and {PASSWORD_PUNCTUATION}"));
    }
    Ok(())
}

/// A caller id name: up to 64 printable characters, none of which can break out of the quoted
/// `callerid` value or a config line.
pub fn display_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().count() > 64 {
        return Err("display name must be 1-64 characters".into());
    }
    if let Some(bad) = s.chars().find(|c| c.is_control() || "\"<>;[]=#\\$&".contains(*c)) {
        return Err(format!("display name contains {bad:?}, which is not allowed"));
    }
    Ok(())
}

/// A compose project name.
pub fn project_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid deployment name"))
    }
}

/// A Docker image reference: `[host[:port]/]path[:tag]`, lowercase path components.
pub fn image_reference(s: &str) -> Result<(), String> {
    let err = || Err(format!("{s:?} is not a valid image reference"));
    if s.is_empty() || s.len() > 255 || s.contains('@') {
        return err();
    }
    let (rest, tag) = match s.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (s, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return err();
        }
    }
    let mut parts: Vec<&str> = rest.split('/').collect();
    if parts.len() > 1 && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (h, port) = host.split_once(':').unwrap_or((host, "1"));
        if dns_name(h).is_err() && h.parse::<IpAddr>().is_err() || port.parse::<u16>().is_err() {
            return err();
        }
    }
    for comp in parts {
        let ok = !comp.is_empty()
            && comp.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && comp.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && comp.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !ok {
            return err();
        }
    }
    Ok(())
}

/// `host:port` with a DNS name or IPv4 address and a port.
pub fn host_port(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} must be host:port"));
    };
    if dns_name(host).is_err() && host.parse::<Ipv4Addr>().is_err() {
        return Err(format!("{host:?} is not a DNS name or IPv4 address"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port number")),
    }
}

/// Parses `address/prefix`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("{s:?} is not a network in CIDR form (e.g. 192.168.0.0/16)");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok((addr, prefix))
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn in_v4_subnet(a: Ipv4Addr, base: Ipv4Addr, prefix: u8) -> bool {
    u32::from(a) & mask(prefix) == u32::from(base) & mask(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for ok in ["localhost", "pbx.example.test", "a-b.c1.io", "x"] {
            assert!(dns_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a.b", "a..b", "a b", "a\nb", "x.com]", "1.2.3.4", "a_b.c", "*.x.com", &"a".repeat(64)] {
            assert!(dns_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_ids() {
        for ok in ["199", "3001", "alice", "a-b_c"] {
            assert!(endpoint_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_X.", "1 9", "1;9", "a]", "a=b", "a\n[b]", "é", &"1".repeat(41)] {
            assert!(endpoint_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(password("abcdefghijklmnop").is_ok());
        assert!(password("short").is_err());
        for c in ['\n', ';', '#', '"', '[', ']', '=', '$', '\\', ' ', '\''] {
            assert!(password(&format!("abcdefghijklmnop{c}")).is_err(), "{c:?}");
        }
    }

    #[test]
    fn image_references() {
        for ok in ["astrtc/asterisk:22", "asterisk", "localhost:5000/a/b:1.0", "reg.io/x_y:t"] {
            assert!(image_reference(ok).is_ok(), "{ok}");
        }
        for bad in ["Astrtc/x", "a:b:c", "a\nb", "x:", "a//b", "a:-t", "a@sha256:00"] {
            assert!(image_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_and_host_ports() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().1, 8);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
        assert!(host_port("stun.example.org:3478").is_ok());
        assert!(host_port("stun.example.org").is_err());
        assert!(host_port("a;b:1").is_err());
    }
}
