//! The backend choice: round-robin over the current backend list, with passive health (a
//! backend that failed is left out for a while). Pure: the time is passed in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// Round-robin over a backend list that can be replaced at any time, shared by every
/// connection of a listener (one counter per listener).
///
/// A backend that failed is *ejected*: left out of rotation until `eject_for` has passed,
/// unless every backend not yet tried is ejected (then the ejected ones are used anyway:
/// better a backend that failed a moment ago than none).
#[derive(Debug)]
pub struct Rotation<B> {
    backends: ArcSwap<Vec<B>>,
    next: AtomicUsize,
    /// Ejected backends and when they come back.
    ejected: Mutex<Vec<(B, Instant)>>,
    eject_for: Duration,
}

impl<B: Copy + Eq> Rotation<B> {
    /// A rotation over `backends` (in order), ejecting failed ones for `eject_for`.
    pub fn new(backends: Vec<B>, eject_for: Duration) -> Self {
        Rotation {
            backends: ArcSwap::from_pointee(backends),
            next: AtomicUsize::new(0),
            ejected: Mutex::new(Vec::new()),
            eject_for,
        }
    }

    /// The current backend list.
    pub fn backends(&self) -> Arc<Vec<B>> {
        self.backends.load_full()
    }

    /// Replaces the backend list atomically. The counter carries on (the rotation goes on
    /// where it was); ejections of backends that are still listed are kept.
    pub fn replace(&self, backends: Vec<B>) {
        let mut ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        ejected.retain(|(b, _)| backends.contains(b));
        self.backends.store(Arc::new(backends));
    }

