//! The `astrtc` binary as users run it: exit codes, refusal to overwrite, file modes, `--check`
//! diffs, errors that point into the spec, and no secret on any output stream.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;

fn init_in(dir: &Path) {
    astrtc().args(["init", "--dir"]).arg(dir).assert().success();
}

/// `init --tls acme` for pbx.example.test (Let's Encrypt, HTTP-01 on port 80).
fn init_acme_in(dir: &Path) {
    let acme = ["--tls", "acme", "--acme-email", "ops@example.test", "--domain", "pbx.example.test"];
    astrtc().arg("init").args(acme).arg("--dir").arg(dir).assert().success();
}

fn render(spec: &Path, out: &Path, check: bool) -> assert_cmd::assert::Assert {
    let mut cmd = astrtc();
    cmd.arg("render");
    if check {
        cmd.arg("--check");
    }
    cmd.arg("--spec").arg(spec).arg("--out").arg(out).assert()
}

/// Everything the command printed, stdout then stderr.
fn all_output(out: &assert_cmd::assert::Assert) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.get_output().stdout),
        String::from_utf8_lossy(&out.get_output().stderr)
    )
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn passwords(secrets: &Path) -> Vec<String> {
    let s: astrtc::spec::secrets::Secrets = toml::from_str(&fs::read_to_string(secrets).unwrap()).unwrap();
    s.endpoints.values().cloned().collect()
}

#[test]
fn init_writes_a_private_secrets_file_and_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let pbx = dir.path().join("pbx");
    let out = astrtc().args(["init", "--dir"]).arg(&pbx).args(["--domain", "pbx.example.test"]).assert().success();
    let secrets = pbx.join("astrtc.secrets.toml");
    assert_eq!(mode(&secrets), 0o600);
    let pw = passwords(&secrets);
    assert_eq!(pw.len(), 3);
    let printed = all_output(&out);
    for p in &pw {
        assert!(p.len() >= 22, "a password of {} characters has < 128 bits", p.len());
        assert!(!printed.contains(p.as_str()), "init printed a password");
    }
    // Different every time.
    let other = dir.path().join("other");
    init_in(&other);
    let pw2 = passwords(&other.join("astrtc.secrets.toml"));
    assert!(pw.iter().all(|p| !pw2.contains(p)));
    let spec = fs::read_to_string(pbx.join("astrtc.toml")).unwrap();
    assert!(spec.contains("domain = \"pbx.example.test\""));
    assert!(spec.contains("# start = 10000") && spec.contains("# wss_port = 8089"));
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    init_in(dir.path());
    let before = fs::read(dir.path().join("astrtc.secrets.toml")).unwrap();
    let out = astrtc().args(["init", "--dir"]).arg(dir.path()).assert().code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    assert_eq!(fs::read(dir.path().join("astrtc.secrets.toml")).unwrap(), before);
    astrtc().args(["init", "--force", "--dir"]).arg(dir.path()).assert().success();
    assert_ne!(fs::read(dir.path().join("astrtc.secrets.toml")).unwrap(), before);
}

#[test]
fn init_rejects_a_bad_domain_and_flags_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    astrtc().args(["init", "--domain", "bad domain", "--dir"]).arg(dir.path()).assert().code(2);
    assert!(!dir.path().join("astrtc.toml").exists());
    astrtc().args(["render", "--no-such-flag"]).assert().code(2);
    astrtc().args(["frobnicate"]).assert().code(2);
}

