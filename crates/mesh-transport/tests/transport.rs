//! Real QUIC on 127.0.0.1 with real certificates from mesh-pki.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use mesh_api::NodeRole;
use mesh_pki::{CaMaterial, JoinToken, NodeKey, ca_digest, generate_root_ca, sign_node_cert};
use mesh_transport::{
    CallError, Handler, Identity, METHOD_CA, Peer, RemoteError, Transport, call_anonymous,
    fetch_ca_insecure, fetch_ca_pinned,
};

const CLUSTER: &str = "cluster1";
const T: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn identity_at(
    ca: &CaMaterial,
    node_id: &str,
    role: NodeRole,
    not_before: u64,
    validity: u64,
) -> Identity {
    let key = NodeKey::generate().unwrap();
    let cert = sign_node_cert(
        ca,
        &key.csr_pem().unwrap(),
        node_id,
        role,
        CLUSTER,
        not_before,
        validity,
    )
    .unwrap();
    Identity {
        ca_cert_pem: ca.cert_pem.clone(),
        cert_pem: cert,
        key_pem: key.key_pem(),
    }
}

fn identity(ca: &CaMaterial, node_id: &str, role: NodeRole) -> Identity {
    identity_at(ca, node_id, role, now_ms() - 60_000, 3_600_000)
}

/// Records who called what; answers a few test methods.
#[derive(Default)]
struct TestHandler {
    ca_pem: String,
    calls: Mutex<Vec<(Peer, String)>>,
}

impl TestHandler {
    fn new(ca: &CaMaterial) -> Arc<Self> {
        Arc::new(Self {
            ca_pem: ca.cert_pem.clone(),
            calls: Mutex::default(),
        })
    }

    fn calls(&self) -> Vec<(Peer, String)> {
        self.calls.lock().unwrap().clone()
    }
}

fn describe(peer: &Peer) -> String {
    match peer {
        Peer::Anonymous => "anonymous".into(),
        Peer::Node {
            node_id,
            role,
            cluster_id,
        } => format!("{node_id}/{role}/{cluster_id}"),
    }
}

