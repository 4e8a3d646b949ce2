#!/usr/bin/env bash
# The L4 node's packet path against its user-space path and HAProxy, in network namespaces
# (the XDP program needs real interfaces): a client namespace reaches the VIP through the node
# namespace, whose two veths lead to the client and to a hub namespace with the gateways (nginx
# on 10.99.0.21 and .22, iperf3 servers, a UDP sink) and Meridian. Transmit checksum offload
# is off on the veths, as on a wire. One peer at a time runs in the node, pinned to core 0;
# the client, nginx and iperf3 run on core 1.
#
# With XDP (generic mode here: veths), a packet is forwarded in the softirq of the CPU that
# sent it, so the node's cost does not show as a process's CPU. Three views of it:
# - the program's own time (kernel.bpf_stats_enabled: run_time_ns / run_cnt) per connection;
# - every CPU's busy time per connection for the whole set-up (client, node, nginx), beside
#   the same for the user-space peers and for a baseline without an L4 node (`routed`: the
#   client straight to a gateway, the node's kernel forwarding): what a peer adds to that
#   baseline is what its path costs beyond routing;
# - for the user-space peers, their process's CPU per connection as in e2e/bench/l4.sh.
# UDP: the kernel's memory (memlock) of the two flow maps per tracked flow, and a flood of
# twice the table's flows: the maps stay at their size, the least recently used flows go.
#
#   bash e2e/bench/l4_xdp.sh [seconds=10]
#
# Needs wrk, iperf3, haproxy, nginx, bpftool and ethtool (`make bench-l4-xdp` installs them).
set -euo pipefail
seconds=${1:-10}
repo=$(cd "$(dirname "$0")/../.." && pwd)
. "$repo/e2e/bench/l4_common.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}
meridian="$CARGO_TARGET_DIR/release/meridian"
work=$(mktemp -d)
prefix="mxb$$"
hub="$prefix-hub" node="$prefix-node" client="$prefix-cli"
pids=()
stats_before=$(cat /proc/sys/kernel/bpf_stats_enabled)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for n in "$hub" "$node" "$client"; do ip netns del "$n" 2>/dev/null || true; done
  echo "$stats_before" > /proc/sys/kernel/bpf_stats_enabled
  rm -rf "$work"
}
trap cleanup EXIT

inns() { local n=$1; shift; ip netns exec "$n" "$@"; }
vip=10.100.0.1
http_port=8080 gateway_port=8081 iperf_port=5201 udp_port=5353 xds=18000
flows=${FLOWS:-65536}  # --xdp-flows, so that the flood below fills it twice over
hz=$(getconf CLK_TCK)

(cd "$repo" && cargo build --quiet --release --bin meridian)

for n in "$hub" "$node" "$client"; do ip netns add "$n"; inns "$n" ip link set lo up; done
inns "$hub" ip link add br0 type bridge
inns "$hub" ip addr add 10.99.0.1/24 dev br0
inns "$hub" ip addr add 10.99.0.21/24 dev br0
inns "$hub" ip addr add 10.99.0.22/24 dev br0
inns "$hub" ip link set br0 up
# A veth pair: NAME_A (address ADDRESS_A, or none) in NS_A and NAME_B in NS_B.
#   veth NS_A NAME_A ADDRESS_A NS_B NAME_B ADDRESS_B
veth_count=0
veth() {
  veth_count=$((veth_count + 1))
  local left="${prefix}l$veth_count" right="${prefix}r$veth_count"
  ip link add "$left" type veth peer name "$right"
  ip link set "$left" netns "$1"; ip link set "$right" netns "$4"
  inns "$1" ip link set "$left" name "$2"
  inns "$4" ip link set "$right" name "$5"
  if [ -n "$3" ]; then inns "$1" ip addr add "$3" dev "$2"; fi
  if [ -n "$6" ]; then inns "$4" ip addr add "$6" dev "$5"; fi
  inns "$1" ip link set "$2" up
  inns "$4" ip link set "$5" up
}
veth "$node" eth0 10.99.0.11/24 "$hub" node ""
inns "$hub" ip link set node master br0
veth "$node" eth1 10.98.0.1/24 "$client" eth0 10.98.0.2/24
inns "$client" ip route add default via 10.98.0.1
# UDP flows come from eight client addresses and every port, so a flood has more distinct
# 5-tuples than the flow table holds.
for i in 3 4 5 6 7 8 9; do inns "$client" ip addr add "10.98.0.$i/24" dev eth0; done
inns "$client" sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
# For the baseline without an L4 node: the client straight to a gateway, routed by the node.
inns "$hub" ip route add 10.98.0.0/24 via 10.99.0.11
inns "$node" ip route add local 10.100.0.0/29 dev lo
inns "$node" sysctl -qw net.ipv4.ip_forward=1
inns "$client" ethtool -K eth0 tx off >/dev/null
inns "$hub" ethtool -K br0 tx off >/dev/null
inns "$hub" ethtool -K node tx off >/dev/null
# The client opens many short connections: let it reuse its ports.
inns "$client" sysctl -qw net.ipv4.tcp_tw_reuse=1

