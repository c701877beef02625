//! What the readers of each output see, for comparing outputs by structure: Asterisk configs
//! parsed as Asterisk's `config.c` reads them (sections, keys, values), YAML, JSON and TOML as
//! their key paths, and the chart as Kubernetes gets it — `helm template`, then PyYAML, which
//! like the Go YAML library Kubernetes uses breaks lines at NEL, U+2028 and U+2029.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use astrtc::render::Bundle;

/// One section of an Asterisk config: its name and its `key = value` lines, in order.
/// Directives (`#include ...`) are keys with an empty value; a line Asterisk cannot read (no `=`)
/// is the key `<no '='> LINE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The text between `[` and `]` (and anything after `]`); empty before the first section.
    pub name: String,
    /// `(key, value)` in file order, both trimmed as Asterisk trims them.
    pub lines: Vec<(String, String)>,
}

/// Parses an Asterisk config the way Asterisk reads it: one line per `\n` (a NUL ends the line,
/// as in C), `;` starts a comment unless escaped, `;--` ... `--;` is a block comment, blanks
/// (C `isspace`, so CR too) are trimmed, `[` opens a section, `#` is a directive, `=` or `=>`
/// splits key and value.
pub fn asterisk_conf(text: &str) -> Vec<Section> {
    let mut sections = vec![Section { name: String::new(), lines: Vec::new() }];
    let mut in_block_comment = false;
    for raw in text.split('\n') {
        let mut line = raw.split('\0').next().unwrap_or("").to_string();
        if in_block_comment {
            match line.find("--;") {
                Some(end) => {
                    line = line[end + 3..].to_string();
                    in_block_comment = false;
                }
                None => continue,
            }
        }
        let mut kept = String::new();
        let mut chars = line.chars().peekable();
        let mut prev = '\0';
        while let Some(c) = chars.next() {
            if c == ';' && prev != '\\' {
                let rest: String = chars.collect();
                if let Some(after) = rest.strip_prefix("--") {
                    match after.find("--;") {
                        Some(end) => {
                            // A block comment that ends on this line: keep what follows it.
                            kept.push_str(&after[end + 3..]);
                        }
                        None => in_block_comment = true,
                    }
                }
                break;
            }
            kept.push(c);
            prev = c;
        }
        let l = kept.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
        if l.is_empty() {
            continue;
        }
        if let Some(rest) = l.strip_prefix('[') {
            let name = match rest.split_once(']') {
                Some((name, after)) => format!("{name}{after}"),
                None => format!("<no ']'> {rest}"),
            };
            sections.push(Section { name, lines: Vec::new() });
            continue;
        }
        let current = sections.last_mut().expect("at least the unnamed section");
        if l.starts_with('#') {
            current.lines.push((l.to_string(), String::new()));
        } else if let Some((k, v)) = l.split_once('=') {
            let v = v.strip_prefix('>').unwrap_or(v);
            let blank = |c: char| c.is_ascii_whitespace() || c == '\x0b';
            current.lines.push((k.trim_matches(blank).to_string(), v.trim_matches(blank).to_string()));
        } else {
            current.lines.push((format!("<no '='> {l}"), String::new()));
        }
    }
    if sections[0].lines.is_empty() {
        sections.remove(0);
    }
    sections
}

/// Parses a fail2ban `.local` file the way fail2ban's configparser reads it: lines split at any
/// of Python's line boundaries (`str.splitlines`: CR, LF, VT, FF, the C0 separators, NEL,
/// U+2028, U+2029), `#` and `;` start a comment line, `[` opens a section, `=` or `:` splits key
/// and value, and a line starting with blanks continues the value above it (it is appended to
/// that key's value, so it never adds a key).
pub fn fail2ban_ini(text: &str) -> Vec<Section> {
    let mut sections = vec![Section { name: String::new(), lines: Vec::new() }];
    let breaks = ['\n', '\r', '\x0b', '\x0c', '\x1c', '\x1d', '\x1e', '\u{85}', '\u{2028}', '\u{2029}'];
    for raw in text.split(|c| breaks.contains(&c)) {
        let current = sections.last_mut().expect("at least the unnamed section");
        if raw.starts_with([' ', '\t']) && !raw.trim().is_empty() {
            match current.lines.last_mut() {
                Some((_, v)) => {
                    v.push('\n');
                    v.push_str(raw.trim());
                }
                None => current.lines.push((format!("<continuation> {raw}"), String::new())),
            }
            continue;
        }
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(rest) = l.strip_prefix('[') {
            let name = rest.strip_suffix(']').map(str::to_string).unwrap_or_else(|| format!("<no ']'> {rest}"));
            sections.push(Section { name, lines: Vec::new() });
            continue;
        }
        let split = l.find(['=', ':']).map(|i| (&l[..i], &l[i + 1..]));
        match split {
            Some((k, v)) => current.lines.push((k.trim().to_string(), v.trim().to_string())),
            None => current.lines.push((format!("<no '='> {l}"), String::new())),
        }
    }
    if sections[0].lines.is_empty() {
        sections.remove(0);
    }
    sections
}