impl Handler for TestHandler {
    fn handle(
        &self,
        peer: Peer,
        method: String,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, RemoteError>> {
        self.calls
            .lock()
            .unwrap()
            .push((peer.clone(), method.clone()));
        let ca = self.ca_pem.clone();
        async move {
            match method.as_str() {
                METHOD_CA => Ok(ca.into_bytes()),
                "whoami" => Ok(describe(&peer).into_bytes()),
                "echo" if peer != Peer::Anonymous => Ok(body),
                "echo" => Err(RemoteError::new(
                    "permission_denied",
                    "join the cluster first",
                )),
                "fail" => Err(RemoteError::new(
                    "not_leader",
                    String::from_utf8_lossy(&body).into_owned(),
                )),
                "sleep" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(Vec::new())
                }
                "panic" => panic!("handler bug"),
                other => Err(RemoteError::new("unknown_method", other.to_owned())),
            }
        }
        .boxed()
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn server(ca: &CaMaterial, node_id: &str) -> (Transport, Arc<TestHandler>) {
    let handler = TestHandler::new(ca);
    let t = Transport::bind(
        localhost(),
        identity(ca, node_id, NodeRole::Manager),
        handler.clone(),
    )
    .unwrap();
    (t, handler)
}

fn client(identity: Identity, ca: &CaMaterial) -> Transport {
    Transport::bind(localhost(), identity, TestHandler::new(ca)).unwrap()
}

async fn call(
    t: &Transport,
    addr: SocketAddr,
    method: &str,
    body: &[u8],
) -> Result<Vec<u8>, CallError> {
    t.call(addr, method, body.to_vec(), T).await
}

#[tokio::test]
async fn mtls_round_trip_and_peers() {
    let ca = generate_root_ca(CLUSTER).unwrap();
    let (a, handler) = server(&ca, "manager1");
    let b = client(identity(&ca, "worker1", NodeRole::Worker), &ca);

    let who = call(&b, a.local_addr(), "whoami", b"").await.unwrap();
    assert_eq!(who, b"worker1/worker/cluster1");
    let calls = handler.calls();
    assert_eq!(
        calls[0].0,
        Peer::Node {
            node_id: "worker1".into(),
            role: NodeRole::Worker,
            cluster_id: CLUSTER.into()
        }
    );

    // A large body (Raft snapshot sized) round-trips on the same cached connection.
    let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let echoed = call(&b, a.local_addr(), "echo", &big).await.unwrap();
    assert_eq!(echoed, big);

    // Concurrent calls share the connection.
    let calls: Vec<_> = (0..20u8)
        .map(|i| {
            let b = b.clone();
            let addr = a.local_addr();
            tokio::spawn(async move { b.call(addr, "echo", vec![i], T).await })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.unwrap().unwrap(), vec![i as u8]);
    }

    // The client sees the server's identity.
    let server_peer = b.remote_peer(a.local_addr(), T).await.unwrap();
    assert_eq!(
        server_peer,
        Peer::Node {
            node_id: "manager1".into(),
            role: NodeRole::Manager,
            cluster_id: CLUSTER.into()
        }
    );
    assert!(server_peer.is_manager());

    // Calls work in the other direction too: every transport is a server.
    let who = call(&a, b.local_addr(), "whoami", b"").await.unwrap();
    assert_eq!(who, b"manager1/manager/cluster1");
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn client_with_foreign_certificate_is_refused() {
    let ca = generate_root_ca(CLUSTER).unwrap();
    let foreign = generate_root_ca(CLUSTER).unwrap();
    let (a, handler) = server(&ca, "manager1");
    // The intruder trusts our CA (so it accepts the server) but its own certificate comes from
    // another CA.
    let mut intruder = identity(&foreign, "intruder", NodeRole::Manager);
    intruder.ca_cert_pem = format!("{}{}", foreign.cert_pem, ca.cert_pem);
    let c = client(intruder, &foreign);
    let err = call(&c, a.local_addr(), "whoami", b"").await.unwrap_err();
    assert!(matches!(err, CallError::Connect(_)), "{err:?}");
    assert!(handler.calls().is_empty(), "the handler must never run");

    // And a server from a foreign CA is refused by our clients.
    let (f, f_handler) = server(&foreign, "fake-manager");
    let b = client(identity(&ca, "worker1", NodeRole::Worker), &ca);
    let err = call(&b, f.local_addr(), "whoami", b"").await.unwrap_err();
    assert!(matches!(err, CallError::Connect(_)), "{err:?}");
    assert!(f_handler.calls().is_empty());
}

#[tokio::test]
async fn anonymous_client_is_seen_as_anonymous() {
    let ca = generate_root_ca(CLUSTER).unwrap();
    let (a, handler) = server(&ca, "manager1");
    let who = call_anonymous(a.local_addr(), &ca.cert_pem, "whoami", Vec::new(), T)
        .await
        .unwrap();
    assert_eq!(who, b"anonymous");
    assert_eq!(handler.calls()[0].0, Peer::Anonymous);
    // The handler decides what anonymous callers may do.
    let err = call_anonymous(a.local_addr(), &ca.cert_pem, "echo", b"x".to_vec(), T)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CallError::Remote(RemoteError::new(
            "permission_denied",
            "join the cluster first"
        ))
    );
    // An anonymous caller still verifies the server against the CA it was given.
    let other = generate_root_ca(CLUSTER).unwrap();
    let err = call_anonymous(a.local_addr(), &other.cert_pem, "whoami", Vec::new(), T)
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Connect(_)), "{err:?}");
    let err = call_anonymous(a.local_addr(), "not a pem", "whoami", Vec::new(), T)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ca_cert_pem"), "{err}");
}

#[tokio::test]
async fn fetch_ca_then_pin_with_the_token_digest() {
    let ca = generate_root_ca(CLUSTER).unwrap();
    let (a, handler) = server(&ca, "manager1");
    let token: JoinToken = JoinToken::generate(&ca.digest).to_string().parse().unwrap();

    let fetched = fetch_ca_insecure(a.local_addr(), T).await.unwrap();
    assert_eq!(fetched, ca.cert_pem);
    assert_eq!(ca_digest(&fetched).unwrap(), token.digest);
    assert_eq!(handler.calls()[0], (Peer::Anonymous, METHOD_CA.to_owned()));

    let pinned = fetch_ca_pinned(a.local_addr(), &token.digest, T)
        .await
        .unwrap();
    assert_eq!(pinned, ca.cert_pem);

    // A server of another cluster (a man in the middle) is caught by the pin.
    let other = generate_root_ca(CLUSTER).unwrap();
    let (m, _) = server(&other, "mitm");
    let err = fetch_ca_pinned(m.local_addr(), &token.digest, T)
        .await
        .unwrap_err();
    match err {
        CallError::CaMismatch { expected, got, .. } => {
            assert_eq!(expected, token.digest);
            assert_eq!(got, other.digest);
        }
        other => panic!("expected a CA mismatch, got {other:?}"),
    }

    // Then the join request goes to the pinned manager anonymously.
    let who = call_anonymous(a.local_addr(), &pinned, "whoami", Vec::new(), T)
        .await
        .unwrap();
    assert_eq!(who, b"anonymous");
}

