# Shared by the L4 benchmarks (sourced): the gateways' nginx, HAProxy 2.6 in TCP mode as the
# reference L4 node, and the manifests.

# Writes DIR/nginx.conf: one nginx worker answering `ok` on PORT at every gateway address, as
# the gateways behind the VIP.
#   gateways_nginx_config DIR PORT GATEWAY...
gateways_nginx_config() {
  local dir=$1 port=$2
  shift 2
  local listens gateway
  listens=$(for gateway in "$@"; do printf 'listen %s:%s; ' "$gateway" "$port"; done)
  mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { ${listens}location / { return 200 "ok\n"; } }
}
EOF
}

# Writes HAProxy's config: the VIP's HTTP and iperf3 ports, each to every gateway's (HTTP on
# GATEWAY_PORT, iperf3 on GATEWAY_IPERF_PORT; `balance source`, checks every 2 s).
#   haproxy_l4_config FILE VIP HTTP_PORT IPERF_PORT GATEWAY_PORT GATEWAY_IPERF_PORT GATEWAY...
haproxy_l4_config() {
  local file=$1 vip=$2 http_port=$3 iperf_port=$4 gateway_port=$5 gateway_iperf_port=$6
  shift 6
  local gateway n
  {
    printf 'global\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 2s\n'
    printf '  timeout client 1h\n  timeout server 1h\n'
    printf 'frontend http\n  bind %s:%s\n  default_backend http\n' "$vip" "$http_port"
    printf 'frontend iperf\n  bind %s:%s\n  default_backend iperf\n' "$vip" "$iperf_port"
    printf 'backend http\n  balance source\n'
    n=0; for gateway in "$@"; do n=$((n + 1)); printf '  server g%d %s:%s check inter 2s\n' "$n" "$gateway" "$gateway_port"; done
    printf 'backend iperf\n  balance source\n'
    n=0; for gateway in "$@"; do n=$((n + 1)); printf '  server g%d %s:%s check inter 2s\n' "$n" "$gateway" "$gateway_iperf_port"; done
  } > "$file"
}

# Writes the benchmark's manifests: a VIP pool, the gateways in an EndpointSlice, and one
# AccessPoint whose VIP serves HTTP, iperf3 and UDP (dns) on the gateways.
#   bench_l4_manifests FILE POOL "HTTP_PORT:GATEWAY_PORT" "IPERF_PORT:GATEWAY_IPERF_PORT" UDP_PORT GATEWAY...
bench_l4_manifests() {
  local file=$1 pool=$2 http=$3 iperf=$4 udp_port=$5
  shift 5
  local endpoints gateway
  endpoints=$(for gateway in "$@"; do printf '{addresses: ["%s"]}, ' "$gateway"; done)
  cat > "$file" <<YAML
apiVersion: meridian.dev/v1alpha1
kind: MemberCluster
metadata: {name: local}
spec: {zone: local-1, vipPools: [{name: lb, cidrs: ["$pool"]}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: gateways-1, namespace: bench, labels: {kubernetes.io/service-name: gateways}}
addressType: IPv4
endpoints: [${endpoints%, }]
ports: [{name: http, port: ${http#*:}}, {name: iperf, port: ${iperf#*:}}, {name: dns, port: $udp_port, protocol: UDP}]
---
apiVersion: meridian.dev/v1alpha1
kind: AccessPoint
metadata: {name: bench, namespace: bench}
spec:
  template:
    service:
      metadata: {name: gateways}
      spec:
        ports:
        - {name: http, port: ${http%%:*}, targetPort: ${http#*:}}
        - {name: iperf, port: ${iperf%%:*}, targetPort: ${iperf#*:}}
        - {name: dns, port: $udp_port, protocol: UDP, targetPort: $udp_port}
YAML
}
