//! Hostile input. The corpus (`tests/hostile/*.toml`): every spec there is refused by a problem
//! at the key its first line names (`# expect: KEY`), and the report points at a line and column.
//! The generator: every dangerous character through every field that reaches an output; each
//! case is refused by a problem at that field's key, or accepted and then every output — the
//! chart after `helm template`, read as Kubernetes reads it — keeps the shape it has with a
//! harmless value.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use astrtc::plan::Plan;
use astrtc::render::Bundle;
use astrtc::spec::secrets::Secrets;
use astrtc::spec::source::{KeyPath, KeySeg};
use astrtc::spec::{Problem, SourceFile, SpecError};

use crate::common::shape::{self, ChartTools, Shape};
use crate::common::*;

fn report(err: &SpecError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, err)
        .unwrap();
    out
}

/// The values of a secrets file: the text between each pair of double quotes after an `=` (a
/// file the corpus wrote broken on purpose is not TOML).
fn quoted_values(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_once('=').map(|(_, v)| v.trim()))
        .filter_map(|v| v.strip_prefix('"').and_then(|v| v.rsplit_once('"')).map(|(inner, _)| inner.to_string()))
        .filter(|v| v.chars().count() >= 6)
        .collect()
}

/// Marks an `# expect:` key that is in the secrets file.
const IN_SECRETS: &str = " (in the secrets file)";

#[test]
fn every_hostile_spec_is_refused_at_its_key_with_a_position() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut count = 0;
    let mut wrong = Vec::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name} lacks '# expect: KEY' on line 1"));
        let (expect, in_secrets) = match expect.strip_suffix(IN_SECRETS) {
            Some(key) => (key, true),
            None => (expect, false),
        };
        // `(syntax error)`: a problem with no key path, located by the parser alone.
        let want = if expect == "(syntax error)" { KeyPath::default() } else { KeyPath::parse(expect) };
        assert_eq!(want.to_string(), expect.replace("(syntax error)", ""), "{name}: '{expect}' is not a key path");
        let err = match plan_for(&path, ROOT) {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => e,
        };
        let SpecError::Invalid(invalid) = &err else { panic!("{name}: {err:?}") };
        // Every problem is the one the spec was written for: at that key, in that file.
        for p in &invalid.problems {
            let file = p.src.as_ref().map(|s| s.name().to_string()).unwrap_or_default();
            if p.path != want || file.contains("/secrets/") != in_secrets {
                wrong.push(format!("{name}: expects {expect}, got a problem at '{}' in {file}: {}", p.path, p.message));
            }
        }
        assert!(!invalid.problems.is_empty(), "{name}: refused without a problem");
        // miette shows the position as [file:line:col].
        let shown = report(&err);
        let has_position = shown.lines().any(|l| {
            l.contains(".toml:")
                && l.split(".toml:").nth(1).is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        });
        assert!(has_position, "{name}: no line:column in\n{shown}");
        // No value of the secrets file is shown — the refused one nor a neighbour in the snippet
        // (a live key beside a malformed previous one) — in whole or in a part of 12 characters.
        if let Some(secrets) =
            text.lines().find_map(|l| l.strip_prefix("secrets = \"")).map(|s| s.trim_end_matches('"'))
        {
            let secret_text = fs::read_to_string(dir.join(secrets)).unwrap();
            // (The files' own paths are shown: the directory, and names like their values.)
            let shown = shown.replace(&dir.display().to_string(), "").replace(name.trim_end_matches(".toml"), "");
            for value in quoted_values(&secret_text) {
                let chars: Vec<char> = value.chars().collect();
                for part in chars.windows(12.min(chars.len())).map(|w| w.iter().collect::<String>()) {
                    assert!(!shown.contains(&part), "{name}: the error shows {part:?} of a secret:\n{shown}");
                }
            }
        }
        count += 1;
    }
    assert!(wrong.is_empty(), "refused for another reason:\n{}", wrong.join("\n"));
    assert!(count >= 40, "the corpus shrank to {count} specs");
}

