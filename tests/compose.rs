//! compose.yaml: valid YAML with the intended structure for every fixture, and — when Docker
//! Compose is installed (`make test` installs it) — accepted by `docker compose config`.

use std::process::Command;

use crate::common::*;

fn compose_available() -> bool {
    Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn every_fixture_compose_file_is_valid() {
    let mut checked_by_compose = 0;
    for case in fixture_cases() {
        let dir = fixture_copy(&case);
        let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
        let out = dir.path().join("deploy");
        astrtc::deploy::write(&plan, &out).unwrap();
        let text = std::fs::read_to_string(out.join("compose.yaml")).unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(doc.get("version").is_none(), "{case}: compose-spec files have no version key");
        let svc = &doc["services"]["asterisk"];
        assert_eq!(svc["image"].as_str(), Some(plan.image.as_str()));
        assert_eq!(svc["volumes"][0]["target"].as_str(), Some("/etc/asterisk"));
        assert_eq!(svc["volumes"][0]["read_only"].as_bool(), Some(true));
        assert_eq!(svc["volumes"][1]["target"].as_str(), Some("/etc/asterisk-keys"));
        assert!(svc["healthcheck"]["test"].is_sequence());
        match plan.network.mode {
            astrtc::spec::NetworkMode::Host => {
                assert_eq!(svc["network_mode"].as_str(), Some("host"), "{case}");
                assert!(svc.get("ports").is_none(), "{case}: host mode publishes nothing");
            }
            astrtc::spec::NetworkMode::Bridge => {
                let ports: Vec<_> = svc["ports"].as_sequence().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
                assert_eq!(ports, ["8089:8089/tcp", "5060:5060/udp", "10000-10099:10000-10099/udp"], "{case}");
                assert_eq!(
                    svc["networks"]["astrtc"]["ipv4_address"].as_str(),
                    Some(plan.network.bridge.as_ref().unwrap().address.to_string().as_str())
                );
            }
        }
        if compose_available() || ci() {
            let o = Command::new("docker")
                .args(["compose", "-f"])
                .arg(out.join("compose.yaml"))
                .args(["config", "-q"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{case}: docker compose config: {}", String::from_utf8_lossy(&o.stderr));
            checked_by_compose += 1;
        }
    }
    if checked_by_compose == 0 {
        skip("docker compose is not installed (make deps): compose files were parsed as YAML only");
    }
}

/// The ACME sidecar keeps `CAP_NET_BIND_SERVICE` only where it must bind a port below 1024
/// (HTTP-01 on port 80); with DNS-01 (manual or through a hook) or HTTP-01 on a high port,
/// compose sets `no-new-privileges`, so the binary's file capability is never granted.
#[test]
fn the_sidecar_runs_with_no_new_privileges_unless_http01_binds_a_low_port() {
    let hook_dir = tempfile::tempdir().unwrap();
    let hook = hook_dir.path().join("dns-hook");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    let hook = hook.display().to_string();
    for (flags, no_new_privileges) in [
        (vec!["--challenge", "http-01", "--http-port", "80"], false),
        (vec!["--challenge", "http-01", "--http-port", "8080"], true),
        (vec!["--challenge", "dns-01"], true),
        (vec!["--challenge", "dns-01", "--dns-hook", hook.as_str()], true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        astrtc()
            .args(["init", "--tls", "acme", "--acme-email", "ops@example.test", "--domain", "pbx.example.test"])
            .args(&flags)
            .arg("--dir")
            .arg(dir.path())
            .assert()
            .success();
        astrtc().args(["render", "--spec"]).arg(dir.path().join("astrtc.toml")).assert().success();
        let compose = dir.path().join("deploy/compose.yaml");
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&compose).unwrap()).unwrap();
        let certs = &doc["services"]["certs"];
        let list = |key: &str| -> Vec<String> {
            certs
                .get(key)
                .and_then(|v| v.as_sequence())
                .map(|s| s.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        assert_eq!(list("cap_drop"), ["ALL"], "{flags:?}");
        assert_eq!(list("cap_add"), ["NET_BIND_SERVICE"], "{flags:?}");
        let wanted: &[&str] = if no_new_privileges { &["no-new-privileges:true"] } else { &[] };
        assert_eq!(list("security_opt"), wanted, "{flags:?}");
    }
}
