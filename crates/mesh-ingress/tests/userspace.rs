//! The userspace data path against real sockets, namespaces, veths, a bridge and nftables.
//! These tests need root; without it they say so and pass. Every namespace they make is named
//! `mi<pid>-…` and removed by a guard, also when a test fails. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mesh_ingress::userspace::{ADDR_TAG, NFT_TABLE, UserspaceConfig, UserspaceMesh};
use mesh_ingress::{Backend, Egress, Listener, MeshPlan, Proto, VipSandbox, VipService};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
    };
}

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {WAIT:?}"),
    }
}

/// Polls `cond` until it holds, for at most [`WAIT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    bounded(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .expect("run a command");
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `args` inside the network namespace `ns` (that namespace only); its success and stdout.
fn try_in(ns: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .expect("run nsenter");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn in_ns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    mesh_sandbox::run_in_netns(ns, f).expect("run in a namespace")
}

/// The namespaces of one test, removed when dropped (also on panic).
struct Lab {
    tag: String,
    names: Vec<String>,
}

impl Lab {
    fn new(tag: &str) -> Self {
        Lab {
            tag: tag.to_owned(),
            names: Vec::new(),
        }
    }

    fn name(&self, role: &str) -> String {
        format!("mi{}-{}-{role}", std::process::id(), self.tag)
    }

    /// A new namespace with `lo` up.
    fn ns(&mut self, role: &str) -> PathBuf {
        let name = self.name(role);
        self.names.push(name.clone());
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        mesh_sandbox::netns_path(&name)
    }

    /// Registers a namespace made by someone else for removal.
    fn adopt(&mut self, role: &str) -> (String, PathBuf) {
        let name = self.name(role);
        self.names.push(name.clone());
        let path = mesh_sandbox::netns_path(&name);
        (name, path)
    }

    /// A veth pair `a_if` in `a` (with `a_addr`) ⇄ `b_if` in `b` (with `b_addr`), both up.
    fn veth(&self, a: &Path, a_if: &str, a_addr: &str, b: &Path, b_if: &str, b_addr: &str) {
        let a_name = a.file_name().unwrap().to_str().unwrap();
        let b_name = b.file_name().unwrap().to_str().unwrap();
        run(
            "ip",
            &[
                "-n", a_name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns",
                b_name,
            ],
        );
        run("ip", &["-n", a_name, "addr", "add", a_addr, "dev", a_if]);
        run("ip", &["-n", b_name, "addr", "add", b_addr, "dev", b_if]);
        run("ip", &["-n", a_name, "link", "set", a_if, "up"]);
        run("ip", &["-n", b_name, "link", "set", b_if, "up"]);
    }

    fn ip(&self, ns: &Path, args: &[&str]) {
        let name = ns.file_name().unwrap().to_str().unwrap();
        let mut all = vec!["-n", name];
        all.extend_from_slice(args);
        run("ip", &all);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            if let Err(e) = mesh_sandbox::delete_sandbox(name) {
                eprintln!("cleanup of {name} failed: {e}");
            }
        }
    }
}

fn start_mesh(home: &Path, cfg: UserspaceConfig) -> UserspaceMesh {
    in_ns(home, move || UserspaceMesh::start(cfg)).expect("start the mesh")
}

fn test_cfg() -> UserspaceConfig {
    UserspaceConfig {
        workers: 2,
        connect_timeout: Duration::from_millis(300),
        ..UserspaceConfig::default()
    }
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

/// Applies a plan from a blocking thread and checks that all of it was applied.
async fn apply_ok(mesh: &Arc<UserspaceMesh>, plan: MeshPlan) {
    let m = Arc::clone(mesh);
    let report = tokio::task::spawn_blocking(move || m.apply(&plan))
        .await
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
}

// ---------------------------------------------------------------------------------------------
// Backends

/// A TCP listener bound in namespace `ns`.
fn listen_in(ns: &Path, addr: SocketAddrV4) -> TcpListener {
    let l = in_ns(ns, move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok::<_, io::Error>(l)
    })
    .expect("bind a backend");
    TcpListener::from_std(l).unwrap()
}

