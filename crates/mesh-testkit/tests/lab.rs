//! The lab, exercised for real (namespaces, veths, bridge, nftables, processes) with a stand-in
//! meshd and swarm written in Python. Needs root; skipped otherwise.

// Test helpers, like the tests themselves, fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

use mesh_testkit::{Lab, LabError, LabOptions, demo, sweep_stale};

/// A meshd stand-in: listens on its unix socket and on its TCP listen address (answering
/// "stand-in hostN"), logs its arguments, exits on SIGTERM.
const FAKE_MESHD: &str = r#"
import os, select, signal, socket, sys
args = sys.argv[1:]
print("stand-in meshd:", " ".join(args), flush=True)
print("stand-in env RUST_LOG=" + os.environ.get("RUST_LOG", "<unset>"), flush=True)
if "--standin-fail" in args:
    print("stand-in meshd: failing on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
def opt(name):
    return args[args.index(name) + 1]
if "--standin-no-socket" in args:
    import time
    while True:
        time.sleep(60)
def on_term(*_):
    print("stand-in meshd: got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
os.makedirs(opt("--data-dir"), exist_ok=True)
name = opt("--hostname")
addr, port = opt("--listen-addr").rsplit(":", 1)
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((addr, int(port)))
tcp.listen(16)
path = opt("--socket")
try:
    os.unlink(path)
except FileNotFoundError:
    pass
unix = socket.socket(socket.AF_UNIX)
unix.bind(path)
unix.listen(16)
while True:
    ready, _, _ = select.select([tcp, unix], [], [])
    for s in ready:
        c, _ = s.accept()
        try:
            c.sendall(("stand-in " + name + "\n").encode())
        except OSError:
            pass
        c.close()
"#;

/// A swarm stand-in keeping a node list in the lab directory.
const FAKE_SWARM: &str = r#"
import os, sys
a = sys.argv[1:]
if a[:1] != ["-H"] or not a[1].startswith("unix://"):
    print("fake swarm: expected -H unix://SOCKET first", file=sys.stderr)
    sys.exit(2)
sock = a[1][len("unix://"):]
hostdir = os.path.dirname(sock)
host = os.path.basename(hostdir)
state = os.path.join(os.path.dirname(hostdir), "fake-swarm-nodes")
cmd = a[2:]
TOKEN = "SWMTKN-1-fake-token"
def nodes():
    try:
        return open(state).read().split()
    except FileNotFoundError:
        return []
def add(h):
    with open(state, "a") as f:
        f.write(h + "\n")
if cmd[:1] == ["echo"]:
    print(" ".join(a))
elif cmd[:1] == ["fail"]:
    print("fake swarm: asked to fail", file=sys.stderr)
    sys.exit(1)
elif cmd[:1] == ["init"]:
    add(host)
    print("Swarm initialized: current node (%s) is now a manager." % host)
elif cmd == ["join-token", "-q", "worker"]:
    print(TOKEN)
elif cmd[:1] == ["join"]:
    if cmd[1:3] != ["--token", TOKEN]:
        print("fake swarm: bad token %r" % cmd[1:3], file=sys.stderr)
        sys.exit(1)
    add(host)
    print("This node joined a swarm as a worker.")
elif cmd == ["node", "ls"]:
    print("ID  HOSTNAME  STATUS  AVAILABILITY  MANAGER STATUS")
    for i, h in enumerate(nodes()):
        print("n%d  %s  Ready  Active  %s" % (i, h, "Leader" if i == 0 else ""))
else:
    print("fake swarm: unknown command %r" % cmd, file=sys.stderr)
    sys.exit(2)
"#;

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "/usr/bin/env python3"
    }
}

/// Writes an executable script under a temporary name and renames it into place, so that no
/// process ever executes a file still open for writing.
fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    fs::write(&tmp, format!("#!{}\n{body}", python())).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, &path).unwrap();
    path
}

