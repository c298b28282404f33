//! Cryptokey routing of one overlay network, as pure functions of a table.
//!
//! Sending: the destination address of an inner IPv4 packet picks the peer whose allowed IPs
//! hold it. Receiving: a packet decrypted from a peer is accepted only if its source address is
//! one of that peer's allowed IPs, so a peer cannot speak for addresses it does not own.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;

/// Why a packet is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not an IPv4 packet (the overlay carries IPv4 only).
    NotIpv4,
    /// Shorter than an IPv4 header.
    Truncated,
    /// No peer holds this destination address.
    NoRoute(Ipv4Addr),
    /// The sending peer does not own this source address.
    SourceNotAllowed(Ipv4Addr),
}

/// Where an outgoing packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound<P> {
    /// To this peer.
    Peer(P),
    /// Nowhere.
    Drop(Drop),
}

/// Whether an incoming packet is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Write it to the TUN device.
    Accept,
    /// Discard it.
    Drop(Drop),
}

/// An address is claimed by two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict<P> {
    /// The address.
    pub ip: Ipv4Addr,
    /// The peer that holds it.
    pub holder: P,
    /// The peer that asked for it too.
    pub claimant: P,
}

/// Minimum length of an IPv4 header.
pub const IPV4_HEADER_LEN: usize = 20;

/// The source address of an IPv4 packet.
pub fn ipv4_src(packet: &[u8]) -> Result<Ipv4Addr, Drop> {
    ipv4_addr_at(packet, 12)
}

/// The destination address of an IPv4 packet.
pub fn ipv4_dst(packet: &[u8]) -> Result<Ipv4Addr, Drop> {
    ipv4_addr_at(packet, 16)
}

fn ipv4_addr_at(packet: &[u8], at: usize) -> Result<Ipv4Addr, Drop> {
    match packet.first() {
        Some(b) if b >> 4 == 4 => {}
        Some(_) => return Err(Drop::NotIpv4),
        None => return Err(Drop::Truncated),
    }
    match packet.get(at..at + 4) {
        Some(&[a, b, c, d]) if packet.len() >= IPV4_HEADER_LEN => Ok(Ipv4Addr::new(a, b, c, d)),
        _ => Err(Drop::Truncated),
    }
}

/// A hasher for IPv4 addresses as `u32`: one multiply, no SipHash on the packet path.
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 ^= self.0 >> 29;
    }
}

/// A `HashMap` keyed by `u32` with [`AddrHasher`].
pub type U32Map<V> = HashMap<u32, V, BuildHasherDefault<AddrHasher>>;

/// The cryptokey routing table of one network: inner IPv4 address → peer.
#[derive(Debug, Clone)]
pub struct RoutingTable<P> {
    routes: U32Map<P>,
}

impl<P> Default for RoutingTable<P> {
    fn default() -> Self {
        RoutingTable {
            routes: U32Map::default(),
        }
    }
}