/// A backend that answers each connection with `<name> <local port> <peer>\n`, then echoes
/// everything until EOF, then closes its side.
fn name_server(ns: &Path, port: u16, name: &str) -> JoinHandle<()> {
    let l = listen_in(ns, sa([0, 0, 0, 0], port));
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = l.accept().await else {
                return;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let local = s.local_addr().unwrap();
                let (mut r, mut w) = s.into_split();
                let hello = format!("{name} {} {peer}\n", local.port());
                if w.write_all(hello.as_bytes()).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    })
}

/// A backend that reads a PROXY v2 header and answers `src=<addr> dst=<addr>\n`.
fn proxy_server(ns: &Path, port: u16) -> JoinHandle<()> {
    let l = listen_in(ns, sa([0, 0, 0, 0], port));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut h = [0u8; 28];
                if s.read_exact(&mut h).await.is_err() {
                    return;
                }
                let answer = if h[..12] == *b"\r\n\r\n\0\r\nQUIT\n"
                    && h[12] == 0x21
                    && h[13] == 0x11
                    && u16::from_be_bytes([h[14], h[15]]) == 12
                {
                    let src = sa(
                        [h[16], h[17], h[18], h[19]],
                        u16::from_be_bytes([h[24], h[25]]),
                    );
                    let dst = sa(
                        [h[20], h[21], h[22], h[23]],
                        u16::from_be_bytes([h[26], h[27]]),
                    );
                    format!("src={src} dst={dst}\n")
                } else {
                    format!("bad header {h:02x?}\n")
                };
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    })
}

/// A backend that says `bye\n`, closes its sending side at once, then reads until EOF and
/// reports what it read.
fn closer_server(ns: &Path, port: u16) -> (JoinHandle<()>, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let l = listen_in(ns, sa([0, 0, 0, 0], port));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = s.write_all(b"bye\n").await;
                let _ = s.shutdown().await;
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = tx.send(got).await;
            });
        }
    });
    (task, rx)
}

/// A UDP backend answering each datagram with `<name>:<datagram>`.
fn udp_name_server(ns: &Path, port: u16, name: &str) -> JoinHandle<()> {
    let s = in_ns(ns, move || {
        let s = std::net::UdpSocket::bind(sa([0, 0, 0, 0], port))?;
        s.set_nonblocking(true)?;
        Ok::<_, io::Error>(s)
    })
    .unwrap();
    let s = UdpSocket::from_std(s).unwrap();
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = s.recv_from(&mut buf).await else {
                return;
            };
            let mut answer = format!("{name}:").into_bytes();
            answer.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&answer, from).await;
        }
    })
}

struct Servers(Vec<JoinHandle<()>>);

impl Drop for Servers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

async fn connect_from(ns: &Path, addr: SocketAddrV4) -> io::Result<TcpStream> {
    let sock = in_ns(ns, TcpSocket::new_v4)?;
    bounded("connect", sock.connect(SocketAddr::V4(addr))).await
}

/// Connects and reads the backend's first line.
async fn hello(ns: &Path, addr: SocketAddrV4) -> (BufReader<TcpStream>, String) {
    let s = connect_from(ns, addr).await.expect("connect");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    bounded("first line", r.read_line(&mut line)).await.unwrap();
    (r, line.trim_end().to_owned())
}

/// The backend name of a first line `<name> <port> <peer>`.
fn who(line: &str) -> &str {
    line.split(' ').next().unwrap_or("")
}

/// Whether the connection is reset (or closed) before any byte comes.
async fn is_refused(ns: &Path, addr: SocketAddrV4) -> bool {
    let Ok(mut s) = connect_from(ns, addr).await else {
        return true;
    };
    let mut b = [0u8; 1];
    matches!(bounded("read", s.read(&mut b)).await, Err(_) | Ok(0))
}