/// The stand-in meshd and swarm, written once per test process.
fn stand_ins() -> &'static (PathBuf, PathBuf) {
    static SCRIPTS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    SCRIPTS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mesh-testkit-stand-ins");
        fs::create_dir_all(&dir).unwrap();
        (
            write_script(&dir, "meshd", FAKE_MESHD),
            write_script(&dir, "swarm", FAKE_SWARM),
        )
    })
}

/// Points the lab at the stand-ins; false (and a message) when not root.
fn setup() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: the lab needs root (network namespaces, veth, nftables)");
        return false;
    }
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let (meshd, swarm) = stand_ins();
        // SAFETY: every test calls `setup` before anything else, and `call_once` makes the
        // others wait, so no other thread reads the environment while it is written.
        unsafe {
            std::env::set_var("MESHD_BIN", meshd);
            std::env::set_var("SWARM_BIN", swarm);
        }
    });
    true
}

fn netns_list() -> BTreeSet<String> {
    fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn lab_namespaces(id: &str) -> BTreeSet<String> {
    let prefix = format!("ml{id}-");
    netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn state(pid: u32) -> char {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.chars().next().unwrap()
}

fn ping(lab: &Lab, from: usize, to: &str) -> bool {
    lab.exec(from, &["ping", "-c", "1", "-W", "1", to])
        .success()
}

fn wait_ping(lab: &Lab, from: usize, to: &str) {
    lab.wait_until(
        &format!("host{from} to reach {to}"),
        Duration::from_secs(20),
        || ping(lab, from, to).then_some(()),
    )
    .unwrap();
}

#[test]
fn hosts_are_wired_and_partition_cuts_and_heal_restores() {
    if !setup() {
        return;
    }
    let lab = Lab::start(LabOptions {
        hosts: 3,
        client: true,
        ..LabOptions::default()
    })
    .unwrap();
    assert_eq!(lab.hosts(), 3);
    for i in 1..=3 {
        assert_eq!(lab.ip(i).to_string(), format!("192.0.2.{i}"));
        let addr = lab.exec(i, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addr.ok().unwrap().contains(&format!("192.0.2.{i}/24")),
            "{addr:?}"
        );
        let link = lab
            .exec(i, &["ip", "-o", "link", "show", "dev", "eth0"])
            .ok()
            .unwrap();
        assert!(link.contains("mtu 1500"), "{link}");
        let lo = lab
            .exec(i, &["ip", "-o", "link", "show", "dev", "lo"])
            .ok()
            .unwrap();
        assert!(lo.contains("UP"), "{lo}");
    }
    // The underlay switch.
    let bridge = Command::new("ip")
        .args(["-n", lab.lab_netns(), "-o", "link", "show", "master", "br0"])
        .output()
        .unwrap();
    let ports = String::from_utf8_lossy(&bridge.stdout);
    assert_eq!(ports.lines().count(), 4, "3 hosts and the client: {ports}");

    wait_ping(&lab, 1, "192.0.2.2");
    wait_ping(&lab, 1, "192.0.2.3");
    lab.wait_until("client to reach host1", Duration::from_secs(20), || {
        lab.exec_client(&["ping", "-c", "1", "-W", "1", "192.0.2.1"])
            .success()
            .then_some(())
    })
    .unwrap();

    // Every daemon listens in its own namespace, on the same port: host1 reaches host2's.
    let hello = lab.exec(
        1,
        &[
            "python3",
            "-c",
            "import socket; print(socket.create_connection(('192.0.2.2', 2377), 5).recv(100).decode().strip())",
        ],
    );
    assert_eq!(hello.ok().unwrap().trim(), "stand-in host2");

    lab.partition(&[1], &[2]).unwrap();
    assert!(
        !ping(&lab, 1, "192.0.2.2"),
        "host1 -> host2 must be dropped"
    );
    assert!(
        !ping(&lab, 2, "192.0.2.1"),
        "host2 -> host1 must be dropped"
    );
    assert!(
        ping(&lab, 1, "192.0.2.3"),
        "host1 -> host3 is not partitioned"
    );
    assert!(
        ping(&lab, 3, "192.0.2.2"),
        "host3 -> host2 is not partitioned"
    );
    let tables = lab.exec(1, &["nft", "list", "tables"]).ok().unwrap();
    assert!(tables.contains("meshlab"), "{tables}");

    // Partitions add up.
    lab.partition(&[3], &[1, 2]).unwrap();
    assert!(!ping(&lab, 3, "192.0.2.2"));

    lab.heal().unwrap();
    let tables = lab.exec(1, &["nft", "list", "tables"]).ok().unwrap();
    assert!(!tables.contains("meshlab"), "{tables}");
    wait_ping(&lab, 1, "192.0.2.2");
    wait_ping(&lab, 2, "192.0.2.1");
    wait_ping(&lab, 3, "192.0.2.2");

    let err = lab.partition(&[1, 2], &[2]).unwrap_err().to_string();
    assert!(err.contains("both sides"), "{err}");
}

#[test]
fn daemons_run_in_their_namespace_with_the_lab_arguments() {
    if !setup() {
        return;
    }
    let lab = Lab::start(LabOptions {
        hosts: 2,
        meshd_args: vec!["--standin-extra".into(), "x y".into()],
        ..LabOptions::default()
    })
    .unwrap();
    for i in 1..=2 {
        let pid = lab.pid(i).unwrap();
        let theirs = fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
        let expected = fs::metadata(lab.netns_path(i)).unwrap();
        assert_eq!(
            (theirs.dev(), theirs.ino()),
            (expected.dev(), expected.ino()),
            "meshd of host{i} must be in netns {}",
            lab.netns(i)
        );
        let mine = fs::metadata("/proc/self/ns/net").unwrap();
        assert_ne!(mine.ino(), theirs.ino());
        let log = fs::read_to_string(lab.log_path(i)).unwrap();
        let data = lab.data_dir(i).display().to_string();
        let socket = lab.socket(i).display().to_string();
        for want in [
            format!("--data-dir {data}"),
            format!("--socket {socket}"),
            format!("--advertise-addr 192.0.2.{i}"),
            "--listen-addr 0.0.0.0:2377".to_owned(),
            format!("--hostname host{i}"),
            "--standin-extra x y".to_owned(),
            "stand-in env RUST_LOG=".to_owned(),
        ] {
            assert!(log.contains(&want), "log of host{i} lacks {want:?}:\n{log}");
        }
        assert!(!log.contains("RUST_LOG=<unset>"), "{log}");
        assert!(lab.data_dir(i).is_dir());
        assert!(lab.log_path(i).starts_with(lab.dir()));
        UnixStream::connect(lab.socket(i)).unwrap();
    }
}

#[test]
fn kill_restart_pause_resume_and_stop() {
    if !setup() {
        return;
    }
    let lab = Lab::start(LabOptions::hosts(1)).unwrap();
    let p1 = lab.pid(1).unwrap();

    lab.pause(1);
    assert_eq!(state(p1), 'T', "paused daemon is stopped");
    lab.resume(1);
    assert_ne!(state(p1), 'T', "resumed daemon runs");

    let err = lab.start_daemon(1).unwrap_err();
    assert!(
        matches!(err, LabError::DaemonRunning { host: 1, .. }),
        "{err}"
    );

    lab.kill(1);
    assert_eq!(lab.pid(1), None);
    assert!(!alive(p1), "killed and reaped");
    assert!(UnixStream::connect(lab.socket(1)).is_err());
    lab.pause(1); // nothing to do
    lab.kill(1); // nothing to do
    lab.stop(1); // nothing to do

    lab.start_daemon(1).unwrap();
    let p2 = lab.pid(1).unwrap();
    assert_ne!(p1, p2);
    UnixStream::connect(lab.socket(1)).unwrap();

    // A paused daemon still stops: SIGTERM then SIGCONT.
    lab.pause(1);
    lab.restart(1).unwrap();
    let p3 = lab.pid(1).unwrap();
    assert_ne!(p2, p3);
    assert!(!alive(p2));

    lab.stop(1);
    assert_eq!(lab.pid(1), None);
    assert!(!alive(p3));
    let log = fs::read_to_string(lab.log_path(1)).unwrap();
    assert_eq!(log.matches("--- mesh-lab: starting").count(), 3, "{log}");
    assert!(log.contains("got SIGTERM"), "{log}");

    lab.start_daemon(1).unwrap();
    assert!(lab.pid(1).is_some());
}

#[test]
fn a_daemon_that_dies_by_itself_is_noticed() {
    if !setup() {
        return;
    }
    let lab = Lab::start(LabOptions::hosts(1)).unwrap();
    let pid = lab.pid(1).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    lab.wait_until("the lab to notice", Duration::from_secs(10), || {
        lab.pid(1).is_none().then_some(())
    })
    .unwrap();
    lab.start_daemon(1).unwrap();
    assert!(lab.pid(1).is_some());
}

#[test]
fn swarm_and_exec_report_their_outcome() {
    if !setup() {
        return;
    }
    let lab = Lab::start(LabOptions::hosts(2)).unwrap();
    let out = lab.swarm(2, &["echo", "hello"]);
    assert_eq!(
        out.ok().unwrap().trim(),
        format!("-H unix://{} echo hello", lab.socket(2).display())
    );
    let fail = lab.swarm(1, &["fail"]);
    assert_eq!(fail.status, 1);
    let err = fail.ok().unwrap_err().to_string();
    assert!(err.contains("asked to fail"), "{err}");
    assert!(err.contains("fail"), "{err}");

    let out = lab.exec(1, &["sh", "-c", "echo out; echo err >&2; exit 4"]);
    assert_eq!(
        (out.status, out.stdout.as_str(), out.stderr.as_str()),
        (4, "out\n", "err\n")
    );
    let none = lab.exec(1, &[]);
    assert_eq!(none.status, -1);
    let client = lab.exec_client(&["true"]);
    assert!(client.stderr.contains("no client namespace"), "{client:?}");
}

#[test]
fn wait_until_says_what_it_waited_for_and_shows_logs() {
    if !setup() {
        return;
    }
    let lab = Lab::start(LabOptions::hosts(2)).unwrap();
    let mut n = 0;
    let v = lab
        .wait_until("three polls", Duration::from_secs(10), || {
            n += 1;
            (n == 3).then_some(n)
        })
        .unwrap();
    assert_eq!(v, 3);
    let err = lab
        .wait_until("the impossible", Duration::from_millis(300), || None::<()>)
        .unwrap_err()
        .to_string();
    assert!(err.contains("waiting for the impossible"), "{err}");
    assert!(err.contains("300ms"), "{err}");
    assert!(err.contains("--- host1 log"), "{err}");
    assert!(err.contains("--- host2 log"), "{err}");
    assert!(err.contains("stand-in meshd: --data-dir"), "{err}");
}

#[test]
fn drop_removes_namespaces_processes_and_files() {
    if !setup() {
        return;
    }
    let lab = Lab::start(LabOptions {
        hosts: 2,
        client: true,
        ..LabOptions::default()
    })
    .unwrap();
    let id = lab.id().to_owned();
    let dir = lab.dir().to_path_buf();
    let pids: Vec<u32> = (1..=2).map(|i| lab.pid(i).unwrap()).collect();
    // A process the test started inside a host namespace goes too.
    let mut stray = Command::new("nsenter")
        .arg(format!("--net={}", lab.netns_path(1).display()))
        .args(["sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let names = lab_namespaces(&id);
    assert_eq!(names.len(), 4, "lab, 2 hosts, client: {names:?}");
    assert!(Path::new("/run/mesh-lab").join(&id).exists());
    // The stray process must be inside the namespace before the lab goes.
    lab.wait_until(
        "the stray process to enter the netns",
        Duration::from_secs(10),
        || {
            let ns = fs::metadata(format!("/proc/{}/ns/net", stray.id())).ok()?;
            let want = fs::metadata(lab.netns_path(1)).ok()?;
            (ns.ino() == want.ino()).then_some(())
        },
    )
    .unwrap();

    drop(lab);

    assert!(lab_namespaces(&id).is_empty(), "{:?}", lab_namespaces(&id));
    for pid in pids {
        assert!(!alive(pid), "meshd {pid} must be gone");
    }
    let status = stray.wait().unwrap();
    assert!(!status.success(), "stray process killed: {status}");
    assert!(!dir.exists(), "temporary directory removed");
    assert!(!Path::new("/run/mesh-lab").join(&id).exists());
}

#[test]
fn a_panic_cleans_up_but_keeps_the_logs() {
    if !setup() {
        return;
    }
    let seen: Mutex<Option<(String, PathBuf, Vec<u32>)>> = Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::start(LabOptions::hosts(2)).unwrap();
        *seen.lock().unwrap() = Some((
            lab.id().to_owned(),
            lab.dir().to_path_buf(),
            (1..=2).map(|i| lab.pid(i).unwrap()).collect(),
        ));
        panic!("a failing test");
    }));
    assert!(result.is_err());
    let (id, dir, pids) = seen.lock().unwrap().take().unwrap();
    assert!(lab_namespaces(&id).is_empty(), "{:?}", lab_namespaces(&id));
    for pid in pids {
        assert!(!alive(pid));
    }
    assert!(
        dir.join("host1/meshd.log").is_file(),
        "logs kept in {}",
        dir.display()
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_start_leaves_nothing_but_its_logs() {
    if !setup() {
        return;
    }
    let err = Lab::start(LabOptions {
        hosts: 2,
        meshd_args: vec!["--standin-fail".into()],
        ..LabOptions::default()
    })
    .unwrap_err();
    let LabError::StartFailed { dir, source } = &err else {
        panic!("unexpected error: {err}");
    };
    let text = err.to_string();
    assert!(matches!(**source, LabError::DaemonExited { .. }), "{text}");
    assert!(text.contains("failing on purpose"), "{text}");
    assert!(text.contains("exited"), "{text}");
    // The directory is /tmp/mesh-lab-<id>-XXXX.
    let name = dir.file_name().unwrap().to_str().unwrap();
    let id = name
        .strip_prefix("mesh-lab-")
        .and_then(|r| r.rsplit_once('-'))
        .unwrap()
        .0;
    assert!(lab_namespaces(id).is_empty(), "{:?}", lab_namespaces(id));
    assert!(!Path::new("/run/mesh-lab").join(id).exists());
    assert!(dir.join("host1/meshd.log").is_file());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_network_only_lab_runs_no_daemon_until_asked() {
    if !setup() {
        return;
    }
    let lab = Lab::start_without_daemons(LabOptions::hosts(2)).unwrap();
    let id = lab.id().to_owned();
    assert_eq!(lab_namespaces(&id).len(), 3, "underlay and two hosts");
    for i in 1..=2 {
        assert_eq!(lab.pid(i), None, "host{i} must run no daemon");
        assert!(!lab.socket(i).exists());
    }
    wait_ping(&lab, 1, "192.0.2.2");
    // A process started in a host's namespace by the caller dies with the lab.
    let mut sleeper = Command::new("nsenter")
        .arg(format!("--net={}", lab.netns_path(2).display()))
        .args(["sleep", "600"])
        .spawn()
        .unwrap();
    let pid = sleeper.id();
    lab.wait_until(
        "the sleeper to enter host2",
        Duration::from_secs(10),
        || {
            let ns = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
            let host = fs::metadata(lab.netns_path(2)).ok()?;
            (ns.ino() == host.ino()).then_some(())
        },
    )
    .unwrap();
    // A daemon can still be started on one host.
    lab.start_daemon(1).unwrap();
    assert!(lab.pid(1).is_some());
    assert_eq!(lab.pid(2), None);
    drop(lab);
    let mut exited = None;
    for _ in 0..200 {
        exited = sleeper.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if exited.is_none() {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        panic!("the process in host2's namespace must be killed with the lab");
    }
    assert!(lab_namespaces(&id).is_empty());
}

#[test]
fn bad_options_name_the_field() {
    if !setup() {
        return;
    }
    let err = Lab::start(LabOptions::hosts(0)).unwrap_err().to_string();
    assert!(err.contains("`hosts`"), "{err}");
    let long = std::env::temp_dir().join("d".repeat(120));
    let err = Lab::start(LabOptions {
        hosts: 1,
        dir: Some(long.clone()),
        ..LabOptions::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("`dir`") && err.contains("shorter"), "{err}");
    let _ = fs::remove_dir_all(long);
}

#[test]
fn a_given_dir_is_used_and_kept() {
    if !setup() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lab_dir = dir.path().join("lab");
    let lab = Lab::start(LabOptions {
        hosts: 1,
        dir: Some(lab_dir.clone()),
        ..LabOptions::default()
    })
    .unwrap();
    assert_eq!(lab.socket(1), lab_dir.join("host1/meshd.sock"));
    drop(lab);
    assert!(lab_dir.join("host1/meshd.log").is_file());
}

#[test]
fn sweep_removes_labs_of_dead_processes_only() {
    if !setup() {
        return;
    }
    let live = Lab::start(LabOptions::hosts(1)).unwrap();

    // A lab named after a process that has exited.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    assert!(!alive(dead));
    let dead_ns = format!("ml{dead}x7-h1");
    // A lab whose marker says pid 1 but with another start time: pid 1 was recycled.
    let recycled_ns = "ml1x4242-h1".to_owned();
    fs::create_dir_all("/run/mesh-lab").unwrap();
    fs::write(
        "/run/mesh-lab/1x4242",
        "pid=1\nstart=18446744073709551615\ndir=/nonexistent\n",
    )
    .unwrap();
    for ns in [&dead_ns, &recycled_ns] {
        let st = Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let mut stray = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{dead_ns}"))
        .args(["sleep", "600"])
        .spawn()
        .unwrap();
    live.wait_until(
        "the stray process to enter the netns",
        Duration::from_secs(10),
        || {
            let ns = fs::metadata(format!("/proc/{}/ns/net", stray.id())).ok()?;
            let want = fs::metadata(format!("/var/run/netns/{dead_ns}")).ok()?;
            (ns.ino() == want.ino()).then_some(())
        },
    )
    .unwrap();

    let removed = sweep_stale();
    assert!(removed.contains(&dead_ns), "{removed:?}");
    assert!(removed.contains(&recycled_ns), "{removed:?}");
    let left = netns_list();
    assert!(
        !left.contains(&dead_ns) && !left.contains(&recycled_ns),
        "{left:?}"
    );
    assert!(!Path::new("/run/mesh-lab/1x4242").exists());
    assert!(!stray.wait().unwrap().success(), "stray process killed");

    // The live lab is untouched.
    assert_eq!(lab_namespaces(live.id()).len(), 2);
    assert!(ping(&live, 1, "192.0.2.1"));
    assert!(live.pid(1).is_some());
}

#[test]
fn demo_walkthrough_builds_the_cluster() {
    if !setup() {
        return;
    }
    let lab = Lab::start(LabOptions::hosts(3)).unwrap();
    let steps = demo::cluster_steps(&lab);
    let mut out = Vec::new();
    demo::run(&lab, &steps, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for want in [
        "init --advertise-addr 192.0.2.1",
        "join-token -q worker",
        "host2$ swarm",
        "join --token SWMTKN-1-fake-token 192.0.2.1:2377",
        "host3$ swarm",
        "Wait until all 3 nodes are Ready",
        "host3  Ready",
        "== Done.",
    ] {
        assert!(text.contains(want), "walkthrough lacks {want:?}:\n{text}");
    }
    let nodes = fs::read_to_string(lab.dir().join("fake-swarm-nodes")).unwrap();
    assert_eq!(nodes, "host1\nhost2\nhost3\n");

    // A failing step stops the walkthrough and is named.
    let steps = vec![
        demo::Step::swarm("Say hello", 1, &["echo", "hi"]),
        demo::Step::swarm("Break", 1, &["fail"]),
        demo::Step::swarm("Never run", 1, &["echo", "never"]),
    ];
    let mut out = Vec::new();
    let err = demo::run(&lab, &steps, &mut out).unwrap_err().to_string();
    assert!(
        err.contains("demo step `Break` failed") && err.contains("asked to fail"),
        "{err}"
    );
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("Never run"), "{text}");
}

fn mesh_lab() -> Command {
    let (meshd, swarm) = stand_ins();
    let mut c = Command::new(env!("CARGO_BIN_EXE_mesh-lab"));
    c.env("MESHD_BIN", meshd).env("SWARM_BIN", swarm);
    c
}

#[test]
fn cli_demo_walks_through_and_cleans_up() {
    if !setup() {
        return;
    }
    let out = mesh_lab()
        .args(["demo", "--hosts", "2", "--cluster-only"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("join --token SWMTKN-1-fake-token 192.0.2.1:2377"),
        "{stdout}"
    );
    assert!(stdout.contains("== Done."), "{stdout}");
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Lab ")?.split_whitespace().next())
        .unwrap();
    assert!(lab_namespaces(id).is_empty());
}

#[test]
fn cli_up_stays_until_sigterm_then_cleans_up() {
    if !setup() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = mesh_lab()
        .args(["up", "--hosts", "2", "--client", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("Press Ctrl-C");
        seen.push(line);
        if done {
            break;
        }
    }
    let text = seen.join("\n");
    assert!(text.contains("Press Ctrl-C"), "{text}");
    let id = seen
        .iter()
        .find_map(|l| l.strip_prefix("Lab ")?.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(text.contains("host2  192.0.2.2"), "{text}");
    assert!(text.contains("node ls"), "{text}");
    assert!(text.contains("client  192.0.2.200"), "{text}");
    assert_eq!(lab_namespaces(&id).len(), 4);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(lab_namespaces(&id).is_empty(), "{:?}", lab_namespaces(&id));
    // The daemons were stopped gracefully (the lab's signal mask is not passed on).
    for i in 1..=2 {
        let log = fs::read_to_string(dir.path().join(format!("host{i}/meshd.log"))).unwrap();
        assert!(log.contains("got SIGTERM"), "{log}");
    }
}

#[test]
fn cli_reports_a_daemon_that_never_gets_ready() {
    if !setup() {
        return;
    }
    let out = mesh_lab()
        .args(["up", "--hosts", "1", "--meshd-arg", "--standin-no-socket"])
        .env("MESH_LAB_READY_TIMEOUT", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not accept connections"), "{stderr}");
    assert!(
        stderr.contains("--standin-no-socket"),
        "log tail shown: {stderr}"
    );
    // The files are kept for inspection; the namespaces are gone.
    let dir = stderr
        .split("files kept in ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap();
    let id = Path::new(dir)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .strip_prefix("mesh-lab-")
        .and_then(|r| r.rsplit_once('-'))
        .unwrap()
        .0
        .to_owned();
    assert!(lab_namespaces(&id).is_empty());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cli_interrupted_demo_cleans_up() {
    if !setup() {
        return;
    }
    let dir = stand_ins().0.parent().unwrap().to_path_buf();
    let slow = write_script(&dir, "slow-swarm", "import time\ntime.sleep(600)\n");
    let mut child = mesh_lab()
        .args(["demo", "--hosts", "2", "--cluster-only"])
        .env("SWARM_BIN", slow)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut id = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("Lab ") {
            id = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.starts_with("host1$ swarm") {
            break;
        }
    }
    let id = id.unwrap();
    assert_eq!(lab_namespaces(&id).len(), 3);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(lab_namespaces(&id).is_empty(), "{:?}", lab_namespaces(&id));
}

#[test]
fn cli_sweep_runs() {
    if !setup() {
        return;
    }
    let out = mesh_lab().arg("sweep").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
