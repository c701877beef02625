//! The pool at work: a draining member, a member that stops answering, `bench` and `verify`
//! through the edge, `apply` writing users, the pool scaled by `apply` and by compose (proofs 3,
//! 7, 8, 12, 13 and 14 in `cluster`'s doc).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use astrtc::media::probe::{self, CallReport};
use astrtc::media::session::SharedMedia;
use serde_json::Value;

use crate::common::*;

use super::{
    assert_echoed, check_of, container_of, edge_log, runtime, started_and_pid, verify, wait_until, Member, Stack,
};

/// Runs `astrtc bench calls` against the stack; exit code, report (when written), output.
fn bench(stack: &Stack, kind: &str, levels: &str, extra: &[&str]) -> (i32, Option<astrtc::bench::BenchReport>, String) {
    let json = stack.dir.path().join(format!("bench-{kind}.json"));
    let _ = std::fs::remove_file(&json);
    let out = astrtc()
        .args(["bench", "calls", "--spec"])
        .arg(stack.dir.path().join("astrtc.toml"))
        .arg("--out")
        .arg(stack.dir.path().join("deploy"))
        .args(["--host", "127.0.0.1", "--kind", kind, "--levels", levels, "--hold", "3", "--rate", "10"])
        .arg("--json")
        .arg(&json)
        .args(extra)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("$ astrtc bench calls --kind {kind} --levels {levels} {extra:?}\n{text}");
    // miette wraps its messages in a frame: one line of words to search in.
    let text = text.split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
    let report = std::fs::read_to_string(&json).ok().map(|t| serde_json::from_str(&t).expect("the JSON is a report"));
    (out.status.code().unwrap_or(-1), report, text)
}

#[test]
fn bench_calls_through_the_edge_reads_every_service() {
    use astrtc::bench::Role;
    let Some(stack) = Stack::start("bench", |s| s) else { return };
    let members: Vec<String> = stack.members().iter().map(|m| m.name.clone()).collect();
    // Refused before any call: a kind that never reaches the pool, and one container for many.
    let (code, report, text) = bench(&stack, "webrtc-to-sip", "2", &[]);
    assert_eq!(code, 2, "{text}");
    assert!(report.is_none() && text.contains("relayed by rtpengine without Asterisk"), "{text}");
    let (code, _, text) = bench(&stack, "sip-echo", "2", &["--container", &container_of(&stack, &members[0])]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("a cluster's services are found by their compose project"), "{text}");
    // The relay opens a port pair on each side of a call: its range holds a quarter as many.
    let holds = (u32::from(stack.plan.rtp.end - stack.plan.rtp.start) + 1) / 4;
    let (code, _, text) = bench(&stack, "sip-echo", &(holds + 1).to_string(), &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains(&format!("at most {holds} calls")), "{text}");

    for (kind, codec) in [("sip-echo", "PCMU/8000"), ("webrtc-echo", "opus/48000/2")] {
        let before: Vec<u64> = members.iter().map(|m| stack.processed(m)).collect();
        let (code, report, text) = bench(&stack, kind, "6", &[]);
        if code != 0 {
            stack.save_logs("cluster_bench");
        }
        assert_eq!(code, 0, "{text}");
        let r = report.expect("a report");
        let l = &r.levels[0];
        assert_eq!((l.calls, l.set_up), (6, 6), "{kind}: {l:#?}");
        assert_eq!(l.codecs.get(codec), Some(&6), "{kind}: {:?}", l.codecs);
        // Every service measured, each from its own container, in the pool's order.
        let named: Vec<(&str, Role)> = r.services.iter().map(|s| (s.name.as_str(), s.role)).collect();
        let mut want: Vec<(&str, Role)> = members.iter().map(|m| (m.as_str(), Role::Asterisk)).collect();
        want.extend([("edge", Role::Edge), ("relay", Role::Relay), ("db", Role::Database)]);
        assert_eq!(named, want, "{kind}");
        let ids: std::collections::BTreeSet<&str> = r.services.iter().map(|s| s.source.as_str()).collect();
        assert_eq!(ids.len(), r.services.len(), "each service its own counter: {:?}", r.services);
        for s in &r.services {
            let short: String = container_of(&stack, &s.name).chars().take(12).collect();
            assert!(s.source.starts_with(&format!("container {short}:")), "{}: {}", s.name, s.source);
        }
        assert!(r.asterisk_cpu_source.contains(&members.join(", ")), "{}", r.asterisk_cpu_source);
        // The calls went through the edge and the relay to both members: each used CPU in the
        // window, and Asterisk's figure is the members' sum.
        let taken: Vec<u64> = members.iter().zip(&before).map(|(m, b)| stack.processed(m) - b).collect();
        assert!(taken.iter().all(|n| *n >= 1), "{kind}: both members take calls: {taken:?}");
        for name in members.iter().map(String::as_str).chain(["edge", "relay"]) {
            assert!(l.service_cpu.contains_key(name), "{kind}: no CPU figure for {name}");
        }
        // The relay forwards every packet of every call: it works well above its idle.
        let relay = l.service_cpu["relay"];
        assert!(relay.over_idle_per_call_second > 0.0, "{kind}: the relay did no work beyond its idle: {relay:?}");
        // The setup cost (ramp to window) is reported for every service read.
        let setup: Vec<&String> = l.service_setup_ms.keys().collect();
        assert_eq!(setup, l.service_cpu.keys().collect::<Vec<_>>(), "{kind}");
        let sum: f64 = members.iter().map(|m| l.service_cpu[m].cpu_seconds).sum();
        let a = l.asterisk_cpu.expect("the pool's sum");
        assert!((a.cpu_seconds - sum).abs() < 1e-9, "{kind}: Asterisk's {a:?} is not the members' sum {sum}");
        assert!(text.contains("per service, at the largest carried level"), "{text}");
    }
}