#[test]
fn semantic_problems_are_reported_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("astrtc.toml");
    fs::write(
        &spec,
        "[rtp]\nstart = 20000\nend = 10000\n[network]\nsip_port = 8089\n[tls]\ndomain = \"bad domain\"\n\
         [[endpoints]]\nid = \"1\"\nkind = \"sip\"\ncodecs = [\"speex9\"]\n[[endpoints]]\nid = \"1\"\nkind = \"sip\"\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("astrtc.secrets.toml"),
        "[endpoints]\n1 = \"aaaaaaaaaaaaaaaaaaaa\"\n[metrics]\npassword = \"bbbbbbbbbbbbbbbbbbbb\"\n",
    )
    .unwrap();
    let err = plan_for(&spec, ROOT).unwrap_err();
    let SpecError::Invalid(inv) = &err else { panic!("{err:?}") };
    let paths: Vec<String> = inv.problems.iter().map(|p| p.path.to_string()).collect();
    assert_eq!(paths, ["rtp.start", "network.wss_port", "tls.domain", "endpoints[0].codecs[0]", "endpoints[1].id"]);
}

/// Every dangerous character: line and section breaks of Asterisk configs, TOML, YAML (also the
/// Unicode ones YAML 1.1 breaks lines at), comments, separators, quotes, shell and template
/// characters, controls.
const HOSTILE: &[&str] = &[
    "\n", "\r", "[", "]", ";", "=", "#", "\"", "'", "\\", "\t", "\0", "\x1b", ",", "$", "{", "}", ":", "\u{2028}",
    "\u{2029}", "\u{85}",
];

/// The valid spec a field is varied in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Base {
    /// `nat-multi-endpoint`: NAT, STUN, TURN, display names, codecs, a custom dialplan.
    Nat,
    /// `bridge-narrow-rtp`: bridge mode.
    Bridge,
    /// `acme-http01` switched to DNS-01 with a hook, resolvers and a directory.
    Acme,
    /// `turn-bundled`: the bundled TURN relay behind a 1:1 NAT.
    Turn,
    /// `cluster-compose`: the cluster (edge, relay, database, pool), with its chart.
    Cluster,
}

/// Which input file a value is written to (and a refusal must point into).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Spec,
    Secrets,
}

/// One field that reaches an output: where it is, how a value is put into it.
struct Field {
    /// As shown in the table.
    name: &'static str,
    base: Base,
    input: Input,
    /// Its key path: where the value is written and where a refusal must point.
    path: &'static str,
    /// The value, with `{V}` where the character goes.
    template: &'static str,
    /// A harmless character for `{V}`: the value must then be accepted.
    harmless: &'static str,
    /// What else changes with the value (a renamed endpoint's password, a hook file).
    also: fn(&mut Case, &str),
}

fn nothing(_: &mut Case, _: &str) {}

