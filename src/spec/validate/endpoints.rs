//! `[dialplan]` and `[[endpoints]]`, with each endpoint's password from the secrets file.

use std::collections::BTreeSet;

use super::super::secrets::Secrets;
use super::super::source::{KeyPath, Problem};
use super::super::valid::{Dialplan, Endpoint, Secret, Transport};
use super::super::{defaults, CodecPreference, EndpointKind, SipTransport, Spec};
use super::{display_name, endpoint_id, p, password, simple_token, KNOWN_CODECS, WEBRTC_CODECS};

/// The dialplan context and the echo extension.
pub(super) fn dialplan(spec: &Spec, v: &mut Vec<Problem>) -> Option<Dialplan> {
    let before = v.len();
    let context = spec.dialplan.context.clone().unwrap_or_else(|| defaults::CONTEXT.into());
    if let Err(e) = simple_token(&context, 79, "_-") {
        v.push(p("dialplan.context", e));
    }
    let echo_extension = spec.dialplan.echo_extension.clone().unwrap_or_else(|| defaults::ECHO_EXTENSION.into());
    if let Err(e) = endpoint_id(&echo_extension) {
        v.push(p("dialplan.echo_extension", e));
    }
    (v.len() == before).then_some(Dialplan { context, echo_extension })
}

/// Every endpoint, with its defaults and password; problems with passwords go to `s` (they are
/// located in the secrets file).
pub(super) fn endpoints(
    spec: &Spec,
    secrets: &Secrets,
    v: &mut Vec<Problem>,
    s: &mut Vec<Problem>,
) -> Option<Vec<Endpoint>> {
    if spec.endpoints.is_empty() {
        v.push(
            p("endpoints", "no endpoints: add at least one [[endpoints]] table")
                .help("e.g.\n[[endpoints]]\nid = \"199\"\nkind = \"webrtc\""),
        );
        return None;
    }
    let echo = spec.dialplan.echo_extension.as_deref().unwrap_or(defaults::ECHO_EXTENSION);
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    let mut ok = true;
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let before = v.len();
        let base = KeyPath::parse("endpoints").index(i);
        let id_ok = endpoint_id(&ep.id);
        if let Err(e) = &id_ok {
            v.push(Problem::at(base.key("id"), e.clone()));
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
        let codecs = match &ep.codecs {
            Some(codecs) => {
                check_codecs(codecs, ep.kind, &base, v);
                codecs.clone()
            }
            None => match ep.kind {
                EndpointKind::Webrtc => defaults::WEBRTC_CODECS,
                EndpointKind::Sip => defaults::SIP_CODECS,
            }
            .iter()
            .map(|c| c.to_string())
            .collect(),
        };
        if let Some(name) = &ep.display_name {
            if let Err(e) = display_name(name) {
                v.push(Problem::at(base.key("display_name"), e));
            }
        }
        let max_contacts = ep.max_contacts.unwrap_or(defaults::MAX_CONTACTS);
        let max_contacts = match u32::try_from(max_contacts) {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                v.push(Problem::at(base.key("max_contacts"), format!("{max_contacts} is outside 1-100")));
                0
            }
        };
        let seconds = |key: &str, value: i64, v: &mut Vec<Problem>| match u32::try_from(value) {
            Ok(n) if n <= 86_400 => n,
            _ => {
                v.push(Problem::at(base.key(key), format!("{value} is outside 0-86400 seconds (0: never)")));
                0
            }
        };
        let default_timeout = match ep.kind {
            EndpointKind::Webrtc => defaults::RTP_TIMEOUT_WEBRTC,
            EndpointKind::Sip => defaults::RTP_TIMEOUT_SIP,
        };
        let rtp_timeout = seconds("rtp_timeout", ep.rtp_timeout.unwrap_or(default_timeout), v);
        let rtp_timeout_hold =
            seconds("rtp_timeout_hold", ep.rtp_timeout_hold.unwrap_or(defaults::RTP_TIMEOUT_HOLD), v);
        let transport = match (ep.kind, ep.transport) {
            (EndpointKind::Webrtc, None) => Transport::Wss,
            (EndpointKind::Webrtc, Some(_)) => {
                v.push(
                    Problem::at(base.key("transport"), "only kind = \"sip\" endpoints choose a transport")
                        .help("WebRTC endpoints always use WSS with DTLS-SRTP; remove the key"),
                );
                Transport::Wss
            }
            (EndpointKind::Sip, None | Some(SipTransport::Udp)) => Transport::Udp,
            (EndpointKind::Sip, Some(SipTransport::Tls)) => Transport::Tls,
        };
        // The password, unless the id itself is unusable (then it is not looked up).
        let password = if id_ok.is_ok() { endpoint_password(&ep.id, secrets, s) } else { None };
        match password {
            Some(password) if v.len() == before => out.push(Endpoint {
                id: ep.id.clone(),
                kind: ep.kind,
                transport,
                codecs,
                display_name: ep.display_name.clone().unwrap_or_else(|| ep.id.clone()),
                max_contacts,
                rtp_timeout,
                rtp_timeout_hold,
                codec_preference: ep.codec_preference.unwrap_or(CodecPreference::Client),
                password: Secret::new(password),
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn check_codecs(codecs: &[String], kind: EndpointKind, base: &KeyPath, v: &mut Vec<Problem>) {
    if codecs.is_empty() {
        v.push(Problem::at(base.key("codecs"), "needs at least one codec"));
    }
    let allowed = match kind {
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

/// The endpoint's password from the secrets file; a missing or unusable one is a problem there.
fn endpoint_password(id: &str, secrets: &Secrets, s: &mut Vec<Problem>) -> Option<String> {
    match secrets.endpoints.get(id) {
        None => {
            s.push(
                p("endpoints", format!("no password for endpoint {id:?}"))
                    .help("run `astrtc secrets` to generate passwords for new endpoints, or add one by hand"),
            );
            None
        }
        Some(pw) => match password(pw) {
            Err(e) => {
                s.push(Problem::at(KeyPath::parse("endpoints").key(id), e));
                None
            }
            Ok(()) => Some(pw.clone()),
        },
    }
}
