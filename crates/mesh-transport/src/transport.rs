//! The endpoint: serving calls, making calls, swapping certificates.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use futures::FutureExt;
use quinn::{
    Connection, ConnectionError, Endpoint, ReadError, ReadExactError, RecvStream, SendStream,
    VarInt, WriteError,
};
use rustls::pki_types::CertificateDer;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use crate::error::{CallError, RemoteError, TransportError};
use crate::tls::{self, SERVER_NAME, Trust};
use crate::wire::{self, FrameError, MAX_MESSAGE_SIZE, MAX_METHOD_LEN};
use crate::{Handler, Identity, METHOD_CA, Peer};

/// Application close code: normal shutdown or a connection no longer needed.
const CLOSE_DONE: u32 = 0;
/// Application close code: the peer's certificate is not a node certificate.
const CLOSE_BAD_PEER: u32 = 1;
/// Stream error code: the request was malformed.
const STREAM_BAD_REQUEST: u32 = 1;

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A node's QUIC endpoint: serves calls with a [`Handler`] and makes calls to other nodes.
///
/// Cloning is cheap and shares the endpoint. Dropping the last clone closes it.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    client_config: RwLock<quinn::ClientConfig>,
    /// One connection per remote address, each behind its own lock so that concurrent callers
    /// share one handshake.
    conns: Mutex<HashMap<SocketAddr, Slot>>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.accept_task).take() {
            task.abort();
        }
        self.endpoint
            .close(VarInt::from_u32(CLOSE_DONE), b"transport dropped");
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Listens on `listen` (UDP) with `identity`, answering calls with `handler`. Must be called
    /// from within a Tokio runtime. Port 0 picks a free port: see [`Transport::local_addr`].
    pub fn bind(
        listen: SocketAddr,
        identity: Identity,
        handler: Arc<dyn Handler>,
    ) -> Result<Transport, TransportError> {
        let runtime = quinn::default_runtime().ok_or(TransportError::NoRuntime)?;
        identity.validate()?;
        let server_config = tls::server_config(&identity)?;
        let client_config = tls::client_config(Some(&identity), Trust::Ca(&identity.ca_cert_pem))?;
        let endpoint_config = tls::endpoint_config(&identity)?;
        let bind_err = |source| TransportError::Bind {
            addr: listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(listen).map_err(bind_err)?;
        let local_addr = socket.local_addr().map_err(bind_err)?;
        let endpoint = Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
            .map_err(bind_err)?;
        let accept_task = tokio::spawn(
            accept_loop(endpoint.clone(), handler)
                .instrument(tracing::debug_span!("transport", %local_addr)),
        );
        info!(%local_addr, "transport listening");
        Ok(Transport {
            inner: Arc::new(Inner {
                endpoint,
                local_addr,
                client_config: RwLock::new(client_config),
                conns: Mutex::new(HashMap::new()),
                accept_task: Mutex::new(Some(accept_task)),
            }),
        })
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Replaces the certificate (renewal, role change, CA rotation) without rebinding. New
    /// connections, incoming and outgoing, use the new identity; cached outgoing connections
    /// are forgotten (calls in flight on them finish), so the next call reconnects with it.
    pub fn set_identity(&self, identity: Identity) -> Result<(), TransportError> {
        identity.validate()?;
        let server_config = tls::server_config(&identity)?;
        let client_config = tls::client_config(Some(&identity), Trust::Ca(&identity.ca_cert_pem))?;
        self.inner.endpoint.set_server_config(Some(server_config));
        *self
            .inner
            .client_config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = client_config;
        let dropped = std::mem::take(&mut *lock(&self.inner.conns));
        debug!(
            local_addr = %self.inner.local_addr,
            connections = dropped.len(),
            "identity replaced"
        );
        Ok(())
    }

    /// Calls `method` on the node at `addr` with `body` and returns its answer. Reuses the
    /// cached connection to `addr`; if that connection turns out to be dead, reconnects once and
    /// sends the request again (so a request may reach a handler twice if the connection died
    /// after delivering it: make handlers idempotent). `timeout` bounds the whole call,
    /// connecting included.
    pub async fn call(
        &self,
        addr: SocketAddr,
        method: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        check_request(method, &body)?;
        let attempt = async {
            let (conn, fresh) = self.connection(addr).await?;
            match exchange(&conn, method, &body).await {
                Err(Exchange::Lost(e)) if !fresh => {
                    debug!(%addr, error = %e, "cached connection is dead; reconnecting");
                    self.forget(addr, &conn);
                    let (conn, _) = self.connection(addr).await?;
                    exchange(&conn, method, &body)
                        .await
                        .map_err(|e| e.into_call_error(addr, true))
                }
                other => other.map_err(|e| e.into_call_error(addr, fresh)),
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    /// Who the node at `addr` is, as its verified certificate says (connecting if needed).
    pub async fn remote_peer(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Peer, CallError> {
        let attempt = async {
            let (conn, _) = self.connection(addr).await?;
            peer_of(&conn).map_err(|e| {
                CallError::Connect(format!("{addr} presented an unusable certificate: {e}"))
            })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    /// Stops serving, closes every connection and waits until they are drained. The socket is
    /// released once the last clone of the transport is dropped.
    pub async fn close(&self) {
        if let Some(task) = lock(&self.inner.accept_task).take() {
            task.abort();
        }
        lock(&self.inner.conns).clear();
        self.inner
            .endpoint
            .close(VarInt::from_u32(CLOSE_DONE), b"shutting down");
        self.inner.endpoint.wait_idle().await;
        info!(local_addr = %self.inner.local_addr, "transport closed");
    }

    /// The live cached connection to `addr`, or a new one (`true` when new).
    async fn connection(&self, addr: SocketAddr) -> Result<(Connection, bool), CallError> {
        let slot = lock(&self.inner.conns).entry(addr).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() {
                return Ok((conn.clone(), false));
            }
            debug!(%addr, reason = ?conn.close_reason(), "cached connection closed");
        }
        let config = self
            .inner
            .client_config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let conn = connect(&self.inner.endpoint, config, addr).await?;
        *guard = Some(conn.clone());
        Ok((conn, true))
    }

    /// Drops `conn` from the cache if it is still the cached connection to `addr`.
    fn forget(&self, addr: SocketAddr, conn: &Connection) {
        let slot = lock(&self.inner.conns).get(&addr).cloned();
        if let Some(slot) = slot
            && let Ok(mut guard) = slot.try_lock()
            && guard
                .as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            *guard = None;
        }
    }
}

fn check_request(method: &str, body: &[u8]) -> Result<(), CallError> {
    if method.is_empty() || method.len() > MAX_METHOD_LEN {
        return Err(CallError::Io(format!(
            "method name {method:?} must be 1 to {MAX_METHOD_LEN} bytes"
        )));
    }
    if body.len() > MAX_MESSAGE_SIZE {
        return Err(CallError::Io(format!(
            "request body of {} bytes exceeds the {MAX_MESSAGE_SIZE}-byte message limit",
            body.len()
        )));
    }
    Ok(())
}

async fn connect(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<Connection, CallError> {
    let connecting = endpoint
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|e| CallError::Connect(format!("cannot connect to {addr}: {e}")))?;
    let conn = connecting
        .await
        .map_err(|e| CallError::Connect(format!("cannot connect to {addr}: {e}")))?;
    debug!(%addr, "connected");
    Ok(conn)
}

/// How one request/response exchange failed.
enum Exchange {
    /// The connection is gone (worth one reconnect if it was a cached one).
    Lost(ConnectionError),
    /// Anything else.
    Failed(CallError),
}

impl Exchange {
    /// The error to report; `fresh` says whether the connection was opened for this call.
    fn into_call_error(self, addr: SocketAddr, fresh: bool) -> CallError {
        match self {
            Exchange::Lost(e) if fresh && refused(&e) => {
                CallError::Connect(format!("{addr} refused the connection: {e}"))
            }
            Exchange::Lost(e) => CallError::Io(format!("connection to {addr} lost: {e}")),
            Exchange::Failed(e) => e,
        }
    }
}

/// Whether the peer closed the connection because it refused our certificate. (A TLS 1.3
/// client finishes its side of the handshake before the server has checked the client
/// certificate, so such a refusal arrives as a close right after connecting.)
fn refused(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::ConnectionClosed(close) => {
            (0x100..=0x1ff).contains(&u64::from(close.error_code))
        }
        ConnectionError::ApplicationClosed(close) => {
            close.error_code == VarInt::from_u32(CLOSE_BAD_PEER)
        }
        _ => false,
    }
}

fn from_write(e: WriteError) -> Exchange {
    match e {
        WriteError::ConnectionLost(c) => Exchange::Lost(c),
        other => Exchange::Failed(CallError::Io(format!("cannot send the request: {other}"))),
    }
}

fn from_frame(e: FrameError) -> Exchange {
    match e {
        FrameError::Read(ReadExactError::ReadError(ReadError::ConnectionLost(c))) => {
            Exchange::Lost(c)
        }
        FrameError::Read(ReadExactError::FinishedEarly(_)) => Exchange::Failed(CallError::Io(
            "the server closed the call without a complete answer".into(),
        )),
        FrameError::Read(other) => {
            Exchange::Failed(CallError::Io(format!("cannot read the answer: {other}")))
        }
        FrameError::Malformed(m) => {
            Exchange::Failed(CallError::Io(format!("malformed answer: {m}")))
        }
    }
}

/// One call on a new stream of `conn`.
async fn exchange(conn: &Connection, method: &str, body: &[u8]) -> Result<Vec<u8>, Exchange> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(Exchange::Lost)?;
    wire::write_request(&mut send, method, body)
        .await
        .map_err(from_write)?;
    send.finish()
        .map_err(|e| Exchange::Failed(CallError::Io(format!("cannot send the request: {e}"))))?;
    match wire::read_response(&mut recv).await.map_err(from_frame)? {
        Ok(answer) => Ok(answer),
        Err(remote) => Err(Exchange::Failed(CallError::Remote(remote))),
    }
}

/// Who is behind `conn`, from the certificate TLS verified.
fn peer_of(conn: &Connection) -> Result<Peer, String> {
    let Some(identity) = conn.peer_identity() else {
        return Ok(Peer::Anonymous);
    };
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "the TLS session holds no X.509 certificate chain".to_owned())?;
    let Some(leaf) = chain.first() else {
        return Ok(Peer::Anonymous);
    };
    let id = mesh_pki::parse_node_cert_der(leaf).map_err(|e| e.to_string())?;
    Ok(Peer::Node {
        node_id: id.node_id,
        role: id.role,
        cluster_id: id.cluster_id,
    })
}

async fn accept_loop(endpoint: Endpoint, handler: Arc<dyn Handler>) {
    while let Some(incoming) = endpoint.accept().await {
        let handler = handler.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Includes clients whose certificate is not from the cluster CA.
                        debug!(error = %e, "refused an incoming connection");
                        return;
                    }
                };
                serve_connection(conn, handler).await;
            }
            .instrument(tracing::debug_span!("conn", %remote)),
        );
    }
}

