#!/usr/bin/env bash
# Proxy benchmark: CPU per request of `meridian proxy`, Envoy 1.40 (both fed by one Meridian)
# and HAProxy (static config), each pinned to core 0, against one nginx backend on core 1, in
# the same run:
# - HTTP/1.1: `wrk -t1 -c50` keep-alive (on core 1): requests/s, CPU µs per request (user +
#   system of the proxy process), p99, and the ratio to Envoy;
# - h2c: `h2load -c50 -m10` (prior knowledge, on core 1): the same, mean latency for p99;
# - for both, the proxy against HAProxy a second time in the reverse order (proxy, HAProxy,
#   HAProxy, proxy), so that a machine slowing down or speeding up over the runs, as this
#   shared VM does, cancels out of the mean of the two ratios;
# - TLS (TLS 1.3, ECDSA P-256 certificates: Meridian's CA for Envoy and the proxy, an
#   openssl one for HAProxy): keep-alive requests (`wrk -t1 -c50`, CPU per request) and new
#   connections (`Connection: close`, a full handshake each: Debian's wrk resumes no session),
#   the client resolving bench.example.test to 127.0.0.1 in a mount namespace of its own so
#   it sends SNI;
# - memory: RSS growth per idle keep-alive connection, 10,000 connections that each sent one
#   request (IDLE=n to change the count), 1 s and 5 s after the last one;
# - route swaps: p99 of `wrk -t1 -c50` to one of 10,000 virtual hosts (SWAP_HOSTS=n), Envoy
#   and the proxy each fed their own AccessPoint: with the config still; while Meridian
#   rewrites the other peer's AccessPoint every second with that peer stopped (Meridian and
#   the writer of the versions run on the client's core at idle priority, as if elsewhere);
#   while it rewrites the measured peer's (each version sets another response header on
#   every route); while it rewrites a one-host AccessPoint of the measured peer's beside them.
#
#   bash e2e/bench/proxy.sh [seconds=10]
#   PERF_OUT=/tmp/proxy.perf bash e2e/bench/proxy.sh   # also profiles meridian proxy (perf)
#
# Needs wrk, h2load, haproxy and nginx (`make bench-proxy` installs them), Envoy (`make deps`).
set -euo pipefail
seconds=${1:-10}
idle=${IDLE:-10000}
ulimit -n "$(ulimit -Hn)"  # the idle-connection test holds 10,000 sockets
repo=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}
meridian="$CARGO_TARGET_DIR/release/meridian"
envoy=$(python3 -c "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))")
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; kill -CONT "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

(cd "$repo" && cargo build --quiet --release --bin meridian)

backend=$(free_port)
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend; location / { return 200 "ok\n"; } }
}
EOF
taskset -c 1 nginx -c "$work/nginx/nginx.conf" -p "$work/nginx"
pids+=("$(cat "$work/nginx/nginx.pid")")

envoy_port=$(free_port); proxy_port=$(free_port); haproxy_port=$(free_port); xds=$(free_port)
haproxy_h2c_port=$(free_port)
envoy_tls=$(free_port); proxy_tls=$(free_port); haproxy_tls=$(free_port)
mkdir -p "$work/config" "$work/state"
cat > "$work/config/bench.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: web, namespace: bench}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: bench, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: ["127.0.0.1"]}]
ports: [{name: http, port: $backend}]
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: web, namespace: bench}
spec:
  template:
    gateways:
    - metadata: {name: envoy}
      spec:
        servers:
        - {port: {number: $envoy_port, protocol: HTTP}, bind: 127.0.0.1, hosts: ["*/*"]}
        - {port: {number: $envoy_tls, protocol: HTTPS}, bind: 127.0.0.1, hosts: ["*/bench.example.test"], tls: {mode: SIMPLE}}
    - metadata: {name: proxy}
      spec:
        servers:
        - {port: {number: $proxy_port, protocol: HTTP}, bind: 127.0.0.1, hosts: ["*/*"]}
        - {port: {number: $proxy_tls, protocol: HTTPS}, bind: 127.0.0.1, hosts: ["*/bench.example.test"], tls: {mode: SIMPLE}}
    virtualServices:
    - metadata: {name: web}
      spec:
        hosts: [bench.example.test]
        gateways: [envoy, proxy]
        http: [{route: [{destination: {host: web}}]}]
