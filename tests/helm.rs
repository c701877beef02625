//! The Helm chart `astrtc render` writes: lint-clean with Helm 3 and 4 in every values mode,
//! valid Kubernetes objects for 1.29 and the newest schema, a values schema that refuses what
//! would break the deployment, and one source of truth — the spec's RTP range and ports appear
//! identically in rtp.conf, http.conf and the pod's ports.
//!
//! Tools come from `make deps-helm` (target/tools); a test checks that they are what their names
//! and pins say. Objects are validated by `tests/helm/kube-validate.py`, which fails on any object
//! without a schema (kubernetes-validate alone only warns) and checks cert-manager objects against
//! cert-manager's CRD schemas. Outside CI, missing tools skip these tests with a message; in CI
//! they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::shape::{self, CLUSTER_SETS};
use crate::common::*;

struct Tools {
    helm3: PathBuf,
    helm4: PathBuf,
    /// The venv with kubernetes-validate and cert-manager's CRD models.
    venv: PathBuf,
}

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools")
}

fn tools() -> Option<Tools> {
    let dir = tools_dir();
    let t = Tools { helm3: dir.join("helm3"), helm4: dir.join("helm4"), venv: dir.join("venv") };
    let needed = [
        t.helm3.clone(),
        t.helm4.clone(),
        t.venv.join("bin/kubernetes-validate"),
        site_package(&t.venv, "cloudcoil/models/cert_manager"),
    ];
    if needed.iter().any(|p| tool_missing(p, "make deps-helm")) {
        return None;
    }
    Some(t)
}

/// Where a package lives in a venv (`lib/python3.X/site-packages/PATH`), found or not.
fn site_package(venv: &Path, path: &str) -> PathBuf {
    let lib = venv.join("lib");
    let found = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages").join(path))
        .find(|p| p.exists());
    found.unwrap_or_else(|| lib.join("python3/site-packages").join(path))
}

/// Validates manifests for these Kubernetes versions: every object against its schema, strictly;
/// an object without a schema is a failure (`tests/helm/kube-validate.py`).
fn kube_validate(t: &Tools, file: &Path, versions: &[&str]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/kube-validate.py");
    let mut cmd = Command::new(t.venv.join("bin/python"));
    cmd.arg(script);
    for k in versions {
        cmd.args(["-k", k]);
    }
    run(cmd.arg(file))
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
    m.push(("service-monitor", vec!["metrics.serviceMonitor.enabled=true"]));
    m.push(("pod-monitor", vec!["metrics.podMonitor.enabled=true", "lifecycle.drainSeconds=60"]));
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

/// `helm lint --strict` with Helm 3 and 4, `helm template` into `file`, kube-validate for 1.29 and
/// 1.37, each asserted; returns the manifests and kube-validate's report.
fn lint_and_validate(t: &Tools, chart: &Path, file: &Path, label: &str, sets: &[&str]) -> (String, String) {
    for helm in [&t.helm3, &t.helm4] {
        let mut cmd = Command::new(helm);
        cmd.args(["lint", "--strict"]).arg(chart);
        with_sets(&mut cmd, sets);
        let (ok, out) = run(&mut cmd);
        assert!(ok, "{label}: helm lint ({}):\n{out}", helm.display());
    }
    let (ok, manifests) = template(t, chart, sets);
    assert!(ok, "{label}: helm template:\n{manifests}");
    std::fs::write(file, &manifests).unwrap();
    let (ok, out) = kube_validate(t, file, &["1.29.0", "1.37.0"]);
    assert!(ok, "{label}: kube-validate:\n{out}");
    (manifests, out)
}

/// checkov on a manifests file with the chart's config (`tests/checkov.yaml`); asserted clean.
fn checkov_clean(checkov: &Path, file: &Path, label: &str) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/checkov.yaml");
    let (ok, out) = run(Command::new(checkov)
        .args(["--framework", "kubernetes", "--config-file"])
        .arg(&config)
        .arg("-f")
        .arg(file)
        .env("BC_SKIP_MAPPING", "TRUE"));
    assert!(ok, "{label}: checkov failed:\n{out}");
}