async fn serve_connection(conn: Connection, handler: Arc<dyn Handler>) {
    let peer = match peer_of(&conn) {
        Ok(peer) => peer,
        Err(e) => {
            warn!(error = %e, "closing a connection whose certificate is not a node certificate");
            conn.close(VarInt::from_u32(CLOSE_BAD_PEER), b"not a node certificate");
            return;
        }
    };
    debug!(?peer, "accepted a connection");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let handler = handler.clone();
                let peer = peer.clone();
                tokio::spawn(serve_stream(handler, peer, send, recv).in_current_span());
            }
            Err(e) => {
                debug!(reason = %e, "connection ended");
                return;
            }
        }
    }
}

async fn serve_stream(
    handler: Arc<dyn Handler>,
    peer: Peer,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let (method, body) = match wire::read_request(&mut recv).await {
        Ok(request) => request,
        Err(FrameError::Malformed(m)) => {
            debug!(problem = %m, "malformed request");
            let _ = recv.stop(VarInt::from_u32(STREAM_BAD_REQUEST));
            let answer = Err(RemoteError::new("bad_request", m));
            if wire::write_response(&mut send, &answer).await.is_ok() {
                let _ = send.finish();
            }
            return;
        }
        Err(FrameError::Read(e)) => {
            debug!(error = %e, "could not read a request");
            return;
        }
    };
    let answer = match AssertUnwindSafe(handler.handle(peer, method.clone(), body))
        .catch_unwind()
        .await
    {
        Ok(Ok(body)) if body.len() > MAX_MESSAGE_SIZE => Err(RemoteError::new(
            "response_too_large",
            format!(
                "the answer to {method} is {} bytes, over the {MAX_MESSAGE_SIZE}-byte message limit",
                body.len()
            ),
        )),
        Ok(answer) => answer,
        Err(_) => {
            warn!(%method, "request handler panicked");
            Err(RemoteError::new(
                "internal",
                format!("the handler of {method} failed unexpectedly"),
            ))
        }
    };
    if let Err(e) = wire::write_response(&mut send, &answer).await {
        debug!(%method, error = %e, "could not send an answer");
        return;
    }
    let _ = send.finish();
}

