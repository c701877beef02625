#!/usr/bin/env bash
# Runs the test suite (cargo test, every target, no fail-fast) and ends with one line counted
# over the whole run: `N passed, N failed, N skipped`.
#
# A test that cannot run calls `skip()` (tests/common): it prints `SKIP <test>: <reason>` and
# appends that line to $ASTRTC_SKIP_LOG, which this script counts (such a test reports "ok" to
# cargo, so it is taken out of the passed count). Under CI=true a skip is a failure. Benchmarks
# and the long fuzz run are #[ignore]d here and run by `make bench` and `make fuzz`; they are
# named, not counted.
set -uo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
export ASTRTC_SKIP_LOG="$skips"

cargo test --locked --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

read -r passed failed ignored < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i
    }
  } END { print p+0, f+0, g+0 }' "$log")
skipped=$(grep -c '^SKIP ' "$skips" || true)
passed=$((passed - skipped))
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1 # the build failed, or a test binary crashed: no test result line counted it
  echo "cargo test exited $status before reporting a failed test (a build error or a crash above)" >&2
fi
if [ "$skipped" -gt 0 ]; then
  echo
  echo "skipped:"
  sed 's/^/  /' "$skips"
fi
[ "$ignored" -gt 0 ] && echo "($ignored long run(s) not run here: make bench, make fuzz)"
if [ "$failed" -gt 0 ]; then
  # Each failed test's panic message again, cut to fit: a CI log is often read from its end
  # only, and the messages sit far above it, among the passing tests' output.
  echo
  echo "why each test failed (its message, cut at ${ASTRTC_DIGEST_CHARS:-1500} characters in all):"
  awk -v budget="${ASTRTC_DIGEST_CHARS:-1500}" '
    # Only inside the failure sections of cargo test ("---- NAME stdout ----" up to the next one or to the
    # list of failures); a message ends at the backtrace, the hint to set RUST_BACKTRACE (printed
    # for the first panic only) or the "--- " banners of a test (its service logs, after it).
    /^---- .* stdout ----$/ { n++; name[n] = $2; section = 1; inmsg = 0; next }
    /^failures:$/ { section = 0; inmsg = 0 }
    /^(stack backtrace:|note: run with|---- |--- )/ { inmsg = 0 }
    section && / panicked at / { inmsg = 1; next }
    inmsg && NF { msg[n] = msg[n] "    " $0 "\n" }
    END {
      if (!n) { print "  no test message found: a build error or a crashed test binary (see above)"; exit }
      per = int(budget / n)
      for (i = 1; i <= n; i++) {
        printf "  %s:\n%s", name[i], substr(msg[i], 1, per)
        if (length(msg[i]) > per) printf "\n    [cut: %d more characters, in the whole message above]\n", length(msg[i]) - per
      }
    }' "$log"
fi
echo "$passed passed, $failed failed, $skipped skipped"
if [ "$failed" -gt 0 ]; then exit 1; fi
if [ "$skipped" -gt 0 ] && [ -n "${CI:-}" ] && [ "${CI}" != "false" ] && [ "${CI}" != "0" ]; then
  echo "under CI a skip is a failure" >&2
  exit 1
fi
exit 0
