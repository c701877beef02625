#!/usr/bin/env bash
# Call capacity: `astrtc bench calls` for the three kinds of call against a deployment on this
# host, then the tunings as before/after ratios measured A/B/A in the same run. Figures only:
# nothing here asserts a value (a shared 2-core host is noisy; read the ranges).
#
# Writes target/bench/calls-*.{json,svg,txt}. Knobs: BENCH_HOLD (s, 15), BENCH_RATE (calls/s,
# 20), BENCH_LEVELS_WEBRTC_ECHO, BENCH_LEVELS_SIP_ECHO, BENCH_LEVELS_WEBRTC_TO_SIP (comma lists),
# BENCH_TUNE_LEVEL (webrtc-to-sip calls of the A/B/A comparisons, 40), BENCH_TUNE_COMPLEXITY (the
# lower opus complexity compared with the default, 3), BENCH_SKIP_TUNING=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/target/release/astrtc"
cargo build --release --locked --quiet   # a no-op when the binary is current; never a stale one
out="$PWD/target/bench"
mkdir -p "$out"
[ -f /etc/ssl/certs/ca-certificates.crt ] && export ASTRTC_EXTRA_CA="${ASTRTC_EXTRA_CA:-/etc/ssl/certs/ca-certificates.crt}"
work=$(mktemp -d)
dir="$work/calls"
cleanup() {
  if [ -f "$dir/deploy/compose.yaml" ]; then (cd "$dir/deploy" && docker compose down -v --timeout 5 >/dev/null 2>&1) || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

hold=${BENCH_HOLD:-15}
rate=${BENCH_RATE:-20}
levels_webrtc=${BENCH_LEVELS_WEBRTC_ECHO:-100,200,300,400}
levels_sip=${BENCH_LEVELS_SIP_ECHO:-100,200,400,600}
levels_transcoded=${BENCH_LEVELS_WEBRTC_TO_SIP:-20,40,60,80}
tune_level=${BENCH_TUNE_LEVEL:-40}
tune_complexity=${BENCH_TUNE_COMPLEXITY:-3}

# The default spec on ports off the defaults (a `make up` stack may run beside it), with an RTP
# range above Linux's ephemeral ports (4000 ports: 2000 channels) and room in memory for the calls.
"$bin" init --dir "$dir" >/dev/null
sed -i -e 's/^# name = "astrtc"/name = "bench-calls"/' \
  -e 's/^# sip_port = 5060 /sip_port = 26060 /' -e 's/^# wss_port = 8089 /wss_port = 26089 /' \
  -e 's/^# http_port = 8088 /http_port = 26088 /' \
  -e 's/^# start = 10000/start = 61000/' -e 's/^# end = 20000/end = 64999/' \
  -e 's/^# memory_limit_mb = 512/memory_limit_mb = 4096/' "$dir/astrtc.toml"
cp "$dir/astrtc.toml" "$dir/default.toml"
# Tuned: the browser endpoint answers G.711 first, so calls to the G.711 phone are not transcoded.
sed -e 's/^# codecs = \["opus", "ulaw"\]/codecs = ["ulaw", "opus"]\ncodec_preference = "spec"/' \
  "$dir/default.toml" > "$dir/g711-first.toml"
grep -q '^codec_preference = "spec"' "$dir/g711-first.toml" || { echo "the tuned spec was not made" >&2; exit 1; }
# Tuned: the opus encoder at a lower complexity (the calls Asterisk transcodes into opus).
sed -e "s/^# opus_complexity = 5/opus_complexity = $tune_complexity/" "$dir/default.toml" > "$dir/complexity.toml"
grep -q "^opus_complexity = $tune_complexity\$" "$dir/complexity.toml" || { echo "the complexity spec was not made" >&2; exit 1; }

deploy() {
  cp "$dir/$1.toml" "$dir/astrtc.toml"
  "$bin" render --spec "$dir/astrtc.toml" >/dev/null
  (cd "$dir/deploy" && docker compose up -d --wait --force-recreate >/dev/null 2>&1)
}

bench() {
  local kind="$1" levels="$2" tag="$3"
  "$bin" bench calls --spec "$dir/astrtc.toml" --host 127.0.0.1 --kind "$kind" --levels "$levels" \
    --hold "$hold" --rate "$rate" --json "$out/calls-$tag.json" --plot "$out/calls-$tag.svg" \
    2>"$out/calls-$tag.log" | tee "$out/calls-$tag.txt" || true
}

"$bin" build --spec "$dir/astrtc.toml" ${ASTRTC_EXTRA_CA:+--extra-ca "$ASTRTC_EXTRA_CA"} >/dev/null
deploy default
echo "== capacity at the defaults (hold $hold s, ramp $rate calls/s; load: $(cut -d' ' -f1-3 /proc/loadavg))"
bench webrtc-echo "$levels_webrtc" webrtc-echo
bench sip-echo "$levels_sip" sip-echo
bench webrtc-to-sip "$levels_transcoded" webrtc-to-sip

if [ -z "${BENCH_SKIP_TUNING:-}" ]; then
  echo "== codec order, A/B/A at $tune_level webrtc-to-sip calls: default (opus answered) / g711-first / default"
  for step in a1:default b:g711-first a2:default; do
    deploy "${step#*:}"
    bench webrtc-to-sip "$tune_level" "tune-${step%%:*}"
  done
  echo "== opus complexity, A/B/A at $tune_level webrtc-to-sip calls: default / $tune_complexity / default"
  for step in a1:default b:complexity a2:default; do
    deploy "${step#*:}"
    bench webrtc-to-sip "$tune_level" "complexity-${step%%:*}"
    # What the codec says its first encoder ran at (images/asterisk/build/patch-opus).
    docker logs "$(cd "$dir/deploy" && docker compose ps -q asterisk)" 2>&1 | grep -o 'astrtc: opus encoder complexity.*' \
      | head -1 > "$out/calls-complexity-${step%%:*}.codec" || true
  done
fi

# The sizing summary from the JSON reports.
python3 - "$out" <<'EOF'
import json, os, sys
out = sys.argv[1]
def load(tag):
    p = os.path.join(out, f"calls-{tag}.json")
    return json.load(open(p)) if os.path.exists(p) else None
def per_call(level):
    c = level.get("asterisk_cpu")
    return c["over_idle_per_call_second"] if c else None
print("== sizing (figures of this run, not asserted)")
print(f"{'kind':<15}{'capacity':>10}{'Asterisk ms/call-s':>20}{'calls/core':>12}{'generator ms/call-s':>21}")
for kind in ["webrtc-echo", "sip-echo", "webrtc-to-sip"]:
    r = load(kind)
    if not r:
        continue
    levels = [l for l in r["levels"] if l.get("asterisk_cpu")]
    best = ([l for l in levels if l["carried"]] or levels or [None])[-1]
    if best is None:
        print(f"{kind:<15}{'-':>10}")
        continue
    a, g = per_call(best), best["generator_cpu"]["over_idle_per_call_second"] if best.get("generator_cpu") else None
    cap = r["capacity"] if r["capacity"] is not None else "none"
    print(f"{kind:<15}{cap:>10}{a*1000:>20.2f}{1/a if a else 0:>12.0f}{(g or 0)*1000:>21.2f}   (at {best['calls']} calls)")
def aba(title, prefix, b_name, note):
    """One A/B/A comparison: Asterisk's CPU per call-second for each step, and the ratio."""
    steps = [load(f"{prefix}-{t}") for t in ["a1", "b", "a2"]]
    if not all(steps):
        return
    figs = [per_call(s["levels"][0]) for s in steps]
    if not all(figs):
        return
    a = (figs[0] + figs[2]) / 2
    print(f"{title}, webrtc-to-sip at {steps[0]['levels'][0]['calls']} calls: Asterisk ms/call-s "
          f"default {figs[0]*1000:.2f} / {b_name} {figs[1]*1000:.2f} / default {figs[2]*1000:.2f}; "
          f"ratio default/{b_name} {a/figs[1]:.2f}x (range {min(figs[0],figs[2])/figs[1]:.2f}-{max(figs[0],figs[2])/figs[1]:.2f}); "
          f"{note(steps)}")
aba("codec order", "tune", "g711-first",
    lambda steps: "codecs sent " + " / ".join(",".join(s["levels"][0]["codecs"]) for s in steps))
def codec_said(steps):
    said = []
    for t in ["a1", "b", "a2"]:
        p = os.path.join(out, f"calls-complexity-{t}.codec")
        said.append((open(p).read().strip() if os.path.exists(p) else "") or "no encoder logged")
    return "the codec said: " + " / ".join(said)
aba("opus complexity", "complexity", "lower", codec_said)
EOF
echo "plots: $out/calls-webrtc-echo.svg $out/calls-sip-echo.svg $out/calls-webrtc-to-sip.svg"