#[test]
fn every_fixture_lints_and_validates_in_every_mode() {
    let Some(t) = tools() else { return };
    let mut checked = 0;
    for case in fixture_cases() {
        let (dir, chart) = rendered(&case);
        let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
        if plan.cluster.is_some() {
            // A cluster's chart has tests of its own (below: the_cluster_chart_*).
            assert!(chart.join(shape::CLUSTER_CHART_MARK).exists(), "{case}: no cluster chart rendered");
            continue;
        }
        for (mode, sets) in modes(plan.rtp.len() <= 200) {
            let (_, out) = lint_and_validate(
                &t,
                &chart,
                &dir.path().join(format!("{mode}.yaml")),
                &format!("{case}/{mode}"),
                &sets,
            );
            if mode == "cert-manager" {
                assert!(out.contains("ok   Certificate/"), "{case}/{mode}: no Certificate validated:\n{out}");
            }
            for (m, kind) in [("service-monitor", "ServiceMonitor"), ("pod-monitor", "PodMonitor")] {
                if mode == m {
                    assert!(out.contains(&format!("ok   {kind}/")), "{case}/{mode}: no {kind} validated:\n{out}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 27, "only {checked} chart/mode combinations checked");
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
        (vec!["metrics.exporter.port=9100"], "/metrics/exporter/port"),
        (vec!["metrics.exporter.listen=0.0.0.0"], "/metrics/exporter/listen"),
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
        // Passwords are not in it: only a stub that includes the auth Secret's file.
        let stub = cm["data"]["pjsip_auth.conf"].as_str().unwrap();
        assert!(stub.contains("#include /etc/asterisk-secrets/pjsip_auth.conf") && !stub.contains("password"));
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

/// The manifests of `helm template` with these values, parsed.
fn docs_of(t: &Tools, chart: &Path, sets: &[&str]) -> Vec<serde_yaml_ng::Value> {
    let (ok, manifests) = template(t, chart, sets);
    assert!(ok, "{manifests}");
    parsed(&manifests)
}

#[test]
fn every_mode_runs_the_reloader_beside_asterisk() {
    let Some(t) = tools() else { return };
    let (_dir, chart) = rendered("webrtc-self-signed");
    let containers = |sets: &[&str]| -> Vec<String> {
        let docs = docs_of(&t, &chart, sets);
        let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let containers = deploy["spec"]["template"]["spec"]["containers"].as_sequence().unwrap();
        both_record_the_mounted_passwords(containers, &format!("single chart {sets:?}"));
        containers
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            // The guard (fail2ban) is there in every mode; this test is about the reloader.
            .filter(|name| name != "guard")
            .collect()
    };
    for sets in [
        vec![],
        vec!["certificates.mode=certManager", "certificates.certManager.issuerName=le"],
        vec!["certificates.mode=existingSecret", "certificates.existingSecret=tls"],
        vec!["ingress.enabled=true", "certificates.mode=certManager", "certificates.certManager.issuerName=le"],
    ] {
        // No node exporter sidecar unless asked for (metrics.exporter.enabled is off by default).
        assert_eq!(containers(&sets), ["asterisk", "reloader"], "{sets:?}");
    }
}

/// Asterisk's entrypoint records what Asterisk loaded; the reloader compares with that record. Both
/// must look at the password files where the auth Secret is mounted, or the reloader's first pass
/// finds them unrecorded and reloads them.
fn both_record_the_mounted_passwords(containers: &[serde_yaml_ng::Value], what: &str) {
    let secrets_dir = |name: &str| -> Option<String> {
        let c = containers.iter().find(|c| c["name"] == name)?;
        let env = c["env"].as_sequence()?;
        let e = env.iter().find(|e| e["name"] == "ASTRTC_SECRETS_DIR")?;
        e["value"].as_str().map(str::to_string)
    };
    let asterisk = containers.iter().find(|c| c["name"] == "asterisk").expect("an asterisk container");
    let auth_mount = asterisk["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "auth")
        .and_then(|m| m["mountPath"].as_str())
        .map(str::to_string);
    assert!(auth_mount.is_some(), "{what}: Asterisk does not mount the auth Secret");
    assert_eq!(
        secrets_dir("asterisk"),
        auth_mount,
        "{what}: Asterisk's ASTRTC_SECRETS_DIR is not where the passwords are mounted (its record of what it \
         loaded would leave them out)"
    );
    assert_eq!(secrets_dir("reloader"), auth_mount, "{what}: the reloader's ASTRTC_SECRETS_DIR");
}

/// `performance.opus_complexity` reaches the Asterisk container as the variable its codec reads
/// (4 in nat-multi-endpoint); a spec without it sets nothing (libopus' default), and the value
/// cannot be changed past the spec (the schema pins it).
#[test]
fn the_opus_complexity_reaches_the_asterisk_container() {
    let Some(t) = tools() else { return };
    let env_of = |case: &str| -> Vec<(String, String)> {
        let (_dir, chart) = rendered(case);
        let docs = docs_of(&t, &chart, &[]);
        let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let containers = deploy["spec"]["template"]["spec"]["containers"].as_sequence().unwrap();
        let asterisk = containers.iter().find(|c| c["name"] == "asterisk").unwrap();
        asterisk["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "ASTRTC_OPUS_COMPLEXITY")
            .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string()))
            .collect()
    };
    assert_eq!(env_of("nat-multi-endpoint"), [("ASTRTC_OPUS_COMPLEXITY".to_string(), "4".to_string())]);
    assert_eq!(env_of("webrtc-self-signed"), []);
    let (_dir, chart) = rendered("nat-multi-endpoint");
    let (ok, out) = template(&t, &chart, &["performance.opusComplexity=9"]);
    assert!(!ok && out.contains("opusComplexity"), "the schema let the complexity differ from the spec: {out}");
    // Nor dropped: `--set …=null` deletes the key in Helm, and the schema requires it.
    let (ok, out) = template(&t, &chart, &["performance.opusComplexity=null"]);
    assert!(!ok && out.contains("opusComplexity"), "the schema let the complexity be dropped: {out}");
    // Unset in the spec (null: Helm drops the key): no value may be set either.
    let (_dir, chart) = rendered("webrtc-self-signed");
    let (ok, out) = template(&t, &chart, &["performance.opusComplexity=2"]);
    assert!(!ok && out.contains("opusComplexity"), "the schema let a complexity in past the spec: {out}");
}

/// A copy of fixture `case` with its spec (read from `spec`) and secrets file edited, rendered
/// into its `deploy/`.
fn edited_render(
    case: &str,
    spec: &Path,
    edit: &dyn Fn(String) -> String,
    secrets: &dyn Fn(String) -> String,
) -> tempfile::TempDir {
    let d = fixture_copy(case);
    let s = d.path().join("astrtc.toml");
    std::fs::write(&s, edit(std::fs::read_to_string(spec).unwrap())).unwrap();
    let sp = d.path().join("astrtc.secrets.toml");
    std::fs::write(&sp, secrets(std::fs::read_to_string(&sp).unwrap())).unwrap();
    let plan = plan_for(&s, ROOT).unwrap();
    astrtc::deploy::write(&plan, &d.path().join("deploy")).unwrap();
    d
}

/// Pod deletion drains: a preStop hook runs astrtc-drain, the grace period is the spec's drain
/// plus 30 s, readiness (not liveness) turns false while draining; configs, passwords and the
/// certificate are directory mounts (updates reach the pod), and only the restart digest rolls it.
#[test]
fn the_chart_drains_on_pod_deletion_and_reloads_without_restarts() {
    let Some(t) = tools() else { return };
    let (dir, chart) = rendered("webrtc-self-signed");
    let pod_of = |docs: &[serde_yaml_ng::Value]| {
        docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"].clone()
    };
    let pod = pod_of(&docs_of(&t, &chart, &[]));
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 3630, "the spec's default drain (3600) + 30");
    let asterisk = &pod["spec"]["containers"][0];
    assert_eq!(asterisk["lifecycle"]["preStop"]["exec"]["command"][0], "/usr/local/bin/astrtc-drain");
    let env = asterisk["env"].as_sequence().unwrap();
    assert!(env.iter().any(|e| e["name"] == "ASTRTC_DRAIN_SECONDS" && e["value"] == "3600"), "{env:?}");
    let probe = |name: &str| -> Vec<String> {
        asterisk[name]["exec"]["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect()
    };
    assert_eq!(probe("readinessProbe"), ["/usr/local/bin/astrtc-healthcheck"], "readiness must see the drain");
    assert_eq!(
        probe("livenessProbe"),
        ["/usr/local/bin/astrtc-healthcheck", "--live"],
        "liveness must not kill a drain"
    );
    assert!(asterisk["readinessProbe"]["periodSeconds"].as_u64().unwrap() <= 2);
    let mounts: Vec<(String, Option<String>)> = asterisk["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap().to_string(), m["subPath"].as_str().map(str::to_string)))
        .collect();
    for path in ["/etc/asterisk", "/etc/asterisk-secrets", "/etc/asterisk-keys"] {
        assert!(mounts.contains(&(path.to_string(), None)), "{path} is not a directory mount: {mounts:?}");
    }
    assert!(mounts.iter().all(|(_, sub)| sub.is_none()), "a subPath mount never sees updates: {mounts:?}");
    let annotations = &pod["metadata"]["annotations"];
    let digest = std::fs::read_to_string(chart.join("files/restart-digest")).unwrap();
    assert_eq!(annotations["checksum/restart"].as_str(), Some(digest.trim()));
    assert!(annotations.get("checksum/config").is_none() && annotations.get("checksum/secrets").is_none());
    // A drain chosen at install time.
    let pod = pod_of(&docs_of(&t, &chart, &["lifecycle.drainSeconds=60"]));
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 90);

    // A new endpoint and a password keep the digest (the reloader applies them); an RTP range
    // change alters it (the pod rolls, draining).
    let spec = dir.path().join("astrtc.toml");
    let render = |edit: &dyn Fn(String) -> String, secrets: &dyn Fn(String) -> String| -> String {
        let d = edited_render("webrtc-self-signed", &spec, edit, secrets);
        std::fs::read_to_string(d.path().join("deploy/helm/astrtc/files/restart-digest")).unwrap()
    };
    let same = |t: String| t;
    let base = render(&same, &same);
    assert_eq!(base, digest);
    let added = render(&|t| t + "\n[[endpoints]]\nid = \"4001\"\nkind = \"sip\"\n", &|t| {
        t.replace("[endpoints]", "[endpoints]\n4001 = \"fixture-sip-4001-password\"")
    });
    let password = render(&same, &|t| t.replace("fixture-sip-3001-password", "another-sip-3001-password"));
    let range = render(&|t| t.replacen("[rtp]\n", "[rtp]\nend = 20010\n", 1), &same);
    assert_eq!(added, base, "adding an endpoint must not restart the pod");
    assert_eq!(password, base, "a password change must not restart the pod");
    assert_ne!(range, base, "an RTP range change must restart the pod");
}

/// Metrics for Prometheus Operator users (ServiceMonitor or PodMonitor, basic auth from the
/// chart's Secret, TLS checked against the bundled CA by name), scrape annotations otherwise.
#[test]
fn the_chart_offers_monitors_or_scrape_annotations() {
    let Some(t) = tools() else { return };
    let (_dir, chart) = rendered("webrtc-self-signed");
    let annotations = |docs: &[serde_yaml_ng::Value]| {
        docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["metadata"]["annotations"].clone()
    };
    let docs = docs_of(&t, &chart, &[]);
    let a = annotations(&docs);
    assert_eq!(a["prometheus.io/scrape"], "true");
    assert_eq!(a["prometheus.io/port"], "8089");
    assert_eq!(a["prometheus.io/scheme"], "https");
    assert_eq!(a["prometheus.io/path"], "/metrics");
    assert!(!docs.iter().any(|d| d["kind"] == "ServiceMonitor" || d["kind"] == "PodMonitor"));
    let secret = docs.iter().find(|d| d["kind"] == "Secret" && d["type"] == "kubernetes.io/basic-auth").unwrap();
    assert!(secret["data"]["username"].is_string() && secret["data"]["password"].is_string());
    for (set, kind, list) in [
        ("metrics.serviceMonitor.enabled=true", "ServiceMonitor", "endpoints"),
        ("metrics.podMonitor.enabled=true", "PodMonitor", "podMetricsEndpoints"),
    ] {
        let docs = docs_of(&t, &chart, &[set]);
        let monitor = docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
        let ep = &monitor["spec"][list][0];
        assert_eq!(ep["port"], "wss");
        assert_eq!(ep["path"], "/metrics");
        assert_eq!(ep["scheme"], "https");
        assert_eq!(ep["basicAuth"]["password"]["name"], secret["metadata"]["name"]);
        assert_eq!(ep["tlsConfig"]["serverName"], "pbx.example.test");
        assert_eq!(ep["tlsConfig"]["ca"]["secret"]["key"], "ca.crt");
        assert!(annotations(&docs).get("prometheus.io/scrape").is_none(), "{kind} and annotations both");
    }
    // Behind an Ingress the pod serves plain HTTP: the monitor scrapes that.
    let docs = docs_of(&t, &chart, &["metrics.podMonitor.enabled=true", "ingress.enabled=true"]);
    let ep = &docs.iter().find(|d| d["kind"] == "PodMonitor").unwrap()["spec"]["podMetricsEndpoints"][0];
    assert_eq!((ep["port"].as_str(), ep["scheme"].as_str()), (Some("ws"), Some("http")));
    assert!(ep.get("tlsConfig").is_none());
    // A ServiceMonitor needs the Service.
    let (ok, out) = template(&t, &chart, &["metrics.serviceMonitor.enabled=true", "service.enabled=false"]);
    assert!(!ok && out.contains("needs service.enabled"), "{out}");
    the_node_exporter_is_scraped_only_where_it_listens_beyond_loopback(&t, &chart);
}

/// The node exporter sidecar (astrtc-metrics' text file): with hostNetwork it listens on the node's
/// loopback by default and no monitor names it; with `listen=all` (or hostPort's default) the
/// monitors get a second, plain-HTTP endpoint, the ServiceMonitor through a ClusterIP Service of
/// its own; never a host port, never in the annotations (they name one port: Asterisk's /metrics).
fn the_node_exporter_is_scraped_only_where_it_listens_beyond_loopback(t: &Tools, host_network: &Path) {
    let container = |docs: &[serde_yaml_ng::Value], name: &str| {
        let pod = &docs.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"];
        pod["containers"].as_sequence().unwrap().iter().find(|c| c["name"] == name).cloned()
    };
    let (_narrow_dir, host_port) = rendered("bridge-narrow-rtp");
    for (chart, sets, listen, scraped) in [
        (host_network, vec![], "--web.listen-address=127.0.0.1:9101", false),
        (host_network, vec!["metrics.exporter.listen=all"], "--web.listen-address=:9101", true),
        (&host_port, vec![], "--web.listen-address=:9101", true),
        (&host_port, vec!["metrics.exporter.listen=loopback"], "--web.listen-address=127.0.0.1:9101", false),
    ] {
        for (monitor, kind, list) in [
            ("metrics.serviceMonitor.enabled=true", "ServiceMonitor", "endpoints"),
            ("metrics.podMonitor.enabled=true", "PodMonitor", "podMetricsEndpoints"),
        ] {
            let what = format!("{sets:?} {kind}");
            let docs = docs_of(t, chart, &[sets.clone(), vec![monitor, "metrics.exporter.enabled=true"]].concat());
            let exporter = container(&docs, "exporter").unwrap_or_else(|| panic!("{what}: no exporter"));
            assert_eq!(exporter["args"][0], listen, "{what}");
            assert_eq!(exporter["securityContext"]["readOnlyRootFilesystem"], true);
            // A readiness probe (checkov) that needs only the volume; liveness asks for /metrics.
            assert_eq!(exporter["readinessProbe"]["exec"]["command"][0], "test", "{what}");
            assert_eq!(exporter["livenessProbe"]["exec"]["command"][0], "/bin/bash", "{what}");
            assert_eq!(
                exporter["securityContext"]["runAsUser"].as_u64(),
                Some(u64::from(astrtc::image::PROMETHEUS_UID))
            );
            let ports = exporter["ports"].as_sequence().map_or(&[][..], |p| &p[..]);
            assert!(ports.iter().all(|p| p.get("hostPort").is_none()), "{what}: a host port");
            assert_eq!(!ports.is_empty(), scraped, "{what}: {ports:?}");
            let asterisk = container(&docs, "asterisk").unwrap();
            assert!(asterisk["env"].as_sequence().unwrap().iter().any(|e| e["name"] == "ASTRTC_METRICS_DIR"));
            let endpoints =
                docs.iter().find(|d| d["kind"] == kind).unwrap()["spec"][list].as_sequence().unwrap().clone();
            let exporter_endpoint = endpoints.iter().find(|e| e["port"] == "exporter");
            assert_eq!(exporter_endpoint.is_some(), scraped, "{what}: {endpoints:?}");
            if let Some(ep) = exporter_endpoint {
                assert_eq!((ep["scheme"].as_str(), ep["path"].as_str()), (Some("http"), Some("/metrics")));
            }
            let service =
                docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "pbx-astrtc-exporter");
            assert_eq!(service.is_some(), scraped && kind == "ServiceMonitor", "{what}");
            if let Some(service) = service {
                assert_eq!(service["spec"]["type"], "ClusterIP");
            }
            let main = docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "pbx-astrtc").unwrap();
            assert!(!main["spec"]["ports"].as_sequence().unwrap().iter().any(|p| p["name"] == "exporter"));
        }
    }
    // The same collectors and text-file directory as compose's node-exporter service.
    let compose: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(host_network.join("../../compose.yaml")).unwrap()).unwrap();
    let docs = docs_of(t, host_network, &["metrics.exporter.enabled=true"]);
    let exporter = container(&docs, "exporter").unwrap();
    assert_eq!(exporter["command"], compose["services"]["node-exporter"]["entrypoint"]);
    let args = |v: &serde_yaml_ng::Value| v.as_sequence().unwrap()[1..].to_vec();
    assert_eq!(args(&exporter["args"]), args(&compose["services"]["node-exporter"]["command"]));
    // Off (the default): neither astrtc-metrics nor the sidecar.
    let docs = docs_of(t, host_network, &[]);
    assert!(container(&docs, "exporter").is_none());
    let asterisk = container(&docs, "asterisk").unwrap();
    assert!(!asterisk["env"].as_sequence().unwrap().iter().any(|e| e["name"] == "ASTRTC_METRICS_DIR"));
}

#[test]
fn the_guard_sidecar_has_net_admin_and_nothing_more() {
    let Some(t) = tools() else { return };
    let (_dir, chart) = rendered("phones-tls");
    let (ok, manifests) = template(&t, &chart, &[]);
    assert!(ok, "{manifests}");
    let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&manifests)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deploy["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    let guard = containers.iter().find(|c| c["name"] == "guard").expect("a guard container");
    let sc = &guard["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_yaml_ng::Value::from(vec!["ALL"]));
    assert_eq!(sc["capabilities"]["add"], serde_yaml_ng::Value::from(vec!["NET_ADMIN"]));
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert!(sc.get("privileged").is_none());
    assert_eq!(guard["livenessProbe"]["exec"]["command"][0], "/usr/local/bin/astrtc-guard-healthcheck");
    let mounts: Vec<&str> =
        guard["volumeMounts"].as_sequence().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    for want in ["/etc/fail2ban/jail.d/astrtc.local", "/etc/fail2ban/filter.d/asterisk.local", "/var/log/asterisk"] {
        assert!(mounts.contains(&want), "{want} is not mounted: {mounts:?}");
    }
    // The ConfigMap carries the very files compose mounts.
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "pbx-astrtc-guard").unwrap();
    let jail = std::fs::read_to_string(chart.join("../../guard/jail.d/astrtc.local")).unwrap();
    assert_eq!(cm["data"]["jail.d_astrtc.local"].as_str(), Some(jail.as_str()));
    // SIP over TLS is a container and Service port.
    let asterisk = containers.iter().find(|c| c["name"] == "asterisk").unwrap();
    assert!(asterisk["ports"].as_sequence().unwrap().iter().any(|p| p["name"] == "sip-tls"));
    // Off by a value; refused by the schema when the spec has no guard.
    let (ok, manifests) = template(&t, &chart, &["guard.enabled=false"]);
    assert!(ok && !manifests.contains("name: guard"), "{manifests}");
    let (_dir, no_guard) = rendered("acme-http01");
    let (ok, out) = template(&t, &no_guard, &["guard.enabled=true"]);
    assert!(!ok && out.contains("/guard/enabled"), "a chart without guard files accepted guard.enabled=true:\n{out}");
}

#[test]
fn checkov_finds_nothing_beyond_the_justified_skips() {
    let Some(t) = tools() else { return };
    let checkov = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/checkov/bin/checkov");
    if tool_missing(&checkov, "make deps-helm") {
        return;
    }
    let mut in_manifests = Vec::new();
    for (case, sets) in [
        ("webrtc-self-signed", vec![]),
        ("bridge-narrow-rtp", vec!["network.mode=hostPort"]),
        ("bridge-narrow-rtp", vec!["metrics.serviceMonitor.enabled=true", "metrics.exporter.enabled=true"]),
        ("webrtc-self-signed", vec!["metrics.exporter.enabled=true"]),
        ("webrtc-self-signed", vec!["certificates.mode=certManager", "certificates.certManager.issuerName=le"]),
        ("webrtc-self-signed", vec!["metrics.serviceMonitor.enabled=true"]),
        ("acme-http01", vec!["metrics.podMonitor.enabled=true", "metrics.exporter.enabled=true"]),
        ("turn-bundled", vec![]),
        ("turn-bundled", vec!["certificates.mode=certManager", "certificates.certManager.issuerName=le"]),
    ] {
        let (dir, chart) = rendered(case);
        let (ok, manifests) = template(&t, &chart, &sets);
        assert!(ok, "{manifests}");
        // Skips the chart writes into its manifests need a reason as much as the config's.
        let (skipped, problems) = annotation_skips(&manifests);
        assert!(problems.is_empty(), "{case} {sets:?}:\n{}", problems.join("\n"));
        in_manifests.extend(skipped);
        let file = dir.path().join("manifests.yaml");
        std::fs::write(&file, manifests).unwrap();
        checkov_clean(&checkov, &file, &format!("{case} {sets:?}"));
    }
    eprintln!("checkov skips written into the manifests, each with its reason: {in_manifests:?}");
    assert!(!in_manifests.is_empty(), "the ACME sidecar mode's annotation skips were not found");
}

/// The checkov skips written into manifests (`checkov.io/skipN: CHECK=reason` annotations, at
/// any depth): the ids of those with a written reason (six words at least), and the others.
fn annotation_skips(manifests: &str) -> (Vec<String>, Vec<String>) {
    fn walk(value: &serde_yaml_ng::Value, ids: &mut Vec<String>, problems: &mut Vec<String>) {
        match value {
            serde_yaml_ng::Value::Mapping(map) => {
                for (key, val) in map {
                    let key = key.as_str().unwrap_or_default();
                    if key.starts_with("checkov.io/skip") {
                        let text = val.as_str().unwrap_or_default();
                        match text.split_once('=') {
                            Some((id, reason)) if reason.split_whitespace().count() >= 6 => ids.push(id.to_string()),
                            _ => problems.push(format!("{key}: {text:?} carries no written reason (CHECK=why)")),
                        }
                    }
                    walk(val, ids, problems);
                }
            }
            serde_yaml_ng::Value::Sequence(items) => items.iter().for_each(|v| walk(v, ids, problems)),
            _ => {}
        }
    }
    let (mut ids, mut problems) = (Vec::new(), Vec::new());
    for doc in serde_yaml_ng::Deserializer::from_str(manifests) {
        let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc).unwrap();
        walk(&value, &mut ids, &mut problems);
    }
    (ids, problems)
}

/// The PyPI pins in scripts/host-setup.sh, from its `ensure_venv "$tools/DIR" NAME==VERSION ...`
/// lines: (venv directory under target/tools, package, version).
fn pinned_in_host_setup() -> Vec<(String, String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/host-setup.sh");
    let mut pins = Vec::new();
    for line in std::fs::read_to_string(script).unwrap().lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("ensure_venv \"$tools/") else { continue };
        let (venv, packages) = rest.split_once('"').unwrap();
        for p in packages.split_whitespace() {
            let (name, version) =
                p.split_once("==").unwrap_or_else(|| panic!("{p} in host-setup.sh is not pinned (NAME==VERSION)"));
            pins.push((venv.to_string(), name.to_string(), version.to_string()));
        }
    }
    pins
}

#[test]
fn the_chart_tools_are_what_their_names_and_pins_say() {
    let Some(t) = tools() else { return };
    for (helm, major) in [(&t.helm3, "v3."), (&t.helm4, "v4.")] {
        let (ok, version) = run(Command::new(helm).args(["version", "--short"]));
        assert!(ok && version.starts_with(major), "{} is {:?}, not Helm {major}x", helm.display(), version.trim());
        eprintln!("{}: {}", helm.display(), version.trim());
    }
    let pins = pinned_in_host_setup();
    for tool in ["checkov", "kubernetes-validate", "cloudcoil-models-cert-manager"] {
        assert!(pins.iter().any(|(_, name, _)| name == tool), "host-setup.sh pins no {tool}: {pins:?}");
    }
    // The installed distribution (names compared as PEP 503 says), and for a tool with a command
    // of the same name, what that command says about itself.
    let installed = "import importlib.metadata as m, re, sys\n\
        n = lambda s: re.sub(r'[-_.]+', '-', s).lower()\n\
        print(next((d.version for d in m.distributions() if n(d.metadata['Name']) == n(sys.argv[1])), 'none'))";
    for (venv, name, pinned) in &pins {
        let venv = tools_dir().join(venv);
        if tool_missing(&venv.join("bin/python"), "make deps-helm") {
            return;
        }
        let (ok, version) = run(Command::new(venv.join("bin/python")).args(["-c", installed, name]));
        assert!(ok && version.trim() == pinned, "{name}: {} installed, host-setup.sh pins {pinned}", version.trim());
        let command = venv.join("bin").join(name);
        if command.exists() {
            let (_, says) = run(Command::new(&command).arg("--version"));
            assert_eq!(says.trim(), pinned, "{} --version", command.display());
        }
        eprintln!("{name} {pinned} (pinned and installed)");
    }
}

/// What is wrong with a checkov config: every `skip-check` entry must stand on a line of its own
/// with a comment right above it that names the check and says why it is skipped (six words at
/// least, besides the check's id and title); keys that would hide findings wholesale (soft-fail,
/// skip-path, skip-framework, ...) are refused.
fn checkov_config_problems(text: &str) -> Vec<String> {
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    let mut problems = Vec::new();
    let allowed = ["skip-check", "skip-download", "compact", "quiet"];
    for key in config.as_mapping().expect("a mapping").keys() {
        let key = key.as_str().unwrap_or_default();
        if !allowed.contains(&key) {
            problems.push(format!("key {key:?} can hide findings; skip single checks with a reason instead"));
        }
    }
    let skipped: Vec<String> = match &config["skip-check"] {
        serde_yaml_ng::Value::Sequence(ids) => ids.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
        serde_yaml_ng::Value::String(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        _ => Vec::new(),
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for id in &skipped {
        let Some(at) = lines.iter().position(|l| *l == format!("- {id}")) else {
            problems.push(format!("{id}: not on a line of its own (`- {id}`), so it carries no reason"));
            continue;
        };
        let mut comment: Vec<&str> = lines[..at]
            .iter()
            .rev()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim())
            .collect();
        comment.reverse();
        let comment = comment.join(" ");
        if comment.is_empty() {
            problems.push(format!("{id}: a bare entry, no comment right above it saying why"));
            continue;
        }
        let Some(after_id) = comment.strip_prefix(id.as_str()) else {
            problems.push(format!("{id}: the comment right above it does not name it: {comment:?}"));
            continue;
        };
        // `ID "title": reason`: count the words of the reason.
        let reason = after_id.trim_start().strip_prefix('"').and_then(|t| t.split_once('"')).map_or(after_id, |x| x.1);
        if reason.split_whitespace().count() < 6 {
            problems.push(format!("{id}: no reason written above it: {comment:?}"));
        }
    }
    problems
}

#[test]
fn every_skipped_checkov_check_has_a_written_reason() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/checkov.yaml");
    let problems = checkov_config_problems(&std::fs::read_to_string(config).unwrap());
    assert!(problems.is_empty(), "tests/checkov.yaml:\n{}", problems.join("\n"));
    // The check itself refuses what it must.
    let why = "# CKV_A \"a title\": the reason is written here in words\n";
    for (bad, config) in [
        ("bare entry", format!("skip-check:\n  {why}  - CKV_A\n  - CKV_B\n")),
        ("title only", "skip-check:\n  # CKV_A \"a title\"\n  - CKV_A\n".to_string()),
        ("another check's reason", format!("skip-check:\n  {why}  # \n  - CKV_B\n")),
        ("flow list", "skip-check: [CKV_A]\n".to_string()),
        ("soft-fail", format!("skip-check:\n  {why}  - CKV_A\nsoft-fail: true\n")),
    ] {
        assert!(!checkov_config_problems(&config).is_empty(), "{bad} passed:\n{config}");
    }
    assert!(checkov_config_problems(&format!("skip-check:\n  {why}  - CKV_A\n")).is_empty());
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
    assert_eq!(names, ["asterisk", "reloader"]);
    for c in pod["containers"].as_sequence().unwrap().iter().filter(|c| c["name"] != "exporter") {
        let keys = c["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["mountPath"] == "/etc/asterisk-keys");
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

fn parsed(manifests: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(manifests).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
}

/// The bundled TURN relay as a Kubernetes workload: its own Deployment on the host network of
/// Asterisk's node (a required pod affinity; its labels never match Asterisk's selector), the
/// config the compose service mounts in a ConfigMap, the shared secret in a Secret (never in the
/// ConfigMap), the deployment's certificate in every certificate mode (bundled, cert-manager,
/// an existing Secret, ACME with a shared claim; ACME without one is refused), the TURN ports
/// fixed by the spec, and no TURN objects at all for a spec without `[turn]`.
#[test]
fn the_turn_relay_runs_beside_asterisk_with_its_config_secret_and_certificate() {
    let Some(t) = tools() else { return };
    let (dir, chart) = rendered("turn-bundled");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let turn = plan.turn.as_ref().unwrap();
    for (mode, sets, keys) in [
        ("bundled", vec![], "pbx-astrtc-keys"),
        (
            "cert-manager",
            vec!["certificates.mode=certManager", "certificates.certManager.issuerName=le"],
            "pbx-astrtc-keys",
        ),
        ("existing secret", vec!["certificates.mode=existingSecret", "certificates.existingSecret=tls"], "tls"),
        (
            "ingress",
            vec!["ingress.enabled=true", "ingress.className=nginx", "ingress.tlsSecretName=x"],
            "pbx-astrtc-keys",
        ),
    ] {
        let (ok, manifests) = template(&t, &chart, &sets);
        assert!(ok, "{mode}: {manifests}");
        let docs = parsed(&manifests);
        let deploy = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "pbx-astrtc-turn")
            .unwrap_or_else(|| panic!("{mode}: no TURN Deployment"));
        let pod = &deploy["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        let affinity = &pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(affinity["labelSelector"]["matchLabels"]["app.kubernetes.io/name"], "astrtc");
        assert_eq!(deploy["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], "astrtc-turn");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], format!("astrtc/turn:{}", env!("CARGO_PKG_VERSION")).as_str());
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        // TLS on 443 (the fixture) needs the file capability: escalation on, nothing else added.
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], true);
        assert_eq!(c["securityContext"]["capabilities"]["add"].as_sequence().unwrap().len(), 1);
        let ports: Vec<(u64, &str)> = c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| (p["containerPort"].as_u64().unwrap(), p["protocol"].as_str().unwrap()))
            .collect();
        let (p, tls) = (u64::from(turn.port), u64::from(turn.tls_port.unwrap()));
        assert_eq!(ports, [(p, "UDP"), (p, "TCP"), (tls, "TCP")]);
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            assert_eq!(c[probe]["exec"]["command"][0], "/usr/local/bin/astrtc-turn-healthcheck");
        }
        let volumes = pod["volumes"].as_sequence().unwrap();
        let keys_volume = volumes.iter().find(|v| v["name"] == "keys").unwrap();
        assert_eq!(keys_volume["secret"]["secretName"], keys, "{mode}");
        // The Secret or Certificate holding that certificate exists (the pod may not need it).
        if keys == "pbx-astrtc-keys" {
            let holder = docs.iter().any(|d| {
                (d["kind"] == "Secret" || d["kind"] == "Certificate")
                    && (d["metadata"]["name"] == keys || d["spec"]["secretName"] == keys)
            });
            assert!(holder, "{mode}: nothing makes {keys}");
        }
        let cm = docs.iter().find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "pbx-astrtc-turn").unwrap();
        let rendered_conf = std::fs::read_to_string(dir.path().join("deploy/turn/turnserver.conf")).unwrap();
        assert_eq!(cm["data"]["turnserver.conf"].as_str().unwrap(), rendered_conf);
        assert!(!manifests.contains(turn.secret.expose()), "{mode}: the shared secret appears in clear");
        let secret = docs.iter().find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "pbx-astrtc-turn").unwrap();
        assert!(secret["data"]["auth-secret"].as_str().is_some_and(|s| !s.is_empty()));
    }
    // The spec fixes the TURN ports; ACME without a claim both pods mount is refused.
    let (ok, out) = template(&t, &chart, &["turn.ports.tls=5349"]);
    assert!(!ok && out.contains("turn/ports/tls"), "{out}");
    let (ok, out) = template(&t, &chart, &["turn.enabled=false"]);
    assert!(!ok && out.contains("turn/enabled"), "{out}");
    let acme = fixture_copy("acme-http01");
    let spec = acme.path().join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("{text}\n[turn]\nmode = \"bundled\"\n")).unwrap();
    let secrets = acme.path().join("astrtc.secrets.toml");
    let text = std::fs::read_to_string(&secrets).unwrap();
    std::fs::write(&secrets, format!("{text}\n[turn]\nsecret = \"fixture-turn-shared-secret-0123456789abcdef\"\n"))
        .unwrap();
    let plan = plan_for(&spec, ROOT).unwrap();
    astrtc::deploy::write(&plan, &acme.path().join("deploy")).unwrap();
    let chart = acme.path().join("deploy/helm/astrtc");
    let (ok, out) = template(&t, &chart, &[]);
    assert!(!ok && out.contains("set certificates.acme.existingClaim"), "{out}");
    let (ok, manifests) = template(&t, &chart, &["certificates.acme.existingClaim=pbx-acme"]);
    assert!(ok, "{manifests}");
    let docs = parsed(&manifests);
    let pod = &docs.iter().find(|d| d["metadata"]["name"] == "pbx-astrtc-turn" && d["kind"] == "Deployment").unwrap()
        ["spec"]["template"]["spec"];
    let state = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == "acme-state").unwrap();
    assert_eq!(state["persistentVolumeClaim"]["claimName"], "pbx-acme");
    // No [turn]: no TURN objects.
    let (_d, chart) = rendered("webrtc-self-signed");
    let (ok, manifests) = template(&t, &chart, &[]);
    assert!(ok && !manifests.contains("-turn"), "{manifests}");
}

