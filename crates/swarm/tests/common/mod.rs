//! A fake meshd control API for the CLI's integration tests: a real hyper HTTP/1.1
//! server on a temporary unix socket (or mutual-TLS TCP) that records every request and
//! answers from a handler, and a runner for the built `swarm` binary.

#![allow(dead_code)]
// Test support: a failure to set up the fake daemon is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_api::api::{ErrorBody, ErrorKind, Info, RaftInfo, RemoteManager};
use mesh_api::{
    Availability, ConnectRequest, ConnectResponse, Endpoint, EndpointOwner, ManagerStatus, Network,
    NetworkSpec, NetworkView, Node, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus,
    Reachability,
};
use tokio::sync::oneshot;

/// One request the fake daemon received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Body as text.
    pub body: String,
}

impl Recorded {
    /// `"POST /v1/swarm/init"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// Answers a request with a status and a JSON body.
pub type Handler = Arc<dyn Fn(&Recorded) -> (u16, String) + Send + Sync>;

enum Listener {
    Unix(std::os::unix::net::UnixListener),
    Tls(std::net::TcpListener, tokio_rustls::TlsAcceptor),
}

/// A running fake daemon; stops when dropped.
pub struct FakeDaemon {
    /// The `-H` value that reaches it.
    pub host: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl FakeDaemon {
    /// A fake daemon on a fresh unix socket, answering with `handler`.
    pub fn unix(handler: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("meshd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let host = format!("unix://{}", socket.display());
        Self::start(Listener::Unix(listener), host, Arc::new(handler), dir)
    }

    /// A fake daemon on 127.0.0.1 behind mutual TLS with `config`.
    pub fn tls(
        config: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = format!("tcp://{}", listener.local_addr().unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        Self::start(
            Listener::Tls(listener, acceptor),
            host,
            Arc::new(handler),
            dir,
        )
    }

    fn start(listener: Listener, host: String, handler: Handler, dir: tempfile::TempDir) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let recorded = requests.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                match listener {
                    Listener::Unix(l) => {
                        l.set_nonblocking(true).unwrap();
                        let l = tokio::net::UnixListener::from_std(l).unwrap();
                        loop {
                            tokio::select! {
                                _ = &mut stopped => break,
                                accepted = l.accept() => {
                                    let (stream, _) = accepted.unwrap();
                                    tokio::spawn(serve(TokioIo::new(stream), handler.clone(), recorded.clone()));
                                }
                            }
                        }
                    }
                    Listener::Tls(l, acceptor) => {
                        l.set_nonblocking(true).unwrap();
                        let l = tokio::net::TcpListener::from_std(l).unwrap();
                        loop {
                            tokio::select! {
                                _ = &mut stopped => break,
                                accepted = l.accept() => {
                                    let (stream, _) = accepted.unwrap();
                                    let (acceptor, handler, recorded) =
                                        (acceptor.clone(), handler.clone(), recorded.clone());
                                    tokio::spawn(async move {
                                        if let Ok(tls) = acceptor.accept(stream).await {
                                            serve(TokioIo::new(tls), handler, recorded).await;
                                        }
                                    });
                                }
                            }
                        }
                    }
                }
            });
        });
        FakeDaemon {
            host,
            requests,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// `METHOD URI` of every request received so far.
    pub fn lines(&self) -> Vec<String> {
        self.requests().iter().map(Recorded::line).collect()
    }

    /// Runs `swarm -H <this daemon> ARGS…`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["-H", self.host.as_str()];
        full.extend_from_slice(args);
        swarm(&full, &[])
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve<I>(io: I, handler: Handler, recorded: Arc<Mutex<Vec<Recorded>>>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        let recorded = recorded.clone();
        async move {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let rec = Recorded {
                method,
                uri,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let (status, answer) = handler(&rec);
            recorded.lock().unwrap().push(rec);
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer)))
                    .unwrap(),
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// Runs the built `swarm` binary with a clean environment for its own variables.
pub fn swarm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swarm"));
    cmd.args(args)
        .env_remove("SWARM_HOST")
        .env_remove("SWARM_CERT_PATH")
        .env_remove("SWARM_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// ID of the node the fake daemon runs on.
pub const SELF_ID: &str = "n1aaaaaaaaaaaaaaaaaaaaaaa";
/// A second manager.
pub const MANAGER2_ID: &str = "n2bbbbbbbbbbbbbbbbbbbbbbb";
/// Workers.
pub const WORKER9_ID: &str = "w9ccccccccccccccccccccccc";
pub const WORKER10_ID: &str = "w10dddddddddddddddddddddd";

fn node(id: &str, host: &str, manager: Option<(bool, Reachability)>) -> Node {
    let role = if manager.is_some() {
        NodeRole::Manager
    } else {
        NodeRole::Worker
    };
    Node {
        id: id.into(),
        version: 3,
        created_at: 1_714_566_600_000,
        updated_at: 1_714_566_600_000,
        spec: NodeSpec {
            labels: BTreeMap::new(),
            role,
            availability: Availability::Active,
        },
        description: NodeDescription {
            hostname: host.into(),
            os: "linux".into(),
            architecture: "x86_64".into(),
            engine_version: "0.1.0".into(),
            nano_cpus: 2_000_000_000,
            memory_bytes: 1 << 30,
        },
        status: NodeStatus {
            state: NodeState::Ready,
            message: String::new(),
            addr: "192.0.2.1".into(),
        },
        role,
        raft_id: 0,
        control_addr: "192.0.2.1:2377".into(),
        data_port: 51820,
        manager_status: manager.map(|(leader, reachability)| ManagerStatus {
            leader,
            reachability,
            addr: "192.0.2.1:2377".into(),
        }),
        cert_expiry: 0,
        network_keys: Default::default(),
    }
}

/// The cluster the fake daemon reports.
pub fn nodes() -> Vec<Node> {
    let mut w10 = node(WORKER10_ID, "worker10", None);
    w10.status.state = NodeState::Down;
    w10.spec.availability = Availability::Drain;
    w10.spec.labels.insert("zone".into(), "b".into());
    vec![
        w10,
        node(
            MANAGER2_ID,
            "manager2",
            Some((false, Reachability::Unreachable)),
        ),
        node(WORKER9_ID, "worker9", None),
        node(SELF_ID, "manager1", Some((true, Reachability::Reachable))),
    ]
}

/// What `GET /v1/info` returns.
pub fn info() -> Info {
    Info {
        version: "0.1.0".into(),
        local_node_state: "active".into(),
        node_id: SELF_ID.into(),
        hostname: "manager1".into(),
        node_addr: "192.0.2.1".into(),
        control_available: true,
        cluster_id: "c1eeeeeeeeeeeeeeeeeeeeeee".into(),
        managers: 2,
        nodes: 4,
        remote_managers: vec![RemoteManager {
            node_id: SELF_ID.into(),
            addr: "192.0.2.1:2377".into(),
        }],
        raft: Some(RaftInfo {
            id: 1,
            term: 2,
            leader: Some(1),
            leader_node_id: Some(SELF_ID.into()),
            last_log_index: 7,
            last_applied: 7,
            snapshot_index: 0,
            has_quorum: true,
        }),
        heartbeat_period_ms: 500,
        node_down_after_ms: 2_000,
        cert_expiry: 0,
        data_port: 51820,
        routing_mesh: None,
        error: String::new(),
    }
}

/// Networks of the fake cluster.
pub const NET_APP_ID: &str = "nwapp0000000000000000000a";
pub const NET_DB2_ID: &str = "nwdb20000000000000000000b";
pub const NET_DB10_ID: &str = "nwdb10000000000000000000c";
/// ID of the network `network create` makes.
pub const NET_NEW_ID: &str = "nwnew0000000000000000000d";
/// ID of the endpoint `network connect` makes.
pub const ENDPOINT_NEW_ID: &str = "epnew0000000000000000000e";
/// A WireGuard public key of a peer outside the cluster.
pub const PEER_KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
/// The serving node's WireGuard public key on `appnet`.
pub const NODE_WG_KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

fn network(id: &str, name: &str, subnet: &str, labels: &[(&str, &str)]) -> Network {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    let gateway = subnet.hosts().next().unwrap();
    Network {
        id: id.into(),
        version: 5,
        created_at: 1_714_566_600_000,
        updated_at: 1_714_566_600_000,
        spec: NetworkSpec {
            name: name.into(),
            driver: "overlay".into(),
            subnet: None,
            gateway: None,
            attachable: false,
            allow_overlap: false,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ingress: false,
        },
        subnet,
        gateway,
        mtu: 1440,
    }
}

/// The networks the fake daemon reports, in no particular order.
pub fn networks() -> Vec<NetworkView> {
    let mut app = network(NET_APP_ID, "appnet", "10.20.0.0/24", &[("tier", "web")]);
    app.spec.subnet = Some(app.subnet);
    app.spec.attachable = true;
    vec![
        NetworkView {
            network: network(NET_DB10_ID, "db10", "10.0.2.0/24", &[("tier", "db")]),
            endpoints: Vec::new(),
        },
        NetworkView {
            endpoints: vec![
                Endpoint {
                    id: "ep1aaaaaaaaaaaaaaaaaaaaaa".into(),
                    network_id: NET_APP_ID.into(),
                    node_id: SELF_ID.into(),
                    ip: "10.20.0.2".parse().unwrap(),
                    owner: EndpointOwner::Netns {
                        path: "/run/netns/blue".into(),
                        ifname: "eth0".into(),
                    },
                    created_at: 1_714_566_600_000,
                },
                Endpoint {
                    id: "ep2bbbbbbbbbbbbbbbbbbbbbb".into(),
                    network_id: NET_APP_ID.into(),
                    node_id: SELF_ID.into(),
                    ip: "10.20.0.3".parse().unwrap(),
                    owner: EndpointOwner::External {
                        public_key: PEER_KEY.into(),
                        endpoint: None,
                    },
                    created_at: 1_714_566_600_000,
                },
            ],
            network: app,
        },
        NetworkView {
            network: network(NET_DB2_ID, "db2", "10.0.1.0/24", &[]),
            endpoints: Vec::new(),
        },
    ]
}

/// A network by full ID or name, as the daemon would resolve it.
fn find_network(reference: &str) -> Option<NetworkView> {
    networks()
        .into_iter()
        .find(|v| v.network.id == reference || v.network.spec.name == reference)
}

fn no_network(reference: &str) -> (u16, String) {
    error(
        ErrorKind::NotFound,
        &format!("network {reference} not found"),
    )
}

/// An error answer.
pub fn error(kind: ErrorKind, message: &str) -> (u16, String) {
    let body = ErrorBody::new(kind, message);
    (kind.status(), serde_json::to_string(&body).unwrap())
}

fn ok<T: serde::Serialize>(value: &T) -> (u16, String) {
    (200, serde_json::to_string(value).unwrap())
}

/// A node by full ID or host name, as the daemon would resolve it.
fn find(reference: &str) -> Option<Node> {
    nodes()
        .into_iter()
        .find(|n| n.id == reference || n.description.hostname == reference)
}

/// A small model of meshd's API over the cluster of [`nodes`].
pub fn api(req: &Recorded) -> (u16, String) {
    let path = req.uri.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "info"]) => ok(&info()),
        ("GET", ["v1", "nodes"]) => ok(&nodes()),
        ("GET", ["v1", "nodes", n]) => match find(n) {
            Some(node) => ok(&node),
            None => error(ErrorKind::NotFound, &format!("no such node: {n}")),
        },
        ("POST", ["v1", "nodes", n, "update"]) => match find(n) {
            Some(node) => ok(&node),
            None => error(ErrorKind::NotFound, &format!("no such node: {n}")),
        },
        ("DELETE", ["v1", "nodes", n]) => match find(n) {
            Some(_) => (200, "{}".into()),
            None => error(ErrorKind::NotFound, &format!("no such node: {n}")),
        },
        ("POST", ["v1", "swarm", "init"]) => ok(&mesh_api::api::InitResponse {
            node_id: SELF_ID.into(),
            cluster_id: "c1eeeeeeeeeeeeeeeeeeeeeee".into(),
            worker_token: "SWMTKN-1-digest-workersecret".into(),
            manager_addr: "192.0.2.1:2377".into(),
        }),
        ("POST", ["v1", "swarm", "join"]) => ok(&mesh_api::api::JoinResponse {
            node_id: WORKER9_ID.into(),
            role: NodeRole::Manager,
        }),
        ("POST", ["v1", "swarm", "leave"]) => (200, "{}".into()),
        ("GET", ["v1", "swarm", "join-token", role]) => ok(&mesh_api::api::JoinTokenResponse {
            role: role.parse().unwrap(),
            token: format!("SWMTKN-1-digest-{role}secret"),
            manager_addr: "192.0.2.1:2377".into(),
        }),
        ("POST", ["v1", "swarm", "join-token", role, "rotate"]) => {
            ok(&mesh_api::api::JoinTokenResponse {
                role: role.parse().unwrap(),
                token: format!("SWMTKN-1-digest-{role}rotated"),
                manager_addr: "192.0.2.1:2377".into(),
            })
        }
        ("GET", ["v1", "networks"]) => ok(&networks()),
        ("POST", ["v1", "networks"]) => {
            let spec: NetworkSpec = req.json();
            if find_network(&spec.name).is_some() {
                return error(
                    ErrorKind::Conflict,
                    &format!("network with name {} already exists", spec.name),
                );
            }
            let mut n = network(
                NET_NEW_ID,
                &spec.name,
                &spec.subnet.map_or("10.0.3.0/24".into(), |s| s.to_string()),
                &[],
            );
            n.gateway = spec.gateway.unwrap_or(n.gateway);
            n.spec = spec;
            ok(&n)
        }
        ("GET", ["v1", "networks", n]) => match find_network(n) {
            Some(v) => ok(&v),
            None => no_network(n),
        },
        ("DELETE", ["v1", "networks", n]) => match find_network(n) {
            Some(_) => (200, "{}".into()),
            None => no_network(n),
        },
        ("POST", ["v1", "networks", n, "connect"]) => {
            let Some(v) = find_network(n) else {
                return no_network(n);
            };
            if !v.network.spec.attachable {
                return error(
                    ErrorKind::FailedPrecondition,
                    &format!("network {n} is not attachable; create it with --attachable"),
                );
            }
            let r: ConnectRequest = req.json();
            let wg = r.wg_public_key.is_some();
            let owner = match (&r.netns, &r.wg_public_key) {
                (Some(path), _) => EndpointOwner::Netns {
                    path: path.clone(),
                    ifname: r.ifname.clone().unwrap_or_else(|| "eth0".into()),
                },
                (None, key) => EndpointOwner::External {
                    public_key: key.clone().unwrap_or_default(),
                    endpoint: r.wg_endpoint,
                },
            };
            ok(&ConnectResponse {
                endpoint: Endpoint {
                    id: ENDPOINT_NEW_ID.into(),
                    network_id: v.network.id.clone(),
                    node_id: SELF_ID.into(),
                    ip: r.ip.unwrap_or_else(|| "10.20.0.4".parse().unwrap()),
                    owner,
                    created_at: 1_714_566_600_000,
                },
                subnet: v.network.subnet,
                gateway: v.network.gateway,
                mtu: v.network.mtu,
                node_public_key: wg.then(|| NODE_WG_KEY.to_string()),
                node_endpoint: wg.then(|| "192.0.2.1:51820".parse().unwrap()),
            })
        }
        ("POST", ["v1", "networks", n, "disconnect"]) => match find_network(n) {
            Some(_) => (200, "{}".into()),
            None => no_network(n),
        },
        _ => error(ErrorKind::NotFound, &format!("no route {}", req.line())),
    }
}

/// A temporary path where no daemon listens.
pub fn dead_socket() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nothing.sock");
    (dir, path)
}
