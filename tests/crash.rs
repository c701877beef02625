//! Crash safety of the keys directory (`fsx::Generations`, written by `astrtc certs`), against a
//! real ACME server (Pebble):
//!
//! - `certs watch` is SIGKILLed at each failpoint of a generation switch (the first file of a
//!   generation written; the generation complete but `.live` not switched; a temporary `.live`
//!   made but not renamed; `.live` switched but old generations not removed), then restarted.
//!   After the kill the directory is consistent (the three names resolve through `.live` into one
//!   generation whose certificate and key match, `certs check` passes); after the restart the
//!   garbage is gone (the current and one older generation, no temporary files) and the
//!   certificate a TLS server loads from the directory verifies against Pebble's root.
//! - A reader checks every crt/key/pem it reads while `certs issue --force` renews 52 times back
//!   to back, starting from the plain files a render leaves: no mismatch, no read error, and
//!   every switch seen.
//!
//! Needs `pebble` (`make deps-acme`); without it these tests are counted as skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use astrtc::certs::store::key_matches;
use astrtc::certs::{cert_facts, files};
use astrtc::fsx::{failpoints, LIVE};

use crate::acme::{acme_spec, lines_of, short_lived_cert, wait_line, with_acme_lines};
use crate::common::pebble::{pebble, Pebble};
use crate::common::*;

/// Back-to-back renewals under the reader: the issue asks for at least 50 switches seen; two
/// more leave room for a reader descheduled across one (about a second) on a loaded host.
const RENEWALS: usize = 52;

/// A keys directory, checked for consistency when looked at.
#[derive(Debug)]
struct Keys {
    /// The generation `.live` names.
    live: String,
    /// `asterisk.crt` as read through its stable name.
    crt: String,
    /// Its serial.
    serial: String,
    /// Every generation directory.
    generations: BTreeSet<String>,
    /// Temporary files anywhere below the directory.
    temporaries: Vec<String>,
}

/// Looks at a keys directory and panics unless it is consistent: `asterisk.crt`, `.key` and `.pem`
/// are symlinks to `.live/NAME`, `.live` names an existing generation, each name reads what that
/// generation holds, the key belongs to the certificate and the pem is the chain then the key.
fn inspect(keys: &Path) -> Keys {
    let link = |p: PathBuf| std::fs::read_link(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let live = link(keys.join(LIVE)).to_string_lossy().into_owned();
    assert!(live.starts_with(".gen-") && !live.contains('/'), ".live -> {live}");
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    for name in [files::CERT, files::KEY, files::PEM] {
        assert_eq!(link(keys.join(name)), Path::new(LIVE).join(name), "{name} is not a symlink through .live");
        assert_eq!(read(keys.join(name)), read(keys.join(&live).join(name)), "{name} is not in {live}");
    }
    let (crt, key) = (read(keys.join(files::CERT)), read(keys.join(files::KEY)));
    let facts = cert_facts(&crt).unwrap_or_else(|e| panic!("asterisk.crt does not parse: {e}"));
    assert!(key_matches(&key, &facts.spki_der), "asterisk.key does not belong to asterisk.crt");
    assert_eq!(read(keys.join(files::PEM)), format!("{crt}{key}"), "asterisk.pem is not crt + key");
    let mut temporaries = Vec::new();
    let mut generations = BTreeSet::new();
    for entry in walk(keys) {
        let rel = entry.strip_prefix(keys).unwrap().to_string_lossy().into_owned();
        if entry.file_name().unwrap().to_string_lossy().contains(".tmp") {
            temporaries.push(rel.clone());
        }
        if entry.parent() == Some(keys) && rel.starts_with(".gen-") {
            generations.insert(rel);
        }
    }
    Keys { live, crt, serial: facts.serial, generations, temporaries }
}

/// Every path below `dir` (not following symlinks).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// `astrtc certs check` on the keys directory exits 0.
fn assert_check_passes(spec: &Path, keys: &Path) {
    let out = astrtc().args(["certs", "check", "--spec"]).arg(spec).arg("--keys").arg(keys).output().unwrap();
    assert!(out.status.success(), "certs check: {}", String::from_utf8_lossy(&out.stderr));
}

/// Loads the keys directory as Asterisk does (`asterisk.crt` as the chain, `asterisk.key`) into
/// a TLS server on loopback, handshakes with it as a browser trusting only Pebble's root would
/// (chain verified for `localhost`, the key proving possession), and returns the served leaf's
/// serial. A truncated chain, a missing intermediate or a key from another pair fails here.
fn served_serial(keys: &Path, pebble: &Pebble) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(keys.join(files::CERT)).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(keys.join(files::KEY)).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap_or_else(|e| panic!("the keys directory is not a usable TLS identity: {e}"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(Arc::new(config)).unwrap(), tcp);
        while tls.conn.is_handshaking() && tls.conn.complete_io(&mut tls.sock).is_ok() {}
    });
    let report = astrtc::verify::tls::check_tls(addr, "localhost", &pebble.root_pem())
        .unwrap_or_else(|e| panic!("the certificate served from the keys directory: {e}"));
    server.join().unwrap();
    report.leaf.serial
}

