#!/usr/bin/env bash
# Render benchmark: `astrtc render` wall time for the default spec and for a 1000-endpoint spec
# (goal: <= 50 ms). Not a test: it reports figures, it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/target/release/astrtc"
[ -x "$bin" ] || cargo build --release --locked
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
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
hyperfine -N --warmup 3 --runs 30 --export-markdown "$work/bench.md" \
  -n "render default (3 endpoints)" "$bin render --spec $work/default/astrtc.toml --out $work/default/deploy" \
  -n "render 1000 endpoints" "$bin render --spec $work/big/astrtc.toml --out $work/big/deploy" \
  -n "render --check 1000 endpoints" "$bin render --check --spec $work/big/astrtc.toml --out $work/big/deploy"
cat "$work/bench.md"