    /// The next backend for a new connection at `now`, skipping those in `tried` (the ones
    /// this connection already failed on). `None` when there is no backend left to try.
    pub fn pick(&self, now: Instant, tried: &[B]) -> Option<B> {
        let list = self.backends.load();
        if list.is_empty() {
            return None;
        }
        let mut ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        ejected.retain(|(_, until)| *until > now);
        let untried = |b: &&B| !tried.contains(b);
        let healthy = |b: &&B| !tried.contains(b) && !ejected.iter().any(|(e, _)| e == *b);
        let n_healthy = list.iter().filter(healthy).count();
        if n_healthy > 0 {
            let k = self.next.fetch_add(1, Ordering::Relaxed) % n_healthy;
            return list.iter().filter(healthy).nth(k).copied();
        }
        // Every backend not tried yet is ejected: no other backend is left, use those.
        let n_untried = list.iter().filter(untried).count();
        if n_untried == 0 {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % n_untried;
        list.iter().filter(untried).nth(k).copied()
    }

    /// Takes `backend` out of rotation from `now` for the ejection time. Returns whether it was
    /// in rotation before (so that callers log an ejection once).
    pub fn eject(&self, backend: B, now: Instant) -> bool {
        let until = now + self.eject_for;
        let mut ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        ejected.retain(|(_, u)| *u > now);
        match ejected.iter_mut().find(|(b, _)| *b == backend) {
            Some(entry) => {
                entry.1 = until;
                false
            }
            None => {
                ejected.push((backend, until));
                true
            }
        }
    }

    /// Whether `backend` is out of rotation at `now`.
    pub fn is_ejected(&self, backend: B, now: Instant) -> bool {
        let ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        ejected
            .iter()
            .any(|(b, until)| *b == backend && *until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EJECT: Duration = Duration::from_secs(2);

    fn picks(r: &Rotation<char>, now: Instant, n: usize) -> String {
        (0..n).filter_map(|_| r.pick(now, &[])).collect()
    }

    #[test]
    fn round_robin_in_order() {
        let r = Rotation::new(vec!['a', 'b', 'c'], EJECT);
        let t = Instant::now();
        assert_eq!(picks(&r, t, 9), "abcabcabc");
    }

    #[test]
    fn empty_list_gives_nothing() {
        let r: Rotation<char> = Rotation::new(vec![], EJECT);
        assert_eq!(r.pick(Instant::now(), &[]), None);
    }

    #[test]
    fn single_backend_always() {
        let r = Rotation::new(vec!['a'], EJECT);
        let t = Instant::now();
        assert_eq!(picks(&r, t, 4), "aaaa");
        assert_eq!(r.pick(t, &['a']), None);
    }

    #[test]
    fn ejected_backend_is_skipped_until_it_expires() {
        let r = Rotation::new(vec!['a', 'b', 'c'], EJECT);
        let t0 = Instant::now();
        assert!(r.eject('b', t0));
        assert!(!r.eject('b', t0), "a second ejection is not new");
        assert!(r.is_ejected('b', t0));
        let seq = picks(&r, t0 + Duration::from_millis(500), 6);
        assert!(!seq.contains('b'), "{seq}");
        assert_eq!(seq.matches('a').count(), 3, "{seq}");
        assert_eq!(seq.matches('c').count(), 3, "{seq}");
        // Just before the end of the ejection: still out. At the end: back.
        assert!(r.is_ejected('b', t0 + EJECT - Duration::from_millis(1)));
        assert!(!r.is_ejected('b', t0 + EJECT));
        let seq = picks(&r, t0 + EJECT, 6);
        assert_eq!(seq.matches('b').count(), 2, "{seq}");
    }

    #[test]
    fn ejection_is_renewed_by_a_new_failure() {
        let r = Rotation::new(vec!['a', 'b'], EJECT);
        let t0 = Instant::now();
        r.eject('a', t0);
        r.eject('a', t0 + Duration::from_secs(1));
        assert!(r.is_ejected('a', t0 + Duration::from_millis(2500)));
        assert!(!r.is_ejected('a', t0 + Duration::from_secs(3)));
    }

    #[test]
    fn all_ejected_still_serves() {
        let r = Rotation::new(vec!['a', 'b', 'c'], EJECT);
        let t0 = Instant::now();
        for b in ['a', 'b', 'c'] {
            r.eject(b, t0);
        }
        let seq = picks(&r, t0, 6);
        assert_eq!(seq.len(), 6);
        for b in ['a', 'b', 'c'] {
            assert_eq!(seq.matches(b).count(), 2, "{seq}");
        }
    }

    #[test]
    fn only_the_ejected_one_is_left_for_a_retry() {
        let r = Rotation::new(vec!['a', 'b'], EJECT);
        let t0 = Instant::now();
        r.eject('b', t0);
        // 'a' failed for this connection: 'b', although ejected, is the only one left.
        assert_eq!(r.pick(t0, &['a']), Some('b'));
        assert_eq!(r.pick(t0, &['a', 'b']), None);
    }

    #[test]
    fn retry_walks_every_backend_once() {
        let r = Rotation::new(vec!['a', 'b', 'c', 'd'], EJECT);
        let t0 = Instant::now();
        let mut tried = Vec::new();
        while let Some(b) = r.pick(t0, &tried) {
            assert!(!tried.contains(&b));
            tried.push(b);
            r.eject(b, t0);
        }
        tried.sort_unstable();
        assert_eq!(tried, vec!['a', 'b', 'c', 'd']);
    }

    #[test]
    fn replaced_list_keeps_going_round_robin() {
        let r = Rotation::new(vec!['a', 'b', 'c'], EJECT);
        let t = Instant::now();
        assert_eq!(picks(&r, t, 2), "ab");
        r.replace(vec!['a', 'b', 'c', 'd']);
        assert_eq!(picks(&r, t, 6), "cdabcd");
        r.replace(vec!['x', 'y']);
        assert_eq!(picks(&r, t, 4), "xyxy");
        assert_eq!(*r.backends(), vec!['x', 'y']);
    }

    #[test]
    fn removed_backend_is_never_picked_again() {
        let r = Rotation::new(vec!['a', 'b', 'c'], EJECT);
        let t = Instant::now();
        assert_eq!(picks(&r, t, 1), "a");
        r.replace(vec!['a', 'c']);
        let seq = picks(&r, t, 10);
        assert!(!seq.contains('b'), "{seq}");
        assert_eq!(seq.matches('a').count(), 5);
    }

    #[test]
    fn replacing_forgets_ejections_of_gone_backends() {
        let r = Rotation::new(vec!['a', 'b'], EJECT);
        let t0 = Instant::now();
        r.eject('a', t0);
        r.eject('b', t0);
        r.replace(vec!['b', 'c']);
        assert!(!r.is_ejected('a', t0));
        assert!(r.is_ejected('b', t0));
        // 'a' comes back as a new backend: not ejected.
        r.replace(vec!['a', 'b', 'c']);
        let seq = picks(&r, t0, 4);
        assert!(!seq.contains('b'), "{seq}");
        assert_eq!(seq.matches('a').count(), 2, "{seq}");
    }

    #[test]
    fn many_sequences_are_fair() {
        // For many list sizes and ejection sets, the healthy backends get equal shares.
        let t0 = Instant::now();
        for n in 1..=7usize {
            let list: Vec<usize> = (0..n).collect();
            for mask in 0..(1u32 << n) {
                let r = Rotation::new(list.clone(), EJECT);
                let ejected: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
                for e in &ejected {
                    r.eject(*e, t0);
                }
                let healthy: Vec<usize> = (0..n).filter(|i| !ejected.contains(i)).collect();
                let expect: &[usize] = if healthy.is_empty() { &list } else { &healthy };
                let rounds = 3;
                let mut counts = vec![0usize; n];
                for _ in 0..expect.len() * rounds {
                    let b = r.pick(t0, &[]).unwrap();
                    counts[b] += 1;
                }
                for (i, c) in counts.iter().enumerate() {
                    let want = if expect.contains(&i) { rounds } else { 0 };
                    assert_eq!(*c, want, "n={n} ejected={ejected:?} counts={counts:?}");
                }
            }
        }
    }

    #[test]
    fn shared_between_threads() {
        let r = Arc::new(Rotation::new(vec![0usize, 1, 2], EJECT));
        let t = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    let mut c = [0usize; 3];
                    for _ in 0..300 {
                        c[r.pick(t, &[]).unwrap()] += 1;
                    }
                    c
                })
            })
            .collect();
        let mut total = [0usize; 3];
        for h in handles {
            for (i, c) in h.join().unwrap().iter().enumerate() {
                total[i] += c;
            }
        }
        assert_eq!(total, [400, 400, 400]);
    }
}
