// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Published ports: TC programs on the host's external interfaces and on its mesh links,
 * with direct server return so the backend sees the client's real address.
 *
 * mesh_ing_ext (TC ingress, external interfaces): a packet to one of this host's addresses
 * and a published (proto, port) is pinned to a backend per flow (5-tuple, LRU; a TCP SYN
 * always takes the next backend round-robin). A local backend gets the packet DNATed to
 * task:target and redirected into the mesh link towards its namespace; a remote one gets it
 * encapsulated (outer IPv4 + UDP to the encap port + struct mesh_ing_encap + the original
 * packet) and sent to its node. The same program decapsulates such packets from known nodes
 * and delivers them to the local backend named in the header. Datagrams on that port too
 * short to carry a packet (meshd's liveness probes between nodes) go up the stack.
 *
 * mesh_ing_link (TC ingress, host side of each mesh link): a backend's reply matching a
 * delivered flow gets its source set back to what the client connected to and leaves by
 * the FIB's route to the client; a task's connection to a published port at this host's
 * own address goes up the stack (meshd's listener); anything else IPv4 is dropped (ARP
 * passes).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "mesh_ingress.h"

#define AF_INET 2
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))

/* This host's addresses on its external interfaces. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_ING_MAX_ADDRS);
	__type(key, __u32);
	__type(value, __u8);
} mesh_ing_addrs SEC(".maps");

/* Underlay addresses of the cluster's nodes (encapsulated packets are taken from these). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_ING_MAX_ADDRS);
	__type(key, __u32);
	__type(value, __u8);
} mesh_ing_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_ING_MAX_PORTS);
	__type(key, struct mesh_ing_port_key);
	__type(value, struct mesh_ing_port);
} mesh_ing_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_ING_MAX_BACKENDS);
	__type(key, struct mesh_ing_backend_key);
	__type(value, struct mesh_ing_backend);
} mesh_ing_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_ING_MAX_LOCAL);
	__type(key, struct mesh_ing_local_key);
	__type(value, struct mesh_ing_local);
} mesh_ing_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MESH_ING_MAX_PORTS);
	__type(key, __u32);
	__type(value, __u64);
} mesh_ing_rr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MESH_ING_MAX_FLOWS);
	__type(key, struct mesh_ing_flow_key);
	__type(value, struct mesh_ing_backend);
} mesh_ing_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MESH_ING_MAX_FLOWS);
	__type(key, struct mesh_ing_rev_key);
	__type(value, struct mesh_ing_rev);
} mesh_ing_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mesh_ing_config);
} mesh_ing_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MESH_ING_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} mesh_ing_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&mesh_ing_stats, &which);
	if (v)
		*v += 1;
}

struct pkt {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u32 l4_off;
	__u8 proto;
	__u8 syn_only; /* TCP SYN without ACK: a new connection */
	__u8 tcp_flags;
};

enum { PARSE_OK = 0, PARSE_NOT_IP = 1, PARSE_OTHER_IP = 2 };

/* An unfragmented IPv4 TCP or UDP packet. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return PARSE_NOT_IP;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IP;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return PARSE_OTHER_IP;
	if (ip->ihl < 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return PARSE_OTHER_IP;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return PARSE_OTHER_IP;
	p->proto = ip->protocol;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->l4_off = ETH_HLEN + ip->ihl * 4;
	__u16 ports[2];
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
		return PARSE_OTHER_IP;
	p->sport = ports[0];
	p->dport = ports[1];
	p->syn_only = 0;
	p->tcp_flags = 0;
	if (p->proto == IPPROTO_TCP) {
		__u8 flags;
		if (bpf_skb_load_bytes(skb, p->l4_off + 13, &flags, 1))
			return PARSE_OTHER_IP;
		p->tcp_flags = flags;
		p->syn_only = (flags & 0x12) == 0x02;
	}
	return PARSE_OK;
}

static __always_inline __u32 l4_csum_off(const struct pkt *p)
{
	return p->l4_off + (p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
						    : offsetof(struct udphdr, check));
}

static __always_inline __u64 l4_flags(const struct pkt *p)
{
	return p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrites the destination (to != 0) or source address and port, fixing checksums. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p, int dst,
				   __u32 addr, __u16 port)
{
	__u32 old_addr = dst ? p->daddr : p->saddr;
	__u16 old_port = dst ? p->dport : p->sport;
	__u32 csum = l4_csum_off(p);
	if (bpf_l4_csum_replace(skb, csum, old_addr, addr, BPF_F_PSEUDO_HDR | 4 | l4_flags(p)))
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, addr, 4))
		return -1;
	if (bpf_skb_store_bytes(skb, dst ? IP_DST_OFF : IP_SRC_OFF, &addr, 4, 0))
		return -1;
	if (port != old_port) {
		if (bpf_l4_csum_replace(skb, csum, old_port, port, 2 | l4_flags(p)))
			return -1;
		if (bpf_skb_store_bytes(skb, p->l4_off + (dst ? 2 : 0), &port, 2, 0))
			return -1;
	}
	return 0;
}

/* DNATs the packet to backend:target, remembers how to undo it on the reply (the reply's
 * source becomes orig_addr:orig_port), and sends it down the backend's mesh link. */
