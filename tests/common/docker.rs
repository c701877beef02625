//! Images and running deployments for the tests that need a Docker engine: the Asterisk and
//! sidecar images built once per run through astrtc's own bollard code, a rendered deployment on
//! free ports, and compose projects removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use astrtc::certs::files;
use astrtc::certs::local_ca::LocalCa;
use astrtc::plan::Plan;

use super::{fixture_copy, plan_for, ports};

/// Runs an image build once per test run, through astrtc's bollard code path, on its own
/// runtime (tests run on several); every caller panics with the build's diagnostic if it failed.
pub fn build_image_once<F, Fut>(cell: &'static OnceLock<Result<(), String>>, what: &str, build: F)
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

/// The host's CA bundle, handed to image builds (TLS-inspecting proxies).
fn host_ca() -> Option<&'static Path> {
    let ca = Path::new(astrtc::image::HOST_CA_BUNDLE);
    ca.exists().then_some(ca)
}

/// The tag the tests run the Asterisk image under: named after the build context this test binary
/// embeds (files and build arguments), so that another checkout building the same default tag
/// at the same time on this engine can never swap the image under these tests.
pub fn test_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        use md5::{Digest, Md5};
        let tar = astrtc::image::context_tar(&astrtc::image::BuildContext::Embedded, host_ca()).unwrap();
        let mut h = Md5::new();
        h.update(&tar);
        for (k, v) in astrtc::image::asterisk_build_args() {
            h.update(format!("{k}={v}\n").as_bytes());
        }
        let hex: String = h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
        format!("astrtc-test/asterisk:{}-{hex}", astrtc::image::ASTERISK_VERSION)
    })
}

/// Builds the Asterisk image once per test run as [`test_image`], through `astrtc build`'s code
/// path (bollard). With a warm cache this takes about a second; on a fresh host, the whole
/// Asterisk build.
pub fn ensure_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    build_image_once(&BUILT, "Asterisk", move |docker| async move {
        astrtc::image::build(&docker, &astrtc::image::BuildContext::Embedded, host_ca(), test_image(), &|_| {}).await
    });
}

/// The sidecar image, built once per run from the astrtc binary under test.
pub fn ensure_sidecar() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    build_image_once(&BUILT, "sidecar", |docker| async move {
        let exe = assert_cmd::cargo::cargo_bin("astrtc");
        astrtc::image::build_sidecar(&docker, &exe, astrtc::image::SIDECAR_IMAGE, &|_| {}).await
    });
}

/// The TURN image (Debian's coturn), built once per run.
pub fn ensure_turn() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    build_image_once(&BUILT, "TURN", |docker| async move {
        astrtc::image::build_turn(&docker, astrtc::image::TURN_IMAGE, &|_| {}).await
    });
}

/// The guard image (fail2ban), built once per run through `astrtc build`'s code path.
pub fn ensure_guard() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    build_image_once(&BUILT, "guard", |docker| async move {
        astrtc::image::build_guard(&docker, astrtc::image::GUARD_IMAGE, &|_| {}).await
    });
}

/// The cluster's images (edge: Kamailio, relay: rtpengine, db: PostgreSQL), built once per run.
pub fn ensure_cluster_images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    build_image_once(&BUILT, "cluster", |docker| async move {
        let mut last = None;
        for which in astrtc::image::ClusterImage::ALL {
            let tag = cluster_test_image(which);
            last = Some(astrtc::image::build_cluster_image(&docker, which, &tag, &|_| {}).await?);
        }
        Ok(last.expect("three images"))
    });
}

/// The tag the tests build and run a cluster image under (the spec's `cluster.edge_image`,
/// `relay_image`, `db_image`): its name with a digest of its build context and arguments, as
/// [`test_image`] does for Asterisk — so checkouts with different images (other branches' test
/// runs on the same Docker engine) never replace each other's, and `astrtc/edge:VERSION` and the
/// like are left to `astrtc build`.
pub fn cluster_test_image(which: astrtc::image::ClusterImage) -> String {
    use md5::{Digest, Md5};
    let tar = astrtc::image::cluster_context_tar(which).unwrap();
    let mut h = Md5::new();
    h.update(&tar);
    for (k, v) in astrtc::image::cluster_build_args() {
        h.update(format!("{k}={v}\n").as_bytes());
    }
    let hex: String = h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
    let name = which.tag().rsplit_once(':').unwrap().0.rsplit('/').next().unwrap();
    format!("astrtc-test/{name}:{}-{hex}", env!("CARGO_PKG_VERSION"))
}

/// The spec lines (inside `[cluster]`) that have a test cluster run [`cluster_test_image`]s.
pub fn cluster_test_images_spec() -> String {
    use astrtc::image::ClusterImage::{Database, Edge, Relay};
    format!(
        "edge_image = {:?}\nrelay_image = {:?}\ndb_image = {:?}\n",
        cluster_test_image(Edge),
        cluster_test_image(Relay),
        cluster_test_image(Database)
    )
}