#[test]
fn render_then_check_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let pbx = dir.path().join("pbx");
    astrtc().args(["init", "--dir"]).arg(&pbx).args(["--domain", "pbx.example.test"]).assert().success();
    let spec = pbx.join("astrtc.toml");
    let deploy = pbx.join("deploy");
    // Check before the first render: out of date (no CA yet), exit 1, nothing written.
    render(&spec, &deploy, true).code(1);
    assert!(!deploy.exists());
    render(&spec, &deploy, false).success();
    for f in [
        "asterisk/http.conf",
        "asterisk/pjsip.conf",
        "asterisk/rtp.conf",
        "asterisk/modules.conf",
        "asterisk/extensions.conf",
        "asterisk/logger.conf",
        "asterisk/asterisk.conf",
        "keys/asterisk.crt",
        "keys/asterisk.key",
        "keys/asterisk.pem",
        "keys/ca.crt",
        "compose.yaml",
    ] {
        assert!(deploy.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&deploy.join("keys/asterisk.key")), 0o640);
    assert_eq!(mode(&deploy.join("asterisk/pjsip_auth.conf")), 0o640);
    assert_eq!(mode(&deploy.join("keys/ca.crt")), 0o644);
    assert_eq!(mode(&pbx.join(".astrtc/ca/ca.key")), 0o600);
    render(&spec, &deploy, true).success();

    // A public file edited by hand: a unified diff and exit 1.
    let http = deploy.join("asterisk/http.conf");
    let text = fs::read_to_string(&http).unwrap();
    fs::write(&http, text.replace("bindaddr = 127.0.0.1", "bindaddr = 0.0.0.0")).unwrap();
    let out = render(&spec, &deploy, true).code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(stdout.contains("--- a/asterisk/http.conf"), "{stdout}");
    assert!(stdout.contains("-bindaddr = 0.0.0.0") && stdout.contains("+bindaddr = 127.0.0.1"), "{stdout}");

    // A secret file edited: reported, never shown.
    let auth = deploy.join("asterisk/pjsip_auth.conf");
    let text = fs::read_to_string(&auth).unwrap();
    fs::write(&auth, text.replace("type = auth", "type = auth\n;")).unwrap();
    let out = render(&spec, &deploy, true).code(1);
    let all = all_output(&out);
    assert!(all.contains("differs: asterisk/pjsip_auth.conf (secret; contents not shown)"), "{all}");
    for p in passwords(&pbx.join("astrtc.secrets.toml")) {
        assert!(!all.contains(&p), "--check printed a password");
    }

    // Re-render repairs it; the CA and the leaf stay the same.
    let ca = fs::read(deploy.join("keys/ca.crt")).unwrap();
    let leaf = fs::read(deploy.join("keys/asterisk.crt")).unwrap();
    render(&spec, &deploy, false).success();
    render(&spec, &deploy, true).success();
    assert_eq!(fs::read(deploy.join("keys/ca.crt")).unwrap(), ca);
    assert_eq!(fs::read(deploy.join("keys/asterisk.crt")).unwrap(), leaf);

    // A new name in the spec re-issues the leaf, signed by the same CA.
    let text = fs::read_to_string(&spec).unwrap();
    fs::write(&spec, text.replace("# extra_names = []", "extra_names = [\"sip.example.test\"]")).unwrap();
    render(&spec, &deploy, false).success();
    assert_eq!(fs::read(deploy.join("keys/ca.crt")).unwrap(), ca);
    assert_ne!(fs::read(deploy.join("keys/asterisk.crt")).unwrap(), leaf);
}

#[test]
fn a_bad_spec_exits_2_points_at_the_line_and_leaves_deploy_untouched() {
    let dir = tempfile::tempdir().unwrap();
    init_in(dir.path());
    let spec = dir.path().join("astrtc.toml");
    let deploy = dir.path().join("deploy");
    render(&spec, &deploy, false).success();
    let before = fs::read(deploy.join("asterisk/pjsip.conf")).unwrap();
    let good = fs::read_to_string(&spec).unwrap();

    for (bad, key, needle) in [
        (good.replace("[rtp]", "[rtp]\nports = 5"), "ports", "unknown field"),
        (good.replace("[rtp]", "[rtp]\nstart = \"10000\""), "rtp.start", "invalid type"),
        (good.replace("kind = \"sip\"\n", "\n"), "kind", "missing field"),
        (good.replace("[rtp]", "[rtp]\nstart = 30000\nend = 20000"), "rtp.start", "must be below"),
    ] {
        fs::write(&spec, &bad).unwrap();
        let out = render(&spec, &deploy, false).code(2);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(err.contains(key) && err.contains(needle), "{key}: {err}");
        assert!(err.contains("astrtc.toml:"), "no file position in {err}");
        assert_eq!(fs::read(deploy.join("asterisk/pjsip.conf")).unwrap(), before, "deploy was touched");
    }
    let leftovers = fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".astrtc-"));
    assert_eq!(leftovers.count(), 0);
}

#[test]
fn a_missing_spec_or_password_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = astrtc().args(["render", "--spec"]).arg(dir.path().join("nope.toml")).assert().code(2);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("astrtc init"));

    init_in(dir.path());
    let spec = dir.path().join("astrtc.toml");
    let text = fs::read_to_string(&spec).unwrap();
    fs::write(&spec, format!("{text}\n[[endpoints]]\nid = \"3003\"\nkind = \"sip\"\n")).unwrap();
    let out = astrtc().args(["render", "--spec"]).arg(&spec).assert().code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("no password for endpoint \"3003\"") && err.contains("astrtc secrets"), "{err}");
    // `astrtc secrets` fills it in, keeps the others, keeps mode 0600.
    let before = passwords(&dir.path().join("astrtc.secrets.toml"));
    astrtc().args(["secrets", "--spec"]).arg(&spec).assert().success();
    let after = passwords(&dir.path().join("astrtc.secrets.toml"));
    assert_eq!(after.len(), 4);
    assert!(before.iter().all(|p| after.contains(p)));
    assert_eq!(mode(&dir.path().join("astrtc.secrets.toml")), 0o600);
    astrtc().args(["render", "--spec"]).arg(&spec).arg("--out").arg(dir.path().join("deploy")).assert().success();
}

