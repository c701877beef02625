//! Shared helpers: fixture copies in temp dirs, rendering through the library, snapshot text,
//! the `astrtc` binary, and skips that are counted. Beside them: [`docker`] (images and running
//! deployments), [`pebble`] (a real ACME server), [`ports`] (free ports, never handed out twice),
//! [`shape`] (outputs as their readers see them), [`certs`] (certificates with any names and
//! validity), [`netns`] (clients on other networks: namespaces, NAT, firewalls), [`turn`] (a coturn
//! TURN server), [`attacker`] (network namespaces as distinct sources on the Internet), [`phone`] (baresip in
//! one, and a capture of its link), [`sip`] (blocking SIP helpers for threads of their own).

pub mod attacker;
pub mod call;
pub mod certs;
pub mod docker;
pub mod netns;
pub mod pebble;
pub mod phone;
pub mod ports;
pub mod shape;
pub mod sip;
pub mod turn;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use astrtc::plan::{HostFacts, Plan};
use astrtc::render::{self, Bundle};
use astrtc::spec;

/// Host facts fixed for reproducible output (as root: secret files go to the image's group).
pub const ROOT: HostFacts = HostFacts { uid: 0, gid: 0 };

/// The repository's fixture directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture case name.
pub fn fixture_cases() -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(fixtures()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A fixture case copied into a fresh temp dir (so the local CA is made there, not in the repo).
pub fn fixture_copy(case: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(fixtures().join(case)).unwrap() {
        let entry = entry.unwrap();
        let to = dir.path().join(entry.file_name());
        fs::copy(entry.path(), &to).unwrap();
    }
    let secrets = dir.path().join("astrtc.secrets.toml");
    if secrets.exists() {
        fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

/// Loads a spec and its secrets into a plan.
pub fn plan_for(spec_path: &Path, host: HostFacts) -> Result<Plan, spec::SpecError> {
    astrtc::plan::load(spec_path, host)
}

/// Renders a plan as `astrtc render` would into a fresh directory (a local CA in `ca_dir`'s
/// place, created on first use; in ACME mode no certificate issued yet).
pub fn bundle_for(plan: &Plan) -> Bundle {
    let fresh = tempfile::tempdir().unwrap();
    let inputs = astrtc::deploy::gather(plan, &fresh.path().join("deploy"), astrtc::deploy::CaUse::Create).unwrap();
    render::render(plan, &inputs).unwrap()
}

/// Held by every test that starts `astrtc testenv` instances: `testenv down --all` and the
/// leftover checks look at every instance on the host, so such tests take turns.
pub static TESTENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the [`TESTENV`] turn (a test that panicked holding it does not block the others).
pub fn testenv_turn() -> std::sync::MutexGuard<'static, ()> {
    TESTENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The `astrtc` binary under test.
pub fn astrtc() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("astrtc").unwrap()
}

/// Whether this run is CI (`CI` set to anything but empty, `0` or `false`): there a skip is a
/// failure.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Skips the running test, loudly: prints `SKIP <test>: <reason>` and appends it to the file
/// named by `ASTRTC_SKIP_LOG`, which `make test` counts. Under CI a skip is a failure: this
/// panics with the same line instead. The test name is the test thread's (libtest names it so).
pub fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("<unknown test>").to_string();
    let line = format!("SKIP {test}: {reason}");
    if ci() {
        panic!("{line} (under CI=true a skip is a failure)");
    }
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("ASTRTC_SKIP_LOG") {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

/// True (after [`skip`]) when `ASTRTC_SKIP_DOCKER=1` — exactly `1` — turns Docker tests off, as
/// `make test-unit` does. Any other value is ignored: the test runs.
pub fn docker_off() -> bool {
    if std::env::var("ASTRTC_SKIP_DOCKER").is_ok_and(|v| v == "1") {
        skip("needs a Docker engine; ASTRTC_SKIP_DOCKER=1 (make test-unit) turns those tests off");
        return true;
    }
    false
}

/// True (after [`skip`]) when a tool a test drives is not installed.
pub fn tool_missing(path: &Path, install: &str) -> bool {
    if path.exists() {
        return false;
    }
    skip(&format!("{} is not installed ({install})", path.display()));
    true
}

/// Every file of a bundle in one text, PEM bodies replaced (they change on every run).
pub fn snapshot_text(bundle: &Bundle) -> String {
    let mut out = String::new();
    for (path, file) in bundle.files() {
        // The chart's static Go templates are copied from helm/astrtc, and its files/ are copies
        // of asterisk/ and keys/: snapshot only what the chart generates.
        let p = path.to_string_lossy();
        if p.starts_with("helm/astrtc/")
            && !["Chart.yaml", "values.yaml", "values.schema.json", "files/ingress/http.conf"]
                .iter()
                .any(|g| p.ends_with(g))
        {
            continue;
        }
        out.push_str(&format!("==> {} (mode {:o}) <==\n", path.display(), file.kind.mode()));
        let text = String::from_utf8_lossy(&file.bytes);
        let mut in_pem = false;
        for line in text.lines() {
            if line.starts_with("-----BEGIN ") {
                in_pem = true;
                out.push_str(line);
                out.push_str("\n[base64 elided]\n");
            } else if line.starts_with("-----END ") {
                in_pem = false;
                out.push_str(line);
                out.push('\n');
            } else if !in_pem {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}
