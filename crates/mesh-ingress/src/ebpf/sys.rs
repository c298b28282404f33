//! The OS edges of the eBPF path: network namespaces and their cookies, the cgroup2 mount.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::IngressError;

/// Runs `f` on a thread that has joined the network namespace at `netns`; sockets `f` makes
/// belong to that namespace for their whole life. The caller's thread is left alone.
pub(crate) fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let ns = File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("the thread working in the namespace panicked"))?
    })
}

/// The cookie of the socket's network namespace (`SO_NETNS_COOKIE`).
pub(crate) fn socket_netns_cookie(sock: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the buffer is a valid u64 and `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cookies the kernel gives the network namespaces at `paths` (what
/// `bpf_get_netns_cookie()` returns for their sockets), in order; one thread enters each in
/// turn.
pub(crate) fn netns_cookies(paths: &[PathBuf]) -> Vec<io::Result<u64>> {
    if paths.is_empty() {
        return Vec::new();
    }
    let one = |path: &Path| -> io::Result<u64> {
        let ns = File::open(path)?;
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        socket_netns_cookie(&s)
    };
    std::thread::scope(|s| {
        s.spawn(|| paths.iter().map(|p| one(p)).collect::<Vec<_>>())
            .join()
            .unwrap_or_else(|_| {
                paths
                    .iter()
                    .map(|_| Err(io::Error::other("the namespace thread panicked")))
                    .collect()
            })
    })
}

/// Where a cgroup2 hierarchy is mounted, from `/proc/self/mountinfo`.
fn cgroup2_mounts() -> io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(point)))
        })
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes sure a cgroup2 hierarchy is mounted at `dir` (mounting it there if not) and opens
/// it for attaching programs.
pub(crate) fn ensure_cgroup2(dir: &Path) -> Result<File, IngressError> {
    if !dir.is_absolute() {
        return Err(IngressError::invalid(
            "cgroup2_dir",
            format!("{} is not an absolute path", dir.display()),
            "give an absolute directory such as /run/meshd-cgroup2",
        ));
    }
    let mounts =
        cgroup2_mounts().map_err(|e| IngressError::io("reading /proc/self/mountinfo", e))?;
    let canon = std::fs::canonicalize(dir).ok();
    let mounted = mounts
        .iter()
        .any(|m| m == dir || canon.as_deref() == Some(m.as_path()));
    if !mounted {
        std::fs::create_dir_all(dir)
            .map_err(|e| IngressError::io(format!("creating {}", dir.display()), e))?;
        nix::mount::mount(
            Some("none"),
            dir,
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            IngressError::EbpfUnavailable(format!(
                "mounting a cgroup2 hierarchy on {}: {e}",
                dir.display()
            ))
        })?;
        tracing::info!(dir = %dir.display(), "mounted the cgroup2 hierarchy");
    }
    File::open(dir).map_err(|e| IngressError::io(format!("opening {}", dir.display()), e))
}

/// A map write that failed, with what was being written.
pub(crate) fn map_err(what: &str, e: aya::maps::MapError) -> crate::IngressError {
    crate::IngressError::io(format!("writing {what}"), std::io::Error::other(e))
}

/// A delete of a key that is not there is fine.
pub(crate) fn absent_ok(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    use aya::maps::MapError;
    match r {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }
}
