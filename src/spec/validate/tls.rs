//! `[tls]` and `[tls.acme]`: the certificate's names, the local CA's place, ACME settings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::super::source::{KeyPath, Problem};
use super::super::valid::{Acme, Tls};
use super::super::{defaults, AcmeChallenge, AcmeSpec, Spec, TlsMode};
use super::{dns_name, email, file_path, https_url, p, parse_resolver};

/// A path from the spec, relative to the spec's directory unless absolute.
pub(super) fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Names, the local CA directory and, in ACME mode, the ACME settings.
pub(super) fn tls(spec: &Spec, base_dir: &Path, v: &mut Vec<Problem>) -> Option<Tls> {
    let before = v.len();
    let domain = spec.tls.domain.as_deref().unwrap_or(defaults::DOMAIN);
    if let Err(e) = dns_name(domain) {
        v.push(p("tls.domain", e).help("the DNS name browsers use in wss://NAME:PORT/ws, e.g. \"pbx.example.com\""));
    }
    let mode = spec.tls.mode.unwrap_or(TlsMode::SelfSigned);
    let acme_dns01 =
        mode == TlsMode::Acme && spec.tls.acme.as_ref().and_then(|a| a.challenge) == Some(AcmeChallenge::Dns01);
    let domain = domain.to_ascii_lowercase();
    let mut names = vec![domain.clone()];
    let mut seen = BTreeSet::from([domain.clone()]);
    for (i, n) in spec.tls.extra_names.iter().flatten().enumerate() {
        let path = KeyPath::parse("tls.extra_names").index(i);
        let wildcard = n.strip_prefix("*.");
        let checked = match (wildcard, acme_dns01) {
            (Some(rest), true) => dns_name(rest),
            (Some(_), false) => Err(format!("{n}: wildcard names need ACME with the dns-01 challenge")),
            (None, _) => dns_name(n),
        };
        if let Err(e) = checked {
            v.push(Problem::at(path, e));
        } else if !seen.insert(n.to_ascii_lowercase()) {
            let also = if wildcard.is_some() { "" } else { " (tls.domain counts too)" };
            v.push(Problem::at(path, format!("{n} is listed twice{also}")));
        } else {
            names.push(n.to_ascii_lowercase());
        }
    }
    let ca_dir = spec.tls.ca_dir.as_deref().unwrap_or(Path::new(defaults::CA_DIR));
    if let Err(e) = file_path(ca_dir) {
        v.push(p("tls.ca_dir", e));
    }
    let acme = match (mode, &spec.tls.acme) {
        (TlsMode::Acme, None) => {
            v.push(
                p("tls", "mode = \"acme\" needs a [tls.acme] table with at least email")
                    .help("[tls.acme]\nemail = \"ops@example.com\""),
            );
            None
        }
        (TlsMode::SelfSigned, Some(_)) => {
            v.push(p("tls.acme", "only used with tls.mode = \"acme\""));
            None
        }
        (TlsMode::Acme, Some(a)) => acme(a, &names, base_dir, v),
        (TlsMode::SelfSigned, None) => None,
    };
    (v.len() == before).then(|| Tls { mode, domain, names, ca_dir: resolve(base_dir, ca_dir), acme })
}

fn acme(a: &AcmeSpec, names: &[String], base_dir: &Path, v: &mut Vec<Problem>) -> Option<Acme> {
    let before = v.len();
    let email = match &a.email {
        None => {
            v.push(p("tls.acme", "email is required: the ACME CA sends expiry notices there"));
            String::new()
        }
        Some(e) => {
            if let Err(e) = email(e) {
                v.push(p("tls.acme.email", e));
            }
            e.clone()
        }
    };
    if let Some(d) = &a.directory {
        if let Err(e) = https_url(d) {
            v.push(p("tls.acme.directory", e));
        }
        if a.staging == Some(true) {
            v.push(p(
                "tls.acme.staging",
                "staging = true picks Let's Encrypt's staging directory; drop one of the two",
            ));
        }
    }
    let directory = a.directory.clone().unwrap_or_else(|| {
        if a.staging == Some(true) { defaults::ACME_STAGING_DIRECTORY } else { defaults::ACME_DIRECTORY }.to_string()
    });
    let http_port = a.http_port.unwrap_or(defaults::ACME_HTTP_PORT);
    let http_port = match u16::try_from(http_port) {
        Ok(port) if port > 0 => port,
        _ => {
            v.push(p("tls.acme.http_port", format!("{http_port} is outside 1-65535")));
            0
        }
    };
    let challenge = a.challenge.unwrap_or(AcmeChallenge::Http01);
    let dns01 = challenge == AcmeChallenge::Dns01;
    if a.dns_hook.is_some() && !dns01 {
        v.push(p("tls.acme.dns_hook", "only used with challenge = \"dns-01\""));
    }
    for (key, path) in [("tls.acme.dns_hook", &a.dns_hook), ("tls.acme.ca_bundle", &a.ca_bundle)] {
        if let Some(Err(e)) = path.as_deref().map(file_path) {
            v.push(p(key, e));
        }
    }
    let mut dns_resolvers = Vec::new();
    if let Some(resolvers) = &a.dns_resolvers {
        if !dns01 {
            v.push(p("tls.acme.dns_resolvers", "only used with challenge = \"dns-01\""));
        }
        if resolvers.is_empty() {
            v.push(p("tls.acme.dns_resolvers", "list at least one name server, or leave the key out"));
        }
        for (i, r) in resolvers.iter().enumerate() {
            match parse_resolver(r) {
                Some(addr) => dns_resolvers.push(addr),
                None => v.push(Problem::at(
                    KeyPath::parse("tls.acme.dns_resolvers").index(i),
                    format!("{r:?} is not an IP address or IP:PORT"),
                )),
            }
        }
    }
    let dns_timeout = a.dns_timeout.unwrap_or(defaults::DNS_TIMEOUT);
    if a.dns_timeout.is_some() && !dns01 {
        v.push(p("tls.acme.dns_timeout", "only used with challenge = \"dns-01\""));
    }
    let dns_timeout = match u64::try_from(dns_timeout) {
        Ok(t) if (1..=86_400).contains(&t) => t,
        _ => {
            v.push(p("tls.acme.dns_timeout", format!("{dns_timeout} is outside 1-86400 seconds")));
            0
        }
    };
    if let Some(d) = a.renew_before_days {
        if !(1..=365).contains(&d) {
            v.push(p("tls.acme.renew_before_days", format!("{d} is outside 1-365 days")));
        }
    }
    (v.len() == before).then(|| Acme {
        names: names.to_vec(),
        email,
        directory,
        ca_bundle: a.ca_bundle.as_ref().map(|p| resolve(base_dir, p)),
        challenge,
        http_port,
        dns_hook: a.dns_hook.as_ref().map(|p| resolve(base_dir, p)),
        dns_resolvers,
        dns_timeout,
        renew_before_days: a.renew_before_days,
        account_dir: resolve(base_dir, Path::new(defaults::ACME_STATE_DIR)),
    })
}
