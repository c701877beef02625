//! The minijinja environment for the render tree (`templates/deploy/`, embedded by
//! [`crate::assets`]), each template named by the file it produces, and constants for the outputs
//! the code refers to.
//!
//! Owns: environment settings (strict undefined, kept trailing newline, JSON auto-escaping for
//! YAML and JSON, with what YAML 1.1 reads as a line break or refuses escaped too). Templates only
//! format values the plan already resolved.

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, Output, State, UndefinedBehavior, Value};

use crate::assets;

/// `asterisk/asterisk.conf`.
pub const ASTERISK_CONF: &str = "asterisk/asterisk.conf";
/// `asterisk/logger.conf`.
pub const LOGGER_CONF: &str = "asterisk/logger.conf";
/// `asterisk/modules.conf`.
pub const MODULES_CONF: &str = "asterisk/modules.conf";
/// `asterisk/http.conf`.
pub const HTTP_CONF: &str = "asterisk/http.conf";
/// `asterisk/rtp.conf`.
pub const RTP_CONF: &str = "asterisk/rtp.conf";
/// `asterisk/rtp_turn.conf` (secret).
pub const RTP_TURN_CONF: &str = "asterisk/rtp_turn.conf";
/// `asterisk/prometheus.conf`.
pub const PROMETHEUS_CONF: &str = "asterisk/prometheus.conf";
/// `asterisk/prometheus_auth.conf` (secret).
pub const PROMETHEUS_AUTH_CONF: &str = "asterisk/prometheus_auth.conf";
/// `prometheus/prometheus.yml`: the monitoring profile's Prometheus settings.
pub const PROMETHEUS_YML: &str = "prometheus/prometheus.yml";
/// `prometheus/metrics-password` (secret): the password Prometheus scrapes with.
pub const PROMETHEUS_PASSWORD: &str = "prometheus/metrics-password";
/// `asterisk/pjsip.conf`.
pub const PJSIP_CONF: &str = "asterisk/pjsip.conf";
/// `asterisk/pjsip_auth.conf` (secret).
pub const PJSIP_AUTH_CONF: &str = "asterisk/pjsip_auth.conf";
/// `asterisk/pjsip_edge.conf` (a cluster's pool): the addresses the edge's requests come from,
/// included into the edge's identify section of pjsip.conf.
pub const PJSIP_EDGE_CONF: &str = "asterisk/pjsip_edge.conf";
/// `asterisk/extensions.conf`.
pub const EXTENSIONS_CONF: &str = "asterisk/extensions.conf";
/// `asterisk/extensions_edge.conf` (secret; a cluster's pool): the pool's key for the edge, a
/// `[globals]` value extensions.conf includes.
pub const EXTENSIONS_EDGE_CONF: &str = "asterisk/extensions_edge.conf";
/// `helm/astrtc/files/ingress/http.conf`: http.conf behind a TLS-terminating Ingress.
pub const HTTP_INGRESS_CONF: &str = "helm/astrtc/files/ingress/http.conf";
/// `helm/astrtc/Chart.yaml`.
pub const HELM_CHART_YAML: &str = "helm/astrtc/Chart.yaml";
/// `helm/astrtc/values.yaml`.
pub const HELM_VALUES_YAML: &str = "helm/astrtc/values.yaml";
/// `helm/astrtc/values.schema.json`.
pub const HELM_VALUES_SCHEMA: &str = "helm/astrtc/values.schema.json";
/// `compose.yaml`.
pub const COMPOSE_YAML: &str = "compose.yaml";

/// The directory of `templates/` that is the output directory.
pub const DEPLOY_DIR: &str = "deploy";