EOF
# Keys over plain ADS: loopback only, for the benchmark. Meridian runs on the client's core at
# idle priority (SCHED_IDLE), as if on a machine of its own: its translations of the swap
# configs below then fill that core's gaps rather than stalling the client and the backend.
taskset -c 1 chrt -i 0 "$meridian" standalone --config-dir "$work/config" --state-dir "$work/state" \
  --xds-addr "127.0.0.1:$xds" --admin-addr 127.0.0.1:0 --insecure-serve-keys-without-mtls \
  >"$work/meridian.log" 2>&1 &
pids+=($!)
sleep 1
"$meridian" bootstrap --node-id bench-envoy --gateway bench/envoy --xds-addr "127.0.0.1:$xds" \
  --admin-port "$(free_port)" > "$work/envoy.json"
"$meridian" bootstrap --node-id bench-proxy --gateway bench/proxy --xds-addr "127.0.0.1:$xds" \
  --admin-port "$(free_port)" > "$work/proxy.json"
taskset -c 0 "$envoy" --disable-hot-restart --concurrency 1 -c "$work/envoy.json" -l warning \
  >"$work/envoy.log" 2>&1 &
envoy_pid=$!; pids+=($envoy_pid)
RUST_LOG=warn taskset -c 0 "$meridian" proxy -c "$work/proxy.json" --workers 1 >"$work/proxy.log" 2>&1 &
proxy_pid=$!; pids+=($proxy_pid)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=bench.example.test -addext subjectAltName=DNS:bench.example.test \
  -keyout "$work/haproxy.key" -out "$work/haproxy.crt" 2>/dev/null
cat "$work/haproxy.crt" "$work/haproxy.key" > "$work/haproxy.pem"
cat > "$work/haproxy.cfg" <<EOF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend bench
  bind 127.0.0.1:$haproxy_port
  default_backend web
frontend bench_h2c
  bind 127.0.0.1:$haproxy_h2c_port proto h2
  default_backend web
frontend bench_tls
  bind 127.0.0.1:$haproxy_tls ssl crt $work/haproxy.pem alpn http/1.1
  default_backend web
backend web
  http-reuse always
  server web1 127.0.0.1:$backend
EOF
taskset -c 0 haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!; pids+=($haproxy_pid)

for port in $envoy_port $proxy_port $haproxy_port; do
  for _ in $(seq 1 100); do
    curl -fs -H 'Host: bench.example.test' "http://127.0.0.1:$port/" >/dev/null && break
    sleep 0.1
  done
done
for port in $envoy_tls $proxy_tls $haproxy_tls; do
  for _ in $(seq 1 100); do
    curl -fsk --resolve "bench.example.test:$port:127.0.0.1" "https://bench.example.test:$port/" \
      >/dev/null && break
    sleep 0.1
  done
done
echo "127.0.0.1 bench.example.test" > "$work/hosts"
# The TLS client sees bench.example.test at 127.0.0.1 (for SNI), in a mount namespace only.
sni_wrk() { taskset -c 1 unshare -m sh -c 'mount --bind "$0" /etc/hosts && exec wrk "$@"' "$work/hosts" "$@"; }

# One measured run: `wrk_cpu name pid rates cpus tails command...` runs the wrk command and
# stores its requests/s, the peer's CPU µs per request and p99 by name in the arrays named.
wrk_cpu() {
  local name=$1 pid=$2; local -n rates=$3 cpus=$4 tails=$5; shift 5
  local before; before=$(ticks "$pid")
  local out; out=$("$@")
  local after; after=$(ticks "$pid")
  local requests; requests=$(echo "$out" | awk '/requests in/ {print $1}')
  rates[$name]=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  tails[$name]=$(echo "$out" | awk '$1 == "99%" {print $2}')
  cpus[$name]=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  if echo "$out" | grep -q 'Non-2xx'; then echo "$name: non-2xx responses:"; echo "$out"; exit 1; fi
}
declare -A rps cpu p99
run() { # name pid port
  taskset -c 1 wrk -t1 -c50 -d2s -H 'Host: bench.example.test' "http://127.0.0.1:$3/" >/dev/null
  wrk_cpu "$1" "$2" rps cpu p99 taskset -c 1 wrk -t1 -c50 -d"${seconds}s" --latency \
    -H 'Host: bench.example.test' "http://127.0.0.1:$3/"
}
run envoy $envoy_pid $envoy_port
if [ -n "${PERF_OUT:-}" ]; then
  (sleep 3; perf record -e cpu-clock -F 2000 -p "$proxy_pid" -o "$PERF_OUT" -- sleep 5) &