/// Every key path of a parsed document, with the type of each leaf (`/services/asterisk/image:
/// string`) and sequence items by index, so a value that adds a key, an item or changes a type
/// changes the set.
pub fn tree_paths(v: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        use serde_json::Value::*;
        match v {
            Object(m) => {
                out.push(format!("{prefix}: map"));
                for (k, val) in m {
                    walk(val, &format!("{prefix}/{k}"), out);
                }
            }
            Array(a) => {
                out.push(format!("{prefix}: list"));
                for (i, val) in a.iter().enumerate() {
                    walk(val, &format!("{prefix}/{i}"), out);
                }
            }
            String(_) => out.push(format!("{prefix}: string")),
            Number(_) => out.push(format!("{prefix}: number")),
            Bool(_) => out.push(format!("{prefix}: bool")),
            Null => out.push(format!("{prefix}: null")),
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

/// The structure of one output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// An Asterisk config: section names and their keys.
    Conf(Vec<(String, Vec<String>)>),
    /// YAML, JSON or TOML: the key paths.
    Tree(Vec<String>),
    /// The file could not be parsed at all.
    Unreadable(String),
    /// Anything else (PEM, Go templates, scripts): only its presence counts.
    Opaque,
}

/// Parses a YAML, JSON or TOML file by its extension into a JSON value.
pub fn parse_tree(path: &Path, text: &str) -> Option<Result<serde_json::Value, String>> {
    let ext = path.extension()?.to_str()?;
    Some(match ext {
        "yaml" | "yml" => serde_yaml_ng::from_str::<serde_json::Value>(text).map_err(|e| e.to_string()),
        "json" => serde_json::from_str(text).map_err(|e| e.to_string()),
        "toml" => toml::from_str::<toml::Table>(text)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::to_value(t).map_err(|e| e.to_string())),
        _ => return None,
    })
}

/// The shape of a file as its reader sees it.
pub fn file_shape(path: &Path, bytes: &[u8]) -> Shape {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) if path.extension().is_some_and(|e| e == "conf") => return Shape::Unreadable("not UTF-8".into()),
        Err(_) => return Shape::Opaque,
    };
    // coturn's config and the TURN secret its entrypoint reads (first line) are not Asterisk's.
    match path.file_name().and_then(|n| n.to_str()) {
        Some("turnserver.conf") => {
            return Shape::Conf(vec![(String::new(), coturn_conf(text).into_iter().map(|(k, _)| k).collect())])
        }
        Some("auth-secret") => {
            return Shape::Conf(vec![(String::new(), text.lines().map(|_| "line".into()).collect())])
        }
        _ => {}
    }
    // The cluster's files in their own syntaxes (Kamailio's cfg, SQL, pg_hba.conf, rtpengine's
    // ini, the dispatcher list, Mermaid, the password): each line's structure, every word reduced
    // to `w` ([`line_structure`]), so a value can change words but never punctuation, quotes or
    // line breaks. The same for the chart's copies of them and its README (the cluster chart's
    // draws the topology in Mermaid).
    let chart_copy = path == Path::new("helm/astrtc/README.md")
        || ["edge", "db", "db-secret", "relay"].iter().any(|d| path.starts_with(format!("helm/astrtc/files/{d}")));
    if chart_copy || ["edge", "db", "relay", "cluster"].iter().any(|d| path.starts_with(d)) {
        return Shape::Conf(vec![(String::new(), text.split('\n').map(line_structure).collect())]);
    }
    if path.extension().is_some_and(|e| e == "conf") {
        return Shape::Conf(
            asterisk_conf(text).into_iter().map(|s| (s.name, s.lines.into_iter().map(|(k, _)| k).collect())).collect(),
        );
    }
    if path.extension().is_some_and(|e| e == "local") {
        return Shape::Conf(
            fail2ban_ini(text).into_iter().map(|s| (s.name, s.lines.into_iter().map(|(k, _)| k).collect())).collect(),
        );
    }
    // One value on one line (the monitoring profile's password file, the chart's restart
    // digest): its line is its shape.
    if path.ends_with("prometheus/metrics-password")
        || path.ends_with("files/metrics/password")
        || path.ends_with("files/restart-digest")
    {
        return match text.strip_suffix('\n').unwrap_or(text).lines().count() {
            1 => Shape::Tree(vec!["<one line>".into()]),
            n => Shape::Unreadable(format!("{n} lines, not one")),
        };
    }
    // The chart's Go templates are YAML only after `helm template` (see [`k8s_docs`]).
    if path.starts_with("helm/astrtc/templates") {
        return Shape::Opaque;
    }
    match parse_tree(path, text) {
        Some(Ok(v)) => Shape::Tree(tree_paths(&v)),
        Some(Err(e)) => Shape::Unreadable(e),
        None => Shape::Opaque,
    }
}

