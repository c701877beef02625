//! `astrtc verify` against real deployments of the image: a good one passes every check; each
//! deliberately broken one (wrong certificate name, wrong password, a module missing, nothing
//! listening) fails exactly the checks it should, each with its own remedy.

use std::path::Path;

use astrtc::certs::files;
use astrtc::testing;
use serde_json::Value;

use crate::common::docker::{
    deployment, ensure_guard, ensure_image, install_leaf_for, overwrite_keep_mode, ComposeProject,
};
use crate::common::*;

/// Runs `astrtc verify --json`; returns (exit code, report).
fn verify(dir: &Path, container: Option<&str>) -> (i32, Value) {
    let mut cmd = astrtc();
    cmd.arg("verify").arg("--spec").arg(dir.join("astrtc.toml")).arg("--out").arg(dir.join("deploy")).args([
        "--host",
        "127.0.0.1",
        "--json",
    ]);
    if let Some(c) = container {
        cmd.args(["--container", c]);
    }
    let out = cmd.output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), report)
}

fn failed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_deployment_passes_and_a_wrong_password_is_named() {
    if docker_off() {
        return;
    }
    let (dir, plan) = deployment();
    ensure_image();
    let asterisk = testing::start(&plan, &dir.path().join("deploy")).await.unwrap();
    let (code, report) = verify(dir.path(), Some(asterisk.id()));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true);
    let names: Vec<_> = report["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for n in ["tls", "websocket", "register 199", "sip udp", "module res_srtp.so", "endpoints"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
        assert_eq!(check(&report, n)["status"], "pass", "{report:#}");
    }

    // The secrets file now says something the deployment does not use.
    let secrets = dir.path().join("astrtc.secrets.toml");
    let text = std::fs::read_to_string(&secrets).unwrap();
    std::fs::write(&secrets, text.replace("fixture-webrtc-199-password", "a-different-199-password")).unwrap();
    let (code, report) = verify(dir.path(), Some(asterisk.id()));
    assert_eq!(code, 1);
    assert_eq!(failed(&report), ["register 199"]);
    let c = check(&report, "register 199");
    assert!(c["detail"].as_str().unwrap().starts_with("401"), "{c}");
    assert!(c["remedy"].as_str().unwrap().contains("wrong password for endpoint 199"), "{c}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_fails_tls_with_both_names() {
    if docker_off() {
        return;
    }
    let (dir, plan) = deployment();
    ensure_image();
    install_leaf_for(dir.path(), &plan, "pbx.old.test");
    let asterisk = testing::start(&plan, &dir.path().join("deploy")).await.unwrap();
    let (code, report) = verify(dir.path(), Some(asterisk.id()));
    assert_eq!(code, 1);
    assert_eq!(failed(&report), ["tls"], "{report:#}");
    let remedy = check(&report, "tls")["remedy"].as_str().unwrap();
    assert!(remedy.contains("pbx.old.test") && remedy.contains("the spec says localhost"), "{remedy}");
    assert_eq!(check(&report, "register 199")["status"], "skip");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_module_is_named() {
    if docker_off() {
        return;
    }
    let (dir, plan) = deployment();
    ensure_image();
    let modules = dir.path().join("deploy/asterisk/modules.conf");
    let text = std::fs::read_to_string(&modules).unwrap();
    std::fs::write(&modules, format!("{text}noload = res_srtp.so\n")).unwrap();
    let asterisk = testing::start(&plan, &dir.path().join("deploy")).await.unwrap();
    let (code, report) = verify(dir.path(), Some(asterisk.id()));
    assert_eq!(code, 1);
    assert_eq!(failed(&report), ["module res_srtp.so"], "{report:#}");
    let c = check(&report, "module res_srtp.so");
    assert!(c["remedy"].as_str().unwrap().contains("noload = res_srtp.so"), "{c}");
}

#[test]
fn nothing_listening_fails_tls_and_sip_with_their_own_messages() {
    let (dir, plan) = deployment();
    let (code, report) = verify(dir.path(), None);
    assert_eq!(code, 1);
    let f = failed(&report);
    assert_eq!(f, ["tls", "sip udp"], "{report:#}");
    let wanted = format!("nothing accepts connections on 127.0.0.1:{}", plan.network.wss_port);
    assert!(check(&report, "tls")["remedy"].as_str().unwrap().contains(&wanted), "{report:#}");
    assert!(check(&report, "sip udp")["detail"].as_str().unwrap().contains("no answer to OPTIONS"));
    assert_eq!(check(&report, "websocket")["status"], "skip");
}

#[test]
fn without_the_rendered_ca_the_spec_local_ca_is_used() {
    let (dir, _plan) = deployment();
    std::fs::remove_file(dir.path().join("deploy/keys").join(files::CA)).unwrap();
    let (code, report) = verify(dir.path(), None);
    assert_eq!(code, 1, "{report:#}");
    // It got as far as connecting (nothing listens here) with the CA of tls.ca_dir, instead of
    // failing to read deploy/keys/ca.crt.
    assert!(check(&report, "tls")["remedy"].as_str().unwrap().contains("nothing accepts connections"), "{report:#}");
    // With the CA gone as well there is nothing to verify against: a clear error naming it.
    std::fs::remove_file(dir.path().join(".astrtc/ca/ca.crt")).unwrap();
    let out = astrtc().arg("verify").arg("--spec").arg(dir.path().join("astrtc.toml")).assert().code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("failed to read") && err.contains(".astrtc/ca/ca.crt"), "{err}");
}

