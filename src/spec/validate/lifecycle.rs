//! `[lifecycle]` (the drain on shutdown) and `[metrics]` (res_prometheus, with its password from
//! the secrets file).

use super::super::secrets::Secrets;
use super::super::source::Problem;
use super::super::valid::{Lifecycle, Metrics, Network};
use super::super::{defaults, Spec};
use super::{p, password, MIN_PORT};

/// The drain on shutdown.
pub(super) fn lifecycle(spec: &Spec, v: &mut Vec<Problem>) -> Option<Lifecycle> {
    let drain = spec.lifecycle.drain_seconds.unwrap_or(defaults::DRAIN_SECONDS);
    match u32::try_from(drain) {
        Ok(d) if drain <= defaults::MAX_DRAIN_SECONDS => Some(Lifecycle { drain_seconds: d }),
        _ => {
            v.push(
                p("lifecycle.drain_seconds", format!("{drain} is outside 0-{}", defaults::MAX_DRAIN_SECONDS))
                    .help("seconds calls in progress may go on after a stop; 0 hangs them up at once"),
            );
            None
        }
    }
}

/// `/metrics` and the monitoring profile's Prometheus port; the password is checked in the
/// secrets file (`s`).
pub(super) fn metrics(
    spec: &Spec,
    network: Option<&Network>,
    secrets: &Secrets,
    v: &mut Vec<Problem>,
    s: &mut Vec<Problem>,
) -> Option<Metrics> {
    let enabled = spec.metrics_enabled();
    let port = spec.metrics.prometheus_port.unwrap_or(defaults::PROMETHEUS_PORT);
    let prometheus_port = match u16::try_from(port) {
        Ok(pp) if port >= MIN_PORT => Some(pp),
        _ => {
            v.push(p("metrics.prometheus_port", format!("{port} is outside {MIN_PORT}-65535")));
            None
        }
    };
    if let (Some(pp), Some(n)) = (prometheus_port, network) {
        for (key, used) in
            [("network.sip_port", n.sip_port), ("network.wss_port", n.wss_port), ("network.http_port", n.http_port)]
        {
            if pp == used {
                v.push(
                    p("metrics.prometheus_port", format!("port {pp} is also {key}"))
                        .help("each listener needs its own port"),
                );
            }
        }
    }
    let pw =
        match (&secrets.metrics, enabled) {
            (Some(m), _) => match password(&m.password) {
                Ok(()) => Some(m.password.clone()),
                Err(e) => {
                    s.push(p("metrics.password", e));
                    None
                }
            },
            (None, true) => {
                s.push(p("metrics", "metrics are on (the default) but [metrics] password is missing here").help(
                    "run `astrtc secrets --spec SPEC` to generate it, or set metrics.enabled = false in the spec",
                ));
                None
            }
            (None, false) => Some(String::new()),
        };
    Some(Metrics {
        enabled,
        username: defaults::METRICS_USERNAME.to_string(),
        password: pw?,
        prometheus_port: prometheus_port?,
    })
}
