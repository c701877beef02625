#!/usr/bin/env bash
# Render benchmark: `astrtc render` wall time for the default spec and for a 1000-endpoint spec
# (goal: <= 50 ms). Not a test: it reports figures, it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/target/release/astrtc"
cargo build --release --locked --quiet   # a no-op when the binary is current; never a stale one
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
[ -f /etc/ssl/certs/ca-certificates.crt ] && export ASTRTC_EXTRA_CA="${ASTRTC_EXTRA_CA:-/etc/ssl/certs/ca-certificates.crt}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$bin" init --dir "$work/default" >/dev/null
"$bin" init --dir "$work/big" >/dev/null
for i in $(seq 1 997); do
  kind=sip; [ $((i % 2)) = 0 ] && kind=webrtc
  printf '\n[[endpoints]]\nid = "%d"\nkind = "%s"\n' $((10000 + i)) "$kind" >> "$work/big/astrtc.toml"
done
"$bin" secrets --spec "$work/big/astrtc.toml" >/dev/null
# First renders create the CA and leaf; the timed runs re-render, as users do.
"$bin" render --spec "$work/default/astrtc.toml" --out "$work/default/deploy" >/dev/null
"$bin" render --spec "$work/big/astrtc.toml" --out "$work/big/deploy" >/dev/null
echo "endpoints in the big spec: $(grep -c '^\[\[endpoints\]\]' "$work/big/astrtc.toml")"
# "fresh": every file written (and a leaf key generated) into an empty output directory;
# "current": the output is up to date, so render compares and writes nothing.
hyperfine --warmup 3 --runs 30 --export-markdown "$work/bench.md" \
  -n "render default (3 endpoints), fresh" --prepare "rm -rf $work/default/fresh" \
  "$bin render --spec $work/default/astrtc.toml --out $work/default/fresh" \
  -n "render 1000 endpoints, fresh" --prepare "rm -rf $work/big/fresh" \
  "$bin render --spec $work/big/astrtc.toml --out $work/big/fresh" \
  -n "render default (3 endpoints), current" --prepare "true" \
  "$bin render --spec $work/default/astrtc.toml --out $work/default/deploy" \
  -n "render 1000 endpoints, current" --prepare "true" \
  "$bin render --spec $work/big/astrtc.toml --out $work/big/deploy" \
  -n "render --check 1000 endpoints" --prepare "true" \
  "$bin render --check --spec $work/big/astrtc.toml --out $work/big/deploy"
cat "$work/bench.md"

# Start -> healthy with docker compose (needs the image: `astrtc build`). Host mode with the full
# RTP range 10000-20000, and bridge mode with a narrow range; ports moved off the defaults so a
# stack from `make up` can keep running.
if [ -z "${BENCH_RENDER_ONLY:-}" ] && docker info >/dev/null 2>&1; then
  up_bench() {
    local name="$1" mode="$2" rtp_start="$3" rtp_end="$4" dir="$work/$1"
    "$bin" init --dir "$dir" >/dev/null
    sed -i -e "s/^# name = \"astrtc\"/name = \"bench-$name\"/" \
      -e "s/^# mode = \"host\"/mode = \"$mode\"/" \
      -e "s/^# sip_port = 5060 /sip_port = 25060 /" -e "s/^# wss_port = 8089 /wss_port = 28089 /" \
      -e "s/^# http_port = 8088 /http_port = 28088 /" \
      -e "s/^# start = 10000/start = $rtp_start/" -e "s/^# end = 20000/end = $rtp_end/" "$dir/astrtc.toml"
    "$bin" render --spec "$dir/astrtc.toml" --out "$dir/deploy" >/dev/null
    "$bin" build --spec "$dir/astrtc.toml" ${ASTRTC_EXTRA_CA:+--extra-ca "$ASTRTC_EXTRA_CA"} >/dev/null
    local times=()
    for _ in 1 2 3; do
      local t0 t1
      t0=$(date +%s%N)
      (cd "$dir/deploy" && docker compose up -d --wait >/dev/null 2>&1)
      t1=$(date +%s%N)
      times+=("$(( (t1 - t0) / 1000000 )) ms")
      (cd "$dir/deploy" && docker compose down -v >/dev/null 2>&1)
    done
    echo "compose up -> healthy, $name ($mode, RTP $rtp_start-$rtp_end): ${times[*]}"
  }
  up_bench host-full-range host 10000 20000
  up_bench bridge-100-ports bridge 30000 30099
fi

# Test environments: `astrtc testenv up` -> ready (TLS handshake verified, endpoints loaded), as
# `ready_ms` reports it; one at a time (median of 7) and 4 started at once. State in a scratch dir.
if [ -z "${BENCH_RENDER_ONLY:-}" ] && docker info >/dev/null 2>&1; then
  export ASTRTC_TESTENV_DIR="$work/testenv"
  ready_ms() { "$bin" testenv up --json --name "$1" | sed -n 's/.*"ready_ms": \([0-9]*\).*/\1/p'; }
  single=()
  for i in 1 2 3 4 5 6 7; do
    single+=("$(ready_ms "bench-$i")")
    "$bin" testenv down "bench-$i" >/dev/null
  done
  median=$(printf '%s\n' "${single[@]}" | sort -n | sed -n 4p)
  echo "testenv up -> ready, one at a time (ms): ${single[*]}; median $median"
  t0=$(date +%s%N)
  for i in 1 2 3 4; do ready_ms "bench-par-$i" > "$work/par-$i" & done
  wait
  t1=$(date +%s%N)
  echo "testenv up -> ready, 4 at once (ms): $(cat "$work"/par-* | tr '\n' ' '); all 4 in $(( (t1 - t0) / 1000000 )) ms"
  "$bin" testenv down --all >/dev/null
  unset ASTRTC_TESTENV_DIR
fi

# REGISTER storms (SIPp over UDP): Asterisk's RSS through 5 storms of 60,000 at 3,000/s with the
# image's jemalloc and with glibc, and REGISTER throughput with verbose 0 and 3 (needs sipp:
# make deps-load).
if [ -z "${BENCH_RENDER_ONLY:-}" ] && command -v sipp >/dev/null && docker info >/dev/null 2>&1; then
  cargo test --release --locked --test tests memory::bench_register_storms -- --ignored --nocapture 2>/dev/null \
    | grep -E '^(jemalloc|glibc|  storm|logging)'
fi

# ACME issuance against Pebble on loopback (needs pebble: make deps-acme).
if [ -z "${BENCH_RENDER_ONLY:-}" ] && [ -x /usr/bin/pebble ]; then
  cargo test --release --locked --test tests acme::bench_acme_issuance -- --ignored --nocapture 2>/dev/null \
    | grep -E '^(HTTP-01|DNS-01|  orders)'
fi

# Call capacity with `astrtc bench calls`: the three kinds of call, the sizing table and the
# codec-order tuning as an A/B/A ratio (scripts/bench-calls.sh; plots in target/bench/).
if [ -z "${BENCH_RENDER_ONLY:-}" ] && docker info >/dev/null 2>&1; then
  bash scripts/bench-calls.sh
fi

# The same through a cluster (edge, relay, one then two pool servers): the cluster sizing table
# (scripts/bench-cluster.sh).
if [ -z "${BENCH_RENDER_ONLY:-}" ] && docker info >/dev/null 2>&1; then
  bash scripts/bench-cluster.sh
fi
