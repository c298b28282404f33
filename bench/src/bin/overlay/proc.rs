//! Processes: commands bounded in time (optionally inside a network namespace), background
//! programs killed by PID, the machine's CPU time and a process's resident set.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{OverlayBenchError, Result};

/// The path of the named network namespace `name` (`ip netns` convention).
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// Background processes still alive, killed by PID if the benchmark is interrupted.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// SIGKILLs every background process still running (from the signal thread).
pub fn kill_all_background() {
    for pid in std::mem::take(&mut *live()) {
        if let Ok(raw) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

fn command(netns: Option<&Path>, argv: &[&str]) -> Result<Command> {
    let Some((prog, rest)) = argv.split_first() else {
        return Err(OverlayBenchError::output(
            "a command",
            "empty argument list",
        ));
    };
    Ok(match netns {
        // nsenter enters the network namespace only and then execs the program: the PID
        // we hold is the program's.
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).args(argv);
            c
        }
        None => {
            let mut c = Command::new(prog);
            c.args(rest);
            c
        }
    })
}

fn render(netns: Option<&Path>, argv: &[&str]) -> String {
    let cmd = argv.join(" ");
    match netns {
        Some(ns) => format!("{cmd} (in {})", ns.display()),
        None => cmd,
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// What a finished command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The command line, for messages.
    pub command: String,
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its exit status, for messages.
    pub status: String,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Finished {
    /// The standard output when it succeeded, else an error carrying its standard error (or
    /// output).
    pub fn ok(self) -> Result<String> {
        if self.success {
            return Ok(self.stdout);
        }
        let said = if self.stderr.trim().is_empty() {
            self.stdout.trim().to_owned()
        } else {
            self.stderr.trim().to_owned()
        };
        Err(OverlayBenchError::Command {
            command: self.command,
            status: self.status,
            stderr: said,
        })
    }
}

/// Runs `argv` (inside `netns` when given), feeding it `stdin`, and returns its standard
/// output. Killed and reported after `timeout`; a non-zero exit is an error carrying its
/// standard error.
pub fn run(
    netns: Option<&Path>,
    argv: &[&str],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<String> {
    run_to_end(netns, argv, stdin, timeout)?.ok()
}

/// Runs `argv` like [`run`] but returns what it did whatever its exit status.
pub fn run_to_end(
    netns: Option<&Path>,
    argv: &[&str],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Finished> {
    let line = render(netns, argv);
    let mut cmd = command(netns, argv)?;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| OverlayBenchError::Spawn {
        command: line.clone(),
        source: e,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Small inputs (keys): the pipe buffer holds them; a failed write shows as the
        // program's own error.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.stdout.take().map(read_all);
    let err = child.stderr.take().map(read_all);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(OverlayBenchError::CommandTimeout {
                    command: line,
                    timeout,
                });
            }
        }
    };
    Ok(Finished {
        command: line,
        success: status.success(),
        status: status.to_string(),
        stdout: out.and_then(|h| h.join().ok()).unwrap_or_default(),
        stderr: err.and_then(|h| h.join().ok()).unwrap_or_default(),
    })
}

/// Whether `tool` is an executable in `PATH`.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(tool);
            p.metadata().is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// Calls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(OverlayBenchError::Wait {
                what: what.to_owned(),
                timeout,
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A program running in the background (inside a namespace), stopped on drop: SIGTERM,
/// then SIGKILL after two seconds, by PID.
#[derive(Debug)]
pub struct Background {
    child: Child,
    what: String,
}

impl Background {
    /// Starts `argv` inside `netns` with the extra environment `env`; its output goes to
    /// `log` (or nowhere).
    pub fn spawn(
        netns: &Path,
        argv: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<Background> {
        let line = render(Some(netns), argv);
        let mut cmd = command(Some(netns), argv)?;
        let (out, err) = match log {
            Some(path) => {
                let f = File::create(path)
                    .map_err(|e| OverlayBenchError::io(format!("create {}", path.display()), e))?;
                let g = f
                    .try_clone()
                    .map_err(|e| OverlayBenchError::io(format!("open {}", path.display()), e))?;
                (Stdio::from(f), Stdio::from(g))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| OverlayBenchError::Spawn {
            command: line.clone(),
            source: e,
        })?;
        live().push(child.id());
        tracing::debug!(pid = child.id(), command = %line, "started");
        Ok(Background { child, what: line })
    }

    /// Whether it still runs; an error names it and its exit status when it stopped.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(OverlayBenchError::Command {
                command: self.what.clone(),
                status: status.to_string(),
                stderr: "exited while it should keep running".to_owned(),
            }),
            Err(e) => Err(OverlayBenchError::io(
                format!("wait for `{}`", self.what),
                e,
            )),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let pid = self.child.id();
        if let Ok(raw) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.child.try_wait() {
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    tracing::debug!(pid, what = %self.what, "still running after SIGTERM, killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(Some(_)) | Err(_) => break,
            }
        }
        live().retain(|p| *p != pid);
    }
}

/// The machine's CPU time so far, all CPUs together (`/proc/stat`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTimes {
    /// user + system + softirq, seconds.
    pub busy: f64,
    /// Every column (idle and iowait included), seconds.
    pub total: f64,
}

