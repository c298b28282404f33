//! IP address management for overlay networks (pure).
//!
//! Subnets come from the cluster's default pools (10.0.0.0/8 split into /24s unless set at
//! `swarm init`) or are given by the user; addresses inside a subnet are handed out lowest
//! first, skipping the network, broadcast and gateway addresses, and return to the pool when
//! their endpoint goes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The default pool when the cluster sets none.
pub fn default_pool() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap_or_default()
}

/// Default prefix length of allocated subnets.
pub const DEFAULT_SUBNET_PREFIX: u8 = 24;

/// The first subnet of size `/prefix` inside one of `pools` that overlaps none of `used`.
pub fn allocate_subnet(pools: &[Ipv4Net], prefix: u8, used: &[Ipv4Net]) -> Option<Ipv4Net> {
    for pool in pools {
        if prefix < pool.prefix_len() {
            continue;
        }
        let Ok(subnets) = pool.subnets(prefix) else {
            continue;
        };
        for candidate in subnets {
            if !used.iter().any(|u| overlaps(u, &candidate)) {
                return Some(candidate);
            }
        }
    }
    None
}

/// Whether two subnets share any address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The lowest free host address of `subnet`, skipping the network and broadcast
/// addresses, the gateway and every address in `used`.
pub fn allocate_ip(
    subnet: &Ipv4Net,
    gateway: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()).checked_add(1)?;
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| *ip != gateway && !used.contains(ip))
}

/// Whether `ip` may be given to an endpoint of `subnet` with `gateway`.
pub fn is_assignable(subnet: &Ipv4Net, gateway: Ipv4Addr, ip: Ipv4Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast() && ip != gateway
}

/// The gateway of a subnet when none is given: its first host address.
pub fn default_gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_skip_used_and_overlapping() {
        let pools = [default_pool()];
        assert_eq!(allocate_subnet(&pools, 24, &[]), Some(n("10.0.0.0/24")));
        let used = [n("10.0.0.0/24"), n("10.0.1.0/25")];
        assert_eq!(allocate_subnet(&pools, 24, &used), Some(n("10.0.2.0/24")));
        // A user's /16 covering the start pushes allocation past it.
        assert_eq!(
            allocate_subnet(&pools, 24, &[n("10.0.0.0/16")]),
            Some(n("10.1.0.0/24"))
        );
        // Several pools: the second is used when the first is full.
        let pools = [n("192.168.0.0/24"), n("172.30.0.0/16")];
        assert_eq!(
            allocate_subnet(&pools, 24, &[n("192.168.0.0/24")]),
            Some(n("172.30.0.0/24"))
        );
        // Full.
        assert_eq!(
            allocate_subnet(&[n("192.168.0.0/24")], 24, &[n("192.168.0.0/24")]),
            None
        );
        // Prefix shorter than the pool: nothing.
        assert_eq!(allocate_subnet(&[n("192.168.0.0/24")], 16, &[]), None);
    }

    #[test]
    fn overlap_both_ways() {
        assert!(overlaps(&n("10.0.0.0/8"), &n("10.1.2.0/24")));
        assert!(overlaps(&n("10.1.2.0/24"), &n("10.0.0.0/8")));
        assert!(!overlaps(&n("10.1.2.0/24"), &n("10.1.3.0/24")));
    }

    #[test]
    fn addresses_lowest_first_and_released() {
        let s = n("10.20.0.0/29");
        let gw = default_gateway(&s);
        assert_eq!(gw, ip("10.20.0.1"));
        let mut used = BTreeSet::new();
        let mut got = vec![];
        while let Some(a) = allocate_ip(&s, gw, &used) {
            used.insert(a);
            got.push(a);
        }
        assert_eq!(
            got,
            [
                "10.20.0.2",
                "10.20.0.3",
                "10.20.0.4",
                "10.20.0.5",
                "10.20.0.6"
            ]
            .map(ip)
        );
        used.remove(&ip("10.20.0.4"));
        assert_eq!(allocate_ip(&s, gw, &used), Some(ip("10.20.0.4")));
        assert!(!is_assignable(&s, gw, ip("10.20.0.7")));
        assert!(!is_assignable(&s, gw, ip("10.20.0.1")));
        assert!(is_assignable(&s, gw, ip("10.20.0.6")));
    }

    #[test]
    fn many_allocations_never_collide() {
        let pools = [default_pool()];
        let mut used = Vec::new();
        for _ in 0..300 {
            let s = allocate_subnet(&pools, 24, &used).unwrap();
            assert!(!used.iter().any(|u| overlaps(u, &s)));
            used.push(s);
        }
        assert_eq!(used.len(), 300);
    }
}
