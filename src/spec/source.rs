//! Input files kept whole (path and text) so that every error can point at a line and column,
//! and the error types that do the pointing.
//!
//! Owns: reading spec and secrets files, turning serde/toml errors into spanned diagnostics, and
//! finding the span of a key path (`endpoints[2].id`) in the text for semantic errors.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use miette::{Diagnostic, NamedSource, SourceSpan};
use serde::de::DeserializeOwned;
use thiserror::Error;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A file the user wrote, with its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its whole text.
    pub text: String,
    /// A secrets file: an error's snippet shows its text with every value masked ([`redacted`]).
    pub secret: bool,
}

/// A child of a TOML table or array: its path step, its key's span, its value.
type Child<'a, 'i> = (KeySeg, Option<Range<usize>>, &'a Spanned<DeValue<'i>>);

/// One step of a key path inside a TOML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySeg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A key path such as `endpoints[2].id`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<KeySeg>);

impl KeyPath {
    /// Parses `a.b[3].c`.
    pub fn parse(s: &str) -> Self {
        let mut segs = Vec::new();
        for part in s.split('.') {
            let (name, rest) = part.split_once('[').unwrap_or((part, ""));
            if !name.is_empty() {
                segs.push(KeySeg::Key(name.to_string()));
            }
            for idx in rest.split('[') {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    segs.push(KeySeg::Index(i));
                }
            }
        }
        KeyPath(segs)
    }

    /// This path with an index appended.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(KeySeg::Index(i));
        p
    }

    /// This path with a key appended.
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(KeySeg::Key(k.to_string()));
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                KeySeg::Key(k) if i == 0 => write!(f, "{k}")?,
                KeySeg::Key(k) => write!(f, ".{k}")?,
                KeySeg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

impl SourceFile {
    /// Wraps text that is already in memory.
    pub fn new(path: PathBuf, text: String) -> Self {
        SourceFile { path, text, secret: false }
    }

    /// This file as a secrets file: its values never appear in an error's snippet.
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// Reads a file.
    pub fn read(path: &Path) -> Result<Self, SpecError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.to_path_buf(), source })?;
        Ok(SourceFile::new(path.to_path_buf(), text))
    }

    /// Deserializes the text; a syntax error, unknown key or wrong type becomes a diagnostic
    /// pointing at the offending place, with the key path it is about (empty for syntax errors).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, SpecError> {
        toml::from_str(&self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            // Name the key in the message too, not only in the label.
            let path = self.path_at(span.start);
            let message = if path.0.is_empty() { e.message().to_string() } else { format!("{path}: {}", e.message()) };
            // Keep the parser's span (locating by path would widen it to the whole value).
            let mut problem = Problem::at_span(span, message);
            problem.path = path;
            problem.src = Some(self.named());
            SpecError::Invalid(InvalidSpec { file: self.path.clone(), problems: vec![problem] })
        })
    }

    /// The span of the value at `path`; when the path does not exist, the span of its deepest
    /// existing ancestor (so "missing key" errors point at the table that lacks it).
    pub fn span_of(&self, path: &KeyPath) -> Range<usize> {
        let Ok(root) = DeTable::parse(&self.text) else {
            return 0..0;
        };
        let mut best = 0..0;
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
        for seg in &path.0 {
            let next: Option<&Spanned<DeValue<'_>>> = match (seg, table, array) {
                (KeySeg::Key(k), Some(t), _) => t.iter().find(|(key, _)| key.get_ref() == k).map(|(_, v)| v),
                (KeySeg::Index(i), _, Some(a)) => a.get(*i),
                _ => None,
            };
            let Some(v) = next else { break };
            best = v.span();
            table = None;
            array = None;
            match v.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        best
    }

    /// The deepest key path whose key or value contains byte `offset` (empty when none does, as
    /// for syntax errors).
    pub fn path_at(&self, offset: usize) -> KeyPath {
        // Depth-first: table spans do not always cover their contents (a `[table]` header's
        // span is the header), so every branch is searched and the first leaf that contains
        // the offset wins.
        fn walk(v: &DeValue<'_>, offset: usize, path: &mut KeyPath) -> bool {
            let children: Vec<Child<'_, '_>> = match v {
                DeValue::Table(t) => {
                    t.iter().map(|(k, val)| (KeySeg::Key(k.get_ref().to_string()), Some(k.span()), val)).collect()
                }
                DeValue::Array(a) => a.iter().enumerate().map(|(i, val)| (KeySeg::Index(i), None, val)).collect(),
                _ => return false,
            };
            for (seg, key_span, val) in children {
                path.0.push(seg);
                let here = key_span.is_some_and(|s| s.contains(&offset)) || val.span().contains(&offset);
                if walk(val.get_ref(), offset, path) || here {
                    return true;
                }
                path.0.pop();
            }
            false
        }
        let mut path = KeyPath::default();
        if let Ok(root) = DeTable::parse(&self.text) {
            walk(&DeValue::Table(root.into_inner()), offset, &mut path);
        }
        path
    }

    /// Attaches this file to a problem and resolves its key path to a span.
    pub fn locate(&self, mut p: Problem) -> Problem {
        if !p.path.0.is_empty() {
            p.span = self.span_of(&p.path).into();
            p.message = format!("{}: {}", p.path, p.message);
        }
        p.src = Some(self.named());
        p
    }

    fn named(&self) -> NamedSource<String> {
        let text = if self.secret { redacted(&self.text) } else { self.text.clone() };
        NamedSource::new(self.path.display().to_string(), text).with_language("TOML")
    }
}

