//! Running async code in a thread of its own, optionally inside a network namespace.
//!
//! Linux keeps the network namespace per thread, and a socket belongs to the namespace of
//! the thread that created it. [`spawn`] starts a thread, moves it into the namespace (if
//! any), builds a single-threaded tokio runtime there and runs the future on it; every
//! socket the future opens lives in that namespace. The rest of the process is untouched.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};

use nix::sched::{CloneFlags, setns};

use crate::BenchError;

/// Starts a thread named `name` that enters `netns` (a path such as `/var/run/netns/X`;
/// `None` stays in the current namespace) and runs `make()`'s future to completion on a
/// single-threaded runtime.
pub fn spawn<T, F, Fut>(
    name: &str,
    netns: Option<PathBuf>,
    make: F,
) -> Result<JoinHandle<Result<T, BenchError>>, BenchError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, BenchError>>,
{
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if let Some(ns) = &netns {
                enter(ns)?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| BenchError::io("build a tokio runtime", e))?;
            rt.block_on(make())
        })
        .map_err(|e| BenchError::io(format!("start thread {name}"), e))
}

/// [`spawn`], then waits for the thread's result.
pub fn run<T, F, Fut>(name: &str, netns: Option<PathBuf>, make: F) -> Result<T, BenchError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, BenchError>>,
{
    join(spawn(name, netns, make)?)
}

/// Waits for a thread started by [`spawn`]; a panic in it becomes an error.
pub fn join<T>(handle: JoinHandle<Result<T, BenchError>>) -> Result<T, BenchError> {
    let name = handle.thread().name().unwrap_or("bench").to_owned();
    handle.join().unwrap_or_else(|_| {
        Err(BenchError::Cluster(format!(
            "thread {name} panicked (see the message above)"
        )))
    })
}

/// Moves the calling thread into the network namespace at `ns`.
fn enter(ns: &Path) -> Result<(), BenchError> {
    let f = File::open(ns).map_err(|e| BenchError::io(format!("open {}", ns.display()), e))?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| {
        BenchError::io(
            format!("enter network namespace {}", ns.display()),
            std::io::Error::from(e),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_the_current_namespace_without_one() {
        let v = run("t", None, || async { Ok(21 * 2) }).unwrap();
        assert_eq!(v, 42);
    }

    #[test]
    fn a_missing_namespace_is_an_error_naming_it() {
        let err = run(
            "t",
            Some(PathBuf::from("/var/run/netns/none-such")),
            || async { Ok(()) },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("none-such"), "{err}");
    }
}
