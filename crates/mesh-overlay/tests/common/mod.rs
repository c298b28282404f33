//! A lab of "hosts" (network namespaces on a bridge underlay), endpoints (one namespace each)
//! and helpers to send traffic inside them. Everything is removed by the guard's drop, also
//! when a test panics.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mesh_overlay::{
    HostPlan, KeyPair, LocalEndpoint, NetworkPlan, Overlay, OverlayConfig, PeerPlan,
};

pub const DATA_PORT: u16 = 51820;
pub const MTU: u16 = 1420;

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "mesh_overlay=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub fn ok(args: &[&str]) -> String {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// Runs `f` on a thread inside the named network namespace.
pub fn in_ns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(netns_path(name)).unwrap_or_else(|e| panic!("netns {name}: {e}"));
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns of this thread into an open namespace file.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A lab: underlay bridge namespace, host namespaces, endpoint namespaces.
pub struct Lab {
    pub tag: String,
    pub hosts: Vec<String>,
    pub endpoints: Vec<String>,
}

impl Lab {
    /// `n` hosts on an underlay 172.31.250.0/24 (host i has .(i+1)).
    pub fn new(n: usize) -> Lab {
        init_tracing();
        let tag = format!(
            "ot{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            tag: tag.clone(),
            hosts: (0..n).map(|i| format!("{tag}-h{i}")).collect(),
            endpoints: Vec::new(),
        };
        let wire = format!("{tag}-u");
        ok(&["ip", "netns", "add", &wire]);
        ok(&["ip", "-n", &wire, "link", "add", "ub0", "type", "bridge"]);
        ok(&["ip", "-n", &wire, "link", "set", "ub0", "up"]);
        for (i, h) in lab.hosts.iter().enumerate() {
            ok(&["ip", "netns", "add", h]);
            ok(&["ip", "-n", h, "link", "set", "lo", "up"]);
            let port = format!("p{i}");
            ok(&[
                "ip", "-n", &wire, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", h,
            ]);
            ok(&[
                "ip", "-n", &wire, "link", "set", &port, "master", "ub0", "up",
            ]);
            ok(&[
                "ip",
                "-n",
                h,
                "addr",
                "add",
                &format!("{}/24", Self::underlay_ip(i)),
                "dev",
                "eth0",
            ]);
            ok(&["ip", "-n", h, "link", "set", "eth0", "up"]);
        }
        lab
    }

    pub fn underlay_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(172, 31, 250, 1 + i as u8)
    }

    pub fn underlay(i: usize) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Self::underlay_ip(i), DATA_PORT))
    }

    /// The sandbox prefix of host `i` (each host owns its own on this shared machine).
    pub fn prefix(&self, i: usize) -> String {
        format!("{}h{i}", self.tag.replace('x', "y"))
    }

    pub fn config(&self, i: usize) -> OverlayConfig {
        OverlayConfig {
            data_port: DATA_PORT,
            sandbox_prefix: self.prefix(i),
        }
    }

    /// Starts the overlay of host `i` inside its namespace.
    pub fn start(&self, i: usize) -> Overlay {
        let cfg = self.config(i);
        in_ns(&self.hosts[i], move || Overlay::start(cfg)).expect("overlay starts")
    }

    /// A new endpoint namespace; returns its name.
    pub fn endpoint_ns(&mut self, label: &str) -> String {
        let name = format!("{}-e{label}", self.tag);
        ok(&["ip", "netns", "add", &name]);
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        self.endpoints.push(name.clone());
        name
    }

    /// Sandboxes that exist now with host `i`'s prefix.
    pub fn sandboxes(&self, i: usize) -> Vec<String> {
        let p = format!("{}-", self.prefix(i));
        let mut v: Vec<String> = std::fs::read_dir("/var/run/netns")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .filter(|n| n.starts_with(&p))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut names: Vec<String> = std::fs::read_dir("/var/run/netns")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let sb: Vec<String> = (0..self.hosts.len())
            .map(|i| format!("{}-", self.prefix(i)))
            .collect();
        names.retain(|n| {
            n.starts_with(&format!("{}-", self.tag)) || sb.iter().any(|p| n.starts_with(p))
        });
        for n in names {
            let _ = sh(&["ip", "netns", "del", &n]);
        }
    }
}