/// A child process that is SIGKILLed and reaped when dropped, also when a test fails half-way
/// (a watch parked at a failpoint, or sleeping 12 h, would otherwise outlive the test).
struct Killed(Child);

impl Killed {
    /// SIGKILL now, and wait for the process to be gone.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `astrtc certs watch` for the spec, stopping for good at `failpoint` when set.
fn spawn_watch(spec: &Path, keys: &Path, failpoint: Option<&str>) -> (Killed, Receiver<String>, Receiver<String>) {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("astrtc"));
    cmd.args(["certs", "watch", "--spec"]).arg(spec).arg("--keys").arg(keys);
    if let Some(point) = failpoint {
        cmd.env("ASTRTC_FAILPOINT", point);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    (Killed(child), out, err)
}

/// SIGKILLs `certs watch` at `point` in the middle of a renewal, checks what it left, restarts
/// it and checks that the restart cleaned up and serves a complete certificate.
fn killed_at(point: &str) {
    let Some(pebble) = pebble() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = acme_spec(&pebble, dir.path(), "http-01", "localhost", |t| with_acme_lines(t, "renew_before_days = 30"));
    let keys = dir.path().join("keys");
    // Two generations of a due certificate (10 days left, renewal 30 days before expiry): the
    // older is the previous generation, which a clean-up after the next switch must remove.
    short_lived_cert(&keys, &["localhost"], 10);
    let old = short_lived_cert(&keys, &["localhost"], 10);
    let before = inspect(&keys);
    assert_eq!(before.generations.len(), 2);

    let (mut watch, _out, err) = spawn_watch(&spec, &keys, Some(point));
    wait_line(&err, &format!("failpoint {point} reached"), Duration::from_secs(60));
    watch.kill(); // SIGKILL: no chance to clean up

    let killed = inspect(&keys);
    let switched = point == failpoints::LIVE_SWITCHED;
    if switched {
        assert_ne!(killed.live, before.live);
        assert_ne!(killed.crt, old, "switched to the new certificate");
    } else {
        assert_eq!(killed.live, before.live, "killed before the switch: .live unchanged");
        assert_eq!(killed.crt, old, "killed before the switch: the old certificate still in place");
    }
    // The kill left garbage for the restart to remove: a third generation (partial, unswitched,
    // or the one before the previous), and a temporary `.live` when killed between its creation
    // and the rename.
    let left: Vec<&String> = killed.generations.iter().chain(&killed.temporaries).collect();
    eprintln!("killed at {point}: .live -> {}; left {left:?}", killed.live);
    assert_eq!(killed.generations.len(), 3, "{left:?}");
    assert_eq!(killed.temporaries.len(), usize::from(point == failpoints::LIVE_STAGED), "{left:?}");
    assert_check_passes(&spec, &keys);

    let started = Instant::now();
    let (mut watch, out, _err) = spawn_watch(&spec, &keys, None);
    if !switched {
        // Still due: the restarted loop renews.
        wait_line(&out, "wrote ", Duration::from_secs(60));
    }
    // Pebble's 5-year certificate is not due: the loop sleeps (after a renewal, or at once).
    wait_line(&out, "next check in 12 h", Duration::from_secs(60));
    let restarted = inspect(&keys);
    eprintln!(
        "restarted after {point} in {:.1?}: .live -> {}, generations {:?}, temporaries {:?}",
        started.elapsed(),
        restarted.live,
        restarted.generations,
        restarted.temporaries
    );
    assert_eq!(restarted.generations.len(), 2, "the current and one older generation");
    assert!(restarted.generations.contains(&restarted.live));
    assert!(restarted.temporaries.is_empty());
    assert_ne!(restarted.crt, old);
    if switched {
        assert_eq!(restarted.live, killed.live, "not due after the restart: no new generation");
    }
    assert_check_passes(&spec, &keys);
    assert_eq!(served_serial(&keys, &pebble), restarted.serial);
    watch.kill();
}

#[test]
fn watch_killed_after_the_first_file_of_a_generation_restarts_clean() {
    killed_at(failpoints::GENERATION_PARTIAL);
}

#[test]
fn watch_killed_between_writing_a_generation_and_switching_restarts_clean() {
    killed_at(failpoints::GENERATION_WRITTEN);
}

#[test]
fn watch_killed_with_a_staged_live_symlink_restarts_clean() {
    killed_at(failpoints::LIVE_STAGED);
}

#[test]
fn watch_killed_right_after_the_switch_restarts_clean() {
    killed_at(failpoints::LIVE_SWITCHED);
}

#[test]
fn every_failpoint_has_a_kill_test() {
    let source = std::fs::read_to_string(file!()).unwrap();
    for point in failpoints::ALL {
        let constant = point.to_uppercase().replace('-', "_");
        assert!(source.contains(&format!("killed_at(failpoints::{constant})")), "no kill test for {point}");
    }
}

/// What the reader saw.
#[derive(Debug, Default)]
struct Reads {
    /// Rounds of reading crt, key, pem and crt again through the stable names.
    reads: u64,
    /// Rounds where the two reads of `asterisk.crt` differed: a switch happened in between, so
    /// the key and pem read meanwhile may belong to either side and are not judged.
    straddled: u64,
    /// Serials in the order seen (a new entry per switch seen).
    serials: Vec<String>,
    /// Distinct generations `.live` named.
    generations: BTreeSet<String>,
    /// Pairs that did not belong together.
    mismatches: Vec<String>,
    /// Failed reads and unparsable certificates, each with what was being read.
    errors: Vec<String>,
}

/// Reads `asterisk.crt`, `asterisk.key`, `asterisk.pem` and `asterisk.crt` again, through the
/// names Asterisk opens, until `stop`. When both reads of the certificate agree, nothing switched
/// in between (generations only move forward and every one holds a new certificate), so the key
/// must belong to it and the pem must be it followed by the key.
fn reader(keys: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Reads> {
    std::thread::spawn(move || {
        let mut r = Reads::default();
        let mut judged: Option<(String, String, String)> = None;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(gen) = std::fs::read_link(keys.join(LIVE)) {
                r.generations.insert(gen.to_string_lossy().into_owned());
            }
            let read = |name: &str| std::fs::read_to_string(keys.join(name)).map_err(|e| format!("{name}: {e}"));
            let round = (read(files::CERT), read(files::KEY), read(files::PEM), read(files::CERT));
            r.reads += 1;
            let (crt, key, pem, again) = match round {
                (Ok(c), Ok(k), Ok(p), Ok(a)) => (c, k, p, a),
                (c, k, p, a) => {
                    let failed: Vec<String> = [c.err(), k.err(), p.err(), a.err()].into_iter().flatten().collect();
                    r.errors.push(format!("read {}: {}", r.reads, failed.join("; ")));
                    continue;
                }
            };
            if crt != again {
                r.straddled += 1;
                continue;
            }
            let triple = (crt, key, pem);
            if judged.as_ref() == Some(&triple) {
                continue; // the same files as last time, already judged
            }
            let (crt, key, pem) = &triple;
            match cert_facts(crt) {
                Err(e) => r.errors.push(format!("read {}: asterisk.crt does not parse: {e}", r.reads)),
                Ok(facts) => {
                    if !key_matches(key, &facts.spki_der) {
                        r.mismatches.push(format!("read {}: asterisk.key is not the key of {}", r.reads, facts.serial));
                    }
                    if *pem != format!("{crt}{key}") {
                        r.mismatches.push(format!("read {}: asterisk.pem is not asterisk.crt + .key", r.reads));
                    }
                    if r.serials.last() != Some(&facts.serial) {
                        r.serials.push(facts.serial);
                    }
                }
            }
            judged = Some(triple);
        }
        r
    })
}

#[test]
fn a_reader_never_sees_a_broken_pair_during_back_to_back_renewals() {
    let Some(pebble) = pebble() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = acme_spec(&pebble, dir.path(), "http-01", "localhost", |t| with_acme_lines(t, "renew_before_days = 30"));
    let keys = dir.path().join("keys");
    // Plain files, as a render leaves them: the first renewal also turns them into symlinks.
    let scratch = tempfile::tempdir().unwrap();
    short_lived_cert(scratch.path(), &["localhost"], 10);
    std::fs::create_dir_all(&keys).unwrap();
    for name in [files::CERT, files::KEY, files::PEM] {
        std::fs::copy(scratch.path().join(name), keys.join(name)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let checker = reader(keys.clone(), stop.clone());
    let started = Instant::now();
    for n in 1..=RENEWALS {
        let out = astrtc()
            .args(["certs", "issue", "--force", "--spec"])
            .arg(&spec)
            .arg("--keys")
            .arg(&keys)
            .output()
            .unwrap();
        if !out.status.success() {
            stop.store(true, Ordering::Relaxed);
            panic!("renewal {n} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), pebble.log());
        }
    }
    let elapsed = started.elapsed();
    // Let the reader see the last generation for a while.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let r = checker.join().unwrap();
    let switches = r.serials.len().saturating_sub(1);
    eprintln!(
        "crash safety: {RENEWALS} renewals in {elapsed:.1?}; {} reads ({} straddled a switch), {switches} switches \
         seen ({} generations), {} mismatches, {} read errors",
        r.reads,
        r.straddled,
        r.generations.len(),
        r.mismatches.len(),
        r.errors.len()
    );
    let first = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join("\n  ");
    assert!(r.mismatches.is_empty(), "mismatched pairs:\n  {}", first(&r.mismatches));
    assert!(r.errors.is_empty(), "read errors:\n  {}", first(&r.errors));
    assert!((50..=RENEWALS).contains(&switches), "{switches} switches seen in {RENEWALS} renewals");
    let last = inspect(&keys);
    assert_eq!(r.serials.last(), Some(&last.serial));
    assert_eq!(last.generations.len(), 2);
    assert!(last.temporaries.is_empty());
    assert_check_passes(&spec, &keys);
    assert_eq!(served_serial(&keys, &pebble), last.serial);
}