fi
run meridian-proxy $proxy_pid $proxy_port
run haproxy $haproxy_pid $haproxy_port
run haproxy-again $haproxy_pid $haproxy_port
run meridian-proxy-again $proxy_pid $proxy_port

run_h2c() { # name pid port
  taskset -c 1 h2load -c50 -m10 -D 2 -H ':authority: bench.example.test' "http://127.0.0.1:$3/" >/dev/null
  local before; before=$(ticks "$2")
  local out; out=$(taskset -c 1 h2load -c50 -m10 -D "$seconds" -H ':authority: bench.example.test' "http://127.0.0.1:$3/")
  local after; after=$(ticks "$2")
  local requests; requests=$(echo "$out" | awk '/^requests:/ {print $8}')
  h2rps[$1]=$(echo "$out" | awk '/^finished in/ {gsub(",", "", $4); printf "%.0f", $4}')
  h2mean[$1]=$(echo "$out" | awk '/^time for request:/ {print $6}')
  h2cpu[$1]=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  if ! echo "$out" | grep -q "^status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx"; then
    echo "$1: h2c answers other than 2xx:"; echo "$out"; exit 1
  fi
}
declare -A h2rps h2cpu h2mean
run_h2c envoy $envoy_pid $envoy_port
run_h2c meridian-proxy $proxy_pid $proxy_port
run_h2c haproxy $haproxy_pid $haproxy_h2c_port
run_h2c haproxy-again $haproxy_pid $haproxy_h2c_port
run_h2c meridian-proxy-again $proxy_pid $proxy_port

