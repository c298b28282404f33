//! The packet engine: one thread receiving from the host UDP socket, one thread per network
//! reading its TUN device, one timer thread. They read an immutable [`Snapshot`] of the
//! networks and peers, swapped whole by `apply`, and reuse buffers allocated once.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use socket2::Socket;
use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::error::OverlayError;
use crate::gro::{Gro, PacketBuf};
use crate::keys::PublicKey;
use crate::routing::{Outbound, RoutingTable, U32Map};
use crate::tun::TunDevice;
use crate::udp::{RecvBatch, SendBatch, Waker};

/// Handshake messages a network's peers may start per second before cookies are required.
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// How often the WireGuard timers run.
pub const TIMER_TICK: Duration = Duration::from_millis(250);
/// Largest IP packet handled.
const MAX_PACKET: usize = 65_535;
/// Bytes WireGuard adds to a data packet (header 16 + tag 16; padding is extra).
const WG_DATA_OVERHEAD: usize = 32;
/// Bytes of encrypted packets after which the TUN reader sends without waiting for the device
/// to run dry (so the receiving side starts decrypting sooner).
const FLUSH_AT: usize = 64 << 10;
/// Room a send batch keeps free for one more packet and its overhead.
const SEND_ROOM: usize = 9_216 + 64;

const MSG_INIT: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_COOKIE: u8 = 3;
const MSG_DATA: u8 = 4;
const INIT_LEN: usize = 148;
const RESPONSE_LEN: usize = 92;
const COOKIE_LEN: usize = 64;

/// A WireGuard peer of one network: its session state and where it was last heard from.
pub struct Peer {
    /// Peer ID (node ID or external endpoint ID).
    pub id: String,
    /// The 24-bit index that receiver indices of this peer's sessions start with.
    pub index: u32,
    endpoint: AtomicU64,
    tunn: Mutex<Tunn>,
}

const ENDPOINT_SET: u64 = 1 << 48;

