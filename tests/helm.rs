//! The Helm chart `astrtc render` writes: lint-clean with Helm 3 and 4 in every values mode,
//! valid Kubernetes objects for 1.29 and the newest schema, a values schema that refuses what
//! would break the deployment, and one source of truth — the spec's RTP range and ports appear
//! identically in rtp.conf, http.conf and the pod's ports.
//!
//! Tools come from `make deps-helm` (target/tools). Outside CI, missing tools skip these tests
//! with a message; in CI they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

struct Tools {
    helm3: PathBuf,
    helm4: PathBuf,
    validate: PathBuf,
}

fn tools() -> Option<Tools> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools");
    let t = Tools {
        helm3: dir.join("helm3"),
        helm4: dir.join("helm4"),
        validate: dir.join("venv/bin/kubernetes-validate"),
    };
    if [&t.helm3, &t.helm4, &t.validate].iter().any(|p| tool_missing(p, "make deps-helm")) {
        return None;
    }
    Some(t)
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A fixture rendered to disk; returns (temp dir, chart path).
fn rendered(case: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = fixture_copy(case);
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    astrtc::deploy::write(&plan, &dir.path().join("deploy")).unwrap();
    let chart = dir.path().join("deploy/helm/astrtc");
    (dir, chart)
}

/// Values modes every chart must lint and template in: (name, --set arguments).
fn modes(narrow_rtp: bool) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut m = vec![
        ("default", vec![]),
        ("ingress", vec!["ingress.enabled=true", "ingress.className=nginx", "ingress.tlsSecretName=pbx-tls"]),
        ("cert-manager", vec!["certificates.mode=certManager", "certificates.certManager.issuerName=letsencrypt"]),
        (
            "existing-secret",
            vec![
                "certificates.mode=existingSecret",
                "certificates.existingSecret=pbx-tls",
                "auth.existingSecret=pbx-auth",
            ],
        ),
    ];
    if narrow_rtp {
        m.push(("host-port", vec!["network.mode=hostPort"]));
    }
    m
}

fn with_sets(cmd: &mut Command, sets: &[&str]) {
    for s in sets {
        cmd.args(["--set", s]);
    }
}

fn template(t: &Tools, chart: &Path, sets: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(&t.helm4);
    cmd.args(["template", "pbx"]).arg(chart);
    with_sets(&mut cmd, sets);
    run(&mut cmd)
}

