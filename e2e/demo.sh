#!/usr/bin/env bash
# Standalone demo: two HTTP backends, Meridian serving examples/demo, and a real Envoy.
# Everything binds to 127.0.0.1 and stops on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}"
meridian="$target/debug/meridian"
envoy="$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
work="$(mktemp -d)"
config="$work/config"
cp -r examples/demo "$config"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

for pair in blue:18081 green:18082; do
  name="${pair%%:*}" port="${pair##*:}"
  mkdir -p "$work/$name" && echo "hello from $name" > "$work/$name/index.html"
  (cd "$work/$name" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
  pids+=($!)
done
"$meridian" standalone --config-dir "$config" --state-dir "$work/state" &
pids+=($!)
"$meridian" bootstrap --node-id demo-gateway --gateway edge/public > "$work/bootstrap.json"
"$envoy" --disable-hot-restart -c "$work/bootstrap.json" -l warning &
pids+=($!)

for _ in $(seq 1 50); do
  curl -sf -H 'Host: shop.example.test' http://127.0.0.1:10080/blue >/dev/null && break
  sleep 0.2
done
echo
echo "== Meridian is serving Envoy on 127.0.0.1:10080 =="
echo "\$ curl -H 'Host: shop.example.test' http://127.0.0.1:10080/blue"
curl -s -H 'Host: shop.example.test' http://127.0.0.1:10080/blue
echo "\$ 100 requests to / (90/10 split between blue and green):"
for _ in $(seq 1 100); do curl -s -H 'Host: shop.example.test' http://127.0.0.1:10080/; done | sort | uniq -c
echo "\$ $meridian status"
"$meridian" status
echo
echo "Edit $config/shop.yaml and Envoy follows within a second."
echo "Admin: http://127.0.0.1:9090/debug/syncz  /debug/status  /debug/problems  /metrics   (Ctrl-C stops everything)"
[ -t 0 ] && wait || true
