//! Namespaces for the eBPF tests: each test makes its own `me<pid>-<test>-…` namespaces and
//! deletes them (and anything it mounted) in `Drop`, also when the test panics.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// Every blocking socket call in the tests gives up after this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// True when the tests can make namespaces and load programs; otherwise they say why and
/// pass without checking anything.
pub fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: the eBPF tests need root (namespaces, bpf)");
    false
}

/// Runs `ip ARGS`, panicking with its output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces (and mounts) of one test.
pub struct Lab {
    prefix: String,
    names: Vec<String>,
    mounts: Vec<PathBuf>,
}

impl Lab {
    /// A lab whose namespaces are named `me<pid>-<test>-…`.
    pub fn new(test: &str) -> Lab {
        Lab {
            prefix: format!("me{}-{test}", std::process::id()),
            names: Vec::new(),
            mounts: Vec::new(),
        }
    }

    /// Full name of the lab's namespace `short`.
    pub fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Path of the lab's namespace `short`.
    pub fn path(&self, short: &str) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name(short)))
    }

    /// Makes namespace `short` with `lo` up.
    pub fn netns(&mut self, short: &str) -> String {
        let name = self.name(short);
        ip(&["netns", "add", &name]);
        self.names.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A directory for this test only, unmounted and removed in `Drop`.
    pub fn mount_dir(&mut self) -> PathBuf {
        let dir = PathBuf::from(format!("/run/{}-cgroup2", self.prefix));
        self.mounts.push(dir.clone());
        dir
    }

    /// Runs `f` on a thread inside namespace `short`.
    pub fn in_ns<T: Send>(&self, short: &str, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.path(short), f)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        for dir in &self.mounts {
            if nix::mount::umount2(dir.as_path(), nix::mount::MntFlags::MNT_DETACH).is_ok() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Runs `f` on a thread that joined the network namespace at `path`.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering {}: {e}", path.display()));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A TCP server in namespace `ns` on `port` answering each connection with
/// `"<name> <client ip>"`; it lives as long as the test process.
pub fn tcp_server(lab: &Lab, ns: &str, port: u16, name: &str) {
    let l = lab.in_ns(ns, || TcpListener::bind(("0.0.0.0", port)));
    let l = l.unwrap_or_else(|e| panic!("binding tcp {port} in {ns}: {e}"));
    let name = name.to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let peer = c
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = c.write_all(format!("{name} {peer}").as_bytes());
        }
    });
}

/// A UDP server in namespace `ns` on `port` answering each datagram with
/// `"<name> <client ip>"`.
pub fn udp_server(lab: &Lab, ns: &str, port: u16, name: &str) {
    let s = lab.in_ns(ns, || UdpSocket::bind(("0.0.0.0", port)));
    let s = s.unwrap_or_else(|e| panic!("binding udp {port} in {ns}: {e}"));
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(format!("{name} {}", from.ip()).as_bytes(), from);
        }
    });
}

/// Connects from namespace `ns` and reads the answer: (answer, peer address seen by the
/// client).
pub fn tcp_ask(lab: &Lab, ns: &str, to: SocketAddrV4) -> std::io::Result<(String, SocketAddr)> {
    lab.in_ns(ns, || {
        let mut c = TcpStream::connect_timeout(&to.into(), IO_TIMEOUT)?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        let peer = c.peer_addr()?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok((s, peer))
    })
}

/// A UDP socket made in namespace `ns`.
pub fn udp_socket(lab: &Lab, ns: &str) -> UdpSocket {
    let s = lab
        .in_ns(ns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap_or_else(|e| panic!("udp socket in {ns}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("timeout: {e}"));
    s
}