/// Runs `astrtc verify --spec SPEC ARGS` for its human report; returns (exit code, stdout).
fn verify_text(spec: &Path, args: &[impl AsRef<std::ffi::OsStr>]) -> (i32, String) {
    let out = astrtc().arg("verify").arg("--spec").arg(spec).args(args).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One line of the human report: the mark, the name padded to the report's widest name, the
/// detail; a remedy goes on the next line under the detail, after `-> `.
fn row(width: usize, mark: &str, name: &str, detail: &str) -> String {
    format!("{mark} {name:<width$}  {detail}")
}

fn remedy(width: usize, text: &str) -> String {
    format!("     {:<width$}  -> {text}", "")
}

/// The widest check name of a full report.
const WIDTH: usize = "module res_pjsip_transport_websocket.so".len();

/// The newcomer's command: `astrtc verify --spec` and nothing else, against a deployment started
/// with `docker compose up` from the rendered directory. The host is the spec's domain, the CA
/// the rendered one, and the container is found by its compose project (the module and endpoint
/// checks run instead of being skipped). Then the default host shown to be the domain: one that
/// does not resolve is named, with the remedy, and `--host` overrides it.
#[test]
fn verify_with_only_the_spec_checks_a_compose_deployment_found_by_its_project() {
    if docker_off() {
        return;
    }
    let (dir, plan) = deployment();
    let spec = dir.path().join("astrtc.toml");
    let (wss, sip) = (plan.network.wss_port, plan.network.sip_port);
    // A project name of this test's own (verify looks the container up by it).
    let text = std::fs::read_to_string(&spec).unwrap();
    let named = text.replace("name = \"astrtc-test\"", &format!("name = \"astrtc-verify-{wss}\""));
    assert_ne!(named, text);
    std::fs::write(&spec, &named).unwrap();
    astrtc().args(["render", "--spec"]).arg(&spec).assert().success();
    ensure_image();
    ensure_guard();
    let project = ComposeProject { dir: dir.path().join("deploy") };
    let up = project.run(&["up", "-d", "--wait"]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));

    let (code, out) = verify_text(&spec, &[] as &[&str]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let tls = row(WIDTH, "ok  ", "tls", &format!("TLSv1_3 on 127.0.0.1:{wss}, certificate for localhost, "));
    assert!(lines[0].starts_with(&tls) && lines[0].ends_with(" days left"), "{out}");
    assert_eq!(lines[1], row(WIDTH, "ok  ", "websocket", "/ws upgraded (101) with subprotocol sip"), "{out}");
    let register = "200 OK over WSS with digest auth; removed: 200 OK";
    assert_eq!(lines[2], row(WIDTH, "ok  ", "register 199", register), "{out}");
    assert!(lines[3].starts_with(&row(WIDTH, "ok  ", "sip udp", &format!("OPTIONS to 127.0.0.1:{sip} answered "))));
    for (line, module) in lines[4..10].iter().zip(astrtc::verify::checks::REQUIRED_MODULES) {
        assert_eq!(*line, row(WIDTH, "ok  ", &format!("module {module}"), "Running"), "{out}");
    }
    assert_eq!(lines[10], row(WIDTH, "ok  ", "endpoints", "199, 3001, 3002 as in the spec"), "{out}");
    assert_eq!(lines[11..], ["11 passed, 0 failed, 0 skipped"], "{out}");

    // The same deployment under a domain that does not resolve: with no --host that name is
    // what verify connects to.
    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, named.replace("domain = \"localhost\"", "domain = \"pbx.invalid\"")).unwrap();
    let deploy = dir.path().join("deploy").display().to_string();
    let (code, out) = verify_text(&invalid, &["--out", &deploy]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(&row(3, "FAIL", "tls", "cannot resolve pbx.invalid: ")), "{out}");
    assert_eq!(
        lines[1..],
        [remedy(3, "pass the deployment's address with --host").as_str(), "0 passed, 1 failed, 0 skipped"]
    );
    // --host: connected there, so the certificate (for localhost) is what fails now; checks
    // that need TLS are skipped, the others pass.
    let (code, out) = verify_text(&invalid, &["--out", &deploy, "--host", "127.0.0.1"]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(&row(WIDTH, "FAIL", "tls", "")), "{out}");
    assert!(lines[1].starts_with(&remedy(WIDTH, "the certificate is for ")), "{out}");
    let says = "the spec says pbx.invalid: re-run `astrtc render` (self-signed) or `astrtc certs issue`, then restart Asterisk";
    assert!(lines[1].contains("localhost") && lines[1].ends_with(says), "{out}");
    assert_eq!(lines[2], row(WIDTH, "skip", "websocket", "TLS failed"), "{out}");
    assert_eq!(lines[3], row(WIDTH, "skip", "register 199", "TLS failed"), "{out}");
    assert!(lines[4].starts_with(&row(WIDTH, "ok  ", "sip udp", "")), "{out}");
    assert_eq!(lines.last(), Some(&"8 passed, 1 failed, 2 skipped"), "{out}");
}