#[test]
fn verify_checks_the_pool_and_the_users_and_calls_through_the_edge() {
    let Some(stack) = Stack::start("verify", |s| s) else { return };
    let members: Vec<_> = stack.members();
    let (code, report) = verify(&stack, &["--call", "--endpoint", "199", "--endpoint", "3001"]);
    eprintln!("{report:#}");
    let failed: Vec<&Value> = report["checks"].as_array().unwrap().iter().filter(|c| c["status"] != "pass").collect();
    assert!(failed.is_empty(), "checks not passed: {failed:#?}");
    assert_eq!(code, 0);
    for m in &members {
        let (status, detail) = check_of(&report, &format!("pool {}", m.name));
        assert_eq!(status, "pass", "{detail}");
        assert!(detail.contains(&format!("sip:{}:", m.address)) && detail.contains("active"), "{detail}");
    }
    for m in &members {
        let (status, detail) = check_of(&report, &format!("modules {}", m.name));
        assert_eq!(status, "pass", "{detail}");
        assert!(detail.contains("res_pjsip.so") && detail.contains("codec_opus_open_source.so"), "{detail}");
    }
    let (_, users) = check_of(&report, "users");
    assert!(users.contains("198, 199, 3001, 3002"), "{users}");
    for ep in ["199", "3001"] {
        let (status, detail) = check_of(&report, &format!("call {ep}"));
        assert_eq!(status, "pass", "call {ep}: {detail}");
    }
    // Asterisk's own checks are a single deployment's: a cluster has none of them.
    assert!(report["checks"].as_array().unwrap().iter().all(|c| c["name"] != "endpoints"), "{report:#}");

    // A member stopped (no call on it: its drain ends at once) leaves Docker's DNS as it exits, and
    // the pool watcher takes it out of the edge's dispatcher; verify names it, and only it.
    let last = members.last().unwrap();
    let out = Command::new("docker").args(["stop", &last.id]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = wait_until(Duration::from_secs(20), || stack.flags_of(last.address).is_empty());
    assert!(gone.is_some(), "{} stayed in the edge's dispatcher: {:?}", last.name, stack.dispatcher_flags());
    eprintln!("{} left the edge's dispatcher {:.1?} after docker stop returned", last.name, gone.unwrap());
    // A module a member lost (no call uses it now): verify names it and the member.
    let out = stack.exec(&members[0].name, &["asterisk", "-rx", "module unload codec_opus_open_source.so"]);
    eprintln!("module unload on {}: {}", members[0].name, out.trim());
    // A password and a transport the database does not have (as after a spec change never
    // applied).
    stack.sql("UPDATE subscriber SET ha1 = md5('3001:x:old') WHERE username = '3001'");
    stack.sql("UPDATE astrtc_user SET transport = 'tls' WHERE username = '3002'");
    let (code, report) = verify(&stack, &[]);
    assert_ne!(code, 0, "{report:#}");
    let (status, detail) = check_of(&report, "users");
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("another password, max_contacts or transport for 3001, 3002"), "{detail}");
    let (status, detail) = check_of(&report, &format!("modules {}", members[0].name));
    eprintln!("modules {}: {status}: {detail}", members[0].name);
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("codec_opus_open_source.so not loaded"), "{detail}");
    let (status, detail) = check_of(&report, &format!("modules {}", last.name));
    assert_eq!(status, "fail", "the stopped member's modules: {detail}");
    assert!(detail.contains("is exited"), "{detail}");
    // A user the database lost.
    stack.sql("DELETE FROM subscriber WHERE username = '3002'");
    let (code, report) = verify(&stack, &[]);
    assert_ne!(code, 0, "{report:#}");
    let (status, detail) = check_of(&report, &format!("pool {}", last.name));
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("is exited"), "{detail}");
    assert_eq!(check_of(&report, &format!("pool {}", members[0].name)).0, "pass");
    let (status, detail) = check_of(&report, "users");
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("[198, 199, 3001, 3010]") && detail.contains("[198, 199, 3001, 3002, 3010]"), "{detail}");
}