/// A secrets file's text as an error may show it: on every line that is not blank, a comment or
/// a table header, everything after the first `=` (on a line without one — a multi-line
/// string's — everything) replaced byte for byte by `*`, so every span still points at the same
/// line and column and no password, key or part of one is printed.
pub fn redacted(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| {
            let body = line.trim_end_matches(['\n', '\r']);
            let end = &line[body.len()..];
            let t = body.trim_start();
            if t.is_empty() || t.starts_with('#') || (t.starts_with('[') && !body.contains('=')) {
                return line.to_string();
            }
            let keep = body.find('=').map_or(0, |i| i + 1);
            format!("{}{}{end}", &body[..keep], "*".repeat(body.len() - keep))
        })
        .collect()
}

/// One thing wrong with the input, located in the file.
#[derive(Debug, Clone, Error, Diagnostic)]
#[error("{message}")]
pub struct Problem {
    /// What is wrong, naming the key.
    pub message: String,
    /// Where in the file; filled in from `path` when the problem is tied to a source file.
    #[label("{label}")]
    pub span: SourceSpan,
    /// The key path the problem is about (empty for syntax errors).
    pub path: KeyPath,
    /// The label text at the span.
    pub label: String,
    /// How to fix it.
    #[help]
    pub help: Option<String>,
    /// The file the span points into.
    #[source_code]
    pub src: Option<NamedSource<String>>,
}

impl Problem {
    /// A problem about the value at a key path.
    pub fn at(path: KeyPath, message: impl Into<String>) -> Self {
        Problem { message: message.into(), span: (0, 0).into(), path, label: "here".into(), help: None, src: None }
    }

    /// A problem at a byte range (parser errors).
    pub fn at_span(span: Range<usize>, message: impl Into<String>) -> Self {
        let mut p = Problem::at(KeyPath::default(), message);
        p.span = span.into();
        p
    }

    /// Adds a hint on how to fix it.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Everything wrong with one input file, all at once.
#[derive(Debug, Error, Diagnostic)]
#[error("{} has {} problem{}", file.display(), problems.len(), if problems.len() == 1 { "" } else { "s" })]
#[diagnostic(code(astrtc::spec::invalid))]
pub struct InvalidSpec {
    /// The file the problems are in.
    pub file: PathBuf,
    /// The problems, each located.
    #[related]
    pub problems: Vec<Problem>,
}

impl InvalidSpec {
    /// Locates each problem in `source` and wraps them.
    pub fn new(source: &SourceFile, problems: Vec<Problem>) -> Self {
        let problems = problems.into_iter().map(|p| source.locate(p)).collect();
        InvalidSpec { file: source.path.clone(), problems }
    }
}

/// Errors about the user's input files. All of them mean exit code 2.
#[derive(Debug, Error, Diagnostic)]
pub enum SpecError {
    /// The file could not be read.
    #[error("failed to read {}", path.display())]
    #[diagnostic(code(astrtc::spec::read), help("create one with `astrtc init`, or name it with --spec"))]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file has syntax errors, unknown keys, wrong types or semantic problems.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(#[from] InvalidSpec),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_problem(text: &str) -> Problem {
        let file = SourceFile::new(PathBuf::from("astrtc.toml"), text.into());
        match file.parse::<crate::spec::Spec>() {
            Err(SpecError::Invalid(mut inv)) => inv.problems.remove(0),
            other => panic!("{other:?}"),
        }
    }

    /// Wrong types and unknown keys carry the key path, like the problems validation finds;
    /// syntax errors have none.
    #[test]
    fn parse_errors_name_their_key() {
        let p = parse_problem("[network]\npublic_address = \"203.0.113.1\\n\"\n");
        assert_eq!(p.path, KeyPath::parse("network.public_address"));
        assert!(p.message.starts_with("network.public_address: "), "{}", p.message);
        assert_eq!(
            parse_problem("[[endpoints]]\nid = \"1\"\nkind = \"iax\"\n").path,
            KeyPath::parse("endpoints[0].kind")
        );
        assert_eq!(parse_problem("[rtp]\nports = 5\n").path, KeyPath::parse("rtp.ports"));
        assert_eq!(parse_problem("[rtp\n").path, KeyPath::default());
    }

    /// A secrets file's values are masked byte for byte (each line keeps its length, so every
    /// span still points where it did); keys, headers, comments and blank lines stay.
    #[test]
    fn redaction_masks_every_value_and_keeps_every_position() {
        let text =
            "# header\n[endpoints]\n3001 = \"s3cr\u{e9}t-p\u{e4}ss\"\r\n\n[cluster]\nedge_key = \"abc\"\n  \"\"\"x\n";
        let masked = redacted(text);
        assert_eq!(masked.len(), text.len());
        assert_eq!(masked.lines().map(str::len).collect::<Vec<_>>(), text.lines().map(str::len).collect::<Vec<_>>());
        assert!(!masked.contains("s3cr") && !masked.contains("abc") && !masked.contains('x'), "{masked}");
        assert!(masked.starts_with("# header\n[endpoints]\n3001 =*") && masked.contains("\n[cluster]\nedge_key =*"));
    }
}
