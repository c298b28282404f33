//! The serving loops of one endpoint: a UDP loop on every serving thread (all reading the one
//! socket, batched) and a TCP accept loop on one of them.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::Shared;
use crate::answer::{Action, Transport};
use crate::forward::forward;
use crate::sys::{BATCH, Batch};
use crate::wire;

/// Batches read per wake-up before other endpoints get their turn.
const ROUNDS: usize = 8;
/// Open TCP connections per endpoint, at most.
const MAX_TCP_CONNS: usize = 64;
/// How long a TCP connection may sit idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long reading the rest of a query, or writing an answer, may take.
const TCP_IO: Duration = Duration::from_secs(5);

static SCOPE_VERSION: AtomicU64 = AtomicU64::new(1);

/// The networks an endpoint answers for.
pub(crate) struct Scope {
    pub(crate) version: u64,
    pub(crate) networks: Vec<String>,
}

impl Scope {
    pub(crate) fn new(networks: Vec<String>) -> Self {
        Self {
            version: SCOPE_VERSION.fetch_add(1, Ordering::Relaxed),
            networks,
        }
    }
}

/// What the loops of one endpoint share.
pub(crate) struct Endpoint {
    pub(crate) scope: ArcSwap<Scope>,
}

thread_local! {
    static BATCH_BUFS: RefCell<Box<Batch>> = RefCell::new(Batch::new());
}

/// The asker's networks as indices into the current table, recomputed only when the table or
/// the scope changes.
struct View {
    generation: u64,
    scope_version: u64,
    indices: Vec<u32>,
}

impl View {
    fn refresh(&mut self, table: &crate::Table, scope: &Scope) {
        if self.generation != table.generation() || self.scope_version != scope.version {
            self.indices = table.view(&scope.networks);
            self.generation = table.generation();
            self.scope_version = scope.version;
        }
    }
}

/// Answers the queries arriving on `sock` (non-blocking) until aborted.
pub(crate) async fn udp_loop(
    sock: Arc<AsyncFd<std::net::UdpSocket>>,
    ep: Arc<Endpoint>,
    shared: Arc<Shared>,
) {
    let fd = sock.get_ref().as_raw_fd();
    let mut rotation: u32 = rand::random();
    let mut view = View {
        generation: 0,
        scope_version: 0,
        indices: Vec::new(),
    };
    loop {
        let mut ready = match sock.readable().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::warn!(error = %e, "DNS endpoint: UDP socket failed; endpoint stops answering on UDP");
                return;
            }
        };
        let unsent = BATCH_BUFS.with(|cell| {
            let Ok(mut b) = cell.try_borrow_mut() else {
                return Vec::new();
            };
            let mut unsent = Vec::new();
            for _ in 0..ROUNDS {
                let n = match b.recv(fd) {
                    Ok(n) => n,
                    Err(e) => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            tracing::debug!(error = %e, "DNS endpoint: UDP receive failed");
                        }
                        ready.clear_ready();
                        break;
                    }
                };
                {
                    let table = shared.table.load();
                    view.refresh(&table, &ep.scope.load());
                    for i in 0..n {
                        if b.is_truncated(i) {
                            continue;
                        }
                        rotation = rotation.wrapping_add(1);
                        let (msg, out) = b.slot(i);
                        match shared.answerer.answer(
                            &table,
                            &view.indices,
                            msg,
                            Transport::Udp,
                            rotation,
                            out,
                        ) {
                            Action::Reply => b.reply(i),
                            Action::Drop => {}
                            Action::Forward => {
                                let msg = msg.to_vec();
                                match (b.peer(i), shared.forwards.clone().try_acquire_owned()) {
                                    (Some(peer), Ok(permit)) => {
                                        let (sock, shared) = (sock.clone(), shared.clone());
                                        tokio::spawn(async move {
                                            let _permit = permit;
                                            let answer = forward(
                                                &shared.answerer,
                                                &shared.forwarder,
                                                &msg,
                                                Transport::Udp,
                                            )
                                            .await;
                                            if let Some(answer) = answer {
                                                send_to(&sock, &answer, peer).await;
                                            }
                                        });
                                    }
                                    (Some(_), Err(_)) => {
                                        servfail(&msg, b.slot(i).1);
                                        b.reply(i);
                                    }
                                    (None, _) => {}
                                }
                            }
                        }
                    }
                }
                if b.send(fd).is_err() {
                    unsent.extend(b.take_unsent());
                }
                if n < BATCH {
                    // Drained: wait for the next datagram without another empty read (a
                    // datagram that came meanwhile has set readiness again).
                    ready.clear_ready();
                    break;
                }
            }
            unsent
        });
        drop(ready);
        for (peer, answer) in unsent {
            send_to(&sock, &answer, peer).await;
        }
    }
}

async fn send_to(sock: &AsyncFd<std::net::UdpSocket>, msg: &[u8], peer: SocketAddr) {
    if let Err(e) = sock
        .async_io(Interest::WRITABLE, |s| s.send_to(msg, peer))
        .await
    {
        tracing::debug!(error = %e, %peer, "DNS answer not sent");
    }
}

fn servfail(msg: &[u8], out: &mut Vec<u8>) {
    if let Ok(q) = wire::parse_query(msg) {
        wire::write_empty(out, &q, msg, wire::RCODE_SERVFAIL, false, false);
    }
}

/// Accepts TCP connections on `listener` until aborted; aborting ends its connections too.
pub(crate) async fn tcp_loop(listener: TcpListener, ep: Arc<Endpoint>, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNS));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (ep, shared) = (ep.clone(), shared.clone());
                conns.spawn(async move {
                    let _permit = permit;
                    if let Err(e) = tcp_conn(stream, &ep, &shared).await {
                        tracing::debug!(error = %e, %peer, "DNS TCP connection ended");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "DNS endpoint: TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn io_timeout() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "TCP peer too slow")
}

async fn tcp_conn(mut stream: TcpStream, ep: &Endpoint, shared: &Shared) -> io::Result<()> {
    let mut msg = Vec::new();
    let mut out = Vec::with_capacity(512);
    let mut rotation: u32 = rand::random();
    loop {
        let len = match timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        msg.resize(len, 0);
        timeout(TCP_IO, stream.read_exact(&mut msg))
            .await
            .map_err(|_| io_timeout())??;
        rotation = rotation.wrapping_add(1);
        let action = {
            let table = shared.table.load();
            let view = table.view(&ep.scope.load().networks);
            shared
                .answerer
                .answer(&table, &view, &msg, Transport::Tcp, rotation, &mut out)
        };
        match action {
            Action::Reply => {}
            Action::Drop => return Ok(()),
            Action::Forward => match shared.forwards.try_acquire() {
                Ok(_permit) => {
                    match forward(&shared.answerer, &shared.forwarder, &msg, Transport::Tcp).await {
                        Some(answer) => out = answer,
                        None => return Ok(()),
                    }
                }
                Err(_) => servfail(&msg, &mut out),
            },
        }
        let len = u16::try_from(out.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "answer longer than 65535 bytes")
        })?;
        let mut frame = Vec::with_capacity(out.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&out);
        timeout(TCP_IO, stream.write_all(&frame))
            .await
            .map_err(|_| io_timeout())??;
    }
}
