//! The embedded DNS resolver of every task.
//!
//! Each task gets a resolver endpoint inside its own network namespace (like Docker's
//! 127.0.0.11): the caller binds a UDP socket and a TCP listener there and hands them to
//! [`Resolver::serve`] with the networks the task is on. The endpoint answers the cluster's
//! names visible on those networks — service names (VIP, or task addresses for dnsrr),
//! `tasks.NAME`, task names, network aliases, standalone containers — from the current
//! [`Table`], and forwards every other name to the host's resolvers, with a cache.
//!
//! ```no_run
//! use std::net::{IpAddr, TcpListener, UdpSocket};
//! use std::sync::Arc;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let resolv_conf = std::fs::read_to_string("/etc/resolv.conf")?;
//! let resolver = mesh_dns::Resolver::new(mesh_dns::ResolverConfig {
//!     upstreams: mesh_dns::upstreams_from_resolv_conf(&resolv_conf),
//!     ..Default::default()
//! })?;
//! let mut table = mesh_dns::Table::builder();
//! let vip: IpAddr = "10.0.1.2".parse()?;
//! let tasks: Vec<IpAddr> = vec!["10.0.1.5".parse()?, "10.0.1.6".parse()?];
//! table.add_service("net-1", "web", Some(vip), &tasks)?;
//! resolver.set_table(Arc::new(table.build()));
//! // Bound inside the task's namespace by the caller:
//! let udp = UdpSocket::bind("127.0.0.11:53")?;
//! let tcp = TcpListener::bind("127.0.0.11:53")?;
//! let endpoint = resolver.serve(vec!["net-1".into()], udp, tcp)?;
//! // ... the task joins another network:
//! endpoint.set_scope(vec!["net-1".into(), "net-2".into()]);
//! # Ok(()) }
//! ```
//!
//! Answers are built by a small allocation-free codec ([`wire`]) and served by batched UDP
//! loops (`recvmmsg`/`sendmmsg`) on a few single-threaded event loops that every endpoint
//! shares; the query→answer step ([`Resolver::answer`]) does no I/O. Forwarded queries leave
//! from the serving threads, that is from the namespace the resolver was created in (the
//! host's), not from the task's.

mod answer;
mod cache;
mod config;
mod forward;
mod serve;
mod sys;
mod table;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::AbortHandle;

pub use answer::Transport;
pub use config::{ConfigError, ResolverConfig, upstreams_from_resolv_conf};
pub use table::{Table, TableBuilder, TableError};

use answer::{Action, Answerer};
use forward::Forwarder;
use serve::{Endpoint, Scope};

