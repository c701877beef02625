//! Every way astrtc puts files on disk, in one place, each with the guarantee a reader gets.
//!
//! Owns the on-disk protocols; callers decide *what* to write, this module decides *how*:
//!
//! - [`write_atomic`]: one file. The bytes go to a temporary file in the same directory, created
//!   with its final mode (so a secret is never readable by others, not even for an instant),
//!   fsynced, then renamed over the target; the directory is fsynced after. A reader sees the old
//!   file or the new one, never a part.
//! - [`replace_dir`]: a whole directory tree (`deploy/`). It is staged in a temporary directory
//!   beside the target, fsynced file by file, then swapped in with one
//!   `renameat2(RENAME_EXCHANGE)` (or renamed, the first time). The target is always the old
//!   tree or the new tree, never a mix; on any error the old tree is untouched.
//! - [`Generations`]: files that a running process reads while they are replaced (certificates
//!   and keys, Asterisk's configs: every directory a container mounts). Each set is written into its own generation directory
//!   (`.gen-<nanoseconds>/`, every file through [`write_atomic`]), then one symlink, `.live`, is
//!   switched to it with a single `rename(2)`. The names readers open are stable symlinks
//!   through it (`asterisk.crt -> .live/asterisk.crt`): Kubernetes' `..data` scheme for Secret
//!   volumes. A reader can never pair one generation's certificate with another's key. The
//!   previous generation is kept (a reader that resolved `.live` just before the switch can
//!   still open its files); older ones are removed after the switch. What a writer killed at
//!   any point leaves behind (a partial or never-switched generation, a temporary symlink, an
//!   old generation not yet removed) is removed by [`Generations::tidy`] and before every
//!   switch, so at most the current and one older generation remain. Names the new generation
//!   does not have are removed right after the switch. Writers take an exclusive
//!   `flock` on `.lock` for the whole switch (released by the kernel when a writer dies), so two
//!   writers (the sidecar's loop and a manual `certs issue`) never remove each other's work.
//!
//! Nothing here knows about specs, plans or certificates.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically with `mode` (see the module header).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = parent_of(path);
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    sync_dir(&dir);
    Ok(())
}

/// The directory a path lives in (`.` for a bare file name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsyncs a directory, so that renames in it survive a crash. Best effort: some filesystems
/// refuse to open directories for syncing.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Replaces the directory `out` as a whole (see the module header): `fill` writes the new tree
/// into the staging directory it is given; only if it succeeds is the tree swapped in.
pub fn replace_dir<E>(
    out: &Path,
    io_error: impl Fn(&Path, std::io::Error) -> E,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let parent = parent_of(out);
    fs::create_dir_all(&parent).map_err(|e| io_error(&parent, e))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "deploy".into());
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.astrtc-"))
        .tempdir_in(&parent)
        .map_err(|e| io_error(&parent, e))?;
    let root = staging.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(|e| io_error(root, e))?;
    fill(root)?;
    sync_dir(root);
    if out.exists() {
        exchange(root, out).map_err(|e| io_error(out, e))?;
        // `root` now holds the previous tree; the TempDir guard removes it.
    } else {
        let kept = staging.keep();
        fs::rename(&kept, out).map_err(|e| io_error(out, e))?;
    }
    sync_dir(&parent);
    Ok(())
}

/// Swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths; the call touches no other memory.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One file of a generation: its name, contents and mode.
pub struct GenerationFile<'a> {
    /// File name inside the generation (and of the stable symlink beside `.live`).
    pub name: &'a str,
    /// Contents.
    pub bytes: &'a [u8],
    /// Mode.
    pub mode: u32,
}

/// A directory whose files are replaced by generation switches (see the module header).
#[derive(Debug, Clone)]
pub struct Generations {
    dir: PathBuf,
    /// Group given to the generation directory and its files, when set (only root may).
    group: Option<u32>,
}

/// The symlink that names the current generation.
pub const LIVE: &str = ".live";
/// The file writers `flock` while they change the directory.
pub const LOCK: &str = ".lock";
const GEN_PREFIX: &str = ".gen-";