fn fields() -> Vec<Field> {
    use Base::*;
    use Input::*;
    let f = |name, base, input, path, template, harmless| Field {
        name,
        base,
        input,
        path,
        template,
        harmless,
        also: nothing,
    };
    vec![
        f("name", Nat, Spec, "name", "pbx{V}nat", "x"),
        f("image", Nat, Spec, "image", "registry.example.test:5000/pbx/aster{V}isk:22.10.1", "x"),
        f("tls.domain", Nat, Spec, "tls.domain", "pbx{V}.example.test", "x"),
        f("tls.extra_names", Nat, Spec, "tls.extra_names[0]", "sip{V}.example.test", "x"),
        Field {
            also: |c, id| {
                // The renamed endpoint keeps its password, so nothing but the id can be wrong.
                let pw = c.secrets["endpoints"].as_table_mut().unwrap().remove("1002").unwrap();
                c.secrets["endpoints"].as_table_mut().unwrap().insert(id.to_string(), pw);
            },
            ..f("endpoints.id", Nat, Spec, "endpoints[3].id", "10{V}02", "x")
        },
        f("endpoints.display_name", Nat, Spec, "endpoints[0].display_name", "Alice{V} (browser)", "x"),
        f("endpoints.codecs", Nat, Spec, "endpoints[1].codecs[2]", "g72{V}", "2"),
        f("dialplan.context", Nat, Spec, "dialplan.context", "off{V}ice", "x"),
        f("dialplan.echo_extension", Nat, Spec, "dialplan.echo_extension", "91{V}96", "x"),
        f("rtp.stun", Nat, Spec, "rtp.stun", "stun{V}.example.test:3478", "x"),
        f("rtp.turn", Nat, Spec, "rtp.turn", "turn{V}.example.test:3478", "x"),
        f("rtp.turn_username", Nat, Spec, "rtp.turn_username", "pb{V}x", "x"),
        f("network.public_address", Nat, Spec, "network.public_address", "203.0.113.1{V}", "0"),
        f("network.local_nets", Nat, Spec, "network.local_nets[1]", "192.168.1.0/2{V}", "4"),
        f("security.allow", Nat, Spec, "security.allow[1]", "198.51.100.0/2{V}", "4"),
        f("network.bridge_subnet", Bridge, Spec, "network.bridge_subnet", "172.29.5.0/2{V}", "4"),
        f("network.bridge_address", Bridge, Spec, "network.bridge_address", "172.29.5.2{V}", "0"),
        f("tls.acme.email", Acme, Spec, "tls.acme.email", "ops{V}@example.com", "x"),
        f("tls.acme.directory", Acme, Spec, "tls.acme.directory", "https://acme.example.test/dir{V}ectory", "x"),
        f("tls.acme.dns_resolvers", Acme, Spec, "tls.acme.dns_resolvers[0]", "192.0.2.5{V}", "3"),
        Field {
            also: |c, path| c.hook = Some(path.to_string()),
            ..f("tls.acme.dns_hook", Acme, Spec, "tls.acme.dns_hook", "dns{V}hook", "x")
        },
        f("password (endpoint)", Nat, Secrets, "endpoints.alice", "fixture-alice{V}-password-1", "x"),
        f("password (turn)", Nat, Secrets, "turn.password", "fixture-turn{V}-password!", "x"),
        f("turn.host", Turn, Spec, "turn.host", "turn{V}.example.test", "x"),
        f("turn.realm", Turn, Spec, "turn.realm", "pbx{V}.example.test", "x"),
        f("turn.allowed_peers", Turn, Spec, "turn.allowed_peers[0]", "10.20.0.{V}6", "1"),
        f("secret (turn)", Turn, Secrets, "turn.secret", "fixture-turn-shared{V}-secret-0123456789abcdef", "x"),
        f("password (metrics)", Nat, Secrets, "metrics.password", "fixture-metrics{V}-password", "x"),
        f(
            "password (cluster db)",
            Cluster,
            Secrets,
            "cluster.database_password",
            "fixture-cluster-database{V}-password-0123",
            "x",
        ),
        f("edge key (cluster)", Cluster, Secrets, "cluster.edge_key", "fixtureClusterEdgeKey{V}0123456789abcdef", "x"),
        f(
            "previous edge key (cluster)",
            Cluster,
            Secrets,
            "cluster.edge_key_previous",
            "fixtureClusterOldEdgeKey{V}0123456789abcdef",
            "x",
        ),
        f("password (cluster user)", Cluster, Secrets, "endpoints.3001", "fixture-sip-3001{V}-password", "x"),
        f("cluster.subnet", Cluster, Spec, "cluster.subnet", "172.29.7.0/2{V}", "4"),
        f("cluster.relay_address", Cluster, Spec, "cluster.relay_address", "192.0.2.7{V}", "0"),
        f("cluster.edge_image", Cluster, Spec, "cluster.edge_image", "registry.example.test:5000/pbx/ed{V}ge:1", "x"),
        f("cluster.relay_image", Cluster, Spec, "cluster.relay_image", "localhost/rel{V}ay", "x"),
        f("cluster.db_image", Cluster, Spec, "cluster.db_image", "astrtc/db:17{V}", "x"),
        f("tls.domain (cluster)", Cluster, Spec, "tls.domain", "pbx{V}.example.test", "x"),
        f("echo_extension (cluster)", Cluster, Spec, "dialplan.echo_extension", "91{V}96", "x"),
    ]
}

