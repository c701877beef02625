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
        assert_eq!(svc["volumes"][1]["target"].as_str(), Some("/etc/asterisk/keys"));
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