static __always_inline int deliver(struct __sk_buff *skb, const struct pkt *p, __u16 published,
				   __u32 backend, __u16 target, __u32 orig_addr, __u16 orig_port,
				   __u16 flags)
{
	struct mesh_ing_local_key lk = {
		.proto = p->proto,
		.port = published,
		.addr = backend,
		.target = target,
	};
	struct mesh_ing_local *link = bpf_map_lookup_elem(&mesh_ing_local, &lk);
	if (!link)
		return -1;
	__u32 ifindex = link->ifindex;
	struct mesh_ing_rev_key rk = {
		.addr = backend,
		.client = p->saddr,
		.port = target,
		.cport = p->sport,
		.proto = p->proto,
	};
	/* Written once per flow (and again if the LRU evicted it): a lookup costs far less
	 * than an update on every packet. */
	struct mesh_ing_rev *cur = bpf_map_lookup_elem(&mesh_ing_rev, &rk);
	if (!cur || cur->addr != orig_addr || cur->port != orig_port || cur->flags != flags) {
		struct mesh_ing_rev rv = { .addr = orig_addr, .port = orig_port, .flags = flags };
		if (bpf_map_update_elem(&mesh_ing_rev, &rk, &rv, BPF_ANY))
			return -1;
	}
	if (rewrite(skb, p, 1, backend, target))
		return -1;
	/* Straight into the link's far end, in the egress namespace: ingress to ingress, without
	 * a pass through the veth's transmit path and the CPU's backlog queue. The packet keeps
	 * the host's MAC as destination and so counts as addressed to the namespace, which
	 * routes it on to the task. */
	return bpf_redirect_peer(ifindex, 0);
}

/* Routes the (rewritten) packet from src to dst by the FIB and sends it out; a packet for
 * this host itself (a client on this node reached another node's published port) goes up
 * its stack when `local_ok`. */
static __always_inline int route_to(struct __sk_buff *skb, __u32 src, __u32 dst, __u8 proto,
				    int local_ok)
{
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.l4_protocol = proto;
	fib.ipv4_src = src;
	fib.ipv4_dst = dst;
	fib.ifindex = skb->ingress_ifindex;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED && local_ok)
		return TC_ACT_OK;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		count(MESH_ING_STAT_NO_ROUTE);
		return TC_ACT_SHOT;
	}
	struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst };
	return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
}

static __always_inline int route_out(struct __sk_buff *skb, __u32 src, __u32 dst, __u8 proto)
{
	return route_to(skb, src, dst, proto, 0);
}

