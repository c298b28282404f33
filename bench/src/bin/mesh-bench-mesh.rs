//! `mesh-bench-mesh`: the routing mesh's requests per second, latency and TCP throughput
//! through meshd's eBPF path and its userspace path, against HAProxy (TCP mode, round-robin,
//! 1 and 2 threads) in front of the same tasks and against a task reached directly, all in
//! one run. Needs root (network namespaces), `wrk`, `iperf3`, `haproxy`, `nginx` and
//! `curl`. Usually started by `bench/mesh.sh`, which installs and builds what it needs.

#[path = "../mesh.rs"]
mod mesh;
#[path = "../mesh_error.rs"]
mod mesh_error;
#[path = "../mesh_load.rs"]
mod mesh_load;
#[path = "../mesh_report.rs"]
mod mesh_report;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use clap::Parser;
use mesh_bench::{cleanup, machine::Machine};
use nix::sys::signal::{SigSet, Signal};

use mesh::{Dataplane, Haproxy, HaproxyPorts, IPERF_PORT, MAX_HAPROXIES, MeshLab, WEB_PORT};
use mesh_error::{MeshBenchError, Result};
use mesh_load::{HttpLoad, TcpLoad, run_in};
use mesh_report::{Figures, PathKind, Report, Row};

/// Routing mesh: meshd's eBPF and userspace paths against HAProxy and a task reached
/// directly; wrk keep-alive and with a new connection per request, iperf3 through the
/// published port.
#[derive(Parser, Debug)]
#[command(name = "mesh-bench-mesh", version)]
struct Cli {
    /// Seconds of each measured run (`wrk -d`, `iperf3 -t`).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of keep-alive load sent through each path before its runs (0: none).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// `wrk -t`.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// `wrk -c`.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// HAProxy's thread counts (`nbthread`), comma-separated: one HAProxy row each.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    haproxy_threads: Vec<u32>,
    /// Also measure the mesh paths on labs of 3 hosts, one nginx task per host.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    spread: bool,
    /// The test image (`scripts/build-test-image.sh` makes it), an OCI tarball.
    #[arg(long, env = "MESH_BENCH_IMAGE", value_name = "FILE")]
    image: PathBuf,
    /// Also write the report (Markdown) to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

impl Cli {
    fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(MeshBenchError::InvalidOption { field, reason });
        if !(1..=600).contains(&self.duration) {
            return bad(
                "duration",
                format!(
                    "{} s is out of range; give 1 to 600 (e.g. 10)",
                    self.duration
                ),
            );
        }
        if !(1..=15).contains(&self.runs) {
            return bad(
                "runs",
                format!("{} is out of range; give 1 to 15 (e.g. 3)", self.runs),
            );
        }
        if self.warmup > 60 {
            return bad(
                "warmup",
                format!("{} s is out of range; give 0 to 60", self.warmup),
            );
        }
        if !(1..=64).contains(&self.threads) {
            return bad(
                "threads",
                format!("{} is out of range; give 1 to 64 (e.g. 2)", self.threads),
            );
        }
        if self.connections < self.threads || self.connections > 4000 {
            return bad(
                "connections",
                format!(
                    "{} is out of range; give {} (one per wrk thread) to 4000 (HAProxy's maxconn is 4096), e.g. 64",
                    self.connections, self.threads
                ),
            );
        }
        if self.haproxy_threads.len() > MAX_HAPROXIES {
            return bad(
                "haproxy-threads",
                format!(
                    "{} thread counts are too many; give at most {MAX_HAPROXIES}, e.g. 1,2",
                    self.haproxy_threads.len()
                ),
            );
        }
        let mut seen = self.haproxy_threads.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() < self.haproxy_threads.len() {
            return bad(
                "haproxy-threads",
                "a thread count is repeated; give each once, e.g. 1,2".to_owned(),
            );
        }
        if let Some(t) = self.haproxy_threads.iter().find(|t| !(1..=64).contains(*t)) {
            return bad(
                "haproxy-threads",
                format!("{t} is out of range; give thread counts from 1 to 64, e.g. 1,2"),
            );
        }
        if !self.image.is_absolute() || !self.image.is_file() {
            return bad(
                "image",
                format!(
                    "{} is not an image file; build it with `bash scripts/build-test-image.sh FILE` and give its absolute path",
                    self.image.display()
                ),
            );
        }
        Ok(())
    }

    /// The same options, spelled out, for the report.
    fn command_line(&self) -> String {
        let ht: Vec<String> = self.haproxy_threads.iter().map(u32::to_string).collect();
        format!(
            "mesh-bench-mesh --duration {} --runs {} --warmup {} --threads {} --connections {} --haproxy-threads {} --spread {}",
            self.duration,
            self.runs,
            self.warmup,
            self.threads,
            self.connections,
            ht.join(","),
            self.spread
        )
    }
}

