#!/usr/bin/env bash
# L4 benchmark: `meridian l4`, Envoy 1.40 as an L4 node (both fed by one Meridian) and HAProxy
# in TCP mode (static config), one at a time on the same VIP, each pinned to core 0; nginx (the
# two "gateways", 127.0.0.11 and .12), iperf3 servers and the clients on core 1:
# - new connections: `wrk -t1 -c50 -H 'Connection: close'` through the VIP: connections/s,
#   CPU µs per connection (user + system of the L4 process) and the p99 of a request on a new
#   connection;
# - throughput: `iperf3 -c VIP` (one stream): Gb/s and % of a core per Gb/s;
# - UDP flows (meridian l4 and Envoy's UDP proxy): memory per tracked flow, from the RSS
#   growth while FLOWS=n clients (6,000 unless set; each flow holds a socket, and the open-file
#   limit bounds them) each send a datagram to a sink behind the VIP, and the flood of twice
#   the flow table's size that follows: RSS stays bounded, the oldest flows make room.
#
#   bash e2e/bench/l4.sh [seconds=10]
#   PERF_OUT=/tmp/l4.perf bash e2e/bench/l4.sh   # also profiles meridian l4's new connections
#   PEERS="meridian-l4" bash e2e/bench/l4.sh     # only some peers (ratios need haproxy)
#   UDP_ONLY=1 bash e2e/bench/l4.sh              # only the UDP flows
#
# Needs wrk, iperf3, haproxy and nginx (`make bench-l4` installs them), Envoy (`make deps`).
set -euo pipefail
seconds=${1:-10}
repo=$(cd "$(dirname "$0")/../.." && pwd)
. "$repo/e2e/bench/l4_common.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}
meridian="$CARGO_TARGET_DIR/release/meridian"
envoy=$(python3 -c "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))")
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
vip=127.77.0.1
http_port=18080
iperf_port=15201
# One iperf3 server for both gateway addresses, on a port of its own: a test's control and data
# connections are two flows, which the VIP may send to different gateways, and a wildcard
# listener on the VIP's port would take the VIP's.
gateway_iperf_port=15202
udp_port=15353
flows=${FLOWS:-6000}
gateway_port=$(free_port)

(cd "$repo" && cargo build --quiet --release --bin meridian)

gateways_nginx_config "$work/nginx" "$gateway_port" 127.0.0.11 127.0.0.12
taskset -c 1 nginx -c "$work/nginx/nginx.conf" -p "$work/nginx"
pids+=("$(cat "$work/nginx/nginx.pid")")
taskset -c 1 iperf3 -s -p "$gateway_iperf_port" >/dev/null 2>&1 &
pids+=($!)
for gateway in 127.0.0.11 127.0.0.12; do
  # A UDP sink: takes datagrams, answers none.
  taskset -c 1 python3 -c "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True: s.recv(2048)" "$gateway" "$udp_port" &
  pids+=($!)
done

xds=$(free_port)
mkdir -p "$work/config" "$work/state"
bench_l4_manifests "$work/config/bench.yaml" 127.77.0.0/29 "$http_port:$gateway_port" \
  "$iperf_port:$gateway_iperf_port" "$udp_port" 127.0.0.11 127.0.0.12
"$meridian" standalone --config-dir "$work/config" --state-dir "$work/state" \
  --xds-addr "127.0.0.1:$xds" --admin-addr 127.0.0.1:0 >"$work/meridian.log" 2>&1 &
pids+=($!)
sleep 1

haproxy_config() {
  haproxy_l4_config "$work/haproxy.cfg" "$vip" "$http_port" "$iperf_port" "$gateway_port" "$gateway_iperf_port" \
    127.0.0.11 127.0.0.12
}

# Starts the named L4 peer on core 0; prints its pid.
start() {
  case $1 in
    meridian-l4)
      "$meridian" bootstrap --node-id bench-l4 --role l4 --xds-addr "127.0.0.1:$xds" \
        --admin-port "$(free_port)" > "$work/l4.json"
      RUST_LOG=warn taskset -c 0 "$meridian" l4 -c "$work/l4.json" >"$work/l4.log" 2>&1 &
      ;;
    envoy)
      "$meridian" bootstrap --node-id bench-envoy --role l4 --xds-addr "127.0.0.1:$xds" \
        --admin-port "$(free_port)" > "$work/envoy.json"
      taskset -c 0 "$envoy" --disable-hot-restart --concurrency 1 -c "$work/envoy.json" \
        -l warning >"$work/envoy.log" 2>&1 &
      ;;
    haproxy)
      haproxy_config
      taskset -c 0 haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
      ;;
  esac
  echo $!
}

wait_vip() {
  for _ in $(seq 1 200); do
    curl -fs --max-time 1 "http://$vip:$http_port/" >/dev/null && return 0
    sleep 0.1
  done
  echo "$1 does not answer on $vip:$http_port" >&2; exit 1
}