/// A strict environment holding every template. `.yaml` and `.json` outputs are auto-escaped as JSON
/// literals (valid YAML scalars), so no value can add a key; `.conf` outputs get values that
/// [`crate::spec::validate`] already restricted.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_syntax(
        SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("default delimiters are valid"),
    );
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
            AutoEscape::Json
        } else {
            AutoEscape::None
        }
    });
    env.set_formatter(yaml_safe_json_formatter);
    for asset in assets::files_under(&assets::TEMPLATES, DEPLOY_DIR) {
        let Some(name) = asset.path.strip_suffix(assets::TEMPLATE_SUFFIX) else { continue };
        let source = std::str::from_utf8(asset.contents).unwrap_or_else(|e| panic!("template {name}: {e}"));
        // Invalid templates are caught by `every_template_loads`, before any release.
        env.add_template(name, source).unwrap_or_else(|e| panic!("embedded template {name} is invalid: {e:#}"));
    }
    env
}

/// Characters JSON may leave as they are but a YAML reader may not: NEL, U+2028 and U+2029 end a
/// line for YAML 1.1 readers (libyaml, PyYAML, the Go library Kubernetes uses), and DEL, the C1
/// controls, U+FFFE and U+FFFF are refused as unprintable.
fn yaml_needs_escape(c: char) -> bool {
    matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}')
}

/// The JSON auto-escape, plus `\uXXXX` for [`yaml_needs_escape`] characters, so that a value in a
/// YAML output reads back exactly as it was, in YAML 1.1 as in 1.2. Other modes are unchanged.
fn yaml_safe_json_formatter(out: &mut Output, state: &mut State, value: &Value) -> Result<(), minijinja::Error> {
    if *state.auto_escape() == AutoEscape::Json && !value.is_safe() {
        if let Ok(json) = serde_json::to_string(value) {
            if json.contains(yaml_needs_escape) {
                let mut escaped = String::with_capacity(json.len() + 16);
                for c in json.chars() {
                    if yaml_needs_escape(c) {
                        escaped.push_str(&format!("\\u{:04x}", u32::from(c)));
                    } else {
                        escaped.push(c);
                    }
                }
                return out.write_str(&escaped).map_err(minijinja::Error::from);
            }
        }
    }
    minijinja::escape_formatter(out, state, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value in a YAML output reads back as it was, whatever it holds: YAML 1.1 line breaks and
    /// unprintable characters are escaped too.
    #[test]
    fn yaml_values_escape_what_yaml_readers_break_or_refuse() {
        let mut env = environment();
        env.add_template("t.yaml", "a: {{ v }}\nb: {{ [v] }}\n").unwrap();
        env.add_template("t.conf", "a = {{ v }}\n").unwrap();
        let v = "x\u{2028}y\u{2029}z\u{85}w\u{7f}\u{9b}\"\n";
        let yaml = env.get_template("t.yaml").unwrap().render(minijinja::context! { v => v }).unwrap();
        assert_eq!(yaml, "a: \"x\\u2028y\\u2029z\\u0085w\\u007f\\u009b\\\"\\n\"\nb: [\"x\\u2028y\\u2029z\\u0085w\\u007f\\u009b\\\"\\n\"]\n");
        let back: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back["a"].as_str(), Some(v));
        assert_eq!(back["b"][0].as_str(), Some(v));
        // Only YAML and JSON outputs are escaped.
        assert_eq!(
            env.get_template("t.conf").unwrap().render(minijinja::context! { v => "a\u{2028}" }).unwrap(),
            "a = a\u{2028}\n"
        );
    }

    /// Every `.j2` file of the tree loads, and the outputs the code names have a template.
    #[test]
    fn every_template_loads() {
        let env = environment();
        let count = env.templates().count();
        assert!(count >= 25, "only {count} templates");
        for name in [
            ASTERISK_CONF,
            LOGGER_CONF,
            MODULES_CONF,
            HTTP_CONF,
            RTP_CONF,
            RTP_TURN_CONF,
            PJSIP_CONF,
            PJSIP_AUTH_CONF,
            EXTENSIONS_CONF,
            HTTP_INGRESS_CONF,
            HELM_CHART_YAML,
            HELM_VALUES_YAML,
            HELM_VALUES_SCHEMA,
            COMPOSE_YAML,
        ] {
            assert!(env.get_template(name).is_ok(), "{name} has no template");
        }
    }
}
