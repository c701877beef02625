//! Presentation for the commands: what a person reads on a terminal or in a container log.
//!
//! Owns: wording and layout (the `info` summary, certificate outcomes, durations, error chains)
//! and progress display (spinners on a terminal, plain lines otherwise). It decides nothing and
//! changes nothing; the commands hand it what happened.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use astrtc::certs::acme::{Event, Progress};
use astrtc::certs::lifecycle::{Job, Outcome};
use astrtc::image::build::BuildEvent;
use astrtc::plan::{Plan, Transport};
use astrtc::spec::{AcmeChallenge, EndpointKind, TlsMode};

/// What `astrtc turn-credentials` prints for a person: the credential, when it expires, and
/// the `iceServers` entry to paste (the one secret-bearing output astrtc prints, on request).
pub fn turn_credentials_text(
    user: &str,
    ttl: Duration,
    entry: &astrtc::turn::IceServer,
    cred: &astrtc::turn::Credential,
) -> String {
    use std::fmt::Write;
    let until = time::OffsetDateTime::from_unix_timestamp(cred.expires as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| cred.expires.to_string());
    let mut t = String::new();
    let _ = writeln!(t, "TURN credentials for {user}, valid {} (until {until}):", human_duration(ttl));
    for (i, url) in entry.urls.iter().enumerate() {
        let _ = writeln!(t, "  {:<11} {url}", if i == 0 { "urls" } else { "" });
    }
    let _ = writeln!(t, "  {:<11} {}", "username", entry.username);
    let _ = writeln!(t, "  {:<11} {}", "credential", entry.credential.expose());
    let _ = writeln!(t, "iceServers entry (the demo phone's \"ICE servers\" field takes it; --json prints only this):");
    let _ = writeln!(t, "{}", serde_json::to_string(entry).unwrap_or_default());
    t
}

/// The summary `astrtc info` (and `make up`) prints. Never includes a password.
pub fn info_text(plan: &Plan, spec: &Path, secrets: &Path, out: &Path) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "WSS URL:    wss://{}:{}/ws", plan.tls.domain, plan.network.wss_port);
    let _ = writeln!(t, "SIP (UDP):  {}:{}", plan.tls.domain, plan.network.sip_port);
    if plan.listeners.sip_tls {
        let _ = writeln!(t, "SIP (TLS):  sip:{}:{};transport=tls", plan.tls.domain, plan.network.sip_tls_port);
    }
    let _ = writeln!(
        t,
        "phone:      https://{}:{}/static/phone/index.html (demo softphone, served by Asterisk)",
        plan.tls.domain, plan.network.wss_port
    );
    let _ = writeln!(t, "endpoints:");
    for e in &plan.endpoints {
        let how = match (e.kind, e.transport) {
            (EndpointKind::Webrtc, _) => "browser, WSS",
            (EndpointKind::Sip, Transport::Tls) => "SIP phone, TLS (register over TLS; SRTP required)",
            (EndpointKind::Sip, _) => "SIP phone, UDP",
        };
        let _ = writeln!(t, "  {:<12} {how}", e.id);
    }
    let _ = writeln!(t, "  {:<12} echo test (call it to hear yourself)", plan.dialplan.echo_extension);
    let _ = writeln!(t, "passwords:  {}", secrets.display());
    if plan.tls.mode == TlsMode::SelfSigned {
        let _ = writeln!(
            t,
            "browser CA: {} (import it as a trusted authority; see README, \"Trusting the local CA\")",
            out.join("keys").join(astrtc::certs::files::CA).display()
        );
    }
    if let Some(a) = &plan.tls.acme {
        let challenge = match a.challenge {
            AcmeChallenge::Http01 => format!("HTTP-01 on port {}", a.http_port),
            AcmeChallenge::Dns01 if a.dns_hook.is_some() => "DNS-01 through the hook".to_string(),
            AcmeChallenge::Dns01 => "DNS-01 by hand (the record is printed in the certs log)".to_string(),
        };
        let _ = writeln!(t, "certificate: ACME from {} ({challenge}), kept valid by the `certs` service", a.directory);
        let _ = writeln!(
            t,
            "             images: astrtc build --spec {}; progress: docker compose logs certs",
            spec.display()
        );
    }
    if let Some(turn) = &plan.turn {
        let who = if turn.bundled.is_some() { "bundled coturn, the `turn` service" } else { "your TURN server" };
        let _ = writeln!(t, "TURN:       {} ({who})", astrtc::turn::urls(turn).join(", "));
        let _ = writeln!(
            t,
            "            credentials: astrtc turn-credentials --spec {} --user ID (short-lived)",
            spec.display()
        );
    }
    let _ = writeln!(t, "logs:       cd {} && docker compose logs -f", out.display());
    let _ = writeln!(t, "check:      astrtc verify --spec {}", spec.display());
    t
}

