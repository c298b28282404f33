//! Making sockets in another network namespace: the calling thread enters it for the
//! socket(2) call only and comes back (a socket keeps the namespace it was made in).

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::IngressError;

/// An open network namespace.
#[derive(Debug)]
pub(crate) struct Netns {
    fd: OwnedFd,
    path: PathBuf,
    /// (device, inode) of the namespace file: its identity.
    id: (u64, u64),
}

impl Netns {
    /// Opens the network namespace at `path` (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
    pub(crate) fn open(path: &Path) -> Result<Self, IngressError> {
        let ctx = || format!("open network namespace {}", path.display());
        if !mesh_sandbox::netns_exists(path) {
            return Err(IngressError::io(
                ctx(),
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such network namespace (create it first, or fix the path)",
                ),
            ));
        }
        let file = File::open(path).map_err(|e| IngressError::io(ctx(), e))?;
        let meta = file.metadata().map_err(|e| IngressError::io(ctx(), e))?;
        Ok(Netns {
            fd: OwnedFd::from(file),
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        })
    }

    /// The network namespace of the calling thread.
    pub(crate) fn current() -> Result<Self, IngressError> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Whether both are the same namespace.
    pub(crate) fn same_as(&self, other: &Netns) -> bool {
        self.id == other.id
    }

    /// The namespace file descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

thread_local! {
    /// Set when this thread could not come back to its home namespace: it then always enters
    /// the target namespace explicitly.
    static AWAY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a socket(2) call and its setup) with the calling thread in `target`, then puts
/// the thread back in `home` (the namespace every thread of the mesh lives in). Nothing in
/// `f` may wait on anything.
pub(crate) fn in_netns<T>(
    target: &Netns,
    home: &Netns,
    f: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    if target.same_as(home) && !AWAY.get() {
        return f();
    }
    setns(target.fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "cannot enter network namespace {}: {e}",
                target.path.display()
            ),
        )
    })?;
    AWAY.set(true);
    let out = f();
    match setns(home.fd(), CloneFlags::CLONE_NEWNET) {
        Ok(()) => AWAY.set(false),
        Err(e) => {
            tracing::error!(netns = %home.path.display(), error = %e, "cannot return to the home network namespace; this thread enters namespaces explicitly from now on");
        }
    }
    out
}

/// Puts the calling thread in `home` (a runtime thread starting).
pub(crate) fn enter_home(home: &Netns) -> io::Result<()> {
    setns(home.fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    AWAY.set(false);
    Ok(())
}
