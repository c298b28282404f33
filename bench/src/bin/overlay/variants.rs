//! The four ways traffic crosses the same two lab hosts: the plain veth underlay, meshd's
//! overlay, and two stand-alone userspace WireGuard implementations (Debian's wireguard-go
//! and boringtun's own CLI) configured with `wg`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_api::{Node, NodeState};
use mesh_testkit::Lab;

use crate::error::{OverlayBenchError, Result};
use crate::proc::{self, Background, Memory};

/// Short commands (`ip`, `wg`, `swarm`, `ping`).
const SHORT: Duration = Duration::from_secs(30);
/// How long a tunnel may take to carry its first ping, or the cluster to converge.
const CONVERGE: Duration = Duration::from_secs(60);
/// MTU given to the stand-alone WireGuard interfaces (`wg-quick`'s default).
pub const WG_MTU: u32 = 1420;
/// meshd's overlay subnet for the throughput runs.
const MESHD_SUBNET: &str = "10.77.0.0/24";
/// meshd's overlay subnet holding the WireGuard peers of the memory figure.
const PEERS_SUBNET: &str = "10.78.0.0/24";
/// Where userspace WireGuard implementations put their control sockets.
const WG_SOCKET_DIR: &str = "/var/run/wireguard";

/// A way across the two hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Variant {
    /// The lab's plain veth pairs and bridge, host namespace to host namespace (the limit).
    Veth,
    /// meshd's encrypted overlay, endpoint namespace to endpoint namespace.
    Meshd,
    /// Debian's wireguard-go, one per host namespace.
    WireguardGo,
    /// boringtun's own CLI (`boringtun-cli`), one per host namespace.
    Boringtun,
}

impl Variant {
    /// All of them, in the order they run.
    pub const ALL: [Variant; 4] = [
        Variant::Veth,
        Variant::Meshd,
        Variant::WireguardGo,
        Variant::Boringtun,
    ];

    /// The name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Veth => "plain veth",
            Variant::Meshd => "meshd",
            Variant::WireguardGo => "wireguard-go",
            Variant::Boringtun => "boringtun-cli",
        }
    }
}

/// A variant ready to carry traffic: where the client and the server run, the server's
/// address, the MTU on the way. Dropping it stops what it started.
#[derive(Debug)]
pub struct Setup {
    /// Which variant.
    pub variant: Variant,
    /// The namespace the iperf3 client runs in.
    pub client_ns: PathBuf,
    /// The namespace the iperf3 server runs in.
    pub server_ns: PathBuf,
    /// The server's address as the client reaches it.
    pub dst: Ipv4Addr,
    /// MTU of the client's interface towards `dst`.
    pub mtu: u32,
    /// How it was set up, for the report.
    pub how: String,
    keep: Vec<Background>,
    sockets: Vec<PathBuf>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.keep.clear();
        for s in &self.sockets {
            if s.exists() {
                let _ = std::fs::remove_file(s);
            }
        }
    }
}

/// The control sockets this process's WireGuard interfaces may have left behind.
pub fn own_wg_sockets() -> Vec<PathBuf> {
    [WgImpl::Go, WgImpl::Boringtun]
        .iter()
        .flat_map(|w| (1..=2).map(move |h| wg_socket(&w.ifname(h))))
        .collect()
}

