//! The files compiled into astrtc, so an installed binary needs no checkout: two trees, each laid
//! out like what it becomes.
//!
//! - `templates/` → [`TEMPLATES`]: `templates/deploy/` is the output directory of `astrtc render`
//!   file for file (`templates/deploy/asterisk/pjsip.conf.j2` becomes `deploy/asterisk/pjsip.conf`;
//!   files ending in `.j2` are rendered with minijinja, every other file is copied as it is), and
//!   `templates/init/` holds the starter spec of `astrtc init`.
//! - `images/` → [`IMAGES`]: the Docker build contexts, one directory per image. A file whose
//!   first bytes are `#!` is executable in the context (mode 0755), every other one 0644.
//!
//! Owns: embedding and looking up. Deciding what to render, and how, is [`crate::render`]'s.

use include_dir::{include_dir, Dir};

/// `templates/`: the render tree (`deploy/`) and the starter spec (`init/`).
pub static TEMPLATES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/templates");

/// `images/`: the build contexts.
pub static IMAGES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/images");

/// The suffix of files that are rendered rather than copied.
pub const TEMPLATE_SUFFIX: &str = ".j2";

/// One embedded file: its path below the tree it was asked for, and its contents.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Path relative to the directory that was listed, with `/` separators.
    pub path: &'static str,
    /// Contents.
    pub contents: &'static [u8],
}

impl Asset {
    /// The mode the file gets in a build context: executable when it starts with `#!`.
    pub fn mode(&self) -> u32 {
        if self.contents.starts_with(b"#!") {
            0o755
        } else {
            0o644
        }
    }
}

/// Every file below `dir` of `tree`, sorted by path, with paths relative to `dir`.
pub fn files_under(tree: &'static Dir<'static>, dir: &str) -> Vec<Asset> {
    fn walk(d: &'static Dir<'static>, out: &mut Vec<(&'static std::path::Path, &'static [u8])>) {
        for f in d.files() {
            out.push((f.path(), f.contents()));
        }
        for sub in d.dirs() {
            walk(sub, out);
        }
    }
    let Some(root) = tree.get_dir(dir) else { return Vec::new() };
    let mut found = Vec::new();
    walk(root, &mut found);
    let prefix = std::path::Path::new(dir);
    let mut assets: Vec<Asset> = found
        .into_iter()
        .filter_map(|(path, contents)| {
            let rel: &'static str = path.strip_prefix(prefix).ok()?.to_str()?;
            Some(Asset { path: rel, contents })
        })
        .collect();
    assets.sort_by_key(|a| a.path);
    assets
}

/// The text of one embedded template file (`init/astrtc.toml.j2`).
pub fn text(tree: &'static Dir<'static>, path: &str) -> Option<&'static str> {
    tree.get_file(path).and_then(|f| f.contents_utf8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn on_disk(root: &Path) -> Vec<(String, bool)> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, bool)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    let exec = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&p).unwrap().permissions())
                        & 0o111
                        != 0;
                    out.push((p.strip_prefix(root).unwrap().display().to_string(), exec));
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    /// Both trees hold exactly the files of the repository's `templates/` and `images/`, and
    /// the executable bit the build contexts get (from `#!`) is the one the files have on disk.
    #[test]
    fn embedded_trees_are_the_repository_directories() {
        for (tree, dir) in [(&TEMPLATES, "templates"), (&IMAGES, "images")] {
            let disk = on_disk(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir));
            let mut embedded: Vec<(String, bool)> = Vec::new();
            for sub in tree.dirs() {
                let name = sub.path().to_str().unwrap();
                for a in files_under(tree, name) {
                    embedded.push((format!("{name}/{}", a.path), a.mode() == 0o755));
                }
            }
            for f in tree.files() {
                embedded.push((f.path().display().to_string(), f.contents().starts_with(b"#!")));
            }
            embedded.sort();
            if dir == "templates" {
                // Templates are never executed: compare paths only.
                let names = |v: &[(String, bool)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
                assert_eq!(names(&embedded), names(&disk), "{dir}");
            } else {
                assert_eq!(embedded, disk, "{dir}: a file differs, or its executable bit does not match `#!`");
            }
        }
    }

    #[test]
    fn templates_use_unix_line_endings_and_end_with_a_newline() {
        for a in files_under(&TEMPLATES, "deploy").into_iter().chain(files_under(&TEMPLATES, "init")) {
            let text = std::str::from_utf8(a.contents).unwrap();
            assert!(!text.contains('\r'), "{} has CR", a.path);
            assert!(text.ends_with('\n'), "{} lacks a final newline", a.path);
        }
    }
}
