//! Which other nodes are alive, as the routing mesh sees them (pure: no socket, no clock).
//!
//! Every node sends each other node a small UDP probe every [`PeerConfig::interval`] on the
//! mesh's encapsulation port and answers the probes it gets. A node not heard from (neither
//! an answer nor a probe of its own) for [`PeerConfig::dead_after`] is dead: its tasks leave
//! this node's rotation until it is heard again. The managers mark such a node down later
//! (`node_down_after`, 1.5 s by default) and reschedule its tasks; this is the routing mesh's
//! own, faster view, so that a dead node's tasks get no new connection within a second.
//!
//! A probe is 16 bytes: `MSHP`, a version (1), a kind (1 probe, 2 answer), two zero bytes
//! and a 64-bit sequence number, big-endian. An answer is the same size as the probe, so
//! answering cannot amplify traffic. An encapsulated packet is never that short (its header
//! and an inner IPv4 header alone are 28 bytes), so the eBPF path passes probes up the stack.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Length of a probe and of its answer.
pub const PROBE_LEN: usize = 16;

const MAGIC: [u8; 4] = *b"MSHP";
const VERSION: u8 = 1;
const KIND_PROBE: u8 = 1;
const KIND_ANSWER: u8 = 2;

/// A message between nodes' meshd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// "Are you there?" with a sequence number.
    Probe(u64),
    /// The answer, echoing the probe's sequence number.
    Answer(u64),
}

impl Probe {
    /// The message's bytes.
    pub fn encode(self) -> [u8; PROBE_LEN] {
        let (kind, seq) = match self {
            Probe::Probe(s) => (KIND_PROBE, s),
            Probe::Answer(s) => (KIND_ANSWER, s),
        };
        let mut b = [0u8; PROBE_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = kind;
        b[8..].copy_from_slice(&seq.to_be_bytes());
        b
    }

    /// Reads a message; `None` for anything else (other lengths, magic, version or kind).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != PROBE_LEN || b[..4] != MAGIC || b[4] != VERSION {
            return None;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[8..]);
        let seq = u64::from_be_bytes(seq);
        match b[5] {
            KIND_PROBE => Some(Probe::Probe(seq)),
            KIND_ANSWER => Some(Probe::Answer(seq)),
            _ => None,
        }
    }
}

/// How often nodes are probed and when a silent one is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    /// Time between two probes to the same node.
    pub interval: Duration,
    /// Silence after which a node is dead.
    pub dead_after: Duration,
}

impl Default for PeerConfig {
    /// A probe every 200 ms; dead after 600 ms of silence (three probes unanswered), so that
    /// with the time to apply the new plan a dead node's tasks are out of rotation in well
    /// under a second.
    fn default() -> Self {
        PeerConfig {
            interval: Duration::from_millis(200),
            dead_after: Duration::from_millis(600),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    heard: Instant,
    next_probe: Instant,
    dead: bool,
}

/// What a received datagram calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Send these bytes back to the sender (the answer to its probe).
    Reply([u8; PROBE_LEN]),
    /// Nothing to send.
    Nothing,
}

/// The probes due now, and whether the set of dead nodes changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Due {
    /// Probes to send: (node, bytes).
    pub probes: Vec<(Ipv4Addr, [u8; PROBE_LEN])>,
    /// The set of dead nodes is not what it was before this call.
    pub changed: bool,
}

/// The liveness of the other nodes.
#[derive(Debug)]
pub struct Peers {
    cfg: PeerConfig,
    peers: BTreeMap<Ipv4Addr, Peer>,
    seq: u64,
    /// A datagram changed the dead set since the last [`Peers::poll`].
    revived: bool,
}

impl Peers {
    /// No node known yet.
    pub fn new(cfg: PeerConfig) -> Self {
        Peers {
            cfg,
            peers: BTreeMap::new(),
            seq: 0,
            revived: false,
        }
    }

    /// The nodes to watch from now on. A new one counts as heard at `now` (it has
    /// `dead_after` to answer); one no longer listed is forgotten. True if the dead set
    /// changed (a dead node was forgotten).
    pub fn set_peers(&mut self, addrs: impl IntoIterator<Item = Ipv4Addr>, now: Instant) -> bool {
        let want: BTreeSet<Ipv4Addr> = addrs.into_iter().collect();
        let before = self.peers.len();
        let dead_before = self.dead().len();
        self.peers.retain(|a, _| want.contains(a));
        let changed = self.dead().len() != dead_before;
        for a in want {
            self.peers.entry(a).or_insert(Peer {
                heard: now,
                next_probe: now,
                dead: false,
            });
        }
        if self.peers.len() != before {
            tracing::debug!(peers = self.peers.len(), "routing mesh: watching nodes");
        }
        changed
    }

    /// Takes a datagram from `from`. A probe is answered (whoever sends it: the answer is no
    /// bigger than the probe); a probe or an answer from a watched node means it is alive.
    pub fn receive(&mut self, from: Ipv4Addr, data: &[u8], now: Instant) -> Received {
        let Some(msg) = Probe::decode(data) else {
            return Received::Nothing;
        };
        let reply = match msg {
            Probe::Probe(seq) => Received::Reply(Probe::Answer(seq).encode()),
            // Only answers to a probe sent (a sequence number given out) count.
            Probe::Answer(seq) if seq == 0 || seq > self.seq => return Received::Nothing,
            Probe::Answer(_) => Received::Nothing,
        };
        if let Some(p) = self.peers.get_mut(&from) {
            p.heard = now;
            if p.dead {
                p.dead = false;
                self.revived = true;
                tracing::info!(node = %from, "routing mesh: node answers again; its tasks are back in rotation");
            }
        }
        reply
    }

