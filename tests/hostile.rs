//! The hostile-spec corpus (`tests/hostile/*.toml`): every spec there must be refused with an
//! error that names the offending key (`# expect:` on its first line) and points at a line and
//! column, so no value can ever reach a generated file. Beside it, a generator that pushes every
//! dangerous character through every field and checks that whatever validation lets through
//! cannot add a section, directive or key to any output.

use std::fs;
use std::path::Path;

use crate::common::*;

fn report(err: &astrtc::spec::SpecError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, err)
        .unwrap();
    out
}

#[test]
fn every_hostile_spec_is_refused_naming_its_key_and_position() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks '# expect: KEY' on line 1", path.display()));
        let err = match plan_for(&path, ROOT) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => e,
        };
        let shown = report(&err);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(shown.contains(expect), "{name}: the error does not name {expect:?}:\n{shown}");
        // miette shows the position as [file:line:col].
        let has_position = shown.lines().any(|l| {
            l.contains(".toml:")
                && l.split(".toml:").nth(1).is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        });
        assert!(has_position, "{name}: no line:column in\n{shown}");
        count += 1;
    }
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
    fs::write(dir.path().join("astrtc.secrets.toml"), "[endpoints]\n1 = \"aaaaaaaaaaaaaaaaaaaa\"\n").unwrap();
    let err = plan_for(&spec, ROOT).unwrap_err();
    let astrtc::spec::SpecError::Invalid(inv) = &err else { panic!("{err:?}") };
    let messages: Vec<_> = inv.problems.iter().map(|p| p.message.clone()).collect();
    for key in ["rtp.start", "network.wss_port", "tls.domain", "endpoints[0].codecs[0]", "endpoints[1].id"] {
        assert!(messages.iter().any(|m| m.starts_with(key)), "{key} missing from {messages:#?}");
    }
    assert_eq!(messages.len(), 5, "{messages:#?}");
}

/// Lines an Asterisk config may contain: comments, sections, `key = value`, `#include`,
/// dialplan lines. Returns (sections, directive keys) for structural comparison.
fn conf_shape(text: &str) -> (Vec<String>, Vec<String>) {
    let mut sections = Vec::new();
    let mut keys = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with(';') {
            continue;
        }
        if let Some(s) = l.strip_prefix('[') {
            sections.push(s.to_string());
        } else if let Some(inc) = l.strip_prefix("#include ") {
            keys.push(format!("#include {inc}"));
        } else if let Some((k, _)) = l.split_once("=>") {
            keys.push(k.trim().to_string());
        } else if let Some((k, _)) = l.split_once('=') {
            keys.push(k.trim().to_string());
        } else {
            panic!("unexpected config line {line:?}");
        }
    }
    (sections, keys)
}

fn yaml_keys(v: &serde_yaml_ng::Value, prefix: &str, out: &mut Vec<String>) {
    if let serde_yaml_ng::Value::Mapping(m) = v {
        for (k, val) in m {
            let key = format!("{prefix}/{}", k.as_str().unwrap_or("?"));
            out.push(key.clone());
            yaml_keys(val, &key, out);
        }
    }
}

#[test]
fn no_accepted_value_changes_the_shape_of_any_output() {
    let hostile =
        ["\n", "\r", "[", "]", ";", "=", "#", "\"", "'", "\\", "\t", "\u{0}", "\u{1b}", ",", "$", "{", "}", ":"];
    let base_dir = fixture_copy("webrtc-self-signed");
    let base_spec = fs::read_to_string(base_dir.path().join("astrtc.toml")).unwrap();
    let baseline = plan_for(&base_dir.path().join("astrtc.toml"), ROOT).unwrap();
    let baseline = bundle_for(&baseline);
    let shape = |b: &astrtc::render::Bundle| {
        let mut s = Vec::new();
        for (path, f) in b.files() {
            let text = String::from_utf8_lossy(&f.bytes).into_owned();
            if path.extension().is_some_and(|e| e == "conf") {
                s.push(format!("{}: {:?}", path.display(), conf_shape(&text)));
            } else if path.starts_with("helm/astrtc/templates") {
                continue; // Go templates copied verbatim; no spec value reaches them
            } else if path.extension().is_some_and(|e| e == "json") {
                let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
                let yaml: serde_yaml_ng::Value = serde_yaml_ng::to_value(&doc).unwrap();
                let mut keys = Vec::new();
                yaml_keys(&yaml, "", &mut keys);
                s.push(format!("{}: {keys:?}", path.display()));
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
                let mut keys = Vec::new();
                yaml_keys(&doc, "", &mut keys);
                s.push(format!("{}: {keys:?}", path.display()));
            }
        }
        s
    };
    let expected = shape(&baseline);
    // Each (field, template) puts a value into the otherwise valid default spec.
    let fields: &[(&str, &str)] = &[
        ("domain = \"pbx.example.test\"", "domain = \"pbx{V}example.test\""),
        ("id = \"3002\"", "id = \"30{V}02\""),
        ("kind = \"webrtc\"", "kind = \"webrtc\"\ndisplay_name = \"Al{V}ice\""),
        ("[dialplan]", "[dialplan]\ncontext = \"ctx{V}x\""),
        ("[rtp]", "[rtp]\nstun = \"stun.example.test:34{V}78\""),
    ];
    let mut accepted = 0;
    let mut refused = 0;
    for (anchor, template) in fields {
        for v in hostile {
            let value = serde_json::to_string(v).unwrap();
            let value = &value[1..value.len() - 1]; // a TOML basic-string escape of v
            let spec = base_spec.replacen(anchor, &template.replace("{V}", value), 1);
            assert_ne!(spec, base_spec, "anchor {anchor:?} not found");
            let dir = fixture_copy("webrtc-self-signed");
            fs::write(dir.path().join("astrtc.toml"), &spec).unwrap();
            match plan_for(&dir.path().join("astrtc.toml"), ROOT) {
                Err(_) => refused += 1,
                Ok(plan) => {
                    accepted += 1;
                    let got = shape(&bundle_for(&plan));
                    assert_eq!(got, expected, "value {v:?} via {template:?} changed an output's shape");
                }
            }
        }
    }
    assert!(refused > 60, "only {refused} hostile values refused");
    assert!(accepted > 0 || refused == fields.len() * hostile.len());
}