pub fn endpoint(id: &str, ip: Ipv4Addr, ns: &str) -> LocalEndpoint {
    LocalEndpoint {
        id: id.into(),
        ip,
        netns: netns_path(ns),
        ifname: "eth0".into(),
    }
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

/// A network as every host sees it: one key pair per host, endpoints per host.
pub struct Net {
    pub id: String,
    pub subnet: ipnet::Ipv4Net,
    pub keys: Vec<KeyPair>,
    /// Per host: its local endpoints.
    pub local: Vec<Vec<LocalEndpoint>>,
}

impl Net {
    pub fn new(id: &str, subnet: &str, hosts: usize) -> Net {
        Net {
            id: id.into(),
            subnet: subnet.parse().expect("subnet"),
            keys: (0..hosts).map(|_| KeyPair::generate()).collect(),
            local: vec![Vec::new(); hosts],
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }

    /// Host `h`'s plan of this network: every other host is a peer owning its endpoints' IPs.
    pub fn plan_for(&self, h: usize) -> NetworkPlan {
        NetworkPlan {
            id: self.id.clone(),
            subnet: self.subnet,
            gateway: self.gateway(),
            mtu: MTU,
            keypair: self.keys[h].clone(),
            local: self.local[h].clone(),
            peers: (0..self.keys.len())
                .filter(|&o| o != h)
                .map(|o| PeerPlan {
                    id: format!("node{o}"),
                    public_key: self.keys[o].public(),
                    endpoint: Some(Lab::underlay(o)),
                    allowed_ips: self.local[o].iter().map(|e| e.ip).collect(),
                    keepalive_secs: None,
                })
                .collect(),
        }
    }
}

pub fn host_plan(nets: &[&Net], h: usize) -> HostPlan {
    HostPlan {
        networks: nets.iter().map(|n| n.plan_for(h)).collect(),
    }
}

/// `ping -c1` from namespace `ns` to `dst`, retried until `deadline`; true if it answered.
pub fn ping_until(ns: &str, dst: Ipv4Addr, within: Duration) -> bool {
    let end = Instant::now() + within;
    loop {
        if ping(ns, dst, 56).status.success() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One ping of `size` payload bytes with DF set.
pub fn ping(ns: &str, dst: Ipv4Addr, size: usize) -> Output {
    sh(&[
        "nsenter",
        &format!("--net={}", netns_path(ns).display()),
        "ping",
        "-n",
        "-c1",
        "-W1",
        "-M",
        "do",
        "-s",
        &size.to_string(),
        &dst.to_string(),
    ])
}

/// A payload of `len` bytes that is not all the same.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Sends `data` over TCP from namespace `from` to a listener in namespace `to` at `dst`,
/// which checks it byte for byte; returns bytes per second.
pub fn tcp_transfer(from: &str, to: &str, dst: Ipv4Addr, data: &[u8], within: Duration) -> f64 {
    let port = 5201;
    let listener = in_ns(to, || {
        TcpListener::bind((dst, port)).expect("bind listener")
    });
    let expect = data.to_vec();
    std::thread::scope(|s| {
        let server = s.spawn(move || {
            listener.set_nonblocking(false).expect("blocking");
            let (mut c, _) = listener.accept().expect("accept");
            c.set_read_timeout(Some(within)).expect("timeout");
            let mut got = Vec::with_capacity(expect.len());
            c.read_to_end(&mut got).expect("read all");
            assert_eq!(got.len(), expect.len(), "received length");
            assert!(got == expect, "received bytes differ from those sent");
            c.write_all(b"ok").expect("ack");
        });
        let start = Instant::now();
        let mut c = in_ns(from, || {
            let end = Instant::now() + within;
            loop {
                match TcpStream::connect_timeout(
                    &SocketAddr::from((dst, port)),
                    Duration::from_secs(2),
                ) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() < end => {
                        tracing::debug!("connect: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("connect {dst}:{port}: {e}"),
                }
            }
        });
        c.set_write_timeout(Some(within)).expect("timeout");
        c.set_read_timeout(Some(within)).expect("timeout");
        c.write_all(data).expect("send all");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut ack = Vec::new();
        c.read_to_end(&mut ack).expect("ack");
        assert_eq!(ack, b"ok");
        let secs = start.elapsed().as_secs_f64();
        server
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        data.len() as f64 / secs
    })
}

/// A UDP socket bound at `ip:port` in namespace `ns`.
pub fn udp_socket(ns: &str, ip: Ipv4Addr, port: u16) -> UdpSocket {
    let s = in_ns(ns, || UdpSocket::bind((ip, port)).expect("bind udp"));
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    s
}

/// Sends `count` numbered datagrams from `a` to `b_addr` (each retried until it arrives, at
/// most 10 times); returns how many arrived intact.
pub fn udp_deliver(a: &UdpSocket, b: &UdpSocket, b_addr: SocketAddr, count: u32) -> u32 {
    let mut arrived = 0;
    let mut buf = [0u8; 2048];
    for i in 0..count {
        let msg = pattern(100 + i as usize * 10, i);
        for _ in 0..10 {
            a.send_to(&msg, b_addr).expect("send");
            match b.recv_from(&mut buf) {
                Ok((n, _)) if buf[..n] == msg[..] => {
                    arrived += 1;
                    break;
                }
                _ => {}
            }
        }
    }
    arrived
}

/// Serves one TCP connection at a time in namespace `ns`, answering `reply` to each, until
/// the returned guard is dropped.
pub struct Responder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    pub fn start(ns: &str, ip: Ipv4Addr, port: u16, reply: &'static str) -> Responder {
        let l = in_ns(ns, || TcpListener::bind((ip, port)).expect("bind"));
        l.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Responder {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a TCP connection from namespace `ns` to `dst:port` reads, or the error.
pub fn tcp_read(ns: &str, dst: Ipv4Addr, port: u16) -> Result<String, String> {
    in_ns(ns, || {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::from((dst, port)), Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut s = String::new();
        c.read_to_string(&mut s).map_err(|e| e.to_string())?;
        Ok(s)
    })
}

/// Polls `cond` every 100 ms until it holds or `within` passes.
pub fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
