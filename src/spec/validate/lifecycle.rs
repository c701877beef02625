//! `[lifecycle]` (the drain on shutdown) and `[metrics]` (res_prometheus, with its password from
//! the secrets file).

use super::super::secrets::Secrets;
use super::super::source::Problem;
use super::super::valid::{Lifecycle, Metrics, Network, Secret};
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
    let mut taken: Vec<(&str, u16)> = match network {
        Some(n) => vec![
            ("network.sip_port", n.sip_port),
            ("network.sip_tls_port", n.sip_tls_port),
            ("network.wss_port", n.wss_port),
            ("network.http_port", n.http_port),
        ],
        None => Vec::new(),
    };
    let mut port = |key: &'static str, value: Option<i64>, default: i64, v: &mut Vec<Problem>| {
        let port = value.unwrap_or(default);
        let Some(pp) = u16::try_from(port).ok().filter(|_| port >= MIN_PORT) else {
            v.push(p(key, format!("{port} is outside {MIN_PORT}-65535")));
            return None;
        };
        if let Some((other, _)) = taken.iter().find(|(_, used)| *used == pp) {
            v.push(p(key, format!("port {pp} is also {other}")).help("each listener needs its own port"));
        }
        taken.push((key, pp));
        Some(pp)
    };
    let prometheus_port = port("metrics.prometheus_port", spec.metrics.prometheus_port, defaults::PROMETHEUS_PORT, v);
    let exporter_port = port("metrics.exporter_port", spec.metrics.exporter_port, defaults::EXPORTER_PORT, v);
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
        password: Secret::new(pw?),
        prometheus_port: prometheus_port?,
        exporter_port: exporter_port?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::super::secrets::{MetricsSecrets, Secrets};
    use super::super::validate;

    fn check(spec: &str) -> Result<(u16, u16), Vec<String>> {
        let text = format!("{spec}\n[[endpoints]]\nid = \"3001\"\nkind = \"sip\"\n");
        let parsed = crate::spec::parse("astrtc.toml", &text).unwrap();
        let mut secrets = Secrets::default();
        secrets.endpoints.insert("3001".into(), "unit-test-password-3001".into());
        secrets.metrics = Some(MetricsSecrets { password: "unit-test-metrics-password".into() });
        validate(&parsed.spec, std::path::Path::new("."), &secrets)
            .map(|v| (v.metrics.prometheus_port, v.metrics.exporter_port))
            .map_err(|p| p.spec.iter().chain(&p.secrets).map(|p| format!("{}: {}", p.path, p.message)).collect())
    }

    #[test]
    fn the_monitoring_ports_are_their_own() {
        assert_eq!(check("").unwrap(), (9090, 9101));
        assert_eq!(check("[metrics]\nprometheus_port = 9200\nexporter_port = 9201\n").unwrap(), (9200, 9201));
        for (spec, want) in [
            ("[metrics]\nexporter_port = 9090\n", "metrics.exporter_port: port 9090 is also metrics.prometheus_port"),
            ("[metrics]\nexporter_port = 8089\n", "metrics.exporter_port: port 8089 is also network.wss_port"),
            ("[metrics]\nprometheus_port = 5061\n", "metrics.prometheus_port: port 5061 is also network.sip_tls_port"),
            ("[metrics]\nexporter_port = 80\n", "metrics.exporter_port: 80 is outside 1024-65535"),
            ("[metrics]\nexporter_port = 70000\n", "metrics.exporter_port: 70000 is outside 1024-65535"),
        ] {
            let e = check(spec).unwrap_err();
            assert!(e.iter().any(|p| p == want), "{spec}: {e:?}");
        }
    }
}