/// One generated input: a spec and secrets edited as parsed TOML, and the hook file it names.
#[derive(Clone)]
struct Case {
    spec: toml::Table,
    secrets: toml::Table,
    hook: Option<String>,
}

fn base_case(base: Base) -> Case {
    let read = |case: &str, file: &str| -> toml::Table {
        toml::from_str(&fs::read_to_string(fixtures().join(case).join(file)).unwrap()).unwrap()
    };
    let case = match base {
        Base::Nat => "nat-multi-endpoint",
        Base::Bridge => "bridge-narrow-rtp",
        Base::Acme => "acme-http01",
        Base::Turn => "turn-bundled",
        Base::Cluster => "cluster-compose",
    };
    let mut c = Case { spec: read(case, "astrtc.toml"), secrets: read(case, "astrtc.secrets.toml"), hook: None };
    if base == Base::Acme {
        let acme = c.spec["tls"]["acme"].as_table_mut().unwrap();
        acme.insert("challenge".into(), "dns-01".into());
        acme.insert("directory".into(), "https://acme.example.test/directory".into());
        acme.insert("dns_resolvers".into(), toml::Value::Array(vec!["192.0.2.53".into()]));
        acme.insert("dns_hook".into(), "dns-hook".into());
        c.hook = Some("dns-hook".into());
    }
    c
}

/// Writes `value` at `path` in a parsed TOML document, making tables on the way.
fn put(root: &mut toml::Value, path: &[KeySeg], value: toml::Value) {
    match path.split_first() {
        None => *root = value,
        Some((KeySeg::Key(k), rest)) => {
            let table = root.as_table_mut().expect("a table on the path");
            put(table.entry(k.clone()).or_insert_with(|| toml::Value::Table(Default::default())), rest, value)
        }
        Some((KeySeg::Index(i), rest)) => put(&mut root.as_array_mut().expect("an array on the path")[*i], rest, value),
    }
}

impl Case {
    fn with(&self, field: &Field, value: &str) -> Case {
        let mut c = self.clone();
        let doc = match field.input {
            Input::Spec => &mut c.spec,
            Input::Secrets => &mut c.secrets,
        };
        let mut root = toml::Value::Table(std::mem::take(doc));
        put(&mut root, &KeyPath::parse(field.path).0, value.into());
        *doc = root.as_table().unwrap().clone();
        (field.also)(&mut c, value);
        c
    }

    /// Serialises both files (TOML escapes every character), parses and validates them as
    /// `astrtc` does: the plan, or every problem with the file it is in.
    fn validate(&self, dir: &Path) -> Result<Plan, Vec<(Input, Problem)>> {
        if let Some(hook) = &self.hook {
            // A name the file system cannot hold (NUL) must be refused by validation.
            let _ = fs::write(dir.join(hook), "#!/bin/sh\nexit 0\n");
        }
        let spec_path = dir.join("astrtc.toml");
        let spec_text = toml::to_string(&self.spec).unwrap();
        let secrets_text = toml::to_string(&self.secrets).unwrap();
        let invalid = |input, e: SpecError| -> Vec<(Input, Problem)> {
            match e {
                SpecError::Invalid(inv) => inv.problems.into_iter().map(|p| (input, p)).collect(),
                other => panic!("{other}"),
            }
        };
        let loaded =
            astrtc::spec::parse(spec_path.to_str().unwrap(), &spec_text).map_err(|e| invalid(Input::Spec, e))?;
        let secrets: Secrets = SourceFile::new(dir.join("astrtc.secrets.toml"), secrets_text)
            .parse()
            .map_err(|e| invalid(Input::Secrets, e))?;
        match astrtc::spec::validate::validate(&loaded.spec, loaded.base_dir(), &secrets) {
            Ok(valid) => Ok(Plan::new(valid, "astrtc.toml", ROOT)),
            Err(problems) => Err(problems
                .spec
                .into_iter()
                .map(|p| (Input::Spec, p))
                .chain(problems.secrets.into_iter().map(|p| (Input::Secrets, p)))
                .collect()),
        }
    }
}

