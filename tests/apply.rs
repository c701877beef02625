//! `astrtc apply` and the graceful drain against a real compose stack (the image this repository
//! builds), with a live call carrying audio (tests/common/call.rs): a reload in place keeps the
//! call and Asterisk's PID and makes the change real (a new endpoint registers, an old password
//! is refused, the new dialplan answers); a change that needs a restart restarts, only when
//! confirmed; `docker compose stop` drains (new INVITE 503, the call goes on to its end, the
//! container exits right after), and a call outlasting `drain_seconds` is hung up at the deadline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::call::{invite_status, register_status, Call, CallSpec};
use crate::common::docker::{
    deployment_unrendered, ensure_guard, ensure_image, ensure_prometheus, ensure_sidecar, ensure_turn, ComposeProject,
};
use crate::common::*;

/// A compose deployment of the `host-alt-ports` fixture on free ports, under a project name of
/// its own, with `edit` applied to its spec; rendered and started (`up --wait`). Dropped, it
/// takes down every service, those of the `monitoring` profile too.
pub(crate) struct Stack {
    /// First, so it is dropped (`down`) while its directory still exists.
    pub compose: ComposeProject,
    pub dir: tempfile::TempDir,
    pub plan: astrtc::plan::Plan,
}

impl Stack {
    pub fn up(tag: &str, edit: impl Fn(String) -> String, profiles: &[&str]) -> Stack {
        let (dir, _) = deployment_unrendered();
        let spec = dir.path().join("astrtc.toml");
        let text = std::fs::read_to_string(&spec).unwrap();
        let name = format!("astrtc-{tag}-{}", std::process::id());
        std::fs::write(&spec, edit(text.replace("name = \"astrtc-test\"", &format!("name = {name:?}")))).unwrap();
        let plan = plan_for(&spec, astrtc::plan::HostFacts::detect()).unwrap();
        astrtc::deploy::write(&plan, &dir.path().join("deploy")).unwrap();
        // Every image the stack runs, built here: compose would otherwise try to pull one that
        // no other test has built yet (a fresh host has none; seen in a full run).
        ensure_image();
        if plan.guard.is_some() {
            ensure_guard();
        }
        if plan.turn.as_ref().is_some_and(|t| t.bundled.is_some()) {
            ensure_turn();
        }
        if plan.tls.acme.is_some() {
            ensure_sidecar();
        }
        if profiles.contains(&"monitoring") {
            ensure_prometheus();
        }
        let compose = ComposeProject { dir: dir.path().join("deploy") };
        let mut args: Vec<&str> = Vec::new();
        for p in profiles {
            args.extend(["--profile", p]);
        }
        args.extend(["up", "-d", "--wait"]);
        let out = compose.run(&args);
        assert!(out.status.success(), "compose up: {}", String::from_utf8_lossy(&out.stderr));
        Stack { compose, dir, plan }
    }

    pub fn spec(&self) -> PathBuf {
        self.dir.path().join("astrtc.toml")
    }