static __always_inline __u16 ip_checksum(const __u16 *w)
{
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

struct encap_hdrs {
	struct iphdr ip;
	struct udphdr udp;
	struct mesh_ing_encap hdr;
};
_Static_assert(sizeof(struct encap_hdrs) == MESH_ING_ENCAP_LEN, "encap headers are 36 bytes");

/* Sends the packet, unchanged, inside outer IPv4 + UDP + header to the backend's node. */
static __always_inline int encap(struct __sk_buff *skb, const struct pkt *p,
				 const struct mesh_ing_backend *b, __u16 encap_port)
{
	__u32 node = b->node;
	struct encap_hdrs o = {};
	o.ip.version = 4;
	o.ip.ihl = 5;
	o.ip.ttl = 64;
	o.ip.protocol = IPPROTO_UDP;
	o.ip.saddr = p->daddr;
	o.ip.daddr = node;
	o.udp.source = p->sport; /* the client's port: flows spread over receive queues */
	o.udp.dest = encap_port;
	o.hdr.backend = b->addr;
	o.hdr.target = b->port;
	o.hdr.port = p->dport;
	if (bpf_skb_adjust_room(skb, MESH_ING_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP))
		return TC_ACT_SHOT;
	__u32 len = skb->len - ETH_HLEN;
	o.ip.tot_len = bpf_htons(len);
	o.udp.len = bpf_htons(len - sizeof(struct iphdr));
	o.ip.check = ip_checksum((const __u16 *)&o.ip);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &o, sizeof(o), 0))
		return TC_ACT_SHOT;
	count(MESH_ING_STAT_ENCAP);
	return route_out(skb, p->daddr, node, IPPROTO_UDP);
}

/* An encapsulated packet from another node: deliver it to the local backend it names. */
static __always_inline int decap(struct __sk_buff *skb, const struct pkt *outer)
{
	if (outer->l4_off != ETH_HLEN + sizeof(struct iphdr))
		goto refuse;
	struct mesh_ing_encap h;
	if (bpf_skb_load_bytes(skb, outer->l4_off + sizeof(struct udphdr), &h, sizeof(h)))
		goto refuse;
	if (bpf_skb_adjust_room(skb, -MESH_ING_ENCAP_LEN, BPF_ADJ_ROOM_MAC, 0))
		goto refuse;
	struct pkt p;
	if (parse(skb, &p) != PARSE_OK || p.dport != h.port)
		goto refuse;
	/* The reply must come from what the client reached: the inner destination. */
	if (deliver(skb, &p, h.port, h.backend, h.target, p.daddr, p.dport, MESH_ING_REV_ENCAP) < 0)
		goto refuse;
	count(MESH_ING_STAT_DECAP);
	return TC_ACT_REDIRECT;
refuse:
	count(MESH_ING_STAT_DROP_DECAP);
	return TC_ACT_SHOT;
}

static __always_inline int pick(const struct mesh_ing_port *svc, struct mesh_ing_backend *out)
{
	__u32 count = svc->count;
	if (count == 0)
		return -1;
	__u32 id = svc->service;
	__u64 *rr = bpf_map_lookup_elem(&mesh_ing_rr, &id);
	if (!rr)
		return -1;
	__u64 n = __sync_fetch_and_add(rr, 1);
	struct mesh_ing_backend_key bk = {
		.service = id,
		.slot = svc->slot,
		.index = (__u16)(n % count),
	};
	struct mesh_ing_backend *b = bpf_map_lookup_elem(&mesh_ing_backends, &bk);
	if (!b)
		return -1;
	*out = *b;
	return 0;
}

SEC("classifier")
int mesh_ing_ext(struct __sk_buff *skb)
{
	struct pkt p;
	if (parse(skb, &p) != PARSE_OK)
		return TC_ACT_OK;
	if (!bpf_map_lookup_elem(&mesh_ing_addrs, &p.daddr))
		return TC_ACT_OK;
	__u32 zero = 0;
	struct mesh_ing_config *cfg = bpf_map_lookup_elem(&mesh_ing_config, &zero);
	if (!cfg)
		return TC_ACT_OK;
	__u16 encap_port = cfg->encap_port;
	if (p.proto == IPPROTO_UDP && encap_port && p.dport == encap_port) {
		/* Too short to carry a packet: the nodes' liveness probes, for meshd's socket. */
		if (skb->len < p.l4_off + MESH_ING_ENCAP_LEN)
			return TC_ACT_OK;
		if (!bpf_map_lookup_elem(&mesh_ing_nodes, &p.saddr)) {
			count(MESH_ING_STAT_DROP_DECAP);
			return TC_ACT_SHOT;
		}
		return decap(skb, &p);
	}
	struct mesh_ing_port_key pk = { .proto = p.proto, .port = p.dport };
	struct mesh_ing_port *svc = bpf_map_lookup_elem(&mesh_ing_ports, &pk);
	if (!svc)
		return TC_ACT_OK;

	struct mesh_ing_flow_key fk = {
		.saddr = p.saddr,
		.daddr = p.daddr,
		.sport = p.sport,
		.dport = p.dport,
		.proto = p.proto,
	};
	struct mesh_ing_backend b;
	struct mesh_ing_backend *pinned = bpf_map_lookup_elem(&mesh_ing_flows, &fk);
	if (pinned && !p.syn_only) {
		b = *pinned;
	} else {
		if (pick(svc, &b) < 0) {
			/* No backend: the host's own stack answers (TCP RST, ICMP unreachable). */
			count(MESH_ING_STAT_NO_BACKEND);
			return TC_ACT_OK;
		}
		bpf_map_update_elem(&mesh_ing_flows, &fk, &b, BPF_ANY);
		count(MESH_ING_STAT_NEW_FLOW);
	}
	if (b.node == 0) {
		if (deliver(skb, &p, p.dport, b.addr, b.port, p.daddr, p.dport, 0) < 0) {
			count(MESH_ING_STAT_NO_ROUTE);
			return TC_ACT_SHOT;
		}
		count(MESH_ING_STAT_LOCAL);
		return TC_ACT_REDIRECT;
	}
	return encap(skb, &p, &b, encap_port);
}

