/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map layouts of mesh_ingress.c; crates/mesh-ingress/src/ebpf/ingress.rs mirrors them. */
#ifndef MESH_INGRESS_H
#define MESH_INGRESS_H

#include <linux/types.h>

#define MESH_ING_MAX_PORTS 8192
#define MESH_ING_MAX_BACKENDS 262144
#define MESH_ING_MAX_LOCAL 65536
#define MESH_ING_MAX_FLOWS 262144
#define MESH_ING_MAX_ADDRS 1024

/* Bytes added in front of the original IPv4 packet for a remote backend:
 * outer IPv4 (20) + UDP (8) + struct mesh_ing_encap (8). */
#define MESH_ING_ENCAP_LEN 36

/* Addresses and ports in network byte order. */
struct mesh_ing_port_key {
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
	__u16 port; /* published port */
};

struct mesh_ing_port {
	__u32 service; /* index into mesh_ing_rr */
	__u16 count;   /* backends in slot `slot`; 0: the kernel answers (RST / ICMP) */
	__u16 slot;
};

struct mesh_ing_backend_key {
	__u32 service;
	__u16 slot;
	__u16 index;
};

struct mesh_ing_backend {
	__u32 addr; /* task address */
	__u16 port; /* target port */
	__u16 pad;
	__u32 node; /* underlay address of its node; 0: this host */
};

/* A backend this host delivers to: {proto, published port, task address, target port}. */
struct mesh_ing_local_key {
	__u8 proto;
	__u8 pad;
	__u16 port;
	__u32 addr;
	__u16 target;
	__u16 pad2;
};

/* How: out of the mesh link `ifindex` to the neighbour `nexthop` (the link's far end). */
struct mesh_ing_local {
	__u32 ifindex;
	__u32 nexthop;
};

struct mesh_ing_flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* A delivered flow seen from the backend's reply: {task, client, ports, proto}. */
struct mesh_ing_rev_key {
	__u32 addr;
	__u32 client;
	__u16 port;
	__u16 cport;
	__u8 proto;
	__u8 pad[3];
};

/* What the client connected to: the reply's source is rewritten to it. */
struct mesh_ing_rev {
	__u32 addr;
	__u16 port;
	__u16 flags; /* MESH_ING_REV_* */
};

/* The flow came encapsulated from another node: the MSS of the backend's SYN-ACK is
 * clamped so the client's full-size segments still fit the underlay once encapsulated. */
#define MESH_ING_REV_ENCAP 1

/* Follows the outer UDP header; the original IPv4 packet follows it unchanged. */
struct mesh_ing_encap {
	__u32 backend;
	__u16 target;
	__u16 port;
};

struct mesh_ing_config {
	__u16 encap_port; /* network byte order */
	__u16 mss;        /* host order: the most a SYN-ACK of an encapsulated flow announces */
	__u32 pad;
};

enum {
	MESH_ING_STAT_LOCAL = 0,      /* packets delivered to a backend of this host */
	MESH_ING_STAT_ENCAP = 1,      /* packets sent to another node */
	MESH_ING_STAT_DECAP = 2,      /* packets received from another node and delivered */
	MESH_ING_STAT_REPLY = 3,      /* replies sent straight to the client */
	MESH_ING_STAT_NEW_FLOW = 4,   /* flows given a backend */
	MESH_ING_STAT_NO_BACKEND = 5, /* new flows to a port with no backend */
	MESH_ING_STAT_DROP_LINK = 6,  /* packets on a mesh link matching no flow */
	MESH_ING_STAT_DROP_DECAP = 7, /* encapsulated packets refused */
	MESH_ING_STAT_NO_ROUTE = 8,   /* FIB lookups or redirects that failed */
	MESH_ING_STAT_MAX = 9,
};

#endif
