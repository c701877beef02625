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
        if let Some(cluster) = &plan.cluster {
            // A cluster: the pool one `asterisk` service scaled to pool_size on the pool network
            // (no fixed address), the pool watcher beside it, the edge and the relay on the
            // host's, the database.
            let svc = &doc["services"]["asterisk"];
            assert_eq!(svc["image"].as_str(), Some(plan.image.as_str()), "{case}");
            assert_eq!(svc["scale"].as_u64(), Some(u64::from(cluster.pool_size)), "{case}");
            assert_eq!(svc["networks"][0].as_str(), Some("pool"), "{case}: on the pool's network, no fixed address");
            assert_eq!(svc["volumes"][0]["target"].as_str(), Some("/etc/asterisk"), "{case}");
            assert!(svc["healthcheck"]["test"].is_sequence(), "{case}");
            assert!(doc["services"].get("asterisk-1").is_none(), "{case}: no member is a service of its own");
            let pool = &doc["services"]["pool-watch"];
            assert_eq!(pool["image"].as_str(), Some(cluster.edge_image.as_str()), "{case}");
            assert_eq!(pool["environment"]["POOL_SERVICE"].as_str(), Some("asterisk."), "{case}");
            assert_eq!(pool["environment"]["POOL_CIDR"].as_str(), Some(cluster.pool_range.as_str()), "{case}");
            assert_eq!(
                doc["networks"]["pool"]["ipam"]["config"][0]["ip_range"].as_str(),
                Some(cluster.pool_range.as_str()),
                "{case}"
            );
            for host in ["edge", "relay"] {
                assert_eq!(doc["services"][host]["network_mode"].as_str(), Some("host"), "{case}: {host}");
            }
            assert!(doc["services"]["db"]["healthcheck"]["test"].is_sequence(), "{case}: db");
        } else {
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
                    let ports: Vec<_> =
                        svc["ports"].as_sequence().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
                    assert_eq!(ports, ["8089:8089/tcp", "5060:5060/udp", "10000-10099:10000-10099/udp"], "{case}");
                    assert_eq!(
                        svc["networks"]["astrtc"]["ipv4_address"].as_str(),
                        Some(plan.network.bridge.as_ref().unwrap().address.to_string().as_str())
                    );
                }
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