#[test]
fn a_secrets_file_others_can_read_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    init_in(dir.path());
    let spec = dir.path().join("astrtc.toml");
    let secrets = dir.path().join("astrtc.secrets.toml");
    let out = render(&spec, &dir.path().join("deploy"), false);
    assert!(!all_output(&out).contains("warning"), "{}", all_output(&out));
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o644)).unwrap();
    let out = render(&spec, &dir.path().join("deploy"), false);
    let text = all_output(&out);
    assert!(text.contains("is readable by others (mode 644)") && text.contains("chmod 600"), "{text}");
}

#[test]
fn init_in_acme_mode_writes_a_spec_that_renders_and_checks_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    // Missing e-mail: bad input, nothing written.
    let out = astrtc().args(["init", "--tls", "acme", "--dir"]).arg(dir.path()).assert().code(2);
    assert!(all_output(&out).contains("--acme-email"), "{}", all_output(&out));
    assert!(!dir.path().join("astrtc.toml").exists());
    // A DNS hook with http-01: bad input, nothing written.
    let out = astrtc()
        .args(["init", "--tls", "acme", "--acme-email", "ops@example.test", "--dns-hook", "/bin/true", "--dir"])
        .arg(dir.path())
        .assert()
        .code(2);
    assert!(all_output(&out).contains("tls.acme.dns_hook"), "{}", all_output(&out));
    assert!(!dir.path().join("astrtc.toml").exists());
    // dns-01 without a hook is the manual flow, and the spec says so.
    let manual = tempfile::tempdir().unwrap();
    astrtc()
        .args(["init", "--tls", "acme", "--acme-email", "ops@example.test", "--challenge", "dns-01", "--dir"])
        .arg(manual.path())
        .assert()
        .success();
    let text = fs::read_to_string(manual.path().join("astrtc.toml")).unwrap();
    assert!(text.contains("challenge = \"dns-01\"") && text.contains("manual DNS-01"), "{text}");

    init_acme_in(dir.path());
    let spec = dir.path().join("astrtc.toml");
    let text = fs::read_to_string(&spec).unwrap();
    assert!(text.contains("mode = \"acme\"") && text.contains("email = \"ops@example.test\""), "{text}");
    let deploy = dir.path().join("deploy");
    render(&spec, &deploy, false).success();
    assert!(deploy.join("keys").is_dir());
    assert!(!deploy.join("keys/asterisk.crt").exists(), "ACME certificates come from `astrtc certs issue`");
    let sidecar: astrtc::plan::Acme =
        toml::from_str(&fs::read_to_string(deploy.join("certs/acme.toml")).unwrap()).unwrap();
    assert_eq!(
        (sidecar.names, sidecar.account_dir),
        (vec!["pbx.example.test".to_string()], "/var/lib/astrtc/acme".into())
    );
    let info = astrtc().args(["info", "--spec"]).arg(&spec).arg("--out").arg(&deploy).assert().success();
    let info = String::from_utf8_lossy(&info.get_output().stdout).into_owned();
    assert!(info.contains("HTTP-01 on port 80), kept valid by the `certs` service"), "{info}");
    assert!(!info.contains("browser CA"), "no local CA in ACME mode: {info}");
    // `certs` refuses a self-signed spec as bad input.
    let other = tempfile::tempdir().unwrap();
    init_in(other.path());
    astrtc().args(["certs", "issue", "--spec"]).arg(other.path().join("astrtc.toml")).assert().code(2);
}

/// Every command finds the output beside the spec (the layout `init` and `make up` make), wherever
/// it runs: `render`, `render --check`, `info` and `certs` need no `--out`/`--keys`.
#[test]
fn output_paths_default_to_deploy_beside_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let pbx = dir.path().join("pbx");
    init_in(&pbx);
    let elsewhere = tempfile::tempdir().unwrap();
    let spec = pbx.join("astrtc.toml");
    astrtc().current_dir(elsewhere.path()).arg("render").arg("--spec").arg(&spec).assert().success();
    assert!(pbx.join("deploy/compose.yaml").is_file(), "render did not write pbx/deploy");
    assert!(!elsewhere.path().join("deploy").exists(), "render wrote ./deploy");
    astrtc().current_dir(elsewhere.path()).args(["render", "--check", "--spec"]).arg(&spec).assert().success();
    let info = astrtc().current_dir(elsewhere.path()).args(["info", "--spec"]).arg(&spec).assert().success();
    let info = String::from_utf8_lossy(&info.get_output().stdout).into_owned();
    assert!(info.contains(&pbx.join("deploy/keys/ca.crt").display().to_string()), "{info}");
    assert!(info.contains(&format!("check:      astrtc verify --spec {}\n", spec.display())), "{info}");
}

