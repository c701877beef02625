//! `astrtc verify` against real deployments of the image: a good one passes every check; each
//! deliberately broken one (wrong certificate name, wrong password, a module missing, nothing
//! listening) fails exactly the checks it should, each with its own remedy.

use std::path::Path;

use astrtc::certs::files;
use astrtc::testing;
use serde_json::Value;

use crate::common::docker::{deployment, ensure_image, install_leaf_for};
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
    ensure_image(&plan.image);
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
    ensure_image(&plan.image);
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
    ensure_image(&plan.image);
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