fn render(plan: &Plan, dir: &Path) -> Result<Bundle, String> {
    let inputs = astrtc::deploy::gather(plan, &dir.join("no-deploy"), astrtc::deploy::CaUse::Create)
        .map_err(|e| format!("accepted, but gathering the render inputs failed: {e}"))?;
    astrtc::render::render(plan, &inputs).map_err(|e| format!("accepted, but render failed: {e}"))
}

/// The control's shape with the field's value in place of the harmless one: only section
/// names carry values (endpoint ids, the dialplan context).
fn expected_shape(control: &BTreeMap<PathBuf, Shape>, from: &str, to: &str) -> BTreeMap<PathBuf, Shape> {
    control
        .iter()
        .map(|(p, s)| {
            let s = match s {
                Shape::Conf(sections) => {
                    Shape::Conf(sections.iter().map(|(name, keys)| (name.replace(from, to), keys.clone())).collect())
                }
                other => other.clone(),
            };
            (p.clone(), s)
        })
        .collect()
}

/// The first difference between two bundle shapes.
fn shape_difference(want: &BTreeMap<PathBuf, Shape>, got: &BTreeMap<PathBuf, Shape>) -> Option<String> {
    for (path, w) in want {
        match got.get(path) {
            None => return Some(format!("{} is missing", path.display())),
            Some(g) if g != w => return Some(format!("{} changed shape:\n  want {w:?}\n  got  {g:?}", path.display())),
            Some(_) => {}
        }
    }
    got.keys().find(|p| !want.contains_key(*p)).map(|p| format!("{} is new", p.display()))
}

/// Counts of one field.
#[derive(Default)]
struct Tally {
    refused: usize,
    accepted: usize,
    wrong: Vec<String>,
}

/// A chart to template: the field, the value's label, the chart, the bundle it came from.
struct ChartCase {
    field: usize,
    label: String,
    chart: PathBuf,
    bundle: Bundle,
    control: bool,
}