fn fnv(hash: &mut u64, data: &[u8]) {
    for b in data {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
}

// ---------------------------------------------------------------------------------------------
// Published TCP

/// client (c) ⇄ host (h, the mesh) ; egress (e) ⇄ backends b1..bN.
struct PublishedLab {
    /// Removes the namespaces when the test ends.
    _lab: Lab,
    client: PathBuf,
    host: PathBuf,
    egress: PathBuf,
    backends: Vec<PathBuf>,
}

/// The host address the client reaches; the egress source address; backend `i`'s address.
const HOST: [u8; 4] = [10, 77, 0, 1];
const CLIENT: [u8; 4] = [10, 77, 0, 2];
const SOURCE: [u8; 4] = [10, 78, 0, 1];

fn backend_ip(i: usize) -> [u8; 4] {
    [10, 78, u8::try_from(i).unwrap() + 1, 2]
}

fn published_lab(tag: &str, n_backends: usize) -> PublishedLab {
    let mut lab = Lab::new(tag);
    let client = lab.ns("c");
    let host = lab.ns("h");
    let egress = lab.ns("e");
    lab.veth(
        &host,
        "eth0",
        "10.77.0.1/24",
        &client,
        "eth0",
        "10.77.0.2/24",
    );
    lab.ip(&egress, &["addr", "add", "10.78.0.1/32", "dev", "lo"]);
    let mut backends = Vec::new();
    for i in 0..n_backends {
        let b = lab.ns(&format!("b{}", i + 1));
        let [_, _, net, _] = backend_ip(i);
        lab.veth(
            &egress,
            &format!("vb{}", i + 1),
            &format!("10.78.{net}.1/24"),
            &b,
            "eth0",
            &format!("10.78.{net}.2/24"),
        );
        lab.ip(
            &b,
            &["route", "add", "default", "via", &format!("10.78.{net}.1")],
        );
        backends.push(b);
    }
    PublishedLab {
        _lab: lab,
        client,
        host,
        egress,
        backends,
    }
}

impl PublishedLab {
    fn listener(
        &self,
        proto: Proto,
        port: u16,
        service: &str,
        backends: &[SocketAddrV4],
    ) -> Listener {
        Listener {
            proto,
            port,
            service: service.into(),
            egress: Egress {
                netns: self.egress.clone(),
                source: Some(Ipv4Addr::from(SOURCE)),
            },
            backends: backends
                .iter()
                .map(|a| Backend {
                    addr: *a,
                    node: None,
                })
                .collect(),
            proxy_protocol: false,
        }
    }
}

fn plan(listeners: Vec<Listener>) -> MeshPlan {
    MeshPlan {
        listeners,
        vips: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_round_robin_transfer_and_half_close() {
    require_root!();
    let lab = published_lab("rr", 3);
    let _servers = Servers(
        (0..3)
            .map(|i| name_server(&lab.backends[i], 8080, &format!("b{}", i + 1)))
            .collect(),
    );
    let (closer, mut closed_rx) = closer_server(&lab.backends[0], 7070);
    let _closer = Servers(vec![closer]);
    let mesh = Arc::new(start_mesh(&lab.host, test_cfg()));
    let backends: Vec<SocketAddrV4> = (0..3).map(|i| sa(backend_ip(i), 8080)).collect();
    apply_ok(
        &mesh,
        plan(vec![
            lab.listener(Proto::Tcp, 80, "web", &backends),
            lab.listener(Proto::Tcp, 70, "closer", &[sa(backend_ip(0), 7070)]),
        ]),
    )
    .await;
    assert_eq!(mesh.stats().listeners, 2);
    let published = sa(HOST, 80);

    // 9 connections: each backend 3 times, in turn; the backend sees the egress source.
    let mut names = Vec::new();
    for _ in 0..9 {
        let (_, line) = hello(&lab.client, published).await;
        let peer = line.split(' ').nth(2).unwrap().to_owned();
        assert!(peer.starts_with("10.78.0.1:"), "backend saw {peer}");
        names.push(who(&line).to_owned());
    }
    assert_eq!(
        names,
        ["b1", "b2", "b3", "b1", "b2", "b3", "b1", "b2", "b3"],
        "{names:?}"
    );

    // 64 MiB up and back down through one relay, intact.
    let (r, _) = hello(&lab.client, published).await;
    let stream = r.into_inner();
    let (mut rd, mut wr) = stream.into_split();
    const TOTAL: usize = 64 << 20;
    let writer = tokio::spawn(async move {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut chunk = vec![0u8; 1 << 16];
        let mut sent = 0;
        while sent < TOTAL {
            for w in chunk.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            fnv(&mut hash, &chunk);
            wr.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        wr.shutdown().await.unwrap();
        hash
    });
    let reader = tokio::spawn(async move {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            fnv(&mut hash, &buf[..n]);
            got += n;
        }
        (got, hash)
    });
    let (sent_hash, (got, got_hash)) = bounded("64 MiB echo", async {
        (writer.await.unwrap(), reader.await.unwrap())
    })
    .await;
    assert_eq!(got, TOTAL);
    assert_eq!(got_hash, sent_hash, "the data came back altered");

    // Half-close from the client: the backend still answers after the client's FIN.
    let (mut r, _) = hello(&lab.client, published).await;
    r.get_mut().write_all(b"after fin\n").await.unwrap();
    r.get_mut().shutdown().await.unwrap();
    let mut rest = String::new();
    bounded("echo after FIN", r.read_to_string(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, "after fin\n");

    // Half-close from the backend: the client still sends after the backend's FIN.
    let (mut r, line) = hello(&lab.client, sa(HOST, 70)).await;
    assert_eq!(line, "bye");
    let mut rest = Vec::new();
    bounded("EOF from backend", r.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
    r.get_mut().write_all(b"still talking").await.unwrap();
    r.get_mut().shutdown().await.unwrap();
    let got = bounded("closer's report", closed_rx.recv()).await.unwrap();
    assert_eq!(got, b"still talking");

    drop(r);
    wait_until("relays end", || mesh.stats().tcp_relays == 0).await;
    assert!(mesh.stats().tcp_accepted >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_plan_change_keeps_open_connections() {
    require_root!();
    let lab = published_lab("chg", 3);
    let _servers = Servers(
        (0..3)
            .map(|i| name_server(&lab.backends[i], 8080, &format!("b{}", i + 1)))
            .collect(),
    );
    let mesh = Arc::new(start_mesh(&lab.host, test_cfg()));
    let all: Vec<SocketAddrV4> = (0..3).map(|i| sa(backend_ip(i), 8080)).collect();
    apply_ok(&mesh, plan(vec![lab.listener(Proto::Tcp, 80, "web", &all)])).await;
    let published = sa(HOST, 80);

    let (mut open, line) = hello(&lab.client, published).await;
    assert_eq!(who(&line), "b1");

    // b1 leaves the rotation: the open connection lives on, new ones never go there.
    let m = Arc::clone(&mesh);
    let without_b1 = plan(vec![lab.listener(Proto::Tcp, 80, "web", &all[1..])]);
    let report = tokio::task::spawn_blocking(move || m.apply(&without_b1))
        .await
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(
        report.updated,
        vec!["port 80/tcp for service web".to_owned()]
    );
    for _ in 0..4 {
        let (_, line) = hello(&lab.client, published).await;
        assert_ne!(who(&line), "b1", "a removed backend got a new connection");
    }
    open.get_mut().write_all(b"ping 1\n").await.unwrap();
    let mut echo = String::new();
    bounded("echo", open.read_line(&mut echo)).await.unwrap();
    assert_eq!(echo, "ping 1\n");

    // The port leaves the plan: it is closed, the open connection still lives.
    apply_ok(&mesh, plan(vec![])).await;
    assert_eq!(mesh.stats().listeners, 0);
    assert!(
        connect_from(&lab.client, published).await.is_err(),
        "port still open"
    );
    open.get_mut().write_all(b"ping 2\n").await.unwrap();
    let mut echo = String::new();
    bounded("echo", open.read_line(&mut echo)).await.unwrap();
    assert_eq!(echo, "ping 2\n");
    // The connections that the client closed end on their own; the open one stays.
    wait_until("only the open relay is left", || {
        mesh.stats().tcp_relays == 1
    })
    .await;

    // Shutdown ends the relays.
    let m = Arc::into_inner(mesh).expect("one handle left");
    tokio::task::spawn_blocking(move || m.shutdown())
        .await
        .unwrap();
    let mut rest = Vec::new();
    let end = bounded("relay end at shutdown", open.read_to_end(&mut rest)).await;
    assert!(end.is_err() || rest.is_empty(), "{end:?} {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_passive_health_and_reset() {
    require_root!();
    let lab = published_lab("hc", 3);
    // b1 and b3 serve; b2 refuses (nothing on the port); 10.78.1.77 never answers ARP
    // (connect timeout); 10.78.9.9 has no route.
    let _servers = Servers(vec![
        name_server(&lab.backends[0], 8080, "b1"),
        name_server(&lab.backends[2], 8080, "b3"),
    ]);
    let mesh = Arc::new(start_mesh(&lab.host, test_cfg()));
    let backends = vec![
        sa(backend_ip(0), 8080),
        sa(backend_ip(1), 8080),
        sa([10, 78, 1, 77], 8080),
        sa([10, 78, 9, 9], 8080),
        sa(backend_ip(2), 8080),
    ];
    apply_ok(
        &mesh,
        plan(vec![
            lab.listener(Proto::Tcp, 80, "web", &backends),
            lab.listener(Proto::Tcp, 81, "down", &[sa(backend_ip(1), 8080)]),
            lab.listener(Proto::Tcp, 82, "empty", &[]),
        ]),
    )
    .await;
    let mut served = Vec::new();
    for _ in 0..8 {
        let (_, line) = hello(&lab.client, sa(HOST, 80)).await;
        served.push(who(&line).to_owned());
    }
    assert!(served.iter().all(|n| n == "b1" || n == "b3"), "{served:?}");
    assert!(served.contains(&"b1".to_owned()) && served.contains(&"b3".to_owned()));
    assert!(mesh.stats().backend_failures >= 3, "{:?}", mesh.stats());

    // Every backend fails, or there is none: the client is reset.
    assert!(is_refused(&lab.client, sa(HOST, 81)).await);
    assert!(is_refused(&lab.client, sa(HOST, 82)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_protocol_carries_the_client() {
    require_root!();
    let lab = published_lab("pp", 1);
    let _servers = Servers(vec![proxy_server(&lab.backends[0], 7000)]);
    let mesh = Arc::new(start_mesh(&lab.host, test_cfg()));
    let mut l = lab.listener(Proto::Tcp, 9000, "pp", &[sa(backend_ip(0), 7000)]);
    l.proxy_protocol = true;
    apply_ok(&mesh, plan(vec![l])).await;
    let s = connect_from(&lab.client, sa(HOST, 9000)).await.unwrap();
    let me = s.local_addr().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    bounded("PROXY answer", r.read_line(&mut line))
        .await
        .unwrap();
    assert_eq!(line, format!("src={me} dst=10.77.0.1:9000\n"));
    assert_eq!(me.ip(), std::net::IpAddr::V4(Ipv4Addr::from(CLIENT)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_change_nothing_and_failures_are_per_item() {
    require_root!();
    let lab = published_lab("bad", 1);
    let _servers = Servers(vec![name_server(&lab.backends[0], 8080, "b1")]);
    let mesh = Arc::new(start_mesh(&lab.host, test_cfg()));
    let b = [sa(backend_ip(0), 8080)];
    apply_ok(&mesh, plan(vec![lab.listener(Proto::Tcp, 80, "web", &b)])).await;
    let before = mesh.stats();

    // Invalid plans are refused whole.
    let twice = plan(vec![
        lab.listener(Proto::Tcp, 8081, "a", &b),
        lab.listener(Proto::Tcp, 8081, "b", &b),
    ]);
    let report = mesh.apply(&twice);
    let e = report.refused.as_ref().expect("refused").to_string();
    assert!(
        e.contains("listeners[8081/tcp].port") && e.contains("a and b"),
        "{e}"
    );
    assert!(report.opened.is_empty() && report.closed.is_empty());
    let mut port0 = lab.listener(Proto::Tcp, 0, "zero", &b);
    port0.port = 0;
    let report = mesh.apply(&plan(vec![port0]));
    assert!(report.refused.is_some());
    let mut udp_pp = lab.listener(Proto::Udp, 53, "dns", &b);
    udp_pp.proxy_protocol = true;
    assert!(mesh.apply(&plan(vec![udp_pp])).refused.is_some());
    assert_eq!(mesh.stats(), before);
    let (_, line) = hello(&lab.client, sa(HOST, 80)).await;
    assert_eq!(who(&line), "b1", "the old plan still serves");
    assert!(connect_from(&lab.client, sa(HOST, 8081)).await.is_err());

    // A port taken by someone else fails alone; the rest is applied.
    let squatter = in_ns(&lab.host, || std::net::TcpListener::bind("0.0.0.0:2222")).unwrap();
    let mut missing = lab.listener(Proto::Tcp, 3333, "lost", &b);
    missing.egress.netns = PathBuf::from("/var/run/netns/mi-no-such-namespace");
    let report = mesh.apply(&plan(vec![
        lab.listener(Proto::Tcp, 80, "web", &b),
        lab.listener(Proto::Tcp, 2222, "clash", &b),
        lab.listener(Proto::Tcp, 8082, "fine", &b),
        missing,
    ]));
    assert!(report.refused.is_none());
    assert_eq!(report.failures.len(), 2, "{report:?}");
    let clash = report.failures[0].to_string();
    assert!(
        clash.starts_with("port 2222/tcp for service clash:") && clash.contains("in use"),
        "{clash}"
    );
    let lost = report.failures[1].to_string();
    assert!(
        lost.starts_with("port 3333/tcp for service lost:")
            && lost.contains("mi-no-such-namespace"),
        "{lost}"
    );
    assert_eq!(
        report.opened,
        vec!["port 8082/tcp for service fine".to_owned()]
    );
    let (_, line) = hello(&lab.client, sa(HOST, 8082)).await;
    assert_eq!(who(&line), "b1");
    assert_eq!(mesh.stats().listeners, 2);

    // Once the port is free, the next apply opens it. (A child process another test forks at
    // this moment may hold the squatter's socket until it execs: apply again until it is
    // free.)
    drop(squatter);
    let again = plan(vec![
        lab.listener(Proto::Tcp, 80, "web", &b),
        lab.listener(Proto::Tcp, 2222, "clash", &b),
        lab.listener(Proto::Tcp, 8082, "fine", &b),
    ]);
    let mut report = mesh.apply(&again);
    for _ in 0..100 {
        if report.is_complete() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        report = mesh.apply(&again);
    }
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(
        report.opened,
        vec!["port 2222/tcp for service clash".to_owned()]
    );
    let (_, line) = hello(&lab.client, sa(HOST, 2222)).await;
    assert_eq!(who(&line), "b1");

    // Config errors name the field.
    let e = UserspaceMesh::start(UserspaceConfig {
        max_udp_flows: 0,
        ..test_cfg()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("max_udp_flows"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Published UDP

async fn udp_client(ns: &Path, to: SocketAddrV4) -> UdpSocket {
    let s = in_ns(ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect(to)?;
        s.set_nonblocking(true)?;
        Ok::<_, io::Error>(s)
    })
    .unwrap();
    UdpSocket::from_std(s).unwrap()
}

/// Sends `msg` and waits for the answer (sending again now and then: UDP may drop).
async fn ask(s: &UdpSocket, msg: &str) -> String {
    bounded("UDP answer", async {
        let mut buf = [0u8; 2048];
        loop {
            s.send(msg.as_bytes()).await.unwrap();
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await
            {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
    })
    .await
}

/// Sends `msg` once and waits for the answer: the first datagram of a new flow must not be
/// lost on the way to the backend.
async fn ask_once(s: &UdpSocket, msg: &str) -> String {
    s.send(msg.as_bytes()).await.unwrap();
    let mut buf = [0u8; 2048];
    let n = bounded("UDP answer to a single datagram", s.recv(&mut buf))
        .await
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_get_backends_and_expire() {
    require_root!();
    let lab = published_lab("udp", 2);
    let _servers = Servers(vec![
        udp_name_server(&lab.backends[0], 5300, "b1"),
        udp_name_server(&lab.backends[1], 5300, "b2"),
    ]);
    let cfg = UserspaceConfig {
        udp_idle: Duration::from_millis(1500),
        ..test_cfg()
    };
    let mesh = Arc::new(start_mesh(&lab.host, cfg));
    let backends = [sa(backend_ip(0), 5300), sa(backend_ip(1), 5300)];
    apply_ok(
        &mesh,
        plan(vec![lab.listener(Proto::Udp, 53, "dns", &backends)]),
    )
    .await;
    let published = sa(HOST, 53);

    // Two clients, two backends; each reply reaches its own client (from the published
    // address: the sockets are connected to it), and a flow sticks to its backend.
    let one = udp_client(&lab.client, published).await;
    let two = udp_client(&lab.client, published).await;
    assert_eq!(ask_once(&one, "one").await, "b1:one");
    assert_eq!(ask_once(&two, "two").await, "b2:two");
    for i in 0..5 {
        assert_eq!(ask(&one, &format!("one {i}")).await, format!("b1:one {i}"));
        assert_eq!(ask(&two, &format!("two {i}")).await, format!("b2:two {i}"));
    }
    assert_eq!(mesh.stats().udp_flows, 2);

    // Without traffic the flows go.
    wait_until("flows expire", || mesh.stats().udp_flows == 0).await;
    assert_eq!(ask_once(&two, "back").await.split(':').nth(1), Some("back"));
    assert_eq!(mesh.stats().udp_flows, 1);

    // The port leaves the plan: flows go with it.
    apply_ok(&mesh, plan(vec![])).await;
    assert_eq!(mesh.stats().udp_flows, 0);
    assert_eq!(mesh.stats().listeners, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flow_table_is_bounded() {
    require_root!();
    let lab = published_lab("udpmax", 1);
    let _servers = Servers(vec![udp_name_server(&lab.backends[0], 5300, "b1")]);
    let cfg = UserspaceConfig {
        max_udp_flows: 3,
        ..test_cfg()
    };
    let mesh = Arc::new(start_mesh(&lab.host, cfg));
    apply_ok(
        &mesh,
        plan(vec![lab.listener(
            Proto::Udp,
            53,
            "dns",
            &[sa(backend_ip(0), 5300)],
        )]),
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..6 {
        let c = udp_client(&lab.client, sa(HOST, 53)).await;
        assert_eq!(ask_once(&c, &format!("c{i}")).await, format!("b1:c{i}"));
        assert!(mesh.stats().udp_flows <= 3, "{:?}", mesh.stats());
        clients.push(c);
    }
    assert_eq!(mesh.stats().udp_flows, 3);
    // An evicted client is served again (with a new flow).
    assert_eq!(ask(&clients[0], "again").await, "b1:again");
}

// ---------------------------------------------------------------------------------------------
// VIPs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_any_port_round_robin_and_cleanup() {
    require_root!();
    let mut lab = Lab::new("vip");
    let host = lab.ns("h");
    let (sb_name, sandbox) = lab.adopt("sb");
    mesh_sandbox::ensure_sandbox(&mesh_sandbox::SandboxSpec {
        name: sb_name.clone(),
        gateway: Ipv4Addr::new(10, 80, 0, 1),
        prefix: 24,
        mtu: 1420,
    })
    .unwrap();
    // Two client tasks and two backend tasks, plumbed like the overlay does (subnet on-link,
    // no default route).
    let mut tasks = Vec::new();
    for (role, last) in [("t1", 21u8), ("t2", 22), ("k1", 11), ("k2", 12)] {
        let (name, path) = lab.adopt(role);
        mesh_sandbox::ensure_netns(&name).unwrap();
        mesh_sandbox::attach_endpoint(
            &sb_name,
            &mesh_sandbox::EndpointSpec {
                id: format!("{role}{}", std::process::id()),
                netns: path.clone(),
                ifname: "eth0".into(),
                ip: Ipv4Addr::new(10, 80, 0, last),
                prefix: 24,
                mtu: 1420,
            },
        )
        .unwrap();
        lab.ip(&path, &["link", "set", "lo", "up"]);
        tasks.push(path);
    }
    let (t1, t2, k1, k2) = (&tasks[0], &tasks[1], &tasks[2], &tasks[3]);
    let _servers = Servers(vec![
        name_server(k1, 8080, "k1"),
        name_server(k2, 8080, "k2"),
        name_server(k1, 9090, "k1"),
        name_server(k2, 9090, "k2"),
        udp_name_server(k1, 5353, "k1"),
        udp_name_server(k2, 5353, "k2"),
    ]);

    let vip = Ipv4Addr::new(10, 80, 0, 100);
    let lb = Ipv4Addr::new(10, 80, 0, 250);
    let sandbox_plan = |backends: Vec<Ipv4Addr>| MeshPlan {
        listeners: vec![],
        vips: vec![VipSandbox {
            network_id: "net1".into(),
            netns: sandbox.clone(),
            source: lb,
            clients: vec![t1.clone(), t2.clone()],
            services: vec![VipService {
                name: "api".into(),
                vip,
                backends,
            }],
        }],
    };
    let mesh = Arc::new(start_mesh(&host, test_cfg()));
    apply_ok(
        &mesh,
        sandbox_plan(vec![
            Ipv4Addr::new(10, 80, 0, 11),
            Ipv4Addr::new(10, 80, 0, 12),
        ]),
    )
    .await;
    assert_eq!(mesh.stats().vip_sandboxes, 1);

    // Any port of the VIP goes to the same port of the backends, round-robin; the backend sees
    // the load-balancer address.
    let mut seen = Vec::new();
    for (client, port) in [
        (t1, 8080),
        (t2, 8080),
        (t1, 9090),
        (t2, 9090),
        (t1, 8080),
        (t1, 9090),
    ] {
        let (_, line) = hello(client, SocketAddrV4::new(vip, port)).await;
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts[1], port.to_string(), "{line}");
        assert!(parts[2].starts_with("10.80.0.250:"), "{line}");
        seen.push(parts[0].to_owned());
    }
    assert_eq!(seen, ["k1", "k2", "k1", "k2", "k1", "k2"], "{seen:?}");

    // UDP to the VIP: the reply comes from the VIP (the client's socket is connected to it).
    let u1 = udp_client(t1, SocketAddrV4::new(vip, 5353)).await;
    let u2 = udp_client(t2, SocketAddrV4::new(vip, 5353)).await;
    let a1 = ask_once(&u1, "q1").await;
    let a2 = ask_once(&u2, "q2").await;
    let mut names = vec![
        a1.split(':').next().unwrap().to_owned(),
        a2.split(':').next().unwrap().to_owned(),
    ];
    names.sort();
    assert_eq!(names, ["k1", "k2"]);
    assert!(a1.ends_with(":q1") && a2.ends_with(":q2"));
    assert_eq!(
        ask(&u1, "q3").await,
        format!("{}:q3", a1.split(':').next().unwrap())
    );

    // The tables and addresses are in place.
    let (ok, _) = try_in(&sandbox, &["nft", "list", "table", "inet", NFT_TABLE]);
    assert!(ok, "no nftables table");
    let addrs = run("ip", &["-n", &sb_name, "-4", "addr", "show", "dev", "lo"]);
    assert!(
        addrs.contains("10.80.0.100/32") && addrs.contains("10.80.0.250/32"),
        "{addrs}"
    );
    assert!(addrs.contains(&format!("lo:{ADDR_TAG}")), "{addrs}");

    // A backend leaves: an open connection to it stays, new ones go to the other.
    let (mut open, line) = hello(t1, SocketAddrV4::new(vip, 8080)).await;
    let kept = who(&line).to_owned();
    let other = if kept == "k1" { 12 } else { 11 };
    apply_ok(&mesh, sandbox_plan(vec![Ipv4Addr::new(10, 80, 0, other)])).await;
    for _ in 0..3 {
        let (_, line) = hello(t2, SocketAddrV4::new(vip, 9090)).await;
        assert_ne!(who(&line), kept);
    }
    open.get_mut().write_all(b"still\n").await.unwrap();
    let mut echo = String::new();
    bounded("echo", open.read_line(&mut echo)).await.unwrap();
    assert_eq!(echo, "still\n");

    // The sandbox leaves the plan: table and our addresses go, 127.0.0.1 stays.
    apply_ok(&mesh, MeshPlan::default()).await;
    assert_eq!(mesh.stats().vip_sandboxes, 0);
    let (ok, _) = try_in(&sandbox, &["nft", "list", "table", "inet", NFT_TABLE]);
    assert!(!ok, "the nftables table is still there");
    let addrs = run("ip", &["-n", &sb_name, "-4", "addr", "show", "dev", "lo"]);
    assert!(
        !addrs.contains("10.80.0.100") && !addrs.contains("10.80.0.250"),
        "{addrs}"
    );
    assert!(addrs.contains("127.0.0.1"), "{addrs}");
    assert!(
        connect_from(t1, SocketAddrV4::new(vip, 8080))
            .await
            .is_err()
    );
}
