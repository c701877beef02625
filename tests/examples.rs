//! The README's examples for test suites in other languages, run as their users run them: the
//! Playwright test (examples/playwright, `npx playwright test`) and the pytest suite
//! (examples/pytest), each against `astrtc testenv` instances it starts and removes itself.
//! Their runners come from `make deps-examples`; a missing one is a counted skip (a failure in CI).

use std::path::Path;
use std::process::Command;

use crate::common::docker::ensure_image;
use crate::common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs an example suite with the astrtc under test; asserts it passed and left nothing behind.
fn run_example(cmd: &mut Command, what: &str) {
    let state = tempfile::tempdir().unwrap();
    let out = cmd
        .env("ASTRTC", assert_cmd::cargo::cargo_bin("astrtc"))
        .env("ASTRTC_TESTENV_DIR", state.path())
        .env("ASTRTC_TESTENV_IMAGE", crate::common::docker::test_image())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Its error lines first: the whole output follows, and a log read from its end is cut.
    let mut errors: Vec<&str> = text.lines().map(str::trim).filter(|l| l.contains("Error")).collect();
    let mut seen = std::collections::HashSet::new();
    errors.retain(|l| seen.insert(*l));
    errors.truncate(6);
    assert!(out.status.success(), "the {what} example failed: {}\n{text}", errors.join("\n"));
    eprintln!("{what} example:\n{text}");
    let left = Command::new("docker").args(["ps", "-aq", "--filter", "label=io.astrtc.testenv"]).output().unwrap();
    assert!(left.stdout.is_empty(), "the {what} example left a test environment running");
}

#[test]
fn the_playwright_example_calls_the_echo_extension() {
    if docker_off() {
        return;
    }
    let dir = root().join("examples/playwright");
    if tool_missing(&dir.join("node_modules/@playwright/test"), "make deps-examples")
        || tool_missing(Path::new("/usr/bin/chromium"), "make deps-examples")
    {
        return;
    }
    let _turn = testenv_turn();
    ensure_image();
    let mut cmd = Command::new("npx");
    cmd.args(["playwright", "test"]).current_dir(&dir);
    run_example(&mut cmd, "Playwright");
}

#[test]
fn the_pytest_example_registers_over_wss_and_udp() {
    if docker_off() {
        return;
    }
    let pytest = root().join("target/tools/examples/bin/pytest");
    if tool_missing(&pytest, "make deps-examples") {
        return;
    }
    let _turn = testenv_turn();
    ensure_image();
    let mut cmd = Command::new(pytest);
    cmd.args(["-q", "-p", "no:cacheprovider"]).current_dir(root().join("examples/pytest"));
    run_example(&mut cmd, "pytest");
}
