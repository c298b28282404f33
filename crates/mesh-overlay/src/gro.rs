//! Receive coalescing (GRO) of decrypted IPv4 packets before they are written to a TUN device
//! with virtio-net headers: consecutive TCP segments of a flow become one TSO super-packet, and
//! equal-sized UDP datagrams of a flow one USO super-packet, so the kernel runs its stack once
//! per super-packet instead of once per packet.
//!
//! Packets arrive authenticated by WireGuard, so (like the kernel's WireGuard, which marks them
//! `CHECKSUM_UNNECESSARY`) their transport checksums are not verified again here; a coalesced
//! packet carries a partial checksum that the kernel completes if it ever has to.

use tun_rs::{VIRTIO_NET_HDR_LEN, VirtioNetHdr};

/// Offset of the IP packet in a [`PacketBuf`]: room for the virtio-net header.
pub const HDR: usize = VIRTIO_NET_HDR_LEN;
/// Largest IPv4 packet.
const MAX_IP: usize = 65_535;

const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;

/// A packet buffer: the virtio-net header's room, the packet, and room to grow behind it.
pub struct PacketBuf {
    /// Storage.
    pub data: Box<[u8]>,
    /// Bytes in use, header room included.
    pub len: usize,
}

impl PacketBuf {
    /// A buffer of `cap` bytes.
    pub fn new(cap: usize) -> PacketBuf {
        PacketBuf {
            data: vec![0u8; cap].into_boxed_slice(),
            len: 0,
        }
    }

    /// The IP packet.
    pub fn packet(&self) -> &[u8] {
        &self.data[HDR..self.len]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// What coalescing needs to know of a packet.
#[derive(Clone, Copy)]
struct Info {
    proto: Proto,
    /// Source and destination addresses and ports.
    tuple: [u8; 12],
    /// TOS, TTL and the DF bit: segments of one super-packet share them.
    ip_meta: u32,
    /// Transport header length.
    thl: usize,
    /// TCP: sequence number.
    seq: u32,
    /// TCP: acknowledgement number.
    ack: u32,
    /// TCP: data offset, flags (without PSH) and window.
    word: u32,
    /// TCP: PSH set.
    psh: bool,
    /// Payload bytes.
    payload: usize,
}

/// Parses a packet that may be coalesced: IPv4 without options or fragmentation, TCP with ACK
/// and no other flag than PSH, or UDP; with a payload.
fn parse(p: &[u8]) -> Option<Info> {
    if p.len() < 28 || p[0] != 0x45 || usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
        return None;
    }
    let frag = u16::from_be_bytes([p[6], p[7]]);
    if frag & 0x3fff != 0 {
        return None;
    }
    let ip_meta = u32::from(p[1]) << 16 | u32::from(p[8]) << 8 | u32::from(frag >> 14);
    let mut tuple = [0u8; 12];
    tuple[..8].copy_from_slice(&p[12..20]);
    tuple[8..].copy_from_slice(&p[20..24]);
    match p[9] {
        6 => {
            if p.len() < 40 {
                return None;
            }
            let thl = usize::from(p[32] >> 4) * 4;
            let flags = p[33];
            if thl < 20 || 20 + thl >= p.len() {
                return None;
            }
            if flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR) != 0
                || flags & TCP_ACK == 0
            {
                return None;
            }
            Some(Info {
                proto: Proto::Tcp,
                tuple,
                ip_meta,
                thl,
                seq: u32::from_be_bytes([p[24], p[25], p[26], p[27]]),
                ack: u32::from_be_bytes([p[28], p[29], p[30], p[31]]),
                word: u32::from_be_bytes([p[32], flags & !TCP_PSH, p[34], p[35]]),
                psh: flags & TCP_PSH != 0,
                payload: p.len() - 20 - thl,
            })
        }
        17 => {
            if usize::from(u16::from_be_bytes([p[24], p[25]])) != p.len() - 20 || p.len() == 28 {
                return None;
            }
            Some(Info {
                proto: Proto::Udp,
                tuple,
                ip_meta,
                thl: 8,
                seq: 0,
                ack: 0,
                word: 0,
                psh: false,
                payload: p.len() - 28,
            })
        }
        _ => None,
    }
}

/// A super-packet being built.
struct Flow {
    info: Info,
    /// Index of the buffer holding it.
    head: usize,
    /// Payload size of every segment but the last.
    seg: usize,
    /// Next sequence number expected (TCP).
    next_seq: u32,
    /// Segments merged into the head.
    merged: usize,
    /// Whether more segments may be appended.
    open: bool,
}

