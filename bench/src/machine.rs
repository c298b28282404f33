//! What the figures were measured on: CPU, cores, memory, kernel, OS, and how long the disk
//! holding the data directories takes to make a small write durable.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::BenchError;
use crate::stats;

/// The machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Machine {
    /// CPU model name (`/proc/cpuinfo`).
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// Operating system (`/etc/os-release`).
    pub os: String,
    /// Virtualised, and by what (from the CPU flags and `/sys/class/dmi`), if known.
    pub hypervisor: Option<String>,
}

impl Machine {
    /// Reads the machine's facts; what cannot be read is left empty.
    pub fn detect() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let hv = cpu_flag(&cpuinfo, "hypervisor").then(|| {
            fs::read_to_string("/sys/class/dmi/id/sys_vendor")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "a hypervisor".to_owned())
        });
        Machine {
            cpu: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".to_owned()),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_mib: mem_total_kib(&meminfo).unwrap_or(0) / 1024,
            kernel,
            os: os_name(&os_release).unwrap_or_else(|| "unknown OS".to_owned()),
            hypervisor: hv,
        }
    }

    /// One line: `AMD EPYC, 2 cores, 7.8 GiB, Linux 6.1.0, Debian GNU/Linux 12 (bookworm)`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}, {} cores, {:.1} GiB RAM, Linux {}, {}",
            self.cpu,
            self.cores,
            self.memory_mib as f64 / 1024.0,
            self.kernel,
            self.os
        );
        if let Some(hv) = &self.hypervisor {
            s.push_str(&format!(", virtual machine ({hv})"));
        }
        s
    }
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_owned())
    })
}

/// Whether the first `flags` line of `/proc/cpuinfo` has `flag`.
fn cpu_flag(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "flags").then(|| v.split_whitespace().any(|f| f == flag))
        })
        .unwrap_or(false)
}

/// `MemTotal` of `/proc/meminfo`, KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `PRETTY_NAME` of `/etc/os-release`.
fn os_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        let v = l.strip_prefix("PRETTY_NAME=")?;
        Some(v.trim().trim_matches('"').to_owned())
    })
}

/// How long `write(4 KiB) + fdatasync` takes in `dir`: the median of `count` rounds. The
/// floor under any durable write of either system.
pub fn fdatasync_latency(dir: &Path, count: usize) -> Result<Duration, BenchError> {
    let path = dir.join("mesh-bench-fsync-probe");
    let result = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| BenchError::io(format!("create {}", path.display()), e))?;
        let block = [0x5au8; 4096];
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            let t = Instant::now();
            f.write_all(&block)
                .map_err(|e| BenchError::io(format!("write {}", path.display()), e))?;
            f.sync_data()
                .map_err(|e| BenchError::io(format!("fdatasync {}", path.display()), e))?;
            samples.push(t.elapsed());
        }
        Ok(stats::median(&samples).unwrap_or_default())
    })();
    let _ = fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu vme hypervisor lm\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";

    #[test]
    fn parses_proc_files() {
        assert_eq!(cpu_model(CPUINFO).as_deref(), Some("AMD EPYC 7B13"));
        assert!(cpu_flag(CPUINFO, "hypervisor"));
        assert!(!cpu_flag(CPUINFO, "hyper"));
        assert_eq!(
            mem_total_kib("MemFree: 1 kB\nMemTotal:        8131572 kB\n"),
            Some(8131572)
        );
        assert_eq!(
            os_name("NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
                .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(cpu_model(""), None);
        assert_eq!(mem_total_kib(""), None);
    }

    #[test]
    fn summary_names_everything() {
        let m = Machine {
            cpu: "X".into(),
            cores: 2,
            memory_mib: 2048,
            kernel: "6.1.0".into(),
            os: "Debian".into(),
            hypervisor: Some("QEMU".into()),
        };
        assert_eq!(
            m.summary(),
            "X, 2 cores, 2.0 GiB RAM, Linux 6.1.0, Debian, virtual machine (QEMU)"
        );
    }

    #[test]
    fn detects_this_machine_and_measures_its_disk() {
        let m = Machine::detect();
        assert!(m.cores >= 1);
        let dir = std::env::temp_dir();
        let d = fdatasync_latency(&dir, 3).unwrap();
        assert!(d > Duration::ZERO);
        assert!(!dir.join("mesh-bench-fsync-probe").exists());
    }
}
