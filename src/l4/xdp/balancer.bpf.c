// SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0-only)
//
// The packet path of `meridian l4`: an XDP program that forwards IPv4 TCP and UDP flows for
// the node's VIPs to their gateways with full NAT, looking up tables that user space computes
// (src/l4/xdp/mod.rs). It decides nothing on its own beyond the per-flow state: which gateway
// serves a new flow is the Maglev table's entry for the flow's 5-tuple hash, the same xxh64
// the user-space path hashes with, so a node on either path sends a flow to the same gateway.
//
// Full NAT: a flow leaves towards its gateway from the node's own address (the one the route
// to the gateway uses) and a source port of the SNAT range; replies from the gateway to that
// port are turned back into packets from the VIP. The gateway therefore needs no route back to
// clients and no tunnel (this kernel has neither IPIP nor FOU), at the price of one SNAT port
// per flow and gateway (PROXY protocol clusters stay on the user-space path, which writes the
// client's address).
//
// Anything this program does not handle goes on to the kernel (XDP_PASS), where the
// user-space path serves it: IPv6, IP options, fragments, a VIP:port not in `services`, a
// TCP segment of a connection the program did not see start (so connections open before the
// program was attached keep their user-space relay), a gateway whose neighbour is not
// resolved yet, no free SNAT port.
//
// Build (the object is committed; tests/l4_xdp.rs checks it is current):
//   clang-14 -O2 -target bpf -mcpu=v3 -I/usr/include/$(uname -m)-linux-gnu \
//     -c src/l4/xdp/balancer.bpf.c -o src/l4/xdp/balancer.bpf.o

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif

// Legacy map definitions (section "maps"), the layout aya reads; sizes are set at load.
struct map_def {
	__u32 type;
	__u32 key_size;
	__u32 value_size;
	__u32 max_entries;
	__u32 flags;
	__u32 id;
	__u32 pinning;
};

#define MAP(name, kind, key, value, entries)                                   \
	struct map_def SEC("maps") name = {                                    \
		.type = kind,                                                  \
		.key_size = sizeof(key),                                       \
		.value_size = sizeof(value),                                   \
		.max_entries = entries,                                        \
	}

// The layouts below are mirrored by #[repr(C)] structs in src/l4/xdp/maps.rs. Addresses and
// ports are in network byte order, as in the packet. Times are in ticks of 2^20 ns.

struct service_key {
	__u32 vip;
	__u16 port;
	__u8 protocol;
	__u8 pad;
};

struct service {
	__u32 offset; // of the service's Maglev table in `maglev`
	__u32 size;   // its entries (a prime)
	__u32 idle;   // ticks a flow may be idle
	__u32 pad;
};

struct backend {
	__u32 ip;
	__u32 snat_ip; // the node's address on the route to `ip`
	__u16 port;
	__u16 available; // 0 once it left the tables: its flows are hashed again
};

struct flow_key {
	__u32 client;
	__u32 vip;
	__u16 client_port;
	__u16 vip_port;
	__u8 protocol;
	__u8 pad[3];
};

struct flow {
	__u32 backend; // index in `backends`
	__u32 backend_ip;
	__u32 snat_ip;
	__u16 backend_port;
	__u16 snat_port;
};

struct nat_key {
	__u32 backend_ip;
	__u32 snat_ip;
	__u16 backend_port;
	__u16 snat_port;
	__u8 protocol;
	__u8 pad[3];
};

#define CLIENT_FIN 1
#define BACKEND_FIN 2
#define RESET 4

// A flow's state lives here, in the entry replies are looked up by; the `flows` entry only
// points at it, and is valid while this entry still names the same client.
struct nat {
	__u32 client;
	__u32 vip;
	__u16 client_port;
	__u16 vip_port;
	__u32 ifindex;       // where the client's packets came in, and replies go out
	__u8 client_mac[6];  // the client side's next hop (the source of its packets)
	__u8 own_mac[6];     // this node's address on that side
	__u32 state;         // CLIENT_FIN | BACKEND_FIN | RESET
	__u32 seen;          // ticks
	__u32 idle;          // ticks
};

struct settings {
	__u16 port_min;  // the SNAT range, host byte order
	__u16 port_span;
	__u32 closing;   // ticks a closed TCP flow keeps its SNAT port
	__u32 draining;  // 1: tracked flows go on, new ones go to the kernel
	__u32 pad;
};

enum counter {
	FORWARDED,      // packets sent to a gateway
	RETURNED,       // replies sent back to a client
	NEW_FLOWS,
	REHASHED,       // flows whose gateway left, hashed again
	PASSED_UNKNOWN, // TCP segments of connections the program did not see start
	PASSED_NO_ROUTE,
	PASSED_NO_PORT,
	PASSED_NO_GATEWAY,
	PASSED_DRAINING,
	COUNTERS,
};