#[test]
fn shell_completions_and_the_manual_page_describe_every_command() {
    let out = astrtc().args(["completions", "bash"]).assert().success();
    let bash = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(bash.contains("complete -F _astrtc") || bash.contains("_astrtc()"), "{bash}");
    let out = astrtc().arg("man").assert().success();
    let man = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(man.starts_with(".ie") || man.contains(".TH astrtc"), "{man}");
    for cmd in ["init", "render", "build", "verify", "certs", "completions"] {
        assert!(bash.contains(cmd), "completions lack {cmd}");
        assert!(man.contains(cmd), "the manual page lacks {cmd}");
    }
    astrtc().args(["completions", "no-such-shell"]).assert().code(2);
}

/// `astrtc::testing` (testcontainers) is a cargo feature: an install without it compiles no
/// testcontainers.
#[test]
fn testcontainers_is_only_in_the_testing_feature() {
    let tree = |features: &[&str]| {
        let out = std::process::Command::new(env!("CARGO"))
            .args(["tree", "--locked", "--offline", "-e", "normal", "--prefix", "none", "-p", "astrtc"])
            .args(features)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plain = tree(&["--no-default-features"]);
    assert!(plain.lines().any(|l| l.starts_with("bollard ")), "cargo tree printed no dependencies:\n{plain}");
    assert!(!plain.lines().any(|l| l.starts_with("testcontainers ")), "{plain}");
    assert!(tree(&["--features", "testing"]).lines().any(|l| l.starts_with("testcontainers ")));
}

/// `info` in self-signed mode prints exactly what a person needs, from the spec's values (not
/// the defaults): URLs, every endpoint and the echo extension, where the passwords are, the CA to
/// import, how to follow the logs and check the deployment — and no password.
#[test]
fn info_in_self_signed_mode_prints_urls_endpoints_and_the_ca_and_no_password() {
    let dir = fixture_copy("host-alt-ports");
    let spec = dir.path().join("astrtc.toml");
    let text = fs::read_to_string(&spec).unwrap();
    let edited = text.replace("domain = \"localhost\"", "domain = \"pbx.example.test\"")
        + "\n[dialplan]\necho_extension = \"7000\"\n";
    fs::write(&spec, edited).unwrap();
    astrtc().args(["render", "--spec"]).arg(&spec).assert().success();
    let out = astrtc().args(["info", "--spec"]).arg(&spec).assert().success();
    let deploy = dir.path().join("deploy");
    let ca = deploy.join("keys/ca.crt");
    assert!(ca.is_file(), "info names a CA file that render did not write");
    let expected = [
        "WSS URL:    wss://pbx.example.test:18089/ws".to_string(),
        "SIP (UDP):  pbx.example.test:15060".to_string(),
        "phone:      https://pbx.example.test:18089/static/phone/index.html (demo softphone, served by Asterisk)"
            .to_string(),
        "endpoints:".to_string(),
        "  199          browser, WSS".to_string(),
        "  3001         SIP phone, UDP".to_string(),
        "  3002         SIP phone, UDP".to_string(),
        "  7000         echo test (call it to hear yourself)".to_string(),
        format!("passwords:  {}", dir.path().join("astrtc.secrets.toml").display()),
        format!(
            "browser CA: {} (import it as a trusted authority; see README, \"Trusting the local CA\")",
            ca.display()
        ),
        format!("logs:       cd {} && docker compose logs -f", deploy.display()),
        format!("check:      astrtc verify --spec {}", spec.display()),
    ];
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert_eq!(stdout, expected.join("\n") + "\n");
    let all = all_output(&out);
    for p in passwords(&dir.path().join("astrtc.secrets.toml")) {
        assert!(!all.contains(&p), "info printed a password");
    }
}

/// `tls.acme.staging = true` resolves to Let's Encrypt's staging directory in what the sidecar
/// reads (certs/acme.toml) and what `info` shows; together with `directory` it is bad input.
#[test]
fn acme_staging_renders_lets_encrypt_staging_and_conflicts_with_a_directory() {
    const PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
    const STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
    let dir = tempfile::tempdir().unwrap();
    init_acme_in(dir.path());
    let spec = dir.path().join("astrtc.toml");
    let deploy = dir.path().join("deploy");
    let directory = || {
        let acme: astrtc::plan::Acme =
            toml::from_str(&fs::read_to_string(deploy.join("certs/acme.toml")).unwrap()).unwrap();
        acme.directory
    };
    render(&spec, &deploy, false).success();
    assert_eq!(directory(), PRODUCTION);

    let text = fs::read_to_string(&spec).unwrap();
    let staging = text.replace("# staging = false", "staging = true");
    assert_ne!(staging, text, "the starter spec has no staging line");
    fs::write(&spec, &staging).unwrap();
    render(&spec, &deploy, false).success();
    assert_eq!(directory(), STAGING);
    let info = astrtc().args(["info", "--spec"]).arg(&spec).assert().success();
    assert!(all_output(&info).contains(&format!("certificate: ACME from {STAGING} (HTTP-01 on port 80)")));

    let both = staging.replace("# directory = ", "directory = ");
    assert_ne!(both, staging, "the starter spec has no directory line");
    fs::write(&spec, both).unwrap();
    let out = render(&spec, &deploy, false).code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("tls.acme.staging") && err.contains("drop one of the two"), "{err}");
    assert_eq!(directory(), STAGING, "a refused spec changed deploy/");
}