/// Coalesces batches of packets; reuses its tables from batch to batch.
#[derive(Default)]
pub struct Gro {
    flows: Vec<Flow>,
    out: Vec<usize>,
}

/// Most flows tracked in one batch; packets of further flows are written as they are.
const MAX_FLOWS: usize = 64;

impl Gro {
    /// An empty coalescer.
    pub fn new() -> Gro {
        Gro {
            flows: Vec::with_capacity(MAX_FLOWS),
            out: Vec::with_capacity(256),
        }
    }

    /// Coalesces `bufs` (each an IPv4 packet at [`HDR`]) and writes the virtio-net header of
    /// every packet to write in front of it; returns the indices of the buffers to write, in
    /// order. `udp` allows UDP super-packets (the device has USO).
    pub fn coalesce(&mut self, bufs: &mut [PacketBuf], udp: bool) -> &[usize] {
        self.flows.clear();
        self.out.clear();
        for i in 0..bufs.len() {
            let info = parse(bufs[i].packet()).filter(|f| udp || f.proto == Proto::Tcp);
            let Some(info) = info else {
                // Not coalescable: it ends any run of its flow, to keep the flow's order.
                if let Some(t) = tuple_of(bufs[i].packet()) {
                    for f in self.flows.iter_mut().filter(|f| f.info.tuple == t) {
                        f.open = false;
                    }
                }
                self.out.push(i);
                continue;
            };
            if let Some(fi) = self
                .flows
                .iter()
                .position(|f| f.open && f.info.proto == info.proto && f.info.tuple == info.tuple)
            {
                if self.try_append(bufs, fi, i, &info) {
                    continue;
                }
                self.flows[fi].open = false;
            }
            self.out.push(i);
            if self.flows.len() < MAX_FLOWS {
                self.flows.push(Flow {
                    info,
                    head: i,
                    seg: info.payload,
                    next_seq: info.seq.wrapping_add(info.payload as u32),
                    merged: 0,
                    // A TCP segment with PSH ends its run.
                    open: !info.psh,
                });
            }
        }
        for f in &self.flows {
            let b = &mut bufs[f.head];
            let hdr = if f.merged > 0 {
                finish(b, f)
            } else {
                VirtioNetHdr::default()
            };
            let _ = hdr.encode(&mut b.data[..HDR]);
        }
        // Packets that joined no flow get an empty header.
        for &i in &self.out {
            if !self.flows.iter().any(|f| f.head == i) {
                let _ = VirtioNetHdr::default().encode(&mut bufs[i].data[..HDR]);
            }
        }
        &self.out
    }

    fn try_append(&mut self, bufs: &mut [PacketBuf], fi: usize, i: usize, info: &Info) -> bool {
        let f = &self.flows[fi];
        let h = &f.info;
        if info.ip_meta != h.ip_meta || info.payload > f.seg || info.payload == 0 {
            return false;
        }
        let head_len = bufs[f.head].len;
        if head_len - HDR + info.payload > MAX_IP
            || head_len + info.payload > bufs[f.head].data.len()
        {
            return false;
        }
        if info.proto == Proto::Tcp
            && (info.seq != f.next_seq
                || info.ack != h.ack
                || info.word != h.word
                || info.thl != h.thl
                || bufs[i].packet()[40..20 + info.thl] != bufs[f.head].packet()[40..20 + h.thl])
        {
            return false;
        }
        // Append the payload behind the head.
        let (head, pkt) = if f.head < i {
            let (a, b) = bufs.split_at_mut(i);
            (&mut a[f.head], &b[0])
        } else {
            return false;
        };
        let start = HDR + 20 + info.thl;
        head.data[head_len..head_len + info.payload]
            .copy_from_slice(&pkt.data[start..start + info.payload]);
        head.len += info.payload;
        let shorter = info.payload < f.seg;
        let f = &mut self.flows[fi];
        f.merged += 1;
        f.next_seq = f.next_seq.wrapping_add(info.payload as u32);
        if info.psh {
            head.data[HDR + 33] |= TCP_PSH;
        }
        if shorter || info.psh {
            f.open = false;
        }
        true
    }
}

fn tuple_of(p: &[u8]) -> Option<[u8; 12]> {
    if p.len() < 24 || p[0] >> 4 != 4 || !matches!(p[9], 6 | 17) {
        return None;
    }
    let ihl = usize::from(p[0] & 0xf) * 4;
    let ports = p.get(ihl..ihl + 4)?;
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&p[12..20]);
    t[8..].copy_from_slice(ports);
    Some(t)
}

