//! The rules for single values: what a DNS name, an endpoint id, a password, a display name, an
//! image reference or a network may look like.
//!
//! Owns: the character classes. Anything a rule accepts is safe to write verbatim into Asterisk
//! configs, YAML, JSON and shell: no rule lets through a character such a reader could take for a
//! line break, a comment, a section, a separator or a quote. Free text (display names) is the one
//! place beyond ASCII, and there every Unicode control, format and line/paragraph separator is
//! refused as a class (categories Cc, Cf, Zl, Zp), not character by character.

use std::net::{IpAddr, Ipv4Addr};

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
pub fn simple_token(s: &str, max: usize, extra: &str) -> Result<(), String> {
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

/// Whether a reader of some output could take `c` for a line break, a control or an invisible
/// format character: Unicode categories Cc (controls, incl. NEL), Cf (format, e.g. zero-width
/// and bidi marks, BOM), Zl and Zp (U+2028, U+2029: YAML 1.1 breaks lines there), and every
/// whitespace but the ASCII space.
pub fn is_break_or_control(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    ) || (c.is_whitespace() && c != ' ')
}

/// Characters a display name may not contain besides breaks and controls: they could end the
/// quoted `callerid` value or a config line, start a comment or a section, or expand in a shell.
pub const DISPLAY_NAME_FORBIDDEN: &str = "\"<>;[]=#\\$&`{}";

/// A caller id name: 1-64 characters, none of which can break out of the quoted `callerid`
/// value or a config line ([`is_break_or_control`], [`DISPLAY_NAME_FORBIDDEN`]).
pub fn display_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().count() > 64 {
        return Err("display name must be 1-64 characters".into());
    }
    if let Some(bad) = s.chars().find(|c| is_break_or_control(*c) || DISPLAY_NAME_FORBIDDEN.contains(*c)) {
        return Err(format!("display name contains {bad:?}, which is not allowed"));
    }
    if s.starts_with(' ') || s.ends_with(' ') {
        return Err("display name must not start or end with a space".into());
    }
    Ok(())
}

/// A file path from the spec (`secrets`, `tls.ca_dir`, `tls.acme.ca_bundle`, `tls.acme.dns_hook`):
/// not empty, and without [`is_break_or_control`] characters. Paths are never written into a
/// config, but they are shown in messages and passed to the system, where a NUL ends the path
/// and a line break forges a line of output.
pub fn file_path(p: &std::path::Path) -> Result<(), String> {
    let s = p.to_string_lossy();
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(bad) = s.chars().find(|c| is_break_or_control(*c)) {
        return Err(format!("the path contains {bad:?}, which is not allowed"));
    }
    Ok(())
}

/// An e-mail address for the ACME account: `local@domain`, printable ASCII without quotes,
/// brackets, separators or shell characters, at most 254 characters.
pub fn email(s: &str) -> Result<(), String> {
    let ok = s.len() <= 254
        && s.split_once('@').is_some_and(|(l, d)| !l.is_empty() && dns_name(d).is_ok())
        && s.chars().all(|c| c.is_ascii_graphic() && !"\"<>;[]=#\\$&,'`{}()|*?!".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not an e-mail address"))
    }
}

/// An `https://` URL of printable ASCII without quotes, spaces or shell characters.
pub fn https_url(s: &str) -> Result<(), String> {
    let ok = s.starts_with("https://")
        && s.len() > 8
        && s.len() <= 2048
        && s.chars().all(|c| c.is_ascii_graphic() && !"\"<>\\`{}|^$;".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not an https:// URL"))
    }
}

/// Parses a `dns_resolvers` entry: `IP` (port 53) or `IP:PORT` (`[IPv6]:PORT`).
pub fn parse_resolver(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Some(std::net::SocketAddr::new(ip, 53));
    }
    s.parse::<std::net::SocketAddr>().ok().filter(|a| a.port() != 0)
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

/// The IPv4 netmask of a prefix length (`/24` → `255.255.255.0`).
pub fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// Whether `a` lies in the IPv4 network `base/prefix`.
pub fn in_v4_subnet(a: Ipv4Addr, base: Ipv4Addr, prefix: u8) -> bool {
    u32::from(a) & mask(prefix) == u32::from(base) & mask(prefix)
}
