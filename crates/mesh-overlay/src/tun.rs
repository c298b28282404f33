//! The TUN device of a network, created inside its sandbox namespace.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tun_rs::{DeviceBuilder, SyncDevice};

use crate::error::OverlayError;
use crate::sandbox;
use crate::udp::Waker;

/// A network's TUN device, the latch that stops its reader, and whether it broke.
pub struct TunDevice {
    /// The device (non-blocking).
    pub dev: SyncDevice,
    /// Whether it carries virtio-net headers (TSO/GRO offloads on).
    pub offload: bool,
    /// Its MTU.
    pub mtu: u16,
    /// Stops its reader thread.
    pub stop: Waker,
    dead: AtomicBool,
}

impl TunDevice {
    /// Marks the device as unusable (e.g. its namespace is gone).
    pub fn mark_dead(&self) {
        self.dead.store(true, Ordering::Relaxed);
    }

    /// Whether the device broke.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }
}

/// Creates TUN device `name` with `mtu`, up, inside the namespace at `netns`; with `offload`,
/// asks for virtio-net headers and TSO, falling back to a plain device where the kernel refuses.
pub fn create(
    network: &str,
    sandbox_name: &str,
    netns: &Path,
    name: &str,
    mtu: u16,
    offload: bool,
) -> Result<TunDevice, OverlayError> {
    let err = |source: io::Error| OverlayError::Tun {
        network: network.to_string(),
        sandbox: sandbox_name.to_string(),
        ifname: name.to_string(),
        source,
    };
    let ifname = name.to_string();
    let built = sandbox::run_in_netns(netns, move || -> io::Result<(SyncDevice, bool)> {
        let build = |offload: bool| {
            DeviceBuilder::new()
                .name(ifname.clone())
                .mtu(mtu)
                .offload(offload)
                .enable(true)
                .build_sync()
        };
        let (dev, off) = match build(offload) {
            Ok(d) => (d, offload),
            Err(e) if offload => {
                tracing::info!(error = %e, "TUN offloads refused; using a plain TUN device");
                (build(false)?, false)
            }
            Err(e) => return Err(e),
        };
        dev.set_nonblocking(true)?;
        let off = off && dev.tcp_gso();
        Ok((dev, off))
    })
    .map_err(|e| OverlayError::Sandbox {
        what: format!("network {network}: create {name} in sandbox {sandbox_name}"),
        source: e,
    })?;
    let (dev, offload) = built.map_err(err)?;
    Ok(TunDevice {
        dev,
        offload,
        mtu,
        stop: Waker::new().map_err(err)?,
        dead: AtomicBool::new(false),
    })
}

/// Whether an interface called `name` exists in the namespace at `netns`.
pub fn exists_in(netns: &Path, name: &str) -> bool {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    sandbox::run_in_netns(
        netns,
        move || unsafe { libc::if_nametoindex(cname.as_ptr()) } != 0,
    )
    .unwrap_or(false)
}