/// Fixes a coalesced head's headers and returns its virtio-net header.
fn finish(b: &mut PacketBuf, f: &Flow) -> VirtioNetHdr {
    let total = b.len - HDR;
    let p = &mut b.data[HDR..b.len];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[10] = 0;
    p[11] = 0;
    let ip_sum = !fold(sum(&p[..20], 0));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let l4_len = (total - 20) as u16;
    let (gso_type, csum_offset) = match f.info.proto {
        Proto::Tcp => (VIRTIO_NET_HDR_GSO_TCPV4, 16u16),
        Proto::Udp => {
            p[24..26].copy_from_slice(&l4_len.to_be_bytes());
            (VIRTIO_NET_HDR_GSO_UDP_L4, 6u16)
        }
    };
    // A partial checksum: the pseudo-header's sum, for the kernel to complete.
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&p[12..20]);
    pseudo[9] = p[9];
    pseudo[10..12].copy_from_slice(&l4_len.to_be_bytes());
    let partial = fold(sum(&pseudo, 0));
    let at = 20 + usize::from(csum_offset);
    p[at..at + 2].copy_from_slice(&partial.to_be_bytes());
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: (20 + f.info.thl) as u16,
        gso_size: f.seg as u16,
        csum_start: 20,
        csum_offset,
    }
}