/// The bundled TURN relay as a compose service: host networking, read-only root, every
/// capability dropped but the one a TLS port below 1024 needs (and no-new-privileges otherwise),
/// its config and the certificate mounted read-only (the sidecar's volume in ACME mode), a
/// memory tmpfs for the copy that carries the secret, and a healthcheck that asks coturn.
#[test]
fn the_turn_service_is_host_networked_read_only_and_unprivileged() {
    let render = |edit: &dyn Fn(String) -> String| {
        let dir = fixture_copy("turn-bundled");
        let spec = dir.path().join("astrtc.toml");
        std::fs::write(&spec, edit(std::fs::read_to_string(&spec).unwrap())).unwrap();
        let plan = plan_for(&spec, ROOT).unwrap();
        let bundle = bundle_for(&plan);
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(bundle.text("compose.yaml").unwrap()).unwrap();
        doc["services"]["turn"].clone()
    };
    // TURN over TLS on 443 (the fixture): the capability stays, escalation is possible.
    let turn = render(&|s| s);
    assert_eq!(turn["image"].as_str(), Some(astrtc::image::TURN_IMAGE));
    assert_eq!(turn["network_mode"].as_str(), Some("host"));
    assert_eq!(turn["read_only"].as_bool(), Some(true));
    assert_eq!(turn["cap_drop"][0].as_str(), Some("ALL"));
    assert_eq!(turn["cap_add"].as_sequence().map(|c| c.len()), Some(1));
    assert!(turn.get("security_opt").is_none(), "port 443 needs the file capability");
    assert_eq!(turn["healthcheck"]["test"][1].as_str(), Some(astrtc::image::TURN_HEALTHCHECK));
    assert!(turn["tmpfs"][0].as_str().unwrap().starts_with("/run/coturn:"));
    let mounts: Vec<(&str, &str, bool)> = turn["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| (v["source"].as_str().unwrap(), v["target"].as_str().unwrap(), v["read_only"].as_bool().unwrap()))
        .collect();
    assert_eq!(mounts, [("./turn", "/etc/coturn", true), ("./keys", "/etc/coturn-keys", true)]);
    // TLS on 5349: nothing below 1024, so no-new-privileges keeps the capability from being granted.
    let turn = render(&|s| s.replace("tls_port = 443", "tls_port = 5349"));
    assert_eq!(turn["security_opt"][0].as_str(), Some("no-new-privileges:true"));
    // ACME: the certificate comes from the sidecar's volume, once the sidecar is healthy.
    let turn = render(&|s| {
        s.replace("[tls]\n", "[tls]\nmode = \"acme\"\n")
            + "\n[tls.acme]\nemail = \"ops@example.test\"\nchallenge = \"dns-01\"\n"
    });
    assert_eq!(turn["depends_on"]["certs"]["condition"].as_str(), Some("service_healthy"));
    assert_eq!(turn["volumes"][1]["source"].as_str(), Some("keys"));
    assert_eq!(turn["volumes"][1]["volume"]["nocopy"].as_bool(), Some(true));
}

/// When `docker compose up --wait` fails (what `astrtc apply` runs to restart a service), the
/// error names each container that is not healthy with its last healthchecks' exit codes and
/// outputs — compose itself says only "is unhealthy" (a CI run of the cluster's apply test left
/// nothing else to go on). A project of one container whose healthcheck prints a line and fails,
/// beside one that runs without a healthcheck (not named).
#[test]
fn a_failed_wait_names_the_unhealthy_container_and_its_healthchecks() {
    if docker_off() || !compose_available() {
        return;
    }
    let base = "debian:trixie-slim";
    let present = Command::new("docker").args(["image", "inspect", base]).output().is_ok_and(|o| o.status.success());
    if !present {
        skip(&format!("{base} is not loaded (scripts/host-setup.sh builds it)"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = format!("astrtc-notready-{}", std::process::id());
    let service =
        |name: &str| format!("  {name}:\n    image: {base}\n    command: [\"sleep\", \"300\"]\n    init: true\n");
    // `well` has no healthcheck (running is all it can be: never "starting" when `sick` fails).
    // `crashy` exits at once and is restarted (Docker calls it unhealthy meanwhile, no check failed).
    let yaml = format!(
        "name: {name}\nservices:\n{}    healthcheck:\n      test: [\"CMD-SHELL\", \"echo the control socket did not \
         answer; exit 1\"]\n      interval: 1s\n      timeout: 2s\n      retries: 2\n{}  crashy:\n    image: {base}\n    \
         command: [\"sh\", \"-c\", \"exit 3\"]\n    restart: always\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n",
        service("sick"),
        service("well")
    );
    std::fs::write(dir.path().join("compose.yaml"), yaml).unwrap();
    let project = crate::common::docker::ComposeProject { dir: dir.path().to_path_buf() };
    let up = project.run(&["up", "-d", "--wait", "--wait-timeout", "60"]);
    assert!(!up.status.success(), "the unhealthy project came up: {}", String::from_utf8_lossy(&up.stderr));
    let report = astrtc::apply::not_ready_report(dir.path());
    eprintln!("the report:{report}");
    assert!(report.contains(&format!("\n{name}-sick-1: running, unhealthy; its last healthchecks:")), "{report}");
    assert!(report.contains(" exit 1: the control socket did not answer"), "{report}");
    assert!(!report.contains("well"), "a healthy container was named: {report}");
    // The restarted one is named with its restarts and how it last exited (asked again while
    // Docker has it running between two exits, when its last exit code reads 0).
    let crashy = format!("\n{name}-crashy-1: ");
    let named = |r: &str| {
        r.lines().any(|l| {
            l.starts_with(&crashy[1..]) && l.contains(", restarted ") && l.contains(" times (last exit code 3)")
        })
    };
    let mut report = report;
    for _ in 0..50 {
        if named(&report) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        report = astrtc::apply::not_ready_report(dir.path());
    }
    assert!(named(&report), "a restarted container's restarts are not named: {report}");
}