/// Where a path's loads go.
struct Target {
    url: String,
    iperf_host: String,
    iperf_port: u16,
}

/// The directory of the benchmark's own files (nginx's and HAProxy's configurations and
/// logs), removed when dropped and on interruption.
static FILES: Mutex<Option<PathBuf>> = Mutex::new(None);

struct Files(PathBuf);

impl Files {
    fn create() -> Result<Files> {
        let dir = std::env::temp_dir().join(format!("mesh-bench-mesh-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("nginx"))
            .map_err(|e| MeshBenchError::io(format!("create {}", dir.display()), e))?;
        // The tasks read nginx.conf through a read-only bind mount.
        for d in [dir.clone(), dir.join("nginx")] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755))
                .map_err(|e| MeshBenchError::io(format!("chmod {}", d.display()), e))?;
        }
        let conf = dir.join("nginx/nginx.conf");
        fs::write(&conf, mesh::nginx_conf("/tmp"))
            .map_err(|e| MeshBenchError::io(format!("write {}", conf.display()), e))?;
        *FILES.lock().unwrap_or_else(PoisonError::into_inner) = Some(dir.clone());
        Ok(Files(dir))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        FILES.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

fn progress(msg: &str) {
    eprintln!("mesh-bench-mesh: {msg}");
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESH_BENCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        eprintln!("mesh-bench-mesh: {e}");
        return ExitCode::from(2);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("mesh-bench-mesh: run it as root: the labs are network namespaces");
        return ExitCode::from(2);
    }
    if let Err(e) = check_tools() {
        eprintln!("mesh-bench-mesh: {e}");
        return ExitCode::from(2);
    }

