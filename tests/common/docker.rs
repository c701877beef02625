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

/// Builds the Asterisk image once per test run, through `astrtc build`'s code path (bollard).
/// With a warm cache this takes about a second; on a fresh host, the whole Asterisk build.
pub fn ensure_image(tag: &str) {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let tag = tag.to_string();
    build_image_once(&BUILT, "Asterisk", move |docker| async move {
        let ca = Path::new(astrtc::image::HOST_CA_BUNDLE);
        let ca = ca.exists().then_some(ca);
        astrtc::image::build(&docker, &astrtc::image::BuildContext::Embedded, ca, &tag, &|_| {}).await
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
/// a `make up` stack on the default ports) never collide.
pub fn deployment() -> (tempfile::TempDir, Plan) {
    deployment_with(|spec| spec.to_string())
}

/// The Asterisk image tag for tests, named by the contents of the build context this astrtc
/// embeds: a run never starts an image built from another checkout's Dockerfile, runtime scripts
/// or demo phone (worktrees and CI on one engine share tags such as `astrtc/asterisk:22.10.1`).
pub fn test_image() -> String {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        use md5::{Digest, Md5};
        let tar = astrtc::image::context_tar(&astrtc::image::BuildContext::Embedded, None).unwrap();
        let hash: String = Md5::digest(&tar).iter().take(6).map(|b| format!("{b:02x}")).collect();
        format!("astrtc-test/asterisk:{}-{hash}", astrtc::image::ASTERISK_VERSION)
    })
    .clone()
}

/// [`deployment`] of the fixture's spec text changed by `edit` first (a deliberately broken
/// deployment: other codecs, a public address), running [`test_image`].
pub fn deployment_with(edit: impl FnOnce(&str) -> String) -> (tempfile::TempDir, Plan) {
    let dir = fixture_copy("host-alt-ports");
    let spec = dir.path().join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let moved = HostPorts::free().apply(&text);
    assert_ne!(moved, text, "the fixture's ports were not found");
    let moved = moved.replacen("\n[network]", &format!("\nimage = {:?}\n\n[network]", test_image()), 1);
    std::fs::write(&spec, edit(&moved)).unwrap();
    let plan = plan_for(&spec, astrtc::plan::HostFacts::detect()).unwrap();
    astrtc::deploy::write(&plan, &dir.path().join("deploy")).unwrap();
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
        let _ = self.run(&["down", "-v", "--timeout", "5"]);
    }
}
