//! The cache of forwarded answers: whole messages as the upstream sent them, served with the
//! asker's ID and question and with TTLs counted down.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::wire::{self, Query, ResponseInfo};

/// Longest time an answer is kept, whatever its TTL.
const MAX_TTL: u32 = 3600;
const SHARDS: usize = 16;
/// Longest cache key: a name, type, class and one flags byte.
pub(crate) const MAX_KEY_LEN: usize = wire::MAX_NAME_LEN + 5;

struct Entry {
    msg: Box<[u8]>,
    ttl_offsets: Box<[u16]>,
    question_end: usize,
    stored: Instant,
    expires: Instant,
}

type Shard = HashMap<Box<[u8]>, Entry>;

/// A bounded map from question to answer, split in shards to keep threads apart.
pub(crate) struct Cache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

/// The key of a query: its lowercase name, type, class, and whether it has EDNS, DO and CD
/// (answers differ on those).
pub(crate) fn key<'a>(q: &Query, buf: &'a mut [u8; MAX_KEY_LEN]) -> &'a [u8] {
    let name = q.name_lower();
    let n = name.len();
    buf[..n].copy_from_slice(name);
    buf[n..n + 2].copy_from_slice(&q.qtype.to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&q.qclass.to_be_bytes());
    let mut flags = (q.flags & 0x0010 != 0) as u8;
    if let Some(e) = q.edns {
        flags |= 2 | ((e.dnssec_ok as u8) << 2);
    }
    buf[n + 4] = flags;
    &buf[..n + 5]
}

fn shard_of(key: &[u8]) -> usize {
    // FNV-1a: the shard only spreads lock contention.
    let mut h: u32 = 0x811c_9dc5;
    for &b in key {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h as usize % SHARDS
}

impl Cache {
    /// A cache of at most `capacity` answers (0: keeps nothing).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    /// Writes the kept answer for `q` (read from `query`) into `out`; false if there is none.
    pub(crate) fn get(
        &self,
        key: &[u8],
        now: Instant,
        q: &Query,
        query: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        if self.per_shard == 0 {
            return false;
        }
        let mut shard = self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(e) = shard.get(key) else {
            return false;
        };
        if e.expires <= now {
            shard.remove(key);
            return false;
        }
        out.clear();
        out.extend_from_slice(&e.msg);
        wire::set_id(out, q.id);
        // The asker's RD bit and question, letter case included (RFC 5452 / 0x20 checks).
        out[2] = (out[2] & !0x01) | ((q.flags >> 8) as u8 & 0x01);
        if e.question_end == q.question_end {
            out[wire::HEADER_LEN..e.question_end].copy_from_slice(q.question(query));
        }
        let age = u32::try_from(now.duration_since(e.stored).as_secs()).unwrap_or(u32::MAX);
        if age > 0 {
            for &at in e.ttl_offsets.iter() {
                let at = usize::from(at);
                if let Some(b) = out.get_mut(at..at + 4) {
                    let ttl = u32::from_be_bytes([b[0], b[1], b[2], b[3]]).saturating_sub(age);
                    b.copy_from_slice(&ttl.to_be_bytes());
                }
            }
        }
        true
    }

    /// Keeps `msg`, an upstream's answer, if it may be kept.
    pub(crate) fn insert(&self, key: &[u8], msg: &[u8], info: ResponseInfo, now: Instant) {
        if self.per_shard == 0
            || info.truncated
            || !matches!(info.rcode, wire::RCODE_NOERROR | wire::RCODE_NXDOMAIN)
        {
            return;
        }
        let ttl = match info.ttl {
            Some(ttl) if ttl > 0 => ttl.min(MAX_TTL),
            _ => return,
        };
        let entry = Entry {
            msg: msg.into(),
            ttl_offsets: info.ttl_offsets.into_boxed_slice(),
            question_end: info.question_end,
            stored: now,
            expires: now + Duration::from_secs(u64::from(ttl)),
        };
        let mut shard = self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.per_shard && !shard.contains_key(key) {
            shard.retain(|_, e| e.expires > now);
            if shard.len() >= self.per_shard {
                // Still full: drop one answer (the map's order is arbitrary, so this is a random
                // eviction).
                let victim = shard.keys().next().cloned();
                if let Some(victim) = victim {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(key.into(), entry);
    }

    /// Answers kept (expired ones included until they are found or evicted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}
