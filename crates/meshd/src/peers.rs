//! The routing mesh's probes of the other nodes: the socket and the clock around
//! [`mesh_ingress::peers::Peers`]. When the set of dead nodes changes, the mesh plan is
//! applied again without their tasks.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use mesh_ingress::peers::{PROBE_LEN, PeerConfig, Peers, Received};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::network::NetRuntime;

/// Probes the nodes `net` publishes (see [`NetRuntime::mesh_peers`]) from UDP `port` on every
/// address of this host, but `own` (this node's advertised address). Runs until aborted.
pub async fn run(net: Arc<NetRuntime>, port: u16, own: Option<Ipv4Addr>) {
    let sock = match bind(port).await {
        Ok(s) => s,
        Err(e) => {
            warn!(port, error = %e, "routing mesh: cannot open the probe socket; dead nodes leave rotation only when the managers mark them down");
            return;
        }
    };
    let mut nodes = net.mesh_peers();
    let mut peers = Peers::new(PeerConfig::default());
    peers.set_peers(
        wanted(&nodes.borrow_and_update(), own),
        Instant::now().into_std(),
    );
    let mut buf = [0u8; 64];
    loop {
        let now = Instant::now();
        let due = peers.poll(now.into_std());
        for (addr, bytes) in &due.probes {
            let to = SocketAddr::V4(SocketAddrV4::new(*addr, port));
            if let Err(e) = sock.send_to(bytes, to).await {
                debug!(node = %addr, error = %e, "routing mesh: probe not sent");
            }
        }
        if due.changed {
            reapply(&net, peers.dead()).await;
        }
        let wake = peers
            .next_deadline()
            .map_or(now + Duration::from_secs(1), Instant::from_std);
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, SocketAddr::V4(from))) => {
                    if let Received::Reply(answer) = peers.receive(*from.ip(), &buf[..n.min(PROBE_LEN + 1)], Instant::now().into_std())
                        && let Err(e) = sock.send_to(&answer, SocketAddr::V4(from)).await
                    {
                        debug!(node = %from, error = %e, "routing mesh: answer not sent");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // ICMP errors of earlier probes surface here: not fatal.
                    debug!(error = %e, "routing mesh: probe socket");
                }
            },
            changed = nodes.changed() => {
                if changed.is_err() {
                    return;
                }
                let list = wanted(&nodes.borrow_and_update(), own);
                if peers.set_peers(list, Instant::now().into_std()) {
                    reapply(&net, peers.dead()).await;
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

fn wanted(nodes: &[Ipv4Addr], own: Option<Ipv4Addr>) -> Vec<Ipv4Addr> {
    nodes.iter().copied().filter(|a| Some(*a) != own).collect()
}

async fn reapply(net: &Arc<NetRuntime>, dead: std::collections::BTreeSet<Ipv4Addr>) {
    let net = Arc::clone(net);
    if let Err(e) = tokio::task::spawn_blocking(move || net.set_dead_nodes(dead)).await {
        warn!(error = %e, "routing mesh: applying the plan without the dead nodes failed");
    }
}

async fn bind(port: u16) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await
}