/// What can go wrong starting a resolver or an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("resolver configuration: {0}")]
    Config(#[from] ConfigError),
    /// A serving thread could not start.
    #[error("starting DNS serving thread {index}: {source}")]
    Thread {
        /// Which thread.
        index: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An endpoint was given no socket.
    #[error("an endpoint needs at least one UDP socket and one TCP listener; pass both")]
    NoSockets,
    /// An endpoint socket could not be taken over.
    #[error(
        "setting up the endpoint's {socket} socket: {source}; pass a bound UDP socket and a \
         listening TCP socket"
    )]
    Socket {
        /// `UDP` or `TCP`.
        socket: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What [`Resolver::answer`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send this answer.
    Reply(Vec<u8>),
    /// The name is the host's, not the cluster's, and no answer is cached: forward it
    /// ([`Resolver::resolve`] does).
    Forward,
    /// Send nothing: the message is not a query.
    Drop,
}

/// What every loop of a resolver shares.
pub(crate) struct Shared {
    pub(crate) table: ArcSwap<Table>,
    pub(crate) answerer: Answerer,
    pub(crate) forwarder: Forwarder,
    pub(crate) forwards: Arc<Semaphore>,
}

/// The serving threads; dropping this stops them.
struct Shards {
    handles: Vec<Handle>,
    _stop: Vec<oneshot::Sender<()>>,
    next: AtomicUsize,
}

/// The resolver of all the tasks of a host: the current [`Table`], the forwarder and its
/// cache, and the threads that serve the endpoints. Cheap to clone (clones share all);
/// dropping the last clone stops every endpoint.
#[derive(Clone)]
pub struct Resolver {
    shared: Arc<Shared>,
    shards: Arc<Shards>,
    config: Arc<ResolverConfig>,
    rotation: Arc<AtomicU32>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Checks `config`, starts the serving threads; the table is empty until
    /// [`set_table`](Self::set_table). Sockets to upstreams are opened by these threads, so
    /// create the resolver from a thread in the host's network namespace.
    pub fn new(config: ResolverConfig) -> Result<Self, Error> {
        config.validate()?;
        let mut handles = Vec::with_capacity(config.threads);
        let mut stop = Vec::with_capacity(config.threads);
        for index in 0..config.threads {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| Error::Thread { index, source })?;
            let handle = rt.handle().clone();
            let (tx, rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("mesh-dns-{index}"))
                .spawn(move || {
                    rt.block_on(async {
                        let _ = rx.await;
                    });
                })
                .map_err(|source| Error::Thread { index, source })?;
            handles.push(handle);
            stop.push(tx);
        }
        let shared = Shared {
            table: ArcSwap::from_pointee(Table::empty()),
            answerer: Answerer {
                ttl: config.ttl,
                max_udp_payload: config.max_udp_payload,
                has_upstreams: !config.upstreams.is_empty(),
                cache: cache::Cache::new(config.cache_size),
            },
            forwarder: Forwarder {
                upstreams: config.upstreams.clone(),
                timeout: config.upstream_timeout,
            },
            forwards: Arc::new(Semaphore::new(config.max_forwards)),
        };
        Ok(Self {
            shared: Arc::new(shared),
            shards: Arc::new(Shards {
                handles,
                _stop: stop,
                next: AtomicUsize::new(0),
            }),
            config: Arc::new(config),
            rotation: Arc::new(AtomicU32::new(0)),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// Swaps in a new table. Every query answered after this call sees it; a query being
    /// answered sees either the old table or the new one, whole.
    pub fn set_table(&self, table: Arc<Table>) {
        self.shared.table.store(table);
    }

    /// The current table.
    pub fn table(&self) -> Arc<Table> {
        self.shared.table.load_full()
    }

    /// Answers one query for a task on `networks`, without I/O: from the table, or from the
    /// cache for a forwarded name; [`Outcome::Forward`] when an upstream must be asked.
    pub fn answer<S: AsRef<str>>(
        &self,
        networks: &[S],
        query: &[u8],
        transport: Transport,
    ) -> Outcome {
        let table = self.shared.table.load();
        let view = table.view(networks);
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        match self
            .shared
            .answerer
            .answer(&table, &view, query, transport, rotation, &mut out)
        {
            Action::Reply => Outcome::Reply(out),
            Action::Forward => Outcome::Forward,
            Action::Drop => Outcome::Drop,
        }
    }

    /// Answers one query for a task on `networks`, forwarding it if need be (SERVFAIL if no
    /// upstream answers within the timeout). `None`: send nothing.
    pub async fn resolve<S: AsRef<str>>(
        &self,
        networks: &[S],
        query: &[u8],
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match self.answer(networks, query, transport) {
            Outcome::Reply(answer) => Some(answer),
            Outcome::Drop => None,
            Outcome::Forward => {
                let _permit = self.shared.forwards.acquire().await.ok()?;
                forward::forward(
                    &self.shared.answerer,
                    &self.shared.forwarder,
                    query,
                    transport,
                )
                .await
            }
        }
    }

    /// Serves one endpoint: queries arriving on `udp` (bound) and `tcp` (listening) are
    /// answered for a task on `networks` only. The endpoint runs on one of the serving
    /// threads (endpoints are spread over them) until its handle is dropped or stopped (or
    /// the resolver dropped).
    pub fn serve(
        &self,
        networks: Vec<String>,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
    ) -> Result<EndpointHandle, Error> {
        self.serve_sockets(networks, vec![udp], vec![tcp])
    }

    /// Like [`serve`](Self::serve) with several sockets for one endpoint, e.g. one UDP
    /// socket per serving thread, all bound to the same address with `SO_REUSEPORT`, so that
    /// one busy endpoint uses every thread. Each socket goes to the next thread in turn.
    pub fn serve_sockets(
        &self,
        networks: Vec<String>,
        udp: Vec<std::net::UdpSocket>,
        tcp: Vec<std::net::TcpListener>,
    ) -> Result<EndpointHandle, Error> {
        let udp_err = |source| Error::Socket {
            socket: "UDP",
            source,
        };
        let tcp_err = |source| Error::Socket {
            socket: "TCP",
            source,
        };
        let (Some(first_udp), Some(first_tcp)) = (udp.first(), tcp.first()) else {
            return Err(Error::NoSockets);
        };
        let udp_addr = first_udp.local_addr().map_err(udp_err)?;
        let tcp_addr = first_tcp.local_addr().map_err(tcp_err)?;
        for s in &udp {
            s.set_nonblocking(true).map_err(udp_err)?;
        }
        for s in &tcp {
            s.set_nonblocking(true).map_err(tcp_err)?;
        }

        let ep = Arc::new(Endpoint {
            scope: ArcSwap::from_pointee(Scope::new(networks)),
        });
        let handles = &self.shards.handles;
        let next_rt = || {
            let i = self.shards.next.fetch_add(1, Ordering::Relaxed);
            &handles[i % handles.len()]
        };
        // Dropped on an error half-way, this aborts what already runs.
        let mut handle = EndpointHandle {
            ep: ep.clone(),
            tasks: Vec::with_capacity(udp.len() + tcp.len()),
            udp_addr,
            tcp_addr,
        };
        for sock in udp {
            let rt = next_rt();
            let sock = {
                let _in_rt = rt.enter();
                let interest = Interest::READABLE | Interest::WRITABLE;
                // SAFETY: the std socket owns its descriptor; nothing closes or replaces it
                // while the AsyncFd holds the socket.
                unsafe { AsyncFd::register_with_interest(sock, interest) }
                    .map_err(|e| udp_err(e.into()))?
            };
            let task = rt.spawn(serve::udp_loop(
                Arc::new(sock),
                ep.clone(),
                self.shared.clone(),
            ));
            handle.tasks.push(task.abort_handle());
        }
        for listener in tcp {
            let rt = next_rt();
            let listener = {
                let _in_rt = rt.enter();
                tokio::net::TcpListener::from_std(listener).map_err(tcp_err)?
            };
            let task = rt.spawn(serve::tcp_loop(listener, ep.clone(), self.shared.clone()));
            handle.tasks.push(task.abort_handle());
        }
        tracing::debug!(%udp_addr, %tcp_addr, "DNS endpoint serving");
        Ok(handle)
    }
}

/// One serving endpoint. Dropping it (or [`stop`](Self::stop)) ends its loops and closes its
/// sockets.
pub struct EndpointHandle {
    ep: Arc<Endpoint>,
    tasks: Vec<AbortHandle>,
    udp_addr: SocketAddr,
    tcp_addr: SocketAddr,
}

impl std::fmt::Debug for EndpointHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointHandle")
            .field("udp_addr", &self.udp_addr)
            .field("tcp_addr", &self.tcp_addr)
            .field("networks", &self.networks())
            .finish()
    }
}

impl EndpointHandle {
    /// Changes the networks the endpoint answers for (the task joined or left one); the
    /// next query sees the change.
    pub fn set_scope(&self, networks: Vec<String>) {
        self.ep.scope.store(Arc::new(Scope::new(networks)));
    }

    /// The networks the endpoint answers for.
    pub fn networks(&self) -> Vec<String> {
        self.ep.scope.load().networks.clone()
    }

    /// Where the UDP socket is bound.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// Where the TCP listener is bound.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// Stops serving; the sockets close as the serving threads drop the loops.
    pub fn stop(self) {}
}

impl Drop for EndpointHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests;
