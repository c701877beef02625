//! Renders the Asterisk configuration directory (`deploy/asterisk/`, mounted at `/etc/asterisk`).
//!
//! Owns: which files Asterisk gets and the context each template sees. Secrets go only into the
//! separate `pjsip_auth.conf` and `rtp_turn.conf` (mode 0640), which the public files `#include`,
//! so configs can be shared or put in a ConfigMap without passwords.

use minijinja::value::{Serde, Value};
use minijinja::{context, Environment};

use super::templates::*;
use super::{Bundle, FileKind, RenderError};
use crate::plan::{image, Plan};

/// Modules a WebRTC PBX does not run: old channel drivers, telephony hardware, databases and
/// interfaces that would widen the attack surface (ARI, AMI are enabled by their own configs
/// only, but a PBX that does not use them should not load them at all).
pub const NOLOAD: &[&str] = &[
    "chan_iax2.so",
    "chan_mgcp.so",
    "chan_skinny.so",
    "chan_unistim.so",
    "chan_motif.so",
    "chan_console.so",
    "chan_alsa.so",
    "chan_oss.so",
    "chan_dahdi.so",
    "chan_audiosocket.so",
    "chan_rtp.so",
    "res_phoneprov.so",
    "res_pjsip_phoneprov_provider.so",
    "res_ari.so",
    "res_ari_applications.so",
    "res_ari_asterisk.so",
    "res_ari_bridges.so",
    "res_ari_channels.so",
    "res_ari_device_states.so",
    "res_ari_endpoints.so",
    "res_ari_events.so",
    "res_ari_playbacks.so",
    "res_ari_recordings.so",
    "res_ari_sounds.so",
    "res_ari_model.so",
    "res_stasis_http.so",
    "res_pjsip_config_wizard.so",
    "res_config_sqlite3.so",
    "res_config_pgsql.so",
    "res_config_mysql.so",
    "cdr_sqlite3_custom.so",
    "cdr_custom.so",
    "cdr_manager.so",
    "cel_sqlite3_custom.so",
    "cel_custom.so",
    "cel_manager.so",
    "pbx_ael.so",
    "pbx_lua.so",
    "pbx_dundi.so",
    "pbx_realtime.so",
    "res_clialiases.so",
    "res_smdi.so",
    "res_adsi.so",
    "app_adsiprog.so",
    "app_getcpeid.so",
    "res_hep.so",
    "res_hep_pjsip.so",
    "res_hep_rtcp.so",
    "res_statsd.so",
    "res_pjsip_notify.so",
    "res_manager_devicestate.so",
    "res_manager_presencestate.so",
    "res_prometheus.so",
    "res_mwi_external.so",
    "res_mwi_external_ami.so",
    "res_stun_monitor.so",
    "res_musiconhold.so",
    "app_amd.so",
    "app_followme.so",
    "cdr_csv.so",
    "app_alarmreceiver.so",
    "app_page.so",
    "app_queue.so",
];

/// Config files without secrets, in the order they are rendered.
pub const PUBLIC_CONFIGS: &[&str] = &[
    ASTERISK_CONF,
    LOGGER_CONF,
    MODULES_CONF,
    HTTP_CONF,
    RTP_CONF,
    PJSIP_CONF,
    EXTENSIONS_CONF,
    // Small files that keep Asterisk's startup free of "unable to load config" errors and turn
    // off what a WebRTC PBX does not use (CDR, CEL, AMI).
    CDR_CONF,
    CEL_CONF,
    FEATURES_CONF,
    MANAGER_CONF,
    ACL_CONF,
    UDPTL_CONF,
    PJPROJECT_CONF,
    STASIS_CONF,
    CCSS_CONF,
    INDICATIONS_CONF,
];

/// Adds every Asterisk config file of the plan to the bundle.
pub fn render(env: &Environment<'_>, plan: &Plan, bundle: &mut Bundle) -> Result<(), RenderError> {
    let ctx = context! {
        plan => Value::from(Serde(plan)),
        keys_dir => image::KEYS_DIR,
        noload => Value::from(Serde(NOLOAD)),
        auth_file => "pjsip_auth.conf",
        rtp_secrets_file => "rtp_turn.conf",
    };
    for name in PUBLIC_CONFIGS {
        bundle.add(name, super::render_template(env, name, &ctx)?, FileKind::Public);
    }
    // Passwords reach exactly one template each, through their own context.
    let auth: Vec<_> = plan.endpoints.iter().map(|e| context! { id => &e.id, password => &e.password }).collect();
    bundle.add(
        PJSIP_AUTH_CONF,
        super::render_template(env, PJSIP_AUTH_CONF, &context! { endpoints => auth })?,
        FileKind::Secret,
    );
    if plan.rtp.turn.is_some() {
        bundle.add(RTP_TURN_CONF, super::render_template(env, RTP_TURN_CONF, &ctx)?, FileKind::Secret);
    }
    // Mount point for the keys inside the read-only config mount.
    bundle.add_dir("asterisk/keys");
    Ok(())
}
