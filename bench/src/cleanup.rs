//! What must be undone if the benchmark is interrupted (Ctrl-C, SIGTERM): the labs it
//! started and the reference processes it spawned, by PID.
//!
//! Normal runs clean up through `Drop` ([`mesh_testkit::Lab`], [`crate::etcd::EtcdCluster`]);
//! a signal ends the process without running destructors, so everything is registered here
//! as well and [`run`] undoes it from the signal thread.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use mesh_testkit::Lab;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

struct Registry {
    labs: Vec<Weak<Lab>>,
    pids: Vec<u32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    labs: Vec::new(),
    pids: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tears `lab` down on interruption (while it is alive).
pub fn register_lab(lab: &Arc<Lab>) {
    let mut r = registry();
    r.labs.retain(|w| w.strong_count() > 0);
    r.labs.push(Arc::downgrade(lab));
}

/// SIGKILLs `pid` on interruption, until [`forget_pid`].
pub fn track_pid(pid: u32) {
    registry().pids.push(pid);
}

/// `pid` was reaped: never signal it again.
pub fn forget_pid(pid: u32) {
    registry().pids.retain(|p| *p != pid);
}

/// Kills every tracked process and tears down every registered lab (which also kills what
/// runs in its namespaces and removes its directory).
pub fn run() {
    let (pids, labs) = {
        let mut r = registry();
        (std::mem::take(&mut r.pids), std::mem::take(&mut r.labs))
    };
    let pids: Vec<Pid> = pids
        .into_iter()
        .filter_map(|p| i32::try_from(p).ok().map(Pid::from_raw))
        .collect();
    for pid in &pids {
        let _ = kill(*pid, Signal::SIGKILL);
    }
    // Reap them (they are this process's children), so none is left as a zombie; bounded.
    let deadline = Instant::now() + Duration::from_secs(2);
    for pid in &pids {
        while Instant::now() < deadline {
            match waitpid(*pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                _ => break,
            }
        }
    }
    for lab in labs.iter().filter_map(Weak::upgrade) {
        lab.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_tracked_until_forgotten() {
        track_pid(u32::MAX - 1);
        assert!(registry().pids.contains(&(u32::MAX - 1)));
        forget_pid(u32::MAX - 1);
        assert!(!registry().pids.contains(&(u32::MAX - 1)));
    }
}