/// A client-only endpoint for one call, closed afterwards.
async fn one_shot(
    addr: SocketAddr,
    config: quinn::ClientConfig,
    method: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    check_request(method, body)?;
    let bind: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = Endpoint::client(bind)
        .map_err(|e| CallError::Connect(format!("cannot open a client socket: {e}")))?;
    let attempt = async {
        let conn = connect(&endpoint, config, addr).await?;
        let answer = exchange(&conn, method, body)
            .await
            .map_err(|e| e.into_call_error(addr, true));
        conn.close(VarInt::from_u32(CLOSE_DONE), b"done");
        answer
    };
    let answer = tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(CallError::Timeout));
    endpoint.close(VarInt::from_u32(CLOSE_DONE), b"done");
    answer
}

fn config_error(e: TransportError) -> CallError {
    CallError::Connect(e.to_string())
}

/// Fetches the CA certificate (PEM) from the node at `addr` **without verifying the server**,
/// by calling [`METHOD_CA`] anonymously. The answer is untrusted until the caller pins it:
/// compare `mesh_pki::ca_digest` of it with the join token's digest (or use
/// [`fetch_ca_pinned`], which does).
pub async fn fetch_ca_insecure(addr: SocketAddr, timeout: Duration) -> Result<String, CallError> {
    let config = tls::client_config(None, Trust::Anything).map_err(config_error)?;
    let answer = one_shot(addr, config, METHOD_CA, &[], timeout).await?;
    String::from_utf8(answer)
        .map_err(|_| CallError::Io(format!("the CA certificate served by {addr} is not text")))
}

/// [`fetch_ca_insecure`] followed by the pinning step: the CA's digest must equal
/// `expected_digest` (the join token's), otherwise [`CallError::CaMismatch`].
pub async fn fetch_ca_pinned(
    addr: SocketAddr,
    expected_digest: &str,
    timeout: Duration,
) -> Result<String, CallError> {
    let ca = fetch_ca_insecure(addr, timeout).await?;
    let got = mesh_pki::ca_digest(&ca).map_err(|e| {
        CallError::Io(format!(
            "{addr} served something that is not a CA certificate: {e}"
        ))
    })?;
    if got != expected_digest {
        return Err(CallError::CaMismatch {
            addr,
            expected: expected_digest.to_owned(),
            got,
        });
    }
    Ok(ca)
}

/// Calls `method` on the node at `addr` without a client certificate (the server sees
/// [`Peer::Anonymous`]), verifying the server against `ca_cert_pem`. For a node that has not
/// joined yet; it opens and closes its own client endpoint.
pub async fn call_anonymous(
    addr: SocketAddr,
    ca_cert_pem: &str,
    method: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let config = tls::client_config(None, Trust::Ca(ca_cert_pem)).map_err(config_error)?;
    one_shot(addr, config, method, &body, timeout).await
}
