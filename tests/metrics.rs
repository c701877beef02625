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
    let auth = (plan.metrics.username.as_str(), plan.metrics.password.expose());

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
    let processed = query(port, "sum(asterisk_taskprocessor_processed)").unwrap();
    eprintln!(
        "prometheus: up{{job=\"node\"}} == 1 after {took:.1?}; {read} task processors in {families} families, \
         {processed} tasks processed; Asterisk used {cpu} CPU-seconds"
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
    // Asterisk updates its lost count with each RTCP report it sends (every 5 s) while the
    // packet count is live, so the figure climbs towards 10 % as the call goes on.
    let (loss, _) = wait_query(port, LOSS_RX, "RTP loss Asterisk counted", |v| v >= 5.0);
    assert!(loss <= 15.0, "RTP loss {loss} % while every 10th packet was never sent");
    let jitter = query(port, "asterisk_rtp_jitter_max_seconds{direction=\"rx\"}");
    eprintln!(
        "during the call: {rtp_channels} channel(s) with RTP statistics, {received} packets received, \
         {loss:.1} % lost (1 in 10 skipped), rx jitter {jitter:?}"
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

/// A stand-in for `asterisk -rx`: Asterisk 22.10's table layouts with what the parser must get
/// right (8-column task processors, a count past 2^31, a name with `\` and `"`, a queue over
/// its high-water mark, channel counts in thousands with a K, an empty bridge id).
const FAKE_ASTERISK: &str = r#"#!/bin/sh
case "$2" in
"core show taskprocessors") cat <<'T'

Processor                                                               Processed   In Queue  Max Depth  Low water High water Low time(us) High time(us)
ast_msg_queue                                                                   0          0          0        450        500          0          0
stasis/m:channel:all-0000000b                                          3000000000          7         12        450        500          0          1
stasis/m:channel:all-0000000c                                                   5        600        700        450        500          0          1
pjsip/outsess/a\b"c-00000001                                                    2          0          1        450        500          0          0

4 taskprocessors
T
;;
"pjsip show channelstats") cat <<'T'
                                             ...........Receive......... .........Transmit..........
 BridgeId ChannelId ........ UpTime.. Codec.   Count    Lost Pct  Jitter   Count    Lost Pct  Jitter RTT....
 ===========================================================================================================
          3001-00000001      00:00:05 ulaw      264      24   9   0.004   123K       0   0   0.002   0.000
 1234abcd 3002-00000002      00:00:05 opus     100K     2K   2   0.001     12       3  25   0.009   0.000

Objects found: 2
T
;;
*) exit 1 ;;
esac
"#;

/// Runs `astrtc-metrics once` (the script in the Asterisk image) with `asterisk` standing in for
/// Asterisk's CLI; returns the file's samples by series.
fn metrics_once(dir: &std::path::Path, asterisk: &std::path::Path) -> std::collections::BTreeMap<String, f64> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("images/asterisk/runtime/astrtc-metrics");
    let out = std::process::Command::new("sh")
        .arg(&script)
        .arg("once")
        .env("ASTRTC_METRICS_DIR", dir)
        .env("ASTRTC_ASTERISK", asterisk)
        .output()
        .unwrap();
    assert!(out.status.success(), "astrtc-metrics once: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(dir.join("asterisk.prom")).unwrap();
    // One sample per line: `name value` or `name{label="escaped"} value`.
    let valid_series = |series: &str| {
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        let labels_ok = labels.is_empty() || {
            let inner = labels.strip_suffix('}').and_then(|l| l.split_once("=\""));
            inner.is_some_and(|(k, v)| {
                let (mut escaped, mut closed) = (false, false);
                for c in v.chars() {
                    match (escaped, c) {
                        _ if closed => return false,
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => closed = true,
                        _ => {}
                    }
                }
                closed && !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase())
            })
        };
        name_ok && labels_ok
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {l:?}\n{text}"));
            assert!(valid_series(series), "not a valid series: {l:?}\n{text}");
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("not a number: {l:?}")))
        })
        .collect()
}

#[test]
fn astrtc_metrics_reads_asterisks_tables_and_leaves_out_what_it_could_not_read() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("asterisk");
    std::fs::write(&fake, FAKE_ASTERISK).unwrap();
    let dead = tmp.path().join("dead");
    std::fs::write(&dead, "#!/bin/sh\necho 'Unable to connect to remote asterisk' >&2\nexit 1\n").unwrap();
    for f in [&fake, &dead] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dir = tmp.path().join("out");
    std::fs::create_dir(&dir).unwrap();

    let m = metrics_once(&dir, &fake);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing: {m:#?}"));
    let stasis = r#"{family="stasis/m:channel:all"}"#;
    assert_eq!(get(&format!("asterisk_taskprocessors{stasis}")), 2.0, "two instances, one family");
    assert_eq!(get(&format!("asterisk_taskprocessor_processed{stasis}")), 3_000_000_005.0, "past 2^31");
    assert_eq!(get(&format!("asterisk_taskprocessor_queued{stasis}")), 607.0);
    assert_eq!(get(&format!("asterisk_taskprocessor_max_depth{stasis}")), 700.0);
    assert_eq!(get(&format!("asterisk_taskprocessor_over_high_water{stasis}")), 1.0);
    assert_eq!(get(r#"asterisk_taskprocessors{family="pjsip/outsess/a\\b\"c"}"#), 1.0, "escaped label");
    assert_eq!(get("astrtc_metrics_taskprocessors_read"), 4.0);
    assert_eq!(get("asterisk_rtp_channels"), 2.0);
    assert_eq!(get(r#"asterisk_rtp_packets{direction="rx"}"#), 100_264.0, "264 + 100K");
    assert_eq!(get(r#"asterisk_rtp_packets{direction="tx"}"#), 123_012.0, "123K + 12");
    assert_eq!(get(r#"asterisk_rtp_lost_packets{direction="rx"}"#), 2_024.0, "24 + 2K");
    assert_eq!(get(r#"asterisk_rtp_lost_packets{direction="tx"}"#), 3.0);
    // Asterisk's "Transmit" jitter column is what it measures on receive.
    assert_eq!(get(r#"asterisk_rtp_jitter_max_seconds{direction="rx"}"#), 0.009);
    assert_eq!(get(r#"asterisk_rtp_jitter_max_seconds{direction="tx"}"#), 0.004);
    let ok_at = get("astrtc_metrics_last_success_timestamp_seconds");
    assert!(ok_at > 1.7e9, "a Unix time: {ok_at}");
    let mode = std::fs::metadata(dir.join("asterisk.prom")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "the exporter runs as another user");

    // Asterisk not answering: no task-processor or RTP series (zeros would look healthy), and
    // the success time stays where it was.
    let m = metrics_once(&dir, &dead);
    let left: Vec<&String> = m.keys().filter(|k| k.starts_with("asterisk_") || k.contains("_read")).collect();
    assert!(left.is_empty(), "series from a CLI that did not answer: {left:?}");
    assert_eq!(m.get("astrtc_metrics_last_success_timestamp_seconds"), Some(&ok_at));
    assert!(!dir.join(".asterisk.prom.tmp").exists(), "the temporary file is renamed, never left");
}