gateways_nginx_config "$work/nginx" "$gateway_port" 10.99.0.21 10.99.0.22
inns "$hub" taskset -c 1 nginx -c "$work/nginx/nginx.conf" -p "$work/nginx"
pids+=("$(cat "$work/nginx/nginx.pid")")
# One iperf3 server for both gateway addresses: a test's control and data connections are
# two flows, which the VIP may send to different gateways.
ip netns exec "$hub" taskset -c 1 iperf3 -s -p "$iperf_port" >/dev/null 2>&1 &
pids+=($!)
for gateway in 10.99.0.21 10.99.0.22; do
  ip netns exec "$hub" taskset -c 1 python3 -c "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True: s.recv(2048)" "$gateway" "$udp_port" &
  pids+=($!)
done

mkdir -p "$work/config" "$work/state"
bench_l4_manifests "$work/config/bench.yaml" 10.100.0.0/29 "$http_port:$gateway_port" \
  "$iperf_port:$iperf_port" "$udp_port" 10.99.0.21 10.99.0.22
ip netns exec "$hub" taskset -c 1 "$meridian" standalone --config-dir "$work/config" --state-dir "$work/state" \
  --xds-addr "0.0.0.0:$xds" --admin-addr 127.0.0.1:0 >"$work/meridian.log" 2>&1 &
pids+=($!)
sleep 1
"$meridian" bootstrap --node-id bench-l4 --role l4 --xds-addr "10.99.0.1:$xds" \
  --admin-port 9901 > "$work/l4.json"

haproxy_l4_config "$work/haproxy.cfg" "$vip" "$http_port" "$iperf_port" "$gateway_port" "$iperf_port" \
  10.99.0.21 10.99.0.22

# Starts the named peer in the node on core 0; prints its pid (`ip netns exec` execs it, so
# the pid is the peer's).
start() {
  case $1 in
    xdp)
      RUST_LOG=warn ip netns exec "$node" taskset -c 0 "$meridian" l4 -c "$work/l4.json" \
        --xdp-interface eth0 --xdp-interface eth1 --xdp-mode generic --xdp-flows "$flows" \
        >"$work/l4-xdp.log" 2>&1 & ;;
    user-space)
      RUST_LOG=warn ip netns exec "$node" taskset -c 0 "$meridian" l4 -c "$work/l4.json" \
        >"$work/l4.log" 2>&1 & ;;
    haproxy)
      ip netns exec "$node" taskset -c 0 haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 & ;;
    routed)
      sleep 3600 >/dev/null 2>&1 & ;; # nothing on the node but the kernel's forwarding
  esac
  echo $!
}
# Where each peer's clients go.
target() { [ "$1" = routed ] && echo 10.99.0.21 || echo "$vip"; }
port_of() { [ "$1" = routed ] && echo "$gateway_port" || echo "$http_port"; }

