//! What the figures were measured on: CPU, cores, memory, kernel, OS, and how long the disk
//! holding the data directories takes to make a small write durable.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::BenchError;
use crate::stats;

/// The machine.
#[derive(Debug, Clone, PartialEq, Default)]
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
    /// Share of the CPUs busy during the second before the start: other work on the machine
    /// skews the figures.
    pub busy: Option<f64>,
}

/// How long the disk takes to make a small write durable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disk {
    /// The directory probed.
    pub dir: PathBuf,
    /// Its filesystem and device, e.g. `ext4 on /dev/vda`, if known.
    pub filesystem: Option<String>,
    /// Median of `write 4 KiB at the end of a file + fdatasync` (the file grows).
    pub append: Duration,
    /// Median of `write 4 KiB over existing data + fdatasync` (no metadata changes).
    pub overwrite: Duration,
}

impl Disk {
    /// One line: `ext4 on /dev/vda (/tmp): 4 KiB write + fdatasync 4.00 ms appending, 1.00 ms
    /// overwriting`.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        format!(
            "{} ({}): 4 KiB write + fdatasync takes {} appending, {} overwriting (medians)",
            self.filesystem.as_deref().unwrap_or("unknown filesystem"),
            self.dir.display(),
            ms(self.append),
            ms(self.overwrite)
        )
    }
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
                .unwrap_or_else(|| "hypervisor unknown".to_owned())
        });
        let mut cpu = cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".to_owned());
        if let (Some(family), Some(model)) = (
            cpu_field(&cpuinfo, "cpu family"),
            cpu_field(&cpuinfo, "model"),
        ) {
            cpu.push_str(&format!(" (family {family}, model {model})"));
        }
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_mib: mem_total_kib(&meminfo).unwrap_or(0) / 1024,
            kernel,
            os: os_name(&os_release).unwrap_or_else(|| "unknown OS".to_owned()),
            hypervisor: hv,
            busy: cpu_busy(Duration::from_secs(1)),
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
        if let Some(busy) = self.busy {
            s.push_str(&format!(
                "; CPUs {:.0}% busy in the second before the start",
                busy * 100.0
            ));
        }
        s
    }
}

/// Share of the CPUs busy over `sample`, from `/proc/stat`.
fn cpu_busy(sample: Duration) -> Option<f64> {
    let before = cpu_times(&fs::read_to_string("/proc/stat").ok()?)?;
    std::thread::sleep(sample);
    let after = cpu_times(&fs::read_to_string("/proc/stat").ok()?)?;
    let total = after.1.checked_sub(before.1)?;
    let idle = after.0.checked_sub(before.0)?;
    (total > 0).then(|| 1.0 - idle as f64 / total as f64)
}

/// (idle, total) jiffies of all CPUs from `/proc/stat` text; idle includes I/O wait.
fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let idle = v.get(3)? + v.get(4)?;
    Some((idle, v.iter().sum()))
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpu_field(cpuinfo, "model name")
}

/// The first value of `field` in `/proc/cpuinfo`.
fn cpu_field(cpuinfo: &str, field: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == field).then(|| v.trim().to_owned())
    })
}

/// The filesystem holding `path`, from `/proc/self/mounts` text: the mount with the longest
/// mount point that is a prefix of `path`, as `TYPE on SOURCE`.
fn filesystem_of(mounts: &str, path: &Path) -> Option<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (source, point, fstype) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(point)
                .then(|| (point.len(), format!("{fstype} on {source}")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
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

/// Probes the disk holding `dir`: `rounds` durable 4 KiB writes appended to a new file,
/// then `rounds` over the same, already written, blocks. The floor under any durable write of
/// either system.
pub fn probe_disk(dir: &Path, rounds: usize) -> Result<Disk, BenchError> {
    let path = dir.join("mesh-bench-fsync-probe");
    let result = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| BenchError::io(format!("create {}", path.display()), e))?;
        let block = [0x5au8; 4096];
        let rounds = rounds.max(1);
        let durable_write = |f: &mut std::fs::File, at: Option<u64>| {
            let t = Instant::now();
            match at {
                Some(offset) => f.write_all_at(&block, offset),
                None => f.write_all(&block),
            }
            .and_then(|()| f.sync_data())
            .map_err(|e| BenchError::io(format!("write and fdatasync {}", path.display()), e))?;
            Ok::<_, BenchError>(t.elapsed())
        };
        let mut append = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            append.push(durable_write(&mut f, None)?);
        }
        let mut overwrite = Vec::with_capacity(rounds);
        for i in 0..rounds {
            overwrite.push(durable_write(&mut f, Some(4096 * i as u64))?);
        }
        Ok(Disk {
            dir: dir.to_path_buf(),
            filesystem: fs::read_to_string("/proc/self/mounts")
                .ok()
                .and_then(|m| filesystem_of(&m, &dir.canonicalize().unwrap_or(dir.to_path_buf()))),
            append: stats::median(&append).unwrap_or_default(),
            overwrite: stats::median(&overwrite).unwrap_or_default(),
        })
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
            busy: Some(0.031),
        };
        assert_eq!(
            m.summary(),
            "X, 2 cores, 2.0 GiB RAM, Linux 6.1.0, Debian, virtual machine (QEMU); CPUs 3% busy in the second before the start"
        );
        assert_eq!(
            cpu_times("cpu  10 0 5 80 5 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n"),
            Some((85, 100))
        );
        assert_eq!(cpu_times("nothing"), None);
    }

    #[test]
    fn finds_the_filesystem_of_a_path() {
        let mounts = "/dev/vda / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\nproc /proc proc rw 0 0\ntmpfs /tmpx tmpfs rw 0 0\n";
        assert_eq!(
            filesystem_of(mounts, Path::new("/tmp/a/b")).as_deref(),
            Some("tmpfs on tmpfs")
        );
        assert_eq!(
            filesystem_of(mounts, Path::new("/var/lib")).as_deref(),
            Some("ext4 on /dev/vda")
        );
        assert_eq!(filesystem_of("", Path::new("/x")), None);
    }

    #[test]
    fn detects_this_machine_and_probes_its_disk() {
        let m = Machine::detect();
        assert!(m.cores >= 1);
        let dir = std::env::temp_dir();
        let d = probe_disk(&dir, 3).unwrap();
        assert!(d.append > Duration::ZERO && d.overwrite > Duration::ZERO);
        assert!(d.filesystem.is_some());
        assert!(d.summary().contains("appending"));
        assert!(!dir.join("mesh-bench-fsync-probe").exists());
    }
}
