//! Shared helpers: fixture copies in temp dirs, rendering through the library, snapshot text.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use astrtc::plan::{self, HostFacts, Plan};
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
    let loaded = spec::load(spec_path)?;
    let secrets = plan::load_secrets(&loaded)?;
    plan::build(&loaded, &secrets, host)
}

/// Renders a plan with a local CA in `ca_dir`'s place (created on first use).
pub fn bundle_for(plan: &Plan) -> Bundle {
    if plan.tls.mode == astrtc::spec::TlsMode::Acme {
        return render::render(plan, None).unwrap(); // no certificate issued yet
    }
    let ca = astrtc::certs::local_ca::LocalCa::load_or_create(&plan.tls.ca_dir, &plan.tls.domain).unwrap();
    let certs = ca.leaf(&plan.tls.names, None).unwrap();
    render::render(plan, Some(&certs)).unwrap()
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

/// Runs an image build once per test run, through astrtc's bollard code path, on its own
/// runtime (tests run on several); every caller panics with the build's diagnostic if it failed.
pub fn build_image_once<F, Fut>(cell: &'static std::sync::OnceLock<Result<(), String>>, what: &str, build: F)
where
    F: FnOnce(bollard::Docker) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<astrtc::image::Built, astrtc::image::ImageError>>,
{
    let result = cell.get_or_init(|| {
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let docker = astrtc::image::connect().await.map_err(|e| format!("{e:?}"))?;
                build(docker)
                    .await
                    .map(|b| eprintln!("image {} ready in {:.1?}", b.tag, b.elapsed))
                    .map_err(|e| format!("{:?}", miette::Report::new(e)))
            })
        })
        .join()
        .unwrap()
    });
    if let Err(e) = result {
        panic!("building the {what} image failed: {e}");
    }
}
