//! The UDP flow table: one entry per client (address and port), expiring after a time without
//! traffic, bounded in size (the least recently active flow goes first). Pure: the time is
//! passed in.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry<V> {
    value: V,
    last: Instant,
    seq: u64,
}

/// Flows keyed by `K` (the client), each holding a `V` (its backend socket).
#[derive(Debug)]
pub struct FlowTable<K, V> {
    flows: HashMap<K, Entry<V>>,
    /// (last activity, insertion sequence) → key: the least recently active first.
    by_age: BTreeMap<(Instant, u64), K>,
    seq: u64,
    idle: Duration,
    max: usize,
}

impl<K: Hash + Eq + Clone, V> FlowTable<K, V> {
    /// A table whose flows expire after `idle` without traffic, holding at most `max` flows
    /// (at least one).
    pub fn new(idle: Duration, max: usize) -> Self {
        FlowTable {
            flows: HashMap::new(),
            by_age: BTreeMap::new(),
            seq: 0,
            idle,
            max: max.max(1),
        }
    }

    /// How many flows the table holds (expired ones included until [`FlowTable::expire`]).
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether the table holds no flow.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn live(&self, e: &Entry<V>, now: Instant) -> bool {
        now.saturating_duration_since(e.last) < self.idle
    }

    /// The flow of `key` if it is live at `now`, marking it active.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<&V> {
        if !self.touch(key, now) {
            return None;
        }
        self.flows.get(key).map(|e| &e.value)
    }

    /// The flow of `key` if it is live at `now`, without marking it active.
    pub fn peek(&self, key: &K, now: Instant) -> Option<&V> {
        self.flows
            .get(key)
            .filter(|e| self.live(e, now))
            .map(|e| &e.value)
    }

    /// Marks the flow of `key` active at `now`; false when there is no live flow for it.
    pub fn touch(&mut self, key: &K, now: Instant) -> bool {
        let idle = self.idle;
        let Some(e) = self.flows.get_mut(key) else {
            return false;
        };
        if now.saturating_duration_since(e.last) >= idle {
            return false;
        }
        if now > e.last {
            self.by_age.remove(&(e.last, e.seq));
            e.last = now;
            self.by_age.insert((e.last, e.seq), key.clone());
        }
        true
    }

    /// Adds the flow of `key` (replacing an older one of the same key). Returns the flows that
    /// left the table to make room: the replaced one, and the least recently active ones when
    /// the table was full.
    pub fn insert(&mut self, key: K, value: V, now: Instant) -> Vec<(K, V)> {
        let mut gone = Vec::new();
        if let Some(old) = self.remove(&key) {
            gone.push((key.clone(), old));
        }
        while self.flows.len() >= self.max {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(e) = self.flows.remove(&oldest) {
                gone.push((oldest, e.value));
            }
        }
        self.seq += 1;
        self.by_age.insert((now, self.seq), key.clone());
        self.flows.insert(
            key,
            Entry {
                value,
                last: now,
                seq: self.seq,
            },
        );
        gone
    }

    /// Removes the flow of `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let e = self.flows.remove(key)?;
        self.by_age.remove(&(e.last, e.seq));
        Some(e.value)
    }

    /// Removes and returns the flows without traffic for the idle time at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<(K, V)> {
        let mut gone = Vec::new();
        while let Some(entry) = self.by_age.first_entry() {
            let (last, _) = *entry.key();
            if now.saturating_duration_since(last) < self.idle {
                break;
            }
            let key = entry.remove();
            if let Some(e) = self.flows.remove(&key) {
                gone.push((key, e.value));
            }
        }
        gone
    }

    /// Removes and returns every flow.
    pub fn drain(&mut self) -> Vec<(K, V)> {
        self.by_age.clear();
        self.flows.drain().map(|(k, e)| (k, e.value)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(30);

    fn secs(t: Instant, s: u64) -> Instant {
        t + Duration::from_secs(s)
    }

    #[test]
    fn insert_and_lookup() {
        let t = Instant::now();
        let mut ft = FlowTable::new(IDLE, 10);
        assert!(ft.insert("a", 1, t).is_empty());
        assert!(ft.insert("b", 2, t).is_empty());
        assert_eq!(ft.get(&"a", t), Some(&1));
        assert_eq!(ft.get(&"b", t), Some(&2));
        assert_eq!(ft.get(&"c", t), None);
        assert_eq!(ft.len(), 2);
    }

    #[test]
    fn flows_expire_after_idle_time() {
        let t = Instant::now();
        let mut ft = FlowTable::new(IDLE, 10);
        ft.insert("a", 1, t);
        ft.insert("b", 2, secs(t, 10));
        assert!(ft.expire(secs(t, 29)).is_empty());
        assert_eq!(ft.expire(secs(t, 30)), vec![("a", 1)]);
        assert_eq!(ft.peek(&"b", secs(t, 39)), Some(&2));
        assert_eq!(
            ft.peek(&"b", secs(t, 40)),
            None,
            "expired even before a sweep"
        );
        assert_eq!(ft.expire(secs(t, 40)), vec![("b", 2)]);
        assert!(ft.is_empty());
    }

    #[test]
    fn traffic_keeps_a_flow_alive() {
        let t = Instant::now();
        let mut ft = FlowTable::new(IDLE, 10);
        ft.insert("a", 1, t);
        for s in (20..=200).step_by(20) {
            assert!(ft.touch(&"a", secs(t, s)), "at {s}s");
            assert!(ft.expire(secs(t, s + 1)).is_empty());
        }
        assert_eq!(ft.get(&"a", secs(t, 229)), Some(&1));
        assert_eq!(ft.expire(secs(t, 259)), vec![("a", 1)]);
    }

    #[test]
    fn an_expired_flow_is_not_revived() {
        let t = Instant::now();
        let mut ft = FlowTable::new(IDLE, 10);
        ft.insert("a", 1, t);
        assert!(!ft.touch(&"a", secs(t, 31)));
        assert_eq!(ft.get(&"a", secs(t, 31)), None);
        // A new flow for the same client replaces the dead one.
        assert_eq!(ft.insert("a", 2, secs(t, 31)), vec![("a", 1)]);
        assert_eq!(ft.get(&"a", secs(t, 31)), Some(&2));
    }

    #[test]
    fn bounded_the_least_recently_active_go_first() {
        let t = Instant::now();
        let mut ft = FlowTable::new(IDLE, 3);
        ft.insert("a", 1, t);
        ft.insert("b", 2, secs(t, 1));
        ft.insert("c", 3, secs(t, 2));
        ft.touch(&"a", secs(t, 3));
        assert_eq!(ft.insert("d", 4, secs(t, 4)), vec![("b", 2)]);
        assert_eq!(ft.insert("e", 5, secs(t, 5)), vec![("c", 3)]);
        assert_eq!(ft.insert("f", 6, secs(t, 6)), vec![("a", 1)]);
        assert_eq!(ft.len(), 3);
        let mut left: Vec<_> = ["d", "e", "f"]
            .iter()
            .filter_map(|k| ft.peek(k, secs(t, 6)).copied())
            .collect();
        left.sort_unstable();
        assert_eq!(left, vec![4, 5, 6]);
    }

    #[test]
    fn same_instant_inserts_keep_their_order() {
        let t = Instant::now();
        let mut ft = FlowTable::new(IDLE, 2);
        ft.insert(1, 'a', t);
        ft.insert(2, 'b', t);
        assert_eq!(ft.insert(3, 'c', t), vec![(1, 'a')]);
        assert_eq!(ft.insert(4, 'd', t), vec![(2, 'b')]);
    }

    #[test]
    fn replacing_a_key_returns_the_old_flow() {
        let t = Instant::now();
        let mut ft = FlowTable::new(IDLE, 2);
        ft.insert("a", 1, t);
        ft.insert("b", 2, t);
        assert_eq!(ft.insert("a", 3, t), vec![("a", 1)]);
        assert_eq!(ft.len(), 2);
        assert_eq!(ft.remove(&"b"), Some(2));
        assert_eq!(ft.remove(&"b"), None);
        assert_eq!(ft.drain(), vec![("a", 3)]);
        assert!(ft.expire(secs(t, 100)).is_empty());
    }

    #[test]
    fn a_zero_bound_still_holds_one() {
        let t = Instant::now();
        let mut ft = FlowTable::new(IDLE, 0);
        ft.insert("a", 1, t);
        assert_eq!(ft.insert("b", 2, t), vec![("a", 1)]);
        assert_eq!(ft.len(), 1);
    }

    #[test]
    fn many_random_operations_keep_the_indexes_consistent() {
        // A small deterministic generator: the table and a naive model must agree.
        let t = Instant::now();
        let mut ft = FlowTable::new(Duration::from_secs(5), 8);
        let mut model: Vec<(u32, u32, Instant)> = Vec::new(); // key, value, last
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut now = t;
        for step in 0..5000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += Duration::from_millis(x % 700);
            let key = (x >> 20) as u32 % 16;
            match (x >> 40) % 3 {
                0 => {
                    ft.insert(key, step, now);
                    model.retain(|(k, _, _)| *k != key);
                    while model.len() >= 8 {
                        let oldest = model
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, (_, _, l))| *l)
                            .map(|(i, _)| i)
                            .unwrap();
                        model.remove(oldest);
                    }
                    model.push((key, step, now));
                }
                1 => {
                    let live = model
                        .iter_mut()
                        .find(|(k, _, l)| *k == key && now.duration_since(*l) < ft.idle);
                    let got = ft.get(&key, now).copied();
                    match live {
                        Some(m) => {
                            assert_eq!(got, Some(m.1));
                            m.2 = now;
                        }
                        None => assert_eq!(got, None),
                    }
                }
                _ => {
                    let mut gone: Vec<u32> = ft.expire(now).into_iter().map(|(k, _)| k).collect();
                    let mut want: Vec<u32> = model
                        .iter()
                        .filter(|(_, _, l)| now.duration_since(*l) >= ft.idle)
                        .map(|(k, _, _)| *k)
                        .collect();
                    model.retain(|(_, _, l)| now.duration_since(*l) < ft.idle);
                    gone.sort_unstable();
                    want.sort_unstable();
                    assert_eq!(gone, want, "step {step}");
                }
            }
            assert_eq!(ft.len(), model.len(), "step {step}");
            assert_eq!(ft.by_age.len(), ft.flows.len());
        }
    }
}