/// The outer container of the podman pod run; removed when dropped.
struct PodRunner(String);

impl PodRunner {
    /// Starts the runner container (`astrtc-test/podman:trixie`, built by the caller) with
    /// `extra` Docker options, and loads `images` into its podman.
    fn start(name: &str, extra: &[&str], images: &[&str]) -> PodRunner {
        let (ok, out) = run(Command::new("docker")
            .args(["run", "-d", "--name", name])
            .args([
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
            ])
            .args(extra)
            .arg("astrtc-test/podman:trixie"));
        assert!(ok, "{out}");
        let runner = PodRunner(name.to_string());
        let load = Command::new("sh")
            .arg("-c")
            .arg(format!("docker save {} | docker exec -i {name} podman load -q", images.join(" ")))
            .output()
            .unwrap();
        assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
        runner
    }

    /// The runner's address on Docker's bridge.
    fn ip(&self) -> String {
        let out =
            Command::new("docker").args(["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker").args(["exec", &self.0]).args(args).output().unwrap()
    }
}

/// The log of a reloader container, asserted to hold no reload: it starts with Asterisk, so a
/// reload there means its record and the entrypoint's differ (the passwords left out of one).
fn reloaded_nothing(runner: &PodRunner, reloader: &str) -> String {
    let log = runner.exec(&["podman", "logs", reloader]);
    let log = format!("{}{}", String::from_utf8_lossy(&log.stdout), String::from_utf8_lossy(&log.stderr));
    assert!(
        log.contains("astrtc-reload: watching") && !log.contains("reloaded:") && !log.contains("failed"),
        "{reloader} reloaded or failed with nothing changed since Asterisk started: {log}"
    );
    log
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// The chart's manifests run for real: `podman kube play` (trixie's podman inside a Docker
/// container) with the image this repository builds, then the image tests' checks: TLS on the
/// WSS port verified against the rendered CA, the WebRTC modules Running, the reloader running
/// beside Asterisk, and /metrics scraped on the pod's port (401 without the password, 200 with).
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_runs_as_a_pod_under_podman() {
    let Some(t) = tools() else { return };
    if docker_off() {
        return;
    }
    let (dir, chart) = rendered("host-alt-ports");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let image = crate::common::docker::test_image();
    crate::common::docker::ensure_image();
    // The node exporter sidecar's image (`astrtc build --monitoring`).
    crate::common::docker::ensure_prometheus();
    let (repository, tag) = image.rsplit_once(':').unwrap();
    let (set_repository, set_tag) = (format!("image.repository={repository}"), format!("image.tag={tag}"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out) = run(Command::new("docker")
        .args(["build", "-q", "-t", "astrtc-test/podman:trixie"])
        .arg(root.join("tests/podman")));
    assert!(ok, "building the podman runner failed:\n{out}");
    // podman ignores fsGroup: the password and key files must be readable without it. The guard
    // sidecar is left out here: its nftables bans are proven by the compose tests
    // (tests/security.rs); nft inside podman inside Docker is not what a cluster runs.
    // podman also chowns a shared emptyDir to the uid of whichever container mounts it first
    // (Kubernetes makes it 0777), so the node exporter sidecar runs as the asterisk uid here, not
    // the Prometheus image's: otherwise astrtc-metrics may find its directory not its own.
    let exporter_uid = astrtc::image::ASTERISK_UID.to_string();
    let set_exporter_uid = format!("metrics.exporter.uid={exporter_uid}");
    let sets = [
        "securityContext.secretFileMode=292",
        "guard.enabled=false",
        &set_repository,
        &set_tag,
        "metrics.exporter.enabled=true",
        &set_exporter_uid,
    ];
    let (ok, manifests) = template(&t, &chart, &sets);
    assert!(ok, "{manifests}");
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, &manifests).unwrap();

    let name = format!("astrtc-podman-{}", std::process::id());
    let runner = PodRunner::start(&name, &[], &[image, astrtc::image::PROMETHEUS_IMAGE]);
    let (ok, out) = run(Command::new("docker").arg("cp").arg(&file).arg(format!("{name}:/pod.yaml")));
    assert!(ok, "{out}");
    let ip = runner.ip();
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
    // The reloader runs beside Asterisk and reaches its CLI; nothing changed since Asterisk started,
    // so it has reloaded nothing (its record and the entrypoint's cover the same files).
    let diff = runner.exec(&["podman", "exec", "pbx-astrtc-pod-reloader", "/usr/local/bin/astrtc-reload", "once"]);
    assert!(diff.status.success(), "the reloader: {}", String::from_utf8_lossy(&diff.stderr));
    assert_eq!(String::from_utf8_lossy(&diff.stdout).trim(), "nothing changed", "the reloader's pass");
    reloaded_nothing(&runner, "pbx-astrtc-pod-reloader");
    // /metrics on the pod's port: the password is needed, and with it Asterisk's metrics come.
    let anonymous = astrtc::verify::tls::https_get(wss, &plan.tls.domain, &ca, "/metrics").unwrap();
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{}", anonymous.lines().next().unwrap_or(""));
    let auth = format!(
        "Authorization: Basic {}\r\n",
        crate::metrics::base64(format!("{}:{}", plan.metrics.username, plan.metrics.password.expose()).as_bytes())
    );
    let scraped = astrtc::verify::tls::https_get_with(wss, &plan.tls.domain, &ca, "/metrics", &auth).unwrap();
    assert!(scraped.starts_with("HTTP/1.1 200"), "{}", scraped.lines().next().unwrap_or(""));
    assert!(scraped.contains("asterisk_core_uptime_seconds"), "{scraped}");
    let series = scraped.lines().filter(|l| l.starts_with("asterisk_")).count();
    eprintln!("podman pod: /metrics scraped on the WSS port with basic auth, {series} series");
    // What res_prometheus lacks: astrtc-metrics in the Asterisk container writes its text file into
    // the shared emptyDir, and the node exporter sidecar serves it on the pod's loopback (the
    // default with hostNetwork). Scraped from inside the pod until both its success timestamp and
    // a task-processor family with processors in it are there.
    let id = runner.exec(&["podman", "exec", "pbx-astrtc-pod-exporter", "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), exporter_uid);
    let scrape = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
        plan.metrics.exporter_port
    );
    let waited = std::time::Instant::now();
    let exported = loop {
        let out = runner.exec(&["podman", "exec", "pbx-astrtc-pod-exporter", "/bin/bash", "-c", &scrape]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let families: Vec<(String, f64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("asterisk_taskprocessors{family=\""))
            .filter_map(|l| l.split_once("\"} "))
            .filter_map(|(family, value)| Some((family.to_string(), value.trim().parse().ok()?)))
            .collect();
        let success = text.lines().any(|l| l.starts_with("astrtc_metrics_last_success_timestamp_seconds "));
        if success && families.iter().any(|(_, n)| *n > 0.0) {
            break (text, families);
        }
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(60),
            "the exporter never served astrtc-metrics' series (success timestamp: {success}, task-processor families: \
             {families:?}); scrape:\n{text}\n{}\nexporter's log: {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&runner.exec(&["podman", "logs", "pbx-astrtc-pod-exporter"]).stderr),
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let (text, families) = exported;
    let node = text.lines().filter(|l| l.starts_with("node_cpu_seconds_total{")).count();
    let own = text.lines().filter(|l| l.starts_with("asterisk_") || l.starts_with("astrtc_")).count();
    assert!(node > 0, "no node_cpu_seconds_total: {text}");
    eprintln!(
        "podman pod: node exporter sidecar scraped on 127.0.0.1:{} after {:.2?}: {own} astrtc-metrics series, {} task-processor \
         families, {node} node CPU series",
        plan.metrics.exporter_port,
        waited.elapsed(),
        families.len()
    );
}

/// The pool's podman network in the cluster run: a bridge in the runner, no NAT, no DNS of
/// podman's (the test's dnsmasq answers the pool's Service name); the edge reaches the pool from
/// the bridge's address, `.1`.
const POD_POOL_SUBNET: &str = "10.89.7";

/// The issue's proof test 4: the cluster chart's pods run under `podman kube play` (in the podman
/// runner) — the edge and relay in their hostNetwork pod, two pool pods, PostgreSQL — and carry
/// a SIP call and a WebRTC call with audio echoed. podman has no StatefulSet and no cluster DNS,
/// so the test turns the StatefulSet's template into one Pod per member, named as the
/// StatefulSet names them, on a podman bridge network at fixed addresses, and has dnsmasq in the
/// runner answer the pool's headless Service name (`<svc>.default.svc.cluster.local`) with every
/// member's address, as cluster DNS would (its hosts file changed and re-read to scale the pool);
/// the edge pod's `pool` container resolves it through `resolv.conf`. The database is the db image as a
/// pod of its own (`database.host` 127.0.0.1, the password in the Secret `database.existingSecret`
/// names); the edge's init container loads the schema and the users into it.
#[test]
fn the_cluster_chart_runs_under_podman_and_carries_a_call() {
    // Its future is large (a debug build keeps every local held across an await): on the heap,
    // polled on a thread with room (a test thread's 2 MiB overflowed once the pool-growth phase
    // came).
    // The test's own name, which a SKIP line names (`skip` reads the current thread's).
    let test = std::thread::current().name().unwrap_or("the_cluster_chart_runs_under_podman").to_string();
    let run = std::thread::Builder::new()
        .name(test)
        .stack_size(16 << 20)
        .spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
            rt.block_on(Box::pin(cluster_chart_under_podman()))
        })
        .unwrap();
    if let Err(panic) = run.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn cluster_chart_under_podman() {
    use astrtc::media::probe::{self, CallSetup, LegSetup};
    use astrtc::media::session::{Offer, SharedMedia};
    use std::time::{Duration, Instant};

    let Some(t) = tools() else { return };
    if docker_off() {
        return;
    }
    let started = Instant::now();
    let (dir, chart) = rendered("cluster-compose");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let cluster = plan.cluster.as_ref().unwrap();
    let image = crate::common::docker::test_image();
    crate::common::docker::ensure_image();
    crate::common::docker::ensure_cluster_images();
    let (repository, tag) = image.rsplit_once(':').unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out) = run(Command::new("docker")
        .args(["build", "-q", "-t", "astrtc-test/podman:trixie"])
        .arg(root.join("tests/podman")));
    assert!(ok, "building the podman runner failed:\n{out}");

    // podman ignores fsGroup: the password and key files must be readable without it.
    let gateway = format!("{POD_POOL_SUBNET}.1");
    let mut sets = vec![
        "database.host=127.0.0.1".to_string(),
        "database.existingSecret=pg-edge".to_string(),
        format!("edge.sourceCidrs={{{gateway}/32}}"),
        "securityContext.secretFileMode=292".to_string(),
        format!("pool.image.repository={repository}"),
        format!("pool.image.tag={tag}"),
    ];
    // The cluster images as the tests build them.
    use crate::common::docker::cluster_test_image;
    use astrtc::image::ClusterImage::{Database, Edge, Relay};
    let (edge_image, relay_image, db_image) =
        (cluster_test_image(Edge), cluster_test_image(Relay), cluster_test_image(Database));
    for (key, reference) in [("edge", &edge_image), ("relay", &relay_image), ("database", &db_image)] {
        let (repository, tag) = reference.rsplit_once(':').unwrap();
        sets.push(format!("{key}.image.repository={repository}"));
        sets.push(format!("{key}.image.tag={tag}"));
    }
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let (ok, manifests) = template(&t, &chart, &sets);
    assert!(ok, "{manifests}");
    let docs = parsed(&manifests);
    // Written back as YAML: a file mode (`defaultMode: 0444`, YAML 1.1's octal, which the YAML
    // 1.2 reader here keeps as a string) goes back as the number Kubernetes' reader takes it for.
    fn octal_modes(v: &mut serde_yaml_ng::Value) {
        match v {
            serde_yaml_ng::Value::Mapping(m) => {
                for (k, v) in m.iter_mut() {
                    let octal = v.as_str().filter(|s| s.len() > 1 && s.starts_with('0'));
                    if let (Some("defaultMode" | "mode"), Some(text)) = (k.as_str(), octal) {
                        *v = u32::from_str_radix(text, 8).unwrap().into();
                    } else {
                        octal_modes(v);
                    }
                }
            }
            serde_yaml_ng::Value::Sequence(s) => s.iter_mut().for_each(octal_modes),
            _ => {}
        }
    }
    let yaml = |docs: &[&serde_yaml_ng::Value]| {
        docs.iter()
            .map(|d| {
                let mut d = (*d).clone();
                octal_modes(&mut d);
                serde_yaml_ng::to_string(&d).unwrap()
            })
            .collect::<Vec<_>>()
            .join("---\n")
    };
    let named = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };

    // The StatefulSet's members as Pods, each at a fixed address; the Service name whose
    // addresses the edge pod's `pool` container follows.
    let pool = doc(&docs, "StatefulSet", "-pool");
    let pool_name = pool["metadata"]["name"].as_str().unwrap().to_string();
    let service_name =
        format!("{}.default.svc.cluster.local", doc(&docs, "Service", "-pool")["metadata"]["name"].as_str().unwrap());
    let members: Vec<(String, String)> =
        (0..cluster.pool_size).map(|i| (format!("{pool_name}-{i}"), format!("{POD_POOL_SUBNET}.{}", 11 + i))).collect();
    // A member's URI in the edge's dispatcher, as the `pool` container writes it.
    let uri = |address: &str| format!("sip:{address}:{}", plan.network.sip_port);
    // A member more than the spec's, played later: the pool grown under a running edge.
    let (grown_pod, grown_address) =
        (format!("{pool_name}-{}", cluster.pool_size), format!("{POD_POOL_SUBNET}.{}", 11 + cluster.pool_size));
    let mut files: Vec<(String, String)> = Vec::new();
    let pool_config = named("ConfigMap", &format!("{pool_name}-config"));
    for pod_name in members.iter().map(|(pod_name, _)| pod_name).chain([&grown_pod]) {
        let mut spec = pool["spec"]["template"]["spec"].clone();
        spec["hostname"] = serde_yaml_ng::Value::from(pod_name.as_str());
        // podman gives an emptyDir to the user of the container that mounts it when that
        // container names its user itself (it ignores fsGroup, and the pod-level user for this):
        // the pod's user, repeated on the container, as Kubernetes applies it anyway.
        let (uid, gid) = (spec["securityContext"]["runAsUser"].clone(), spec["securityContext"]["runAsGroup"].clone());
        // kube play makes an emptyDir a named volume of the runner, by the volume's name: each
        // member's get its own names, as each pod's emptyDirs are its own on Kubernetes.
        let mut scratch = Vec::new();
        for v in spec["volumes"].as_sequence_mut().unwrap() {
            if v.get("emptyDir").is_some() {
                let own = format!("{pod_name}-{}", v["name"].as_str().unwrap());
                scratch.push((v["name"].clone(), own.clone()));
                v["name"] = own.into();
            }
        }
        for c in spec["containers"].as_sequence_mut().unwrap() {
            c["securityContext"]["runAsUser"] = uid.clone();
            c["securityContext"]["runAsGroup"] = gid.clone();
            for m in c["volumeMounts"].as_sequence_mut().unwrap() {
                if let Some((_, own)) = scratch.iter().find(|(name, _)| &m["name"] == name) {
                    m["name"] = own.as_str().into();
                }
            }
        }
        let pod: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod_name}\n  labels: {}\n",
            serde_json::to_string(&pool["spec"]["template"]["metadata"]["labels"]).unwrap()
        ))
        .unwrap();
        let mut pod = pod;
        pod["spec"] = spec;
        files.push((format!("{pod_name}.yaml"), yaml(&[pool_config, &pod])));
    }
    // The Secrets (the chart's; the edge's database password; the db pod's files).
    let db_dir = dir.path().join("deploy/db");
    let db_file = |f: &str| std::fs::read_to_string(db_dir.join(f)).unwrap();
    let hba = "local all postgres peer\nhost kamailio kamailio 127.0.0.1/32 scram-sha-256\n";
    let secret = |name: &str, data: &[(&str, &str)]| -> serde_yaml_ng::Value {
        let mut s: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: Opaque\n"
        ))
        .unwrap();
        let mut map = serde_yaml_ng::Mapping::new();
        for (k, v) in data {
            map.insert((*k).into(), (*v).into());
        }
        s["stringData"] = serde_yaml_ng::Value::Mapping(map);
        s
    };
    let edge_secret = secret("pg-edge", &[("password", cluster.database_password.expose())]);
    let (schema, subscribers) = (db_file("schema.sql"), db_file("subscribers.sql"));
    let db_secret = secret(
        "astrtc-test-db",
        &[
            ("schema.sql", &schema),
            ("subscribers.sql", &subscribers),
            ("password", cluster.database_password.expose()),
            ("pg_hba.conf", hba),
        ],
    );
    let mut secrets: Vec<&serde_yaml_ng::Value> =
        docs.iter().filter(|d| d["kind"].as_str() == Some("Secret")).collect();
    secrets.extend([&edge_secret, &db_secret]);
    files.push(("secrets.yaml".into(), yaml(&secrets)));
    let db_pod: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: db\nspec:\n  hostNetwork: true\n  containers:\n  - name: db\n    \
         image: {}\n    volumeMounts:\n    - name: files\n      mountPath: /etc/astrtc-db\n      readOnly: true\n    \
         - name: db-data\n      mountPath: /var/lib/postgresql/data\n  volumes:\n  - name: files\n    secret:\n      \
         secretName: astrtc-test-db\n      defaultMode: 292\n  - name: db-data\n    emptyDir: {{}}\n",
        db_image
    ))
    .unwrap();
    files.push(("db.yaml".into(), yaml(&[&db_pod])));
    // podman ignores fsGroup, which on Kubernetes makes the edge's memory-backed run directory
    // writable by its group; a plain emptyDir podman gives to the uid of the container mounting
    // it (the edge's) stands in for it here.
    let mut edge = doc(&docs, "Deployment", "-edge").clone();
    for v in edge["spec"]["template"]["spec"]["volumes"].as_sequence_mut().unwrap() {
        if v["name"].as_str() == Some("edge-run") {
            v["emptyDir"] = serde_yaml_ng::Value::Mapping(serde_yaml_ng::Mapping::new());
        }
    }
    let edge = &edge;
    let edge_docs: Vec<&serde_yaml_ng::Value> = docs
        .iter()
        .filter(|d| {
            d["kind"].as_str() == Some("ConfigMap")
                && d["metadata"]["name"].as_str().is_some_and(|n| !n.starts_with(&pool_name))
        })
        .chain([edge])
        .collect();
    files.push(("edge.yaml".into(), yaml(&edge_docs)));
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }

    // The runner: its /proc/sys writable (netavark sets the bridge's sysctls in the runner's own
    // network namespace).
    let name = format!("astrtc-podman-cl-{}", std::process::id());
    let images = [image, &edge_image, &relay_image, &db_image];
    let runner = PodRunner::start(&name, &["--security-opt", "systempaths=unconfined"], &images);
    let must = |args: &[&str]| {
        let out = runner.exec(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eprintln!("podman cluster: runner up, 4 images loaded: {:.2?}", started.elapsed());
    for (file, _) in &files {
        let (ok, out) = run(Command::new("docker").arg("cp").arg(dir.path().join(file)).arg(format!("{name}:/{file}")));
        assert!(ok, "{out}");
    }
    let ip = runner.ip();
    let runner_ip: std::net::IpAddr = ip.parse().unwrap_or_else(|e| panic!("the runner's address {ip:?}: {e}"));

    let play = Instant::now();
    must(&["podman", "network", "create", "--disable-dns", "--subnet", &format!("{POD_POOL_SUBNET}.0/24"), "pool"]);
    must(&["podman", "kube", "play", "/secrets.yaml"]);
    must(&["podman", "kube", "play", "/db.yaml"]);
    for (pod_name, address) in &members {
        must(&["podman", "kube", "play", "--network", "pool", "--ip", address, &format!("/{pod_name}.yaml")]);
    }
    // Cluster DNS's stand-in, the runner's resolver: the Service's name to every member's
    // address, from a hosts file dnsmasq reads again on SIGHUP (a scaled pool: a line more or
    // less, as the Service's endpoints change).
    // Writes the hosts file for `addresses`; with `reread`, has the running dnsmasq read it again.
    let dns_hosts = |addresses: &[&str], reread: bool| {
        let text: String = addresses.iter().map(|a| format!("{a} {service_name}\n")).collect();
        let hup = if reread { " && kill -HUP $(cat /run/astrtc-dnsmasq.pid)" } else { "" };
        must(&["sh", "-c", &format!("printf '%s' '{text}' > /etc/astrtc-pool-hosts{hup}")]);
    };
    let addresses: Vec<&str> = members.iter().map(|(_, a)| a.as_str()).collect();
    dns_hosts(&addresses, false);
    let dnsmasq = [
        "dnsmasq",
        "--no-resolv",
        "--no-hosts",
        "--addn-hosts=/etc/astrtc-pool-hosts",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=/run/astrtc-dnsmasq.pid",
    ];
    must(&dnsmasq);
    must(&["sh", "-c", "echo 'nameserver 127.0.0.1' > /etc/resolv.conf"]);
    // The database takes connections before the edge's init container loads the schema into it.
    loop {
        if runner.exec(&["podman", "exec", "db-db", "/usr/local/bin/astrtc-db-healthcheck"]).status.success() {
            break;
        }
        assert!(
            play.elapsed() < Duration::from_secs(60),
            "the database never became healthy:\n{}",
            String::from_utf8_lossy(&runner.exec(&["podman", "logs", "db-db"]).stderr)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let db_ready = play.elapsed();
    let edge_play = runner.exec(&["podman", "kube", "play", "/edge.yaml"]);
    let edge_pod = format!("{}-pod", edge["metadata"]["name"].as_str().unwrap());
    let logs = |container: &str| {
        let out = runner.exec(&["podman", "logs", &format!("{edge_pod}-{container}")]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    assert!(
        edge_play.status.success(),
        "podman kube play of the edge failed: {}\nschema init container:\n{}",
        String::from_utf8_lossy(&edge_play.stderr),
        logs("schema")
    );
    // The init container loaded the rendered users into the database.
    let users = must(&[
        "podman",
        "exec",
        "db-db",
        "psql",
        "-U",
        "postgres",
        "-d",
        "kamailio",
        "-tAc",
        "SELECT count(*) FROM subscriber",
    ]);
    assert_eq!(users.trim(), plan.endpoints.len().to_string(), "users in the database");

    // Both members' addresses, from the Service's name, active in the edge's dispatcher, probed
    // (`AP`: their OPTIONS probes answered; `AX`, a member not yet probed, is not enough).
    let edge_container = format!("{edge_pod}-edge");
    // One RPC to the edge's Kamailio, through its control socket.
    let kamcmd = |args: &[&str]| {
        let mut command = vec!["podman", "exec", &edge_container, "kamcmd", "-s", "unix:/run/kamailio/kamailio_ctl"];
        command.extend_from_slice(args);
        runner.exec(&command)
    };
    let flags = loop {
        let out = kamcmd(&["dispatcher.list"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let flags = astrtc::verify::parse_dispatcher_list(&text);
        let active = |address: &str| flags.iter().any(|(u, f)| *u == uri(address) && f == "AP");
        if members.iter().all(|(_, address)| active(address)) {
            break flags;
        }
        if play.elapsed() > Duration::from_secs(90) {
            // What the runner's resolver (the edge pod's) answers for the Service's name.
            let resolved = runner.exec(&["getent", "ahosts", &service_name]);
            panic!(
                "not every pool member is active in the edge's dispatcher: {flags:?}; {service_name} resolves to:\n{}\n\
                 {text}{}\nedge's log:\n{}\npool container's log:\n{}",
                String::from_utf8_lossy(&resolved.stdout),
                String::from_utf8_lossy(&out.stderr),
                logs("edge"),
                logs("pool")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "podman cluster: database healthy {db_ready:.2?} after play; edge played, {} users loaded by its init \
         container, both members active by the Service's addresses {:.2?} after play: {flags:?}",
        users.trim(),
        play.elapsed()
    );

    // The relay answers the edge: the edge and the relay start together in their pod, and an
    // edge that found the relay not yet listening passes calls on without a relay until it
    // pings it again. `rtpengine.ping` asks the edge to ping it now (and takes it back in when
    // it answers), so the calls below start with a relay that answered the edge.
    let relay_ready = loop {
        let out = kamcmd(&["rtpengine.ping", "all"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("success") {
            break play.elapsed();
        }
        if play.elapsed() > Duration::from_secs(120) {
            panic!(
                "the relay never answered the edge's ping: {text}{}\nrelay's log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                logs("relay")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("podman cluster: the relay answered the edge's ping {relay_ready:.2?} after play");

    // Calls through the edge on the runner's address: SIP over UDP with G.711, then WebRTC.
    let echo = plan.dialplan.echo_extension.clone();
    let password = |id: &str| plan.endpoints.iter().find(|e| e.id == id).unwrap().password.expose().to_string();
    let ca_pem = std::fs::read_to_string(dir.path().join("deploy/keys/ca.crt")).unwrap();
    let webrtc = CallSetup {
        leg: LegSetup::Webrtc {
            wss: std::net::SocketAddr::new(runner_ip, plan.network.wss_port),
            ca_pem: std::sync::Arc::from(ca_pem),
            local_ips: Vec::new(),
            relay: None,
        },
        domain: plan.tls.domain.clone(),
        user: "199".into(),
        password: password("199"),
        extension: echo.clone(),
        hold: Duration::from_secs(2),
        register: false,
        offer: Offer::OpusThenPcmu,
        reencoded: false,
        release: None,
    };
    let sip = CallSetup {
        leg: LegSetup::Sip { server: std::net::SocketAddr::new(runner_ip, plan.network.sip_port) },
        user: "3001".into(),
        password: password("3001"),
        ..webrtc.clone()
    };
    let shared = SharedMedia::new().unwrap();
    for (label, setup) in [("SIP/UDP", &sip), ("WebRTC", &webrtc)] {
        let r = Box::pin(probe::call(setup, &shared)).await;
        let m = r.media.as_ref();
        let echoed = m.map(|m| m.matched).unwrap_or(0);
        eprintln!(
            "podman cluster: {label} echo call through the edge: {} — answered {:?} ms, DTLS {:?} ms, codec {:?}, sent \
             {:?}, echoed {echoed}",
            if r.healthy() { "ok" } else { "FAILED" },
            r.answered_ms.map(|x| x.round()),
            r.dtls_connected_ms.map(|x| x.round()),
            r.codec,
            m.map(|m| m.sent),
        );
        assert!(
            r.healthy() && echoed >= 50,
            "the {label} call: {:?}, {echoed} packets echoed\n{}\nedge's log:\n{}\nrelay's log:\n{}",
            r.failure,
            r.ladder.join("\n"),
            logs("edge"),
            logs("relay")
        );
    }
    // Each member runs its reloader beside Asterisk, and it reaches that Asterisk's CLI (through
    // the shared run directory): a pass of its own (`once`) succeeds in every member (podman names
    // a Pod's containers `<pod>-<name>`). `once` alone would pass without the CLI when it finds no
    // record of what Asterisk loaded (it records one and reloads nothing), hence the CLI asked too.
    let listed = must(&["podman", "ps", "--format", "{{.Names}}"]);
    for (pod_name, _) in &members {
        let reloader = format!("{pod_name}-reloader");
        assert!(
            listed.lines().any(|l| l.trim() == reloader),
            "no reloader container {reloader} runs in the pool member: podman ps lists\n{listed}"
        );
        let cli = runner.exec(&["podman", "exec", &reloader, "/usr/sbin/asterisk", "-rx", "core show uptime"]);
        assert!(
            cli.status.success() && String::from_utf8_lossy(&cli.stdout).contains("System uptime"),
            "{reloader} does not reach its member's Asterisk CLI: {}{}",
            String::from_utf8_lossy(&cli.stdout),
            String::from_utf8_lossy(&cli.stderr)
        );
        let out = runner.exec(&["podman", "exec", &reloader, "/usr/local/bin/astrtc-reload", "once"]);
        assert!(
            out.status.success(),
            "{reloader}: astrtc-reload once failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nothing changed", "{reloader}'s pass");
        let log = reloaded_nothing(&runner, &reloader);
        eprintln!(
            "podman cluster: {reloader}: astrtc-reload once: {}; its log: {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            log.trim().replace('\n', " | ")
        );
    }

    // A new endpoint reaches the running edge with no restart: the users Secret changes under it
    // (as the kubelet updates a mounted Secret after `helm upgrade`; podman keeps a Secret volume
    // as a named volume, written here), the edge pod's `users` container loads it into the
    // database, and the new user registers through the same edge process.
    let users_container = format!("{edge_pod}-users");
    // Replaces `file` in the volume a container mounts at `destination` with `text`, in one step
    // (a rename), as the kubelet switches a Secret's or ConfigMap's files.
    let replace_in_volume = |container: &str, destination: &str, file: &str, text: &str| {
        let mounts = must(&["podman", "inspect", "--format", "{{json .Mounts}}", container]);
        let mounts: serde_json::Value = serde_json::from_str(&mounts).unwrap();
        let source = mounts
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["Destination"] == destination)
            .and_then(|m| m["Source"].as_str())
            .unwrap_or_else(|| panic!("{container} has no {destination} mount: {mounts}"))
            .to_string();
        let local = dir.path().join(format!("replaced-{file}"));
        std::fs::write(&local, text).unwrap();
        let (ok, out) = run(Command::new("docker").arg("cp").arg(&local).arg(format!("{name}:/replaced-{file}")));
        assert!(ok, "{out}");
        must(&[
            "sh",
            "-c",
            &format!("cat '/replaced-{file}' > '{source}/{file}.new' && mv '{source}/{file}.new' '{source}/{file}'"),
        ]);
    };
    let loaded_lines = || logs("users").lines().filter(|l| l.starts_with("astrtc-users: loaded ")).count();
    assert_eq!(loaded_lines(), 1, "the users container did not load the users once at start:\n{}", logs("users"));
    let edge_started = must(&["podman", "inspect", "--format", "{{.State.StartedAt}}", &format!("{edge_pod}-edge")]);
    let spec = dir.path().join("astrtc.toml");
    let added =
        edited_render("cluster-compose", &spec, &|t| t + "\n[[endpoints]]\nid = \"4001\"\nkind = \"sip\"\n", &|t| {
            t.replace("[endpoints]", "[endpoints]\n4001 = \"fixture-sip-4001-password\"")
        });
    let new_users = added.path().join("deploy/helm/astrtc/files/db-secret/subscribers.sql");
    let new_users = std::fs::read_to_string(&new_users).unwrap();
    assert!(new_users.contains("('4001', "), "the new render lacks 4001");
    replace_in_volume(&users_container, "/etc/astrtc-users", "subscribers.sql", &new_users);
    let changed = Instant::now();
    while loaded_lines() < 2 {
        assert!(
            changed.elapsed() < Duration::from_secs(60),
            "the users container did not load the changed users within 60 s:\n{}",
            logs("users")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let loaded_after = changed.elapsed();
    let phone = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    phone.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let contact = format!("sip:4001@{runner_ip}:{}", phone.local_addr().unwrap().port());
    let edge_sip = std::net::SocketAddr::new(runner_ip, plan.network.sip_port);
    let answer = crate::cluster::register_from(&phone, edge_sip, "4001", "fixture-sip-4001-password", &contact);
    assert!(
        answer.starts_with("SIP/2.0 200"),
        "the new endpoint's REGISTER through the running edge: {}\nusers container:\n{}",
        answer.lines().next().unwrap_or_default(),
        logs("users")
    );
    assert_eq!(
        must(&["podman", "inspect", "--format", "{{.State.StartedAt}}", &format!("{edge_pod}-edge")]),
        edge_started,
        "the edge restarted"
    );
    eprintln!(
        "podman cluster: a new endpoint loaded by the users container {loaded_after:.2?} after its Secret changed; \
         it registered through the running edge ({})",
        logs("users").lines().filter(|l| l.starts_with("astrtc-users:")).collect::<Vec<_>>().join(" | ")
    );

    // The pool scaled up under a running edge, as `kubectl scale` or an autoscaler would: the
    // Service's name resolves to one address more (its endpoints publish a pod as soon as it has
    // an address, before its Asterisk answers), then the member's pod starts. The `pool` container
    // writes the address into the edge's list and has the dispatcher reload it; the member is
    // probed active once its Asterisk answers, and a call lands on it. No render, no upgrade.
    let pool_lines = || -> Vec<String> {
        logs("pool").lines().filter(|l| l.starts_with("astrtc-pool:")).map(str::to_string).collect()
    };
    // Waits for one `want` line more than the log held before the step (`before`, its count then):
    // an older line must not stand in for the one the step should make.
    let count_of = |want: &str| pool_lines().iter().filter(|l| *l == want).count();
    let wait_for_pool_line = |want: &str, before: usize, what: &str| {
        let since = Instant::now();
        while count_of(want) <= before {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "the pool container did not {what} within 60 s (want `{want}`):\n{}",
                logs("pool")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let reload_line = |addresses: &[&str]| {
        let mut uris: Vec<String> = addresses.iter().map(|a| uri(a)).collect();
        uris.sort();
        format!("astrtc-pool: dispatcher.reload: {} members: {}", uris.len(), uris.join(" "))
    };
    let held = || {
        let out = kamcmd(&["dispatcher.list"]);
        astrtc::verify::parse_dispatcher_list(&String::from_utf8_lossy(&out.stdout))
    };
    let mut grown: Vec<&str> = addresses.clone();
    grown.push(&grown_address);
    let before = count_of(&reload_line(&grown));
    dns_hosts(&grown, true);
    let scaled_at = Instant::now();
    wait_for_pool_line(&reload_line(&grown), before, "have the dispatcher reload the scaled-up pool");
    let reload_after = scaled_at.elapsed();
    // A reload sets each member's state from the list: the new member, not yet answering, comes
    // in inactive and probing (`IP`), so no call goes to it before its Asterisk answers a probe;
    // the members already active stay active (`AP`, or `AX` until their next probe).
    let reloaded = held();
    let state = |address: &str| reloaded.iter().find(|(u, _)| *u == uri(address)).map(|(_, f)| f.clone());
    assert_eq!(
        state(&grown_address).as_deref(),
        Some("IP"),
        "the new member's state before its pod runs: {reloaded:?}"
    );
    for address in &addresses {
        assert!(
            state(address).is_some_and(|f| f.starts_with('A')),
            "a member active before the reload is not active after it: {reloaded:?}"
        );
    }
    must(&["podman", "kube", "play", "--network", "pool", "--ip", &grown_address, &format!("/{grown_pod}.yaml")]);
    let played_at = Instant::now();
    let flags = loop {
        let flags = held();
        if flags.iter().any(|(u, f)| *u == uri(&grown_address) && f == "AP") {
            break flags;
        }
        assert!(
            played_at.elapsed() < Duration::from_secs(90),
            "the new member is not active in the edge's dispatcher: {flags:?}\npool container:\n{}",
            logs("pool")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let active_after = played_at.elapsed();
    // Round robin over three active members: three calls, one of them on the new member.
    for i in 0..3 {
        let r = Box::pin(probe::call(&sip, &shared)).await;
        assert!(r.healthy(), "call {i} after the pool grew: {:?}\n{}", r.failure, r.ladder.join("\n"));
    }
    // Calls the new member's Asterisk has processed, and what it said.
    let processed_on_grown = || -> (u32, String) {
        let calls =
            must(&["podman", "exec", &format!("{grown_pod}-asterisk"), "/usr/sbin/asterisk", "-rx", "core show calls"]);
        let n = calls
            .lines()
            .find_map(|l| {
                l.trim().strip_suffix(" calls processed").or_else(|| l.trim().strip_suffix(" call processed"))
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        (n, calls)
    };
    let (processed, calls) = processed_on_grown();
    assert!(processed >= 1, "no call of three landed on the new member: {calls}; the edge's dispatcher: {flags:?}");
    assert_eq!(
        must(&["podman", "inspect", "--format", "{{.State.StartedAt}}", &format!("{edge_pod}-edge")]),
        edge_started,
        "the edge restarted"
    );
    eprintln!(
        "podman cluster: the pool scaled to 3 under the running edge: the list reloaded {reload_after:.2?} after the \
         Service's name resolved to the new address, the member active {active_after:.2?} after its pod was played; \
         {processed} of 3 calls on it ({})",
        pool_lines().join(" | ")
    );

    // A failed lookup of the Service's name (cluster DNS down) leaves the list as it is: the
    // resolver stopped, the `pool` container says so, and the dispatcher still holds the three
    // members, a call goes through; then the resolver is back.
    let lost = format!("astrtc-pool: {service_name}. does not resolve; the list stays as it is");
    let before = count_of(&lost);
    must(&["sh", "-c", "kill $(cat /run/astrtc-dnsmasq.pid)"]);
    wait_for_pool_line(&lost, before, "notice the failed lookup");
    let after_failure = held();
    assert_eq!(after_failure.len(), 3, "a failed lookup changed the edge's dispatcher: {after_failure:?}");
    let r = Box::pin(probe::call(&sip, &shared)).await;
    assert!(r.healthy(), "a call while the Service's name did not resolve: {:?}\n{}", r.failure, r.ladder.join("\n"));
    // Again after the call (seconds later: the pass that logged the failed lookup is over).
    let after_failure = held();
    assert_eq!(after_failure.len(), 3, "a failed lookup changed the edge's dispatcher: {after_failure:?}");
    must(&dnsmasq);
    eprintln!(
        "podman cluster: the Service's name unresolvable: the list stayed ({after_failure:?}), a call went through"
    );

    // And scaled back down (the member's pod deleted, gone from the Service's name): the reload
    // drops the member from the dispatcher, and new calls go to the others only (on Kubernetes
    // its pod drains meanwhile; here it keeps running, so a call sent to it would be counted).
    // (The call above may have landed on the third member: counted from here.)
    let (processed, _) = processed_on_grown();
    let before = count_of(&reload_line(&addresses));
    dns_hosts(&addresses, true);
    let shrunk_at = Instant::now();
    wait_for_pool_line(&reload_line(&addresses), before, "have the dispatcher reload the scaled-down pool");
    let shrink_reload = shrunk_at.elapsed();
    let after_shrink = held();
    assert!(
        after_shrink.len() == 2 && !after_shrink.iter().any(|(u, _)| *u == uri(&grown_address)),
        "the edge's dispatcher after the pool shrank: {after_shrink:?}"
    );
    for i in 0..3 {
        let r = Box::pin(probe::call(&sip, &shared)).await;
        assert!(r.healthy(), "call {i} after the pool shrank: {:?}\n{}", r.failure, r.ladder.join("\n"));
    }
    let (after, calls) = processed_on_grown();
    assert_eq!(after, processed, "a call landed on the member removed from the Service: {calls}");
    assert_eq!(
        must(&["podman", "inspect", "--format", "{{.State.StartedAt}}", &format!("{edge_pod}-edge")]),
        edge_started,
        "the edge restarted"
    );
    eprintln!(
        "podman cluster: the pool scaled back to 2: reloaded {shrink_reload:.2?} after the Service's name lost the \
         address; 3 calls, none on the member removed"
    );
    eprintln!("podman cluster: whole run {:.2?}", started.elapsed());
}

/// The cluster's chart with the values it needs (`CLUSTER_SETS`) and `extra`: the manifests.
fn cluster_manifests(t: &Tools, chart: &Path, extra: &[&str]) -> (bool, String) {
    let sets: Vec<&str> = CLUSTER_SETS.iter().copied().chain(extra.iter().copied()).collect();
    template(t, chart, &sets)
}

/// The document of a kind and a name ending, from parsed manifests.
fn doc<'a>(docs: &'a [serde_yaml_ng::Value], kind: &str, suffix: &str) -> &'a serde_yaml_ng::Value {
    docs.iter()
        .find(|d| {
            d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with(suffix))
        })
        .unwrap_or_else(|| panic!("no {kind} named *{suffix}"))
}

#[test]
fn the_cluster_chart_lints_validates_and_passes_checkov() {
    let Some(t) = tools() else { return };
    let (dir, chart) = rendered("cluster-compose");
    // Without the three values that have no default, the schema says which are missing.
    let (ok, out) = template(&t, &chart, &[]);
    assert!(!ok, "the cluster chart templated without a database:\n{out}");
    for key in ["/database/host", "/database/existingSecret", "/edge/sourceCidrs"] {
        assert!(out.contains(key), "the error does not name {key}:\n{out}");
    }
    let modes: [(&str, Vec<&str>); 4] = [
        ("default", vec![]),
        ("autoscaling", vec!["pool.autoscaling.enabled=true"]),
        ("existing-secret", vec!["certificates.mode=existingSecret", "certificates.existingSecret=pbx-tls"]),
        (
            "two-cidrs",
            vec!["edge.sourceCidrs={10.0.0.0/24,fd00::/64}", "database.port=6432", "database.sslMode=require"],
        ),
    ];
    let checkov = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/checkov/bin/checkov");
    for (mode, extra) in modes {
        let sets: Vec<&str> = CLUSTER_SETS.iter().copied().chain(extra.iter().copied()).collect();
        let file = dir.path().join(format!("cluster-{mode}.yaml"));
        let (manifests, out) = lint_and_validate(&t, &chart, &file, &format!("cluster/{mode}"), &sets);
        for kind in ["StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"] {
            assert!(out.contains(&format!("ok   {kind}/")), "cluster/{mode}: no {kind} validated:\n{out}");
        }
        let hpa = out.contains("ok   HorizontalPodAutoscaler/");
        assert_eq!(hpa, mode == "autoscaling", "cluster/{mode}: a HorizontalPodAutoscaler validated: {hpa}\n{out}");
        let (skipped, problems) = annotation_skips(&manifests);
        assert!(problems.is_empty(), "cluster/{mode}:\n{}", problems.join("\n"));
        assert!(skipped.is_empty(), "cluster/{mode}: checks skipped in the manifests: {skipped:?}");
        if tool_missing(&checkov, "make deps-helm") {
            continue;
        }
        checkov_clean(&checkov, &file, &format!("cluster/{mode}"));
        eprintln!("cluster/{mode}: helm 3 and 4 lint, kube-validate 1.29 and 1.37, checkov: clean");
    }
}

#[test]
fn the_cluster_chart_places_edge_relay_and_pool_as_the_issue_asks() {
    let Some(t) = tools() else { return };
    let (dir, chart) = rendered("cluster-compose");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let cluster = plan.cluster.as_ref().unwrap();
    let (ok, manifests) = cluster_manifests(&t, &chart, &[]);
    assert!(ok, "{manifests}");
    let docs = parsed(&manifests);

    // Edge and relay: one pod on the host network of the labelled node.
    let edge = doc(&docs, "Deployment", "-edge");
    let pod = &edge["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true), "the edge is not on the host network");
    assert_eq!(pod["dnsPolicy"].as_str(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod["nodeSelector"]["astrtc.io/edge"].as_str(),
        Some("true"),
        "the edge's nodeSelector: {:?}",
        pod["nodeSelector"]
    );
    let names: Vec<&str> = pod["containers"].as_sequence().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["users", "pool", "relay", "edge"]);
    assert_eq!(edge["spec"]["replicas"].as_i64(), Some(1));
    assert_eq!(edge["spec"]["strategy"]["type"].as_str(), Some("Recreate"));

    // The pool: replicas from the spec, under a headless Service, with a PodDisruptionBudget.
    let pool = doc(&docs, "StatefulSet", "-pool");
    assert_eq!(pool["spec"]["replicas"].as_u64(), Some(u64::from(cluster.pool_size)), "pool replicas");
    let service = doc(&docs, "Service", "-pool");
    assert_eq!(pool["spec"]["serviceName"].as_str(), service["metadata"]["name"].as_str());
    assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"), "the pool's Service is not headless");
    assert_eq!(service["spec"]["publishNotReadyAddresses"].as_bool(), Some(true));
    let labels = &pool["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &serde_yaml_ng::Value| {
        let map = selector.as_mapping().unwrap();
        !map.is_empty() && map.iter().all(|(k, v)| &labels[k.as_str().unwrap()] == v)
    };
    assert!(selects(&service["spec"]["selector"]), "the headless Service does not select the pool");
    let pdb = doc(&docs, "PodDisruptionBudget", "-pool");
    assert_eq!(pdb["spec"]["maxUnavailable"].as_i64(), Some(1));
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"]), "the PodDisruptionBudget does not select the pool");
    assert!(!selects(&edge["spec"]["selector"]["matchLabels"]), "the edge's selector takes pool pods");

    // The edge's dispatcher list is no fixed file: the edge pod's `pool` container writes it from
    // that Service's name (every member's address), into a volume the edge mounts read-only, and
    // the edge's entrypoint hands its path to Kamailio.
    let edge_config = doc(&docs, "ConfigMap", "-edge-config");
    assert!(
        edge_config["data"]["dispatcher.list"].is_null(),
        "a fixed dispatcher list is back in the edge's ConfigMap"
    );
    let container =
        |name: &str| pod["containers"].as_sequence().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    let env = |c: &serde_yaml_ng::Value, key: &str| -> Option<String> {
        c["env"].as_sequence()?.iter().find(|e| e["name"] == key)?["value"].as_str().map(str::to_string)
    };
    let (pool_container, edge_container) = (container("pool"), container("edge"));
    assert_eq!(
        env(&pool_container, "POOL_SERVICE").as_deref(),
        Some(format!("{}.default.svc.cluster.local.", service["metadata"]["name"].as_str().unwrap()).as_str()),
        "the pool container does not follow the pool's headless Service (by its absolute name)"
    );
    assert_eq!(
        env(&pool_container, "POOL_SIP_PORT"),
        Some(plan.network.sip_port.to_string()),
        "the pool container's SIP port"
    );
    let list_file = "/run/astrtc-pool/dispatcher.list";
    assert_eq!(
        env(&edge_container, "ASTRTC_EDGE_DISPATCHER_LIST").as_deref(),
        Some(list_file),
        "the edge does not load the list the pool container writes"
    );
    let mount = |c: &serde_yaml_ng::Value| {
        c["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["mountPath"] == "/run/astrtc-pool").cloned()
    };
    let (written, read) = (mount(&pool_container).unwrap(), mount(&edge_container).unwrap());
    assert_eq!(written["name"], read["name"], "the edge does not mount the volume the pool container writes");
    assert_eq!(written["readOnly"].as_bool(), None, "the pool container cannot write the list");
    assert_eq!(read["readOnly"].as_bool(), Some(true), "the edge may write the pool's list");
    let pool_config = doc(&docs, "ConfigMap", "-pool-config");
    assert_eq!(
        pool_config["data"]["pjsip_edge.conf"]
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with(';'))
            .collect::<Vec<_>>(),
        ["match = 10.0.0.5/32"],
        "the pool's idea of the edge"
    );

    // Secrets: the database password comes from the existing Secret as a file, and is in no
    // chart file, no manifest, no environment; passwords and HA1 digests are in no ConfigMap.
    let volumes = pod["volumes"].as_sequence().unwrap();
    let db_volume = volumes.iter().find(|v| v["name"].as_str() == Some("database")).unwrap();
    assert_eq!(db_volume["secret"]["secretName"].as_str(), Some("pg-edge"));
    assert_eq!(db_volume["secret"]["items"][0]["key"].as_str(), Some("password"));
    for c in pod["containers"].as_sequence().unwrap().iter().chain(pod["initContainers"].as_sequence().unwrap()) {
        for e in c["env"].as_sequence().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            assert!(!name.contains("PASS") && e.get("valueFrom").is_none(), "{name}: a secret in the environment");
        }
    }
    let mut secrets: Vec<String> = plan.endpoints.iter().map(|e| e.password.expose().to_string()).collect();
    secrets.extend(
        plan.endpoints.iter().map(|e| astrtc::render::cluster::ha1(&e.id, &plan.tls.domain, e.password.expose())),
    );
    // The pool's key for the edge: in two Secrets (the edge's, mounted into the edge container,
    // and the pool's auth Secret), in no ConfigMap.
    secrets.push(cluster.edge_key.expose().to_string());
    // (The pool's Secret holds the key's SHA-1, which the members compare the header's with.)
    let sha1 = astrtc::render::cluster::edge_key_sha1(cluster.edge_key.expose());
    secrets.push(sha1.clone());
    let holds = |key: &str, value: &str| {
        docs.iter().filter(|d| d["kind"].as_str() == Some("Secret")).filter_map(|d| d["data"][key].as_str()).any(
            |b64| {
                use base64::Engine;
                let text = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
                String::from_utf8_lossy(&text).contains(value)
            },
        )
    };
    assert!(
        holds("edge_key.cfg", cluster.edge_key.expose()) && holds("extensions_edge.conf", &sha1),
        "the edge's key is not in the edge's Secret, or its SHA-1 not in the pool's"
    );
    let key_volume = volumes.iter().find(|v| v["name"].as_str() == Some("edge-key")).expect("no edge-key volume");
    assert!(key_volume["secret"]["secretName"].as_str().is_some_and(|n| n.ends_with("-edge-key")), "{key_volume:?}");
    for walk in walkdir(&chart) {
        let text = std::fs::read_to_string(&walk).unwrap_or_default();
        assert!(!text.contains(cluster.database_password.expose()), "{} holds the database password", walk.display());
    }
    assert!(!manifests.contains(cluster.database_password.expose()), "the manifests hold the database password");
    let values = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    for d in docs.iter().filter(|d| d["kind"].as_str() == Some("ConfigMap")) {
        let text = serde_yaml_ng::to_string(&d["data"]).unwrap();
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "ConfigMap {:?} holds a password or digest", d["metadata"]["name"]);
            assert!(!values.contains(s.as_str()), "values.yaml holds a password or digest");
        }
    }
    eprintln!(
        "cluster chart: edge + relay on the host network of astrtc.io/edge=true nodes, pool StatefulSet of {} \
         behind a headless Service the edge's pool container follows, PDB maxUnavailable 1, {} secrets in no \
         ConfigMap",
        cluster.pool_size,
        secrets.len()
    );
}

/// The edge pod's `users` container loads the users Secret as its init container does (the same
/// image, SQL file, database settings, mounts and security context), in a loop that loads it
/// again when it changes; the users Secret is outside the edge's `checksum/config` (its own
/// template), so the edge does not roll for it. Its `pool` container has the dispatcher reload the
/// pool's list when it changes. The podman run changes the Secret under a running edge and
/// registers the new user, then grows the pool by a member that takes a call.
#[test]
fn the_edges_users_container_loads_the_users_as_the_init_container_does() {
    let Some(t) = tools() else { return };
    let (_dir, chart) = rendered("cluster-compose");
    let (ok, manifests) = cluster_manifests(&t, &chart, &[]);
    assert!(ok, "{manifests}");
    let docs = parsed(&manifests);
    let spec = &doc(&docs, "Deployment", "-edge")["spec"]["template"]["spec"];
    let init = spec["initContainers"].as_sequence().unwrap().iter().find(|c| c["name"] == "schema").unwrap();
    let containers = spec["containers"].as_sequence().unwrap();
    let names: Vec<&str> = containers.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["users", "pool", "relay", "edge"], "the edge pod's containers");
    let users = &containers[0];
    assert_eq!(users["image"], init["image"], "the users container runs the database image");
    assert_eq!(users["env"], init["env"], "the users container's database settings");
    assert_eq!(users["securityContext"], init["securityContext"], "the users container's security context");
    let mounts = |c: &serde_yaml_ng::Value| -> Vec<(String, String)> {
        c["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter(|m| m["subPath"].is_null())
            .map(|m| (m["name"].as_str().unwrap().to_string(), m["mountPath"].as_str().unwrap().to_string()))
            .collect()
    };
    let (init_mounts, users_mounts) = (mounts(init), mounts(users));
    for name in ["users", "database"] {
        let want = init_mounts.iter().find(|(n, _)| n == name).unwrap();
        assert!(users_mounts.contains(want), "the users container does not mount {want:?} whole: {users_mounts:?}");
    }
    // The users container's script holds each of `lines`; it has probes and a memory limit.
    let watcher = |c: &serde_yaml_ng::Value, what: &str, lines: &[&str]| {
        let script = c["command"][2].as_str().unwrap_or_default();
        for line in lines {
            assert!(
                script.lines().any(|l| l.trim() == *line),
                "the {what} container's script lacks `{line}`:\n{script}"
            );
        }
        for probe in ["readinessProbe", "livenessProbe"] {
            assert!(c[probe]["exec"]["command"].is_sequence(), "the {what} container has no {probe}");
        }
        assert!(c["resources"]["limits"]["memory"].is_string(), "the {what} container has no memory limit");
    };
    watcher(
        users,
        "users",
        &[
            "file=/etc/astrtc-users/subscribers.sql",
            "if out=\"$(psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --single-transaction --file=\"$file\" 2>&1)\"; then",
            "PGPASSWORD=\"$(cat /etc/astrtc-db-secret/password)\"",
        ],
    );
    // The `pool` container: Kamailio's image, user and security context, the list's volume the
    // edge loads and the edge's run directory (the control socket), and a dispatcher reload.
    let pool = &containers[1];
    let edge = &containers[3];
    assert_eq!(pool["image"], edge["image"], "the pool container runs the edge image (kamcmd)");
    assert_eq!(pool["securityContext"], edge["securityContext"], "the pool container's security context");
    let run_mount = pool["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["mountPath"] == "/run/kamailio");
    assert_eq!(
        run_mount.and_then(|m| m["readOnly"].as_bool()),
        Some(true),
        "the pool container may write the edge's run directory (the database URL)"
    );
    let edge_mounts = mounts(edge);
    for path in ["/run/astrtc-pool", "/run/kamailio"] {
        let want = edge_mounts.iter().find(|(_, p)| p == path).unwrap();
        assert!(mounts(pool).contains(want), "the pool container does not mount {want:?} whole: {:?}", mounts(pool));
    }
    // Its script is the edge image's pool watcher (astrtc-pool-watch, which compose runs too),
    // given the headless Service's absolute name and the SIP port; it has probes and a memory limit.
    assert_eq!(
        pool["command"],
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[/usr/local/bin/astrtc-pool-watch]").unwrap()
    );
    let env: Vec<(String, String)> = pool["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert!(env.iter().any(|(n, v)| n == "POOL_SERVICE" && v.ends_with(".svc.cluster.local.")), "{env:?}");
    assert!(env.iter().any(|(n, _)| n == "POOL_SIP_PORT"), "{env:?}");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert!(pool[probe]["exec"]["command"].is_sequence(), "the pool container has no {probe}");
    }
    assert!(pool["resources"]["limits"]["memory"].is_string(), "the pool container has no memory limit");
    // The users Secret is its own template, outside what the edge's checksum covers.
    let configmap = std::fs::read_to_string(chart.join("templates/edge-configmap.yaml")).unwrap();
    assert!(!configmap.contains("subscribers.sql"), "the users are back in the edge's checksummed template");
    assert!(doc(&docs, "Secret", "-users")["data"]["subscribers.sql"].is_string());
}

/// The pool reloads in place, as the single chart's pod does: a `reloader` container beside each
/// member's Asterisk (the same image, security context and directory mounts of the configs, the
/// passwords, the certificate and the run directory), and `checksum/restart` — the restart digest
/// of the pool's configs, the chart's `files/restart-digest` — the only checksum on the pod. So a
/// new endpoint with its password, a dialplan change and a rotation of the edge's key (its SHA-1
/// is in the pool's auth Secret, `extensions_edge.conf`) keep the digest and roll no member, while
/// an RTP range change moves it (the members roll, each draining). The edge rolls on the key's
/// rotation (its `checksum/config` covers the edge-key Secret: Kamailio reads the key once), not
/// on a new endpoint (its `users` container loads the users Secret).
#[test]
fn the_cluster_pool_reloads_in_place_and_rolls_only_for_its_restart_digest() {
    let Some(t) = tools() else { return };
    let (dir, chart) = rendered("cluster-compose");
    let (ok, manifests) = cluster_manifests(&t, &chart, &[]);
    assert!(ok, "{manifests}");
    let docs = parsed(&manifests);
    let pool = doc(&docs, "StatefulSet", "-pool");
    let pod = &pool["spec"]["template"];
    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    let names: Vec<&str> = containers.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["asterisk", "reloader"], "the pool pod's containers");
    both_record_the_mounted_passwords(containers, "cluster pool");
    let (asterisk, reloader) = (&containers[0], &containers[1]);
    let strings = |v: &serde_yaml_ng::Value| -> Vec<String> {
        v.as_sequence().into_iter().flatten().map(|s| s.as_str().unwrap_or("").to_string()).collect()
    };
    assert_eq!(strings(&reloader["command"]), ["/usr/local/bin/astrtc-reload", "watch"], "the reloader's command");
    let env: Vec<(&str, &str)> = reloader["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|e| (e["name"].as_str().unwrap_or(""), e["value"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        env,
        [("ASTRTC_RELOAD_INTERVAL", "5"), ("ASTRTC_SECRETS_DIR", "/etc/asterisk-secrets")],
        "the reloader's environment"
    );
    assert_eq!(reloader["image"], asterisk["image"], "the reloader runs the pool's Asterisk image");
    assert_eq!(reloader["imagePullPolicy"], asterisk["imagePullPolicy"]);
    assert_eq!(reloader["securityContext"], asterisk["securityContext"], "the reloader's security context");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert!(reloader[probe]["exec"]["command"].is_sequence(), "the reloader has no {probe}");
    }
    assert!(reloader["resources"]["limits"]["memory"].is_string(), "the reloader has no memory limit");

    // The reloader sees what Asterisk loaded, through the same volumes, each a directory mount
    // (a subPath mount never sees an update), and Asterisk's run directory for the CLI socket.
    let mounts = |c: &serde_yaml_ng::Value| -> Vec<(String, String, Option<String>)> {
        c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["mountPath"].as_str().unwrap().to_string(),
                    m["subPath"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    let (asterisk_mounts, reloader_mounts) = (mounts(asterisk), mounts(reloader));
    for (volume, path) in [
        ("config", "/etc/asterisk"),
        ("auth", "/etc/asterisk-secrets"),
        ("keys", "/etc/asterisk-keys"),
        ("run", "/run/asterisk"),
    ] {
        let want = (volume.to_string(), path.to_string(), None);
        assert!(
            asterisk_mounts.contains(&want),
            "Asterisk does not mount {volume} at {path} whole: {asterisk_mounts:?}"
        );
        assert!(
            reloader_mounts.contains(&want),
            "the reloader does not mount {volume} at {path} whole: {reloader_mounts:?}"
        );
    }
    for (container, list) in [("asterisk", &asterisk_mounts), ("reloader", &reloader_mounts)] {
        assert!(
            list.iter().all(|(_, _, sub)| sub.is_none()),
            "{container}: a subPath mount never sees updates: {list:?}"
        );
    }
    let volumes = pod["spec"]["volumes"].as_sequence().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"].as_str() == Some(name)).unwrap();
    let pool_name = pool["metadata"]["name"].as_str().unwrap();
    assert_eq!(volume("config")["configMap"]["name"].as_str(), Some(format!("{pool_name}-config").as_str()));
    assert_eq!(volume("auth")["secret"]["secretName"].as_str(), Some(format!("{pool_name}-auth").as_str()));

    // The restart digest is the pod's one checksum: a changed config or Secret alone rolls nothing.
    let digest = std::fs::read_to_string(chart.join("files/restart-digest")).unwrap();
    let annotations = pod["metadata"]["annotations"].as_mapping().cloned().unwrap_or_default();
    let checksums: Vec<&str> =
        annotations.keys().filter_map(|k| k.as_str()).filter(|k| k.starts_with("checksum/")).collect();
    assert_eq!(checksums, ["checksum/restart"], "the pool pod's checksums (checksum/config or checksum/auth roll it)");
    assert_eq!(
        annotations.get("checksum/restart").and_then(|v| v.as_str()),
        Some(digest.trim()),
        "checksum/restart is not the chart's restart digest"
    );

    // Re-rendered with edits to the spec and the secrets file: the pool's digest (file and
    // annotation), the edge's checksum and the pool's auth Secret's copy of the key's SHA-1.
    let spec = dir.path().join("astrtc.toml");
    let render = |edit: &dyn Fn(String) -> String, secrets: &dyn Fn(String) -> String| -> Outcome {
        let d = edited_render("cluster-compose", &spec, edit, secrets);
        let chart = d.path().join("deploy/helm/astrtc");
        let (ok, manifests) = cluster_manifests(&t, &chart, &[]);
        assert!(ok, "{manifests}");
        let docs = parsed(&manifests);
        let annotation = |kind: &str, name: &str, key: &str| {
            doc(&docs, kind, name)["spec"]["template"]["metadata"]["annotations"][key]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        let auth =
            doc(&docs, "Secret", "-pool-auth")["data"]["extensions_edge.conf"].as_str().unwrap_or("").to_string();
        let users = doc(&docs, "Secret", "-users")["data"]["subscribers.sql"].as_str().unwrap_or("").to_string();
        Outcome {
            digest: std::fs::read_to_string(chart.join("files/restart-digest")).unwrap(),
            pool: annotation("StatefulSet", "-pool", "checksum/restart"),
            // The whole pod template: any change of it rolls the edge, not only the checksum's.
            edge: serde_yaml_ng::to_string(&doc(&docs, "Deployment", "-edge")["spec"]["template"]).unwrap(),
            config: serde_yaml_ng::to_string(&doc(&docs, "ConfigMap", "-pool-config")["data"]).unwrap(),
            auth,
            users,
            replicas: doc(&docs, "StatefulSet", "-pool")["spec"]["replicas"].as_u64().unwrap_or(0),
        }
    };
    #[derive(Debug, PartialEq)]
    struct Outcome {
        /// The chart's `files/restart-digest`.
        digest: String,
        /// The pool pod's `checksum/restart`.
        pool: String,
        /// The edge's pod template (its `checksum/config` among the rest).
        edge: String,
        /// The pool's ConfigMap's files.
        config: String,
        /// The pool's auth Secret's `extensions_edge.conf` (base64).
        auth: String,
        /// The users Secret's `subscribers.sql` (base64), which the edge pod's `users` container loads.
        users: String,
        /// The pool's StatefulSet's replicas, whose pods the edge pod's `pool` container follows.
        replicas: u64,
    }
    let same = |t: String| t;
    let base = render(&same, &same);
    assert_eq!(base.digest, digest, "the restart digest is not the same render after render");
    assert_eq!(base.pool, digest.trim());
    assert_eq!(render(&same, &same), base, "a render of the same spec differs");

    // (a) A new endpoint and its password: the pool holds no user (the edge authenticates them),
    // so nothing of the pool's moves; nor does the edge (its `users` container loads the users
    // Secret into the database when it changes; a roll would drop every call through the edge).
    let added = render(&|t| t + "\n[[endpoints]]\nid = \"4001\"\nkind = \"sip\"\n", &|t| {
        t.replace("[endpoints]", "[endpoints]\n4001 = \"fixture-sip-4001-password\"")
    });
    assert_eq!(
        (&added.digest, &added.pool),
        (&base.digest, &base.pool),
        "adding an endpoint and its password must not roll the pool"
    );
    assert_eq!(added.edge, base.edge, "a new endpoint must not roll the edge (its calls would drop)");
    assert_ne!(added.users, base.users, "the new endpoint did not reach the users Secret");
    // A dialplan change: in the pool's ConfigMap (extensions.conf), reloaded (`dialplan reload`).
    let dialplan = render(&|t| t + "\n[dialplan]\necho_extension = \"601\"\n", &same);
    assert_ne!(dialplan.config, base.config, "the dialplan change did not reach the pool's ConfigMap");
    assert_eq!(
        (&dialplan.digest, &dialplan.pool),
        (&base.digest, &base.pool),
        "a dialplan change must not roll the pool (the reloader's `dialplan reload` takes it)"
    );
    // (b) The edge's key rotated (`astrtc secrets --rotate edge-key`: the old key kept as
    // edge_key_previous, a new one): the pool's Secret changes, its digest does not.
    let old_key = "fixtureClusterEdgeKey0123456789abcdef";
    let new_key = "RotatedEdgeKey0123456789abcdefgh";
    assert_eq!(new_key.len(), 32);
    let rotated = render(&same, &|t| {
        assert!(t.contains(old_key), "the fixture's edge_key is not {old_key}");
        t.replace(
            &format!("edge_key = \"{old_key}\""),
            &format!("edge_key = \"{new_key}\"\nedge_key_previous = \"{old_key}\""),
        )
    });
    assert_ne!(rotated.auth, base.auth, "the rotation did not reach the pool's auth Secret (extensions_edge.conf)");
    assert_eq!(
        (&rotated.digest, &rotated.pool),
        (&base.digest, &base.pool),
        "rotating the edge's key must not roll the pool (the reloader's `dialplan reload` takes the new SHA-1)"
    );
    assert_ne!(rotated.edge, base.edge, "rotating the edge's key must roll the edge (Kamailio reads it once)");
    // A third pool member: the StatefulSet grows, and the edge does not roll (its `pool`
    // container follows the pool's pods); no member rolls.
    let grown = render(&|t| t.replacen("pool_size = 2", "pool_size = 3", 1), &same);
    assert_eq!((base.replicas, grown.replicas), (2, 3), "the StatefulSet's replicas");
    assert_eq!(grown.edge, base.edge, "a new pool member must not roll the edge (its calls would drop)");
    assert_eq!((&grown.digest, &grown.pool), (&base.digest, &base.pool), "a new pool member rolled the pool");
    // (c) The RTP range: only a restart applies it.
    let range = render(&|t| t.replacen("end = 40999", "end = 40899", 1), &same);
    assert_ne!(range.digest, base.digest, "an RTP range change must roll the pool");
    assert_eq!(range.pool, range.digest.trim(), "the annotation does not follow the digest");
    eprintln!(
        "cluster pool: asterisk + reloader, checksum/restart {} kept by a new endpoint (which rolls no edge either), \
         a dialplan change and an edge-key rotation (which rolls the edge), moved by the RTP range",
        base.pool
    );
}

/// Every file below a directory.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `pool.autoscaling`: off by default (no HorizontalPodAutoscaler; the StatefulSet's replicas are
/// the spec's pool_size); on, an autoscaling/v2 HPA on the pool's CPU targets the pool's
/// StatefulSet by name with the values' bounds and scales down one member a minute at most, and
/// the StatefulSet's replicas are the live object's (`lookup`, which `helm template` has not, so
/// pool_size here: what an upgrade against a cluster keeps is not tested); bounds that cross are
/// refused with both named, and so is an autoscaler on CPU with no CPU request.
#[test]
fn the_cluster_pool_autoscaler_targets_the_pools_statefulset() {
    let Some(t) = tools() else { return };
    let (_dir, chart) = rendered("cluster-compose");
    let (ok, out) = cluster_manifests(&t, &chart, &[]);
    assert!(ok, "{out}");
    let docs = parsed(&out);
    assert!(!docs.iter().any(|d| d["kind"] == "HorizontalPodAutoscaler"), "an autoscaler by default");
    assert_eq!(doc(&docs, "StatefulSet", "-pool")["spec"]["replicas"].as_u64(), Some(2));
    let sets = [
        "pool.autoscaling.enabled=true",
        "pool.autoscaling.minReplicas=2",
        "pool.autoscaling.maxReplicas=6",
        "pool.autoscaling.targetCPUUtilizationPercentage=60",
    ];
    let (ok, out) = cluster_manifests(&t, &chart, &sets);
    assert!(ok, "{out}");
    let docs = parsed(&out);
    let pool = doc(&docs, "StatefulSet", "-pool");
    assert_eq!(pool["spec"]["replicas"].as_u64(), Some(2), "no live object to keep: pool.replicas");
    let hpa = doc(&docs, "HorizontalPodAutoscaler", "-pool");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!((target["apiVersion"].as_str(), target["kind"].as_str()), (Some("apps/v1"), Some("StatefulSet")));
    assert_eq!(target["name"], pool["metadata"]["name"], "the autoscaler targets another object");
    assert_eq!((hpa["spec"]["minReplicas"].as_u64(), hpa["spec"]["maxReplicas"].as_u64()), (Some(2), Some(6)));
    let metric = &hpa["spec"]["metrics"][0]["resource"];
    assert_eq!((metric["name"].as_str(), metric["target"]["averageUtilization"].as_u64()), (Some("cpu"), Some(60)));
    let down = &hpa["spec"]["behavior"]["scaleDown"]["policies"][0];
    assert_eq!((down["type"].as_str(), down["value"].as_u64()), (Some("Pods"), Some(1)), "{down:?}");
    let (ok, out) = cluster_manifests(
        &t,
        &chart,
        &["pool.autoscaling.enabled=true", "pool.autoscaling.minReplicas=5", "pool.autoscaling.maxReplicas=3"],
    );
    assert!(!ok, "crossed bounds were accepted:\n{out}");
    assert!(out.contains("pool.autoscaling.maxReplicas (3) is below pool.autoscaling.minReplicas (5)"), "{out}");
    let (ok, out) =
        cluster_manifests(&t, &chart, &["pool.autoscaling.enabled=true", "pool.resources.requests.cpu=null"]);
    assert!(!ok, "an autoscaler on CPU with no CPU request was accepted:\n{out}");
    assert!(out.contains("pool.autoscaling needs pool.resources.requests.cpu"), "{out}");
}

#[test]
fn the_cluster_values_schema_refuses_what_contradicts_the_spec() {
    let Some(t) = tools() else { return };
    let (_dir, chart) = rendered("cluster-compose");
    let mut refused = 0;
    for (sets, expect) in [
        (vec!["pool.replicas=3"], "/pool/replicas"),
        (vec!["pool.autoscaling.maxReplicas=65"], "/pool/autoscaling/maxReplicas"),
        (vec!["pool.autoscaling.minReplicas=0"], "/pool/autoscaling/minReplicas"),
        (
            vec!["pool.autoscaling.targetCPUUtilizationPercentage=100"],
            "/pool/autoscaling/targetCPUUtilizationPercentage",
        ),
        (vec!["pool.autoscaling.enabled=yes"], "/pool/autoscaling/enabled"),
        (vec!["ports.sip=5070"], "/ports/sip"),
        (vec!["ports.wss=443"], "/ports/wss"),
        (vec!["rtp.start=10000"], "/rtp/start"),
        (vec!["tls.domain=example.org"], "/tls/domain"),
        (vec!["lifecycle.drainSeconds=5"], "/lifecycle/drainSeconds"),
        (vec!["database.user=postgres"], "/database/user"),
        (vec!["database.host=pg\"x"], "/database/host"),
        (vec!["database.name=kam;drop"], "/database/name"),
        (vec!["database.existingSecret="], "/database/existingSecret"),
        (vec!["edge.sourceCidrs={10.0.0.0/33}"], "/edge/sourceCidrs"),
        (vec!["edge.sourceCidrs={0.0.0.0}"], "/edge/sourceCidrs"),
        (vec!["edge.nodeSelector=null"], "/edge"),
        (vec!["certificates.mode=certManager"], "/certificates/mode"),
        (vec!["certificates.mode=existingSecret"], "/certificates/existingSecret"),
        (vec!["colour=blue"], "colour"),
    ] {
        let (ok, out) = cluster_manifests(&t, &chart, &sets);
        assert!(!ok, "{sets:?} was accepted");
        assert!(out.contains(expect), "{sets:?}: the error does not name {expect}:\n{out}");
        refused += 1;
    }
    eprintln!("cluster values schema: {refused} contradicting values refused, each at its key");
}