fn wg_socket(ifname: &str) -> PathBuf {
    Path::new(WG_SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// The plain underlay: host1's namespace to host2's address.
pub fn veth(lab: &Lab) -> Result<Setup> {
    let client_ns = lab.netns_path(1);
    let mtu = mtu_of(&client_ns, "eth0")?;
    Ok(Setup {
        variant: Variant::Veth,
        server_ns: lab.netns_path(2),
        dst: lab.ip(2),
        mtu,
        how: format!(
            "host1 → host2 over their `eth0` veths and the lab bridge ({} → {})",
            lab.ip(1),
            lab.ip(2)
        ),
        client_ns,
        keep: Vec::new(),
        sockets: Vec::new(),
    })
}

/// `swarm ARGS` on host `i`; its standard output.
fn swarm(lab: &Lab, i: usize, args: &[&str]) -> Result<String> {
    Ok(lab.swarm(i, args).ok()?)
}

/// `swarm init` on host1, `swarm join` of host2, until both nodes are Ready.
pub fn form_cluster(lab: &Lab) -> Result<()> {
    let addr = lab.ip(1).to_string();
    swarm(lab, 1, &["init", "--advertise-addr", &addr])?;
    let token = swarm(lab, 1, &["join-token", "-q", "worker"])?;
    let remote = lab.control_addr(1).to_string();
    for i in 2..=lab.hosts() {
        swarm(lab, i, &["join", "--token", token.trim(), &remote])?;
    }
    let n = lab.hosts();
    proc::wait_for(&format!("{n} nodes Ready"), CONVERGE, || {
        let out = lab.swarm(1, &["node", "ls", "--format", "json"]);
        if !out.success() {
            return None;
        }
        let nodes: Vec<Node> = out
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).ok())
            .collect::<Option<_>>()?;
        (nodes.len() == n && nodes.iter().all(|x| x.status.state == NodeState::Ready)).then_some(())
    })
}

/// Makes a lab-named namespace with `lo` up; the lab deletes it on teardown.
fn endpoint_ns(lab: &Lab, suffix: &str) -> Result<PathBuf> {
    let name = lab.extra_netns_name(suffix);
    proc::run(None, &["ip", "netns", "add", &name], None, SHORT)?;
    proc::run(
        None,
        &["ip", "-n", &name, "link", "set", "lo", "up"],
        None,
        SHORT,
    )?;
    Ok(proc::netns_path(&name))
}

/// `swarm network create -d overlay --subnet SUBNET --attachable NAME`; the network's ID.
fn create_network(lab: &Lab, name: &str, subnet: &str) -> Result<String> {
    let id = swarm(
        lab,
        1,
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            subnet,
            "--attachable",
            name,
        ],
    )?;
    let id = id.trim().to_owned();
    if id.is_empty() || id.contains(char::is_whitespace) {
        return Err(OverlayBenchError::output(
            "swarm network create",
            format!("expected the network's ID, got {id:?}"),
        ));
    }
    Ok(id)
}

/// meshd's overlay: a network across both hosts, an endpoint namespace connected on each,
/// endpoint 1 → endpoint 2. The cluster must be formed.
pub fn meshd(lab: &Lab) -> Result<Setup> {
    create_network(lab, "benchnet", MESHD_SUBNET)?;
    let mut ends = Vec::new();
    for i in 1..=2 {
        let ns = endpoint_ns(lab, &format!("ep{i}"))?;
        let ns_arg = ns.display().to_string();
        let out = swarm(
            lab,
            i,
            &["network", "connect", "benchnet", "--netns", &ns_arg],
        )?;
        let ip: Ipv4Addr = out
            .trim()
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                OverlayBenchError::output(
                    "swarm network connect",
                    format!("expected ADDRESS/PREFIX, got {:?}", out.trim()),
                )
            })?;
        ends.push((ns, ip));
    }
    let (client_ns, _) = ends[0].clone();
    let (server_ns, dst) = ends[1].clone();
    wait_ping(&client_ns, dst, "meshd's overlay")?;
    let mtu = mtu_of(&client_ns, "eth0")?;
    Ok(Setup {
        variant: Variant::Meshd,
        how: format!(
            "`swarm network create -d overlay --subnet {MESHD_SUBNET} --attachable`, an endpoint namespace connected on each host; endpoint on host1 → endpoint on host2 ({dst})"
        ),
        client_ns,
        server_ns,
        dst,
        mtu,
        keep: Vec::new(),
        sockets: Vec::new(),
    })
}

/// A stand-alone userspace WireGuard implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgImpl {
    /// `wireguard-go -f IF`.
    Go,
    /// `boringtun-cli --foreground IF`.
    Boringtun,
}

impl WgImpl {
    /// Interface name on host `h`; unique on the machine, since the control socket
    /// (`/var/run/wireguard/IF.sock`) is not per namespace.
    fn ifname(self, h: usize) -> String {
        let tag = match self {
            WgImpl::Go => "wgo",
            WgImpl::Boringtun => "btc",
        };
        format!("{tag}{}h{h}", std::process::id())
    }