/// Shows an image build: a spinner with the current step on a terminal (every output line with
/// `verbose`), plain step lines otherwise.
pub fn build_progress(verbose: bool) -> impl Fn(BuildEvent<'_>) {
    let tty = std::io::stderr().is_terminal();
    let bar: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);
    move |event| {
        let mut bar = bar.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match event {
            BuildEvent::Started { tag } if tty => {
                let pb = indicatif::ProgressBar::new_spinner();
                if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
                    pb.set_style(style);
                }
                pb.enable_steady_tick(Duration::from_millis(200));
                pb.set_message(format!("building {tag}"));
                *bar = Some(pb);
            }
            BuildEvent::Started { tag } => eprintln!("building {tag}"),
            BuildEvent::Step { step } => match bar.as_ref() {
                Some(pb) => pb.set_message(step.to_string()),
                None if !verbose => eprintln!("{step}"),
                None => {}
            },
            BuildEvent::Output { line } if verbose => match bar.as_ref() {
                Some(pb) => pb.suspend(|| eprintln!("{line}")),
                None => eprintln!("{line}"),
            },
            BuildEvent::Output { .. } => {}
            BuildEvent::Finished => {
                if let Some(pb) = bar.take() {
                    pb.finish_and_clear();
                }
            }
        }
    }
}

/// Shows issuance steps on stderr: a spinner while waiting when stderr is a terminal, plain
/// lines otherwise (sidecar logs).
pub fn acme_progress() -> Progress {
    let tty = std::io::stderr().is_terminal();
    let spinner: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);
    Progress::new(move |event| {
        let mut spinner = spinner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let wait = |msg: String| {
            if tty {
                let pb = indicatif::ProgressBar::new_spinner().with_message(msg);
                pb.enable_steady_tick(Duration::from_millis(120));
                Some(pb)
            } else {
                eprintln!("{msg}");
                None
            }
        };
        let done = |spinner: &mut Option<indicatif::ProgressBar>, msg: String| {
            if let Some(pb) = spinner.take() {
                pb.finish_and_clear();
            }
            eprintln!("{msg}");
        };
        match event {
            Event::OrderPlaced { attempt: 1 } => eprintln!("placing an ACME order"),
            Event::OrderPlaced { attempt } => {
                eprintln!("placing an ACME order (attempt {attempt}: the server rejected nonces)")
            }
            Event::CreateRecord { name, value } => done(
                &mut spinner,
                format!(
                    "create this DNS record now (astrtc waits until it is visible):\n\n    {name}. 60 IN TXT \"{value}\"\n"
                ),
            ),
            Event::WaitingForDns { records } => {
                *spinner = wait(format!("waiting until {records} TXT record(s) are visible (checked every 2 s)…"))
            }
            Event::DnsVisible { after } => {
                done(&mut spinner, format!("TXT record(s) visible after {:.1} s", after.as_secs_f64()))
            }
            Event::Validating { names } => *spinner = wait(format!("waiting for the CA to validate {names} name(s)…")),
            Event::Validated { after } => done(&mut spinner, format!("validated in {:.1} s", after.as_secs_f64())),
            Event::RemoveRecords { names } => {
                done(&mut spinner, format!("done: the TXT record(s) at {} may be removed now", names.join(", ")))
            }
        }
    })
}