#[test]
fn no_accepted_value_changes_the_shape_of_any_output() {
    let fields = fields();
    let work = tempfile::tempdir().unwrap();
    let mut tallies: Vec<Tally> = fields.iter().map(|_| Tally::default()).collect();
    let mut charts = Vec::new();
    for (fi, field) in fields.iter().enumerate() {
        let base = base_case(field.base);
        let dir = work.path().join(format!("f{fi}"));
        fs::create_dir_all(&dir).unwrap();
        let value_of = |v: &str| field.template.replace("{V}", v);
        let tally = &mut tallies[fi];

        // The harmless value first: it must be accepted, and its outputs are the baseline.
        let control_value = value_of(field.harmless);
        let control = match base.with(field, &control_value).validate(&dir).map(|plan| render(&plan, &dir)) {
            Ok(Ok(bundle)) => bundle,
            Ok(Err(e)) => panic!("{}: the harmless value {control_value:?}: {e}", field.name),
            Err(problems) => panic!(
                "{}: the harmless value {control_value:?} was refused: {:?}",
                field.name,
                problems.iter().map(|(_, p)| &p.message).collect::<Vec<_>>()
            ),
        };
        tally.accepted += 1;
        let control_shape = shape::bundle_shape(&control);
        charts.push(ChartCase {
            field: fi,
            label: format!("{:?}", field.harmless),
            chart: dir.join("charts/control"),
            bundle: control.clone(),
            control: true,
        });

        for (hi, v) in HOSTILE.iter().enumerate() {
            let value = value_of(v);
            let label = format!("{v:?} as {value:?}");
            match base.with(field, &value).validate(&dir) {
                Err(problems) => {
                    let want = KeyPath::parse(field.path);
                    let elsewhere: Vec<String> = problems
                        .iter()
                        .filter(|(input, p)| *input != field.input || p.path != want)
                        .map(|(input, p)| format!("{input:?} {}: {}", p.path, p.message))
                        .collect();
                    if elsewhere.is_empty() && !problems.is_empty() {
                        tally.refused += 1;
                    } else {
                        tally.wrong.push(format!("{label}: refused for another reason: {elsewhere:?}"));
                    }
                }
                Ok(plan) => match render(&plan, &dir) {
                    Err(e) => tally.wrong.push(format!("{label}: {e}")),
                    Ok(bundle) => {
                        let want = expected_shape(&control_shape, &control_value, &value);
                        match shape_difference(&want, &shape::bundle_shape(&bundle)) {
                            Some(diff) => tally.wrong.push(format!("{label}: accepted, and {diff}")),
                            None => {
                                tally.accepted += 1;
                                charts.push(ChartCase {
                                    field: fi,
                                    label,
                                    chart: dir.join(format!("charts/{hi}")),
                                    bundle,
                                    control: false,
                                });
                            }
                        }
                    }
                },
            }
        }
    }

    // The chart of every accepted case, templated and read as Kubernetes reads it: the same
    // objects and keys as with the harmless value, and each ConfigMap file byte for byte.
    let tools = ChartTools::find();
    if let Some(tools) = &tools {
        let paths: Vec<PathBuf> = charts.iter().map(|c| shape::write_chart(&c.bundle, &c.chart)).collect();
        // helm itself reads its output as YAML: a broken one is an error here already.
        let manifests: Vec<String> =
            tools.template_all(&paths).into_iter().map(|r| r.unwrap_or_else(|e| format!("helm: {e}"))).collect();
        let docs = tools.k8s_docs(&manifests);
        let mut baseline = BTreeMap::new();
        for ((c, d), m) in charts.iter().zip(&docs).zip(&manifests) {
            let tally = &mut tallies[c.field];
            let docs = match d {
                _ if m.starts_with("helm: ") => {
                    tally.wrong.push(format!("{}: helm template failed: {}", c.label, m.trim_end()));
                    continue;
                }
                Ok(docs) => docs,
                Err(e) => {
                    tally.wrong.push(format!("{}: the templated chart is not YAML: {e}", c.label));
                    continue;
                }
            };
            for (source, key, text) in shape::configmap_sources(docs) {
                if c.bundle.text(&source) != Some(text.as_str()) {
                    tally.wrong.push(format!("{}: ConfigMap key {key} does not read back as {source}", c.label));
                }
            }
            let shape = shape::k8s_shape(docs);
            if c.control {
                baseline.insert(c.field, shape);
            } else if baseline.get(&c.field) != Some(&shape) {
                let want = &baseline[&c.field];
                let diff: Vec<_> = shape.iter().filter(|(k, v)| want.get(*k) != Some(v)).map(|(k, _)| k).collect();
                tally.wrong.push(format!("{}: the templated chart changed shape in {diff:?}", c.label));
            }
        }
    }

    let mut table =
        format!("{:<26} {:>16} {:>22} {:>6}\n", "field", "refused (its key)", "accepted (shape kept)", "wrong");
    for (field, t) in fields.iter().zip(&tallies) {
        writeln!(table, "{:<26} {:>16} {:>22} {:>6}", field.name, t.refused, t.accepted, t.wrong.len()).unwrap();
    }
    let (refused, accepted): (usize, usize) = tallies.iter().fold((0, 0), |(r, a), t| (r + t.refused, a + t.accepted));
    writeln!(table, "{:<26} {refused:>16} {accepted:>22}", "total").unwrap();
    writeln!(table, "(charts of accepted cases checked after helm template: {})", tools.is_some()).unwrap();
    eprintln!("{table}");
    let wrong: Vec<String> = fields
        .iter()
        .zip(&tallies)
        .flat_map(|(f, t)| t.wrong.iter().map(move |w| format!("{}: {w}", f.name)))
        .collect();
    assert!(wrong.is_empty(), "{} case(s) went wrong:\n{}\n{table}", wrong.len(), wrong.join("\n"));
    assert_eq!(refused + accepted, fields.len() * (HOSTILE.len() + 1));
}