/// `--ca FILE` is the CA the certificate is checked against, instead of the rendered ca.crt:
/// another CA fails TLS with a remedy naming the file; the right CA from elsewhere passes even
/// when the rendered ca.crt is wrong.
#[tokio::test(flavor = "multi_thread")]
async fn verify_checks_the_certificate_against_the_ca_given_with_ca() {
    if docker_off() {
        return;
    }
    let (dir, plan) = deployment();
    ensure_image();
    let asterisk = testing::start(&plan, &dir.path().join("deploy")).await.unwrap();
    let spec = dir.path().join("astrtc.toml");
    let stranger = astrtc::certs::local_ca::LocalCa::load_or_create(&dir.path().join("stranger"), "stranger").unwrap();
    let stranger_file = dir.path().join("stranger/ca.crt").display().to_string();
    let args = |ca: Option<&str>| -> Vec<String> {
        let mut a = vec!["--host", "127.0.0.1", "--container", asterisk.id()];
        if let Some(ca) = ca {
            a.extend(["--ca", ca]);
        }
        a.into_iter().map(str::to_string).collect()
    };

    let (code, out) = verify_text(&spec, &args(Some(&stranger_file)));
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(&row(WIDTH, "FAIL", "tls", "")), "{out}");
    let wanted = format!(
        "the certificate does not chain to {stranger_file}: re-run `astrtc render`, or pass the right CA with --ca"
    );
    assert_eq!(lines[1], remedy(WIDTH, &wanted), "{out}");

    // The rendered ca.crt replaced by the stranger's: the default fails, --ca with the right
    // CA (kept elsewhere) passes.
    let right = dir.path().join("right-ca.pem");
    std::fs::copy(dir.path().join("deploy/keys").join(files::CA), &right).unwrap();
    overwrite_keep_mode(&dir.path().join("deploy/keys").join(files::CA), stranger.cert_pem());
    let (code, out) = verify_text(&spec, &args(None));
    assert_eq!(code, 1, "{out}");
    let (code, out) = verify_text(&spec, &args(Some(&right.display().to_string())));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().last(), Some("11 passed, 0 failed, 0 skipped"), "{out}");
}