/// A line with every run of ASCII letters, digits and `- _ . ~` (the characters of ids, names,
/// addresses and the database password) reduced to `w`.
pub fn line_structure(line: &str) -> String {
    let mut out = String::new();
    let mut in_word = false;
    for c in line.chars() {
        if c.is_ascii_alphanumeric() || "-_.~".contains(c) {
            if !in_word {
                out.push('w');
            }
            in_word = true;
        } else {
            out.push(c);
            in_word = false;
        }
    }
    out
}

/// Parses a coturn config as `turnserver` reads it (`read_config_file`): one option per line
/// (`fgets`, so a NUL ends it), leading blanks skipped, `#` starts a comment line, trailing blanks
/// trimmed, `name=value` or a bare flag.
pub fn coturn_conf(text: &str) -> Vec<(String, String)> {
    text.split('\n')
        .filter_map(|raw| {
            let line = raw.split('\0').next().unwrap_or("").trim_start_matches([' ', '\t']).trim_end();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The shape of every file of a bundle, by path.
pub fn bundle_shape(bundle: &Bundle) -> BTreeMap<PathBuf, Shape> {
    bundle.files().iter().map(|(p, f)| (p.clone(), file_shape(p, &f.bytes))).collect()
}

/// Writes the bundle's chart (`helm/astrtc/`, nothing else, no fsync: it is read once, at
/// once) below `dir`; returns the chart's directory.
pub fn write_chart(bundle: &Bundle, dir: &Path) -> PathBuf {
    for (path, file) in bundle.files() {
        if let Ok(rest) = path.strip_prefix("helm/astrtc") {
            let to = dir.join(rest);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(&to, &file.bytes).unwrap();
        }
    }
    dir.to_path_buf()
}

/// A file only a cluster's chart has.
pub const CLUSTER_CHART_MARK: &str = "templates/edge-deployment.yaml";

/// The values a cluster's chart needs besides its defaults (it has no default for them): an
/// existing database, the Secret with its password, the edge's source addresses.
pub const CLUSTER_SETS: &[&str] =
    &["database.host=pg.db.svc", "database.existingSecret=pg-edge", "edge.sourceCidrs={10.0.0.5/32}"];

/// The chart tools: Helm 4 and the Python with PyYAML, from `make deps-helm`.
pub struct ChartTools {
    helm: PathBuf,
    python: PathBuf,
}

impl ChartTools {
    /// The tools, or `None` after a counted skip when they are not installed.
    pub fn find() -> Option<ChartTools> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools");
        let t = ChartTools { helm: dir.join("helm4"), python: dir.join("venv/bin/python") };
        if super::tool_missing(&t.helm, "make deps-helm") || super::tool_missing(&t.python, "make deps-helm") {
            return None;
        }
        Some(t)
    }

    /// `helm template pbx CHART` for every chart, two at a time; the manifests or helm's error.
    pub fn template_all(&self, charts: &[PathBuf]) -> Vec<Result<String, String>> {
        let mut results: Vec<Option<Result<String, String>>> = vec![None; charts.len()];
        let next = std::sync::atomic::AtomicUsize::new(0);
        let slots = std::sync::Mutex::new(&mut results);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(chart) = charts.get(i) else { break };
                    let mut cmd = Command::new(&self.helm);
                    cmd.args(["template", "pbx"]).arg(chart);
                    // A cluster's chart has three values without a default.
                    if chart.join(CLUSTER_CHART_MARK).exists() {
                        for set in CLUSTER_SETS {
                            cmd.args(["--set", set]);
                        }
                    }
                    let out = cmd.output().unwrap();
                    let r = if out.status.success() {
                        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                    } else {
                        Err(String::from_utf8_lossy(&out.stderr).into_owned())
                    };
                    slots.lock().unwrap()[i] = Some(r);
                });
            }
        });
        results.into_iter().map(|r| r.expect("every chart templated")).collect()
    }

    /// Every manifest stream read as Kubernetes reads it (PyYAML's pure-Python safe loader, one
    /// process for all): its documents as JSON, or the reader's error.
    pub fn k8s_docs(&self, manifests: &[String]) -> Vec<Result<Vec<serde_json::Value>, String>> {
        const READ: &str = r#"
import json, sys, yaml
out = []
for text in json.load(sys.stdin):
    try:
        out.append({"docs": [d for d in yaml.load_all(text, Loader=yaml.SafeLoader) if d is not None]})
    except Exception as e:
        out.append({"error": str(e)})
json.dump(out, sys.stdout, default=str)
"#;
        let mut child =
            Command::new(&self.python).args(["-c", READ]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let input = serde_json::to_vec(manifests).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "the PyYAML reader failed");
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        parsed
            .into_iter()
            .map(|r| match r.get("docs") {
                Some(serde_json::Value::Array(docs)) => Ok(docs.clone()),
                _ => Err(r["error"].as_str().unwrap_or("?").to_string()),
            })
            .collect()
    }
}