    fn port(self) -> u16 {
        match self {
            WgImpl::Go => 51830,
            WgImpl::Boringtun => 51840,
        }
    }

    fn subnet(self) -> [u8; 3] {
        match self {
            WgImpl::Go => [10, 71, 0],
            WgImpl::Boringtun => [10, 72, 0],
        }
    }

    fn variant(self) -> Variant {
        match self {
            WgImpl::Go => Variant::WireguardGo,
            WgImpl::Boringtun => Variant::Boringtun,
        }
    }

    fn argv(self, ifname: &str) -> Vec<String> {
        let v: &[&str] = match self {
            WgImpl::Go => &["wireguard-go", "-f"],
            // Not started through sudo: nothing to drop privileges to.
            WgImpl::Boringtun => &["boringtun-cli", "--foreground", "--disable-drop-privileges"],
        };
        v.iter()
            .map(|s| (*s).to_owned())
            .chain([ifname.to_owned()])
            .collect()
    }
}

/// A WireGuard key pair made by `wg genkey | wg pubkey`: (private, public), base64.
pub fn wg_keypair() -> Result<(String, String)> {
    let private = proc::run(None, &["wg", "genkey"], None, SHORT)?
        .trim()
        .to_owned();
    let public = proc::run(None, &["wg", "pubkey"], Some(&private), SHORT)?
        .trim()
        .to_owned();
    Ok((private, public))
}

/// One implementation in each host namespace, keys by `wg genkey`/`wg pubkey`, configured
/// with `wg set`, addresses on a /24, MTU 1420; host1's address → host2's.
pub fn userspace_wg(lab: &Lab, which: WgImpl) -> Result<Setup> {
    let keys = [wg_keypair()?, wg_keypair()?];
    let net = which.subnet();
    let addr = |h: usize| Ipv4Addr::new(net[0], net[1], net[2], u8::try_from(h).unwrap_or(1));
    let mut setup = Setup {
        variant: which.variant(),
        client_ns: lab.netns_path(1),
        server_ns: lab.netns_path(2),
        dst: addr(2),
        mtu: WG_MTU,
        how: String::new(),
        keep: Vec::new(),
        sockets: Vec::new(),
    };
    for h in 1..=2 {
        let ifname = which.ifname(h);
        let ns = lab.netns_path(h);
        let argv = which.argv(&ifname);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let log = lab.dir().join(format!("{ifname}.log"));
        setup.sockets.push(wg_socket(&ifname));
        let mut bg = Background::spawn(
            &ns,
            &refs,
            &[
                ("WG_PROCESS_FOREGROUND", "1"),
                ("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1"),
            ],
            Some(&log),
        )?;
        let socket = wg_socket(&ifname);
        let mut died = None;
        proc::wait_for(
            &format!("{} to create {ifname} and its control socket", argv[0]),
            Duration::from_secs(15),
            || {
                if let Err(e) = bg.check_running() {
                    died = Some(e);
                    return Some(());
                }
                let link = proc::run(
                    Some(&ns),
                    &["ip", "-o", "link", "show", "dev", &ifname],
                    None,
                    SHORT,
                );
                (link.is_ok() && socket.exists()).then_some(())
            },
        )?;
        if let Some(e) = died {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(OverlayBenchError::Command {
                command: argv.join(" "),
                status: e.to_string(),
                stderr: said.trim().to_owned(),
            });
        }
        setup.keep.push(bg);
        let other = 3 - h;
        let port = which.port().to_string();
        let endpoint = format!("{}:{port}", lab.ip(other));
        let allowed = format!("{}/32", addr(other));
        proc::run(
            Some(&ns),
            &[
                "wg",
                "set",
                &ifname,
                "listen-port",
                &port,
                "private-key",
                "/dev/stdin",
                "peer",
                &keys[other - 1].1,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
            ],
            Some(&keys[h - 1].0),
            SHORT,
        )?;
        let cidr = format!("{}/24", addr(h));
        proc::run(
            Some(&ns),
            &["ip", "addr", "add", &cidr, "dev", &ifname],
            None,
            SHORT,
        )?;
        let mtu = WG_MTU.to_string();
        proc::run(
            Some(&ns),
            &["ip", "link", "set", "dev", &ifname, "mtu", &mtu, "up"],
            None,
            SHORT,
        )?;
    }
    wait_ping(&setup.client_ns, setup.dst, which.variant().label())?;
    setup.mtu = mtu_of(&setup.client_ns, &which.ifname(1))?;
    setup.how = format!(
        "`{}` in each host namespace, `wg set` (listen port {}, one peer, allowed-ips /32), {}.1/24 → {}",
        which.argv("IF").join(" "),
        which.port(),
        net.iter().map(u8::to_string).collect::<Vec<_>>().join("."),
        setup.dst
    );
    Ok(setup)
}

