//! The shim: a small supervisor per container that outlives the daemon.
//!
//! `shim_main` forks; the parent returns at once (so the daemon can reap it) and the child
//! detaches (`setsid`), becomes a child subreaper, writes `<bundle>/shim.pid`, runs
//! `runc run --detach <id>` with the container's stdout and stderr both on `<bundle>/log`
//! (opened for appending), waits for the container's first process (re-parented to the
//! shim when runc exits), deletes it from runc, and writes the exit (code, time, runc's
//! error if the container never started) atomically to `<bundle>/exit`.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, setsid};

use crate::runtime::Exit;

/// The container's merged stdout and stderr.
pub(crate) const LOG_FILE: &str = "log";
/// The exit record the shim writes.
pub(crate) const EXIT_FILE: &str = "exit";
/// The container's host pid, written by runc once it runs.
pub(crate) const PID_FILE: &str = "pid";
/// `<pid> <start time>` of the shim.
pub(crate) const SHIM_PID_FILE: &str = "shim.pid";
/// The shim's own diagnostics.
pub(crate) const SHIM_LOG_FILE: &str = "shim.log";
/// runc's own log (JSON lines).
pub(crate) const RUNC_LOG_FILE: &str = "runc.log";

/// The exit code recorded when the runtime itself failed.
pub(crate) const RUNTIME_FAILURE: i32 = 255;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug)]
struct ShimArgs {
    runc: PathBuf,
    root: PathBuf,
    bundle: PathBuf,
    id: String,
}

impl ShimArgs {
    fn parse(args: &[OsString]) -> Result<ShimArgs, String> {
        let mut runc = None;
        let mut root = None;
        let mut bundle = None;
        let mut id = None;
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{} needs a value", flag.to_string_lossy()))?;
            match flag.to_str() {
                Some("--runc") => runc = Some(PathBuf::from(value)),
                Some("--root") => root = Some(PathBuf::from(value)),
                Some("--bundle") => bundle = Some(PathBuf::from(value)),
                Some("--id") => id = Some(value.to_string_lossy().into_owned()),
                _ => return Err(format!("unknown argument {}", flag.to_string_lossy())),
            }
        }
        let need = |what: &str| {
            format!("missing {what} (usage: --runc PATH --root DIR --bundle DIR --id ID)")
        };
        Ok(ShimArgs {
            runc: runc.ok_or_else(|| need("--runc"))?,
            root: root.ok_or_else(|| need("--root"))?,
            bundle: bundle.ok_or_else(|| need("--bundle"))?,
            id: id.ok_or_else(|| need("--id"))?,
        })
    }
}

/// The shim's entry point. `args` are its arguments without the program name (and without
/// meshd's `__shim` word): `--runc PATH --root DIR --bundle DIR --id ID`. Returns the exit
/// code for the calling process: 0 once the supervisor is detached, 2 on bad arguments.
///
/// It forks, so call it before the program starts any thread (in meshd: before building the
/// tokio runtime).
pub fn shim_main(args: Vec<OsString>) -> i32 {
    let opts = match ShimArgs::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mesh-shim: {e}");
            return 2;
        }
    };
    // SAFETY: the caller runs this before starting any thread, so the child may do anything.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("mesh-shim: fork: {e}");
            1
        }
        Ok(ForkResult::Parent { .. }) => 0,
        Ok(ForkResult::Child) => {
            let code = supervise(&opts);
            std::process::exit(code)
        }
    }
}

/// Start time of a process (field 22 of /proc/PID/stat), and whether it is a zombie.
pub(crate) fn proc_start_time(pid: i32) -> Option<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); start time is field 22.
    let zombie = fields.first().is_some_and(|s| *s == "Z" || *s == "X");
    Some((fields.get(19)?.parse().ok()?, zombie))
}

