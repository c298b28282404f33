//! DEVELOPMENT SHIM with the signatures of mesh-sandbox, built on `ip`; replaced by a re-export
//! of mesh-sandbox once that crate is complete.
#![allow(dead_code, missing_docs)]

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SandboxError(String);

pub struct SandboxSpec {
    pub name: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u16,
}

pub struct EndpointSpec {
    pub id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u16,
}

fn ip(args: &[&str]) -> Result<String, SandboxError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| SandboxError(format!("ip {args:?}: {e}")))?;
    if !out.status.success() {
        return Err(SandboxError(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

pub fn netns_exists(path: &Path) -> bool {
    path.exists()
}

pub fn ensure_sandbox(spec: &SandboxSpec) -> Result<(), SandboxError> {
    let n = spec.name.as_str();
    if !netns_exists(&netns_path(n)) {
        ip(&["netns", "add", n])?;
    }
    if ip(&["-n", n, "link", "show", "br0"]).is_err() {
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"])?;
    }
    let addr = format!("{}/{}", spec.gateway, spec.prefix);
    ip(&["-n", n, "addr", "replace", &addr, "dev", "br0"])?;
    let mtu = spec.mtu.to_string();
    ip(&["-n", n, "link", "set", "br0", "mtu", &mtu, "up"])?;
    ip(&["-n", n, "link", "set", "lo", "up"])?;
    run_in_netns(&netns_path(n), || {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        let _ = std::fs::write("/proc/sys/net/ipv4/conf/br0/proxy_arp", "1");
    })?;
    Ok(())
}

pub fn delete_sandbox(name: &str) -> Result<(), SandboxError> {
    if netns_exists(&netns_path(name)) {
        ip(&["netns", "del", name])?;
    }
    Ok(())
}

pub fn list_sandboxes(prefix: &str) -> Result<Vec<String>, SandboxError> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/var/run/netns") {
        for e in rd.flatten() {
            if let Some(s) = e.file_name().to_str()
                && s.starts_with(prefix)
            {
                v.push(s.to_string());
            }
        }
    }
    v.sort();
    Ok(v)
}

pub fn run_in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SandboxError> {
    let file = File::open(netns).map_err(|e| SandboxError(format!("{}: {e}", netns.display())))?;
    let h = std::thread::spawn(move || {
        // SAFETY: setns on an open namespace fd for this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(SandboxError(format!(
                "setns: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(f())
    });
    h.join()
        .map_err(|_| SandboxError("netns thread panicked".into()))?
}

fn veth_name(id: &str) -> String {
    let mut h: u32 = 2166136261;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16777619);
    }
    format!("ve{h:08x}")
}

pub fn attach_endpoint(sandbox: &str, ep: &EndpointSpec) -> Result<(), SandboxError> {
    let host = veth_name(&ep.id);
    if ip(&["-n", sandbox, "link", "show", &host]).is_ok() {
        return Ok(());
    }
    let tmp = format!("t{}", &host[2..]);
    let ns = ep.netns.display().to_string();
    let gw = ip(&["-n", sandbox, "-4", "-o", "addr", "show", "dev", "br0"])?;
    let gw = gw
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or("")
        .to_string();
    ip(&[
        "-n", sandbox, "link", "add", &host, "type", "veth", "peer", "name", &tmp, "netns", &ns,
    ])?;
    let mtu = ep.mtu.to_string();
    ip(&["-n", sandbox, "link", "set", &host, "master", "br0", "mtu", &mtu, "up"])?;
    ip(&["-n", sandbox, "link", "set", &host, "alias", &format!("ep:{}", ep.id)])?;
    let inner = ["--netns", &ns];
    let _ = inner;
    let in_ns = |args: &[&str]| -> Result<(), SandboxError> {
        let out = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .arg("ip")
            .args(args)
            .output()
            .map_err(|e| SandboxError(e.to_string()))?;
        if !out.status.success() {
            return Err(SandboxError(format!(
                "nsenter ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    };
    in_ns(&["link", "set", &tmp, "name", &ep.ifname])?;
    in_ns(&[
        "addr",
        "add",
        &format!("{}/{}", ep.ip, ep.prefix),
        "dev",
        &ep.ifname,
    ])?;
    in_ns(&["link", "set", &ep.ifname, "mtu", &mtu, "up"])?;
    in_ns(&["link", "set", "lo", "up"])?;
    if !gw.is_empty() {
        in_ns(&["route", "replace", "default", "via", &gw])?;
    }
    Ok(())
}

pub fn detach_endpoint(sandbox: &str, endpoint_id: &str) -> Result<(), SandboxError> {
    let host = veth_name(endpoint_id);
    if ip(&["-n", sandbox, "link", "show", &host]).is_ok() {
        ip(&["-n", sandbox, "link", "del", &host])?;
    }
    Ok(())
}

pub fn list_endpoints(sandbox: &str) -> Result<Vec<String>, SandboxError> {
    let out = ip(&["-n", sandbox, "-d", "link", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("alias ep:"))
        .map(|s| s.trim().to_string())
        .collect())
}

pub fn sync_routes(sandbox: &str, dev: &str, dests: &[Ipv4Addr]) -> Result<(), SandboxError> {
    let out = ip(&["-n", sandbox, "-4", "route", "show", "dev", dev])?;
    let want: Vec<String> = dests.iter().map(|d| d.to_string()).collect();
    for l in out.lines() {
        let d = l.split_whitespace().next().unwrap_or("");
        if !d.is_empty() && !want.iter().any(|w| w == d) {
            let _ = ip(&["-n", sandbox, "route", "del", d, "dev", dev]);
        }
    }
    for w in &want {
        ip(&[
            "-n",
            sandbox,
            "route",
            "replace",
            &format!("{w}/32"),
            "dev",
            dev,
        ])?;
    }
    Ok(())
}

pub fn interface_mtu_towards(_dst: IpAddr) -> Result<u16, SandboxError> {
    Ok(1500)
}