/// Waits until `from` pings `dst` (the tunnel is up).
fn wait_ping(from: &Path, dst: Ipv4Addr, what: &str) -> Result<()> {
    let d = dst.to_string();
    proc::wait_for(&format!("a ping to {dst} through {what}"), CONVERGE, || {
        proc::run(
            Some(from),
            &["ping", "-c", "1", "-W", "1", "-q", &d],
            None,
            SHORT,
        )
        .ok()
        .map(|_| ())
    })
}

/// MTU of interface `ifname` in namespace `ns`.
fn mtu_of(ns: &Path, ifname: &str) -> Result<u32> {
    let out = proc::run(
        Some(ns),
        &["ip", "-o", "link", "show", "dev", ifname],
        None,
        SHORT,
    )?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mtu"
            && let Some(m) = words.next().and_then(|m| m.parse().ok())
        {
            return Ok(m);
        }
    }
    Err(OverlayBenchError::output(
        format!("ip link show dev {ifname}"),
        format!("no MTU in {:?}", out.trim()),
    ))
}

/// meshd's memory on host1 with standard WireGuard peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersMemory {
    /// Peers connected.
    pub peers: usize,
    /// `/32` routes via `wg0` in the network's sandbox on host1 when measured (one per peer
    /// the engine holds).
    pub routes: usize,
    /// host1's meshd just before the peers were added.
    pub before: Memory,
    /// host1's meshd with the peers.
    pub with_peers: Memory,
}

/// Creates a network and connects `peers` standard WireGuard peers to it on host1
/// (`swarm network connect NET --wg-public-key KEY`, keys from `wg genkey | wg pubkey`),
/// waits until host1's engine routes to every one of them, then reads host1 meshd's memory.
pub fn peers_memory(lab: &Lab, peers: usize, progress: &dyn Fn(&str)) -> Result<PeersMemory> {
    let pid = lab.pid(1).ok_or_else(|| {
        OverlayBenchError::output("host1's meshd", "it is not running any more".to_owned())
    })?;
    let before = Memory::of(pid)?;
    let id = create_network(lab, "peers", PEERS_SUBNET)?;
    for k in 0..peers {
        let (_, public) = wg_keypair()?;
        swarm(
            lab,
            1,
            &["network", "connect", "peers", "--wg-public-key", &public],
        )?;
        if (k + 1) % 25 == 0 {
            progress(&format!("{} WireGuard peers connected", k + 1));
        }
    }
    let short: String = id.chars().take(12).collect();
    let sandbox = proc::netns_path(&format!("{}-{short}", lab.sandbox_prefix(1)));
    let mut routes = 0;
    proc::wait_for(
        &format!(
            "{peers} routes via wg0 in host1's sandbox {}",
            sandbox.display()
        ),
        CONVERGE,
        || {
            let out = proc::run(
                Some(&sandbox),
                &["ip", "-4", "route", "show", "dev", "wg0"],
                None,
                SHORT,
            )
            .ok()?;
            routes = out.lines().filter(|l| !l.trim().is_empty()).count();
            (routes >= peers).then_some(())
        },
    )?;
    // Let the engine settle (timers, first keepalive attempts) before reading.
    std::thread::sleep(Duration::from_secs(3));
    let with_peers = Memory::of(pid)?;
    Ok(PeersMemory {
        peers,
        routes,
        before,
        with_peers,
    })
}
