//! Running commands: bounded in time, output captured, optionally inside a network namespace.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

use crate::error::LabError;

/// Where named network namespaces live (`ip netns` convention).
pub(crate) const NETNS_DIR: &str = "/var/run/netns";

/// The path of the named network namespace `name`.
pub(crate) fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// What a command did: its exit status and its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub command: String,
    /// Exit code; 128 + signal number when killed by a signal; -1 when it could not be
    /// started or was killed for running too long (`stderr` then says why).
    pub status: i32,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl CmdOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// The standard output if the command succeeded, else an error carrying the command line,
    /// the status and the standard error.
    pub fn ok(&self) -> Result<String, LabError> {
        if self.success() {
            Ok(self.stdout.clone())
        } else {
            Err(LabError::CommandFailed {
                command: self.command.clone(),
                status: self.status,
                stderr: self.stderr.trim().to_owned(),
                stdout: self.stdout.trim().to_owned(),
            })
        }
    }

    fn not_run(command: String, why: String) -> Self {
        CmdOutput {
            command,
            status: -1,
            stdout: String::new(),
            stderr: why,
        }
    }
}

/// Renders a command line for messages.
pub(crate) fn render(program: &Path, args: &[String]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        if a.is_empty() || a.contains(char::is_whitespace) {
            s.push('\'');
            s.push_str(a);
            s.push('\'');
        } else {
            s.push_str(a);
        }
    }
    s
}

/// Maps an exit status to one integer (128 + signal when signalled).
pub(crate) fn status_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => -1,
    }
}

