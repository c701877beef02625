//! Metrics: Asterisk's own res_prometheus behind basic auth (on the loopback HTTP listener and,
//! because Asterisk serves every URI on both, the public TLS one), and the compose `monitoring`
//! profile's real Prometheus (Debian's package) scraping it: the target is up, and during a call
//! the channel and call metrics rise, then fall back when it ends. Beside it the profile's node
//! exporter serves what res_prometheus lacks (astrtc-metrics in the Asterisk image): task
//! processors, RTP loss (a call that skips every 10th packet shows 10 %), Asterisk's CPU. The
//! figures are the queries of the Grafana dashboard (dashboards/astrtc.json).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::apply::Stack;
use crate::common::call::Call;
use crate::common::docker::ensure_prometheus;
use crate::common::*;

pub(crate) fn base64(input: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A plain HTTP GET on loopback; returns (status, body).
fn http_get(port: u16, path: &str, auth: Option<(&str, &str)>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth.map(|(u, p)| format!("Authorization: Basic {}\r\n", base64(format!("{u}:{p}").as_bytes())));
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{}\r\n", auth.unwrap_or_default()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query against Prometheus: the first result's value, if any.
fn query(port: u16, q: &str) -> Option<f64> {
    let (status, body) = http_get(port, &format!("/api/v1/query?query={}", encode(q)), None);
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn wait_query(port: u16, q: &str, what: &str, ok: impl Fn(f64) -> bool) -> (f64, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = query(port, q).filter(|v| ok(*v)) {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < Duration::from_secs(40), "{what}: {q} never got there (last {:?})", query(port, q));
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The dashboard's panels, as queries (dashboards/astrtc.json uses the same expressions).
pub const PANELS: &[(&str, &str)] = &[
    ("calls in progress", "sum(asterisk_calls_count)"),
    ("channels", "sum(asterisk_channels_count)"),
    ("endpoints online (registered)", "count(asterisk_endpoints_state == 2) or vector(0)"),
    ("endpoints", "sum(asterisk_endpoints_count)"),
    ("bridges", "sum(asterisk_bridges_count)"),
    ("uptime (s)", "max(asterisk_core_uptime_seconds)"),
    ("scrape time (ms)", "max(asterisk_core_scrape_time_ms)"),
    // What res_prometheus lacks, from astrtc-metrics through the node exporter.
    ("task-processor queue (deepest family)", "max(asterisk_taskprocessor_queued) or vector(0)"),
    ("task processors at high water", "sum(asterisk_taskprocessor_over_high_water) or vector(0)"),
    ("RTP loss received (%)", LOSS_RX),
    ("Asterisk CPU (cores)", "rate(astrtc_asterisk_cpu_seconds_total[30s])"),
    ("host CPU busy (cores)", "sum(rate(node_cpu_seconds_total{mode!=\"idle\"}[30s]))"),
];

/// RTP loss on the channels up now, as Asterisk counts it (sequence gaps), in percent.
const LOSS_RX: &str = "100 * sum(asterisk_rtp_lost_packets{direction=\"rx\"}) / clamp_min(sum(asterisk_rtp_packets{direction=\"rx\"}) + sum(asterisk_rtp_lost_packets{direction=\"rx\"}), 1)";

#[test]
fn prometheus_scrapes_asterisk_and_call_metrics_rise_and_fall() {
    if docker_off() {
        return;
    }
    ensure_prometheus();
    let port = ports::free_port();
    let stack = Stack::up(
        "metrics",
        |t| t.replace("[tls]", &format!("[metrics]\nprometheus_port = {port}\n\n[tls]")),
        &["monitoring"],
    );
    let plan = &stack.plan;
    let auth = (plan.metrics.username.as_str(), plan.metrics.password.as_str());

    // /metrics needs the password, on the loopback HTTP listener and on the public TLS one.
    let http = plan.network.http_port;
    assert_eq!(http_get(http, "/metrics", None).0, 401, "/metrics without a password");
    assert_eq!(http_get(http, "/metrics", Some((auth.0, "wrong-password-123"))).0, 401);
    let (status, body) = http_get(http, "/metrics", Some(auth));
    assert_eq!(status, 200, "{body}");
    let names: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    eprintln!("res_prometheus metrics: {names:?}");
    for m in ["asterisk_core_uptime_seconds", "asterisk_endpoints_state", "asterisk_endpoints_count"] {
        assert!(names.contains(m), "{m} missing: {names:?}");
    }
    let ca = std::fs::read_to_string(stack.dir.path().join("deploy/keys/ca.crt")).unwrap();
    let wss = format!("127.0.0.1:{}", plan.network.wss_port).parse().unwrap();
    let public = astrtc::verify::tls::https_get(wss, &plan.tls.domain, &ca, "/metrics").unwrap();
    assert!(
        public.starts_with("HTTP/1.1 401"),
        "/metrics on the public TLS port: {}",
        public.lines().next().unwrap_or("")
    );

    // The real Prometheus scrapes it.
    let (_, took) = wait_query(port, "up{job=\"asterisk\"}", "the scrape target", |v| v == 1.0);
    eprintln!("prometheus: up{{job=\"asterisk\"}} == 1 after {took:.1?}");
    // And the node exporter, with astrtc-metrics' text file: Asterisk's task processors (a
    // running Asterisk has dozens) and its own CPU time.
    let (_, took) = wait_query(port, "up{job=\"node\"}", "the node exporter", |v| v == 1.0);
    let (read, _) =
        wait_query(port, "astrtc_metrics_taskprocessors_read", "task processors read by astrtc-metrics", |v| v >= 10.0);
    let (families, _) = wait_query(port, "count(asterisk_taskprocessors)", "task-processor families", |v| v >= 5.0);
    let (cpu, _) = wait_query(port, "astrtc_asterisk_cpu_seconds_total", "Asterisk's CPU time", |v| v > 0.0);
    wait_query(port, "count(node_cpu_seconds_total)", "the host's CPU", |v| v >= 1.0);
    let processed_idle = query(port, "sum(asterisk_taskprocessor_processed_total)").unwrap();
    eprintln!(
        "prometheus: up{{job=\"node\"}} == 1 after {took:.1?}; {read} task processors in {families} families, \
         {processed_idle} tasks processed; Asterisk used {cpu} CPU-seconds"
    );
    let idle: Vec<(&str, Option<f64>)> = PANELS.iter().map(|(n, q)| (*n, query(port, q))).collect();

    // A registration: the endpoint goes online.
    assert_eq!(crate::common::call::register_status(&stack.call_spec("3002", "")), 200);
    let (online, took) = wait_query(port, PANELS[2].1, "endpoints online after a REGISTER", |v| v >= 1.0);
    eprintln!("prometheus: {online} endpoint(s) online {took:.1?} after 3002 registered");

    // A call: the channel and call metrics rise, then fall back. It never sends every 10th
    // packet (the sequence number is used up), so Asterisk counts 10 % of what it expected lost:
    // the RTP loss panel must show that, and not 0.
    let mut lossy = stack.call_spec("3001", &plan.dialplan.echo_extension);
    lossy.skip_every = Some(10);
    let call = Call::start(&lossy).expect("the echo call");
    let (channels, rise) = wait_query(port, "sum(asterisk_channels_count)", "channels during the call", |v| v >= 1.0);
    let (calls, _) = wait_query(port, "sum(asterisk_calls_count)", "calls during the call", |v| v >= 1.0);
    let (rtp_channels, _) = wait_query(port, "asterisk_rtp_channels", "channels with RTP statistics", |v| v >= 1.0);
    let (received, _) =
        wait_query(port, "asterisk_rtp_packets{direction=\"rx\"}", "RTP packets Asterisk received", |v| v >= 50.0);
    let (loss, _) = wait_query(port, LOSS_RX, "RTP loss Asterisk counted", |v| v > 0.0);
    assert!((5.0..=15.0).contains(&loss), "RTP loss {loss} % while every 10th packet was never sent");
    let jitter = query(port, "asterisk_rtp_jitter_max_seconds{direction=\"rx\"}");
    eprintln!(
        "during the call: {rtp_channels} channel(s) with RTP statistics, {received} packets received, \
         {loss:.1} % lost (1 in 10 skipped), rx jitter {jitter:?}"
    );
    let processed_call = query(port, "sum(asterisk_taskprocessor_processed_total)").unwrap();
    assert!(
        processed_call > processed_idle,
        "the task processors processed nothing more during a registration and a call: {processed_idle} -> {processed_call}"
    );
    let during: Vec<(&str, Option<f64>)> = PANELS.iter().map(|(n, q)| (*n, query(port, q))).collect();
    let (_, bye) = call.hang_up();
    assert_eq!(bye, Some(200));
    let (_, fall) = wait_query(port, "sum(asterisk_channels_count)", "channels after the call", |v| v == 0.0);
    wait_query(port, "asterisk_rtp_channels", "channels with RTP statistics after the call", |v| v == 0.0);
    wait_query(port, "sum(asterisk_calls_count)", "calls after the call", |v| v == 0.0);
    eprintln!("during the call: {channels} channel(s), {calls} call(s), seen {rise:.1?} after it began; 0 again {fall:.1?} after it ended");
    for ((name, before), (_, mid)) in idle.iter().zip(&during) {
        eprintln!("panel {name:32} idle {before:?}  during a call {mid:?}");
    }
}

/// The Grafana dashboard in the repository queries exactly what the test above measured (so
/// its panels cannot drift from Asterisk's metric names), and it is valid dashboard JSON.
#[test]
fn the_dashboard_plots_the_measured_queries() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/astrtc.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap()))
        .collect();
    for (name, q) in PANELS {
        assert!(exprs.contains(q), "the dashboard has no panel for {name} ({q}): {exprs:?}");
    }
    assert!(dash["uid"].is_string() && dash["title"].is_string());
}