/// One line saying what `certs issue|renew|watch` did.
pub fn certs_outcome(job: &Job, outcome: &Outcome) -> String {
    match outcome {
        Outcome::NotDue { days_left, .. } => format!(
            "{}: the certificate for {} is valid for {days_left} more days; not due",
            job.keys.display(),
            job.acme.names.join(", ")
        ),
        Outcome::Issued { serial, days, attempts, elapsed, .. } => format!(
            "wrote {} (asterisk.crt, asterisk.key, asterisk.pem): {}, serial {serial}, valid {days} days; \
             {attempts} order(s), {:.1} s",
            job.keys.display(),
            job.acme.names.join(", "),
            elapsed.as_secs_f64()
        ),
    }
}

/// An error and its sources on one line (`a: b: c`), for log lines.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

/// A duration as a person says it: seconds, minutes, hours or days.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

/// What `testenv up` prints without `--json`. Passwords stay in the instance's secrets file.
pub fn testenv_text(i: &astrtc::testenv::Instance) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "test environment {} ready in {} ms", i.name, i.ready_ms);
    let _ = writeln!(t, "WSS URL:    {}", i.wss_url);
    let _ = writeln!(t, "SIP (UDP):  {}", i.sip);
    let _ = writeln!(t, "RTP:        {}-{}", i.rtp.start, i.rtp.end);
    let _ = writeln!(t, "phone:      {}", i.phone_url);
    let ids: Vec<String> = i.endpoints.iter().map(|e| format!("{} ({:?})", e.id, e.kind).to_lowercase()).collect();
    let _ = writeln!(t, "endpoints:  {}; echo test {}", ids.join(", "), i.echo_extension);
    let secrets = i.spec.parent().map(|d| d.join("astrtc.secrets.toml")).unwrap_or_default();
    let _ = writeln!(t, "passwords:  {} (or use --json)", secrets.display());
    let _ = writeln!(t, "CA:         {} (shared by every test environment)", i.ca_file.display());
    if let Some(at) = i.expires_at {
        let _ = writeln!(t, "expires:    at {at} (unix time)");
    }
    let _ = writeln!(t, "remove:     {}", i.down);
    t
}