    // Signals are taken by one thread with sigwait; block them before any thread starts so
    // every thread inherits the mask (child processes get a clean mask from std).
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("mesh-bench-mesh: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            eprintln!("mesh-bench-mesh: {sig}: stopping everything it started…");
            cleanup::run();
            if let Some(dir) = FILES.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = fs::remove_dir_all(dir);
            }
            std::process::exit(130);
        }
    });

    match run(&cli) {
        Ok((report, ok)) => {
            let text = mesh_report::render(&report);
            println!("{text}");
            if let Some(path) = &cli.out
                && let Err(e) = fs::write(path, &text)
            {
                eprintln!("mesh-bench-mesh: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("mesh-bench-mesh: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The programs the benchmark runs, on this machine (the tasks run the host's nginx and
/// iperf3 too).
fn check_tools() -> Result<()> {
    for (program, fix) in [
        ("wrk", "apt-get install wrk"),
        ("iperf3", "apt-get install iperf3"),
        ("curl", "apt-get install curl"),
        ("nsenter", "apt-get install util-linux"),
        ("sysctl", "apt-get install procps"),
        ("haproxy", "apt-get install haproxy"),
    ] {
        if !on_path(program) {
            return Err(MeshBenchError::MissingProgram { program, fix });
        }
    }
    if !Path::new("/usr/sbin/nginx").is_file() {
        return Err(MeshBenchError::MissingProgram {
            program: "nginx",
            fix: "apt-get install nginx-light (the tasks run the host's /usr/sbin/nginx)",
        });
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Runs every lab and path; the report, and whether every row measured.
fn run(cli: &Cli) -> Result<(Report, bool)> {
    progress("reading the machine (1 s of CPU use)");
    let machine = Machine::detect();
    let files = Files::create()?;
    let mut report = Report {
        date: time::OffsetDateTime::now_utc().date().to_string(),
        machine,
        versions: versions(),
        command: cli.command_line(),
        duration: Duration::from_secs(cli.duration),
        runs: cli.runs,
        threads: cli.threads,
        connections: cli.connections,
        relay_workers: None,
        rows: Vec::new(),
    };
    let haproxies: Vec<PathKind> = cli
        .haproxy_threads
        .iter()
        .map(|t| PathKind::Haproxy(*t))
        .collect();
    let mut labs: Vec<(Dataplane, usize, Vec<PathKind>)> = vec![
        (Dataplane::Ebpf, 1, vec![PathKind::Direct, PathKind::Ebpf]),
        (
            Dataplane::Userspace,
            1,
            [vec![PathKind::Userspace], haproxies].concat(),
        ),
    ];
    if cli.spread {
        labs.push((Dataplane::Ebpf, 3, vec![PathKind::Ebpf]));
        labs.push((Dataplane::Userspace, 3, vec![PathKind::Userspace]));
    }
    for (dataplane, hosts, paths) in labs {
        let mut mesh = match MeshLab::start(
            hosts,
            dataplane,
            &cli.image,
            &files.0.join("nginx"),
            &progress,
        ) {
            Ok(m) => m,
            Err(e) => {
                progress(&format!("the lab failed: {e}"));
                for path in paths {
                    report.rows.push(Row {
                        path,
                        hosts,
                        outcome: Err(e.to_string()),
                    });
                }
                continue;
            }
        };
        if dataplane == Dataplane::Userspace && hosts == 1 {
            report.relay_workers = mesh.relay_workers();
        }
        let mut slots = Vec::new();
        let mut haproxy_index = 0;
        for path in paths {
            let label = format!("{}, {hosts} host(s)", path.label(report.relay_workers));
            progress(&format!("setting up {label}"));
            let slot = match prepare(&mut mesh, path, &mut haproxy_index, &files.0) {
                Ok((target, haproxy)) => Slot {
                    path,
                    label,
                    target: Some(target),
                    haproxy,
                    figures: Figures::default(),
                    failed: None,
                },
                Err(e) => {
                    progress(&format!("{label} failed: {e}"));
                    Slot {
                        path,
                        label,
                        target: None,
                        haproxy: None,
                        figures: Figures::default(),
                        failed: Some(e.to_string()),
                    }
                }
            };
            slots.push(slot);
        }
        measure(&mesh, &mut slots, cli);
        for mut slot in slots {
            if let Some(h) = slot.haproxy.as_mut() {
                h.stop();
            }
            report.rows.push(Row {
                path: slot.path,
                hosts,
                outcome: match slot.failed {
                    Some(e) => Err(e),
                    None => Ok(slot.figures),
                },
            });
        }
        progress("removing the lab");
        mesh.teardown();
    }
    let ok = report.rows.iter().all(|r| r.outcome.is_ok());
    Ok((report, ok))
}

/// One path on a lab: where its loads go, the HAProxy serving it (if it is one), what it
/// measured so far, or why it stopped.
struct Slot {
    path: PathKind,
    label: String,
    target: Option<Target>,
    haproxy: Option<Haproxy>,
    figures: Figures,
    failed: Option<String>,
}

/// Sets up `path` on `mesh` (the direct route; a HAProxy on the next free ports) and
/// says where its loads go.
fn prepare(
    mesh: &mut MeshLab,
    path: PathKind,
    haproxy_index: &mut usize,
    files: &Path,
) -> Result<(Target, Option<Haproxy>)> {
    let entry = mesh.entry().to_string();
    match path {
        PathKind::Ebpf | PathKind::Userspace => Ok((
            Target {
                url: format!("http://{entry}:{WEB_PORT}/"),
                iperf_host: entry,
                iperf_port: IPERF_PORT,
            },
            None,
        )),
        PathKind::Direct => {
            mesh.open_direct()?;
            Ok((
                Target {
                    url: format!("http://{}:80/", mesh.web()[0].ip),
                    iperf_host: mesh.iperf().ip.to_string(),
                    iperf_port: IPERF_PORT,
                },
                None,
            ))
        }
        PathKind::Haproxy(threads) => {
            let ports = HaproxyPorts::nth(*haproxy_index);
            *haproxy_index += 1;
            let h = Haproxy::start(mesh, threads, ports, files)?;
            Ok((
                Target {
                    url: format!("http://{entry}:{}/", h.ports().web),
                    iperf_host: entry,
                    iperf_port: h.ports().iperf,
                },
                Some(h),
            ))
        }
    }
}

/// Measures every path of a lab, interleaved so that a slow moment of the machine falls on
/// all of them alike: the warm-up of each, then keep-alive run 1 of each path, run 2 of
/// each, …; the same with a new connection per request; the same with iperf3. A path whose
/// load fails is marked failed and left out of the next runs.
fn measure(mesh: &MeshLab, slots: &mut [Slot], cli: &Cli) {
    let http = |target: &Target, close: bool, secs: u64| HttpLoad {
        netns: mesh.client_netns(),
        url: target.url.clone(),
        threads: cli.threads,
        connections: cli.connections,
        duration: Duration::from_secs(secs),
        close,
    };
    let fail = |slot: &mut Slot, what: String, e: MeshBenchError| {
        progress(&format!("{}, {what} failed: {e}", slot.label));
        slot.failed = Some(format!("{what}: {e}"));
    };
    if cli.warmup > 0 {
        for slot in slots.iter_mut() {
            let Some(target) = slot.target.as_ref().filter(|_| slot.failed.is_none()) else {
                continue;
            };
            if let Err(e) = http(target, false, cli.warmup).run() {
                fail(slot, "warm-up".to_owned(), e);
            }
        }
    }
    for (close, mode) in [(false, "keep-alive"), (true, "new connection")] {
        for i in 1..=cli.runs {
            for slot in slots.iter_mut() {
                let Some(target) = slot.target.as_ref().filter(|_| slot.failed.is_none()) else {
                    continue;
                };
                match http(target, close, cli.duration).run() {
                    Ok(r) => {
                        progress(&format!(
                            "{}, {mode}, run {i}/{}: {:.0} req/s, p99 {:.2} ms{}",
                            slot.label,
                            cli.runs,
                            r.rps,
                            r.p99.as_secs_f64() * 1000.0,
                            if r.socket_errors + r.non_2xx > 0 {
                                format!(
                                    " ({} socket errors, {} non-2xx)",
                                    r.socket_errors, r.non_2xx
                                )
                            } else {
                                String::new()
                            }
                        ));
                        if close {
                            slot.figures.close.push(r);
                        } else {
                            slot.figures.keepalive.push(r);
                        }
                    }
                    Err(e) => fail(slot, format!("{mode} run {i}"), e),
                }
            }
        }
    }
    for i in 1..=cli.runs {
        for slot in slots.iter_mut() {
            let Some(target) = slot.target.as_ref().filter(|_| slot.failed.is_none()) else {
                continue;
            };
            let tcp = TcpLoad {
                netns: mesh.client_netns(),
                host: target.iperf_host.clone(),
                port: target.iperf_port,
                duration: Duration::from_secs(cli.duration),
            };
            match tcp.run() {
                Ok(r) => {
                    progress(&format!(
                        "{}, iperf3, run {i}/{}: {:.2} Gb/s",
                        slot.label,
                        cli.runs,
                        r.bits_per_sec / 1e9
                    ));
                    slot.figures.iperf.push(r);
                }
                Err(e) => fail(slot, format!("iperf3 run {i}"), e),
            }
        }
    }
}

/// `name version` of meshd, nginx, HAProxy, wrk and iperf3.
fn versions() -> Vec<String> {
    let first_line = |program: &str, args: &[&str]| -> String {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        run_in(None, program, &args, Duration::from_secs(10))
            .map(|f| {
                format!("{}\n{}", f.stdout, f.stderr)
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let meshd = mesh_testkit::meshd_bin()
        .map(|b| first_line(&b.display().to_string(), &["--version"]))
        .unwrap_or_default();
    let mut meshd = if meshd.is_empty() {
        "meshd (version unknown)".to_owned()
    } else {
        meshd
    };
    if let Ok(rev) = std::env::var("MESH_BENCH_REVISION")
        && !rev.is_empty()
    {
        meshd.push_str(&format!(" ({rev})"));
    }
    // "nginx version: nginx/1.22.1", "HAProxy version 2.6.12-1 2023/…", "wrk 4.1.0 [epoll] …",
    // "iperf 3.12 (cJSON 1.7.15)".
    let nginx = first_line("/usr/sbin/nginx", &["-v"]).replace("nginx version: nginx/", "nginx ");
    let haproxy = first_line("haproxy", &["-v"])
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
        .replace("version ", "");
    let wrk = first_line("wrk", &["-v"])
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let iperf = first_line("iperf3", &["-v"])
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .replace("iperf ", "iperf3 ");
    vec![meshd, nginx, haproxy, wrk, iperf]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["mesh-bench-mesh", "--image", "/proc/self/exe"];
        v.extend(args);
        Cli::parse_from(v)
    }

    #[test]
    fn defaults_are_the_issues_settings() {
        let c = cli(&[]);
        assert!(c.validate().is_ok());
        assert_eq!(
            c.command_line(),
            "mesh-bench-mesh --duration 10 --runs 3 --warmup 2 --threads 2 --connections 64 --haproxy-threads 1,2 --spread true"
        );
    }

    #[test]
    fn bad_options_name_the_field_and_the_fix() {
        for (args, field) in [
            (&["--duration", "0"][..], "`duration`"),
            (&["--runs", "0"][..], "`runs`"),
            (&["--warmup", "61"][..], "`warmup`"),
            (&["--connections", "1"][..], "`connections`"),
            (&["--haproxy-threads", "1,0"][..], "`haproxy-threads`"),
            (&["--haproxy-threads", "2,2"][..], "`haproxy-threads`"),
            (
                &["--haproxy-threads", "1,2,3,4,5,6,7,8,9"][..],
                "`haproxy-threads`",
            ),
        ] {
            let e = cli(args).validate().unwrap_err().to_string();
            assert!(e.contains(field) && e.contains("give"), "{args:?}: {e}");
        }
        let e = Cli::parse_from(["mesh-bench-mesh", "--image", "relative.tar"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`image`") && e.contains("build-test-image.sh"),
            "{e}"
        );
    }

    #[test]
    fn the_3_host_rows_can_be_left_out() {
        let c = cli(&["--spread", "false", "--haproxy-threads", "2"]);
        assert!(c.validate().is_ok(), "{c:?}");
        assert!(!c.spread);
        assert!(
            c.command_line()
                .contains("--haproxy-threads 2 --spread false")
        );
    }
}
