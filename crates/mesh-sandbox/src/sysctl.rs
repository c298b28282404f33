//! Per-namespace sysctls.
//!
//! The kernel resolves /proc/sys/net against the network namespace of the *calling thread*, so a
//! thread that has entered a namespace with setns(2) reads and writes that namespace's
//! `net.*` values through plain /proc/sys paths (the tests check this against `nsenter`).

use std::fs;
use std::path::Path;

use crate::SandboxError;

/// Sets `/proc/sys/<key>` to `value` in the calling thread's network namespace, writing only when
/// the value differs.
pub(crate) fn set(netns: &str, key: &str, value: &str) -> Result<(), SandboxError> {
    let path = Path::new("/proc/sys").join(key);
    let err = |source| SandboxError::Sysctl {
        netns: netns.to_owned(),
        key: key.to_owned(),
        source,
    };
    let current = fs::read_to_string(&path).map_err(err)?;
    if current.trim() == value {
        return Ok(());
    }
    tracing::debug!(
        netns,
        key,
        from = current.trim(),
        to = value,
        "setting sysctl"
    );
    fs::write(&path, value).map_err(err)
}
