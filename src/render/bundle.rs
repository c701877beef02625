//! The bundle: every output file of a deployment in memory (path, bytes, public or secret), and
//! its two ways to disk — written (the directories containers mount switched by generations, the
//! chart replaced as a whole, secret files 0640 with the plan's group), or compared with what is
//! there (`render --check`: a unified diff for public files, secret files named but never shown).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::RenderError;
use crate::fsx;
use crate::plan::SecretAccess;

/// Whether a file holds secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Mode 0644; shown in diffs.
    Public,
    /// Mode 0640, group from the plan; never shown in diffs or logs.
    Secret,
    /// Mode 0750, group from the plan; never shown (a user's DNS hook may hold API tokens).
    SecretExecutable,
}

impl FileKind {
    /// The file mode it is written with.
    pub fn mode(self) -> u32 {
        match self {
            FileKind::Public => 0o644,
            FileKind::Secret => 0o640,
            FileKind::SecretExecutable => 0o750,
        }
    }
}

/// One output file.
#[derive(Clone)]
pub struct BundleFile {
    /// The bytes written to disk.
    pub bytes: Vec<u8>,
    /// Public or secret.
    pub kind: FileKind,
}

/// Every file of a deployment, in memory, keyed by path relative to the output directory.
#[derive(Clone, Default)]
pub struct Bundle {
    files: BTreeMap<PathBuf, BundleFile>,
    dirs: BTreeSet<PathBuf>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle").field("files", &self.files.keys().collect::<Vec<_>>()).finish()
    }
}

impl Bundle {
    /// Adds (or replaces) a file.
    pub fn add(&mut self, path: impl Into<PathBuf>, bytes: Vec<u8>, kind: FileKind) {
        self.files.insert(path.into(), BundleFile { bytes, kind });
    }

    /// Adds an empty directory (a mount point).
    pub fn add_dir(&mut self, path: impl Into<PathBuf>) {
        self.dirs.insert(path.into());
    }

    /// The files, by relative path.
    pub fn files(&self) -> &BTreeMap<PathBuf, BundleFile> {
        &self.files
    }

    /// One file's text, if present and UTF-8.
    pub fn text(&self, path: &str) -> Option<&str> {
        self.files.get(Path::new(path)).and_then(|f| std::str::from_utf8(&f.bytes).ok())
    }

    /// Writes the bundle to `out`. The directories containers mount ([`LIVE_DIRS`]) are never
    /// replaced: each gets a new generation switched in with one symlink rename
    /// ([`fsx::Generations`]), so a running container sees the old set or the new one, never a
    /// mix, and without being recreated; a directory whose files did not change is left alone.
    /// The chart (`helm/`) is replaced as a whole ([`fsx::replace_dir`]); every other file is
    /// written atomically on its own; what the bundle no longer has is removed. On an error the
    /// directories not yet reached are untouched, and each one reached is whole (old or new).
    pub fn write_atomic(&self, out: &Path, access: SecretAccess) -> Result<(), RenderError> {
        let werr = |path: &Path, source| RenderError::Write { path: path.to_path_buf(), source };
        fs::create_dir_all(out).map_err(|e| werr(out, e))?;
        for dir in LIVE_DIRS {
            self.switch_live_dir(out, dir, access)?;
        }
        let chart_root = Path::new(CHART_ROOT);
        if self.files.keys().any(|p| p.starts_with(chart_root)) {
            fsx::replace_dir(&out.join(chart_root), werr, |root| {
                for (rel, file) in self.files.iter().filter(|(p, _)| p.starts_with(chart_root)) {
                    let p = root.join(rel.strip_prefix(chart_root).expect("below the chart root"));
                    if let Some(d) = p.parent() {
                        fs::create_dir_all(d).map_err(|e| werr(d, e))?;
                    }
                    write_file(&p, file, access).map_err(|e| werr(&p, e))?;
                }
                Ok(())
            })?;
        }
        for (rel, file) in &self.files {
            let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
            if LIVE_DIRS.contains(&top.as_str()) || rel.starts_with(chart_root) {
                continue;
            }
            let p = out.join(rel);
            if let Some(d) = p.parent() {
                fs::create_dir_all(d).map_err(|e| werr(d, e))?;
            }
            if fs::read(&p).ok().as_deref() == Some(file.bytes.as_slice()) && mode_of(&p) == Some(file.kind.mode()) {
                continue;
            }
            fsx::write_atomic(&p, &file.bytes, file.kind.mode()).map_err(|e| werr(&p, e))?;
            if let (FileKind::Secret | FileKind::SecretExecutable, Some(gid)) = (file.kind, access.chgrp()) {
                std::os::unix::fs::chown(&p, None, Some(gid)).map_err(|e| werr(&p, e))?;
            }
        }
        for dir in &self.dirs {
            let p = out.join(dir);
            fs::create_dir_all(&p).map_err(|e| werr(&p, e))?;
        }
        // What the bundle no longer has (files added by hand, outputs of an older astrtc).
        let mut on_disk = BTreeSet::new();
        walk(out, out, &mut on_disk)?;
        for rel in on_disk.difference(&self.files.keys().cloned().collect()) {
            let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
            if !LIVE_DIRS.contains(&top.as_str()) {
                let _ = fs::remove_file(out.join(rel));
            }
        }
        fsx::sync_dir(out);
        Ok(())
    }

