#!/usr/bin/env bash
# Where the CPU of calls goes: `perf` samples Asterisk and the bench's generator while
# `astrtc bench calls` holds PROFILE_CALLS calls of PROFILE_KIND up, then prints each one's CPU by
# library (DSO) and its hottest symbols. Figures only, asserted by nothing (`make profile-calls`).
#
# Knobs: PROFILE_KIND (webrtc-to-sip), PROFILE_CALLS (40), PROFILE_SECONDS (sampling window, 10),
# PROFILE_SPEC_EDIT (a sed expression applied to the spec, e.g. to compare a tuning).
# Needs perf (Debian: linux-perf) and root (or kernel.perf_event_paranoid <= 0).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "profile-calls: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
bin="$PWD/target/release/astrtc"
cargo build --release --locked --quiet   # a no-op when the binary is current; never a stale one
kind=${PROFILE_KIND:-webrtc-to-sip}
calls=${PROFILE_CALLS:-40}
secs=${PROFILE_SECONDS:-10}
out="$PWD/target/bench"
mkdir -p "$out"
[ -f /etc/ssl/certs/ca-certificates.crt ] && export ASTRTC_EXTRA_CA="${ASTRTC_EXTRA_CA:-/etc/ssl/certs/ca-certificates.crt}"
work=$(mktemp -d)
dir="$work/profile"
bench_pid=""
cleanup() {
  [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null || true
  if [ -f "$dir/deploy/compose.yaml" ]; then (cd "$dir/deploy" && docker compose down -v --timeout 5 >/dev/null 2>&1) || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The default spec on its own ports and RTP range (as scripts/bench-calls.sh, other numbers).
"$bin" init --dir "$dir" >/dev/null
sed -i -e 's/^# name = "astrtc"/name = "profile-calls"/' \
  -e 's/^# sip_port = 5060 /sip_port = 27060 /' -e 's/^# wss_port = 8089 /wss_port = 27089 /' \
  -e 's/^# http_port = 8088 /http_port = 27088 /' \
  -e 's/^# start = 10000/start = 57000/' -e 's/^# end = 20000/end = 60999/' \
  -e 's/^# memory_limit_mb = 512/memory_limit_mb = 4096/' ${PROFILE_SPEC_EDIT:+-e "$PROFILE_SPEC_EDIT"} "$dir/astrtc.toml"
"$bin" build --spec "$dir/astrtc.toml" ${ASTRTC_EXTRA_CA:+--extra-ca "$ASTRTC_EXTRA_CA"} >/dev/null
"$bin" render --spec "$dir/astrtc.toml" >/dev/null
(cd "$dir/deploy" && docker compose up -d --wait >/dev/null 2>&1)
cid=$(cd "$dir/deploy" && docker compose ps -q asterisk)
asterisk_pid=$(docker top "$cid" -eo pid,comm | awk '$2 == "asterisk" { print $1; exit }')
[ -n "$asterisk_pid" ] || { echo "profile-calls: no asterisk process in $cid" >&2; exit 1; }

# Hold the calls for the sampling window and a margin.
"$bin" bench calls --spec "$dir/astrtc.toml" --host 127.0.0.1 --kind "$kind" --levels "$calls" \
  --hold $((secs + 15)) --rate 20 > "$out/profile-bench.txt" 2>&1 &
bench_pid=$!
# Ready when Asterisk carries every call (its own count), at most 120 s.
deadline=$((SECONDS + 120))
while :; do
  up=$(docker exec "$cid" asterisk -rx 'core show channels count' 2>/dev/null | awk '/active call/ { print $1 }')
  [ "${up:-0}" -ge "$calls" ] && break
  kill -0 "$bench_pid" 2>/dev/null || { cat "$out/profile-bench.txt" >&2; echo "profile-calls: the bench ended first" >&2; exit 1; }
  [ "$SECONDS" -lt "$deadline" ] || { echo "profile-calls: $calls calls never came up (${up:-0})" >&2; exit 1; }
  sleep 0.5
done
echo "== $calls $kind calls up; sampling Asterisk (pid $asterisk_pid) and the generator (pid $bench_pid) for $secs s"
perf record -q -F 999 -p "$asterisk_pid" -o "$work/asterisk.data" -- sleep "$secs" 2>/dev/null &
a=$!
perf record -q -F 999 -p "$bench_pid" -o "$work/generator.data" -- sleep "$secs" 2>/dev/null &
g=$!
wait "$a" "$g"
wait "$bench_pid" || true
bench_pid=""

# `head` closes the pipes early: not a failure.
set +o pipefail
for who in asterisk generator; do
  echo "== $who: CPU samples by library"
  perf report -q -i "$work/$who.data" --sort dso --stdio 2>/dev/null | awk 'NF { print }' | head -n 12
  echo "== $who: hottest symbols"
  perf report -q -i "$work/$who.data" --sort dso,sym --stdio 2>/dev/null | awk 'NF { print }' | head -n 25
done | tee "$out/profile-$kind.txt"
grep -E '^ +[0-9]+ ' "$out/profile-bench.txt" | head -n 3