MAP(services, BPF_MAP_TYPE_HASH, struct service_key, struct service, 64);
MAP(maglev, BPF_MAP_TYPE_ARRAY, __u32, __u32, 65537);
MAP(backends, BPF_MAP_TYPE_ARRAY, __u32, struct backend, 4096);
MAP(flows, BPF_MAP_TYPE_LRU_HASH, struct flow_key, struct flow, 65536);
MAP(nat, BPF_MAP_TYPE_LRU_HASH, struct nat_key, struct nat, 65536);
MAP(config, BPF_MAP_TYPE_ARRAY, __u32, struct settings, 1);
MAP(counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, __u64, COUNTERS);

#define PORT_ATTEMPTS 8

static __always_inline int count(enum counter which, int verdict)
{
	__u32 key = which;
	__u64 *value = bpf_map_lookup_elem(&counters, &key);
	if (value)
		*value += 1;
	return verdict;
}

static __always_inline __u32 ticks(void)
{
	return (__u32)(bpf_ktime_get_ns() >> 20);
}

// --- xxh64 of the flow key, byte for byte what core::dataplane::conntrack::FlowKey::hash
// feeds it: protocol, source (IPv4-mapped IPv6), source port, destination, destination port.

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL
#define FLOW_SEED 0x4d6572696469616eULL