/// Names of the test-only failpoints in a generation switch, in the order a switch reaches them.
/// With `ASTRTC_FAILPOINT` set to one of them the writer prints `failpoint NAME reached` to
/// stderr and stops there for good, so a test can kill it at exactly that moment (the
/// crash-safety tests in `tests/crash.rs` do).
pub mod failpoints {
    /// The first file of the new generation is written, the others are not.
    pub const GENERATION_PARTIAL: &str = "generation-partial";
    /// The new generation directory is complete; `.live` still names the previous one.
    pub const GENERATION_WRITTEN: &str = "generation-written";
    /// A temporary symlink to the new generation is made beside `.live`, not yet renamed over it.
    pub const LIVE_STAGED: &str = "live-staged";
    /// `.live` names the new generation; the old generations are not cleaned up yet.
    pub const LIVE_SWITCHED: &str = "live-switched";
    /// All of them, in order.
    pub const ALL: [&str; 4] = [GENERATION_PARTIAL, GENERATION_WRITTEN, LIVE_STAGED, LIVE_SWITCHED];
}

fn failpoint(name: &str) {
    if std::env::var_os("ASTRTC_FAILPOINT").is_some_and(|v| v == name) {
        eprintln!("failpoint {name} reached");
        loop {
            std::thread::park();
        }
    }
}

/// The time stamp in a generation directory's name.
fn stamp_of(name: &str) -> Option<u128> {
    name.strip_prefix(GEN_PREFIX).and_then(|s| s.parse().ok())
}

impl Generations {
    /// The generation-switched directory `dir`; files get `group` when it is set.
    pub fn new(dir: &Path, group: Option<u32>) -> Self {
        Generations { dir: dir.to_path_buf(), group }
    }

    /// Whether a directory entry is part of the generation machinery (not a file readers open).
    pub fn is_internal(name: &OsStr) -> bool {
        let name = name.to_string_lossy();
        name == LIVE || name == LOCK || name.starts_with(GEN_PREFIX)
    }

    /// Whether `name` in the directory is a plain file (a layout from before generations).
    pub fn is_plain_file(&self, name: &str) -> bool {
        fs::symlink_metadata(self.dir.join(name)).is_ok_and(|m| m.file_type().is_file())
    }