/// The monitoring profile's Prometheus image (Debian's package), built once per run.
pub fn ensure_prometheus() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    build_image_once(&BUILT, "Prometheus", |docker| async move {
        astrtc::image::build_prometheus(&docker, astrtc::image::PROMETHEUS_IMAGE, &|_| {}).await
    });
}

/// The ports a deployment on the host network listens on, all free when chosen.
#[derive(Debug, Clone, Copy)]
pub struct HostPorts {
    /// SIP over UDP.
    pub sip: u16,
    /// WSS.
    pub wss: u16,
    /// Plain HTTP on loopback.
    pub http: u16,
    /// First RTP port of a range of [`RTP_PORTS`].
    pub rtp_start: u16,
}

/// RTP ports a test deployment gets.
pub const RTP_PORTS: u16 = 100;

impl HostPorts {
    /// Free ports for one deployment.
    pub fn free() -> HostPorts {
        HostPorts {
            sip: ports::free_port(),
            wss: ports::free_port(),
            http: ports::free_port(),
            rtp_start: ports::free_range(RTP_PORTS),
        }
    }

    /// The spec's `[network]` and `[rtp]` port keys with these ports.
    pub fn apply(&self, spec_text: &str) -> String {
        spec_text
            .replace("sip_port = 15060", &format!("sip_port = {}", self.sip))
            .replace("wss_port = 18089", &format!("wss_port = {}", self.wss))
            .replace("http_port = 18088", &format!("http_port = {}", self.http))
            .replace("start = 40000", &format!("start = {}", self.rtp_start))
            .replace("end = 40999", &format!("end = {}", self.rtp_start + RTP_PORTS - 1))
    }
}

/// A rendered copy of the `host-alt-ports` fixture on free ports, so tests running at once (and
/// a `make up` stack on the default ports) never collide, running [`test_image`].
pub fn deployment() -> (tempfile::TempDir, Plan) {
    deployment_with(|spec| spec.to_string())
}

/// [`deployment`] of the fixture's spec text changed by `edit` first (a deliberately broken
/// deployment: other codecs, a public address), running [`test_image`].
pub fn deployment_with(edit: impl FnOnce(&str) -> String) -> (tempfile::TempDir, Plan) {
    let (dir, plan) = deployment_unrendered_with(edit);
    astrtc::deploy::write(&plan, &dir.path().join("deploy")).unwrap();
    (dir, plan)
}

/// [`deployment`]'s spec and plan, not rendered yet (for tests that edit the spec first).
pub fn deployment_unrendered() -> (tempfile::TempDir, Plan) {
    deployment_unrendered_with(|spec| spec.to_string())
}

fn deployment_unrendered_with(edit: impl FnOnce(&str) -> String) -> (tempfile::TempDir, Plan) {
    let dir = fixture_copy("host-alt-ports");
    let spec = dir.path().join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let moved = HostPorts::free().apply(&text);
    assert_ne!(moved, text, "the fixture's ports were not found");
    let moved = moved.replacen("\n[network]", &format!("\nimage = {:?}\n\n[network]", test_image()), 1);
    std::fs::write(&spec, edit(&moved)).unwrap();
    let plan = plan_for(&spec, astrtc::plan::HostFacts::detect()).unwrap();
    (dir, plan)
}

/// Replaces the rendered leaf in `DIR/deploy/keys` with one for `name`, from the same trusted CA
/// (a deployment whose certificate does not match its domain).
pub fn install_leaf_for(dir: &Path, plan: &Plan, name: &str) {
    let ca = LocalCa::load(&plan.tls.ca_dir).unwrap().unwrap();
    let leaf = ca.leaf(&[name.to_string()], None).unwrap();
    let keys = dir.join("deploy/keys");
    overwrite_keep_mode(&keys.join(files::KEY), &leaf.key_pem);
    overwrite_keep_mode(&keys.join(files::CERT), &leaf.chain_pem);
}

/// Rewrites a file in place (same inode, same mode), as a bind mount sees it.
pub fn overwrite_keep_mode(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// `docker compose` in a rendered directory; `down -v` when dropped.
pub struct ComposeProject {
    /// The directory holding compose.yaml.
    pub dir: PathBuf,
}

impl ComposeProject {
    /// Runs `docker compose ARGS` there.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker").arg("compose").args(args).current_dir(&self.dir).output().unwrap()
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        // Never a panic here (a panic while a test unwinds aborts the whole run).
        if std::thread::panicking() {
            // The test failed: what each service said last, in the test's own output (CI keeps
            // that output, not the artifacts).
            if let Ok(out) = Command::new("docker")
                .args(["compose", "logs", "--no-color", "--timestamps", "--tail", "40"])
                .current_dir(&self.dir)
                .output()
            {
                eprintln!("--- the last 40 lines of each service's log ---\n{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        let _ =
            Command::new("docker").args(["compose", "down", "-v", "--timeout", "5"]).current_dir(&self.dir).output();
    }
}
