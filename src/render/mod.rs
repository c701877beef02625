//! Rendering: plan → [`Bundle`] (every output file in memory) → disk, atomically, or a
//! comparison with what is on disk (`render --check`).
//!
//! Owns: the bundle, its atomic write (everything is staged in a temporary directory beside the
//! output and swapped in with one `renameat2(RENAME_EXCHANGE)`, so `deploy/` is always either the
//! old or the new whole), file modes and ownership of secret files, and the unified diff of
//! `--check`. Renderers only format what the plan resolved.

pub mod asterisk;
pub mod compose;
pub mod helm;
pub mod templates;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use minijinja::Environment;
use thiserror::Error;

use crate::certs::{files, CertLayout};
use crate::plan::{Plan, SecretAccess};

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
    /// Its contents.
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

/// Errors while rendering or writing outputs. All mean exit code 1.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum RenderError {
    /// A template failed; this is a bug in astrtc, not in the spec.
    #[error("failed to render {name}")]
    #[diagnostic(help("this is a bug in astrtc; please report it with the spec that caused it"))]
    Template {
        /// Template name.
        name: String,
        /// Why.
        #[source]
        source: minijinja::Error,
    },
    /// Writing the output failed; the previous output is untouched.
    #[error("failed to write {}", path.display())]
    #[diagnostic(help("the previous output directory was left as it was"))]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the existing output failed.
    #[error("failed to read {}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn render_template(
    env: &Environment<'_>,
    name: &str,
    ctx: &minijinja::Value,
) -> Result<Vec<u8>, RenderError> {
    let tmpl = env.get_template(name).map_err(|source| RenderError::Template { name: name.into(), source })?;
    let text = tmpl.render(ctx).map_err(|source| RenderError::Template { name: name.into(), source })?;
    Ok(text.into_bytes())
}

/// Renders every output of a plan; `certs` are the WSS certificate files for `keys/` (in ACME
/// mode, those `astrtc certs issue` wrote, carried over; `None` before the first issuance).
pub fn render(plan: &Plan, certs: Option<&CertLayout>) -> Result<Bundle, RenderError> {
    let env = templates::environment();
    let mut bundle = Bundle::default();
    asterisk::render(&env, plan, &mut bundle)?;
    compose::render(&env, plan, &mut bundle)?;
    bundle.add_dir("keys");
    if let Some(certs) = certs {
        bundle.add(format!("keys/{}", files::CERT), certs.chain_pem.clone().into_bytes(), FileKind::Public);
        bundle.add(format!("keys/{}", files::KEY), certs.key_pem.clone().into_bytes(), FileKind::Secret);
        bundle.add(format!("keys/{}", files::PEM), certs.combined_pem().into_bytes(), FileKind::Secret);
        if let Some(ca) = &certs.ca_pem {
            bundle.add(format!("keys/{}", files::CA), ca.clone().into_bytes(), FileKind::Public);
        }
    }
    sidecar_files(plan, &mut bundle)?;
    helm::render(&env, plan, &mut bundle)?;
    Ok(bundle)
}

/// ACME mode: `certs/acme.toml`, the sidecar's settings with the paths it sees in its
/// container, and copies of the files they name (the private ACME CA, the DNS hook). No
/// passwords: the sidecar never sees the secrets file.
fn sidecar_files(plan: &Plan, bundle: &mut Bundle) -> Result<(), RenderError> {
    use crate::plan::image::{SIDECAR_ACME_DIR, SIDECAR_CONFIG_DIR};
    let Some(acme) = &plan.tls.acme else { return Ok(()) };
    let read = |path: &Path| fs::read(path).map_err(|source| RenderError::Read { path: path.to_path_buf(), source });
    let mut config = acme.clone();
    config.account_dir = PathBuf::from(SIDECAR_ACME_DIR);
    if let Some(ca) = &acme.ca_bundle {
        bundle.add(format!("certs/{}", SIDECAR_CA_FILE), read(ca)?, FileKind::Public);
        config.ca_bundle = Some(Path::new(SIDECAR_CONFIG_DIR).join(SIDECAR_CA_FILE));
    }
    if let Some(hook) = &acme.dns_hook {
        bundle.add(format!("certs/{}", SIDECAR_HOOK_FILE), read(hook)?, FileKind::SecretExecutable);
        config.dns_hook = Some(Path::new(SIDECAR_CONFIG_DIR).join(SIDECAR_HOOK_FILE));
    }
    let text = format!(
        "# Generated by astrtc from {}: the ACME sidecar's settings (`astrtc certs watch`).\n\
         # Do not edit: change [tls.acme] in the spec and run `astrtc render`.\n{}",
        plan.spec_file,
        toml::to_string(&config).expect("ACME settings serialize")
    );
    bundle.add(format!("certs/{}", SIDECAR_CONFIG_FILE), text.into_bytes(), FileKind::Public);
    Ok(())
}

/// The sidecar's settings file in `certs/`.
pub const SIDECAR_CONFIG_FILE: &str = "acme.toml";
/// The private ACME CA bundle in `certs/`.
pub const SIDECAR_CA_FILE: &str = "acme-ca.pem";
/// The DNS hook in `certs/`.
pub const SIDECAR_HOOK_FILE: &str = "dns-hook";

/// Reads the WSS certificate files a previous render left in `out/keys`, if complete.
pub fn existing_certs(out: &Path) -> Option<CertLayout> {
    let keys = out.join("keys");
    Some(CertLayout {
        chain_pem: fs::read_to_string(keys.join(files::CERT)).ok()?,
        key_pem: fs::read_to_string(keys.join(files::KEY)).ok()?,
        ca_pem: fs::read_to_string(keys.join(files::CA)).ok(),
    })
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

    /// Writes the bundle to `out`, replacing its previous contents in one atomic swap. On any
    /// error the previous `out` is left untouched.
    pub fn write_atomic(&self, out: &Path, access: SecretAccess) -> Result<(), RenderError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RenderError::Write { path, source }
        };
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(werr(&parent))?;
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "deploy".into());
        let staging =
            tempfile::Builder::new().prefix(&format!(".{name}.astrtc-")).tempdir_in(&parent).map_err(werr(&parent))?;
        let root = staging.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(werr(root))?;
        for dir in &self.dirs {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(werr(&p))?;
        }
        for (rel, file) in &self.files {
            let p = root.join(rel);
            if let Some(d) = p.parent() {
                fs::create_dir_all(d).map_err(werr(d))?;
            }
            let mut f = fs::File::create(&p).map_err(werr(&p))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(file.kind.mode())).map_err(werr(&p))?;
            if file.kind != FileKind::Public && access.chown {
                std::os::unix::fs::chown(&p, None, Some(access.gid)).map_err(werr(&p))?;
            }
            f.write_all(&file.bytes).map_err(werr(&p))?;
            f.sync_all().map_err(werr(&p))?;
        }
        if out.exists() {
            exchange(root, out).map_err(werr(out))?;
            // `root` now holds the previous output; the TempDir guard removes it.
        } else {
            let kept = staging.keep();
            fs::rename(&kept, out).map_err(werr(out))?;
        }
        Ok(())
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

fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) -> Result<(), RenderError> {
    let rerr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RenderError::Read { path, source }
    };
    for entry in fs::read_dir(dir).map_err(rerr(dir))? {
        let entry = entry.map_err(rerr(dir))?;
        let path = entry.path();
        if crate::certs::store::is_internal(&entry.file_name()) {
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