    /// Writes `files` as a new generation and switches `.live` to it; then points each file's
    /// stable name at `.live/NAME` (replacing plain files of an older layout) and removes
    /// generations older than the previous one. Holds the lock throughout, and first removes
    /// what a killed writer left (see [`Generations::tidy`]).
    pub fn switch(&self, files: &[GenerationFile<'_>]) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let _lock = self.lock()?;
        self.remove_garbage();
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let gen_name = format!("{GEN_PREFIX}{stamp}");
        let gen = self.dir.join(&gen_name);
        fs::create_dir(&gen)?;
        fs::set_permissions(&gen, fs::Permissions::from_mode(0o750))?;
        self.chgrp(&gen)?;
        for (i, f) in files.iter().enumerate() {
            let path = gen.join(f.name);
            write_atomic(&path, f.bytes, f.mode)?;
            self.chgrp(&path)?;
            if i == 0 {
                failpoint(failpoints::GENERATION_PARTIAL);
            }
        }
        sync_dir(&gen);
        failpoint(failpoints::GENERATION_WRITTEN);
        let previous = fs::read_link(self.dir.join(LIVE)).ok();
        replace_symlink(&self.dir, LIVE, Path::new(&gen_name), Some(failpoints::LIVE_STAGED))?;
        for f in files {
            let target = Path::new(LIVE).join(f.name);
            if fs::read_link(self.dir.join(f.name)).ok().as_deref() != Some(&target) {
                replace_symlink(&self.dir, f.name, &target, None)?;
            }
        }
        self.remove_stale_names(files);
        sync_dir(&self.dir);
        failpoint(failpoints::LIVE_SWITCHED);
        self.remove_except(Some(Path::new(&gen_name)), previous.as_deref());
        Ok(())
    }

    /// The names readers open, as they stand: every entry that is not part of the generation
    /// machinery.
    pub fn names(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| !Self::is_internal(n) && !n.to_string_lossy().contains(".tmp"))
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// After a switch: removes the names the new generation does not have (a symlink into `.live`
    /// that would dangle, a plain file or directory of an older layout), so readers see exactly
    /// the new set.
    fn remove_stale_names(&self, files: &[GenerationFile<'_>]) {
        for name in self.names() {
            if files.iter().any(|f| f.name == name) {
                continue;
            }
            let path = self.dir.join(&name);
            let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            let _ = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }

    /// Removes what a writer killed mid-switch left behind: generations other than the one
    /// `.live` names and the newest one older than it (a partial or never-switched generation
    /// is always newer than `.live`: every switch starts by removing those), and temporary
    /// symlinks. Takes the writers' lock; a directory that does not exist is left alone.
    pub fn tidy(&self) -> std::io::Result<()> {
        if !self.dir.is_dir() {
            return Ok(());
        }
        let _lock = self.lock()?;
        self.remove_garbage();
        Ok(())
    }

    /// The writers' lock: an exclusive `flock` on `.lock`, held until the file is dropped (or the
    /// process dies).
    fn lock(&self) -> std::io::Result<fs::File> {
        use std::os::fd::AsRawFd;
        let path = self.dir.join(LOCK);
        let file = match fs::OpenOptions::new().append(true).create(true).mode(0o644).open(&path) {
            Ok(f) => f,
            // Made by another user (root running `certs issue` by hand): flock needs only a read.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => fs::File::open(&path)?,
            Err(e) => return Err(e),
        };
        loop {
            // SAFETY: `file` is an open descriptor for the whole call; flock touches no memory.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(file);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn chgrp(&self, path: &Path) -> std::io::Result<()> {
        if let Some(gid) = self.group {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        Ok(())
    }

    /// [`Generations::tidy`] with the lock held.
    fn remove_garbage(&self) {
        let current = fs::read_link(self.dir.join(LIVE)).ok();
        let current_stamp = current.as_deref().and_then(Path::to_str).and_then(stamp_of);
        let previous = current_stamp.and_then(|now| {
            fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    stamp_of(&name).filter(|s| *s < now).map(|s| (s, name))
                })
                .max()
                .map(|(_, name)| PathBuf::from(name))
        });
        self.remove_except(current.as_deref(), previous.as_deref());
    }

    /// Removes generation directories other than `current` and `previous`, and temporary
    /// files a killed writer left behind.
    fn remove_except(&self, current: Option<&Path>, previous: Option<&Path>) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = [current, previous].contains(&Some(Path::new(&name)));
            if name.starts_with(GEN_PREFIX) && !keep {
                let _ = fs::remove_dir_all(entry.path());
            } else if name.starts_with('.') && name.contains(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Points `dir/name` at `target` with one rename, whatever `dir/name` was before; stops at
/// `staged` (a failpoint) between making the temporary symlink and the rename.
fn replace_symlink(dir: &Path, name: &str, target: &Path, staged: Option<&str>) -> std::io::Result<()> {
    let tmp: PathBuf = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Some(point) = staged {
        failpoint(point);
    }
    fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn atomic_write_creates_with_its_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode(&p), 0o640);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn replace_dir_swaps_whole_trees_and_keeps_the_old_one_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("deploy");
        let io = |_: &Path, e: std::io::Error| e.to_string();
        replace_dir(&out, io, |root| fs::write(root.join("a"), "1").map_err(|e| e.to_string())).unwrap();
        replace_dir(&out, io, |root| fs::write(root.join("b"), "2").map_err(|e| e.to_string())).unwrap();
        assert!(!out.join("a").exists() && out.join("b").exists());
        let err = replace_dir(&out, io, |root| {
            fs::write(root.join("c"), "3").unwrap();
            Err("boom".to_string())
        });
        assert_eq!(err.unwrap_err(), "boom");
        assert!(out.join("b").exists() && !out.join("c").exists(), "the old tree stays on error");
        // Only the output directory is left beside it: no staging directories.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn generations_switch_with_one_symlink_and_old_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let g = Generations::new(dir.path(), None);
        fs::write(dir.path().join("x.crt"), "plain").unwrap();
        assert!(g.is_plain_file("x.crt"));
        for i in 0..4 {
            let (crt, key) = (format!("crt{i}"), format!("key{i}"));
            g.switch(&[
                GenerationFile { name: "x.key", bytes: key.as_bytes(), mode: 0o640 },
                GenerationFile { name: "x.crt", bytes: crt.as_bytes(), mode: 0o644 },
            ])
            .unwrap();
            assert_eq!(fs::read_to_string(dir.path().join("x.crt")).unwrap(), crt);
            assert_eq!(fs::read_to_string(dir.path().join("x.key")).unwrap(), key);
        }
        let gens = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(GEN_PREFIX))
            .count();
        assert_eq!(gens, 2, "current and previous generation kept");
        assert!(!g.is_plain_file("x.crt"));
        assert!(fs::symlink_metadata(dir.path().join("x.crt")).unwrap().file_type().is_symlink());
        assert_eq!(mode(&dir.path().join("x.key")), 0o640);
    }

    #[test]
    fn a_switch_removes_names_the_new_generation_does_not_have() {
        let dir = tempfile::tempdir().unwrap();
        let g = Generations::new(dir.path(), None);
        fs::create_dir(dir.path().join("keys")).unwrap(); // a mount point of an older layout
        switch_pair(&g, 1).unwrap();
        g.switch(&[GenerationFile { name: "x.crt", bytes: b"only", mode: 0o644 }]).unwrap();
        assert_eq!(g.names(), ["x.crt"], "a dangling x.key or the old directory is left");
        assert_eq!(fs::read_to_string(dir.path().join("x.crt")).unwrap(), "only");
    }

    /// Switches to a generation of the test pair: `x.crt` and `x.key` carry the same number.
    fn switch_pair(g: &Generations, n: u32) -> std::io::Result<()> {
        let (key, crt) = (format!("key{n}"), format!("crt{n}"));
        g.switch(&[
            GenerationFile { name: "x.key", bytes: key.as_bytes(), mode: 0o640 },
            GenerationFile { name: "x.crt", bytes: crt.as_bytes(), mode: 0o644 },
        ])
    }

    fn entries(dir: &Path) -> std::collections::BTreeSet<String> {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn tidy_removes_what_killed_writers_left_and_keeps_the_current_and_previous_generation() {
        let dir = tempfile::tempdir().unwrap();
        let g = Generations::new(dir.path(), None);
        g.tidy().unwrap(); // nothing there yet: nothing to do
        switch_pair(&g, 1).unwrap();
        let previous = fs::read_link(dir.path().join(LIVE)).unwrap().to_string_lossy().into_owned();
        switch_pair(&g, 2).unwrap();
        let current = fs::read_link(dir.path().join(LIVE)).unwrap().to_string_lossy().into_owned();
        let expected = entries(dir.path());
        assert_eq!(expected.len(), 6, "{expected:?}"); // .live .lock x.crt x.key and two generations
                                                       // What killed writers leave: a generation never switched to, a partial one (with a
                                                       // temporary file), a staged `.live`, and an old generation a kill kept from removal.
        let now = stamp_of(&current).unwrap();
        fs::create_dir(dir.path().join(format!("{GEN_PREFIX}{}", now + 1))).unwrap();
        let partial = dir.path().join(format!("{GEN_PREFIX}{}", now + 2));
        fs::create_dir(&partial).unwrap();
        fs::write(partial.join(".x.key.tmp1"), "k").unwrap();
        std::os::unix::fs::symlink(format!("{GEN_PREFIX}{}", now + 2), dir.path().join("..live.tmp1")).unwrap();
        fs::create_dir(dir.path().join(format!("{GEN_PREFIX}{}", stamp_of(&previous).unwrap() - 1))).unwrap();
        g.tidy().unwrap();
        assert_eq!(entries(dir.path()), expected);
        assert!(expected.contains(&previous) && expected.contains(&current));
        assert_eq!(fs::read_to_string(dir.path().join("x.key")).unwrap(), "key2");
    }

    #[test]
    fn a_second_writer_waits_for_the_first_to_finish_or_die() {
        let dir = tempfile::tempdir().unwrap();
        let g = Generations::new(dir.path(), None);
        switch_pair(&g, 1).unwrap();
        // The first writer holds the lock (as one parked at a failpoint, or mid-issuance would).
        let held = g.lock().unwrap();
        let (second, tidier) = (g.clone(), g.clone());
        let switching = std::thread::spawn(move || switch_pair(&second, 2));
        let tidying = std::thread::spawn(move || tidier.tidy());
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!switching.is_finished() && !tidying.is_finished(), "a writer went ahead without the lock");
        assert_eq!(fs::read_to_string(dir.path().join("x.crt")).unwrap(), "crt1");
        drop(held); // the first writer finishes (or is killed: the kernel releases its flock)
        switching.join().unwrap().unwrap();
        tidying.join().unwrap().unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("x.crt")).unwrap(), "crt2");
    }
}
