//! Which changes a running Asterisk can take by a reload, and which only by a restart: the one
//! rule `astrtc apply` (compose) and the chart (Kubernetes) both follow.
//!
//! Owns: the *restart view* of a deployment — everything in it that only a restart applies — and
//! its digest. Compose labels the Asterisk container with the digest (`io.astrtc.restart-digest`)
//! and the chart puts it in a pod annotation (`checksum/restart`), so a restart happens exactly
//! when the view changes: `apply` compares the running container's label with the new one; a
//! `helm upgrade` rolls the pod when the annotation changes. Every other change is reloaded in
//! place by `astrtc-reload` inside the container (images/asterisk/runtime), which maps each
//! changed file to its reload command.
//!
//! The rule is safe by default: a file this module does not know (a config added later) is part
//! of the view whole, so changing it restarts. Known reloadable files are left out whole; in
//! `pjsip.conf` only the transport and system sections are in the view (pjsip reloads endpoints,
//! AORs and auths, but never rebinds a transport), in `rtp.conf` only the RTP range (Asterisk
//! would reload the range too, but calls in progress hold ports of the old one, and the range is
//! published and firewalled as it stands).

use std::fmt::Write as _;

use md5::{Digest, Md5};

use super::Bundle;

/// How a changed config file reaches Asterisk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// A reload in place (calls go on); `astrtc-reload` runs the command.
    Reload(&'static str),
    /// Part of the file (or all of it) needs a restart: only that part is in the restart view.
    Partly(Part),
    /// The whole file is in the restart view.
    Restart,
}

/// Which part of a file is in the restart view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Sections whose `type` is one of these (pjsip.conf: transports, the system section).
    SectionsOfType(&'static [&'static str]),
    /// These keys, wherever they are (rtp.conf: the range).
    Keys(&'static [&'static str]),
}

/// How each config file under `asterisk/` is applied; unknown files restart.
pub fn apply_of(file: &str) -> Apply {
    match file {
        "pjsip.conf" => Apply::Partly(Part::SectionsOfType(&["transport", "system"])),
        "rtp.conf" => Apply::Partly(Part::Keys(&["rtpstart", "rtpend"])),
        "pjsip_auth.conf" | "pjsip_edge.conf" => Apply::Reload("module reload res_pjsip.so"),
        // A cluster's key for the edge (its SHA-1, a global extensions.conf includes): a new key
        // is taken by the dialplan's reload, so its rotation restarts no pool member.
        "extensions.conf" | "extensions_edge.conf" => Apply::Reload("dialplan reload"),
        "rtp_turn.conf" => Apply::Reload("module reload res_rtp_asterisk.so"),
        "prometheus.conf" | "prometheus_auth.conf" => Apply::Reload("module reload res_prometheus.so"),
        "logger.conf" => Apply::Reload("logger reload"),
        "features.conf" => Apply::Reload("module reload features"),
        "indications.conf" => Apply::Reload("module reload indications"),
        "cdr.conf" => Apply::Reload("module reload cdr"),
        "cel.conf" => Apply::Reload("module reload cel"),
        "ccss.conf" => Apply::Reload("module reload ccss"),
        "udptl.conf" => Apply::Reload("module reload udptl"),
        "acl.conf" => Apply::Reload("module reload acl"),
        "manager.conf" => Apply::Reload("module reload manager"),
        "pjproject.conf" => Apply::Reload("module reload res_pjproject.so"),
        _ => Apply::Restart,
    }
}

/// The command that reloads a changed file of `pjsip.conf` and `rtp.conf`'s reloadable parts.
pub fn reload_of_partly(file: &str) -> Option<&'static str> {
    match file {
        "pjsip.conf" => Some("module reload res_pjsip.so"),
        "rtp.conf" => Some("module reload res_rtp_asterisk.so"),
        _ => None,
    }
}