    /// One generation-switched directory: a new generation when its files changed.
    fn switch_live_dir(&self, out: &Path, dir: &str, access: SecretAccess) -> Result<(), RenderError> {
        let werr = |path: &Path, source| RenderError::Write { path: path.to_path_buf(), source };
        let prefix = Path::new(dir);
        let mine: Vec<(String, &BundleFile)> = self
            .files
            .iter()
            .filter_map(|(p, f)| Some((p.strip_prefix(prefix).ok()?.to_str()?.to_string(), f)))
            .collect();
        let path = out.join(dir);
        let wanted = self.dirs.contains(prefix);
        if mine.is_empty() && !wanted {
            if path.exists() {
                fs::remove_dir_all(&path).map_err(|e| werr(&path, e))?;
            }
            return Ok(());
        }
        let generations = fsx::Generations::new(&path, access.chgrp());
        let same = generations.names() == mine.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
            && mine.iter().all(|(name, f)| {
                let p = path.join(name);
                fs::read(&p).ok().as_deref() == Some(f.bytes.as_slice()) && mode_of(&p) == Some(f.kind.mode())
            });
        if same {
            return Ok(());
        }
        if mine.is_empty() {
            fs::create_dir_all(&path).map_err(|e| werr(&path, e))?;
            for name in generations.names() {
                let _ = fs::remove_file(path.join(name));
            }
            return Ok(());
        }
        let files: Vec<fsx::GenerationFile<'_>> = mine
            .iter()
            .map(|(name, f)| fsx::GenerationFile { name: name.as_str(), bytes: &f.bytes, mode: f.kind.mode() })
            .collect();
        generations.switch(&files).map_err(|e| werr(&path, e))
    }

    /// Compares the bundle with `out`. Secret files are compared but never shown.
    pub fn check(&self, out: &Path) -> Result<CheckReport, RenderError> {
        let mut changes = Vec::new();
        let mut on_disk = BTreeSet::new();
        if out.exists() {
            walk(out, out, &mut on_disk)?;
        }
        for (rel, file) in &self.files {
            let path = out.join(rel);
            let display = rel.display().to_string();
            if !on_disk.contains(rel) {
                changes.push(Change::Added { path: display });
                continue;
            }
            let old = fs::read(&path).map_err(|source| RenderError::Read { path: path.clone(), source })?;
            if old != file.bytes {
                let diff = match file.kind {
                    FileKind::Secret | FileKind::SecretExecutable => None,
                    FileKind::Public => Some(
                        similar::TextDiff::from_lines(
                            String::from_utf8_lossy(&old),
                            String::from_utf8_lossy(&file.bytes),
                        )
                        .unified_diff()
                        .context_radius(3)
                        .header(&format!("a/{display}"), &format!("b/{display}"))
                        .to_string(),
                    ),
                };
                changes.push(Change::Modified { path: display.clone(), diff });
            }
            let mode = fs::metadata(&path)
                .map_err(|source| RenderError::Read { path: path.clone(), source })?
                .permissions()
                .mode()
                & 0o777;
            if mode != file.kind.mode() {
                changes.push(Change::Mode { path: display, on_disk: mode, wanted: file.kind.mode() });
            }
        }
        for rel in on_disk.difference(&self.files.keys().cloned().collect()) {
            changes.push(Change::Removed { path: rel.display().to_string() });
        }
        Ok(CheckReport { changes })
    }
}