#[test]
fn a_draining_member_takes_no_new_calls_and_keeps_its_call() {
    let Some(stack) = Stack::start("drain", |s| s) else { return };
    let members = stack.members();
    let probe_seconds = stack.cluster().probe_seconds;
    let echo = stack.plan.dialplan.echo_extension.clone();
    let rt = runtime();
    let shared = SharedMedia::new().unwrap();
    // Every member active before anything happens.
    stack.wait_all_active();

    // A call held on one member.
    let held = rt.spawn({
        let setup = stack.sip_setup("3001", &echo, Duration::from_secs(20));
        let shared = shared.clone();
        async move { probe::call(&setup, &shared).await }
    });
    let mut holder = None;
    let found = wait_until(Duration::from_secs(15), || {
        holder = members.iter().find(|m| stack.active(&m.name) > 0).cloned();
        holder.is_some()
    });
    assert!(found.is_some(), "the held call never showed up on a pool member");
    let holder = holder.unwrap();
    eprintln!("the held call is on {} ({})", holder.name, holder.address);

    // Stop it: docker stop runs its drain (new calls and OPTIONS get 503) and waits for it.
    let container = container_of(&stack, &holder.name);
    let stop_started = Instant::now();
    let stopper = std::thread::spawn(move || {
        let out = Command::new("docker").args(["stop", "-t", "120", &container]).output().unwrap();
        (out.status.success(), Instant::now())
    });
    let marked = wait_until(Duration::from_secs(u64::from(probe_seconds) * 3 + 5), || {
        stack.flags_of(holder.address).starts_with('I')
    });
    let flags = stack.dispatcher_flags();
    assert!(marked.is_some(), "{} was not marked inactive by the edge's probes: {flags:?}", holder.name);
    eprintln!(
        "{} marked inactive {:.1?} after docker stop began (probe interval {probe_seconds} s): {flags:?}",
        holder.name,
        marked.unwrap()
    );

    // New calls: all answered, none by the draining member.
    let before: Vec<u64> =
        members.iter().map(|m| if m.name == holder.name { 0 } else { stack.processed(&m.name) }).collect();
    let holder_before = stack.processed(&holder.name);
    let n = 6;
    for i in 0..n {
        let report = rt.block_on(probe::call(&stack.sip_setup("3002", &echo, Duration::from_secs(2)), &shared));
        assert_echoed(&format!("new call {}", i + 1), &report, 50);
    }
    let holder_after = stack.processed(&holder.name);
    let others: u64 = members
        .iter()
        .zip(&before)
        .filter(|(m, _)| m.name != holder.name)
        .map(|(m, b)| stack.processed(&m.name) - b)
        .sum();
    eprintln!("of {n} new calls: {} on the draining member, {others} on the others", holder_after - holder_before);
    assert_eq!(holder_after, holder_before, "the draining member took new calls");
    assert_eq!(others, n, "the other members did not take every new call");

    // The held call kept its audio to the end; then the member stopped by itself.
    let report = rt.block_on(held).unwrap();
    assert_echoed("the held call", &report, 800);
    let (stopped, at) = stopper.join().unwrap();
    assert!(stopped, "docker stop failed");
    eprintln!("{} stopped {:.1?} after docker stop began (when its last call ended)", holder.name, at - stop_started);
}

/// What a change must leave alone, taken before it by [`Stack::before_a_change`].
struct Before {
    /// A WebSocket to the edge with 199 registered on it.
    ws: crate::common::sip::Registrar,
    /// The edge's container.
    edge: String,
    /// Its `StartedAt` and PID.
    edge_before: String,
    /// An echo call held through the edge, the relay and the pool.
    held: tokio::task::JoinHandle<CallReport>,
}

