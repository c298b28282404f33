//! From one query to one answer, without I/O: the cluster's names from the table, the rest
//! from the cache or marked for forwarding.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use crate::cache::{self, Cache};
use crate::table::Table;
use crate::wire::{self, Answer, ParseError, Query};

/// How a query came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: answers are bounded by 512 bytes or the query's EDNS payload size.
    Udp,
    /// A TCP stream: answers are complete.
    Tcp,
}

/// What to do with a query after [`Answerer::answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// The answer is in the output buffer.
    Reply,
    /// The name is not the cluster's and not cached: ask an upstream.
    Forward,
    /// Send nothing (not a query).
    Drop,
}

/// Everything an answer depends on besides the table and the asker's networks.
pub(crate) struct Answerer {
    pub(crate) ttl: u32,
    pub(crate) max_udp_payload: u16,
    pub(crate) has_upstreams: bool,
    pub(crate) cache: Cache,
}

impl Answerer {
    /// The largest answer allowed for `q` on `transport`.
    pub(crate) fn limit(&self, q: &Query, transport: Transport) -> usize {
        match transport {
            Transport::Udp => q.udp_limit(self.max_udp_payload),
            Transport::Tcp => usize::from(u16::MAX),
        }
    }

    /// Answers `msg` for a task on the networks `view` (indices into `table`), into `out`.
    /// `rotation` picks which address comes first when a name has several.
    pub(crate) fn answer(
        &self,
        table: &Table,
        view: &[u32],
        msg: &[u8],
        transport: Transport,
        rotation: u32,
        out: &mut Vec<u8>,
    ) -> Action {
        let q = match wire::parse_query(msg) {
            Ok(q) => q,
            Err(ParseError::Ignore) => return Action::Drop,
            Err(ParseError::FormErr { id, flags }) => {
                wire::write_header_only(out, id, flags, wire::RCODE_FORMERR);
                return Action::Reply;
            }
            Err(ParseError::NotImp { id, flags }) => {
                wire::write_header_only(out, id, flags, wire::RCODE_NOTIMP);
                return Action::Reply;
            }
        };
        if q.edns.is_some_and(|e| e.version > 0) {
            wire::write_badvers(out, &q, msg);
            return Action::Reply;
        }
        if !matches!(q.qclass, wire::CLASS_IN | wire::CLASS_ANY)
            || matches!(q.qtype, wire::TYPE_AXFR | wire::TYPE_IXFR)
        {
            wire::write_empty(out, &q, msg, wire::RCODE_REFUSED, false, false);
            return Action::Reply;
        }
        let limit = self.limit(&q, transport);

        if let Some(bindings) = table.lookup(q.name_lower()) {
            let mut visible = bindings.iter().filter(|b| view.contains(&b.network));
            if let Some(first) = visible.next() {
                let mut a = Answer::start(out, &q, msg, wire::RCODE_NOERROR, true, limit);
                match visible.next() {
                    None => self.records(&mut a, q.qtype, &first.v4, &first.v6, rotation),
                    Some(second) => {
                        // The name is on several of the asker's networks: one record set.
                        let all = || [first, second].into_iter().chain(visible.clone());
                        let mut v4: Vec<Ipv4Addr> =
                            all().flat_map(|b| b.v4.iter().copied()).collect();
                        let mut v6: Vec<Ipv6Addr> =
                            all().flat_map(|b| b.v6.iter().copied()).collect();
                        v4.sort_unstable();
                        v4.dedup();
                        v6.sort_unstable();
                        v6.dedup();
                        self.records(&mut a, q.qtype, &v4, &v6, rotation);
                    }
                }
                a.finish();
                return Action::Reply;
            }
        }

        // Single-label names and `tasks.*` are the cluster's: not found means no such name.
        if q.labels == 1 || q.first_label_is_tasks() {
            wire::write_empty(out, &q, msg, wire::RCODE_NXDOMAIN, true, false);
            return Action::Reply;
        }
        if !self.has_upstreams {
            wire::write_empty(out, &q, msg, wire::RCODE_SERVFAIL, false, false);
            return Action::Reply;
        }
        let mut key = [0; cache::MAX_KEY_LEN];
        let key = cache::key(&q, &mut key);
        if self.cache.get(key, Instant::now(), &q, msg, out) {
            if out.len() > limit {
                let rcode = out[3] & 0x0F;
                wire::write_empty(out, &q, msg, rcode, false, true);
            }
            return Action::Reply;
        }
        Action::Forward
    }

    fn records(
        &self,
        a: &mut Answer<'_>,
        qtype: u16,
        v4: &[Ipv4Addr],
        v6: &[Ipv6Addr],
        rotation: u32,
    ) {
        if matches!(qtype, wire::TYPE_A | wire::TYPE_ANY) {
            for ip in rotated(v4, rotation) {
                if !a.push_a(ip, self.ttl) {
                    return;
                }
            }
        }
        if matches!(qtype, wire::TYPE_AAAA | wire::TYPE_ANY) {
            for ip in rotated(v6, rotation) {
                if !a.push_aaaa(ip, self.ttl) {
                    return;
                }
            }
        }
    }
}

/// The items of `v` starting at `rotation % len`, wrapping around.
fn rotated<T: Copy>(v: &[T], rotation: u32) -> impl Iterator<Item = T> + '_ {
    let start = if v.is_empty() {
        0
    } else {
        rotation as usize % v.len()
    };
    v[start..].iter().chain(&v[..start]).copied()
}
