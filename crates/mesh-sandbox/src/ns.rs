//! Named network namespaces under /var/run/netns, the way `ip netns` keeps them, and running
//! code inside one.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

use crate::SandboxError;

/// Where named network namespaces live (the directory `ip netns` uses).
pub const NETNS_DIR: &str = "/var/run/netns";

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The path of the named network namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether `path` is a network namespace: a bind-mounted namespace file such as
/// `/var/run/netns/NAME`, or a `/proc/PID/ns/net` link of a live process.
pub fn netns_exists(path: &Path) -> bool {
    File::open(path).map(|f| is_netns_file(&f)).unwrap_or(false)
}

fn is_netns_file(f: &File) -> bool {
    match fstatfs(f.as_fd()) {
        Ok(st) if st.filesystem_type() == NSFS_MAGIC => {}
        _ => return false,
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which is open
    // for the duration of the call.
    let kind = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(f), NS_GET_NSTYPE) };
    kind == libc::CLONE_NEWNET
}

/// Opens a network namespace file, checking that it is one.
pub(crate) fn open_netns(path: &Path) -> Result<File, SandboxError> {
    let f = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SandboxError::NetnsMissing {
            path: path.to_path_buf(),
        },
        _ => SandboxError::Netns {
            path: path.to_path_buf(),
            op: "open the namespace file",
            source: e,
        },
    })?;
    if !is_netns_file(&f) {
        return Err(SandboxError::NetnsMissing {
            path: path.to_path_buf(),
        });
    }
    Ok(f)
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Makes /var/run/netns exist and be a shared mount point, as `ip netns add` does, so that a
/// namespace mounted there later shows in every mount namespace that shares it.
fn prepare_netns_dir() -> Result<(), SandboxError> {
    let dir = Path::new(NETNS_DIR);
    let err = |op, source| SandboxError::Netns {
        path: dir.to_path_buf(),
        op,
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| err("create the directory", e))?;
    let make_shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| err("bind-mount the directory onto itself", errno_io(e)))?;
            make_shared().map_err(|e| err("make the directory a shared mount", errno_io(e)))
        }
        Err(e) => Err(err("make the directory a shared mount", errno_io(e))),
    }
}

/// Creates the named network namespace `name` unless it exists. Returns whether it was created.
pub(crate) fn create_named_netns(name: &str) -> Result<bool, SandboxError> {
    let path = netns_path(name);
    if netns_exists(&path) {
        return Ok(false);
    }
    prepare_netns_dir()?;
    let err = |op, source| SandboxError::Netns {
        path: path.clone(),
        op,
        source,
    };
    if path.exists() {
        // A leftover of an interrupted creation: a plain file, or a stale mount.
        tracing::warn!(netns = %path.display(), "replacing a namespace file that is not a network namespace");
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        fs::remove_file(&path).map_err(|e| err("remove a stale namespace file", e))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(|e| err("create the namespace file", e))?;

    let target = path.clone();
    let made = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<(), (&'static str, Errno)> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| ("unshare a new network namespace", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ("bind-mount the new namespace", e))
        })
        .map_err(|e| SandboxError::Thread {
            netns: path.display().to_string(),
            source: e,
        })?
        .join();
    let outcome = match made {
        Ok(Ok(())) => Ok(true),
        Ok(Err((op, e))) => Err(err(op, errno_io(e))),
        Err(payload) => Err(SandboxError::Panicked {
            netns: path.display().to_string(),
            message: panic_message(&payload),
        }),
    };
    if outcome.is_err() {
        let _ = fs::remove_file(&path);
    } else {
        tracing::info!(netns = %path.display(), "created network namespace");
    }
    outcome
}

/// Unmounts and removes the named namespace file. A missing one is fine.
pub(crate) fn remove_named_netns(name: &str) -> Result<(), SandboxError> {
    let path = netns_path(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(SandboxError::Netns {
                path,
                op: "unmount the namespace",
                source: errno_io(e),
            });
        }
    }
    match fs::remove_file(&path) {
        Ok(()) => {
            tracing::info!(netns = %path.display(), "removed network namespace");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SandboxError::Netns {
            path,
            op: "remove the namespace file",
            source: e,
        }),
    }
}

/// Names in /var/run/netns starting with `prefix`, sorted.
pub fn list_named(prefix: &str) -> Result<Vec<String>, SandboxError> {
    let dir = Path::new(NETNS_DIR);
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(SandboxError::Netns {
                path: dir.to_path_buf(),
                op: "list the directory",
                source: e,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SandboxError::Netns {
            path: dir.to_path_buf(),
            op: "list the directory",
            source: e,
        })?;
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with(prefix)
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

pub(crate) fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Runs `f` on a fresh OS thread that first enters the network namespace `netns` (when given;
/// else it stays in the caller's thread's namespace) and returns what `f` returns.
pub(crate) fn run_on_thread<T: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SandboxError> {
    let label = netns.map_or_else(|| "current".to_owned(), |p| p.display().to_string());
    // Open the namespace here so that a missing one is reported before a thread starts.
    let ns = netns
        .map(|p| open_netns(p).map(|f| (f, p.to_path_buf())))
        .transpose()?;
    let handle = std::thread::Builder::new()
        .name("netns-worker".into())
        .spawn(move || -> Result<T, SandboxError> {
            if let Some((file, path)) = ns {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| SandboxError::Netns {
                    path,
                    op: "enter (setns) the namespace",
                    source: errno_io(e),
                })?;
                drop(file);
            }
            Ok(f())
        })
        .map_err(|e| SandboxError::Thread {
            netns: label.clone(),
            source: e,
        })?;
    match handle.join() {
        Ok(r) => r,
        Err(payload) => Err(SandboxError::Panicked {
            netns: label,
            message: panic_message(&payload),
        }),
    }
}
