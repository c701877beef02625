//! Validation: a parsed spec and its secrets in, [`Valid`] typed values or every problem out.
//!
//! Owns: applying each default once (from [`super::defaults`], where the value is first read),
//! the checks serde cannot see (ranges, collisions, values Asterisk, YAML and shells can carry
//! safely, missing passwords), and building the typed values. One file per spec section; the
//! rules for single values are in [`rules`]. It never stops at the first problem.

pub mod cluster;
mod endpoints;
mod lifecycle;
mod network;
mod operations;
pub mod rules;
mod security;
mod tls;
mod turn;

use std::path::Path;

pub use rules::*;
pub use security::{MAX_BAN_AFTER, MAX_SECONDS};

use super::secrets::Secrets;
use super::source::{KeyPath, Problem};
use super::valid::Valid;
use super::{defaults, Spec};

/// The problems found, by the file they are in.
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

/// A problem at a key path given as text (`rtp.start`, `endpoints[2].id`).
pub(crate) fn p(path: &str, msg: impl Into<String>) -> Problem {
    Problem::at(KeyPath::parse(path), msg)
}

/// Checks a spec (whose relative paths are resolved against `base_dir`) with its secrets and
/// returns the typed values, or every problem.
pub fn validate(spec: &Spec, base_dir: &Path, secrets: &Secrets) -> Result<Valid, Problems> {
    let mut out = Problems::default();
    let v = &mut out.spec;

    let name = spec.name.clone().unwrap_or_else(|| defaults::NAME.into());
    if let Err(e) = project_name(&name) {
        v.push(p("name", e).help("use lowercase letters, digits, '-' and '_', starting with a letter or digit"));
    }
    let image = spec.image.clone().unwrap_or_else(|| defaults::IMAGE.into());
    if let Err(e) = image_reference(&image) {
        v.push(p("image", e).help("e.g. \"astrtc/asterisk:22.10.1\" or \"registry.example:5000/pbx/asterisk:1\""));
    }
    if let Some(Err(e)) = spec.secrets.as_deref().map(file_path) {
        v.push(p("secrets", e));
    }

    let network = network::network(spec, v);
    let rtp = network::rtp(spec, network.as_ref(), secrets, v, &mut out.secrets);
    let tls = tls::tls(spec, base_dir, v);
    let dialplan = endpoints::dialplan(spec, v);
    let endpoints = endpoints::endpoints(spec, secrets, v, &mut out.secrets);
    let logging = operations::logging(spec, v);
    let resources = operations::resources(spec, v);
    let security = security::security(spec, v);
    let lifecycle = lifecycle::lifecycle(spec, v);
    let performance = operations::performance(spec, v);
    let metrics = lifecycle::metrics(spec, network.as_ref().map(|(n, _)| n), secrets, v, &mut out.secrets);
    let turn =
        turn::turn(spec, network.as_ref().map(|(n, _)| n), rtp.as_ref(), tls.as_ref(), secrets, v, &mut out.secrets);
    let cluster = cluster::cluster(spec, secrets, v, &mut out.secrets);

    match (
        network,
        rtp,
        tls,
        dialplan,
        endpoints,
        (logging, resources, security, lifecycle, metrics, performance),
        (turn, cluster),
    ) {
        (
            Some((network, _)),
            Some(rtp),
            Some(tls),
            Some(dialplan),
            Some(endpoints),
            (Some(logging), Some(resources), Some(security), Some(lifecycle), Some(metrics), Some(performance)),
            (Some(turn), Some(cluster)),
        ) if out.is_empty() => Ok(Valid {
            name,
            image,
            network,
            rtp,
            tls,
            dialplan,
            endpoints,
            logging,
            resources,
            security,
            lifecycle,
            metrics,
            turn,
            performance,
            cluster,
        }),
        _ => Err(out),
    }
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
    fn display_names_refuse_every_break_control_and_format_character() {
        for ok in ["Alice (browser)", "Front desk", "Zoë Ångström", "李小龍", "O'Brien, J.", "a+b@c"] {
            assert!(display_name(ok).is_ok(), "{ok}");
        }
        // The class, not a list: C0/C1 controls (NEL is C1), format characters (zero-width,
        // bidi overrides, BOM, soft hyphen), line and paragraph separators, non-ASCII spaces.
        let class = [
            '\n',
            '\r',
            '\t',
            '\u{0}',
            '\u{1b}',
            '\u{7f}',
            '\u{85}',
            '\u{9b}',
            '\u{200b}',
            '\u{200d}',
            '\u{202e}',
            '\u{2066}',
            '\u{feff}',
            '\u{ad}',
            '\u{2028}',
            '\u{2029}',
            '\u{a0}',
            '\u{3000}',
            '\u{e0001}',
        ];
        for c in class {
            assert!(display_name(&format!("Al{c}ice")).is_err(), "{c:?} accepted");
        }
        for c in DISPLAY_NAME_FORBIDDEN.chars() {
            assert!(display_name(&format!("Al{c}ice")).is_err(), "{c:?} accepted");
        }
        assert!(display_name(" Alice").is_err() && display_name("").is_err());
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

    #[test]
    fn file_paths() {
        for ok in ["dns-hook", "hooks/dns hook.sh", "/etc/a[1];#=$'\"", "Zoë/李"] {
            assert!(file_path(Path::new(ok)).is_ok(), "{ok}");
        }
        for bad in
            ["", "a\nb", "a\rb", "a\0b", "a\tb", "a\u{1b}b", "a\u{85}b", "a\u{2028}b", "a\u{2029}b", "a\u{200b}b"]
        {
            assert!(file_path(Path::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails_and_urls() {
        assert!(email("ops@example.com").is_ok());
        for bad in ["ops", "@example.com", "ops@exa mple.com", "o\u{200b}ps@example.com", "o\"ps@example.com"] {
            assert!(email(bad).is_err(), "{bad:?}");
        }
        assert!(https_url("https://acme.example/dir").is_ok());
        for bad in ["http://x", "https://", "https://a b", "https://a\u{2028}b", "https://a\"b"] {
            assert!(https_url(bad).is_err(), "{bad:?}");
        }
    }
}