declare -A cps cpu p99 gbps core_per_gbps
measure() { # name
  local name=$1 pid
  pid=$(start "$name"); pids+=("$pid")
  wait_vip "$name"
  sleep 2 # health checks settle
  taskset -c 1 wrk -t1 -c50 -d2s -H 'Connection: close' "http://$vip:$http_port/" >/dev/null
  local before after out connections
  if [ -n "${PERF_OUT:-}" ] && [ "$name" = meridian-l4 ]; then
    (sleep 2; perf record -g -e cpu-clock -F 2000 -p "$pid" -o "$PERF_OUT" -- sleep 5 >/dev/null 2>&1) &
  fi
  before=$(ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c50 -d"${seconds}s" --latency -H 'Connection: close' "http://$vip:$http_port/")
  after=$(ticks "$pid")
  if echo "$out" | grep -q 'Socket errors\|Non-2xx'; then echo "$name:"; echo "$out"; fi
  connections=$(echo "$out" | awk '/requests in/ {print $1}')
  cps[$name]=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  p99[$name]=$(echo "$out" | awk '$1 == "99%" {print $2}')
  cpu[$name]=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$connections" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')

  before=$(ticks "$pid")
  out=$(taskset -c 1 iperf3 -c "$vip" -p "$iperf_port" -t "$seconds" -J)
  after=$(ticks "$pid")
  local bits
  bits=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
  gbps[$name]=$(awk -v b="$bits" 'BEGIN {printf "%.2f", b / 1e9}')
  core_per_gbps[$name]=$(awk -v t=$((after - before)) -v hz="$hz" -v s="$seconds" -v b="$bits" \
    'BEGIN {printf "%.1f", (t / hz / s) * 100 / (b / 1e9)}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sleep 1
}

rss() { awk '/^VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }
# Sends one datagram to the VIP from each of $1 new client sockets.
udp_clients() {
  taskset -c 1 python3 -c "
import socket, sys
import time
for i in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b'x', ('$vip', $udp_port))
    s.close()
    if i % 100 == 99: time.sleep(0.002)  # paced, so the VIP socket's buffer drops none
" "$1"
}
# Flows the peer tracks now.
udp_sessions() {
  case $1 in
    meridian-l4) curl -fs "http://127.0.0.1:$2/stats/prometheus" | awk '/^meridian_l4_udp_flows\{/ {s += $2} END {print s + 0}' ;;
    envoy) curl -fs "http://127.0.0.1:$2/stats" | awk -F': ' '/downstream_sess_active/ {s += $2} END {print s + 0}' ;;
  esac
}
declare -A flow_bytes flood_rss flood_tracked
measure_udp() { # name
  local name=$1 pid admin
  admin=$(free_port)
  case $name in
    meridian-l4)
      "$meridian" bootstrap --node-id bench-l4-udp --role l4 --xds-addr "127.0.0.1:$xds" \
        --admin-port "$admin" > "$work/l4-udp.json"
      RUST_LOG=warn taskset -c 0 "$meridian" l4 -c "$work/l4-udp.json" --udp-flows "$flows" \
        >"$work/l4-udp.log" 2>&1 &
      ;;
    envoy)
      "$meridian" bootstrap --node-id bench-envoy-udp --role l4 --xds-addr "127.0.0.1:$xds" \
        --admin-port "$admin" > "$work/envoy-udp.json"
      taskset -c 0 "$envoy" --disable-hot-restart --concurrency 1 -c "$work/envoy-udp.json" \
        -l warning >"$work/envoy-udp.log" 2>&1 &
      ;;
  esac
  pid=$!; pids+=("$pid")
  wait_vip "$name"
  # From no flow to a full table (reserved when the listener starts, touched as flows come).
  sleep 1
  local before after tracked
  before=$(rss "$pid")
  udp_clients "$flows"; sleep 2
  after=$(rss "$pid"); tracked=$(udp_sessions "$name" "$admin")
  flow_bytes[$name]=$(awk -v a="$after" -v b="$before" -v n="$tracked" \
    'BEGIN {if (n > 0) printf "%.0f (%d flows)", (a - b) / n, n; else printf "- (0 flows)"}')
  udp_clients $((flows * 2)); sleep 2
  flood_rss[$name]=$(awk -v a="$(rss "$pid")" 'BEGIN {printf "%.1f", a / 1048576}')
  flood_tracked[$name]=$(udp_sessions "$name" "$admin")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sleep 1
}

peers=${PEERS:-meridian-l4 envoy haproxy}
[ -n "${UDP_ONLY:-}" ] || for peer in $peers; do measure "$peer"; done
for peer in $peers; do [ "$peer" = haproxy ] || measure_udp "$peer"; done

ratio() { [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}' || echo -; }
[ -n "${UDP_ONLY:-}" ] || {
echo
echo "new connections (wrk -t1 -c50, Connection: close, ${seconds}s; L4 node on core 0)"
printf '%-12s %10s %10s %10s %18s\n' peer conn/s "µs/conn" p99 "µs/conn vs haproxy"
for name in $peers; do
  printf '%-12s %10s %10s %10s %18s\n' "$name" "${cps[$name]}" "${cpu[$name]}" "${p99[$name]}" \
    "$(ratio "${cpu[$name]}" "${cpu[haproxy]:-}")"
done
echo
echo "throughput (iperf3, one stream, ${seconds}s)"
printf '%-12s %10s %14s %22s\n' peer Gb/s "% core/Gb/s" "% core/Gb/s vs haproxy"
for name in $peers; do
  printf '%-12s %10s %14s %22s\n' "$name" "${gbps[$name]}" "${core_per_gbps[$name]}" \
    "$(ratio "${core_per_gbps[$name]}" "${core_per_gbps[haproxy]:-}")"
done
}
echo
echo "UDP flows (one datagram each from new client ports; Envoy's sessions without a cap)"
printf '%-12s %22s %28s\n' peer "bytes/flow (RSS)" "after $((flows * 2)) more: RSS MiB, flows"
for name in $peers; do
  [ "$name" = haproxy ] && continue
  printf '%-12s %22s %28s\n' "$name" "${flow_bytes[$name]}" "${flood_rss[$name]}, ${flood_tracked[$name]}"
done
