// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Service VIPs by socket-level load balancing.
 *
 * A task connecting to VIP:P (TCP, connected UDP) or sending to it (unconnected UDP) gets
 * backend:P instead, chosen round-robin among the service's healthy tasks, at the socket
 * layer: no packet is ever rewritten, the client's own address stays the source. Replies
 * read with recvmsg/recvfrom and getpeername show the VIP again.
 *
 * The programs are attached at the root of the cgroup2 hierarchy, so they see every socket
 * of the machine; they act only on sockets of the network namespaces registered in
 * mesh_vip_netns (by netns cookie). Several daemons on one kernel each load their own copy.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "mesh_vip.h"

/* Client network namespaces: netns cookie -> scope (one scope per network). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_VIP_MAX_NETNS);
	__type(key, __u64);
	__type(value, __u32);
} mesh_vip_netns SEC(".maps");

/* Services: {scope, VIP} -> {service ID, backend count, live slot}. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_VIP_MAX_SERVICES);
	__type(key, struct mesh_vip_key);
	__type(value, struct mesh_vip_service);
} mesh_vip_services SEC(".maps");

/* Backends: {service ID, slot, index} -> backend address. Two slots per service: userspace
 * writes the new list into the slot not in use, then flips the service entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_VIP_MAX_BACKENDS);
	__type(key, struct mesh_vip_backend_key);
	__type(value, __u32);
} mesh_vip_backends SEC(".maps");

/* Backends in rotation: {service ID, address} -> 1 (checks a sticky choice is still valid). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MESH_VIP_MAX_BACKENDS);
	__type(key, struct mesh_vip_live_key);
	__type(value, __u8);
} mesh_vip_live SEC(".maps");

/* Round-robin counter per service ID. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MESH_VIP_MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u64);
} mesh_vip_rr SEC(".maps");

/* Reverse translation: {socket cookie, backend, port} -> VIP (recvmsg, getpeername). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MESH_VIP_MAX_SOCKETS);
	__type(key, struct mesh_vip_sock_key);
	__type(value, struct mesh_vip_sock_val);
} mesh_vip_revnat SEC(".maps");

/* Unconnected UDP: {socket cookie, VIP, port} -> backend, so the datagrams of one socket
 * to one VIP port form a flow that sticks to one backend. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MESH_VIP_MAX_SOCKETS);
	__type(key, struct mesh_vip_sock_key);
	__type(value, struct mesh_vip_sock_val);
} mesh_vip_affinity SEC(".maps");

/* Counters (per CPU), indexed by MESH_VIP_STAT_*. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MESH_VIP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} mesh_vip_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&mesh_vip_stats, &which);
	if (v)
		*v += 1;
}

/* The service the socket's destination is, or NULL when the socket is not ours. */
static __always_inline struct mesh_vip_service *lookup_service(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 0;
	__u64 netns = bpf_get_netns_cookie(ctx);
	__u32 *scope = bpf_map_lookup_elem(&mesh_vip_netns, &netns);
	if (!scope)
		return 0;
	struct mesh_vip_key key = { .scope = *scope, .vip = ctx->user_ip4 };
	return bpf_map_lookup_elem(&mesh_vip_services, &key);
}

/* Next backend of the service in round-robin order; 0 when it has none. */
static __always_inline __u32 pick_backend(const struct mesh_vip_service *svc)
{
	__u32 count = svc->count;
	if (count == 0)
		return 0;
	__u32 id = svc->service;
	__u64 *rr = bpf_map_lookup_elem(&mesh_vip_rr, &id);
	if (!rr)
		return 0;
	__u64 n = __sync_fetch_and_add(rr, 1);
	struct mesh_vip_backend_key bk = {
		.service = id,
		.slot = svc->slot,
		.index = (__u16)(n % count),
	};
	__u32 *addr = bpf_map_lookup_elem(&mesh_vip_backends, &bk);
	return addr ? *addr : 0;
}

static __always_inline void remember(struct bpf_sock_addr *ctx, __u32 backend, __u32 vip,
				     __u32 service)
{
	struct mesh_vip_sock_key k = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = backend,
		.port = (__u16)ctx->user_port,
	};
	struct mesh_vip_sock_val v = { .addr = vip, .service = service };
	bpf_map_update_elem(&mesh_vip_revnat, &k, &v, BPF_ANY);
}

/* connect(2), TCP and UDP: the destination VIP becomes the next backend. */
SEC("cgroup/connect4")
int mesh_vip_connect4(struct bpf_sock_addr *ctx)
{
	struct mesh_vip_service *svc = lookup_service(ctx);
	if (!svc)
		return 1;
	__u32 vip = ctx->user_ip4;
	__u32 backend = pick_backend(svc);
	if (!backend) {
		count(MESH_VIP_STAT_REFUSED);
		return 0; /* no healthy task: the connect fails (EPERM) */
	}
	ctx->user_ip4 = backend;
	remember(ctx, backend, vip, svc->service);
	count(MESH_VIP_STAT_CONNECT);
	return 1;
}

/* sendmsg(2) with an address on an unconnected UDP socket: one backend per socket and VIP
 * port for as long as it stays in rotation. */
SEC("cgroup/sendmsg4")
int mesh_vip_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct mesh_vip_service *svc = lookup_service(ctx);
	if (!svc)
		return 1;
	__u32 vip = ctx->user_ip4;
	__u32 service = svc->service;
	struct mesh_vip_sock_key ak = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = vip,
		.port = (__u16)ctx->user_port,
	};
	__u32 backend = 0;
	struct mesh_vip_sock_val *sticky = bpf_map_lookup_elem(&mesh_vip_affinity, &ak);
	if (sticky && sticky->service == service) {
		struct mesh_vip_live_key lk = { .service = service, .addr = sticky->addr };
		if (bpf_map_lookup_elem(&mesh_vip_live, &lk))
			backend = sticky->addr;
	}
	if (!backend) {
		backend = pick_backend(svc);
		if (!backend) {
			count(MESH_VIP_STAT_REFUSED);
			return 0;
		}
		struct mesh_vip_sock_val v = { .addr = backend, .service = service };
		bpf_map_update_elem(&mesh_vip_affinity, &ak, &v, BPF_ANY);
	}
	ctx->user_ip4 = backend;
	remember(ctx, backend, vip, service);
	count(MESH_VIP_STAT_SENDMSG);
	return 1;
}

/* The source a datagram came from, or the peer of a socket: a backend reached through a VIP
 * shows as the VIP. */
static __always_inline int restore_vip(struct bpf_sock_addr *ctx, __u32 stat)
{
	struct mesh_vip_sock_key k = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
	};
	struct mesh_vip_sock_val *v = bpf_map_lookup_elem(&mesh_vip_revnat, &k);
	if (v) {
		ctx->user_ip4 = v->addr;
		count(stat);
	}
	return 1;
}

SEC("cgroup/recvmsg4")
int mesh_vip_recvmsg4(struct bpf_sock_addr *ctx)
{
	return restore_vip(ctx, MESH_VIP_STAT_RECVMSG);
}

SEC("cgroup/getpeername4")
int mesh_vip_getpeername4(struct bpf_sock_addr *ctx)
{
	return restore_vip(ctx, MESH_VIP_STAT_GETPEERNAME);
}

char _license[] SEC("license") = "Dual BSD/GPL";