impl CpuTimes {
    /// Reads `/proc/stat` now.
    pub fn now() -> Result<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat")
            .map_err(|e| OverlayBenchError::io("read /proc/stat", e))?;
        parse_proc_stat(&stat, clock_ticks())
            .ok_or_else(|| OverlayBenchError::output("/proc/stat", "no `cpu` line with 7 columns"))
    }

    /// CPU seconds spent busy from `earlier` to `self`, and the share of every CPU's time.
    pub fn since(&self, earlier: &CpuTimes) -> (f64, f64) {
        let busy = (self.busy - earlier.busy).max(0.0);
        let total = self.total - earlier.total;
        (busy, if total > 0.0 { busy / total } else { 0.0 })
    }
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// The aggregate `cpu` line of `/proc/stat`: user + system + softirq, and every column.
fn parse_proc_stat(stat: &str, ticks: f64) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let cols: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|c| c.parse().ok())
        .collect::<Option<_>>()?;
    if cols.len() < 7 {
        return None;
    }
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user.
    let busy = cols[0] + cols[2] + cols[6];
    let total: u64 = cols.iter().take(8).sum();
    Some(CpuTimes {
        busy: busy as f64 / ticks,
        total: total as f64 / ticks,
    })
}

/// Memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Highest resident set so far (`VmHWM`), KiB.
    pub peak_kib: u64,
}

impl Memory {
    /// Reads process `pid`'s memory now.
    pub fn of(pid: u32) -> Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path)
            .map_err(|e| OverlayBenchError::io(format!("read {path}"), e))?;
        let field = |name: &str| {
            status.lines().find_map(|l| {
                let v = l.strip_prefix(name)?.trim().strip_suffix("kB")?;
                v.trim().parse::<u64>().ok()
            })
        };
        match (field("VmRSS:"), field("VmHWM:")) {
            (Some(rss_kib), Some(peak_kib)) => Ok(Memory { rss_kib, peak_kib }),
            _ => Err(OverlayBenchError::output(path, "no VmRSS/VmHWM lines")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_is_user_system_softirq() {
        let stat = "cpu  100 5 50 1000 20 3 7 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        let t = parse_proc_stat(stat, 100.0).unwrap();
        assert!((t.busy - 1.57).abs() < 1e-9, "{t:?}");
        assert!((t.total - 11.85).abs() < 1e-9, "{t:?}");
        assert!(parse_proc_stat("cpu0 1 2\n", 100.0).is_none());
    }

    #[test]
    fn memory_of_this_process() {
        let m = Memory::of(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib, "{m:?}");
    }
}