/// What `testenv list` prints.
pub fn testenv_list(list: &[astrtc::testenv::Listed]) -> String {
    use std::fmt::Write;
    if list.is_empty() {
        return "no test environments\n".into();
    }
    let mut t = String::new();
    for l in list {
        let _ = writeln!(
            t,
            "{:<16} {:<32} {}",
            l.name,
            l.wss_url.as_deref().unwrap_or("-"),
            l.sip.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    t
}

/// What `bench calls` says before it starts (stderr).
pub fn bench_start(o: &astrtc::bench::Options, t: &astrtc::bench::Target, counters: &[astrtc::bench::Counter]) {
    let levels: Vec<String> = o.levels.iter().map(u32::to_string).collect();
    let to = match (o.kind, &t.callee) {
        (astrtc::bench::Kind::WebrtcToSip, Some(c)) => format!("{} (answered here as a G.711 phone)", c.id),
        _ => format!("{} (echo)", t.echo_extension),
    };
    eprintln!(
        "bench {}: levels {}, {:.0} s window each, ramp {} calls/s; calls as {} to {to}; WSS {}, SIP {}, host candidate {}",
        o.kind.name(),
        levels.join(","),
        o.hold.as_secs_f64(),
        o.rate,
        t.caller.id,
        t.wss,
        t.sip,
        t.local_ip
    );
    if o.kind.uses_wss() {
        match o.webrtc_ports {
            0 => eprintln!("WebRTC media: a socket and a task per call"),
            n => eprintln!("WebRTC media: {n} shared UDP port(s), a task each, the calls taking them in turn"),
        }
    }
    match counters {
        [] => eprintln!("Asterisk CPU: not measured"),
        [one] if one.role == astrtc::bench::Role::Asterisk => eprintln!("Asterisk CPU: {}", one.source),
        many => {
            for c in many {
                eprintln!("CPU of {} ({}): {}", c.name, c.role.name(), c.source);
            }
        }
    }
}

/// Progress of `bench calls` (stderr).
pub fn bench_progress(p: astrtc::bench::Progress<'_>) {
    use astrtc::bench::Progress;
    match p {
        Progress::Level { calls } => eprintln!("level {calls}: ramping up"),
        Progress::Ramped { seconds } => eprintln!("  all started in {seconds:.1} s; settling, then measuring"),
        Progress::Done(l) => eprintln!("  {}", bench_row(l)),
    }
}

fn ms_per_call_second(c: Option<astrtc::bench::CpuFigures>) -> String {
    c.map(|c| format!("{:.2}", c.over_idle_per_call_second * 1000.0)).unwrap_or_else(|| "-".into())
}

fn bench_row(l: &astrtc::bench::LevelReport) -> String {
    let pair = |p: Option<astrtc::bench::Percentiles>| {
        p.map(|p| format!("{:.1}/{:.1}", p.p50, p.p99)).unwrap_or_else(|| "-".into())
    };
    let per_core = l.asterisk_cpu.map(|c| format!("{:.0}", c.calls_per_core())).unwrap_or_else(|| "-".into());
    format!(
        "{:>6} {:>7.1} {:>15} {:>7.2} {:>9} {:>10} {:>9} {:>10}  {}",
        l.calls,
        l.setup_percent,
        pair(l.setup_ms),
        l.loss_percent,
        l.jitter_ms.map(|j| format!("{:.1}", j.p99)).unwrap_or_else(|| "-".into()),
        ms_per_call_second(l.asterisk_cpu),
        per_core,
        ms_per_call_second(l.generator_cpu),
        if l.carried { "carried" } else { "NOT carried" },
    )
}

/// The table `bench calls` prints (stdout).
pub fn bench_summary(r: &astrtc::bench::BenchReport) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{}: {:.0} s window per level, ramp {} calls/s, {} CPUs here; Asterisk CPU: {}",
        r.kind.name(),
        r.hold_s,
        r.rate,
        r.host_cpus,
        r.asterisk_cpu_source
    );
    let _ = writeln!(
        t,
        "{:>6} {:>7} {:>15} {:>7} {:>9} {:>10} {:>9} {:>10}",
        "calls", "setup%", "setup p50/p99", "loss%", "jit p99", "ast ms/cs", "calls/cpu", "gen ms/cs"
    );
    for l in &r.levels {
        let _ = writeln!(t, "{}", bench_row(l));
    }
    for l in &r.levels {
        let codecs: Vec<String> = l.codecs.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
        let failures: Vec<String> = l.failures.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
        let mut line =
            format!("  level {}: codecs {}", l.calls, if codecs.is_empty() { "-".into() } else { codecs.join(", ") });
        if !failures.is_empty() {
            line.push_str(&format!("; failed: {}", failures.join(", ")));
        }
        if let Some(a) = l.answered {
            line.push_str(&format!(
                "; answering phone: {} INVITEs, {} confirmed, {} packets echoed",
                a.invites, a.confirmed, a.echoed
            ));
        }
        let _ = writeln!(t, "{line}");
    }
    let c = r.criteria;
    let criteria = format!(
        "≥ {} % set up, < {} % loss, p99 jitter < {} ms",
        c.min_setup_percent, c.max_loss_percent, c.max_jitter_p99_ms
    );
    match r.capacity {
        Some(n) => {
            let _ = writeln!(t, "capacity: {n} calls ({criteria})");
        }
        None => {
            let _ = writeln!(t, "capacity: no level carried ({criteria})");
        }
    }
    if let Some(per_core) = r.asterisk_calls_per_core() {
        let idle = r.asterisk_idle_cores.map(|c| format!("; idle it kept {c:.3} cores busy")).unwrap_or_default();
        let _ = writeln!(
            t,
            "Asterisk: {per_core:.0} calls per core (ms/cs: CPU milliseconds per second of one call, over idle{idle})"
        );
    }
    if r.services.len() > 1 {
        let _ = writeln!(
            t,
            "per service, at the largest carried level (else the largest measured); ms/cs per second of one call \
             of the run (a pool member carries its share of them), over the service's idle:"
        );
        let _ = writeln!(
            t,
            "  {:<12} {:<9} {:>6} {:>8} {:>10} {:>10} {:>13}",
            "service", "role", "calls", "ms/cs", "calls/core", "idle cores", "setup ms/call"
        );
        for s in &r.services {
            let idle = s.idle_cores.map(|c| format!("{c:.3}")).unwrap_or_else(|| "-".into());
            let (calls, ms, per_core, setup) = match r.service_level(&s.name) {
                Some(l) => {
                    let c = l.service_cpu[&s.name];
                    // A pool member carries a share of the calls: its calls per core would be
                    // overstated (the pool's own figure is the Asterisk line above). Setup cost
                    // is the edge's: the others' includes their media during the ramp.
                    let per_core = c.calls_per_core();
                    let member = r.services.iter().filter(|o| o.role == astrtc::bench::Role::Asterisk).count() > 1
                        && s.role == astrtc::bench::Role::Asterisk;
                    (
                        l.calls.to_string(),
                        format!("{:.2}", c.over_idle_per_call_second * 1000.0),
                        if per_core > 0.0 && !member { format!("{per_core:.0}") } else { "-".into() },
                        match s.role {
                            astrtc::bench::Role::Edge => {
                                l.service_setup_ms.get(&s.name).map(|m| format!("{m:.2}")).unwrap_or_else(|| "-".into())
                            }
                            _ => "-".into(),
                        },
                    )
                }
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                t,
                "  {:<12} {:<9} {calls:>6} {ms:>8} {per_core:>10} {idle:>10} {setup:>13}",
                s.name,
                s.role.name()
            );
        }
    }
    t
}