#[test]
fn every_fixture_lints_and_validates_in_every_mode() {
    let Some(t) = tools() else { return };
    let mut checked = 0;
    for case in fixture_cases() {
        let (dir, chart) = rendered(&case);
        let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
        for (mode, sets) in modes(plan.rtp.len() <= 200) {
            for helm in [&t.helm3, &t.helm4] {
                let mut cmd = Command::new(helm);
                cmd.args(["lint", "--strict"]).arg(&chart);
                with_sets(&mut cmd, &sets);
                let (ok, out) = run(&mut cmd);
                assert!(ok, "{case}/{mode}: helm lint ({}):\n{out}", helm.display());
            }
            let (ok, manifests) = template(&t, &chart, &sets);
            assert!(ok, "{case}/{mode}: helm template:\n{manifests}");
            let file = dir.path().join(format!("{mode}.yaml"));
            std::fs::write(&file, &manifests).unwrap();
            for k8s in ["1.29.0", "1.37.0"] {
                let (ok, out) = run(Command::new(&t.validate).args(["--strict", "--quiet", "-k", k8s]).arg(&file));
                assert!(ok, "{case}/{mode}: kubernetes-validate {k8s}:\n{out}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 17, "only {checked} chart/mode combinations checked");
}

#[test]
fn the_values_schema_refuses_what_would_break_the_deployment() {
    let Some(t) = tools() else { return };
    let (_dir, chart) = rendered("webrtc-self-signed");
    for (sets, expect) in [
        (vec!["ports.sip=5070"], "/ports/sip"),
        (vec!["rtp.start=12000"], "/rtp/start"),
        (vec!["network.mode=hostPort"], "/network/mode"), // 10000-20000 is too wide for host ports
        (vec!["network.mode=bridge"], "/network/mode"),
        (vec!["colour=blue"], "colour"),
        (vec!["service.enabled=maybe"], "/service/enabled"),
        (vec!["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (vec!["certificates.mode=acme"], "/certificates/mode"),
    ] {
        let (ok, out) = template(&t, &chart, &sets);
        assert!(!ok, "{sets:?} was accepted");
        assert!(out.contains(expect), "{sets:?}: the error does not name {expect}:\n{out}");
    }
    // A narrow range may use host ports.
    let (_dir, narrow) = rendered("bridge-narrow-rtp");
    let (ok, out) = template(&t, &narrow, &["network.mode=hostPort"]);
    assert!(ok, "{out}");
}

#[test]
fn the_spec_is_the_one_source_of_truth_for_ports() {
    let Some(t) = tools() else { return };
    for (start, end) in [(10000, 10099), (31000, 31049)] {
        let dir = fixture_copy("bridge-narrow-rtp");
        let spec = dir.path().join("astrtc.toml");
        let text = std::fs::read_to_string(&spec).unwrap();
        std::fs::write(
            &spec,
            text.replace("start = 10000", &format!("start = {start}")).replace("end = 10099", &format!("end = {end}")),
        )
        .unwrap();
        let plan = plan_for(&spec, ROOT).unwrap();
        astrtc::deploy::write(&plan, &dir.path().join("deploy")).unwrap();
        let rtp_conf = std::fs::read_to_string(dir.path().join("deploy/asterisk/rtp.conf")).unwrap();
        let conf = |key: &str| -> u16 {
            rtp_conf.lines().find_map(|l| l.strip_prefix(&format!("{key} = "))).unwrap().parse().unwrap()
        };
        assert_eq!((conf("rtpstart"), conf("rtpend")), (start, end));

        // The chart's bridge-mode default is hostPort: every RTP port is a host port.
        let (ok, manifests) = template(&t, &dir.path().join("deploy/helm/astrtc"), &[]);
        assert!(ok, "{manifests}");
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&manifests)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let container = &deploy["spec"]["template"]["spec"]["containers"][0];
        let ports = container["ports"].as_sequence().unwrap();
        let port_of =
            |name: &str| ports.iter().find(|p| p["name"] == name).map(|p| p["containerPort"].as_u64().unwrap());
        assert_eq!(port_of("wss"), Some(u64::from(plan.network.wss_port)));
        assert_eq!(port_of("sip"), Some(u64::from(plan.network.sip_port)));
        let rtp: Vec<u64> = ports
            .iter()
            .filter(|p| p.get("name").is_none() && p["protocol"] == "UDP")
            .map(|p| {
                assert_eq!(p["hostPort"], p["containerPort"]);
                p["containerPort"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(rtp, (u64::from(start)..=u64::from(end)).collect::<Vec<_>>());
        // The ConfigMap carries the very rtp.conf compose mounts; passwords are not in it.
        let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
        assert_eq!(cm["data"]["rtp.conf"].as_str().unwrap().trim_end(), rtp_conf.trim_end());
        assert!(cm["data"].get("pjsip_auth.conf").is_none());
        let http = cm["data"]["http.conf"].as_str().unwrap();
        assert!(http.contains(&format!("tlsbindaddr = 0.0.0.0:{}", plan.network.wss_port)));
        // Probes run the image's healthcheck, which reads the port from Asterisk itself.
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            assert_eq!(container[probe]["exec"]["command"][0], "/usr/local/bin/astrtc-healthcheck");
        }
        let secret = docs.iter().find(|d| d["kind"] == "Secret" && d["data"].get("pjsip_auth.conf").is_some());
        assert!(secret.is_some(), "passwords must be in a Secret");
    }
}

#[test]
fn renewable_certificates_get_the_reloader_and_bundled_ones_do_not() {
    let Some(t) = tools() else { return };
    let (_dir, chart) = rendered("webrtc-self-signed");
    let containers = |sets: &[&str]| -> Vec<String> {
        let (ok, manifests) = template(&t, &chart, sets);
        assert!(ok, "{manifests}");
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&manifests)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        deploy["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(containers(&[]), ["asterisk"]);
    assert_eq!(
        containers(&["certificates.mode=certManager", "certificates.certManager.issuerName=le"]),
        ["asterisk", "cert-reloader"]
    );
    assert_eq!(
        containers(&["certificates.mode=existingSecret", "certificates.existingSecret=tls"]),
        ["asterisk", "cert-reloader"]
    );
    // Behind an Ingress the pod serves no TLS: nothing to reload.
    assert_eq!(
        containers(&[
            "ingress.enabled=true",
            "certificates.mode=certManager",
            "certificates.certManager.issuerName=le"
        ]),
        ["asterisk"]
    );
}

#[test]
fn checkov_finds_nothing_beyond_the_justified_skips() {
    let Some(t) = tools() else { return };
    let checkov = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/checkov/bin/checkov");
    if tool_missing(&checkov, "make deps-helm") {
        return;
    }
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/checkov.yaml");
    for (case, sets) in [
        ("webrtc-self-signed", vec![]),
        ("bridge-narrow-rtp", vec!["network.mode=hostPort"]),
        ("webrtc-self-signed", vec!["certificates.mode=certManager", "certificates.certManager.issuerName=le"]),
        ("acme-http01", vec![]),
    ] {
        let (dir, chart) = rendered(case);
        let (ok, manifests) = template(&t, &chart, &sets);
        assert!(ok, "{manifests}");
        let file = dir.path().join("manifests.yaml");
        std::fs::write(&file, manifests).unwrap();
        let (ok, out) = run(Command::new(&checkov)
            .args(["--framework", "kubernetes", "--config-file"])
            .arg(&config)
            .arg("-f")
            .arg(&file)
            .env("BC_SKIP_MAPPING", "TRUE"));
        assert!(ok, "{case} {sets:?}: checkov failed:\n{out}");
    }
}

#[test]
fn acme_mode_runs_the_sidecar_as_a_native_sidecar_that_gates_asterisk() {
    let Some(t) = tools() else { return };
    let (_dir, chart) = rendered("acme-http01");
    let (ok, manifests) = template(&t, &chart, &[]);
    assert!(ok, "{manifests}");
    let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&manifests)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let pod = &docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"];
    let init = pod["initContainers"].as_sequence().unwrap();
    assert_eq!(init.len(), 1);
    let certs = &init[0];
    assert_eq!(certs["name"], "certs");
    assert_eq!(certs["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(certs["image"], format!("astrtc/astrtc:{}", env!("CARGO_PKG_VERSION")).as_str());
    assert_eq!(certs["startupProbe"]["exec"]["command"][1], "certs");
    assert_eq!(certs["startupProbe"]["exec"]["command"][2], "check");
    let sc = &certs["securityContext"];
    assert_eq!(sc["runAsUser"], 10061);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["add"][0], "NET_BIND_SERVICE");
    // HTTP-01 on port 80 (the fixture): the file capability must be honoured.
    assert_eq!(sc["allowPrivilegeEscalation"], true);
    let names: Vec<&str> =
        pod["containers"].as_sequence().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["asterisk", "cert-reloader"]);
    for c in pod["containers"].as_sequence().unwrap() {
        let keys = c["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["mountPath"] == "/etc/asterisk/keys");
        let keys = keys.unwrap_or_else(|| panic!("{} does not see the certificate", c["name"].as_str().unwrap()));
        assert_eq!((keys["name"].as_str(), keys["subPath"].as_str()), (Some("acme-state"), Some("keys")));
    }
    let config = docs.iter().find(|d| d["kind"] == "ConfigMap" && d["data"].get("acme.toml").is_some()).unwrap();
    let acme: astrtc::plan::Acme = toml::from_str(config["data"]["acme.toml"].as_str().unwrap()).unwrap();
    assert_eq!(acme.names, ["pbx.example.com"]);
    assert!(!config["data"]["acme.toml"].as_str().unwrap().contains("password"));

    // A DNS-01 spec on an unprivileged path: escalation stays off.
    let (_d, chart) = rendered("acme-http01");
    let values = chart.join("values.yaml");
    let text = std::fs::read_to_string(&values).unwrap().replace("httpPort: 80", "httpPort: 8080");
    std::fs::write(&values, text).unwrap();
    let schema = chart.join("values.schema.json");
    let text = std::fs::read_to_string(&schema)
        .unwrap()
        .replace("\"httpPort\": {\"const\": 80}", "\"httpPort\": {\"const\": 8080}");
    std::fs::write(&schema, text).unwrap();
    let (ok, manifests) = template(&t, &chart, &[]);
    assert!(ok, "{manifests}");
    assert!(manifests.contains("allowPrivilegeEscalation: false\n            capabilities:\n              drop: [\"ALL\"]\n              add: [\"NET_BIND_SERVICE\"]"), "{manifests}");

    // A self-signed chart has no ACME settings: the schema refuses the mode.
    let (_d, chart) = rendered("webrtc-self-signed");
    let (ok, out) = template(&t, &chart, &["certificates.mode=acme"]);
    assert!(!ok && out.contains("certificates/mode"), "{out}");
}

/// The outer container of the podman pod run; removed when dropped.
struct PodRunner(String);

impl PodRunner {
    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker").args(["exec", &self.0]).args(args).output().unwrap()
    }
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// The chart's manifests run for real: `podman kube play` (trixie's podman inside a Docker
/// container) with the image this repository builds, then the image tests' checks: TLS on the
/// WSS port verified against the rendered CA, and the WebRTC modules Running.
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_runs_as_a_pod_under_podman() {
    let Some(t) = tools() else { return };
    if docker_off() {
        return;
    }
    let (dir, chart) = rendered("host-alt-ports");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    crate::common::docker::ensure_image(&plan.image);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out) = run(Command::new("docker")
        .args(["build", "-q", "-t", "astrtc-test/podman:trixie"])
        .arg(root.join("tests/podman")));
    assert!(ok, "building the podman runner failed:\n{out}");
    // podman ignores fsGroup: the password and key files must be readable without it.
    let (ok, manifests) = template(&t, &chart, &["securityContext.secretFileMode=292"]);
    assert!(ok, "{manifests}");
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, &manifests).unwrap();

    let name = format!("astrtc-podman-{}", std::process::id());
    let (ok, out) = run(Command::new("docker").args(["run", "-d", "--name", &name]).args([
        "--cap-add",
        "ALL",
        "--cap-drop",
        "SYS_RESOURCE",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
        "--device",
        "/dev/fuse",
        "--device",
        "/dev/net/tun",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup",
        "astrtc-test/podman:trixie",
    ]));
    assert!(ok, "{out}");
    let runner = PodRunner(name.clone());
    let load = Command::new("sh")
        .arg("-c")
        .arg(format!("docker save {} | docker exec -i {name} podman load -q", plan.image))
        .output()
        .unwrap();
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    let (ok, out) = run(Command::new("docker").arg("cp").arg(&file).arg(format!("{name}:/pod.yaml")));
    assert!(ok, "{out}");
    let ip = String::from_utf8_lossy(
        &Command::new("docker")
            .args(["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &name])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    let wss: std::net::SocketAddr = format!("{ip}:{}", plan.network.wss_port).parse().unwrap();
    let ca = std::fs::read_to_string(dir.path().join("deploy/keys/ca.crt")).unwrap();

    let started = std::time::Instant::now();
    let play = runner.exec(&["podman", "kube", "play", "/pod.yaml"]);
    assert!(play.status.success(), "{}", String::from_utf8_lossy(&play.stderr));
    // Ready: the TLS listener completes a verified handshake (the chart's probes check the same).
    let tls = loop {
        if let Ok(r) = astrtc::verify::tls::check_tls(wss, &plan.tls.domain, &ca) {
            break r;
        }
        let logs = || {
            String::from_utf8_lossy(&runner.exec(&["podman", "logs", "pbx-astrtc-pod-asterisk"]).stdout).into_owned()
        };
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the pod never served TLS:\n{}", logs());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    eprintln!("podman kube play → TLS ready: {:.2?}", started.elapsed());
    let rendered =
        astrtc::certs::cert_facts(&std::fs::read_to_string(dir.path().join("deploy/keys/asterisk.crt")).unwrap())
            .unwrap();
    assert_eq!(tls.leaf.serial, rendered.serial, "the pod serves the chart's certificate");
    for (pattern, modules) in [
        ("crypto", &["res_crypto.so"][..]),
        ("websocket", &["res_http_websocket.so", "res_pjsip_transport_websocket.so"][..]),
        ("opus", &["codec_opus_open_source.so", "res_format_attr_opus.so"][..]),
        ("srtp", &["res_srtp.so"][..]),
    ] {
        let out = runner.exec(&[
            "podman",
            "exec",
            "pbx-astrtc-pod-asterisk",
            "asterisk",
            "-rx",
            &format!("module show like {pattern}"),
        ]);
        let rows = astrtc::verify::parse_module_show(&String::from_utf8_lossy(&out.stdout));
        for m in modules {
            assert!(rows.iter().any(|r| r.name == *m && r.status == "Running"), "{m} not Running: {rows:?}");
        }
    }
    // The pod runs as the chart says: the asterisk user, read-only root filesystem.
    let id = runner.exec(&["podman", "exec", "pbx-astrtc-pod-asterisk", "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), "10060");
    let touch = runner.exec(&["podman", "exec", "pbx-astrtc-pod-asterisk", "touch", "/etc/astrtc-write-test"]);
    assert!(!touch.status.success(), "the root filesystem is writable");
}
