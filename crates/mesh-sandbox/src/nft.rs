//! Running `nft` inside a network namespace.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Runs `nft -f -` with `script`, the child entering only the network namespace open as
/// `netns` (setns(2) before exec: its mount namespace, and so `/sys`, stay the caller's).
pub fn nft_in(netns: &impl AsFd, script: &str) -> io::Result<()> {
    let fd = netns.as_fd().as_raw_fd();
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls setns(2), which is async-signal-safe; `fd` stays open in
    // the parent (and so in the child) until the child has been waited for.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                e.kind(),
                "nft not found: install nftables (apt-get install nftables)",
            )
        } else {
            e
        }
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