#[tokio::test]
async fn remote_errors_come_back_intact() {
    let ca = generate_root_ca(CLUSTER).unwrap();
    let (a, _) = server(&ca, "manager1");
    let b = client(identity(&ca, "worker1", NodeRole::Worker), &ca);
    let err = call(&b, a.local_addr(), "fail", "leader is node ü-7".as_bytes())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CallError::Remote(RemoteError {
            code: "not_leader".into(),
            message: "leader is node ü-7".into()
        })
    );
    let err = call(&b, a.local_addr(), "nope", b"").await.unwrap_err();
    assert_eq!(
        err,
        CallError::Remote(RemoteError::new("unknown_method", "nope"))
    );
    // A panicking handler answers `internal`, and the connection keeps working.
    match call(&b, a.local_addr(), "panic", b"").await.unwrap_err() {
        CallError::Remote(e) => assert_eq!(e.code, "internal"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert_eq!(
        call(&b, a.local_addr(), "echo", b"ok").await.unwrap(),
        b"ok"
    );
    // Bad requests are refused locally.
    let err = call(&b, a.local_addr(), "", b"").await.unwrap_err();
    assert!(matches!(err, CallError::Io(_)), "{err:?}");
}

/// Binds on `addr`, retrying while the previous endpoint's socket is being released.
async fn rebind(addr: SocketAddr, identity: Identity, handler: Arc<TestHandler>) -> Transport {
    let mut last = None;
    for _ in 0..100 {
        match Transport::bind(addr, identity.clone(), handler.clone()) {
            Ok(t) => return t,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot rebind {addr}: {last:?}");
}

#[tokio::test]
async fn graceful_server_restart_replaces_the_cached_connection() {
    let ca = generate_root_ca(CLUSTER).unwrap();
    let server_id = identity(&ca, "manager1", NodeRole::Manager);
    let handler = TestHandler::new(&ca);
    let a = Transport::bind(localhost(), server_id.clone(), handler.clone()).unwrap();
    let addr = a.local_addr();
    let b = client(identity(&ca, "worker1", NodeRole::Worker), &ca);
    assert_eq!(call(&b, addr, "echo", b"1").await.unwrap(), b"1");

    a.close().await;
    drop(a);
    let handler2 = TestHandler::new(&ca);
    let a2 = rebind(addr, server_id, handler2.clone()).await;
    assert_eq!(call(&b, addr, "echo", b"2").await.unwrap(), b"2");
    assert_eq!(handler2.calls().len(), 1);
    a2.close().await;
}

/// Runs a server on its own runtime; dropping the runtime kills it without a goodbye, like a
/// crashed process.
fn crashable_server(
    addr: SocketAddr,
    identity: Identity,
    handler: Arc<TestHandler>,
) -> (
    SocketAddr,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let t = rt.block_on(async { Transport::bind(addr, identity, handler).unwrap() });
        addr_tx.send(t.local_addr()).unwrap();
        let _ = stop_rx.recv();
        drop(rt);
        drop(t);
    });
    (addr_rx.recv().unwrap(), stop_tx, thread)
}

#[tokio::test]
async fn crashed_server_restart_replaces_the_cached_connection() {
    let ca = generate_root_ca(CLUSTER).unwrap();
    let server_id = identity(&ca, "manager1", NodeRole::Manager);
    let (addr, stop, thread) =
        crashable_server(localhost(), server_id.clone(), TestHandler::new(&ca));
    let b = client(identity(&ca, "worker1", NodeRole::Worker), &ca);
    assert_eq!(call(&b, addr, "echo", b"1").await.unwrap(), b"1");

    stop.send(()).unwrap();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    let handler2 = TestHandler::new(&ca);
    let a2 = rebind(addr, server_id, handler2.clone()).await;
    // The cached connection is dead (reset by the new server, or timed out): the call
    // reconnects once and succeeds.
    assert_eq!(call(&b, addr, "echo", b"2").await.unwrap(), b"2");
    assert_eq!(handler2.calls().len(), 1);
    a2.close().await;
}

#[tokio::test]
async fn crashed_server_back_with_a_new_key_is_reconnected_once() {
    let ca = generate_root_ca(CLUSTER).unwrap();
    let (addr, stop, thread) = crashable_server(
        localhost(),
        identity(&ca, "manager1", NodeRole::Manager),
        TestHandler::new(&ca),
    );
    let b = client(identity(&ca, "worker1", NodeRole::Worker), &ca);
    assert_eq!(call(&b, addr, "echo", b"1").await.unwrap(), b"1");

    stop.send(()).unwrap();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    // A new key: the new server cannot reset the old connection, which looks alive until the
    // idle timeout. The call finds it dead, reconnects once and succeeds.
    let handler2 = TestHandler::new(&ca);
    let a2 = rebind(
        addr,
        identity(&ca, "manager1", NodeRole::Manager),
        handler2.clone(),
    )
    .await;
    assert_eq!(call(&b, addr, "echo", b"2").await.unwrap(), b"2");
    assert_eq!(handler2.calls().len(), 1);
    a2.close().await;
}

#[tokio::test]
async fn set_identity_with_a_renewed_certificate() {
    let ca = generate_root_ca(CLUSTER).unwrap();
    let now = now_ms();
    // The server's certificate has expired: clients refuse it.
    let expired = identity_at(&ca, "manager1", NodeRole::Manager, now - 20_000, 10_000);
    let handler = TestHandler::new(&ca);
    let a = Transport::bind(localhost(), expired, handler.clone()).unwrap();
    let b = client(identity(&ca, "worker1", NodeRole::Worker), &ca);
    let err = call(&b, a.local_addr(), "whoami", b"").await.unwrap_err();
    assert!(matches!(err, CallError::Connect(_)), "{err:?}");
    // Renewed in place, without rebinding.
    a.set_identity(identity(&ca, "manager1", NodeRole::Manager))
        .unwrap();
    assert_eq!(
        call(&b, a.local_addr(), "whoami", b"").await.unwrap(),
        b"worker1/worker/cluster1"
    );

    // The client is promoted: its next calls carry the new certificate.
    b.set_identity(identity(&ca, "worker1", NodeRole::Manager))
        .unwrap();
    assert_eq!(
        call(&b, a.local_addr(), "whoami", b"").await.unwrap(),
        b"worker1/manager/cluster1"
    );

    // A client whose certificate expired is refused until it renews.
    let c = client(
        identity_at(&ca, "worker2", NodeRole::Worker, now - 20_000, 10_000),
        &ca,
    );
    let before = handler.calls().len();
    assert!(call(&c, a.local_addr(), "whoami", b"").await.is_err());
    assert_eq!(handler.calls().len(), before);
    c.set_identity(identity(&ca, "worker2", NodeRole::Worker))
        .unwrap();
    assert_eq!(
        call(&c, a.local_addr(), "whoami", b"").await.unwrap(),
        b"worker2/worker/cluster1"
    );

    // An identity that does not hold together is refused and the old one stays.
    let mut broken = identity(&ca, "worker2", NodeRole::Worker);
    broken.key_pem = NodeKey::generate().unwrap().key_pem();
    assert!(c.set_identity(broken).is_err());
    assert!(call(&c, a.local_addr(), "whoami", b"").await.is_ok());
}

#[tokio::test]
async fn timeouts_are_reported_as_timeout() {
    let ca = generate_root_ca(CLUSTER).unwrap();
    let (a, _) = server(&ca, "manager1");
    let b = client(identity(&ca, "worker1", NodeRole::Worker), &ca);
    let err = b
        .call(
            a.local_addr(),
            "sleep",
            Vec::new(),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert_eq!(err, CallError::Timeout);
    // The connection is still usable afterwards.
    assert_eq!(call(&b, a.local_addr(), "echo", b"x").await.unwrap(), b"x");

    // Nobody listening: the handshake never completes.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = b
        .call(
            silent.local_addr().unwrap(),
            "echo",
            Vec::new(),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert_eq!(err, CallError::Timeout);
}

#[tokio::test]
async fn bad_identity_is_refused_at_bind() {
    let ca = generate_root_ca(CLUSTER).unwrap();
    let other = generate_root_ca(CLUSTER).unwrap();
    let mut id = identity(&ca, "n1", NodeRole::Worker);
    id.ca_cert_pem = other.cert_pem.clone();
    let err = Transport::bind(localhost(), id, TestHandler::new(&ca)).unwrap_err();
    assert!(err.to_string().contains("cert_pem"), "{err}");

    let taken = Transport::bind(
        localhost(),
        identity(&ca, "n1", NodeRole::Worker),
        TestHandler::new(&ca),
    )
    .unwrap();
    let err = Transport::bind(
        taken.local_addr(),
        identity(&ca, "n2", NodeRole::Worker),
        TestHandler::new(&ca),
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
}
