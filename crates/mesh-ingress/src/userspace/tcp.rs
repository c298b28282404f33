//! TCP: accepting clients, choosing and connecting a backend (with passive health), the PROXY
//! header, and handing both sockets to the relay.

use std::collections::HashMap;
use std::fmt::Display;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::netns::in_netns;
use super::proxy_v2::header_v4;
use super::relay::relay;
use super::rotation::Rotation;
use super::sock::{reset_on_close, tcp_backend};
use super::{Ctx, EgressTarget, Gauge};

/// What a published TCP port does with a connection (swapped whole on a plan change).
#[derive(Debug)]
pub(crate) struct TcpTarget {
    /// The service that publishes the port (logs).
    pub(crate) service: String,
    /// Where backend connections are opened from.
    pub(crate) egress: EgressTarget,
    /// Send a PROXY protocol v2 header first.
    pub(crate) proxy_protocol: bool,
}

/// A published TCP port, shared by its accept loop and its connections.
#[derive(Debug)]
pub(crate) struct PublishedTcp {
    /// The published port.
    pub(crate) port: u16,
    /// The current settings.
    pub(crate) target: ArcSwap<TcpTarget>,
    /// The backends.
    pub(crate) rotation: Rotation<SocketAddrV4>,
}

/// A service VIP's backends.
#[derive(Debug)]
pub(crate) struct VipBackends {
    /// Service name (logs).
    pub(crate) name: String,
    /// The task addresses; a connection to `vip:P` goes to `backend:P`.
    pub(crate) rotation: Rotation<Ipv4Addr>,
}

/// What a VIP sandbox's transparent listener does (swapped whole on a plan change).
#[derive(Debug)]
pub(crate) struct VipTarget {
    /// Network ID (logs).
    pub(crate) network_id: String,
    /// The sandbox itself, with the host's load-balancer address as source.
    pub(crate) egress: EgressTarget,
    /// Services by VIP.
    pub(crate) services: HashMap<Ipv4Addr, Arc<VipBackends>>,
}

fn v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

/// Accepts connections until the task is aborted, handing each to `handle` on its own task.
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, what: String, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle(stream, peer));
            }
            Err(e) => {
                // Out of descriptors or memory: wait a little rather than spin.
                tracing::warn!(listener = %what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Opens a TCP connection to `addr` from `egress`, within the connect timeout.
async fn connect_one(
    ctx: &Ctx,
    egress: &EgressTarget,
    addr: SocketAddrV4,
) -> io::Result<TcpStream> {
    let std = in_netns(&egress.netns, &ctx.home, || tcp_backend(egress.source))?;
    let sock = TcpSocket::from_std_stream(std);
    match tokio::time::timeout(ctx.cfg.connect_timeout, sock.connect(SocketAddr::V4(addr))).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no answer within {} ms",
                ctx.cfg.connect_timeout.as_millis()
            ),
        )),
    }
}

/// Connects to the next backend of `rotation`; on failure tries the next, each backend at most
/// once, ejecting those that fail. `None` when every backend failed (or there is none).
pub(crate) async fn connect_backend<B: Copy + Eq + Display>(
    ctx: &Ctx,
    rotation: &Rotation<B>,
    addr_of: impl Fn(B) -> SocketAddrV4,
    egress: &EgressTarget,
    service: &str,
) -> Option<TcpStream> {
    let mut tried = Vec::new();
    while let Some(b) = rotation.pick(Instant::now(), &tried) {
        tried.push(b);
        let addr = addr_of(b);
        match connect_one(ctx, egress, addr).await {
            Ok(s) => return Some(s),
            Err(e) => {
                ctx.stats
                    .backend_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if rotation.eject(b, Instant::now()) {
                    tracing::warn!(service, backend = %addr, error = %e, eject_ms = ctx.cfg.eject_for.as_millis() as u64, "backend failed; out of rotation for a while");
                } else {
                    tracing::debug!(service, backend = %addr, error = %e, "backend failed again");
                }
            }
        }
    }
    if tried.is_empty() {
        tracing::debug!(service, "no backend: connection refused");
    } else {
        tracing::debug!(
            service,
            tried = tried.len(),
            "every backend failed: connection reset"
        );
    }
    None
}

/// Relays an accepted client to a connected backend, counting the relay while it lasts.
async fn run_relay(ctx: &Ctx, client: TcpStream, backend: TcpStream, service: &str) {
    let _relay = Gauge::new(&ctx.stats.tcp_relays);
    match relay(client, backend).await {
        Ok((up, down)) => tracing::trace!(service, up, down, "connection done"),
        Err(e) => tracing::debug!(service, error = %e, "connection ended with an error"),
    }
}

/// Serves one connection accepted on a published TCP port.
pub(crate) async fn serve_published(
    ctx: Arc<Ctx>,
    port: Arc<PublishedTcp>,
    client: TcpStream,
    peer: SocketAddr,
) {
    ctx.stats
        .tcp_accepted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = client.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client socket");
    }
    let target = port.target.load_full();
    let service = target.service.as_str();
    let Some(mut backend) =
        connect_backend(&ctx, &port.rotation, |b| b, &target.egress, service).await
    else {
        reset_on_close(&client);
        return;
    };
    if target.proxy_protocol {
        let addrs = v4(peer).zip(client.local_addr().ok().and_then(v4));
        let Some((from, to)) = addrs else {
            tracing::warn!(service, %peer, "no IPv4 addresses for the PROXY header; connection reset");
            reset_on_close(&client);
            return;
        };
        if let Err(e) = backend.write_all(&header_v4(from, to)).await {
            tracing::debug!(service, error = %e, "cannot send the PROXY header; connection reset");
            reset_on_close(&client);
            return;
        }
    }
    tracing::trace!(service, port = port.port, %peer, "connection accepted");
    run_relay(&ctx, client, backend, service).await;
}

/// Serves one connection a TPROXY rule steered to a VIP sandbox's transparent listener: its
/// local address is the VIP and port the client connected to.
pub(crate) async fn serve_vip(
    ctx: Arc<Ctx>,
    sandbox: Arc<ArcSwap<VipTarget>>,
    client: TcpStream,
    peer: SocketAddr,
) {
    ctx.stats
        .tcp_accepted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = client.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client socket");
    }
    let target = sandbox.load_full();
    let Some(orig) = client.local_addr().ok().and_then(v4) else {
        reset_on_close(&client);
        return;
    };
    let Some(svc) = target.services.get(orig.ip()) else {
        tracing::debug!(network = %target.network_id, vip = %orig.ip(), %peer, "no service has this VIP (any more); connection reset");
        reset_on_close(&client);
        return;
    };
    let port = orig.port();
    let Some(backend) = connect_backend(
        &ctx,
        &svc.rotation,
        |ip| SocketAddrV4::new(ip, port),
        &target.egress,
        &svc.name,
    )
    .await
    else {
        reset_on_close(&client);
        return;
    };
    tracing::trace!(service = %svc.name, vip = %orig, %peer, "VIP connection accepted");
    run_relay(&ctx, client, backend, &svc.name).await;
}