impl<P: Copy + Eq> RoutingTable<P> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `ip` to `peer`. Adding an address twice to the same peer is a no-op; an address
    /// held by another peer is refused.
    pub fn insert(&mut self, ip: Ipv4Addr, peer: P) -> Result<(), Conflict<P>> {
        match self.routes.entry(u32::from(ip)) {
            Entry::Vacant(v) => {
                v.insert(peer);
                Ok(())
            }
            Entry::Occupied(o) if *o.get() == peer => Ok(()),
            Entry::Occupied(o) => Err(Conflict {
                ip,
                holder: *o.get(),
                claimant: peer,
            }),
        }
    }

    /// Gives every address of `ips` to `peer`, or none of them if one is held by another peer.
    pub fn insert_all(&mut self, ips: &[Ipv4Addr], peer: P) -> Result<(), Conflict<P>> {
        for &ip in ips {
            if let Some(&holder) = self.routes.get(&u32::from(ip))
                && holder != peer
            {
                return Err(Conflict {
                    ip,
                    holder,
                    claimant: peer,
                });
            }
        }
        for &ip in ips {
            self.routes.insert(u32::from(ip), peer);
        }
        Ok(())
    }

    /// Removes every address of `peer`.
    pub fn remove_peer(&mut self, peer: P) {
        self.routes.retain(|_, p| *p != peer);
    }

    /// The peer holding `dst`.
    #[inline]
    pub fn route(&self, dst: Ipv4Addr) -> Option<P> {
        self.routes.get(&u32::from(dst)).copied()
    }

    /// Whether `peer` owns `src`.
    #[inline]
    pub fn allows(&self, peer: P, src: Ipv4Addr) -> bool {
        self.route(src) == Some(peer)
    }

    /// Decides where an IP packet read from the TUN device goes.
    #[inline]
    pub fn outbound(&self, packet: &[u8]) -> Outbound<P> {
        match ipv4_dst(packet) {
            Ok(dst) => match self.route(dst) {
                Some(p) => Outbound::Peer(p),
                None => Outbound::Drop(Drop::NoRoute(dst)),
            },
            Err(d) => Outbound::Drop(d),
        }
    }

    /// Decides whether an IP packet decrypted from `peer` may enter the network.
    #[inline]
    pub fn inbound(&self, peer: P, packet: &[u8]) -> Inbound {
        match ipv4_src(packet) {
            Ok(src) if self.allows(peer, src) => Inbound::Accept,
            Ok(src) => Inbound::Drop(Drop::SourceNotAllowed(src)),
            Err(d) => Inbound::Drop(d),
        }
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The addresses of `peer`, sorted.
    pub fn addresses_of(&self, peer: P) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self
            .routes
            .iter()
            .filter(|(_, p)| **p == peer)
            .map(|(ip, _)| Ipv4Addr::from(*ip))
            .collect();
        v.sort();
        v
    }

    /// Every address in the table, sorted.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self.routes.keys().map(|ip| Ipv4Addr::from(*ip)).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A minimal IPv4 header (+ payload) from `src` to `dst`.
    fn packet(src: &str, dst: &str) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&ip(src).octets());
        p[16..20].copy_from_slice(&ip(dst).octets());
        p
    }

    fn table() -> RoutingTable<u32> {
        let mut t = RoutingTable::new();
        t.insert_all(&[ip("10.0.0.2"), ip("10.0.0.3")], 1).unwrap();
        t.insert_all(&[ip("10.0.0.4")], 2).unwrap();
        t
    }

    #[test]
    fn routes_by_destination() {
        let t = table();
        assert_eq!(
            t.outbound(&packet("10.0.0.9", "10.0.0.2")),
            Outbound::Peer(1)
        );
        assert_eq!(
            t.outbound(&packet("10.0.0.9", "10.0.0.3")),
            Outbound::Peer(1)
        );
        assert_eq!(
            t.outbound(&packet("10.0.0.9", "10.0.0.4")),
            Outbound::Peer(2)
        );
        assert_eq!(
            t.outbound(&packet("10.0.0.2", "10.0.0.5")),
            Outbound::Drop(Drop::NoRoute(ip("10.0.0.5")))
        );
    }

    #[test]
    fn accepts_only_owned_sources() {
        let t = table();
        assert_eq!(
            t.inbound(1, &packet("10.0.0.2", "10.0.0.9")),
            Inbound::Accept
        );
        assert_eq!(
            t.inbound(2, &packet("10.0.0.4", "10.0.0.9")),
            Inbound::Accept
        );
        // Peer 2 pretending to be peer 1's address.
        assert_eq!(
            t.inbound(2, &packet("10.0.0.2", "10.0.0.9")),
            Inbound::Drop(Drop::SourceNotAllowed(ip("10.0.0.2")))
        );
        // An address nobody owns.
        assert_eq!(
            t.inbound(1, &packet("192.168.1.1", "10.0.0.9")),
            Inbound::Drop(Drop::SourceNotAllowed(ip("192.168.1.1")))
        );
        // A peer that is not in the table at all.
        assert_eq!(
            t.inbound(7, &packet("10.0.0.2", "10.0.0.9")),
            Inbound::Drop(Drop::SourceNotAllowed(ip("10.0.0.2")))
        );
    }

    #[test]
    fn refuses_malformed_packets() {
        let t = table();
        assert_eq!(t.outbound(&[]), Outbound::Drop(Drop::Truncated));
        assert_eq!(t.outbound(&[0x45; 19]), Outbound::Drop(Drop::Truncated));
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        assert_eq!(t.outbound(&v6), Outbound::Drop(Drop::NotIpv4));
        assert_eq!(t.inbound(1, &v6), Inbound::Drop(Drop::NotIpv4));
        assert_eq!(t.inbound(1, &[0x45; 12]), Inbound::Drop(Drop::Truncated));
        // Exactly a header is enough.
        let p = packet("10.0.0.2", "10.0.0.4");
        assert_eq!(t.outbound(&p[..20]), Outbound::Peer(2));
    }

    #[test]
    fn conflicts_are_refused_whole() {
        let mut t = table();
        let c = t
            .insert_all(&[ip("10.0.0.8"), ip("10.0.0.4")], 3)
            .unwrap_err();
        assert_eq!(
            c,
            Conflict {
                ip: ip("10.0.0.4"),
                holder: 2,
                claimant: 3
            }
        );
        // Nothing of the refused claim was added.
        assert_eq!(t.route(ip("10.0.0.8")), None);
        assert_eq!(t.len(), 3);
        // Same peer again is fine.
        t.insert(ip("10.0.0.4"), 2).unwrap();
        t.insert_all(&[ip("10.0.0.2")], 1).unwrap();
        assert_eq!(t.len(), 3);
        assert!(t.insert(ip("10.0.0.2"), 2).is_err());
    }

    #[test]
    fn removing_a_peer_removes_its_routes_only() {
        let mut t = table();
        t.remove_peer(1);
        assert_eq!(t.route(ip("10.0.0.2")), None);
        assert_eq!(t.route(ip("10.0.0.3")), None);
        assert_eq!(t.route(ip("10.0.0.4")), Some(2));
        assert_eq!(t.addresses(), vec![ip("10.0.0.4")]);
        t.remove_peer(2);
        assert!(t.is_empty());
    }

    #[test]
    fn lists_addresses() {
        let t = table();
        assert_eq!(t.addresses_of(1), vec![ip("10.0.0.2"), ip("10.0.0.3")]);
        assert_eq!(t.addresses_of(9), Vec::<Ipv4Addr>::new());
        assert_eq!(
            t.addresses(),
            vec![ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.4")]
        );
    }

    #[test]
    fn many_addresses_route_exactly() {
        // A /16 worth of endpoints spread over 50 peers: each address routes to its peer
        // and is accepted only from it.
        let mut t = RoutingTable::new();
        for i in 0..65_000u32 {
            t.insert(Ipv4Addr::from(0x0a00_0000 + i), i % 50).unwrap();
        }
        for i in (0..65_000u32).step_by(7) {
            let a = Ipv4Addr::from(0x0a00_0000 + i);
            assert_eq!(t.route(a), Some(i % 50));
            assert!(t.allows(i % 50, a));
            assert!(!t.allows((i + 1) % 50, a));
        }
        assert_eq!(t.route(Ipv4Addr::from(0x0a00_0000 + 65_000)), None);
    }

    #[test]
    fn header_parsing() {
        let p = packet("1.2.3.4", "5.6.7.8");
        assert_eq!(ipv4_src(&p), Ok(ip("1.2.3.4")));
        assert_eq!(ipv4_dst(&p), Ok(ip("5.6.7.8")));
        assert_eq!(ipv4_dst(&[]), Err(Drop::Truncated));
        assert_eq!(ipv4_src(&[0x00; 20]), Err(Drop::NotIpv4));
    }
}