/// The self-signed leaf is re-issued by `render` when fewer than 30 days are left (by the same
/// CA), and kept when more are left. The planted leaves differ only in their expiry.
#[test]
fn render_reissues_a_self_signed_leaf_with_fewer_than_30_days_left() {
    use astrtc::certs::cert_facts;
    let dir = tempfile::tempdir().unwrap();
    init_in(dir.path());
    let spec = dir.path().join("astrtc.toml");
    let deploy = dir.path().join("deploy");
    render(&spec, &deploy, false).success();
    let ca_pem = fs::read_to_string(dir.path().join(".astrtc/ca/ca.crt")).unwrap();
    let ca_key = fs::read_to_string(dir.path().join(".astrtc/ca/ca.key")).unwrap();
    let (crt, key) = (deploy.join("keys/asterisk.crt"), deploy.join("keys/asterisk.key"));
    for (days_left, kept) in [(60, true), (20, false)] {
        let leaf = certs::make(&["localhost"], certs::days(-300)..certs::days(days_left), Some((&ca_pem, &ca_key)));
        let chain = format!("{}{ca_pem}", leaf.cert_pem);
        fs::write(&crt, &chain).unwrap();
        fs::write(&key, &leaf.key_pem).unwrap();
        render(&spec, &deploy, false).success();
        let now = fs::read_to_string(&crt).unwrap();
        let facts = cert_facts(&now).unwrap();
        if kept {
            assert_eq!(now, chain, "a leaf with {days_left} days left was replaced");
            assert_eq!(fs::read_to_string(&key).unwrap(), leaf.key_pem);
        } else {
            assert_ne!(facts.serial, cert_facts(&chain).unwrap().serial, "a leaf with {days_left} days left was kept");
            assert!(facts.seconds_left > 360 * 86400, "the new leaf is not a fresh one: {facts:?}");
            assert!(now.ends_with(&ca_pem), "the new leaf is not from the same CA");
            assert_ne!(fs::read_to_string(&key).unwrap(), leaf.key_pem);
        }
        assert_eq!(fs::read_to_string(deploy.join("keys/ca.crt")).unwrap(), ca_pem, "the CA changed");
    }
}

/// `certs check` (the sidecar's health check) exits 1, naming the reason, for a missing
/// certificate, one whose key belongs to another certificate, one for other names and expired
/// ones (also by less than a day); 0 for a good one.
#[test]
fn certs_check_exits_1_for_a_missing_mismatched_or_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    init_acme_in(dir.path());
    let spec = dir.path().join("astrtc.toml");
    let check = |keys: &Path| astrtc().args(["certs", "check", "--spec"]).arg(&spec).arg("--keys").arg(keys).assert();
    let keys = |name: &str| dir.path().join(name);
    let fails_with = |keys: &Path, reason: &str| {
        let out = check(keys).code(1);
        // The report as one line (miette wraps it to the terminal's width).
        let err = String::from_utf8_lossy(&out.get_output().stderr);
        let err = err.split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
        let wanted = format!("no usable certificate for pbx.example.test: {reason}");
        assert!(err.contains(&wanted), "{}: wanted {wanted:?} in\n{err}", keys.display());
    };

    fails_with(&keys("missing"), "missing");
    // 60 days and a half: "60 days left" however long the test takes.
    let good = certs::make(&["pbx.example.test"], certs::days(-1)..certs::days(60) + time::Duration::hours(12), None);
    let other = certs::make(&["pbx.example.test"], certs::days(-1)..certs::days(60), None);
    certs::store(&keys("mismatched"), &good.cert_pem, &other.key_pem);
    fails_with(&keys("mismatched"), "the key does not match the certificate");
    let renamed = certs::make(&["other.example.test"], certs::days(-1)..certs::days(60), None);
    certs::store(&keys("renamed"), &renamed.cert_pem, &renamed.key_pem);
    fails_with(&keys("renamed"), "it is for other names");
    let expired = certs::make(&["pbx.example.test"], certs::days(-90)..certs::days(-2), None);
    certs::store(&keys("expired"), &expired.cert_pem, &expired.key_pem);
    fails_with(&keys("expired"), "expired");
    // Expired an hour ago: "0 days left" by whole days, but expired all the same.
    let just = certs::make(&["pbx.example.test"], certs::days(-90)..time::Duration::hours(-1), None);
    certs::store(&keys("just-expired"), &just.cert_pem, &just.key_pem);
    fails_with(&keys("just-expired"), "expired");

    certs::store(&keys("good"), &good.cert_pem, &good.key_pem);
    let out = check(&keys("good")).success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert_eq!(stdout, format!("{}: usable, 60 days left\n", keys("good").display()));
}

