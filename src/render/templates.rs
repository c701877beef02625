//! The embedded templates: compiled into the binary so `astrtc` is self-contained, each named by
//! the file it produces, and a strict minijinja environment to render them.
//!
//! Owns: the template table and environment settings (strict undefined, kept trailing newline,
//! JSON auto-escaping for YAML). Templates only format values the plan already resolved.

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

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
/// `asterisk/pjsip.conf`.
pub const PJSIP_CONF: &str = "asterisk/pjsip.conf";
/// `asterisk/pjsip_auth.conf` (secret).
pub const PJSIP_AUTH_CONF: &str = "asterisk/pjsip_auth.conf";
/// `asterisk/extensions.conf`.
pub const EXTENSIONS_CONF: &str = "asterisk/extensions.conf";
/// `asterisk/cdr.conf`.
pub const CDR_CONF: &str = "asterisk/cdr.conf";
/// `asterisk/cel.conf`.
pub const CEL_CONF: &str = "asterisk/cel.conf";
/// `asterisk/features.conf`.
pub const FEATURES_CONF: &str = "asterisk/features.conf";
/// `asterisk/manager.conf`.
pub const MANAGER_CONF: &str = "asterisk/manager.conf";
/// `asterisk/acl.conf`.
pub const ACL_CONF: &str = "asterisk/acl.conf";
/// `asterisk/udptl.conf`.
pub const UDPTL_CONF: &str = "asterisk/udptl.conf";
/// `asterisk/pjproject.conf`.
pub const PJPROJECT_CONF: &str = "asterisk/pjproject.conf";
/// `asterisk/stasis.conf`.
pub const STASIS_CONF: &str = "asterisk/stasis.conf";
/// `asterisk/ccss.conf`.
pub const CCSS_CONF: &str = "asterisk/ccss.conf";
/// `asterisk/indications.conf`.
pub const INDICATIONS_CONF: &str = "asterisk/indications.conf";
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

/// Every template: output path and source. The Asterisk ones live beside the image that reads
/// them (`images/asterisk/templates/`), the compose one in `compose/`.
pub const TEMPLATES: &[(&str, &str)] = &[
    (ASTERISK_CONF, include_str!("../../images/asterisk/templates/asterisk.conf.j2")),
    (LOGGER_CONF, include_str!("../../images/asterisk/templates/logger.conf.j2")),
    (MODULES_CONF, include_str!("../../images/asterisk/templates/modules.conf.j2")),
    (HTTP_CONF, include_str!("../../images/asterisk/templates/http.conf.j2")),
    (RTP_CONF, include_str!("../../images/asterisk/templates/rtp.conf.j2")),
    (RTP_TURN_CONF, include_str!("../../images/asterisk/templates/rtp_turn.conf.j2")),
    (PJSIP_CONF, include_str!("../../images/asterisk/templates/pjsip.conf.j2")),
    (PJSIP_AUTH_CONF, include_str!("../../images/asterisk/templates/pjsip_auth.conf.j2")),
    (EXTENSIONS_CONF, include_str!("../../images/asterisk/templates/extensions.conf.j2")),
    (CDR_CONF, include_str!("../../images/asterisk/templates/cdr.conf.j2")),
    (CEL_CONF, include_str!("../../images/asterisk/templates/cel.conf.j2")),
    (FEATURES_CONF, include_str!("../../images/asterisk/templates/features.conf.j2")),
    (MANAGER_CONF, include_str!("../../images/asterisk/templates/manager.conf.j2")),
    (ACL_CONF, include_str!("../../images/asterisk/templates/acl.conf.j2")),
    (UDPTL_CONF, include_str!("../../images/asterisk/templates/udptl.conf.j2")),
    (PJPROJECT_CONF, include_str!("../../images/asterisk/templates/pjproject.conf.j2")),
    (STASIS_CONF, include_str!("../../images/asterisk/templates/stasis.conf.j2")),
    (CCSS_CONF, include_str!("../../images/asterisk/templates/ccss.conf.j2")),
    (INDICATIONS_CONF, include_str!("../../images/asterisk/templates/indications.conf.j2")),
    (COMPOSE_YAML, include_str!("../../compose/compose.yaml.j2")),
    (HTTP_INGRESS_CONF, include_str!("../../images/asterisk/templates/http_ingress.conf.j2")),
    (HELM_CHART_YAML, include_str!("../../helm/astrtc/Chart.yaml.j2")),
    (HELM_VALUES_YAML, include_str!("../../helm/astrtc/values.yaml.j2")),
    (HELM_VALUES_SCHEMA, include_str!("../../helm/astrtc/values.schema.json.j2")),
];

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
    for (name, source) in TEMPLATES {
        env.add_template(name, source).unwrap_or_else(|e| panic!("embedded template {name} is invalid: {e:#}"));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_loads_and_is_named_once() {
        let env = environment();
        let mut names: Vec<_> = TEMPLATES.iter().map(|(n, _)| *n).collect();
        for name in &names {
            assert!(env.get_template(name).is_ok(), "{name}");
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TEMPLATES.len());
    }

    #[test]
    fn templates_use_unix_line_endings_and_end_with_newline() {
        for (name, source) in TEMPLATES {
            assert!(!source.contains('\r'), "{name} has CR");
            assert!(source.ends_with('\n'), "{name} lacks a final newline");
        }
    }
}