/// The shape of templated manifests: per object (`Kind/name`), its key paths.
pub fn k8s_shape(docs: &[serde_json::Value]) -> BTreeMap<String, Vec<String>> {
    docs.iter()
        .map(|d| {
            let id = format!("{}/{}", d["kind"].as_str().unwrap_or("?"), d["metadata"]["name"].as_str().unwrap_or("?"));
            (id, tree_paths(d))
        })
        .collect()
}

/// Where each file of the chart's ConfigMaps comes from in the bundle (default values).
pub fn configmap_sources(docs: &[serde_json::Value]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
        let name = d["metadata"]["name"].as_str().unwrap_or("?");
        for (key, value) in d["data"].as_object().into_iter().flatten() {
            // The one-line stubs that include a password file from the auth Secret carry nothing
            // of the spec's: they are the chart's own, the same for every deployment.
            let stub = format!("; In the auth Secret, mounted apart.\n#include /etc/asterisk-secrets/{key}\n");
            if value.as_str() == Some(stub.as_str()) {
                continue;
            }
            // A cluster's chart writes these from its values (and the edge's database.cfg and
            // edge_key.cfg are stubs pointing at the one written at start and at the edge's key
            // Secret): no file of the bundle is their source.
            let generated = match name {
                _ if name.ends_with("-pool-config") => key == "pjsip_edge.conf",
                _ if name.ends_with("-edge-config") => {
                    key == "database.cfg" || key == "dispatcher.list" || key == "edge_key.cfg"
                }
                _ => false,
            };
            if generated {
                continue;
            }
            let source = if name.ends_with("-edge-config") {
                format!("edge/{key}")
            } else if name.ends_with("-relay-config") {
                format!("relay/{key}")
            } else if name.ends_with("-schema") {
                format!("db/{key}")
            } else if name.ends_with("-acme") {
                format!("certs/{key}")
            } else if name.ends_with("-guard") {
                // Keys are the paths below guard/ with "/" written "_" (ConfigMap keys have no "/").
                format!("guard/{}", key.replacen('_', "/", 1))
            } else if name.ends_with("-turn") {
                format!("turn/{key}")
            } else {
                format!("asterisk/{key}")
            };
            out.push((source, key.clone(), value.as_str().unwrap_or("<not a string>").to_string()));
        }
    }
    out
}