/* Lowers the MSS option of a SYN-ACK to `clamp` (Linux puts MSS first among options). */
static __always_inline void clamp_mss(struct __sk_buff *skb, const struct pkt *p, __u16 clamp)
{
	__u8 doff;
	if (!clamp || bpf_skb_load_bytes(skb, p->l4_off + 12, &doff, 1) || (doff >> 4) <= 5)
		return;
	__u8 opt[4];
	if (bpf_skb_load_bytes(skb, p->l4_off + 20, opt, sizeof(opt)))
		return;
	if (opt[0] != 2 || opt[1] != 4)
		return;
	__u16 mss = ((__u16)opt[2] << 8) | opt[3];
	if (mss <= clamp)
		return;
	__u16 old = bpf_htons(mss);
	__u16 new = bpf_htons(clamp);
	if (bpf_l4_csum_replace(skb, p->l4_off + offsetof(struct tcphdr, check), old, new, 2))
		return;
	bpf_skb_store_bytes(skb, p->l4_off + 22, &new, sizeof(new), 0);
}

SEC("classifier")
int mesh_ing_link(struct __sk_buff *skb)
{
	struct pkt p;
	int r = parse(skb, &p);
	if (r == PARSE_NOT_IP) {
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) <= end && eth->h_proto == bpf_htons(ETH_P_ARP))
			return TC_ACT_OK;
		count(MESH_ING_STAT_DROP_LINK);
		return TC_ACT_SHOT;
	}
	if (r != PARSE_OK) {
		count(MESH_ING_STAT_DROP_LINK);
		return TC_ACT_SHOT;
	}
	struct mesh_ing_rev_key rk = {
		.addr = p.saddr,
		.client = p.daddr,
		.port = p.sport,
		.cport = p.dport,
		.proto = p.proto,
	};
	struct mesh_ing_rev *rv = bpf_map_lookup_elem(&mesh_ing_rev, &rk);
	if (!rv) {
		/* A task of this host connecting to a published port at this host's address:
		 * for meshd's own listener on that port (the userspace relay). */
		struct mesh_ing_port_key pk = { .proto = p.proto, .port = p.dport };
		if (bpf_map_lookup_elem(&mesh_ing_addrs, &p.daddr) &&
		    bpf_map_lookup_elem(&mesh_ing_ports, &pk))
			return TC_ACT_OK;
		count(MESH_ING_STAT_DROP_LINK);
		return TC_ACT_SHOT;
	}
	__u32 addr = rv->addr;
	__u16 port = rv->port;
	if ((rv->flags & MESH_ING_REV_ENCAP) && (p.tcp_flags & 0x12) == 0x12) {
		__u32 zero = 0;
		struct mesh_ing_config *cfg = bpf_map_lookup_elem(&mesh_ing_config, &zero);
		if (cfg)
			clamp_mss(skb, &p, cfg->mss);
	}
	if (rewrite(skb, &p, 0, addr, port)) {
		count(MESH_ING_STAT_DROP_LINK);
		return TC_ACT_SHOT;
	}
	count(MESH_ING_STAT_REPLY);
	return route_to(skb, addr, p.daddr, p.proto, 1);
}

char _license[] SEC("license") = "Dual BSD/GPL";