wait_vip() {
  for _ in $(seq 1 300); do
    inns "$client" curl -fs --max-time 1 "http://$(target "$1"):$(port_of "$1")/" >/dev/null && return 0
    sleep 0.1
  done
  echo "$1 does not answer on $vip:$http_port" >&2; cat "$work"/*.log >&2; exit 1
}

busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The program's total run time (ns) and runs, over its attachments.
prog_stats() {
  { bpftool prog show name meridian_l4 2>/dev/null || true; } |
    awk '{for (i = 1; i < NF; i++) { if ($i == "run_time_ns") t += $(i + 1); if ($i == "run_cnt") c += $(i + 1) }} END {print t + 0, c + 0}'
}

declare -A cps total node_cpu p99 prog_ns prog_runs gbps total_gbps node_gbps
measure() { # name
  local name=$1 pid
  pid=$(start "$name"); pids+=("$pid")
  wait_vip "$name"
  sleep 3 # health checks settle
  if [ "$name" = xdp ]; then measure_udp "$pid"; fi
  local url; url="http://$(target "$name"):$(port_of "$name")/"
  inns "$client" taskset -c 1 wrk -t1 -c50 -d2s -H 'Connection: close' "$url" >/dev/null
  local b_busy a_busy b_ticks a_ticks b_prog a_prog out connections
  b_busy=$(busy); b_ticks=$(ticks "$pid"); b_prog=$(prog_stats)
  out=$(inns "$client" taskset -c 1 wrk -t1 -c50 -d"${seconds}s" --latency -H 'Connection: close' "$url")
  a_busy=$(busy); a_ticks=$(ticks "$pid"); a_prog=$(prog_stats)
  if echo "$out" | grep -q 'Socket errors\|Non-2xx'; then echo "$name:"; echo "$out"; fi
  connections=$(echo "$out" | awk '/requests in/ {print $1}')
  cps[$name]=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  p99[$name]=$(echo "$out" | awk '$1 == "99%" {print $2}')
  total[$name]=$(awk -v t=$((a_busy - b_busy)) -v hz="$hz" -v n="$connections" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  node_cpu[$name]=$(awk -v t=$((a_ticks - b_ticks)) -v hz="$hz" -v n="$connections" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  read -r bt bc <<<"$b_prog"; read -r at ac <<<"$a_prog"
  prog_ns[$name]=$(awk -v t=$((at - bt)) -v n="$connections" 'BEGIN {printf "%.2f", t / 1000 / n}')
  prog_runs[$name]=$(awk -v c=$((ac - bc)) -v n="$connections" 'BEGIN {printf "%.1f", c / n}')

  b_busy=$(busy); b_ticks=$(ticks "$pid")
  out=$(inns "$client" taskset -c 1 iperf3 -c "$(target "$name")" -p "$iperf_port" -t "$seconds" -J)
  a_busy=$(busy); a_ticks=$(ticks "$pid")
  local bits
  bits=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
  gbps[$name]=$(awk -v b="$bits" 'BEGIN {printf "%.2f", b / 1e9}')
  total_gbps[$name]=$(awk -v t=$((a_busy - b_busy)) -v hz="$hz" -v s="$seconds" -v b="$bits" \
    'BEGIN {printf "%.1f", (t / hz / s) * 100 / (b / 1e9)}')
  node_gbps[$name]=$(awk -v t=$((a_ticks - b_ticks)) -v hz="$hz" -v s="$seconds" -v b="$bits" \
    'BEGIN {printf "%.1f", (t / hz / s) * 100 / (b / 1e9)}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sleep 1
}

# Sends one datagram to the VIP from each of $1 new client ports.
udp_clients() {
  inns "$client" taskset -c 1 python3 -c "
import socket, sys, time
for i in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('10.98.0.%d' % (2 + i % 8), 0))
    s.sendto(b'x', ('$vip', $udp_port))
    s.close()
    if i % 100 == 99: time.sleep(0.002)  # paced: the receive backlog (1,000) drops none
" "$1"
}
map_field() { # map field
  bpftool map show name "$1" | awk -v f="$2" '{for (i = 1; i < NF; i++) if ($i == f) print $(i + 1)}' | head -1
}
map_entries() { bpftool map dump name "$1" 2>/dev/null | awk '/^Found/ {print $2}'; }
udp_summary=""
measure_udp() { # l4 pid
  local memlock_flows memlock_nat max
  memlock_flows=$(map_field flows memlock | tr -d B)
  memlock_nat=$(map_field nat memlock | tr -d B)
  max=$(map_field flows max_entries)
  udp_clients 10000
  sleep 0.5
  local tracked; tracked=$(map_entries flows)
  udp_clients $((flows * 2))
  sleep 0.5
  local flooded; flooded=$(map_entries flows)
  udp_summary=$(awk -v f="$memlock_flows" -v n="$memlock_nat" -v m="$max" -v t="$tracked" -v d="$flooded" -v c=$((flows * 2)) \
    'BEGIN {printf "%.0f bytes per flow (flows %.0f + nat %.0f, reserved for %d flows); %d tracked after 10,000 flows, %d after %d more", (f + n) / m, f / m, n / m, m, t, d, c}')
}

enabled_stats() { echo 1 > /proc/sys/kernel/bpf_stats_enabled; }
enabled_stats
peers=${PEERS:-xdp user-space haproxy routed}
for peer in $peers; do measure "$peer"; done

ratio() { [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}' || echo -; }
echo
echo "new connections (wrk -t1 -c50, Connection: close, ${seconds}s; node on core 0, the rest on core 1)"
printf '%-11s %8s %8s %15s %14s %16s %12s\n' peer conn/s p99 "all CPUs µs/c" "node proc µs/c" "XDP prog µs/c" "XDP runs/c"
for name in $peers; do
  printf '%-11s %8s %8s %15s %14s %16s %12s\n' "$name" "${cps[$name]}" "${p99[$name]}" "${total[$name]}" \
    "${node_cpu[$name]}" "${prog_ns[$name]}" "${prog_runs[$name]}"
done
if [ -n "${total[routed]:-}" ] && [ -n "${total[xdp]:-}" ]; then
  awk -v r="${total[routed]}" -v x="${total[xdp]}" -v h="${total[haproxy]:-0}" \
    'BEGIN {printf "all CPUs per connection beyond the routed baseline: xdp %.1f µs, haproxy %.1f µs\n", x - r, h - r}'
fi
echo
echo "throughput (iperf3, one stream, ${seconds}s)"
printf '%-11s %8s %22s %22s\n' peer Gb/s "all CPUs % core/Gb/s" "node proc % core/Gb/s"
for name in $peers; do
  printf '%-11s %8s %22s %22s\n' "$name" "${gbps[$name]}" "${total_gbps[$name]}" "${node_gbps[$name]}"
done
echo
[ -n "$udp_summary" ] && echo "UDP on the packet path: $udp_summary"