/// The sections of an Asterisk config file as `config.c` reads them (`[name]` headers, `key =
/// value` and `key => value` lines, `;` comments), in order; lines before any header belong to a
/// section named "".
pub fn sections(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = vec![(String::new(), Vec::new())];
    for raw in text.lines() {
        let line = raw.split(';').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.split(']').next().unwrap_or("").to_string();
            out.push((name, Vec::new()));
        } else if let Some((k, v)) = line.split_once('=') {
            let v = v.strip_prefix('>').unwrap_or(v);
            out.last_mut().expect("never empty").1.push((k.trim().to_string(), v.trim().to_string()));
        } else {
            // `#include` and the like: kept as a key of their own.
            out.last_mut().expect("never empty").1.push((line.to_string(), String::new()));
        }
    }
    out
}

/// The part of one file that is in the restart view.
fn view_of(name: &str, text: &str) -> Option<String> {
    let mut out = String::new();
    match apply_of(name) {
        Apply::Reload(_) => return None,
        Apply::Restart => out.push_str(text),
        Apply::Partly(Part::SectionsOfType(types)) => {
            for (section, keys) in sections(text) {
                let is = keys.iter().any(|(k, v)| k == "type" && types.contains(&v.as_str()));
                if is {
                    let _ = writeln!(out, "[{section}]");
                    for (k, v) in keys {
                        let _ = writeln!(out, "{k}={v}");
                    }
                }
            }
        }
        Apply::Partly(Part::Keys(wanted)) => {
            for (section, keys) in sections(text) {
                for (k, v) in keys.iter().filter(|(k, _)| wanted.contains(&k.as_str())) {
                    let _ = writeln!(out, "[{section}] {k}={v}");
                }
            }
        }
    }
    Some(out)
}

/// The restart view of the Asterisk configs in a bundle (`asterisk/*`), file by file, sorted.
pub fn config_view(bundle: &Bundle) -> String {
    let mut out = String::new();
    for (path, file) in bundle.files() {
        let Some(rest) = path.to_str().and_then(|p| p.strip_prefix("asterisk/")) else { continue };
        let text = String::from_utf8_lossy(&file.bytes);
        if let Some(view) = view_of(rest, &text) {
            let _ = writeln!(out, "==> {rest}\n{view}");
        }
    }
    out
}

/// Hex MD5 of a text (a change detector, not a security measure).
pub fn digest(text: &str) -> String {
    Md5::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PJSIP: &str = "[global]\ntype = global\n\n[transport-udp]\ntype = transport\nbind = 0.0.0.0:5060\n\n\
                         [3001]\ntype = endpoint\nallow = ulaw\n#include pjsip_auth.conf\n";

    #[test]
    fn only_transports_of_pjsip_conf_are_in_the_view() {
        let view = view_of("pjsip.conf", PJSIP).unwrap();
        assert_eq!(view, "[transport-udp]\ntype=transport\nbind=0.0.0.0:5060\n");
        let endpoint_changed = PJSIP.replace("allow = ulaw", "allow = alaw");
        assert_eq!(view_of("pjsip.conf", &endpoint_changed).unwrap(), view);
        let port_changed = PJSIP.replace("5060", "5070");
        assert_ne!(view_of("pjsip.conf", &port_changed).unwrap(), view);
    }

    #[test]
    fn the_rtp_range_is_in_the_view_and_stun_is_not() {
        let rtp = "[general]\nrtpstart = 10000\nrtpend = 20000\nstunaddr = a:3478\n";
        let view = view_of("rtp.conf", rtp).unwrap();
        assert_eq!(view_of("rtp.conf", &rtp.replace("a:3478", "b:3478")).unwrap(), view);
        assert_ne!(view_of("rtp.conf", &rtp.replace("20000", "20010")).unwrap(), view);
    }

    #[test]
    fn unknown_files_restart_and_reloadable_ones_are_left_out() {
        assert_eq!(view_of("new-thing.conf", "x = 1\n").unwrap(), "x = 1\n");
        assert_eq!(view_of("modules.conf", "noload = a.so\n").unwrap(), "noload = a.so\n");
        assert!(view_of("extensions.conf", "[ctx]\nexten => 1,1,Answer()\n").is_none());
        assert!(view_of("pjsip_auth.conf", "[a]\npassword = x\n").is_none());
    }
}