/// The directories of the output that containers mount, each switched by generations: the
/// Asterisk configs, the certificate, the ACME sidecar's settings, the monitoring profile's
/// Prometheus settings. Their files are flat (no subdirectories).
pub const LIVE_DIRS: &[&str] = &["asterisk", "keys", "certs", "prometheus"];

/// The chart, replaced as a whole.
const CHART_ROOT: &str = "helm";

fn mode_of(path: &Path) -> Option<u32> {
    fs::metadata(path).ok().map(|m| m.permissions().mode() & 0o777)
}

/// Writes one file of a staged tree (the chart) with its mode and group.
fn write_file(p: &Path, file: &BundleFile, access: SecretAccess) -> std::io::Result<()> {
    let mut f = fs::File::create(p)?;
    fs::set_permissions(p, fs::Permissions::from_mode(file.kind.mode()))?;
    if let (FileKind::Secret | FileKind::SecretExecutable, Some(gid)) = (file.kind, access.chgrp()) {
        std::os::unix::fs::chown(p, None, Some(gid))?;
    }
    f.write_all(&file.bytes)?;
    f.sync_all()
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) -> Result<(), RenderError> {
    let rerr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RenderError::Read { path, source }
    };
    for entry in fs::read_dir(dir).map_err(rerr(dir))? {
        let entry = entry.map_err(rerr(dir))?;
        let path = entry.path();
        if fsx::Generations::is_internal(&entry.file_name()) {
            continue; // `astrtc certs` generations in keys/: reached through the symlinks
        }
        let meta = fs::symlink_metadata(&path).map_err(rerr(&path))?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.insert(path.strip_prefix(root).expect("below root").to_path_buf());
        }
    }
    Ok(())
}

/// One difference between the rendered bundle and the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The file would be created.
    Added {
        /// Relative path.
        path: String,
    },
    /// The file would be removed.
    Removed {
        /// Relative path.
        path: String,
    },
    /// The contents differ; `diff` is `None` for secret files.
    Modified {
        /// Relative path.
        path: String,
        /// Unified diff (public files only).
        diff: Option<String>,
    },
    /// The mode differs.
    Mode {
        /// Relative path.
        path: String,
        /// Mode found.
        on_disk: u32,
        /// Mode astrtc writes.
        wanted: u32,
    },
}

/// The outcome of `render --check`.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Every difference; empty when up to date.
    pub changes: Vec<Change>,
}

impl CheckReport {
    /// True when the output directory matches the spec.
    pub fn is_up_to_date(&self) -> bool {
        self.changes.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            match c {
                Change::Added { path } => writeln!(f, "missing: {path}")?,
                Change::Removed { path } => writeln!(f, "not generated by the spec (would be removed): {path}")?,
                Change::Modified { diff: Some(d), .. } => write!(f, "{d}")?,
                Change::Modified { path, diff: None } => writeln!(f, "differs: {path} (secret; contents not shown)")?,
                Change::Mode { path, on_disk, wanted } => {
                    writeln!(f, "mode: {path} is {on_disk:o}, astrtc writes {wanted:o}")?
                }
            }
        }
        Ok(())
    }
}

/// The owner gid of a file (for tests and diagnostics).
pub fn file_gid(path: &Path) -> std::io::Result<u32> {
    Ok(fs::metadata(path)?.gid())
}
