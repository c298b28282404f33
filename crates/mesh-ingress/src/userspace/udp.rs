//! UDP: a flow per client, each with a connected socket to its backend made in the egress
//! namespace. For a published port, replies go back from the listener socket (from the address
//! the client sent to); for a VIP, from a per-flow transparent socket bound to the VIP and port.

use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::flows::FlowTable;
use super::netns::in_netns;
use super::rotation::Rotation;
use super::sock::{Received, recv_with_dst, send_from, udp_backend, udp_transparent_flow};
use super::tcp::VipTarget;
use super::{Ctx, EgressTarget, Gauge};

/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// Datagrams handled per wake-up before letting other tasks run.
const BATCH: usize = 64;

thread_local! {
    /// One receive buffer per thread, used only between an await and the next.
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How often expired flows are swept.
pub(crate) fn sweep_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// A flow's sockets and the task serving them (aborted when the flow leaves the table).
#[derive(Debug)]
pub(crate) struct Flow {
    back: Arc<UdpSocket>,
    task: AbortHandle,
    _gauge: Gauge,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a published UDP port does with a new flow (swapped whole on a plan change).
#[derive(Debug)]
pub(crate) struct UdpTarget {
    /// The service that publishes the port (logs).
    pub(crate) service: String,
    /// Where backend sockets are made.
    pub(crate) egress: EgressTarget,
}

/// A published UDP port, shared by its listener task, its flows and its sweeper.
#[derive(Debug)]
pub(crate) struct PublishedUdp {
    /// The published port.
    pub(crate) port: u16,
    /// The current settings.
    pub(crate) target: ArcSwap<UdpTarget>,
    /// The backends.
    pub(crate) rotation: Rotation<SocketAddrV4>,
    /// Flows by client address.
    pub(crate) flows: Arc<Mutex<FlowTable<SocketAddrV4, Flow>>>,
}

/// A VIP sandbox's UDP flows, keyed by client and original destination.
#[derive(Debug)]
pub(crate) struct VipUdp {
    /// The sandbox's settings (shared with its TCP side).
    pub(crate) target: Arc<ArcSwap<VipTarget>>,
    /// Flows by (client, VIP and port).
    pub(crate) flows: Arc<Mutex<FlowTable<(SocketAddrV4, SocketAddrV4), Flow>>>,
}

/// Removes the flows that have been idle for too long, until aborted.
pub(crate) async fn sweep<K: std::hash::Hash + Eq + Clone>(
    flows: Arc<Mutex<FlowTable<K, Flow>>>,
    idle: Duration,
) {
    let mut tick = tokio::time::interval(sweep_period(idle));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let gone = lock(&flows).expire(Instant::now());
        if !gone.is_empty() {
            tracing::trace!(flows = gone.len(), "UDP flows expired");
        }
    }
}

/// Opens a backend socket for a new flow, trying each backend once.
fn open_backend<B: Copy + Eq + std::fmt::Display>(
    ctx: &Ctx,
    rotation: &Rotation<B>,
    addr_of: impl Fn(B) -> SocketAddrV4,
    egress: &EgressTarget,
    service: &str,
) -> Option<(UdpSocket, B)> {
    let mut tried = Vec::new();
    while let Some(b) = rotation.pick(Instant::now(), &tried) {
        tried.push(b);
        let addr = addr_of(b);
        let made = in_netns(&egress.netns, &ctx.home, || {
            udp_backend(egress.source, addr)
        })
        .and_then(UdpSocket::from_std);
        match made {
            Ok(s) => return Some((s, b)),
            Err(e) => {
                ctx.stats
                    .backend_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if rotation.eject(b, Instant::now()) {
                    tracing::warn!(service, backend = %addr, error = %e, "cannot open a UDP socket to the backend; out of rotation for a while");
                } else {
                    tracing::debug!(service, backend = %addr, error = %e, "cannot open a UDP socket to the backend");
                }
            }
        }
    }
    None
}

/// Serves a published UDP port's listener socket until aborted.
pub(crate) async fn serve_published(
    ctx: Arc<Ctx>,
    port: Arc<PublishedUdp>,
    listener: Arc<UdpSocket>,
) {
    let fd = listener.as_raw_fd();
    loop {
        if let Err(e) = listener.readable().await {
            tracing::warn!(port = port.port, error = %e, "UDP listener failed");
            return;
        }
        for _ in 0..BATCH {
            let more = BUF.with_borrow_mut(|buf| {
                match listener.try_io(Interest::READABLE, || recv_with_dst(fd, buf, port.port)) {
                    Ok(rx) => {
                        published_datagram(&ctx, &port, &listener, rx, &buf[..rx.len]);
                        true
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) => {
                        tracing::debug!(port = port.port, error = %e, "UDP receive failed");
                        true
                    }
                }
            });
            if !more {
                break;
            }
        }
        tokio::task::yield_now().await;
    }
}

fn published_datagram(
    ctx: &Arc<Ctx>,
    port: &Arc<PublishedUdp>,
    listener: &Arc<UdpSocket>,
    rx: Received,
    data: &[u8],
) {
    let now = Instant::now();
    let mut flows = lock(&port.flows);
    if let Some(flow) = flows.get(&rx.from, now) {
        let _ = send_now(&flow.back, data);
        return;
    }
    let target = port.target.load();
    let Some((back, backend)) =
        open_backend(ctx, &port.rotation, |b| b, &target.egress, &target.service)
    else {
        return;
    };
    let back = Arc::new(back);
    let task = tokio::spawn(published_replies(
        Arc::clone(port),
        Arc::clone(listener),
        Arc::clone(&back),
        rx.from,
        rx.to.map(|a| *a.ip()),
        backend,
    ));
    let flow = Flow {
        back: Arc::clone(&back),
        task: task.abort_handle(),
        _gauge: Gauge::new(&ctx.stats.udp_flows),
    };
    tracing::trace!(service = %target.service, client = %rx.from, %backend, "UDP flow");
    let gone = flows.insert(rx.from, flow, now);
    drop(flows);
    // Evicted flows go before the first datagram, so that no reply comes while they count.
    drop(gone);
    let _ = send_now(&back, data);
}

/// Sends a flow's replies back to its client from the listener socket.
async fn published_replies(
    port: Arc<PublishedUdp>,
    listener: Arc<UdpSocket>,
    back: Arc<UdpSocket>,
    client: SocketAddrV4,
    local: Option<Ipv4Addr>,
    backend: SocketAddrV4,
) {
    let lfd = listener.as_raw_fd();
    loop {
        if back.readable().await.is_err() {
            return;
        }
        let mut refused = false;
        let mut got = 0usize;
        for _ in 0..BATCH {
            let more = BUF.with_borrow_mut(|buf| match back.try_recv(buf) {
                Ok(n) => {
                    got += 1;
                    // Non-blocking (MSG_DONTWAIT): a reply that does not fit is dropped.
                    let _ = send_from(lfd, &buf[..n], client, local);
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    refused = true;
                    false
                }
                Err(_) => false,
            });
            if !more {
                break;
            }
        }
        if refused {
            // ICMP port unreachable: the backend is not there; the next datagram of this
            // client opens a new flow to another one.
            if port.rotation.eject(backend, Instant::now()) {
                tracing::warn!(port = port.port, %backend, "UDP backend unreachable; out of rotation for a while");
            }
            let mut flows = lock(&port.flows);
            if flows
                .peek(&client, Instant::now())
                .is_some_and(|f| Arc::ptr_eq(&f.back, &back))
            {
                let gone = flows.remove(&client);
                drop(flows);
                drop(gone);
            }
            return;
        }
        if got > 0 {
            lock(&port.flows).touch(&client, Instant::now());
        }
        tokio::task::yield_now().await;
    }
}

/// Serves a VIP sandbox's transparent UDP listener until aborted: the first datagrams of each
/// flow land here (later ones go to the flow's own socket).
pub(crate) async fn serve_vip(ctx: Arc<Ctx>, vip: Arc<VipUdp>, listener: UdpSocket) {
    let fd = listener.as_raw_fd();
    loop {
        if let Err(e) = listener.readable().await {
            tracing::warn!(error = %e, "VIP UDP listener failed");
            return;
        }
        for _ in 0..BATCH {
            let more = BUF.with_borrow_mut(|buf| {
                match listener.try_io(Interest::READABLE, || recv_with_dst(fd, buf, 0)) {
                    Ok(rx) => {
                        vip_datagram(&ctx, &vip, rx, &buf[..rx.len]);
                        true
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) => {
                        tracing::debug!(error = %e, "VIP UDP receive failed");
                        true
                    }
                }
            });
            if !more {
                break;
            }
        }
        tokio::task::yield_now().await;
    }
}

fn vip_datagram(ctx: &Arc<Ctx>, vip: &Arc<VipUdp>, rx: Received, data: &[u8]) {
    let Some(orig) = rx.to else {
        tracing::debug!(client = %rx.from, "VIP datagram without its original destination; dropped");
        return;
    };
    let key = (rx.from, orig);
    let now = Instant::now();
    let mut flows = lock(&vip.flows);
    if let Some(flow) = flows.get(&key, now) {
        let _ = send_now(&flow.back, data);
        return;
    }
    let target = vip.target.load();
    let Some(svc) = target.services.get(orig.ip()) else {
        tracing::debug!(network = %target.network_id, vip = %orig.ip(), "no service has this VIP (any more); datagram dropped");
        return;
    };
    let dport = orig.port();
    let Some((back, backend)) = open_backend(
        ctx,
        &svc.rotation,
        |ip| SocketAddrV4::new(ip, dport),
        &target.egress,
        &svc.name,
    ) else {
        return;
    };
    let front = in_netns(&target.egress.netns, &ctx.home, || {
        udp_transparent_flow(orig, rx.from)
    })
    .and_then(UdpSocket::from_std);
    let front = match front {
        Ok(f) => Arc::new(f),
        Err(e) => {
            tracing::warn!(service = %svc.name, vip = %orig, client = %rx.from, error = %e, "cannot open the VIP reply socket; datagram dropped");
            return;
        }
    };
    let back = Arc::new(back);
    let task = tokio::spawn(vip_flow(
        Arc::clone(vip),
        key,
        Arc::clone(&front),
        Arc::clone(&back),
        Arc::clone(svc),
        SocketAddrV4::new(backend, dport),
        backend,
    ));
    let flow = Flow {
        back: Arc::clone(&back),
        task: task.abort_handle(),
        _gauge: Gauge::new(&ctx.stats.udp_flows),
    };
    tracing::trace!(service = %svc.name, client = %rx.from, vip = %orig, %backend, "VIP UDP flow");
    let gone = flows.insert(key, flow, now);
    drop(flows);
    drop(gone);
    let _ = send_now(&back, data);
}

/// Moves a VIP flow's datagrams both ways: client → VIP socket → backend, and back.
async fn vip_flow(
    vip: Arc<VipUdp>,
    key: (SocketAddrV4, SocketAddrV4),
    front: Arc<UdpSocket>,
    back: Arc<UdpSocket>,
    rotation: Arc<super::tcp::VipBackends>,
    backend_addr: SocketAddrV4,
    backend: Ipv4Addr,
) {
    loop {
        let (from, to) = tokio::select! {
            r = front.readable() => { if r.is_err() { return; } (&front, &back) }
            r = back.readable() => { if r.is_err() { return; } (&back, &front) }
        };
        let mut got = 0usize;
        let mut refused = false;
        for _ in 0..BATCH {
            let more = BUF.with_borrow_mut(|buf| match from.try_recv(buf) {
                Ok(n) => {
                    got += 1;
                    let _ = send_now(to, &buf[..n]);
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    refused = Arc::ptr_eq(from, &back);
                    false
                }
                Err(_) => false,
            });
            if !more {
                break;
            }
        }
        if refused {
            if rotation.rotation.eject(backend, Instant::now()) {
                tracing::warn!(service = %rotation.name, backend = %backend_addr, "UDP backend unreachable; out of rotation for a while");
            }
            let mut flows = lock(&vip.flows);
            if flows
                .peek(&key, Instant::now())
                .is_some_and(|f| Arc::ptr_eq(&f.back, &back))
            {
                let gone = flows.remove(&key);
                drop(flows);
                drop(gone);
            }
            return;
        }
        if got > 0 {
            lock(&vip.flows).touch(&key, Instant::now());
        }
        tokio::task::yield_now().await;
    }
}

/// Sends a datagram on a connected UDP socket now. Not `try_send`: tokio only knows a socket
/// is writable once its reactor has seen it so, which a socket made for a new flow has not
/// yet — the flow's first datagram would be dropped.
fn send_now(sock: &UdpSocket, data: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(sock).send(data)
}