/// `astrtc turn-credentials`: the iceServers entry for the spec's TURN relay — the TURN REST
/// scheme (EXPIRY:USER, base64 HMAC-SHA1 of it with the secrets file's secret, the same as
/// `openssl dgst -sha1 -hmac`), every URL the spec offers, the TTL asked for; the human output
/// says when it expires. Bad input (no [turn], a user with the separator, a TTL over 7 days)
/// exits 2. `astrtc secrets` generates the secret once the spec has [turn].
#[test]
fn turn_credentials_print_an_ice_servers_entry_made_with_the_shared_secret() {
    let dir = fixture_copy("turn-bundled");
    let spec = dir.path().join("astrtc.toml");
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let out = astrtc()
        .args(["turn-credentials", "--spec"])
        .arg(&spec)
        .args(["--user", "alice", "--ttl", "10m", "--json"])
        .assert()
        .success();
    let entry: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        entry["urls"],
        serde_json::json!([
            "turn:pbx.example.test:3478?transport=udp",
            "turn:pbx.example.test:3478?transport=tcp",
            "turns:pbx.example.test:443?transport=tcp"
        ])
    );
    let username = entry["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    assert!((before + 600..=before + 602).contains(&expiry), "{expiry} vs {before}");
    let hmac = std::process::Command::new("sh")
        .args(["-c", "printf %s \"$U\" | openssl dgst -binary -sha1 -hmac \"$S\" | base64"])
        .env("U", username)
        .env("S", "fixture-turn-shared-secret-0123456789abcdef")
        .output()
        .unwrap();
    assert_eq!(entry["credential"].as_str().unwrap(), String::from_utf8_lossy(&hmac.stdout).trim());

    let out = astrtc().args(["turn-credentials", "--spec"]).arg(&spec).args(["--user", "bob"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.starts_with("TURN credentials for bob, valid 60 min (until "), "{text}");
    assert!(text.contains("turns:pbx.example.test:443?transport=tcp") && text.contains("iceServers entry"), "{text}");
    // `astrtc info` names the same URLs, and how to mint credentials.
    let info = astrtc().args(["info", "--spec"]).arg(&spec).assert().success();
    let info = String::from_utf8_lossy(&info.get_output().stdout).into_owned();
    let urls = "turn:pbx.example.test:3478?transport=udp, turn:pbx.example.test:3478?transport=tcp, \
                turns:pbx.example.test:443?transport=tcp (bundled coturn, the `turn` service)";
    assert!(info.contains(urls) && info.contains("astrtc turn-credentials --spec"), "{info}");

    for (args, says) in [(vec!["--user", "a:b"], "--user"), (vec!["--user", "alice", "--ttl", "8d"], "at most 7d")] {
        let out = astrtc().args(["turn-credentials", "--spec"]).arg(&spec).args(&args).assert().code(2);
        assert!(all_output(&out).contains(says), "{args:?}: {}", all_output(&out));
    }
    let plain = fixture_copy("host-alt-ports");
    let out = astrtc()
        .args(["turn-credentials", "--spec"])
        .arg(plain.path().join("astrtc.toml"))
        .args(["--user", "x"])
        .assert()
        .code(2);
    assert!(all_output(&out).contains("has no [turn] section"), "{}", all_output(&out));

    // A spec that gains [turn]: `astrtc secrets` adds the shared secret (64 characters), once.
    let secrets = plain.path().join("astrtc.secrets.toml");
    let text = fs::read_to_string(&secrets).unwrap();
    fs::write(&secrets, text.replace("secret = \"fixture-turn-shared-secret-0123456789abcdef\"\n", "")).unwrap();
    let plain_spec = plain.path().join("astrtc.toml");
    fs::write(&plain_spec, fs::read_to_string(&plain_spec).unwrap() + "\n[turn]\nmode = \"bundled\"\n").unwrap();
    astrtc().args(["render", "--spec"]).arg(&plain_spec).assert().code(2);
    let out = astrtc().args(["secrets", "--spec"]).arg(&plain_spec).assert().success();
    assert!(all_output(&out).contains("[turn] secret"), "{}", all_output(&out));
    let parsed: astrtc::spec::secrets::Secrets = toml::from_str(&fs::read_to_string(&secrets).unwrap()).unwrap();
    let secret = parsed.turn.unwrap().secret.unwrap();
    assert_eq!(secret.len(), 64);
    assert!(!all_output(&out).contains(&secret), "secrets printed the secret");
    astrtc().args(["render", "--spec"]).arg(&plain_spec).assert().success();
    let again = astrtc().args(["secrets", "--spec"]).arg(&plain_spec).assert().success();
    assert!(all_output(&again).contains("already has a password"), "{}", all_output(&again));
}

/// `bench calls` against a cluster from an address the edge's flood limit covers: refused (exit
/// 2) before a call, naming the address and the remedies; the same from loopback passes this
/// check (and fails later, with no deployment running, for another reason).
#[test]
fn a_cluster_bench_from_a_covered_address_is_refused_before_it_floods_the_edge() {
    use astrtc::media::netif::{self, CandidateSet};
    let Some(lan) = netif::host_ips(CandidateSet::Lan).ok().and_then(|ips| ips.into_iter().find(|ip| ip.is_ipv4()))
    else {
        skip("this host has no non-loopback IPv4 address to send from");
        return;
    };
    let dir = fixture_copy("cluster-compose");
    let spec = dir.path().join("astrtc.toml");
    let deploy = dir.path().join("deploy");
    render(&spec, &deploy, false).success();
    let bench = |host: &str| {
        let out = astrtc()
            .args(["bench", "calls", "--spec"])
            .arg(&spec)
            .arg("--out")
            .arg(&deploy)
            .args(["--host", host, "--kind", "sip-echo", "--levels", "10", "--rate", "20", "--hold", "1"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        (out.status.code(), text.split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" "))
    };
    let (code, text) = bench(&lan.to_string());
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains(&format!("the calls would come from {lan}")), "{text}");
    assert!(text.contains("security.allow") && text.contains("--host 127.0.0.1"), "{text}");
    let (_, text) = bench("127.0.0.1");
    assert!(!text.contains("the calls would come from"), "loopback was refused too: {text}");
}

/// `info` tells a phone with `transport = "tls"` to register over TLS, and where (a cluster: the
/// edge's SIP-over-TLS port); a UDP phone stays a UDP phone.
#[test]
fn info_tells_a_tls_phone_to_register_over_tls() {
    let dir = fixture_copy("cluster-compose");
    let spec = dir.path().join("astrtc.toml");
    astrtc().args(["render", "--spec"]).arg(&spec).assert().success();
    let out = astrtc().args(["info", "--spec"]).arg(&spec).assert().success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    for want in [
        "SIP (TLS):  sip:localhost:15061;transport=tls",
        "  3010         SIP phone, TLS (register over TLS; SRTP required)",
        "  3001         SIP phone, UDP",
    ] {
        assert!(lines.contains(&want), "no line {want:?} in:\n{stdout}");
    }
}

/// The pool's key for the edge: a cluster secrets file without one (written before it existed)
/// is refused by `render` (exit 2, at `[cluster]`, naming `astrtc secrets`); `astrtc secrets`
/// adds 32 letters and digits from the OS random source without printing them, to a file still
/// 0600; two renders write the same key, in secret files only (0640), and `secrets` again keeps it.
#[test]
fn a_clusters_edge_key_is_generated_once_kept_across_renders_and_never_printed() {
    let dir = fixture_copy("cluster-compose");
    let (spec, secrets) = (dir.path().join("astrtc.toml"), dir.path().join("astrtc.secrets.toml"));
    let text = fs::read_to_string(&secrets).unwrap();
    let without: String = text.lines().filter(|l| !l.starts_with("edge_key")).map(|l| format!("{l}\n")).collect();
    assert_ne!(without, text, "the fixture has no edge_key line");
    fs::write(&secrets, without).unwrap();
    let refused = astrtc().args(["render", "--spec"]).arg(&spec).assert().code(2);
    let shown = all_output(&refused);
    assert!(shown.contains("needs [cluster] edge_key") && shown.contains("astrtc secrets"), "{shown}");

    let out = astrtc().args(["secrets", "--spec"]).arg(&spec).assert().success();
    assert!(all_output(&out).contains("the pool's key for the edge"), "{}", all_output(&out));
    assert_eq!(mode(&secrets), 0o600);
    let parsed: astrtc::spec::secrets::Secrets = toml::from_str(&fs::read_to_string(&secrets).unwrap()).unwrap();
    let key = parsed.cluster.unwrap().edge_key.unwrap();
    assert!(key.len() == 32 && key.chars().all(|c| c.is_ascii_alphanumeric()), "not 32 letters and digits");
    assert!(!all_output(&out).contains(&key), "secrets printed the key");

    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for out in [&a, &b] {
        let rendered = render(&spec, out, false).success();
        assert!(!all_output(&rendered).contains(&key), "render printed the key");
    }
    let sha1 = astrtc::render::cluster::edge_key_sha1(&key);
    for (file, holds) in [("edge/edge_key.cfg", &key), ("asterisk/extensions_edge.conf", &sha1)] {
        let first = fs::read_to_string(a.join(file)).unwrap();
        assert!(first.contains(holds.as_str()), "{file} does not hold {holds}");
        assert!(file.starts_with("edge/") || !first.contains(&key), "{file} holds the key itself");
        assert_eq!(first, fs::read_to_string(b.join(file)).unwrap(), "{file} changed between renders");
        assert_eq!(mode(&a.join(file)), 0o640, "{file}");
    }
    astrtc().args(["secrets", "--spec"]).arg(&spec).assert().success();
    let again: astrtc::spec::secrets::Secrets = toml::from_str(&fs::read_to_string(&secrets).unwrap()).unwrap();
    assert_eq!(again.cluster.unwrap().edge_key.as_deref(), Some(key.as_str()), "secrets replaced the key");
}

/// `astrtc secrets --rotate edge-key` keeps the key as `edge_key_previous` and writes a new one
/// (0600, neither printed); the render gives the pool both SHA-1s and the edge both keys (the new one first);
/// a second start while one is under way is refused with nothing written (its previous key would
/// be lost while members may still need it); `--finish-rotation edge-key` removes the previous
/// key (the render's previous global empty again), and a second finish, a rotation of a spec
/// without a cluster and both flags at once are refused.
#[test]
fn the_edges_key_rotates_in_two_steps_and_a_step_out_of_turn_is_refused() {
    let dir = fixture_copy("cluster-compose");
    let (spec, secrets) = (dir.path().join("astrtc.toml"), dir.path().join("astrtc.secrets.toml"));
    let read = || -> astrtc::spec::secrets::ClusterSecrets {
        let s: astrtc::spec::secrets::Secrets = toml::from_str(&fs::read_to_string(&secrets).unwrap()).unwrap();
        s.cluster.unwrap()
    };
    let old = read().edge_key.unwrap();
    let rotate = |flag: &str| astrtc().args(["secrets", "--spec"]).arg(&spec).args([flag, "edge-key"]).assert();

    let out = rotate("--rotate").success();
    let c = read();
    let new = c.edge_key.clone().unwrap();
    assert_eq!(c.edge_key_previous.as_deref(), Some(old.as_str()), "the previous key is not the old one");
    assert!(new != old && new.len() == 32 && new.chars().all(|c| c.is_ascii_alphanumeric()), "not a new key");
    assert_eq!(mode(&secrets), 0o600);
    let shown = all_output(&out);
    assert!(!shown.contains(&new) && !shown.contains(&old), "secrets printed a key: {shown}");
    assert!(shown.contains("--finish-rotation edge-key") && shown.contains("astrtc apply"), "{shown}");

    let rendered = dir.path().join("rotating");
    assert!(!all_output(&render(&spec, &rendered, false).success()).contains(&new), "render printed the key");
    let globals = fs::read_to_string(rendered.join("asterisk/extensions_edge.conf")).unwrap();
    let sha1 = astrtc::render::cluster::edge_key_sha1;
    assert!(globals.contains(&format!("ASTRTC_EDGE_KEY_SHA1 = {}\n", sha1(&new))), "{globals}");
    assert!(globals.contains(&format!("ASTRTC_EDGE_KEY_PREVIOUS_SHA1 = {}\n", sha1(&old))), "{globals}");
    let edge = fs::read_to_string(rendered.join("edge/edge_key.cfg")).unwrap();
    // The edge sends the new key, and the previous one in a second header (a member that has not
    // reloaded yet knows only that).
    assert!(
        edge.contains(&format!("#!define EDGE_KEY \"{new}\"\n"))
            && edge.contains(&format!("#!define EDGE_KEY_PREVIOUS \"{old}\"\n")),
        "the edge does not send the new key and the previous one"
    );

    let before = fs::read(&secrets).unwrap();
    let again = rotate("--rotate").code(2);
    assert!(all_output(&again).contains("under way"), "{}", all_output(&again));
    assert_eq!(fs::read(&secrets).unwrap(), before, "a refused rotation changed the secrets file");

    rotate("--finish-rotation").success();
    let c = read();
    assert_eq!((c.edge_key.as_deref(), c.edge_key_previous.as_deref()), (Some(new.as_str()), None));
    let finished = dir.path().join("finished");
    render(&spec, &finished, false).success();
    let globals = fs::read_to_string(finished.join("asterisk/extensions_edge.conf")).unwrap();
    assert!(globals.ends_with("ASTRTC_EDGE_KEY_PREVIOUS_SHA1 = \n"), "{globals}");
    let before = fs::read(&secrets).unwrap();
    let again = rotate("--finish-rotation").code(2);
    assert!(all_output(&again).contains("no rotation"), "{}", all_output(&again));
    assert_eq!(fs::read(&secrets).unwrap(), before);

    let both = astrtc()
        .args(["secrets", "--spec"])
        .arg(&spec)
        .args(["--rotate", "edge-key", "--finish-rotation", "edge-key"])
        .assert()
        .code(2);
    assert!(all_output(&both).contains("cannot be used with"), "{}", all_output(&both));
    let single = fixture_copy("webrtc-only");
    let refused = astrtc()
        .args(["secrets", "--spec"])
        .arg(single.path().join("astrtc.toml"))
        .args(["--rotate", "edge-key"])
        .assert();
    let shown = all_output(&refused.code(2));
    assert!(shown.contains("no [cluster] edge_key"), "{shown}");
}