/// Text no validator lets through, for the test that bypasses validation: YAML 1.1 line breaks
/// (U+2028, U+2029, NEL), what would be a YAML key and an Asterisk section after them, a quote,
/// a backslash, DEL and a C1 control (unprintable for YAML), and a Go template action (the chart
/// must copy files, never run them).
const PAST_VALIDATION: &str =
    "Al\u{2028}injected: key\u{2029}[evil]\u{85}x: \"y\" \\ \u{7f}\u{9b} {{ .Values.image.tag }}\u{2028}ice";

/// The chart embeds every file so that no content can break out, whatever validation let
/// through: a plan made directly (no validation) with a display name full of YAML 1.1 breaks,
/// and an ACME CA bundle full of the same, templated by `helm template` and read by PyYAML and
/// libyaml, gives the same objects and keys as a plain plan, and every ConfigMap file reads
/// back byte for byte.
#[test]
fn the_chart_embeds_files_so_that_no_content_can_break_out() {
    let Some(tools) = ChartTools::find() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut cases: Vec<(String, Bundle, Bundle)> = Vec::new();
    for case in ["webrtc-self-signed", "acme-http01"] {
        let dir = fixture_copy(case);
        let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
        let mut inputs =
            astrtc::deploy::gather(&plan, &dir.path().join("deploy"), astrtc::deploy::CaUse::Create).unwrap();
        if plan.tls.acme.is_some() {
            inputs.acme_ca_bundle = Some(b"-----BEGIN CERTIFICATE-----\n".to_vec());
        }
        let plain = astrtc::render::render(&plan, &inputs).unwrap();
        let mut hostile_plan = plan.clone();
        hostile_plan.endpoints[0].display_name = PAST_VALIDATION.to_string();
        if let Some(ca) = &mut inputs.acme_ca_bundle {
            ca.extend_from_slice(PAST_VALIDATION.as_bytes());
        }
        let hostile = astrtc::render::render(&hostile_plan, &inputs).unwrap();
        let pjsip = hostile.text("helm/astrtc/files/asterisk/pjsip.conf").unwrap();
        assert!(pjsip.contains(PAST_VALIDATION), "the chart does not carry the display name");
        cases.push((case.to_string(), plain, hostile));
    }
    let mut charts = Vec::new();
    for (i, (_, plain, hostile)) in cases.iter().enumerate() {
        for (j, bundle) in [plain, hostile].into_iter().enumerate() {
            charts.push(shape::write_chart(bundle, &work.path().join(format!("{i}-{j}"))));
        }
    }
    let manifests: Vec<String> = tools.template_all(&charts).into_iter().map(|r| r.unwrap()).collect();
    let docs = tools.k8s_docs(&manifests);
    for (i, (case, _, hostile)) in cases.iter().enumerate() {
        let plain_docs = docs[2 * i].as_ref().unwrap();
        let hostile_docs = docs[2 * i + 1].as_ref().unwrap_or_else(|e| panic!("{case}: PyYAML cannot read it: {e}"));
        assert_eq!(shape::k8s_shape(hostile_docs), shape::k8s_shape(plain_docs), "{case}: the objects changed shape");
        let files = shape::configmap_sources(hostile_docs);
        // libyaml (serde_yaml_ng) reads the same ConfigMaps.
        let libyaml: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&manifests[2 * i + 1])
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert!(shape::configmap_sources(&libyaml) == files, "{case}: libyaml and PyYAML read different ConfigMaps");
        let mut names: Vec<&str> =
            files.iter().filter(|f| f.0.starts_with("asterisk/")).map(|f| f.1.as_str()).collect();
        let mut want: Vec<String> = hostile
            .files()
            .keys()
            .filter_map(|p| p.strip_prefix("helm/astrtc/files/asterisk").ok())
            .map(|p| p.display().to_string())
            .collect();
        names.sort();
        want.sort();
        assert_eq!(names, want, "{case}: the ConfigMap's keys are not the chart's configs");
        let mut carried = 0;
        for (source, key, text) in files {
            assert_eq!(Some(text.as_str()), hostile.text(&source), "{case}: {key} does not read back byte for byte");
            carried += usize::from(text.contains(PAST_VALIDATION));
        }
        assert!(carried >= 1, "{case}: no ConfigMap file carries the hostile text");
    }
}
