//! Killing a lab host as a whole, the way a host that loses its power looks from the others:
//! every process in its network namespaces, and every descendant of those (containers run in
//! namespaces of their own, some of which only their daemon's mount namespace can name), all
//! at once.
//!
//! The processes are first frozen (SIGSTOP) until the set stops growing, so that none of them
//! reacts to the others' death or forks a new one, and then SIGKILLed together.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A network namespace, by the device and inode of its nsfs file.
pub type NetnsId = (u64, u64);

/// The namespace of the file at `path` (`/var/run/netns/X`, `/proc/PID/ns/net`).
pub fn netns_id(path: &Path) -> Option<NetnsId> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The namespaces named `/var/run/netns/<prefix>…` where the prefix is not followed by a digit
/// (so that host 1's prefix does not take host 10's namespaces).
pub fn named_netns(prefix: &str) -> Vec<NetnsId> {
    let Ok(dir) = fs::read_dir("/var/run/netns") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .filter_map(|e| netns_id(&e.path()))
        .collect()
}

/// One process as `/proc/PID/stat` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: u32,
    ppid: u32,
    state: char,
}

/// Parses `/proc/PID/stat`: `pid (comm) state ppid …`, where comm may hold spaces and
/// parentheses.
fn parse_stat(text: &str) -> Option<Proc> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Proc { pid, ppid, state })
}

fn processes() -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?))
        .collect()
}

/// The namespaces never touched: this process's and PID 1's, the machine's own. A lab host's
/// namespace is never one of them; a caller that passes one (e.g. a namespace read from a
/// process before it left the machine's) gets them left out.
fn protected() -> Vec<NetnsId> {
    ["/proc/self/ns/net", "/proc/1/ns/net"]
        .iter()
        .filter_map(|p| netns_id(Path::new(p)))
        .collect()
}

/// `namespaces` without the protected ones (warned about).
fn allowed(namespaces: &[NetnsId]) -> Vec<NetnsId> {
    let protected = protected();
    let ok: Vec<NetnsId> = namespaces
        .iter()
        .copied()
        .filter(|n| !protected.contains(n))
        .collect();
    if ok.len() < namespaces.len() {
        tracing::warn!(
            "left out the machine's own network namespace: only lab namespaces are killed"
        );
    }
    ok
}

/// The live processes (not zombies, not this one) in one of `namespaces`, and all their
/// descendants wherever they are. The machine's own namespace (this process's, PID 1's) is
/// never looked at.
pub fn host_processes(namespaces: &[NetnsId]) -> BTreeSet<u32> {
    let namespaces = allowed(namespaces);
    if namespaces.is_empty() {
        return BTreeSet::new();
    }
    let me = std::process::id();
    let procs: Vec<Proc> = processes()
        .into_iter()
        .filter(|p| p.state != 'Z' && p.pid != me)
        .collect();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut set: BTreeSet<u32> = procs
        .iter()
        .filter(|p| {
            netns_id(Path::new(&format!("/proc/{}/ns/net", p.pid)))
                .is_some_and(|ns| namespaces.contains(&ns))
        })
        .map(|p| p.pid)
        .collect();
    let mut todo: Vec<u32> = set.iter().copied().collect();
    while let Some(pid) = todo.pop() {
        for c in children.get(&pid).into_iter().flatten() {
            if set.insert(*c) {
                todo.push(*c);
            }
        }
    }
    set
}

fn signal_all(pids: &BTreeSet<u32>, sig: Signal) {
    for pid in pids {
        if let Ok(raw) = i32::try_from(*pid) {
            let _ = kill(Pid::from_raw(raw), sig);
        }
    }
}

/// Freezes, then SIGKILLs, every process of [`host_processes`]`(namespaces)`, again until
/// none is left or `within` has passed. Returns how many processes were killed. The
/// machine's own namespace is never touched.
pub fn kill_host(namespaces: &[NetnsId], within: Duration) -> usize {
    let namespaces = &allowed(namespaces)[..];
    if namespaces.is_empty() {
        return 0;
    }
    let deadline = Instant::now() + within;
    let mut killed = BTreeSet::new();
    loop {
        // Freeze until the set is closed: a stopped process forks nothing.
        let mut frozen = BTreeSet::new();
        loop {
            let now = host_processes(namespaces);
            let new: BTreeSet<u32> = now.difference(&frozen).copied().collect();
            if new.is_empty() {
                break;
            }
            signal_all(&new, Signal::SIGSTOP);
            frozen.extend(new);
        }
        if frozen.is_empty() {
            break;
        }
        signal_all(&frozen, Signal::SIGKILL);
        // Stopped processes still die of SIGKILL; wake them anyway so none lingers.
        signal_all(&frozen, Signal::SIGCONT);
        killed.extend(frozen.iter().copied());
        if Instant::now() >= deadline {
            tracing::warn!(
                left = frozen.len(),
                "processes still alive after the host kill"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    killed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_odd_names() {
        let p = parse_stat("123 (a (b) c) S 45 123 123 0 -1").unwrap();
        assert_eq!(
            p,
            Proc {
                pid: 123,
                ppid: 45,
                state: 'S'
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_machines_own_namespace_is_never_touched() {
        let mine = netns_id(Path::new("/proc/self/ns/net")).unwrap();
        assert!(host_processes(&[mine]).is_empty());
        assert!(allowed(&[mine]).is_empty());
        // PID 1's, when this process may look at it.
        if let Some(init) = netns_id(Path::new("/proc/1/ns/net")) {
            assert!(allowed(&[init]).is_empty());
        }
        assert_eq!(allowed(&[(0, 1), mine]), vec![(0, 1)]);
    }

    #[test]
    fn a_killed_host_leaves_nothing_alive() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: a network namespace needs root");
            return;
        }
        // A "host": a shell in a network namespace of its own, with two children (one of
        // which moves to a namespace of its own, like a container).
        let mut host = std::process::Command::new("unshare")
            .args([
                "--net",
                "sh",
                "-c",
                "sleep 30 & unshare --net sleep 30 & wait",
            ])
            .spawn()
            .unwrap();
        let sh = host.id();
        let mine = netns_id(Path::new("/proc/self/ns/net")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Until `unshare` has moved the shell: before that it is still in ours.
        let ns = loop {
            let ns = netns_id(Path::new(&format!("/proc/{sh}/ns/net")));
            if let Some(ns) = ns
                && ns != mine
                && !protected().contains(&ns)
                && host_processes(&[ns]).len() >= 3
            {
                break ns;
            }
            assert!(Instant::now() < deadline, "the test host did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        let before = host_processes(&[ns]);
        assert!(before.len() >= 3, "{before:?}");
        assert!(kill_host(&[ns], Duration::from_secs(2)) >= 3);
        let _ = host.wait();
        std::thread::sleep(Duration::from_millis(100));
        for pid in before {
            let state = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
                .map(|p| p.state);
            assert!(matches!(state, None | Some('Z')), "{pid} still {state:?}");
        }
    }
}
