#!/usr/bin/env bash
# Cluster capacity: `astrtc bench calls` through the Kamailio edge and the rtpengine relay, with
# one and then two Asterisk servers in the pool, for the two kinds a cluster sends to the pool
# (webrtc-echo, sip-echo); then the sizing table: CPU per held call of the relay and the pool,
# and CPU per call set up of the edge, with what one core of each would carry. Figures only:
# nothing here asserts a value (a shared 2-core host is noisy; the generator, the edge, the relay
# and the pool share its cores).
#
# Writes target/bench/cluster-*.{json,svg,txt}. Knobs: BENCH_HOLD (s, 10), BENCH_RATE (calls/s,
# 20), BENCH_LEVELS_WEBRTC_ECHO (50,100,150,200), BENCH_LEVELS_SIP_ECHO (50,100,200,300),
# BENCH_POOLS (the pool sizes, in order: 1,2).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/target/release/astrtc"
cargo build --release --locked --quiet   # a no-op when the binary is current; never a stale one
out="$PWD/target/bench"
mkdir -p "$out"
[ -f /etc/ssl/certs/ca-certificates.crt ] && export ASTRTC_EXTRA_CA="${ASTRTC_EXTRA_CA:-/etc/ssl/certs/ca-certificates.crt}"
work=$(mktemp -d)
dir="$work/cluster"
cleanup() {
  if [ -f "$dir/deploy/compose.yaml" ]; then (cd "$dir/deploy" && docker compose down -v --timeout 5 >/dev/null 2>&1) || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

hold=${BENCH_HOLD:-10}
rate=${BENCH_RATE:-20}
levels_webrtc=${BENCH_LEVELS_WEBRTC_ECHO:-50,100,150,200}
levels_sip=${BENCH_LEVELS_SIP_ECHO:-50,100,200,300}
pools=${BENCH_POOLS:-1,2}

# The cluster fixture on ports off the defaults, RTP 61000-64999 at the relay (1000 calls), a
# subnet of its own, and passwords generated here (the fixture's are the test suite's).
mkdir -p "$dir"
sed -e 's/^name = "astrtc-cluster"/name = "bench-cluster"/' \
  -e 's/^sip_port = 15060/sip_port = 27060/' -e 's/^wss_port = 18089/wss_port = 27089/' \
  -e 's/^http_port = 18088/http_port = 27088/' \
  -e 's/^start = 40000/start = 61000/' -e 's/^end = 40999/end = 64999/' \
  -e 's|^subnet = "172.29.0.0/24"|subnet = "172.30.99.0/24"|' -e 's/^relay_control_port = 12223/relay_control_port = 27223/' \
  -e 's/^drain_seconds = 60/drain_seconds = 5/' \
  tests/fixtures/cluster-compose/astrtc.toml > "$dir/template.toml"
for want in 'name = "bench-cluster"' 'sip_port = 27060' 'start = 61000' 'subnet = "172.30.99.0/24"' 'pool_size = 2'; do
  grep -qF "$want" "$dir/template.toml" || { echo "the bench spec was not made: no $want" >&2; exit 1; }
done

spec_for() { sed -e "s/^pool_size = 2/pool_size = $1/" "$dir/template.toml" > "$dir/astrtc.toml"; }

deploy() {
  spec_for "$1"
  "$bin" render --spec "$dir/astrtc.toml" >/dev/null
  (cd "$dir/deploy" && docker compose up -d --wait --force-recreate --remove-orphans >/dev/null 2>&1)
}

bench() {
  local kind="$1" levels="$2" tag="$3"
  "$bin" bench calls --spec "$dir/astrtc.toml" --host 127.0.0.1 --kind "$kind" --levels "$levels" \
    --hold "$hold" --rate "$rate" --json "$out/cluster-$tag.json" --plot "$out/cluster-$tag.svg" \
    2>"$out/cluster-$tag.log" | tee "$out/cluster-$tag.txt" || true
}

spec_for 2
"$bin" secrets --spec "$dir/astrtc.toml" >/dev/null
"$bin" build --spec "$dir/astrtc.toml" ${ASTRTC_EXTRA_CA:+--extra-ca "$ASTRTC_EXTRA_CA"} >/dev/null
for pool in ${pools//,/ }; do
  deploy "$pool"
  echo "== cluster with $pool pool server(s) (hold $hold s, ramp $rate calls/s; load: $(cut -d' ' -f1-3 /proc/loadavg))"
  bench webrtc-echo "$levels_webrtc" "pool$pool-webrtc-echo"
  bench sip-echo "$levels_sip" "pool$pool-sip-echo"
done

# The sizing table from the JSON reports.
python3 - "$out" "$pools" <<'EOF'
import json, os, sys
out, pools = sys.argv[1], sys.argv[2].split(",")
def load(tag):
    p = os.path.join(out, f"cluster-{tag}.json")
    return json.load(open(p)) if os.path.exists(p) else None
def best(r):
    levels = [l for l in r["levels"] if l.get("service_cpu")]
    return ([l for l in levels if l["carried"]] or levels or [None])[-1]
def ms(c):
    return c["over_idle_per_call_second"] * 1000 if c else None
def cell(v):
    return "-" if v is None else f"{v:.2f}"
def per_core(v):
    return "-" if not v else f"{1000 / v:.0f}"
print("== cluster sizing (figures of this run, not asserted): CPU ms per second of one call, over idle; calls per core")
print("pool ms, relay ms: CPU ms per second of one call in the window (calls per core = 1000 / ms);")
print("edge setup: the edge's CPU ms per call placed, from the ramp's start to the window's (its work is")
print("signalling: near nothing in the window), and the call setups per second one core would take")
print(f"{'pool':>4} {'kind':<12} {'capacity':>9} {'at':>5} {'pool ms':>8} {'/core':>6} {'relay ms':>9} {'/core':>6} "
      f"{'edge setup':>11} {'setups/s':>9} {'gen ms':>7}")
for pool in pools:
    for kind in ["webrtc-echo", "sip-echo"]:
        r = load(f"pool{pool}-{kind}")
        if not r:
            continue
        l = best(r)
        if l is None:
            print(f"{pool:>4} {kind:<12} {'-':>9}")
            continue
        svc = l["service_cpu"]
        p, y = ms(l.get("asterisk_cpu")), ms(svc.get("relay"))
        e = l.get("service_setup_ms", {}).get("edge")
        g = ms(l.get("generator_cpu"))
        cap = r["capacity"] if r["capacity"] is not None else "none"
        print(f"{pool:>4} {kind:<12} {cap:>9} {l['calls']:>5} {cell(p):>8} {per_core(p):>6} {cell(y):>9} {per_core(y):>6} "
              f"{cell(e):>11} {per_core(e):>9} {cell(g):>7}")
        members = [s["name"] for s in r["services"] if s["role"] == "asterisk"]
        shares = ", ".join(f"{m} {cell(ms(svc.get(m)))}" for m in members)
        print(f"{'':>4} {'':<12} pool members (ms per second of one call of the run): {shares}")
EOF
echo "plots: $out/cluster-pool*-*.svg"
