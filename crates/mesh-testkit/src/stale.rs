//! Lab identities, liveness markers and the sweeping of labs whose process died.
//!
//! A lab's namespaces are named `ml<PID>x<N>-<suffix>` where PID is the process that made the
//! lab and N a per-process counter. A marker file `/run/mesh-lab/<PID>x<N>` records that
//! process's start time too, so that a recycled PID is not taken for a live lab.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cmd::{self, NETNS_DIR};
use crate::error::LabError;

/// Where the liveness markers live.
pub(crate) const MARKER_DIR: &str = "/run/mesh-lab";

/// Prefix of every namespace name the lab makes.
pub(crate) const PREFIX: &str = "ml";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh lab id, unique on this machine while this process lives: `<pid>x<counter>`.
pub(crate) fn new_id() -> String {
    format!(
        "{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Splits a namespace name made by a lab into (lab id, creating pid).
pub(crate) fn parse_netns_name(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (id, suffix) = rest.split_once('-')?;
    if suffix.is_empty() {
        return None;
    }
    let (pid, n) = id.split_once('x')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid = pid.parse().ok()?;
    Some((id, pid))
}

/// The start time (clock ticks since boot) of process `pid`, if it exists.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of `/proc/PID/stat`; the command name (field 2) may hold spaces and parentheses.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); start time is field 22.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The state letter of process `pid` (`R`, `S`, `T`, `Z`...), if it exists.
pub(crate) fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn marker_path(id: &str) -> PathBuf {
    Path::new(MARKER_DIR).join(id)
}

/// Writes the marker of lab `id` made by this process, whose files are in `dir`.
pub(crate) fn write_marker(id: &str, dir: &Path) -> Result<PathBuf, LabError> {
    fs::create_dir_all(MARKER_DIR).map_err(|e| LabError::io(format!("create {MARKER_DIR}"), e))?;
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    let path = marker_path(id);
    fs::write(
        &path,
        format!("pid={pid}\nstart={start}\ndir={}\n", dir.display()),
    )
    .map_err(|e| LabError::io(format!("write lab marker {}", path.display()), e))?;
    Ok(path)
}

struct Marker {
    pid: u32,
    start: u64,
    dir: Option<String>,
}

fn read_marker(id: &str) -> Option<Marker> {
    let text = fs::read_to_string(marker_path(id)).ok()?;
    let mut pid = None;
    let mut start = None;
    let mut dir = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("pid", v)) => pid = v.parse().ok(),
            Some(("start", v)) => start = v.parse().ok(),
            Some(("dir", v)) => dir = Some(v.to_owned()),
            _ => {}
        }
    }
    Some(Marker {
        pid: pid?,
        start: start?,
        dir,
    })
}

/// Whether the process that made lab `id` (pid `pid` per its name) still runs.
fn lab_alive(id: &str, pid: u32) -> bool {
    match read_marker(id) {
        Some(m) => m.pid == pid && start_time(m.pid).is_some_and(|s| s == m.start),
        None => Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// The processes (other than this one) whose network namespace is the one at `ns`.
pub(crate) fn pids_in_netns(ns: &Path) -> Vec<u32> {
    let Ok(target) = fs::metadata(ns) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        })
        .collect()
}

/// SIGKILLs every process inside the network namespace at `ns`.
pub(crate) fn kill_netns_processes(ns: &Path) {
    for pid in pids_in_netns(ns) {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        match kill(Pid::from_raw(raw), Signal::SIGKILL) {
            Ok(()) => tracing::debug!(pid, ns = %ns.display(), "killed leftover process"),
            Err(e) => tracing::debug!(pid, error = %e, "could not kill leftover process"),
        }
    }
}

/// Deletes the named network namespace.
pub(crate) fn delete_netns(name: &str) -> Result<(), LabError> {
    cmd::ip(&["netns", "delete", name], None).map(|_| ())
}

/// Removes every lab whose creating process is dead: kills what still runs in its
/// namespaces, deletes them and its marker. Returns the namespaces removed.
///
/// The lab directory of a dead lab is left in place (it holds the logs); its path is logged.
/// Called by [`crate::Lab::start`]; safe to call at any time, from any number of processes.
pub fn sweep_stale() -> Vec<String> {
    let mut labs: BTreeMap<String, (u32, Vec<String>)> = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for e in entries.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some((id, pid)) = parse_netns_name(&name) {
                labs.entry(id.to_owned())
                    .or_insert_with(|| (pid, Vec::new()))
                    .1
                    .push(name);
            }
        }
    }
    // Markers of dead labs that have no namespace left.
    if let Ok(entries) = fs::read_dir(MARKER_DIR) {
        for e in entries.flatten() {
            let Some(id) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some((_, pid)) = parse_netns_name(&format!("{PREFIX}{id}-m")) {
                labs.entry(id).or_insert_with(|| (pid, Vec::new()));
            }
        }
    }
    let mut removed = Vec::new();
    for (id, (pid, mut names)) in labs {
        if lab_alive(&id, pid) {
            continue;
        }
        // Hosts first, the lab (underlay) namespace last.
        names.sort_by_key(|n| n.ends_with("-lab"));
        if let Some(m) = read_marker(&id)
            && let Some(dir) = m.dir
        {
            tracing::info!(lab = %id, dir = %dir, "sweeping stale lab; its files stay in place");
        } else {
            tracing::info!(lab = %id, "sweeping stale lab");
        }
        for name in names {
            kill_netns_processes(&cmd::netns_path(&name));
            match delete_netns(&name) {
                Ok(()) => removed.push(name),
                Err(e) => tracing::debug!(netns = %name, error = %e, "could not delete"),
            }
        }
        let _ = fs::remove_file(marker_path(&id));
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(parse_netns_name("ml123x0-h1"), Some(("123x0", 123)));
        assert_eq!(parse_netns_name("ml9x12-lab"), Some(("9x12", 9)));
        assert_eq!(parse_netns_name("ml9x12-"), None);
        assert_eq!(parse_netns_name("ml9-h1"), None);
        assert_eq!(parse_netns_name("mlax1-h1"), None);
        assert_eq!(parse_netns_name("ml1xb-h1"), None);
        assert_eq!(parse_netns_name("other"), None);
    }

    #[test]
    fn ids_are_unique_and_parse() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        let name = format!("{PREFIX}{a}-h1");
        assert_eq!(
            parse_netns_name(&name).map(|(_, p)| p),
            Some(std::process::id())
        );
    }

    #[test]
    fn start_time_survives_odd_names() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 777 1000 10";
        assert_eq!(parse_start_time(stat), Some(777));
        assert!(start_time(std::process::id()).is_some());
    }
}