impl Stack {
    /// Registers 199 over a WebSocket it keeps, notes the edge's container as it started, and
    /// holds an echo call from `user` for `hold` (waiting until its dialog is in the database).
    fn before_a_change(&self, rt: &tokio::runtime::Runtime, user: &str, hold: Duration) -> Before {
        let wss = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.plan.network.wss_port);
        let mut ws = crate::common::sip::Registrar::open(
            wss,
            &self.plan.tls.domain,
            &self.ca_pem(),
            "199",
            &self.password("199"),
        )
        .expect("no WebSocket to the edge");
        assert_eq!(ws.register(), Ok(200), "199 could not register over WSS");
        let edge = container_of(self, "edge");
        let edge_before = started_and_pid(&edge);
        let held = rt.spawn({
            let setup = self.sip_setup(user, &self.plan.dialplan.echo_extension, hold);
            async move { probe::call(&setup, &SharedMedia::new().unwrap()).await }
        });
        let up = wait_until(Duration::from_secs(10), || self.sql("SELECT count(*) FROM dialog").trim() != "0");
        assert!(up.is_some(), "the held call's dialog is not in the database");
        Before { ws, edge, edge_before, held }
    }
}

#[test]
fn apply_writes_users_into_the_database_without_restarting_the_edge() {
    use crate::common::call::{invite_status, CallSpec};
    use crate::common::sip::Registrar;
    let Some(stack) = Stack::start("apply", |s| s) else { return };
    let rt = runtime();
    let domain = stack.plan.tls.domain.clone();
    let edge_sip = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    let register = |user: &str, password: &str| {
        Registrar::udp(edge_sip, &domain, user, password).and_then(|mut r| r.register()).unwrap_or_else(|e| {
            stack.save_logs("cluster_apply");
            panic!("REGISTER {user}: {e}")
        })
    };
    let invite = |target: &str| {
        invite_status(&CallSpec {
            sip: edge_sip,
            user: "3001".into(),
            password: stack.password("3001"),
            target: target.into(),
            skip_every: None,
        })
    };

    // Before: a UDP phone registered (its row in `location`), a WebSocket held open with a
    // registration on it, a call to the echo extension held through the edge, the relay and
    // the pool, and the edge's container as it started.
    assert_eq!(register("3001", &stack.password("3001")), 200, "3001 could not register");
    let row = || stack.sql("SELECT ruid, contact, received, expires FROM location WHERE username = '3001'");
    let registration = row();
    assert!(!registration.trim().is_empty(), "3001's registration is not in the database");
    let Before { mut ws, edge, edge_before, held } = stack.before_a_change(&rt, "3001", Duration::from_secs(12));

    // The change: endpoint 3003 added, 3002's password changed.
    let old_3002 = stack.password("3002");
    let (new_3002, new_3003) = ("applied-sip-3002-password-new", "applied-sip-3003-password");
    let secrets = stack.dir.path().join("astrtc.secrets.toml");
    let text = std::fs::read_to_string(&secrets).unwrap();
    let edited = text.replacen("[endpoints]\n", &format!("[endpoints]\n3003 = {new_3003:?}\n"), 1).replacen(
        &format!("3002 = {old_3002:?}"),
        &format!("3002 = {new_3002:?}"),
        1,
    );
    assert_eq!(edited.matches("applied-sip-").count(), 2, "the secrets file was not edited: {edited}");
    std::fs::write(&secrets, edited).unwrap();
    let spec = stack.dir.path().join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("{text}\n[[endpoints]]\nid = \"3003\"\nkind = \"sip\"\n")).unwrap();

    // No --yes and no terminal: it must need no restart, or it would refuse (exit 2).
    let started = Instant::now();
    let out = astrtc().args(["apply", "--spec"]).arg(&spec).output().unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("astrtc apply ({took:.1?}):\n{stdout}");
    assert!(out.status.success(), "apply failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("users: 6 written to the database (1 added: 3003, 0 removed, 1 password(s) changed: 3002"),
        "{stdout}"
    );
    assert!(stdout.contains("edge: unchanged, not restarted"), "{stdout}");
    // The pool holds no user (render::a_clusters_pool_holds_no_user_and_no_password): nothing to
    // reload there.
    assert!(stdout.contains("pool: asterisk-1, asterisk-2 unchanged"), "{stdout}");
    assert!(!stdout.contains("only a restart applies"), "{stdout}");

    // After: 3003 registers; 3002's old password is refused and the new one taken.
    assert_eq!(register("3003", new_3003), 200, "the new endpoint 3003 could not register through the edge");
    assert_eq!(register("3002", &old_3002), 401, "3002's old password was not refused");
    assert_eq!(register("3002", new_3002), 200, "3002's new password was not taken");
    // The edge was not restarted: the same container, started at the same time, the same PID;
    // the WebSocket opened before is still open (a REGISTER on it answered); the earlier
    // registration is still in the database, unchanged.
    assert_eq!(container_of(&stack, "edge"), edge, "the edge container was replaced");
    let edge_after = started_and_pid(&edge);
    eprintln!("edge StartedAt and PID before and after apply: {edge_before} / {edge_after}");
    assert_eq!(edge_before, edge_after, "the edge was restarted");
    assert_eq!(ws.register(), Ok(200), "the WebSocket opened before apply was closed");
    assert_eq!(row(), registration, "3001's registration changed across apply");
    let held = rt.block_on(held).unwrap();
    if !held.healthy() {
        stack.save_logs("cluster_apply");
    }
    // 12 s at 50 packets a second: a gap of 1 s or more would fail this.
    assert_echoed("call held across apply", &held, 550);
    assert_eq!(held.hangup.as_deref(), Some("BYE answered 200 OK"), "{}", held.ladder.join("\n"));

    // A user's extension is found in the database (198 is a user, not registered: 480), and a
    // request URI written to change the query is no user (the pool answers it: 404).
    assert_eq!(invite("198"), 480, "a user who is not registered");
    let hostile = invite("x'OR'1'='1");
    eprintln!("INVITE sip:x'OR'1'='1@edge: {hostile}");
    assert_eq!(hostile, 404, "a request URI with SQL in it was taken for a user");

    // Nothing left to do: the same users, nothing to reload.
    let out = astrtc().args(["apply", "--spec"]).arg(&spec).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("astrtc apply again:\n{stdout}");
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("(0 added, 0 removed, 0 password(s) changed, 0 max_contacts changed, 0 transport(s) changed)"),
        "{stdout}"
    );
    assert!(stdout.contains("pool: asterisk-1, asterisk-2 unchanged"), "{stdout}");
    // The same members: the dispatcher is not reloaded (a reload would reset what its probes
    // and failovers learnt about each member).
    assert!(!stdout.contains("dispatcher reloaded"), "{stdout}");

    // A change only an edge restart applies (the probe interval, in kamailio.cfg): announced,
    // refused without --yes and a terminal (exit 2, the edge untouched), done with --yes.
    let text = std::fs::read_to_string(&spec).unwrap();
    let edited = text.replacen("probe_seconds = 1\n", "probe_seconds = 2\n", 1);
    assert_ne!(edited, text, "the spec has no probe_seconds = 1");
    std::fs::write(&spec, edited).unwrap();
    let out = astrtc().args(["apply", "--spec"]).arg(&spec).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("astrtc apply (probe interval changed):\n{stdout}");
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("only a restart applies") && stdout.contains("edge ("), "{stdout}");
    assert!(stdout.contains("closes every browser's WebSocket"), "{stdout}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(started_and_pid(&edge), edge_before, "the edge was restarted without --yes");
    let started = Instant::now();
    let out = astrtc().args(["apply", "--yes", "--spec"]).arg(&spec).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("astrtc apply --yes ({:.1?}):\n{stdout}", started.elapsed());
    if !out.status.success() {
        stack.save_logs("cluster_apply");
    }
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("restarted: every service healthy"), "{stdout}");
    let edge_now = container_of(&stack, "edge");
    assert_ne!(started_and_pid(&edge_now), edge_before, "the edge was not restarted");
    assert!(stdout.contains("pool: asterisk-1, asterisk-2 unchanged"), "{stdout}");
    assert_eq!(register("3003", new_3003), 200, "3003 could not register through the restarted edge");
}