static __always_inline __u64 rotl(__u64 x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static __always_inline __u64 xxh_round(__u64 acc, __u64 input)
{
	acc += input * P2;
	return rotl(acc, 31) * P1;
}

static __always_inline __u64 xxh_merge(__u64 acc, __u64 value)
{
	acc ^= xxh_round(0, value);
	return acc * P1 + P4;
}

static __always_inline __u64 le64(const __u8 *b)
{
	return (__u64)b[0] | (__u64)b[1] << 8 | (__u64)b[2] << 16 | (__u64)b[3] << 24 |
	       (__u64)b[4] << 32 | (__u64)b[5] << 40 | (__u64)b[6] << 48 | (__u64)b[7] << 56;
}

static __always_inline __u64 flow_hash(__u8 protocol, __u32 source, __u16 source_port,
				       __u32 destination, __u16 destination_port)
{
	__u8 b[40] = {};
	b[0] = protocol;
	b[11] = 0xff;
	b[12] = 0xff;
	__builtin_memcpy(&b[13], &source, 4);
	__builtin_memcpy(&b[17], &source_port, 2);
	b[29] = 0xff;
	b[30] = 0xff;
	__builtin_memcpy(&b[31], &destination, 4);
	__builtin_memcpy(&b[35], &destination_port, 2);

	__u64 v1 = FLOW_SEED + P1 + P2, v2 = FLOW_SEED + P2, v3 = FLOW_SEED, v4 = FLOW_SEED - P1;
	v1 = xxh_round(v1, le64(&b[0]));
	v2 = xxh_round(v2, le64(&b[8]));
	v3 = xxh_round(v3, le64(&b[16]));
	v4 = xxh_round(v4, le64(&b[24]));
	__u64 h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
	h = xxh_merge(h, v1);
	h = xxh_merge(h, v2);
	h = xxh_merge(h, v3);
	h = xxh_merge(h, v4);
	h += 37;
	__u64 tail4 = (__u64)b[32] | (__u64)b[33] << 8 | (__u64)b[34] << 16 | (__u64)b[35] << 24;
	h ^= tail4 * P1;
	h = rotl(h, 23) * P2 + P3;
	h ^= (__u64)b[36] * P5;
	h = rotl(h, 11) * P1;
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}

// --- Incremental checksum updates (RFC 1624): HC' = ~(~HC + ~m + m'), on the raw bytes.

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline void replace32(__u16 *check, __u32 from, __u32 to)
{
	__u32 sum = (__u16)~*check;
	sum += (__u16)~from + (__u16)(~from >> 16);
	sum += (__u16)to + (__u16)(to >> 16);
	*check = ~fold(sum);
}

static __always_inline void replace16(__u16 *check, __u16 from, __u16 to)
{
	__u32 sum = (__u16)~*check;
	sum += (__u16)~from;
	sum += to;
	*check = ~fold(sum);
}

struct packet {
	struct ethhdr *eth;
	struct iphdr *ip;
	__u16 *ports;   // source, destination
	__u16 *check;   // the TCP or UDP checksum
	struct tcphdr *tcp; // NULL for UDP
};

static __always_inline void rewrite(struct packet *p, __u32 saddr, __u32 daddr, __u16 sport,
				    __u16 dport)
{
	struct iphdr *ip = p->ip;
	// A UDP checksum of 0 means none; it stays none.
	int l4 = p->tcp || *p->check != 0;
	replace32(&ip->check, ip->saddr, saddr);
	replace32(&ip->check, ip->daddr, daddr);
	if (l4) {
		replace32(p->check, ip->saddr, saddr);
		replace32(p->check, ip->daddr, daddr);
		replace16(p->check, p->ports[0], sport);
		replace16(p->check, p->ports[1], dport);
		if (!p->tcp && *p->check == 0)
			*p->check = 0xffff;
	}
	ip->saddr = saddr;
	ip->daddr = daddr;
	p->ports[0] = sport;
	p->ports[1] = dport;
}

static __always_inline int send(struct xdp_md *ctx, __u32 ifindex)
{
	if (ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(ifindex, 0);
}

static __always_inline __u32 tcp_state(struct packet *p, __u32 fin)
{
	if (!p->tcp)
		return 0;
	if (p->tcp->rst)
		return RESET;
	return p->tcp->fin ? fin : 0;
}

static __always_inline int closing(const struct nat *n)
{
	return (n->state & RESET) || (n->state & (CLIENT_FIN | BACKEND_FIN)) ==
						  (CLIENT_FIN | BACKEND_FIN);
}

static __always_inline int expired(const struct nat *n, __u32 now, const struct settings *s)
{
	__u32 limit = closing(n) ? s->closing : n->idle;
	return (__u32)(now - n->seen) > limit;
}

static __always_inline int same_client(const struct nat *n, const struct flow_key *k)
{
	return n->client == k->client && n->client_port == k->client_port && n->vip == k->vip &&
	       n->vip_port == k->vip_port;
}

static __always_inline void touch(struct nat *n, __u32 now, __u32 state)
{
	if (n->seen != now)
		n->seen = now;
	// Racing writers only ever add bits; a lost one is seen again on the next FIN or RST.
	if (state && !(n->state & state))
		n->state |= state;
}

// A reply from a gateway to one of the node's SNAT ports: back to the client, from the VIP.
static __always_inline int reply(struct xdp_md *ctx, struct packet *p, struct nat *n, __u32 now,
				 const struct settings *s)
{
	if (expired(n, now, s))
		return XDP_PASS;
	touch(n, now, tcp_state(p, BACKEND_FIN));
	rewrite(p, n->vip, n->client, n->vip_port, n->client_port);
	__builtin_memcpy(p->eth->h_dest, n->client_mac, ETH_ALEN);
	__builtin_memcpy(p->eth->h_source, n->own_mac, ETH_ALEN);
	count(RETURNED, 0);
	return send(ctx, n->ifindex);
}

// The next hop towards `b`, written into the packet's Ethernet header; 0 if there is none.
static __always_inline __u32 route(struct xdp_md *ctx, struct packet *p, __u32 daddr, __u32 saddr)
{
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.l4_protocol = p->ip->protocol;
	fib.tot_len = bpf_ntohs(p->ip->tot_len);
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = ctx->ingress_ifindex;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	__builtin_memcpy(p->eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(p->eth->h_source, fib.smac, ETH_ALEN);
	return fib.ifindex;
}

// A packet to a VIP:port the node serves.
static __always_inline int forward(struct xdp_md *ctx, struct packet *p,
				   const struct service *svc, __u32 now, const struct settings *s)
{
	struct iphdr *ip = p->ip;
	struct flow_key key = {
		.client = ip->saddr,
		.vip = ip->daddr,
		.client_port = p->ports[0],
		.vip_port = p->ports[1],
		.protocol = ip->protocol,
	};
	int syn = p->tcp && p->tcp->syn && !p->tcp->ack;

	struct flow *f = bpf_map_lookup_elem(&flows, &key);
	if (f) {
		struct nat_key nk = {
			.backend_ip = f->backend_ip,
			.snat_ip = f->snat_ip,
			.backend_port = f->backend_port,
			.snat_port = f->snat_port,
			.protocol = ip->protocol,
		};
		struct nat *n = bpf_map_lookup_elem(&nat, &nk);
		__u32 index = f->backend;
		struct backend *b = bpf_map_lookup_elem(&backends, &index);
		if (n && same_client(n, &key) && !expired(n, now, s) && !(syn && closing(n))) {
			if (b && b->available && b->ip == f->backend_ip &&
			    b->port == f->backend_port) {
				__u32 out = route(ctx, p, f->backend_ip, f->snat_ip);
				if (!out)
					return count(PASSED_NO_ROUTE, XDP_PASS);
				touch(n, now, tcp_state(p, CLIENT_FIN));
				rewrite(p, f->snat_ip, f->backend_ip, f->snat_port, f->backend_port);
				count(FORWARDED, 0);
				return send(ctx, out);
			}
			count(REHASHED, 0);
		}
	}

	// A new flow. A TCP segment other than a SYN belongs to a connection that started
	// elsewhere (before the program, or on the user-space path): the kernel's.
	if (p->tcp && !syn)
		return count(PASSED_UNKNOWN, XDP_PASS);
	if (s->draining)
		return count(PASSED_DRAINING, XDP_PASS);
	__u64 hash = flow_hash(ip->protocol, ip->saddr, p->ports[0], ip->daddr, p->ports[1]);
	if (svc->size == 0)
		return count(PASSED_NO_GATEWAY, XDP_PASS);
	__u32 slot = svc->offset + (__u32)(hash % svc->size);
	__u32 *chosen = bpf_map_lookup_elem(&maglev, &slot);
	if (!chosen)
		return count(PASSED_NO_GATEWAY, XDP_PASS);
	__u32 index = *chosen;
	struct backend *b = bpf_map_lookup_elem(&backends, &index);
	if (!b || !b->available)
		return count(PASSED_NO_GATEWAY, XDP_PASS);
	__u32 backend_ip = b->ip, snat_ip = b->snat_ip;
	__u16 backend_port = b->port;

	struct nat entry = {
		.client = key.client,
		.vip = key.vip,
		.client_port = key.client_port,
		.vip_port = key.vip_port,
		.ifindex = ctx->ingress_ifindex,
		.state = tcp_state(p, CLIENT_FIN),
		.seen = now,
		.idle = svc->idle,
	};
	__builtin_memcpy(entry.client_mac, p->eth->h_source, ETH_ALEN);
	__builtin_memcpy(entry.own_mac, p->eth->h_dest, ETH_ALEN);

	__u32 out = route(ctx, p, backend_ip, snat_ip);
	if (!out)
		return count(PASSED_NO_ROUTE, XDP_PASS);
	if (s->port_span == 0)
		return count(PASSED_NO_PORT, XDP_PASS);

	__u16 snat_port = 0;
	__u32 start = (__u32)(hash >> 32);
#pragma unroll
	for (int i = 0; i < PORT_ATTEMPTS; i++) {
		__u16 port = s->port_min + (__u16)((start + (__u32)i * 40503u) % s->port_span);
		struct nat_key nk = {
			.backend_ip = backend_ip,
			.snat_ip = snat_ip,
			.backend_port = backend_port,
			.snat_port = bpf_htons(port),
			.protocol = ip->protocol,
		};
		struct nat *old = bpf_map_lookup_elem(&nat, &nk);
		if (old && !expired(old, now, s) && !(same_client(old, &key) && closing(old)))
			continue;
		if (bpf_map_update_elem(&nat, &nk, &entry, old ? BPF_ANY : BPF_NOEXIST) == 0) {
			snat_port = nk.snat_port;
			break;
		}
	}
	if (!snat_port)
		return count(PASSED_NO_PORT, XDP_PASS);

	struct flow value = {
		.backend = index,
		.backend_ip = backend_ip,
		.snat_ip = snat_ip,
		.backend_port = backend_port,
		.snat_port = snat_port,
	};
	bpf_map_update_elem(&flows, &key, &value, BPF_ANY);
	rewrite(p, snat_ip, backend_ip, snat_port, backend_port);
	count(NEW_FLOWS, 0);
	count(FORWARDED, 0);
	return send(ctx, out);
}

SEC("xdp")
int meridian_l4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct packet p = { .eth = data };
	if ((void *)(p.eth + 1) > end || p.eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	p.ip = (void *)(p.eth + 1);
	if ((void *)(p.ip + 1) > end || p.ip->ihl != 5 || (p.ip->frag_off & bpf_htons(0x3fff)))
		return XDP_PASS;
	if (p.ip->protocol == IPPROTO_TCP) {
		p.tcp = (void *)(p.ip + 1);
		if ((void *)(p.tcp + 1) > end)
			return XDP_PASS;
		p.check = &p.tcp->check;
	} else if (p.ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(p.ip + 1);
		if ((void *)(udp + 1) > end)
			return XDP_PASS;
		p.check = &udp->check;
	} else {
		return XDP_PASS;
	}
	p.ports = (void *)(p.ip + 1);

	__u32 zero = 0;
	struct settings *s = bpf_map_lookup_elem(&config, &zero);
	if (!s)
		return XDP_PASS;
	__u32 now = ticks();

	struct nat_key reverse = {
		.backend_ip = p.ip->saddr,
		.snat_ip = p.ip->daddr,
		.backend_port = p.ports[0],
		.snat_port = p.ports[1],
		.protocol = p.ip->protocol,
	};
	struct nat *n = bpf_map_lookup_elem(&nat, &reverse);
	if (n)
		return reply(ctx, &p, n, now, s);

	struct service_key sk = {
		.vip = p.ip->daddr,
		.port = p.ports[1],
		.protocol = p.ip->protocol,
	};
	struct service *svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc)
		return XDP_PASS;
	return forward(ctx, &p, svc, now, s);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