/// Makes `cmd` enter the network namespace at `ns` between fork and exec.
///
/// The returned file must stay open until the command has been spawned.
pub(crate) fn enter_netns(cmd: &mut Command, ns: &Path) -> Result<File, LabError> {
    let file = File::open(ns)
        .map_err(|e| LabError::io(format!("open network namespace {}", ns.display()), e))?;
    let fd = file.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec; it only calls setns(2),
    // which is async-signal-safe, on a descriptor that the parent keeps open until spawn
    // returns (the caller holds the returned File).
    unsafe {
        cmd.pre_exec(move || {
            let ns = BorrowedFd::borrow_raw(fd);
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    Ok(file)
}

/// Gives the child an empty signal mask: a caller that blocks signals (to take them with
/// sigwait, as `mesh-lab` does) must not pass that on, or its children ignore SIGTERM.
pub(crate) fn clear_signal_mask(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // pthread_sigmask(3), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::signal::SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
}

/// Runs `program args` (optionally inside the network namespace `netns`, a path), feeding it
/// `stdin`, killing it after `timeout` or as soon as `cancel` becomes true.
pub(crate) fn run(
    program: &Path,
    args: &[String],
    netns: Option<&Path>,
    stdin: Option<&str>,
    timeout: Duration,
    cancel: Option<&AtomicBool>,
) -> CmdOutput {
    let mut line = render(program, args);
    if let Some(ns) = netns {
        line = format!("[netns {}] {line}", ns.display());
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that killing it also kills what it started (which
        // would otherwise hold its output pipes open).
        .process_group(0);
    clear_signal_mask(&mut cmd);
    let _ns_file = match netns {
        Some(ns) => match enter_netns(&mut cmd, ns) {
            Ok(f) => Some(f),
            Err(e) => return CmdOutput::not_run(line, e.to_string()),
        },
        None => None,
    };
    tracing::debug!(command = %line, "run");
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return CmdOutput::not_run(line.clone(), format!("could not start `{line}`: {e}"));
        }
    };
    drop(_ns_file);
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_owned();
        // A writer thread so that a child that does not read its input cannot block us.
        thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let out = Collector::start(child.stdout.take());
    let err = Collector::start(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::SeqCst));
    let (status, killed_because) = loop {
        match child.try_wait() {
            Ok(Some(st)) => break (status_code(st), None),
            Ok(None) if Instant::now() >= deadline => {
                kill_group(&mut child);
                tracing::warn!(command = %line, ?timeout, "command timed out, killed");
                break (-1, Some(format!("killed after running for {timeout:?}")));
            }
            Ok(None) if cancelled() => {
                kill_group(&mut child);
                break (-1, Some("killed: the lab was torn down".to_owned()));
            }
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => {
                return CmdOutput::not_run(line, format!("waiting for the command failed: {e}"));
            }
        }
    };
    let stdout = out.finish();
    let mut stderr = err.finish();
    if let Some(why) = killed_because {
        stderr.push_str(&format!("\n({why})"));
    }
    CmdOutput {
        command: line,
        status,
        stdout,
        stderr,
    }
}

/// SIGKILLs a child's whole process group (it leads one), then reaps the child.
fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads a pipe on a thread into a shared buffer.
struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl Collector {
    fn start<R: Read + Send + 'static>(pipe: Option<R>) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let Some(mut pipe) = pipe else {
            return Collector { buf, done: None };
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let b = Arc::clone(&buf);
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => b
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend_from_slice(&chunk[..n]),
                }
            }
            let _ = tx.send(());
        });
        Collector {
            buf,
            done: Some(rx),
        }
    }

    /// Waits (bounded: a grandchild may hold the pipe open) for the end of output.
    fn finish(self) -> String {
        if let Some(rx) = self.done {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
        let bytes = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Finds a system tool on PATH or in the sbin directories (root's PATH may lack them).
pub(crate) fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `ip ARGS` (not in any namespace unless the args say `-n`), erroring on failure.
pub(crate) fn ip(args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    run(
        &tool("ip"),
        &args,
        None,
        stdin,
        Duration::from_secs(30),
        None,
    )
    .ok()
}

/// The last `lines` lines of a file (reads at most its last 64 KiB), or a note saying why not.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    use std::io::{Seek, SeekFrom};
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return format!("(cannot seek in {})", path.display());
    }
    let mut bytes = Vec::new();
    if let Err(e) = f.read_to_end(&mut bytes) {
        return format!("(cannot read {}: {e})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = all[from..].join("\n");
    if out.is_empty() {
        out = "(empty)".to_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_carries_stderr() {
        let out = run(
            Path::new("sh"),
            &["-c".into(), "echo out; echo bad >&2; exit 3".into()],
            None,
            None,
            Duration::from_secs(10),
            None,
        );
        assert_eq!(out.status, 3);
        assert_eq!(out.stdout, "out\n");
        let err = out.ok().unwrap_err().to_string();
        assert!(err.contains("bad"), "{err}");
        assert!(err.contains("failed (3)"), "{err}");
    }

    #[test]
    fn stdin_is_fed() {
        let out = run(
            Path::new("cat"),
            &[],
            None,
            Some("hello"),
            Duration::from_secs(10),
            None,
        );
        assert_eq!(out.ok().unwrap(), "hello");
    }

    #[test]
    fn missing_program_is_reported() {
        let out = run(
            Path::new("/nonexistent/prog"),
            &[],
            None,
            None,
            Duration::from_secs(10),
            None,
        );
        assert_eq!(out.status, -1);
        assert!(out.stderr.contains("/nonexistent/prog"), "{}", out.stderr);
    }

    #[test]
    fn runaway_is_killed() {
        let out = run(
            Path::new("sleep"),
            &["30".into()],
            None,
            None,
            Duration::from_millis(200),
            None,
        );
        assert_eq!(out.status, -1);
        assert!(out.stderr.contains("killed after"), "{}", out.stderr);
    }

    #[test]
    fn cancel_kills_the_command_and_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cancel = AtomicBool::new(false);
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let out = thread::scope(|s| {
            s.spawn(|| {
                while !pidfile.exists() {
                    thread::sleep(Duration::from_millis(10));
                }
                cancel.store(true, Ordering::SeqCst);
            });
            run(
                Path::new("sh"),
                &["-c".into(), script],
                None,
                None,
                Duration::from_secs(60),
                Some(&cancel),
            )
        });
        assert_eq!(out.status, -1);
        assert!(out.stderr.contains("torn down"), "{}", out.stderr);
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let pid = pid.trim();
        // Gone, or a zombie waiting for its new parent to reap it. SIGKILL is delivered
        // asynchronously: give the process a moment to finish dying.
        let pid_num: u32 = pid.parse().unwrap();
        let mut state = crate::stale::proc_state(pid_num);
        for _ in 0..100 {
            if matches!(state, None | Some('Z')) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
            state = crate::stale::proc_state(pid_num);
        }
        assert!(
            matches!(state, None | Some('Z')),
            "grandchild {pid} killed with its group: state {state:?}"
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        let t = tail(&p, 3);
        assert_eq!(t, "line 98\nline 99\nline 100");
        assert!(tail(&dir.path().join("nope"), 3).contains("cannot read"));
    }

    #[test]
    fn render_quotes_spaces() {
        assert_eq!(
            render(Path::new("swarm"), &["a b".into(), "c".into()]),
            "swarm 'a b' c"
        );
    }
}