    /// Marks the nodes silent for too long dead and returns the probes due at `now`.
    pub fn poll(&mut self, now: Instant) -> Due {
        let mut due = Due {
            changed: std::mem::take(&mut self.revived),
            ..Due::default()
        };
        for (addr, p) in &mut self.peers {
            if !p.dead && now.saturating_duration_since(p.heard) >= self.cfg.dead_after {
                p.dead = true;
                due.changed = true;
                tracing::warn!(node = %addr, silent_ms = now.saturating_duration_since(p.heard).as_millis() as u64, "routing mesh: node does not answer; its tasks are out of rotation");
            }
            if now >= p.next_probe {
                self.seq += 1;
                due.probes.push((*addr, Probe::Probe(self.seq).encode()));
                p.next_probe = now + self.cfg.interval;
            }
        }
        due
    }

    /// When [`Peers::poll`] has something to do next: a probe or a node turning dead.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                let dies = (!p.dead).then(|| p.heard + self.cfg.dead_after);
                std::iter::once(p.next_probe).chain(dies)
            })
            .min()
    }

    /// The nodes found dead.
    pub fn dead(&self) -> BTreeSet<Ipv4Addr> {
        self.peers
            .iter()
            .filter(|(_, p)| p.dead)
            .map(|(a, _)| *a)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn probe_round_trips_and_junk_is_ignored() {
        for m in [Probe::Probe(7), Probe::Answer(u64::MAX)] {
            assert_eq!(Probe::decode(&m.encode()), Some(m));
        }
        let mut b = Probe::Probe(1).encode();
        assert_eq!(Probe::decode(&b[..15]), None);
        b[5] = 9;
        assert_eq!(Probe::decode(&b), None);
        let mut b = Probe::Probe(1).encode();
        b[0] = b'X';
        assert_eq!(Probe::decode(&b), None);
        assert_eq!(Probe::decode(&[0u8; 64]), None);
    }

    #[test]
    fn every_peer_is_probed_each_interval() {
        let t0 = Instant::now();
        let mut p = Peers::new(PeerConfig::default());
        p.set_peers([A, B], t0);
        let due = p.poll(t0);
        assert_eq!(
            due.probes.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            [A, B]
        );
        assert!(!due.changed);
        assert!(p.poll(t0 + ms(100)).probes.is_empty(), "not yet due");
        assert_eq!(p.poll(t0 + ms(200)).probes.len(), 2);
        assert_eq!(p.next_deadline(), Some(t0 + ms(400)));
    }

    #[test]
    fn a_silent_peer_dies_after_the_timeout_and_revives_on_an_answer() {
        let t0 = Instant::now();
        let mut p = Peers::new(PeerConfig::default());
        p.set_peers([A, B], t0);
        let due = p.poll(t0);
        // B answers its probe, A never does.
        let (_, probe_b) = due.probes[1];
        let Some(Probe::Probe(seq)) = Probe::decode(&probe_b) else {
            panic!("a probe")
        };
        let answer = Probe::Answer(seq).encode();
        assert_eq!(p.receive(B, &answer, t0 + ms(300)), Received::Nothing);
        let due = p.poll(t0 + ms(599));
        assert!(
            !due.changed && p.dead().is_empty(),
            "not dead before 600 ms"
        );
        let due = p.poll(t0 + ms(600));
        assert!(due.changed);
        assert_eq!(p.dead(), BTreeSet::from([A]));
        assert!(!p.poll(t0 + ms(650)).changed, "reported once");
        // A answers again: alive at the next poll.
        p.receive(A, &Probe::Answer(1).encode(), t0 + ms(700));
        assert!(p.poll(t0 + ms(700)).changed);
        assert!(p.dead().is_empty());
    }

    #[test]
    fn a_probe_is_answered_and_counts_as_life() {
        let t0 = Instant::now();
        let mut p = Peers::new(PeerConfig::default());
        p.set_peers([A], t0);
        let r = p.receive(A, &Probe::Probe(42).encode(), t0 + ms(500));
        assert_eq!(r, Received::Reply(Probe::Answer(42).encode()));
        assert!(!p.poll(t0 + ms(700)).changed, "heard at 500 ms");
        // A stranger's probe is answered too (no bigger than the probe), and changes nothing.
        let stranger = Ipv4Addr::new(198, 51, 100, 1);
        assert!(matches!(
            p.receive(stranger, &Probe::Probe(1).encode(), t0),
            Received::Reply(_)
        ));
        assert!(p.dead().is_empty());
    }

    #[test]
    fn answers_never_asked_for_do_not_count() {
        let t0 = Instant::now();
        let mut p = Peers::new(PeerConfig::default());
        p.set_peers([A], t0);
        p.poll(t0); // sequence 1 given out
        assert_eq!(
            p.receive(A, &Probe::Answer(99).encode(), t0 + ms(590)),
            Received::Nothing
        );
        assert!(
            p.poll(t0 + ms(600)).changed,
            "the forged answer kept nobody alive"
        );
    }

    #[test]
    fn forgetting_a_dead_peer_changes_the_dead_set() {
        let t0 = Instant::now();
        let mut p = Peers::new(PeerConfig::default());
        p.set_peers([A, B], t0);
        p.poll(t0 + ms(600));
        assert_eq!(p.dead().len(), 2);
        assert!(p.set_peers([B], t0 + ms(700)));
        assert_eq!(p.dead(), BTreeSet::from([B]));
        assert!(!p.set_peers([B], t0 + ms(800)), "same set: no change");
        // A node seen again after it was forgotten starts alive.
        assert!(!p.set_peers([A, B], t0 + ms(900)));
        assert_eq!(p.dead(), BTreeSet::from([B]));
    }
}