fn sum(b: &[u8], mut acc: u32) -> u32 {
    let mut chunks = b.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full Internet checksum of `b`.
    fn csum(b: &[u8], init: u32) -> u16 {
        !fold(sum(b, init))
    }

    fn tcp(seq: u32, payload: &[u8], flags: u8, sport: u16) -> PacketBuf {
        let len = 20 + 32 + payload.len();
        let mut b = PacketBuf::new(HDR + 65_535 + 64);
        b.len = HDR + len;
        let p = &mut b.data[HDR..HDR + len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[10, 0, 0, 3]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&7u32.to_be_bytes());
        p[32] = 8 << 4; // 32-byte header: 12 bytes of options (timestamps)
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p[52..].copy_from_slice(payload);
        b
    }

    fn udp(payload: &[u8]) -> PacketBuf {
        let len = 28 + payload.len();
        let mut b = PacketBuf::new(HDR + 65_535 + 64);
        b.len = HDR + len;
        let p = &mut b.data[HDR..HDR + len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[10, 0, 0, 3]);
        p[20..22].copy_from_slice(&5000u16.to_be_bytes());
        p[22..24].copy_from_slice(&6000u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        b
    }

    fn hdr(b: &PacketBuf) -> VirtioNetHdr {
        VirtioNetHdr::decode(&b.data[..HDR]).unwrap()
    }

    #[test]
    fn consecutive_segments_become_one_super_packet() {
        let seg = 1000;
        let data: Vec<u8> = (0..seg * 4 + 300).map(|i| i as u8).collect();
        let mut bufs: Vec<PacketBuf> = (0..5)
            .map(|k| {
                let s = k * seg;
                let e = (s + seg).min(data.len());
                let flags = if k == 4 { TCP_ACK | TCP_PSH } else { TCP_ACK };
                tcp(100 + s as u32, &data[s..e], flags, 1234)
            })
            .collect();
        let mut g = Gro::new();
        let out = g.coalesce(&mut bufs, true).to_vec();
        assert_eq!(out, vec![0]);
        let b = &bufs[0];
        let p = b.packet();
        assert_eq!(p.len(), 52 + data.len());
        assert_eq!(&p[52..], &data[..]);
        assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
        assert_eq!(csum(&p[..20], 0), 0, "IP header checksum");
        assert_ne!(p[33] & TCP_PSH, 0, "PSH of the last segment kept");
        let h = hdr(b);
        assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(h.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(h.gso_size, seg as u16);
        assert_eq!(h.hdr_len, 52);
        assert_eq!((h.csum_start, h.csum_offset), (20, 16));
        // Completing the partial checksum over the TCP segment gives a valid checksum.
        let mut seg_bytes = p[20..].to_vec();
        let partial = u16::from_be_bytes([seg_bytes[16], seg_bytes[17]]);
        seg_bytes[16] = 0;
        seg_bytes[17] = 0;
        let full = csum(&seg_bytes, u32::from(partial));
        seg_bytes[16..18].copy_from_slice(&full.to_be_bytes());
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(seg_bytes.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&seg_bytes);
        assert_eq!(csum(&pseudo, 0), 0);
    }

    #[test]
    fn gaps_flags_and_other_flows_are_not_merged() {
        let pl = [9u8; 500];
        let mut bufs = vec![
            tcp(0, &pl, TCP_ACK, 1),
            tcp(500, &pl, TCP_ACK, 1),
            tcp(2000, &pl, TCP_ACK, 1), // a gap: starts a new run
            tcp(0, &pl, TCP_ACK, 2),    // another flow
            tcp(2500, &pl, TCP_ACK | TCP_FIN, 1), // FIN: written alone, ends the run
            tcp(3000, &pl, TCP_ACK, 1), // after the FIN: new run
            tcp(500, &pl, TCP_ACK, 2),
        ];
        let mut g = Gro::new();
        let out = g.coalesce(&mut bufs, true).to_vec();
        assert_eq!(out, vec![0, 2, 3, 4, 5]);
        assert_eq!(bufs[0].packet().len(), 52 + 1000);
        assert_eq!(hdr(&bufs[0]).gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(bufs[3].packet().len(), 52 + 1000);
        for i in [2, 4, 5] {
            assert_eq!(bufs[i].packet().len(), 52 + 500);
            let h = hdr(&bufs[i]);
            assert_eq!((h.gso_type, h.flags), (0, 0));
        }
    }

    #[test]
    fn a_short_segment_ends_the_run_and_a_longer_one_is_not_merged() {
        let mut bufs = vec![
            tcp(0, &[1; 1000], TCP_ACK, 1),
            tcp(1000, &[2; 1200], TCP_ACK, 1), // longer than the first: not merged
        ];
        let mut g = Gro::new();
        assert_eq!(g.coalesce(&mut bufs, true), &[0, 1]);
        let mut bufs = vec![
            tcp(0, &[1; 1000], TCP_ACK, 1),
            tcp(1000, &[2; 400], TCP_ACK, 1),
            tcp(1400, &[3; 1000], TCP_ACK, 1), // after a short one: new run
        ];
        assert_eq!(g.coalesce(&mut bufs, true), &[0, 2]);
        assert_eq!(bufs[0].packet().len(), 52 + 1400);
    }

    #[test]
    fn differing_options_or_acks_are_not_merged() {
        let mut a = tcp(0, &[1; 100], TCP_ACK, 1);
        let mut b = tcp(100, &[1; 100], TCP_ACK, 1);
        b.data[HDR + 47] = 9; // another timestamp
        let mut g = Gro::new();
        let mut bufs = vec![a, b];
        assert_eq!(g.coalesce(&mut bufs, true), &[0, 1]);
        a = tcp(0, &[1; 100], TCP_ACK, 1);
        b = tcp(100, &[1; 100], TCP_ACK, 1);
        b.data[HDR + 31] = 8; // another ack
        let mut bufs = vec![a, b];
        assert_eq!(g.coalesce(&mut bufs, true), &[0, 1]);
    }

    #[test]
    fn udp_datagrams_coalesce_when_the_device_can() {
        let mut bufs = vec![
            udp(&[1; 300]),
            udp(&[2; 300]),
            udp(&[3; 100]),
            udp(&[4; 300]),
        ];
        let mut g = Gro::new();
        assert_eq!(g.coalesce(&mut bufs, true), &[0, 3]);
        let p = bufs[0].packet();
        assert_eq!(p.len(), 28 + 700);
        assert_eq!(u16::from_be_bytes([p[24], p[25]]), 708);
        let h = hdr(&bufs[0]);
        assert_eq!(
            (h.gso_type, h.gso_size, h.hdr_len),
            (VIRTIO_NET_HDR_GSO_UDP_L4, 300, 28)
        );
        let mut bufs = vec![udp(&[1; 300]), udp(&[2; 300])];
        assert_eq!(g.coalesce(&mut bufs, false), &[0, 1]);
    }

    #[test]
    fn other_packets_pass_untouched() {
        let mut icmp = udp(&[0; 56]);
        icmp.data[HDR + 9] = 1;
        let before = icmp.packet().to_vec();
        let mut bufs = vec![icmp, tcp(0, &[], TCP_ACK, 1)];
        let mut g = Gro::new();
        assert_eq!(g.coalesce(&mut bufs, true), &[0, 1]);
        assert_eq!(bufs[0].packet(), &before[..]);
        assert_eq!(hdr(&bufs[0]).gso_type, 0);
    }
}