fn pack(a: SocketAddrV4) -> u64 {
    ENDPOINT_SET | (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

fn unpack(v: u64) -> Option<SocketAddrV4> {
    (v & ENDPOINT_SET != 0)
        .then(|| SocketAddrV4::new(((v >> 16) as u32).into(), (v & 0xffff) as u16))
}

impl Peer {
    /// A new peer with a fresh session state.
    pub fn new(
        id: &str,
        index: u32,
        secret: x25519::StaticSecret,
        public_key: PublicKey,
        keepalive: Option<u16>,
        endpoint: Option<SocketAddrV4>,
        limiter: Arc<RateLimiter>,
    ) -> Peer {
        let keepalive = keepalive.filter(|k| *k > 0);
        let tunn = Tunn::new(
            secret,
            x25519::PublicKey::from(public_key.0),
            None,
            keepalive,
            index,
            Some(limiter),
        );
        Peer {
            id: id.to_string(),
            index,
            endpoint: AtomicU64::new(endpoint.map_or(0, pack)),
            tunn: Mutex::new(tunn),
        }
    }

    /// Where packets for this peer go.
    #[inline]
    pub fn endpoint(&self) -> Option<SocketAddrV4> {
        unpack(self.endpoint.load(Ordering::Relaxed))
    }

    /// Points the peer at `a` (configuration, or roaming on an authenticated packet).
    #[inline]
    pub fn set_endpoint(&self, a: SocketAddrV4) {
        let v = pack(a);
        if self.endpoint.load(Ordering::Relaxed) != v {
            self.endpoint.store(v, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time since the current session's handshake, received and sent payload bytes.
    pub fn stats(&self) -> (Option<Duration>, u64, u64) {
        let (hs, tx, rx, _, _) = self.lock().stats();
        (hs, rx as u64, tx as u64)
    }
}

/// One network as the packet threads see it.
pub struct NetState {
    /// Network ID.
    pub id: String,
    pub(crate) secret: x25519::StaticSecret,
    pub(crate) public: x25519::PublicKey,
    /// Checks mac1 of handshake initiations against this network's key (never under load).
    pub(crate) mac1: Arc<RateLimiter>,
    /// Shared by the network's peers: counts handshakes, answers with cookies under load.
    pub(crate) limiter: Arc<RateLimiter>,
    /// Peers by slot.
    pub peers: Vec<Arc<Peer>>,
    /// Slot of a public key.
    pub(crate) by_key: HashMap<[u8; 32], u32>,
    /// Inner address → slot.
    pub routes: RoutingTable<u32>,
    /// The TUN device, when it could be made.
    pub tun: Option<Arc<TunDevice>>,
}

/// Everything the packet threads read, replaced whole on every change.
#[derive(Default)]
pub struct Snapshot {
    /// The networks.
    pub networks: Vec<Arc<NetState>>,
    /// Peer index (receiver index >> 8) → (network, slot).
    pub by_index: U32Map<(u32, u32)>,
}

/// What the engine did since it started, counted per batch by the packet threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Reads from the UDP socket (one read may return a GRO-merged run of datagrams).
    pub udp_rx_reads: u64,
    /// WireGuard messages received.
    pub udp_rx_messages: u64,
    /// WireGuard messages sent.
    pub udp_tx_messages: u64,
    /// Send calls' messages (one UDP GSO message carries several WireGuard messages).
    pub udp_tx_sends: u64,
    /// Messages the kernel refused to send.
    pub udp_tx_failed: u64,
    /// Reads from TUN devices (one read may return a TSO super-packet).
    pub tun_rx_reads: u64,
    /// IP packets read from TUN devices, after splitting super-packets.
    pub tun_rx_packets: u64,
    /// IP packets written to TUN devices, before GRO coalescing.
    pub tun_tx_packets: u64,
    /// Datagrams dropped as not WireGuard, or for an unknown receiver or network key.
    pub drop_unknown: u64,
    /// Messages that failed authentication, replay checks or the handshake.
    pub drop_invalid: u64,
    /// Decrypted packets whose source the sending peer does not own.
    pub drop_source: u64,
    /// Outgoing packets no peer owns the destination of, or whose peer has no endpoint yet.
    pub drop_no_route: u64,
}

/// The shared counters behind [`EngineCounters`].
#[derive(Default)]
pub struct Counters {
    v: [AtomicU64; 12],
}

/// A thread's counts since its last flush into [`Counters`].
#[derive(Default)]
struct Local {
    v: [u64; 12],
}

const C_UDP_RX_READS: usize = 0;
const C_UDP_RX_MESSAGES: usize = 1;
const C_UDP_TX_MESSAGES: usize = 2;
const C_UDP_TX_SENDS: usize = 3;
const C_UDP_TX_FAILED: usize = 4;
const C_TUN_RX_READS: usize = 5;
const C_TUN_RX_PACKETS: usize = 6;
const C_TUN_TX_PACKETS: usize = 7;
const C_DROP_UNKNOWN: usize = 8;
const C_DROP_INVALID: usize = 9;
const C_DROP_SOURCE: usize = 10;
const C_DROP_NO_ROUTE: usize = 11;

impl Local {
    #[inline]
    fn add(&mut self, c: usize, n: u64) {
        self.v[c] += n;
    }

    /// Moves the send batch's tallies in.
    fn take_send(&mut self, b: &mut SendBatch) {
        self.v[C_UDP_TX_MESSAGES] += std::mem::take(&mut b.sent);
        self.v[C_UDP_TX_SENDS] += std::mem::take(&mut b.messages);
        self.v[C_UDP_TX_FAILED] += std::mem::take(&mut b.failed);
    }

    fn flush(&mut self, to: &Counters) {
        for (i, n) in self.v.iter_mut().enumerate() {
            if *n != 0 {
                to.v[i].fetch_add(*n, Ordering::Relaxed);
                *n = 0;
            }
        }
    }
}

impl Counters {
    /// A copy of the counts.
    pub fn read(&self) -> EngineCounters {
        let g = |i: usize| self.v[i].load(Ordering::Relaxed);
        EngineCounters {
            udp_rx_reads: g(C_UDP_RX_READS),
            udp_rx_messages: g(C_UDP_RX_MESSAGES),
            udp_tx_messages: g(C_UDP_TX_MESSAGES),
            udp_tx_sends: g(C_UDP_TX_SENDS),
            udp_tx_failed: g(C_UDP_TX_FAILED),
            tun_rx_reads: g(C_TUN_RX_READS),
            tun_rx_packets: g(C_TUN_RX_PACKETS),
            tun_tx_packets: g(C_TUN_TX_PACKETS),
            drop_unknown: g(C_DROP_UNKNOWN),
            drop_invalid: g(C_DROP_INVALID),
            drop_source: g(C_DROP_SOURCE),
            drop_no_route: g(C_DROP_NO_ROUTE),
        }
    }
}

/// State shared by the packet threads and the control side.
pub struct Shared {
    /// The host UDP socket.
    pub socket: Socket,
    /// Whether UDP GRO is on for it.
    pub gro: bool,
    snapshot: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    /// Stops the socket and timer threads.
    pub stop: Waker,
    /// What the packet threads did.
    pub counters: Counters,
}

impl Shared {
    /// Wraps a bound socket.
    pub fn new(socket: Socket, gro: bool) -> io::Result<Shared> {
        Ok(Shared {
            socket,
            gro,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            generation: AtomicU64::new(0),
            stop: Waker::new()?,
            counters: Counters::default(),
        })
    }

    /// Installs a new snapshot.
    pub fn publish(&self, s: Snapshot) {
        let mut g = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        *g = Arc::new(s);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// A snapshot cached by a thread, reloaded when the generation moves.
struct Cached {
    generation: u64,
    snap: Arc<Snapshot>,
}

impl Cached {
    fn new(shared: &Shared) -> Cached {
        let generation = shared.generation();
        Cached {
            generation,
            snap: shared.load(),
        }
    }

    #[inline]
    fn refresh(&mut self, shared: &Shared) -> bool {
        let g = shared.generation();
        if g != self.generation {
            self.generation = g;
            self.snap = shared.load();
            true
        } else {
            false
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, OverlayError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|source| OverlayError::Thread {
            name: name.to_string(),
            source,
        })
}

// ---------------------------------------------------------------------------------------------
// UDP → TUN

/// Starts the thread that receives from the UDP socket, decrypts and writes to TUN devices.
pub fn spawn_rx(shared: Arc<Shared>) -> Result<JoinHandle<()>, OverlayError> {
    spawn("overlay-rx", move || rx_loop(&shared))
}

struct Rx<'a> {
    shared: &'a Shared,
    cache: Cached,
    plain: Vec<PacketBuf>,
    plain_net: Vec<u32>,
    nplain: usize,
    send: SendBatch,
    gro: Gro,
    cookie: [u8; 128],
    local: Local,
}

fn rx_loop(shared: &Shared) {
    let fd = shared.fd();
    let mut recv = RecvBatch::new(
        if shared.gro { 32 } else { 64 },
        if shared.gro { 65_536 } else { 16_384 },
    );
    let mut rx = Rx {
        shared,
        cache: Cached::new(shared),
        plain: (0..IDEAL_BATCH_SIZE)
            .map(|_| PacketBuf::new(MAX_PACKET + 2 * VIRTIO_NET_HDR_LEN + 64))
            .collect(),
        plain_net: vec![0; IDEAL_BATCH_SIZE],
        nplain: 0,
        send: SendBatch::new(256 << 10, false),
        gro: Gro::new(),
        cookie: [0u8; 128],
        local: Local::default(),
    };
    loop {
        match recv.recv(fd) {
            Ok(n) => {
                rx.cache.refresh(shared);
                let snap = rx.cache.snap.clone();
                rx.local.add(C_UDP_RX_READS, n as u64);
                for i in 0..n {
                    let (data, from, seg) = recv.get(i);
                    for msg in data.chunks(seg) {
                        rx.local.add(C_UDP_RX_MESSAGES, 1);
                        rx.handle(&snap, msg, from);
                    }
                }
                rx.flush_tun();
                rx.send.flush(fd);
                rx.local.take_send(&mut rx.send);
                rx.local.flush(&shared.counters);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match shared.stop.wait(fd, libc::POLLIN) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "overlay socket: poll failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "overlay socket: receive failed");
                if shared.stop.is_set() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    tracing::debug!("overlay receive thread stopped");
}

impl Rx<'_> {
    #[inline]
    fn handle(&mut self, snap: &Snapshot, msg: &[u8], from: SocketAddrV4) {
        if msg.len() < 4 || msg[1..4] != [0, 0, 0] {
            self.local.add(C_DROP_UNKNOWN, 1);
            return;
        }
        let receiver =
            |at: usize| u32::from_le_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]]);
        let kind = msg[0];
        let r_idx = match (kind, msg.len()) {
            (MSG_INIT, INIT_LEN) => return self.handle_init(snap, msg, from),
            (MSG_RESPONSE, RESPONSE_LEN) => receiver(8),
            (MSG_COOKIE, COOKIE_LEN) => receiver(4),
            (MSG_DATA, l) if l >= WG_DATA_OVERHEAD => receiver(4),
            _ => {
                tracing::trace!(%from, "dropping a datagram that is not WireGuard");
                self.local.add(C_DROP_UNKNOWN, 1);
                return;
            }
        };
        let Some(&(net, slot)) = snap.by_index.get(&(r_idx >> 8)) else {
            tracing::trace!(%from, "dropping a message for an unknown receiver index");
            self.local.add(C_DROP_UNKNOWN, 1);
            return;
        };
        self.decapsulate(snap, net, slot, kind, msg, from);
    }

    fn handle_init(&mut self, snap: &Snapshot, msg: &[u8], from: SocketAddrV4) {
        for (ni, net) in snap.networks.iter().enumerate() {
            // mac1 is keyed with the responder's public key: it tells the network cheaply.
            let Ok(Packet::HandshakeInit(init)) =
                net.mac1
                    .verify_packet(Some(IpAddr::V4(*from.ip())), msg, &mut self.cookie)
            else {
                continue;
            };
            match parse_handshake_anon(&net.secret, &net.public, &init) {
                Ok(half) => match net.by_key.get(&half.peer_static_public) {
                    Some(&slot) => self.decapsulate(snap, ni as u32, slot, MSG_INIT, msg, from),
                    None => {
                        self.local.add(C_DROP_UNKNOWN, 1);
                        tracing::debug!(
                            network = %net.id, %from,
                            "dropping a handshake from a key that is not a peer of the network"
                        );
                    }
                },
                Err(e) => {
                    self.local.add(C_DROP_INVALID, 1);
                    tracing::debug!(network = %net.id, %from, error = ?e, "bad handshake");
                }
            }
            return;
        }
        self.local.add(C_DROP_UNKNOWN, 1);
        tracing::trace!(%from, "dropping a handshake for no network of this host");
    }

    fn decapsulate(
        &mut self,
        snap: &Snapshot,
        net: u32,
        slot: u32,
        kind: u8,
        msg: &[u8],
        from: SocketAddrV4,
    ) {
        let Some(n) = snap.networks.get(net as usize) else {
            return;
        };
        let Some(peer) = n.peers.get(slot as usize) else {
            return;
        };
        if self.nplain == self.plain.len() {
            self.flush_tun();
        }
        let k = self.nplain;
        let mut tunn = peer.lock();
        let res = tunn.decapsulate(
            Some(IpAddr::V4(*from.ip())),
            msg,
            &mut self.plain[k].data[VIRTIO_NET_HDR_LEN..],
        );
        match res {
            TunnResult::WriteToTunnelV4(pkt, src) => {
                let len = pkt.len();
                peer.set_endpoint(from);
                if n.routes.allows(slot, src) {
                    self.plain[k].len = VIRTIO_NET_HDR_LEN + len;
                    self.plain_net[k] = net;
                    self.nplain += 1;
                } else {
                    self.local.add(C_DROP_SOURCE, 1);
                    tracing::debug!(network = %n.id, peer = %peer.id, %src,
                        "dropping a packet from an address the peer does not own");
                }
            }
            TunnResult::WriteToTunnelV6(..) => peer.set_endpoint(from),
            TunnResult::WriteToNetwork(out) => {
                // A cookie reply answers an unauthenticated message: no roaming for it.
                let cookie = out.first() == Some(&MSG_COOKIE);
                if self.send.room() < SEND_ROOM {
                    self.send.flush(self.shared.fd());
                    self.local.take_send(&mut self.send);
                }
                if !self.send.push(out, from) {
                    return;
                }
                if cookie {
                    return;
                }
                peer.set_endpoint(from);
                // Packets queued while the handshake ran.
                loop {
                    if self.send.room() < SEND_ROOM {
                        self.send.flush(self.shared.fd());
                        self.local.take_send(&mut self.send);
                    }
                    match tunn.decapsulate(None, &[], self.send.space()) {
                        TunnResult::WriteToNetwork(p) => {
                            let l = p.len();
                            self.send.commit(l, from);
                        }
                        _ => break,
                    }
                }
            }
            TunnResult::Done => {
                if kind != MSG_COOKIE {
                    peer.set_endpoint(from);
                }
            }
            TunnResult::Err(e) => {
                self.local.add(C_DROP_INVALID, 1);
                tracing::trace!(network = %n.id, peer = %peer.id, %from, error = ?e, "dropping a message");
            }
        }
    }

    /// Writes the decrypted packets to their networks' TUN devices, coalescing TCP/UDP flows
    /// (GRO) where the device has offloads.
    fn flush_tun(&mut self) {
        let total = self.nplain;
        if total == 0 {
            return;
        }
        self.nplain = 0;
        let snap = self.cache.snap.clone();
        let mut start = 0;
        while start < total {
            // Gather the packets of the first remaining network at the front.
            let net = self.plain_net[start];
            let mut end = start + 1;
            for i in start + 1..total {
                if self.plain_net[i] == net {
                    self.plain.swap(end, i);
                    self.plain_net.swap(end, i);
                    end += 1;
                }
            }
            self.local.add(C_TUN_TX_PACKETS, (end - start) as u64);
            if let Some(tun) = snap.networks.get(net as usize).and_then(|n| n.tun.as_ref()) {
                let bufs = &mut self.plain[start..end];
                if tun.offload {
                    let out = self.gro.coalesce(bufs, tun.dev.udp_gso());
                    for &k in out {
                        let b = &bufs[k];
                        if let Err(e) = tun.dev.send(&b.data[..b.len]) {
                            tracing::debug!(error = %e, "TUN write failed");
                        }
                    }
                } else {
                    for b in bufs.iter() {
                        if let Err(e) = tun.dev.send(b.packet()) {
                            tracing::debug!(error = %e, "TUN write failed");
                        }
                    }
                }
            }
            start = end;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TUN → UDP

/// Starts the thread that reads network `net_id`'s TUN device, encrypts and sends.
pub fn spawn_tun_reader(
    shared: Arc<Shared>,
    net_id: String,
    tun: Arc<TunDevice>,
) -> Result<JoinHandle<()>, OverlayError> {
    let name = format!("overlay-tun-{}", net_id.chars().take(6).collect::<String>());
    spawn(&name, move || tun_loop(&shared, &net_id, &tun))
}

fn find_net(snap: &Snapshot, id: &str) -> Option<Arc<NetState>> {
    snap.networks.iter().find(|n| n.id == id).cloned()
}

fn tun_loop(shared: &Shared, net_id: &str, tun: &TunDevice) {
    let fd = shared.fd();
    let tun_fd = tun.dev.as_raw_fd();
    let (nbufs, seg_cap) = if tun.offload {
        (IDEAL_BATCH_SIZE, usize::from(tun.mtu) + 64)
    } else {
        (1, MAX_PACKET + 64)
    };
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET + 64];
    let mut segs: Vec<Vec<u8>> = (0..nbufs).map(|_| vec![0u8; seg_cap]).collect();
    let mut sizes = vec![0usize; nbufs];
    let mut send = SendBatch::new(1 << 20, true);
    let mut cache = Cached::new(shared);
    let mut net = find_net(&cache.snap, net_id);
    let mut local = Local::default();
    loop {
        match tun
            .dev
            .recv_multiple(&mut original, &mut segs, &mut sizes, 0)
        {
            Ok(n) => {
                if cache.refresh(shared) {
                    net = find_net(&cache.snap, net_id);
                }
                local.add(C_TUN_RX_READS, 1);
                local.add(C_TUN_RX_PACKETS, n as u64);
                if let Some(net) = &net {
                    encapsulate(net, &segs, &sizes[..n], &mut send, fd, &mut local);
                }
                if send.pending() >= FLUSH_AT || send.room() < MAX_PACKET + 64 * 128 {
                    send.flush(fd);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                send.flush(fd);
                local.take_send(&mut send);
                local.flush(&shared.counters);
                match tun.stop.wait(tun_fd, libc::POLLIN) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::error!(network = %net_id, error = %e, "TUN poll failed");
                        tun.mark_dead();
                        break;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => match e.raw_os_error() {
                Some(libc::EBADFD) | Some(libc::EIO) | Some(libc::ENXIO) | Some(libc::ENODEV)
                | Some(libc::EBADF) => {
                    tracing::warn!(network = %net_id, error = %e, "TUN device gone");
                    tun.mark_dead();
                    break;
                }
                _ => tracing::debug!(network = %net_id, error = %e, "dropping a TUN read"),
            },
        }
    }
    send.flush(fd);
    local.take_send(&mut send);
    local.flush(&shared.counters);
    tracing::debug!(network = %net_id, "TUN reader stopped");
}

/// Encrypts the packets read from a TUN device into `send`, one peer lock per run of packets
/// to the same peer.
fn encapsulate(
    net: &NetState,
    segs: &[Vec<u8>],
    sizes: &[usize],
    send: &mut SendBatch,
    fd: RawFd,
    local: &mut Local,
) {
    let n = sizes.len();
    let mut i = 0;
    while i < n {
        let slot = match net.routes.outbound(&segs[i][..sizes[i]]) {
            Outbound::Peer(s) => s,
            Outbound::Drop(d) => {
                tracing::trace!(network = %net.id, reason = ?d, "dropping an outgoing packet");
                local.add(C_DROP_NO_ROUTE, 1);
                i += 1;
                continue;
            }
        };
        let Some(peer) = net.peers.get(slot as usize) else {
            i += 1;
            continue;
        };
        let Some(ep) = peer.endpoint() else {
            tracing::trace!(network = %net.id, peer = %peer.id, "peer has no endpoint yet");
            local.add(C_DROP_NO_ROUTE, 1);
            i += 1;
            continue;
        };
        let mut tunn = peer.lock();
        let mut j = i;
        while j < n {
            let pkt = &segs[j][..sizes[j]];
            if j > i && net.routes.outbound(pkt) != Outbound::Peer(slot) {
                break;
            }
            if send.room() < pkt.len() + WG_DATA_OVERHEAD + 16 + 148 {
                send.flush(fd);
                local.take_send(send);
            }
            match tunn.encapsulate(pkt, send.space()) {
                TunnResult::WriteToNetwork(out) => {
                    let l = out.len();
                    send.commit(l, ep);
                }
                TunnResult::Err(e) => {
                    tracing::trace!(network = %net.id, peer = %peer.id, error = ?e, "encapsulate failed")
                }
                _ => {}
            }
            j += 1;
        }
        i = j;
    }
}

// ---------------------------------------------------------------------------------------------
// Timers

/// Starts the thread that runs every peer's WireGuard timers (handshake retries, rekeying,
/// keepalives) and resets the handshake rate limiters.
pub fn spawn_timers(shared: Arc<Shared>) -> Result<JoinHandle<()>, OverlayError> {
    spawn("overlay-timers", move || timer_loop(&shared))
}

fn timer_loop(shared: &Shared) {
    let mut buf = vec![0u8; 256];
    let mut last_reset = Instant::now();
    loop {
        if shared.stop.wait_timeout(TIMER_TICK) {
            break;
        }
        let snap = shared.load();
        let reset = last_reset.elapsed() >= Duration::from_secs(1);
        if reset {
            last_reset = Instant::now();
        }
        for net in &snap.networks {
            if reset {
                net.limiter.reset_count();
            }
            for peer in &net.peers {
                let mut t = peer.lock();
                match t.update_timers(&mut buf) {
                    TunnResult::WriteToNetwork(p) => {
                        if let Some(ep) = peer.endpoint()
                            && let Err(e) = shared.socket.send_to(p, &ep.into())
                        {
                            tracing::debug!(peer = %peer.id, to = %ep, error = %e, "timer send failed");
                        }
                    }
                    TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                    TunnResult::Err(e) => {
                        tracing::trace!(peer = %peer.id, error = ?e, "timer");
                    }
                    _ => {}
                }
            }
        }
    }
    tracing::debug!("overlay timer thread stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_pack_and_unpack() {
        for a in ["192.0.2.1:51820", "0.0.0.0:1", "255.255.255.254:65535"] {
            let a: SocketAddrV4 = a.parse().unwrap();
            assert_eq!(unpack(pack(a)), Some(a));
        }
        assert_eq!(unpack(0), None);
    }
}
