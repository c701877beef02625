//! The minijinja environment for the render tree (`templates/deploy/`, embedded by
//! [`crate::assets`]), each template named by the file it produces, and constants for the outputs
//! the code refers to.
//!
//! Owns: environment settings (strict undefined, kept trailing newline, JSON auto-escaping for
//! YAML and JSON). Templates only format values the plan already resolved.

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

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
/// `asterisk/pjsip.conf`.
pub const PJSIP_CONF: &str = "asterisk/pjsip.conf";
/// `asterisk/pjsip_auth.conf` (secret).
pub const PJSIP_AUTH_CONF: &str = "asterisk/pjsip_auth.conf";
/// `asterisk/extensions.conf`.
pub const EXTENSIONS_CONF: &str = "asterisk/extensions.conf";
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
    for asset in assets::files_under(&assets::TEMPLATES, DEPLOY_DIR) {
        let Some(name) = asset.path.strip_suffix(assets::TEMPLATE_SUFFIX) else { continue };
        let source = std::str::from_utf8(asset.contents).unwrap_or_else(|e| panic!("template {name}: {e}"));
        // Invalid templates are caught by `every_template_loads`, before any release.
        env.add_template(name, source).unwrap_or_else(|e| panic!("embedded template {name} is invalid: {e:#}"));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

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
