//! What must be undone if the benchmark is interrupted (Ctrl-C, SIGTERM): the labs it
//! started, the reference processes it spawned, by PID, and the reference clusters that
//! know how to stop themselves ([`Teardown`]).
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

/// Something that stops what it started, callable from the signal thread while in use.
pub trait Teardown: Send + Sync {
    /// Stops everything; idempotent.
    fn teardown(&self);
}

struct Registry {
    labs: Vec<Weak<Lab>>,
    pids: Vec<u32>,
    hooks: Vec<Weak<dyn Teardown>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    labs: Vec::new(),
    pids: Vec::new(),
    hooks: Vec::new(),
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

/// Tears `t` down on interruption (while it is alive), before the labs.
pub fn register(t: Weak<dyn Teardown>) {
    let mut r = registry();
    r.hooks.retain(|w| w.strong_count() > 0);
    r.hooks.push(t);
}

/// SIGKILLs `pid` on interruption, until [`forget_pid`].
pub fn track_pid(pid: u32) {
    registry().pids.push(pid);
}

/// `pid` was reaped: never signal it again.
pub fn forget_pid(pid: u32) {
    registry().pids.retain(|p| *p != pid);
}

/// Tears down every registered [`Teardown`], kills every tracked process and tears down
/// every registered lab (which also kills what runs in its namespaces and removes its
/// directory).
pub fn run() {
    let (pids, labs, hooks) = {
        let mut r = registry();
        (
            std::mem::take(&mut r.pids),
            std::mem::take(&mut r.labs),
            std::mem::take(&mut r.hooks),
        )
    };
    for h in hooks.iter().filter_map(Weak::upgrade) {
        h.teardown();
    }
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
