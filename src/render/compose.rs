//! The context of `deploy/compose.yaml`, the main deployment path (`docker compose up`).
//!
//! Owns: the compose-specific derived strings (published ports, tmpfs options). Every value is
//! JSON-escaped by the environment (a JSON literal is a valid YAML scalar), so no spec value can
//! add a key.

use minijinja::context;
use minijinja::value::{Serde, Value};

use crate::image;
use crate::plan::Plan;
use crate::spec::{AcmeChallenge, NetworkMode};

/// Name of the user-defined network in bridge mode.
pub const NETWORK_NAME: &str = "astrtc";

/// The context of `compose.yaml`.
pub fn context(plan: &Plan) -> Value {
    let n = &plan.network;
    let rtp_range = format!("{}-{}", plan.rtp.start, plan.rtp.end);
    let published_ports: Vec<String> = if n.mode == NetworkMode::Bridge {
        vec![
            format!("{0}:{0}/tcp", n.wss_port),
            format!("{0}:{0}/udp", n.sip_port),
            format!("{rtp_range}:{rtp_range}/udp"),
        ]
    } else {
        Vec::new()
    };
    let sidecar = plan.tls.acme.as_ref().map(|a| {
        let http01 = a.challenge == AcmeChallenge::Http01;
        // Until the first certificate exists the sidecar is "starting"; Asterisk waits for it.
        let start_period = a.first_certificate_wait();
        context! {
            image => image::SIDECAR_IMAGE,
            config_dir => image::SIDECAR_CONFIG_DIR,
            keys_dir => image::SIDECAR_KEYS_DIR,
            acme_dir => image::SIDECAR_ACME_DIR,
            challenge => Value::from(Serde(a.challenge)),
            http_port => a.http_port,
            publish => (http01 && n.mode == NetworkMode::Bridge).then(|| format!("{0}:{0}/tcp", a.http_port)),
            bind_cap => http01 && a.http_port < 1024,
            start_period => format!("{start_period}s"),
            healthcheck => Value::from(Serde(["CMD", "/usr/local/bin/astrtc", "certs", "check"])),
        }
    });
    let turn = plan.turn.as_ref().filter(|t| t.bundled.is_some()).map(|t| {
        context! {
            image => image::TURN_IMAGE,
            config_dir => image::TURN_CONFIG_DIR,
            keys_dir => image::TURN_KEYS_DIR,
            run_tmpfs => format!("{}:uid={},gid={},mode=0700", image::TURN_RUN_DIR, image::TURN_UID, image::ASTERISK_UID),
            bind_cap => t.binds_privileged_port(),
            ports => match t.tls_port {
                Some(tls) => format!("{} (UDP, TCP) and {tls} (TLS)", t.port),
                None => format!("{} (UDP, TCP)", t.port),
            },
            healthcheck => Value::from(Serde(["CMD", image::TURN_HEALTHCHECK])),
        }
    });
    context! {
        sidecar => sidecar,
        turn => turn,
        plan => Value::from(Serde(plan)),
        rtp_range => rtp_range,
        published_ports => published_ports,
        network_name => NETWORK_NAME,
        config_dir => image::CONFIG_DIR,
        keys_dir => image::KEYS_DIR,
        asterisk_uid => image::ASTERISK_UID,
        healthcheck => Value::from(Serde(["CMD", image::HEALTHCHECK])),
        memory_limit => format!("{}m", plan.resources.memory_limit_mb),
        memory_request => format!("{}m", plan.resources.memory_request_mb),
    }
}
