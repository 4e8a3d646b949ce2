#!/usr/bin/env bash
# DNS benchmark: dnsperf against Meridian's embedded DNS server and against NSD serving the
# same zone, in the same run on the same machine. Prints QPS, latency percentiles and ratios.
#
#   bash e2e/bench/dns.sh [names=1000] [seconds=10]
#
# Needs dnsperf and nsd (`make bench-dns` installs them) and a release build of meridian.
set -euo pipefail
names=${1:-1000}
seconds=${2:-10}
repo=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}
meridian="$CARGO_TARGET_DIR/release/meridian"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

(cd "$repo" && cargo build --quiet --release --bin meridian)

# The same zone for both: `names` A records h<i>.bench.test, TTL 30.
mkdir -p "$work/config" "$work/nsd"
{
  for i in $(seq 1 "$names"); do
    printf -- '---\napiVersion: meridian.dev/v1alpha1\nkind: NameService\nmetadata: {name: h%d, namespace: bench}\nspec: {fqdn: h%d.bench.test, ttl: 30, target: {addresses: ["10.%d.%d.%d"]}}\n' \
      "$i" "$i" $((i / 65536 % 256)) $((i / 256 % 256)) $((i % 256))
  done
} > "$work/config/names.yaml"
{
  printf '$ORIGIN bench.test.\n$TTL 30\n@ IN SOA ns1.bench.test. hostmaster.bench.test. 1 3600 600 86400 30\n@ IN NS ns1.bench.test.\n'
  for i in $(seq 1 "$names"); do
    printf 'h%d IN A 10.%d.%d.%d\n' "$i" $((i / 65536 % 256)) $((i / 256 % 256)) $((i % 256))
  done
} > "$work/nsd/bench.test.zone"
# Queries: every name once per round, plus 10 % for names that do not exist (NXDOMAIN).
{
  for i in $(seq 1 "$names"); do
    echo "h$i.bench.test A"
    if (( i % 10 == 0 )); then echo "missing$i.bench.test A"; fi
  done
} > "$work/queries.txt"

meridian_port=$(free_port)
"$meridian" standalone --config-dir "$work/config" --state-dir "$work/state" \
  --xds-addr "127.0.0.1:$(free_port)" --admin-addr "127.0.0.1:$(free_port)" \
  --dns-addr "127.0.0.1:$meridian_port" --dns-zone bench.test > "$work/meridian.log" 2>&1 &
pids+=($!)

nsd_port=$(free_port)
cat > "$work/nsd/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.1@$nsd_port
  port: $nsd_port
  username: ""
  chroot: ""
  zonesdir: "$work/nsd"
  zonelistfile: "$work/nsd/zone.list"
  database: ""
  pidfile: "$work/nsd/nsd.pid"
  xfrdfile: "$work/nsd/xfrd.state"
  logfile: "$work/nsd/nsd.log"
  server-count: 1
  verbosity: 0
  # Response rate limiting (on by default) would drop a benchmark's queries.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: bench.test
  zonefile: bench.test.zone
CONF
nsd -d -c "$work/nsd/nsd.conf" > "$work/nsd/stdout.log" 2>&1 &
pids+=($!)

wait_answer() {
  for _ in $(seq 1 100); do
    if dig @127.0.0.1 -p "$1" "h$names.bench.test" A +short +time=1 +tries=1 2>/dev/null | grep -q '^10\.'; then return 0; fi
    sleep 0.1
  done
  echo "no answer from port $1" >&2; cat "$work/meridian.log" "$work/nsd/nsd.log" >&2 2>/dev/null; exit 1
}
wait_answer "$meridian_port"
wait_answer "$nsd_port"

# Runs dnsperf; prints "qps p50_ms p99_ms lost".
measure() {
  local out="$work/dnsperf-$1.txt"
  dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries.txt" -l "$seconds" -q 100 -v > "$out" 2>&1
  local qps lost
  qps=$(awk '/Queries per second:/ {print $4}' "$out")
  lost=$(awk '/Queries lost:/ {print $3}' "$out")
  awk '/^> / {print $NF * 1000}' "$out" | sort -n | awk -v qps="$qps" -v lost="$lost" '
    { v[NR] = $1 }
    END { printf "%s %.3f %.3f %s\n", qps, v[int(NR * 0.50)], v[int(NR * 0.99)], lost }'
}

read -r m_qps m_p50 m_p99 m_lost < <(measure "$meridian_port")
read -r n_qps n_p50 n_p99 n_lost < <(measure "$nsd_port")
echo "dnsperf, $names names (+10% NXDOMAIN), ${seconds}s each, 100 outstanding, loopback, $(nproc) cores"
printf '%-10s %12s %10s %10s %8s\n' server QPS p50_ms p99_ms lost
printf '%-10s %12.0f %10s %10s %8s\n' meridian "$m_qps" "$m_p50" "$m_p99" "$m_lost"
printf '%-10s %12.0f %10s %10s %8s\n' nsd "$n_qps" "$n_p50" "$n_p99" "$n_lost"
awk -v m="$m_qps" -v n="$n_qps" -v mp="$m_p99" -v np="$n_p99" \
  'BEGIN { printf "ratio meridian/nsd: QPS %.2f, p99 latency %.2f\n", m / n, mp / np }'
