/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map layouts of mesh_vip.c; crates/mesh-ingress/src/ebpf/vip.rs mirrors them (#[repr(C)]). */
#ifndef MESH_VIP_H
#define MESH_VIP_H

#include <linux/types.h>

#define MESH_VIP_MAX_NETNS 4096
#define MESH_VIP_MAX_SERVICES 16384
#define MESH_VIP_MAX_BACKENDS 262144
#define MESH_VIP_MAX_SOCKETS 131072

/* Addresses and ports in network byte order, as in struct bpf_sock_addr. */
struct mesh_vip_key {
	__u32 scope;
	__u32 vip;
};

struct mesh_vip_service {
	__u32 service; /* index into mesh_vip_rr */
	__u16 count;   /* backends in slot `slot`; 0: connections are refused */
	__u16 slot;    /* 0 or 1 */
};

struct mesh_vip_backend_key {
	__u32 service;
	__u16 slot;
	__u16 index;
};

struct mesh_vip_live_key {
	__u32 service;
	__u32 addr;
};

struct mesh_vip_sock_key {
	__u64 cookie;
	__u32 addr;
	__u16 port;
	__u16 pad;
};

struct mesh_vip_sock_val {
	__u32 addr;
	__u32 service;
};

enum {
	MESH_VIP_STAT_CONNECT = 0,
	MESH_VIP_STAT_SENDMSG = 1,
	MESH_VIP_STAT_RECVMSG = 2,
	MESH_VIP_STAT_GETPEERNAME = 3,
	MESH_VIP_STAT_REFUSED = 4,
	MESH_VIP_STAT_MAX = 5,
};

#endif