    pub fn container(&self) -> String {
        let out = self.compose.run(&["ps", "-q", "asterisk"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn pid(&self) -> String {
        let out = Command::new("docker")
            .args(["exec", &self.container(), "cat", "/run/asterisk/asterisk.pid"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn call_spec(&self, user: &str, target: &str) -> CallSpec {
        CallSpec {
            sip: format!("127.0.0.1:{}", self.plan.network.sip_port).parse().unwrap(),
            user: user.into(),
            password: self.plan.endpoints.iter().find(|e| e.id == user).unwrap().password.expose().to_string(),
            target: target.into(),
            skip_every: None,
        }
    }

    fn logs(&self) -> String {
        let out = self.compose.run(&["logs", "--no-color", "asterisk"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // `down` leaves the services of profiles it was not given running.
        let _ = self.compose.run(&["--profile", "monitoring", "down", "-v", "--timeout", "5"]);
    }
}

fn edit_file(path: &Path, f: impl Fn(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

/// Waits until `cond` holds (polling every 50 ms), at most `limit`.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn a_call_survives_an_apply_that_adds_an_endpoint_changes_a_password_and_the_dialplan() {
    if docker_off() {
        return;
    }
    let stack = Stack::up("reload", |t| t, &[]);
    let pid_before = stack.pid();
    let old_3002 = stack.call_spec("3002", "600");
    assert_eq!(register_status(&old_3002), 200);

    let call = Call::start(&stack.call_spec("3001", "600")).expect("the echo call is answered");
    wait_for(Duration::from_secs(5), "echoed audio", || call.stats().received > 50);

    // The change: a new endpoint, a new password for 3002, the echo test moved to 601.
    edit_file(&stack.spec(), |t| {
        t.replace("[tls]", "[dialplan]\necho_extension = \"601\"\n\n[tls]")
            + "\n[[endpoints]]\nid = \"3003\"\nkind = \"sip\"\n"
    });
    let secrets = stack.dir.path().join("astrtc.secrets.toml");
    edit_file(&secrets, |t| {
        t.replace(
            "3002 = \"fixture-sip-3002-password\"",
            "3002 = \"changed-sip-3002-password\"\n3003 = \"fixture-sip-3003-password\"",
        )
    });
    let started = Instant::now();
    let out = astrtc().args(["apply", "--spec"]).arg(stack.spec()).output().unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "apply failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("astrtc apply ({took:.1?}):\n{stdout}");
    assert!(stdout.contains("reloading") && stdout.contains("in place"), "{stdout}");
    assert!(stdout.contains("reloaded: module reload res_pjsip.so: pjsip.conf pjsip_auth.conf"), "{stdout}");
    assert!(stdout.contains("reloaded: dialplan reload: extensions.conf"), "{stdout}");
    assert!(!stdout.contains("restart"), "{stdout}");

    // The call goes on for two more seconds, its audio unbroken.
    std::thread::sleep(Duration::from_secs(2));
    let s = call.stats();
    assert!(s.bye_from_server_at.is_none(), "the call was dropped: {s:?}");
    let (s, bye) = call.hang_up();
    eprintln!(
        "call across apply: {} packets sent, {} received, longest RTP gap {:.0?} (at {:.1?} into the call)",
        s.sent, s.received, s.max_gap, s.max_gap_at
    );
    assert!(s.max_gap < Duration::from_millis(200), "RTP gap {:?} during apply:\n{}", s.max_gap, stack.logs());
    assert!(s.received + 25 > s.sent, "packets lost: {s:?}");
    assert_eq!(bye, Some(200), "the call had ended before its BYE");
    assert_eq!(stack.pid(), pid_before, "Asterisk was restarted");

    // The change is real: the new endpoint registers, the old password is refused, the new one
    // works, the echo test answers on 601 and no longer on 600.
    let plan = plan_for(&stack.spec(), astrtc::plan::HostFacts::detect()).unwrap();
    let sip = old_3002.sip;
    let as_user = |user: &str, password: &str, target: &str| CallSpec {
        sip,
        user: user.into(),
        password: password.into(),
        target: target.into(),
        skip_every: None,
    };
    let pw = |id: &str| plan.endpoints.iter().find(|e| e.id == id).unwrap().password.expose().to_string();
    assert_eq!(register_status(&as_user("3003", &pw("3003"), "")), 200, "the new endpoint");
    assert_eq!(register_status(&old_3002), 401, "the old password of 3002");
    assert_eq!(register_status(&as_user("3002", &pw("3002"), "")), 200, "the new password of 3002");
    assert_eq!(invite_status(&as_user("3001", &pw("3001"), "601")), 200, "the echo test on 601");
    assert_eq!(invite_status(&as_user("3001", &pw("3001"), "600")), 404, "600 is gone");

    // Nothing left to apply.
    let out = astrtc().args(["apply", "--spec"]).arg(stack.spec()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to apply"), "{out:?}");
}

#[test]
fn a_change_that_needs_a_restart_is_announced_and_done_only_when_confirmed() {
    if docker_off() {
        return;
    }
    let stack = Stack::up("restart", |t| t, &[]);
    let pid_before = stack.pid();
    let container_before = stack.container();
    // The RTP range moves by one port: only a restart applies it.
    edit_file(&stack.spec(), |t| {
        let start = stack.plan.rtp.start;
        t.replace(&format!("start = {start}"), &format!("start = {}", start + 10))
    });
    // No terminal and no --yes: refused, exit 2, nothing restarted.
    let out = astrtc().args(["apply", "--spec"]).arg(stack.spec()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("needs a restart") && stdout.contains("rtp.conf"), "{stdout}");
    assert!(stdout.contains("new calls get 503"), "{stdout}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!((stack.container(), stack.pid()), (container_before.clone(), pid_before.clone()));

    let started = Instant::now();
    let out = astrtc().args(["apply", "--yes", "--spec"]).arg(stack.spec()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("astrtc apply --yes ({:.1?}):\n{stdout}", started.elapsed());
    assert!(stdout.contains("restarted"), "{stdout}");
    assert_ne!(stack.container(), container_before, "the container was not replaced");
    let rtp = Command::new("docker")
        .args(["exec", &stack.container(), "asterisk", "-rx", "rtp show settings"])
        .output()
        .unwrap();
    let rtp = String::from_utf8_lossy(&rtp.stdout);
    let shown: u16 = rtp.lines().find_map(|l| l.trim().strip_prefix("Port start:")).unwrap().trim().parse().unwrap();
    // Asterisk rounds an odd start up to even.
    let want = stack.plan.rtp.start + 10;
    assert!(shown == want || shown == want + 1, "the new Asterisk starts RTP at {shown}, not {want}:\n{rtp}");
}

/// Whether the container has stopped (or is gone).
fn stopped(id: &str) -> bool {
    let out = Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", id]).output().unwrap();
    !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() == "false"
}

#[test]
fn compose_stop_drains_new_calls_get_503_and_the_call_in_progress_ends_on_its_own() {
    if docker_off() {
        return;
    }
    let stack = Stack::up("drain", |t| t.replace("[tls]", "[lifecycle]\ndrain_seconds = 120\n\n[tls]"), &[]);
    let id = stack.container();
    let call = Call::start(&stack.call_spec("3001", "600")).expect("the echo call is answered");
    wait_for(Duration::from_secs(5), "echoed audio", || call.stats().received > 50);

    let stop_started = Instant::now();
    let dir = stack.compose.dir.clone();
    let stopper = std::thread::spawn(move || {
        Command::new("docker").args(["compose", "stop", "asterisk"]).current_dir(dir).output().unwrap()
    });
    // Readiness turns false at once.
    let marker = wait_for(Duration::from_secs(5), "the drain marker", || {
        Command::new("docker")
            .args(["exec", &id, "test", "-e", "/run/asterisk/astrtc-draining"])
            .status()
            .is_ok_and(|s| s.success())
    });
    let health = Command::new("docker").args(["exec", &id, "/usr/local/bin/astrtc-healthcheck"]).output().unwrap();
    assert!(!health.status.success(), "healthy while draining");
    assert!(String::from_utf8_lossy(&health.stdout).contains("draining"));
    // A new call is refused with 503 while the first goes on.
    let code = invite_status(&stack.call_spec("3002", "600"));
    assert_eq!(code, 503, "a new INVITE while draining");
    std::thread::sleep(Duration::from_secs(3));
    assert!(!stopped(&id), "Asterisk stopped with a call in progress");
    let (s, bye) = call.hang_up();
    let ended = Instant::now();
    assert_eq!(bye, Some(200));
    assert!(s.bye_from_server_at.is_none(), "the server hung up the call: {s:?}");
    assert!(s.max_gap < Duration::from_millis(200), "RTP gap {:?} during the drain", s.max_gap);
    // The container exits right after the call's natural end.
    let exit_after = wait_for(Duration::from_secs(10), "the container's exit", || stopped(&id));
    let out = stopper.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let total = stop_started.elapsed();
    eprintln!(
        "drain: marker after {marker:.2?}, 503 for the new call, call ended by its caller after {:.1?}, \
         container exited {:.2?} after its BYE (stop took {total:.1?}); longest RTP gap {:.0?}",
        ended - stop_started,
        exit_after,
        s.max_gap
    );
    assert!(exit_after < Duration::from_secs(4), "the container took {exit_after:?} to exit after the last call");
    let logs = stack.logs();
    assert!(logs.contains("astrtc-drain: draining"), "{logs}");
}

#[test]
fn a_call_outlasting_drain_seconds_is_hung_up_at_the_deadline() {
    if docker_off() {
        return;
    }
    let drain: u32 = 5;
    let stack =
        Stack::up("deadline", |t| t.replace("[tls]", &format!("[lifecycle]\ndrain_seconds = {drain}\n\n[tls]")), &[]);
    let id = stack.container();
    let call = Call::start(&stack.call_spec("3001", "600")).expect("the echo call is answered");
    wait_for(Duration::from_secs(5), "echoed audio", || call.stats().received > 50);
    let since_answer = call.answered.elapsed();
    let stop_started = Instant::now();
    let dir = stack.compose.dir.clone();
    let stopper = std::thread::spawn(move || {
        Command::new("docker").args(["compose", "stop", "asterisk"]).current_dir(dir).output().unwrap()
    });
    let s = call.wait_ended(Duration::from_secs(u64::from(drain) + 20));
    let bye_at = s.bye_from_server_at.expect("the server never hung up") - since_answer;
    wait_for(Duration::from_secs(20), "the container's exit", || stopped(&id));
    let exited_at = stop_started.elapsed();
    assert!(stopper.join().unwrap().status.success());
    eprintln!(
        "deadline: drain_seconds {drain}, BYE from Asterisk {bye_at:.2?} after the stop began, container gone \
         {exited_at:.2?} after it began; longest RTP gap before {:.0?}",
        s.max_gap
    );
    let drain = Duration::from_secs(u64::from(drain));
    assert!(bye_at >= drain - Duration::from_millis(500), "hung up before the deadline: {bye_at:?}");
    assert!(bye_at < drain + Duration::from_secs(3), "hung up long after the deadline: {bye_at:?}");
    assert!(stop_started.elapsed() < drain + Duration::from_secs(8), "the container outlived the deadline");
}

/// The reloader in the image and astrtc name the same reload for every config file a render
/// writes (a file astrtc restarts for whole is `restart` there too; the reloader leaves the
/// restart decision to astrtc's digest, so for `pjsip.conf` and `rtp.conf` it names their reload).
#[test]
fn the_reloader_and_astrtc_agree_on_each_files_reload() {
    use astrtc::render::restart::{apply_of, reload_of_partly, Apply};
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/asterisk/runtime/astrtc-reload");
    let mut checked = 0;
    for case in fixture_cases() {
        let dir = fixture_copy(&case);
        let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
        for path in bundle_for(&plan).files().keys() {
            let Some(file) = path.to_str().and_then(|p| p.strip_prefix("asterisk/")) else { continue };
            let out = Command::new("sh").arg(&script).args(["action", file]).output().unwrap();
            let shell = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let rust = match apply_of(file) {
                Apply::Reload(cmd) => cmd.to_string(),
                Apply::Partly(_) => reload_of_partly(file).unwrap().to_string(),
                Apply::Restart => "restart".to_string(),
            };
            assert_eq!(shell, rust, "{case}: {file}");
            checked += 1;
        }
    }
    assert!(checked > 80, "only {checked} files checked");
    let out = Command::new("sh").arg(&script).args(["action", "keys/asterisk.crt"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "module reload http");
}

/// The reloader's first pass records what Asterisk loaded, and says so only when the record was
/// written: a run directory it cannot write (here a missing one) fails the pass (exit 1, a
/// `failed:` line), where it used to print "nothing changed (baseline recorded)" and exit 0 —
/// and every later pass would then have found no record and "recorded" again, reloading nothing.
/// A later pass (after a change) that cannot write its record fails the same way and leaves the
/// old record, so the next pass finds the change again.
#[test]
fn the_reloaders_pass_fails_when_it_cannot_record_what_was_loaded() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/asterisk/runtime/astrtc-reload");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("extensions.conf"), "[default]\n").unwrap();
    let once = |state: &Path| {
        Command::new("sh")
            .arg(&script)
            .arg("once")
            .env("ASTRTC_CONFIG_DIR", &conf)
            .env("ASTRTC_KEYS_DIR", dir.path().join("keys"))
            .env("ASTRTC_SECRETS_DIR", dir.path().join("secrets"))
            .env("ASTRTC_RELOAD_STATE", state)
            .output()
            .unwrap()
    };
    let out = once(&dir.path().join("missing/astrtc-loaded"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "a record it could not write passed: {stdout}{stderr}");
    assert!(stderr.contains("failed: recording the loaded files"), "{stderr}");
    assert!(!stdout.contains("baseline recorded"), "{stdout}");
    let state = dir.path().join("astrtc-loaded");
    let out = once(&state);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nothing changed (baseline recorded)");
    let record = std::fs::read_to_string(&state).unwrap();
    assert!(record.contains(" extensions.conf"), "the record: {record}");

    // A later pass that cannot record what it applied fails too, and the change stays unrecorded,
    // so the next pass applies it again. A change only a restart applies (modules.conf) asks
    // nothing of Asterisk; a directory where the record's temporary file goes stops even root.
    std::fs::write(conf.join("modules.conf"), "[modules]\nautoload = yes\n").unwrap();
    let blocker = dir.path().join("astrtc-loaded.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let out = once(&state);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "a pass whose record could not be written passed: {stdout}{stderr}");
    assert!(stderr.contains("failed: recording the reloaded files"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), record, "the record changed though it could not be written");
    std::fs::remove_dir(&blocker).unwrap();
    let out = once(&state);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "restart needed: modules.conf", "the unrecorded change is not found again");
    let out = once(&state);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nothing changed", "the change was not recorded");
}

/// A render that re-issues the self-signed leaf (here: a name added) reaches the running
/// container like any other change: `apply` reloads the HTTPS listener, which then serves the new
/// certificate; Asterisk keeps running.
#[test]
fn a_reissued_certificate_reaches_the_running_container_by_a_reload() {
    if docker_off() {
        return;
    }
    let stack = Stack::up("cert", |t| t, &[]);
    let pid_before = stack.pid();
    let ca = std::fs::read_to_string(stack.dir.path().join("deploy/keys/ca.crt")).unwrap();
    let wss = format!("127.0.0.1:{}", stack.plan.network.wss_port).parse().unwrap();
    let before = astrtc::verify::check_tls(wss, &stack.plan.tls.domain, &ca).unwrap().leaf.serial;
    edit_file(&stack.spec(), |t| {
        t.replace("domain = \"localhost\"", "domain = \"localhost\"\nextra_names = [\"pbx.localhost\"]")
    });
    let out = astrtc().args(["apply", "--spec"]).arg(stack.spec()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("reloaded: module reload http: keys/asterisk.crt keys/asterisk.key"), "{stdout}");
    let after = astrtc::verify::check_tls(wss, "pbx.localhost", &ca).expect("the new name is served").leaf.serial;
    assert_ne!(before, after, "the old certificate is still served");
    assert_eq!(stack.pid(), pid_before, "Asterisk was restarted");
}