/// Calls to the echo extension through the edge, one after another; the calls each pool member
/// took, by name (asserting each call echoed).
fn echo_calls(stack: &Stack, members: &[&str], n: usize) -> Vec<(String, u64)> {
    let rt = runtime();
    let shared = SharedMedia::new().unwrap();
    let echo = stack.plan.dialplan.echo_extension.clone();
    let before: Vec<u64> = members.iter().map(|m| stack.processed(m)).collect();
    for i in 0..n {
        let report = rt.block_on(probe::call(&stack.sip_setup("3001", &echo, Duration::from_secs(2)), &shared));
        if !report.healthy() {
            stack.save_logs("cluster_grow");
        }
        assert_echoed(&format!("call {}", i + 1), &report, 50);
    }
    members.iter().zip(before).map(|(m, b)| (m.to_string(), stack.processed(m) - b)).collect()
}

/// `docker compose up -d --wait --scale asterisk=N` in the stack's directory, as an operator (or
/// anything that drives compose) would scale the pool, without astrtc: its stdout and stderr.
fn compose_scale(stack: &Stack, n: u32) -> String {
    let scale = format!("asterisk={n}");
    let started = Instant::now();
    let out = stack.project.run(&["up", "-d", "--wait", "--wait-timeout", "120", "--scale", &scale]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("docker compose up --scale {scale}: {:.1?}", started.elapsed());
    assert!(out.status.success(), "docker compose up --scale {scale} failed: {text}");
    text
}

/// Waits (30 s at most: the pool watcher looks every 5 s) until the edge's dispatcher holds
/// exactly the running members, every one active and probed (`AP`).
fn wait_pool_is_the_running_members(stack: &Stack, what: &str) -> Vec<Member> {
    let started = Instant::now();
    let followed = wait_until(Duration::from_secs(30), || {
        let mut want: Vec<String> =
            stack.members().iter().map(|m| format!("sip:{}:{}", m.address, stack.plan.network.sip_port)).collect();
        want.sort();
        let pool = stack.dispatcher_flags();
        let mut held: Vec<String> = pool.iter().map(|(u, _)| u.clone()).collect();
        held.sort();
        held == want && pool.iter().all(|(_, f)| f == "AP")
    });
    eprintln!("{what}: the dispatcher holds the running members, all AP, after {:.1?}", started.elapsed());
    let members = stack.members();
    assert!(
        followed.is_some(),
        "{what}: the edge's dispatcher does not hold the running members {:?}, all active: {:?}",
        members.iter().map(|m| (&m.name, m.address)).collect::<Vec<_>>(),
        stack.dispatcher_flags()
    );
    members
}

#[test]
fn the_edge_follows_the_pool_as_apply_or_compose_scales_it_and_nothing_else_restarts() {
    let Some(stack) = Stack::start("grow", |s| s) else { return };
    let rt = runtime();
    let spec = stack.dir.path().join("astrtc.toml");
    let apply = |yes: bool| {
        let mut cmd = astrtc();
        cmd.arg("apply");
        if yes {
            cmd.arg("--yes");
        }
        let started = Instant::now();
        let out = cmd.arg("--spec").arg(&spec).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("astrtc apply{} ({:.1?}):\n{stdout}", if yes { " --yes" } else { "" }, started.elapsed());
        (out.status.code(), stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let set_pool_size = |n: u32| {
        let text = std::fs::read_to_string(&spec).unwrap();
        let edited: Vec<String> = text
            .lines()
            .map(|l| if l.starts_with("pool_size = ") { format!("pool_size = {n}") } else { l.to_string() })
            .collect();
        let edited = edited.join("\n") + "\n";
        assert!(edited.contains(&format!("\npool_size = {n}\n")), "pool_size not set to {n}: {edited}");
        std::fs::write(&spec, edited).unwrap();
    };

    // Before: a WebSocket registered at the edge, a call held through the edge to the pool, the
    // edge's container as it started.
    let Before { mut ws, edge, edge_before, held } = stack.before_a_change(&rt, "3002", Duration::from_secs(90));
    let others = ["db", "relay", "pool-watch", "asterisk-1", "asterisk-2"];
    let others_before: Vec<String> = others.iter().map(|s| started_and_pid(&container_of(&stack, s))).collect();

    // 1. The spec grows the pool to 3: apply starts a third replica and nothing restarts, so no
    //    --yes is needed (without a terminal a restart would be refused with exit 2); the pool
    //    watcher adds it to the edge's dispatcher, which apply waits for.
    set_pool_size(3);
    let (code, stdout, stderr) = apply(false);
    assert_eq!(code, Some(0), "apply refused or failed: {stdout}{stderr}");
    assert!(!stdout.contains("only a restart applies"), "{stdout}");
    assert!(stdout.contains("starting 1 new pool member(s) (the spec's pool_size is 3, 2 run)"), "{stdout}");
    assert!(stdout.contains("edge: unchanged, not restarted"), "{stdout}");
    assert!(stdout.contains("edge: its dispatcher holds the 3 running member(s), not restarted"), "{stdout}");
    let members = wait_pool_is_the_running_members(&stack, "pool_size 3, applied");
    assert_eq!(members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["asterisk-1", "asterisk-2", "asterisk-3"]);
    let taken = echo_calls(&stack, &["asterisk-1", "asterisk-2", "asterisk-3"], 12);
    eprintln!("12 echo calls after apply added a member: {taken:?}");
    for (m, n) in &taken {
        assert!(*n >= 2, "{m} took {n} of 12 calls: {taken:?}");
    }

    // 2. Compose alone scales the pool to 4 and back to 3 — no astrtc, no render: the edge
    //    follows the replicas (Docker's DNS) and sends calls to the fourth, then none.
    let log_before = stack.project.run(&["logs", "--no-color", "pool-watch"]);
    let lines_before = String::from_utf8_lossy(&log_before.stdout).matches("dispatcher.reload:").count();
    compose_scale(&stack, 4);
    let members = wait_pool_is_the_running_members(&stack, "compose --scale asterisk=4");
    assert_eq!(members.len(), 4, "{members:?}");
    let fourth = members[3].clone();
    assert_eq!(fourth.name, "asterisk-4");
    let log = stack.project.run(&["logs", "--no-color", "pool-watch"]);
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(
        log.matches("dispatcher.reload:").count() > lines_before
            && log.contains(&format!("sip:{}:{}", fourth.address, stack.plan.network.sip_port)),
        "the pool watcher logged no reload naming the fourth member: {log}"
    );
    let taken = echo_calls(&stack, &["asterisk-1", "asterisk-2", "asterisk-3", "asterisk-4"], 8);
    eprintln!("8 echo calls with compose's fourth member: {taken:?}");
    assert!(taken[3].1 >= 1, "the fourth member took none of 8 calls: {taken:?}");
    compose_scale(&stack, 3);
    let members = wait_pool_is_the_running_members(&stack, "compose --scale asterisk=3");
    assert!(!members.iter().any(|m| m.name == "asterisk-4"), "{members:?}");
    assert!(
        !stack.dispatcher_flags().iter().any(|(u, _)| u.starts_with(&format!("sip:{}:", fourth.address))),
        "the removed member is still in the edge's dispatcher: {:?}",
        stack.dispatcher_flags()
    );

    // Nothing else restarted: the database, the relay, the pool watcher, the two first members
    // (same container, start and PID), the edge (the same, and the WebSocket still answered) and
    // the call held through it all (still up now, its audio checked when it ends).
    let up: u64 = stack.members().iter().map(|m| stack.active(&m.name)).sum();
    assert!(up >= 1, "the call held since before the scaling is no longer up");
    let others_after: Vec<String> = others.iter().map(|s| started_and_pid(&container_of(&stack, s))).collect();
    assert_eq!(others_before, others_after, "one of {others:?} was restarted");
    assert_eq!(container_of(&stack, "edge"), edge, "the edge container was replaced");
    assert_eq!(started_and_pid(&edge), edge_before, "the edge was restarted");
    assert_eq!(ws.register(), Ok(200), "the WebSocket opened before was closed");
    let held = rt.block_on(held).unwrap();
    if !held.healthy() {
        stack.save_logs("cluster_grow");
    }
    // 90 s at 50 packets a second: a gap of 1 s or more would fail this.
    assert_echoed("call held across the scaling", &held, 4450);

    // 3. The spec shrinks the pool to 2: verify says how many run against the spec's size; apply
    //    announces the member it drains and removes, refuses without --yes, does it with it.
    set_pool_size(2);
    let (_, report) = verify(&stack, &[]);
    let (status, detail) = check_of(&report, "pool");
    eprintln!("verify before apply: pool {status}: {detail}");
    assert!(detail.contains("3 of") && detail.contains("pool_size is 2"), "{detail}");
    let third = members[2].clone();
    let (code, stdout, stderr) = apply(false);
    assert_eq!(code, Some(2), "a member was removed without --yes: {stdout}{stderr}");
    assert!(
        stdout.contains("asterisk: the pool scales from 3 to the spec's pool_size, 2: 1 member(s) stopped and removed"),
        "{stdout}"
    );
    assert_eq!(stack.flags_of(third.address).get(..1), Some("A"), "asterisk-3 left the dispatcher without --yes");
    let (code, stdout, stderr) = apply(true);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("edge: its dispatcher holds the 2 running member(s), not restarted"), "{stdout}");
    let members = wait_pool_is_the_running_members(&stack, "pool_size 2, applied");
    assert_eq!(members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["asterisk-1", "asterisk-2"]);
    let ps = stack.project.run(&["ps", "--all", "--format", "{{.Name}}"]);
    assert!(!String::from_utf8_lossy(&ps.stdout).contains("asterisk-3"), "asterisk-3 was not removed");
    assert_eq!(started_and_pid(&edge), edge_before, "removing a member restarted the edge");
    let others_after: Vec<String> = others.iter().map(|s| started_and_pid(&container_of(&stack, s))).collect();
    assert_eq!(others_before, others_after, "removing a member restarted one of {others:?}");
    assert_eq!(ws.register(), Ok(200), "removing a member closed the WebSocket");
    let taken = echo_calls(&stack, &["asterisk-1", "asterisk-2"], 4);
    assert_eq!(taken.iter().map(|(_, n)| n).sum::<u64>(), 4, "{taken:?}");
}

/// A member that stops answering (paused: no reply, no ICMP, as a hung or unplugged server) with
/// the probes far apart: the call the dispatcher gives it times out at the edge (tm's 5 s
/// `fr_timer`) and fails over to the next member; the failover marks it inactive, so the calls
/// after it go straight to the other. Every call succeeds.
#[test]
fn a_member_that_stops_answering_fails_its_call_over_and_every_call_succeeds() {
    let Some(stack) = Stack::start("failover", |s| {
        assert!(s.contains("probe_seconds = 1\n"), "the fixture's probe_seconds line was not found");
        s.replace("probe_seconds = 1\n", "probe_seconds = 60\n")
    }) else {
        return;
    };
    let members = stack.members();
    let echo = stack.plan.dialplan.echo_extension.clone();
    let rt = runtime();
    let shared = SharedMedia::new().unwrap();
    // The edge restarted now, so that its next probe is a minute away: none can mark the frozen
    // member before a call does.
    let out = stack.project.run(&["restart", "edge"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = stack.project.run(&["up", "-d", "--wait", "--wait-timeout", "60", "edge"]);
    assert!(out.status.success(), "the edge did not come back: {}", String::from_utf8_lossy(&out.stderr));
    let restarted = Instant::now();
    stack.wait_all_active();
    let (hung, other) = (&members[0], &members[1]);
    let container = container_of(&stack, &hung.name);
    let before = stack.processed(&other.name);
    let out = Command::new("docker").args(["pause", &container]).output().unwrap();
    assert!(out.status.success(), "docker pause: {}", String::from_utf8_lossy(&out.stderr));
    struct Unpause(String);
    impl Drop for Unpause {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["unpause", &self.0]).output();
        }
    }
    let _unpause = Unpause(container);

    // Four calls, one after another: round robin gives the hung member one of the first two.
    for i in 0..4 {
        let started = Instant::now();
        let report = rt.block_on(probe::call(&stack.sip_setup("3001", &echo, Duration::from_secs(2)), &shared));
        eprintln!("call {} took {:.1?} in all", i + 1, started.elapsed());
        if !report.healthy() {
            stack.save_logs("cluster_failover");
        }
        assert_echoed(&format!("call {} with {} hung", i + 1, hung.name), &report, 50);
    }
    let flags = stack.dispatcher_flags();
    eprintln!(
        "the calls were over {:.1?} after the edge's restart (its first probe comes at 60 s)",
        restarted.elapsed()
    );
    let log = edge_log(&stack);
    let failovers: Vec<&str> = log.lines().filter(|l| l.contains("astrtc: pool member ")).collect();
    eprintln!("the edge's failovers: {failovers:#?}\nthe dispatcher: {flags:?}");
    let want = format!("astrtc: pool member sip:{}:", hung.address);
    assert_eq!(
        failovers.iter().filter(|l| l.contains(&want) && l.contains("(408)")).count(),
        1,
        "not exactly one call failed over from {} after a timeout: {failovers:#?}",
        hung.name
    );
    assert_eq!(failovers.len(), 1, "another member failed a call: {failovers:#?}");
    // Marked inactive by the failover itself: the next probe is up to 60 s away.
    assert!(stack.flags_of(hung.address).starts_with('I'), "{} is still active: {flags:?}", hung.name);
    assert_eq!(stack.processed(&other.name) - before, 4, "{} did not answer every call", other.name);
}