fn redirect_stdio(bundle: &Path) {
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
    if let Ok(log) = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(bundle.join(SHIM_LOG_FILE))
    {
        let _ = nix::unistd::dup2_stdout(&log);
        let _ = nix::unistd::dup2_stderr(&log);
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

pub(crate) fn write_exit(bundle: &Path, exit: &Exit) -> std::io::Result<()> {
    let data = serde_json::to_vec(exit).map_err(std::io::Error::other)?;
    write_atomic(&bundle.join(EXIT_FILE), &data)
}

/// The last error runc logged, if any.
pub(crate) fn runc_error(bundle: &Path) -> Option<String> {
    let text = fs::read_to_string(bundle.join(RUNC_LOG_FILE)).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .next_back()
}

fn status_code(s: WaitStatus) -> Option<(Pid, i32)> {
    match s {
        WaitStatus::Exited(pid, code) => Some((pid, code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid, 128 + sig as i32)),
        _ => None,
    }
}

fn supervise(opts: &ShimArgs) -> i32 {
    let _ = setsid();
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let bundle = &opts.bundle;
    redirect_stdio(bundle);
    let _ = std::env::set_current_dir(bundle);
    let me = std::process::id();
    let start = proc_start_time(i32::try_from(me).unwrap_or(0)).map_or(0, |(s, _)| s);
    if let Err(e) = write_atomic(
        &bundle.join(SHIM_PID_FILE),
        format!("{me} {start}").as_bytes(),
    ) {
        eprintln!("mesh-shim {}: writing {SHIM_PID_FILE}: {e}", opts.id);
    }
    let fail = |msg: String| {
        eprintln!("mesh-shim {}: {msg}", opts.id);
        let _ = write_exit(
            bundle,
            &Exit {
                code: RUNTIME_FAILURE,
                finished_at_ms: now_ms(),
                error: Some(msg),
            },
        );
        1
    };
    let log = match OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(bundle.join(LOG_FILE))
    {
        Ok(f) => f,
        Err(e) => return fail(format!("opening {}: {e}", bundle.join(LOG_FILE).display())),
    };
    let log2 = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(format!("duplicating the log descriptor: {e}")),
    };
    // `--detach` hands runc's own stdio to the container: stdout and stderr are then one
    // open file, so their order is kept. (In the foreground runc copies each through a pipe
    // of its own, and lines of the two interleave out of order.) runc exits once the
    // container runs; its first process is then re-parented to this subreaper.
    let child = Command::new(&opts.runc)
        .arg("--root")
        .arg(&opts.root)
        .arg("--log")
        .arg(bundle.join(RUNC_LOG_FILE))
        .arg("--log-format")
        .arg("json")
        .arg("run")
        .arg("--detach")
        .arg("--bundle")
        .arg(bundle)
        .arg("--pid-file")
        .arg(bundle.join(PID_FILE))
        .arg(&opts.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {}: {e}", opts.runc.display())),
    };
    let runc_pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    eprintln!("mesh-shim {}: runc started as pid {runc_pid}", opts.id);
    let mut runc_code: Option<i32> = None;
    let mut reaped: Vec<(Pid, i32)> = Vec::new();
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(s) => {
                if let Some((pid, code)) = status_code(s) {
                    if pid == runc_pid {
                        runc_code = Some(code);
                    } else {
                        reaped.push((pid, code));
                    }
                }
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => break,
            Err(e) => {
                eprintln!("mesh-shim {}: waitpid: {e}", opts.id);
                break;
            }
        }
    }
    let container_pid = fs::read_to_string(bundle.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map(Pid::from_raw);
    let container_code =
        container_pid.and_then(|cp| reaped.iter().find(|(p, _)| *p == cp).map(|(_, c)| *c));
    let (code, error) = match (runc_code, container_code) {
        (Some(0), Some(code)) => (code, None),
        (Some(0), None) => (
            RUNTIME_FAILURE,
            Some("the container's exit status was not seen (its first process was not re-parented to the shim)".to_string()),
        ),
        (Some(rc), _) => (
            rc,
            Some(runc_error(bundle).unwrap_or_else(|| {
                format!(
                    "runc exited with code {rc} before the container started; see {}",
                    bundle.join(LOG_FILE).display()
                )
            })),
        ),
        (None, _) => (RUNTIME_FAILURE, Some("runc's exit status was lost".to_string())),
    };
    // Free the container's cgroups and runc state now, as a foreground `runc run` would.
    if runc_code == Some(0) {
        match Command::new(&opts.runc)
            .arg("--root")
            .arg(&opts.root)
            .args(["delete", "--force"])
            .arg(&opts.id)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if !o.status.success() => eprintln!(
                "mesh-shim {}: runc delete: {}",
                opts.id,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Ok(_) => {}
            Err(e) => eprintln!("mesh-shim {}: runc delete: {e}", opts.id),
        }
    }
    eprintln!("mesh-shim {}: exited with code {code}", opts.id);
    if let Err(e) = write_exit(
        bundle,
        &Exit {
            code,
            finished_at_ms: now_ms(),
            error,
        },
    ) {
        eprintln!("mesh-shim {}: writing the exit record: {e}", opts.id);
        return 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        let a = |v: &[&str]| ShimArgs::parse(&v.iter().map(OsString::from).collect::<Vec<_>>());
        assert!(
            a(&[
                "--runc", "runc", "--root", "/r", "--bundle", "/b", "--id", "x"
            ])
            .is_ok()
        );
        assert!(a(&["--runc", "runc"]).unwrap_err().contains("--root"));
        assert!(a(&["--bogus", "1"]).unwrap_err().contains("unknown"));
        assert!(a(&["--runc"]).unwrap_err().contains("needs a value"));
    }

    #[test]
    fn own_start_time_is_readable() {
        let (_, zombie) = proc_start_time(std::process::id() as i32).unwrap();
        assert!(!zombie);
    }
}