/// What `astrtc apply` says before a restart: why, and what the drain will do.
pub fn restart_announcement(
    container: &str,
    pending: &[astrtc::apply::Pending],
    calls: Option<u32>,
    drain_seconds: u32,
) -> String {
    use astrtc::render::restart::{apply_of, Apply};
    // Files of which a restart applies all (or a part: transports, the RTP range).
    let restart: Vec<&str> = pending
        .iter()
        .filter(|p| {
            !matches!(apply_of(p.file.trim_start_matches("secrets/")), Apply::Reload(_)) && !p.file.starts_with("keys/")
        })
        .map(|p| p.file.as_str())
        .collect();
    let why = if restart.is_empty() {
        "the container's definition changed (compose.yaml: image, ports, network mode or drain)".to_string()
    } else {
        format!(
            "{} changed where only a restart applies (modules, ports, transports, the RTP range)",
            restart.join(", ")
        )
    };
    let calls = match calls {
        Some(n) => format!("{n} call(s) in progress"),
        None => "calls in progress".to_string(),
    };
    format!(
        "this change needs a restart of {container}: {why}.\n\
         Asterisk drains first: new calls get 503 Service Unavailable, {calls} go on for up to {drain_seconds}s \
         (lifecycle.drain_seconds), then it stops and the new one starts."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5 s");
        assert_eq!(human_duration(Duration::from_secs(600)), "10 min");
        assert_eq!(human_duration(Duration::from_secs(3 * 3600)), "3 h");
        assert_eq!(human_duration(Duration::from_secs(60 * 86400)), "60 days");
    }
}