declare -A tls_rps tls_cpu tls_p99 hs_rps hs_cpu hs_p99
run_tls() { # name pid port
  local url="https://bench.example.test:$3/"
  sni_wrk -t1 -c50 -d2s "$url" >/dev/null
  wrk_cpu "$1" "$2" tls_rps tls_cpu tls_p99 sni_wrk -t1 -c50 -d"${seconds}s" --latency "$url"
  wrk_cpu "$1" "$2" hs_rps hs_cpu hs_p99 sni_wrk -t1 -c50 -d"${seconds}s" --latency \
    -H 'Connection: close' "$url"
}
run_tls envoy $envoy_pid $envoy_tls
run_tls meridian-proxy $proxy_pid $proxy_tls
run_tls haproxy $haproxy_pid $haproxy_tls

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
idle_memory() { # name pid port: RSS growth per idle keep-alive connection, in bytes
  local before; before=$(rss_kib "$2")
  python3 - "$3" "$idle" "$work/idle-$1" <<'PY' &
import socket, sys, time, os
port, count, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
for _ in range(count):
    # One request at a time, so upstream connections are reused, not multiplied.
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench.example.test\r\n\r\n")
    data = b""
    while not data.endswith(b"ok\n"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed before the response")
        data += chunk
    conns.append(s)
open(ready, "w").close()
time.sleep(30)
PY
  local client=$!
  for _ in $(seq 1 600); do [ -e "$work/idle-$1" ] && break; sleep 0.1; done
  sleep 1
  local after; after=$(rss_kib "$2")
  idle_bytes[$1]=$(( (after - before) * 1024 / idle ))
  # meridian proxy releases an idle connection's HTTP state after 1-2 s, and the allocator
  # hands freed pages back a few seconds later: measure once more after 5 s.
  sleep 4
  after=$(rss_kib "$2")
  idle_settled[$1]=$(( (after - before) * 1024 / idle ))
  kill "$client" 2>/dev/null || true; wait "$client" 2>/dev/null || true
}
declare -A idle_bytes idle_settled
idle_memory envoy $envoy_pid $envoy_port
idle_memory meridian-proxy $proxy_pid $proxy_port
idle_memory haproxy $haproxy_pid $haproxy_port

swap_hosts=${SWAP_HOSTS:-10000}
# The swap writer: one process (the interpreter itself, not a shell shim) that renders every
# version before the run and then only writes and renames a file each second, so that forks
# and execs of the harness do not stall the client's core during a measurement (a kernel
# busy in fork or exit is not preempted even for a waking client).
python=$(python3 -c 'import sys; print(sys.executable)')
cat > "$work/swap_writer.py" <<'PY'
import os, sys, time
directory, gateway, prefix, tag, versions, count = sys.argv[1:7]
versions, count = int(versions), int(count)
# An eighth argument names another AccessPoint (hosts {prefix}{i}.{name}.test) than the swap one.
name = sys.argv[7] if len(sys.argv) > 7 else f"swap-{gateway}"
domain = "swap" if len(sys.argv) <= 7 else name
hosts = "\n".join(f"        - {prefix}{i}.{domain}.test" for i in range(count))
def config(version):
    return f"""apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {{name: {name}, namespace: bench}}
spec:
  template:
    virtualServices:
    - metadata: {{name: {name}}}
      spec:
        gateways: [{gateway}]
        hosts:
{hosts}
        http: [{{route: [{{destination: {{host: web}}}}], headers: {{response: {{set: {{x-version: "{version}"}}}}}}}}]
"""
names = [tag] if versions == 0 else [f"{tag}{v}" for v in range(1, versions + 1)]
texts = [config(name) for name in names]
target, temporary = f"{directory}/{name}.yaml", f"{directory}/../{name}.tmp"
for text in texts:
    if versions:
        time.sleep(1)
    with open(temporary, "w") as f:
        f.write(text)
    os.rename(temporary, target)
PY
write_swap() { # gateway prefix version: that AccessPoint of $swap_hosts virtual hosts, now
  "$python" "$work/swap_writer.py" "$work/config" "$1" "$2" "$3" 0 "$swap_hosts"
}
wait_version() { # port host version
  for _ in $(seq 1 600); do
    [ "$(curl -fs -o /dev/null -w '%header{x-version}' -H "Host: $2" "http://127.0.0.1:$1/")" = "$3" ] && return 0
    sleep 0.1
  done
  echo "version $3 never served on port $1"; exit 1
}
declare -A swap_still swap_control swap_moving swap_edit
p99_during() { # port host: p99 of a wrk run
  taskset -c 1 wrk -t1 -c50 -d"${seconds}s" --latency -H "Host: $2" "http://127.0.0.1:$1/" \
    | tee "$work/swap-wrk.out" | awk '$1 == "99%" {print $2}'
  if grep -q 'Non-2xx\|Socket errors' "$work/swap-wrk.out"; then
    echo "errors during swaps:" >&2; cat "$work/swap-wrk.out" >&2; exit 1
  fi
}
swapping() { # gateway prefix tag [hosts name]: rewrites that AccessPoint (by default the
  # swap one) every second, in the background (the writer, like Meridian, on the client's core
  # at idle priority)
  taskset -c 1 chrt -i 0 "$python" "$work/swap_writer.py" "$work/config" "$1" "$2" "$3" \
    "$seconds" "${4:-$swap_hosts}" ${5:+"$5"} &
  writer=$!
}
# Four runs per peer: the config still; Meridian translating the other peer's swaps while
# that peer is stopped (what the swaps cost the client's core, where Meridian runs); the
# measured peer's own swaps (every host changes); and its own edits of one host beside the
# 10,000 (an AccessPoint of one host on the same gateway: every version is the whole route
# configuration again, one host changed). The other peer, stopped during the second run,
# catches up on the versions it missed before the third begins: it shares the measured peer's
# core, and Envoy applying ten missed versions of 10,000 hosts there took 1.8 s of that core.
run_swap() { # name gateway prefix port | other-gateway other-prefix other-pid other-port
  local host="$3$((swap_hosts / 2)).swap.test" edited="$3""0.edit-$2.test"
  write_swap "$2" "$3" v0
  wait_version "$4" "$host" v0
  swap_still[$1]=$(p99_during "$4" "$host")
  kill -STOP "$7"
  swapping "$5" "$6" control
  swap_control[$1]=$(p99_during "$4" "$host")
  wait "$writer"
  kill -CONT "$7"
  wait_version "$8" "$6$((swap_hosts / 2)).swap.test" "control$seconds"
  swapping "$2" "$3" v
  swap_moving[$1]=$(p99_during "$4" "$host")
  wait "$writer"
  wait_version "$4" "$host" "v$seconds"
  "$python" "$work/swap_writer.py" "$work/config" "$2" "$3" e0 0 1 "edit-$2"
  wait_version "$4" "$edited" e0
  swapping "$2" "$3" e 1 "edit-$2"
  swap_edit[$1]=$(p99_during "$4" "$host")
  wait "$writer"
  wait_version "$4" "$edited" "e$seconds"
}
write_swap envoy e v0
write_swap proxy p v0
run_swap envoy envoy e $envoy_port proxy p $proxy_pid $proxy_port
run_swap meridian-proxy proxy p $proxy_port envoy e $envoy_pid $envoy_port

print_rates() { # title latency-label rps cpu latency (names of arrays by peer)
  local -n rates=$3 cpus=$4 latencies=$5
  printf '\n%s\n' "$1"
  printf '%-16s %10s %16s %8s %14s\n' peer 'req/s' 'CPU µs/request' "$2" 'CPU vs Envoy'
  for peer in envoy meridian-proxy haproxy; do
    ratio=$(awk -v a="${cpus[$peer]}" -v e="${cpus[envoy]}" 'BEGIN {printf "%.2fx", a / e}')
    printf '%-16s %10s %16s %8s %14s\n' "$peer" "${rates[$peer]}" "${cpus[$peer]}" "${latencies[$peer]}" "$ratio"
  done
}
print_against_haproxy() { # cpu (the name of the array by peer): the two ratios and their mean
  local -n cpus=$1
  awk -v p1="${cpus[meridian-proxy]}" -v h1="${cpus[haproxy]}" \
      -v h2="${cpus[haproxy-again]}" -v p2="${cpus[meridian-proxy-again]}" 'BEGIN {
    printf "meridian proxy / HAProxy CPU: %.2fx, then %.2fx (%s / %s µs in the reverse order): mean %.2fx\n",
      p1 / h1, p2 / h2, p2, h2, (p1 / h1 + p2 / h2) / 2 }'
}
print_rates 'HTTP/1.1 keep-alive (wrk -t1 -c50)' p99 rps cpu p99
print_against_haproxy cpu
print_rates 'h2c (h2load -c50 -m10)' mean h2rps h2cpu h2mean
print_against_haproxy h2cpu
print_rates 'TLS keep-alive (wrk -t1 -c50)' p99 tls_rps tls_cpu tls_p99
printf '\nTLS new connections, a full handshake each (wrk -t1 -c50, Connection: close)\n'
printf '%-16s %12s %18s %14s\n' peer 'handshakes/s' 'CPU µs/handshake' 'CPU vs Envoy'
for peer in envoy meridian-proxy haproxy; do
  ratio=$(awk -v a="${hs_cpu[$peer]}" -v e="${hs_cpu[envoy]}" 'BEGIN {printf "%.2fx", a / e}')
  printf '%-16s %12s %18s %14s\n' "$peer" "${hs_rps[$peer]}" "${hs_cpu[$peer]}" "$ratio"
done
printf '\nidle keep-alive connections (%s)\n' "$idle"
printf '%-16s %28s %28s\n' peer 'RSS bytes/conn, 1 s idle' 'RSS bytes/conn, 5 s idle'
for peer in envoy meridian-proxy haproxy; do
  printf '%-16s %28s %28s\n' "$peer" "${idle_bytes[$peer]}" "${idle_settled[$peer]}"
done
printf '\nroute swaps: %s virtual hosts, rewritten every second for %s s (wrk -t1 -c50 p99)\n' "$swap_hosts" "$seconds"
printf '%-16s %12s %28s %16s %22s\n' peer 'still' 'Meridian swapping the other' 'own swaps' 'own one-host edits'
for peer in envoy meridian-proxy; do
  printf '%-16s %12s %28s %16s %22s\n' "$peer" "${swap_still[$peer]}" "${swap_control[$peer]}" "${swap_moving[$peer]}" "${swap_edit[$peer]}"
done
