//! `mesh-bench-overlay`: the overlay data plane's throughput, packet rate and CPU cost, for
//! the plain veth underlay, meshd's overlay, Debian's wireguard-go and boringtun's CLI, in
//! one run on the same lab of two hosts; and meshd's resident set with 100 WireGuard peers.
//! Needs root (network namespaces). Usually started by `bench/overlay.sh`, which installs
//! and builds what it needs first.

#[path = "overlay/error.rs"]
mod error;
#[path = "overlay/iperf.rs"]
mod iperf;
#[path = "overlay/proc.rs"]
mod proc;
#[path = "overlay/report.rs"]
mod report;
#[path = "overlay/variants.rs"]
mod variants;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use mesh_testkit::{Lab, LabOptions};
use nix::sys::signal::{SigSet, Signal};

use error::{OverlayBenchError, Result};
use iperf::{Load, Run, Server};
use proc::Memory;
use report::{Figures, Machine, MeshdMemory, Report, VariantReport};
use variants::{Setup, Variant, WgImpl};

/// Overlay data plane: meshd against wireguard-go and boringtun-cli, with the plain veth as
/// the limit; TCP 1 and 4 streams, small UDP datagrams, CPU seconds per GB; meshd's memory
/// with 100 WireGuard peers.
#[derive(Parser, Debug)]
#[command(name = "mesh-bench-overlay", version)]
struct Cli {
    /// Seconds of each measured iperf3 run (`iperf3 -t`).
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Seconds of the TCP warm-up run before each variant's figures (0: none).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// TCP 1-stream runs per variant; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Size of the UDP datagrams, bytes (`iperf3 -u -l`).
    #[arg(long, default_value_t = 64)]
    udp_len: u32,
    /// Standard WireGuard peers connected to meshd on host1 for the memory figure (0: skip).
    #[arg(long, default_value_t = 100)]
    peers: usize,
    /// Variants to run, comma-separated; they always run in the order veth, meshd,
    /// wireguard-go, boringtun.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Variant::ALL)]
    variants: Vec<Variant>,
    /// TCP/UDP port of the iperf3 server.
    #[arg(long, default_value_t = 5201)]
    port: u16,
    /// Also write the report (Markdown) to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

impl Cli {
    fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(OverlayBenchError::InvalidOption { field, reason });
        if !(1..=600).contains(&self.duration) {
            return bad(
                "duration",
                format!(
                    "{} s is out of range; give 1 to 600 (e.g. 8)",
                    self.duration
                ),
            );
        }
        if self.warmup > 60 {
            return bad(
                "warmup",
                format!("{} s is out of range; give 0 to 60", self.warmup),
            );
        }
        if !(1..=15).contains(&self.runs) {
            return bad(
                "runs",
                format!("{} is out of range; give 1 to 15 (e.g. 3)", self.runs),
            );
        }
        if !(16..=1400).contains(&self.udp_len) {
            return bad(
                "udp-len",
                format!(
                    "{} bytes is out of range; give 16 to 1400 (it must fit every tunnel's MTU)",
                    self.udp_len
                ),
            );
        }
        if self.peers > 250 {
            return bad(
                "peers",
                format!(
                    "{} does not fit the peers' /24 network; give 0 to 250",
                    self.peers
                ),
            );
        }
        if self.port == 0 {
            return bad("port", "0 is not a port; give e.g. 5201".to_owned());
        }
        if self.variants.is_empty() {
            return bad(
                "variants",
                "name at least one of veth, meshd, wireguard-go, boringtun".to_owned(),
            );
        }
        Ok(())
    }

    /// The same options, spelled out, for the report.
    fn command_line(&self) -> String {
        let names: Vec<&str> = self.selected().iter().map(|v| v.cli_name()).collect();
        format!(
            "mesh-bench-overlay --duration {} --warmup {} --runs {} --udp-len {} --peers {} --variants {}",
            self.duration,
            self.warmup,
            self.runs,
            self.udp_len,
            self.peers,
            names.join(",")
        )
    }

    /// The variants asked for, once each, in their fixed order.
    fn selected(&self) -> Vec<Variant> {
        Variant::ALL
            .into_iter()
            .filter(|v| self.variants.contains(v))
            .collect()
    }
}

trait CliName {
    fn cli_name(self) -> &'static str;
}

impl CliName for Variant {
    fn cli_name(self) -> &'static str {
        match self {
            Variant::Veth => "veth",
            Variant::Meshd => "meshd",
            Variant::WireguardGo => "wireguard-go",
            Variant::Boringtun => "boringtun",
        }
    }
}

/// The lab to tear down if a signal arrives.
static LAB: Mutex<Option<Weak<Lab>>> = Mutex::new(None);

fn progress(msg: &str) {
    eprintln!("mesh-bench-overlay: {msg}");
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
        eprintln!("mesh-bench-overlay: {e}");
        return ExitCode::from(2);
    }

    // Signals are taken by one thread with sigwait; block them before any thread starts so
    // every thread inherits the mask (child processes get a clean mask from std).
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("mesh-bench-overlay: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            eprintln!("mesh-bench-overlay: {sig}: stopping everything it started…");
            proc::kill_all_background();
            let lab = LAB
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .and_then(|w| w.upgrade());
            if let Some(lab) = lab {
                lab.teardown();
            }
            for s in variants::own_wg_sockets() {
                let _ = std::fs::remove_file(s);
            }
            std::process::exit(130);
        }
    });

    match work(&cli) {
        Ok((report, complete)) => {
            let text = report.render();
            println!("\n{text}");
            if let Some(path) = &cli.out {
                match std::fs::write(path, &text) {
                    Ok(()) => progress(&format!("report written to {}", path.display())),
                    Err(e) => {
                        eprintln!("mesh-bench-overlay: write {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
            if complete {
                ExitCode::SUCCESS
            } else {
                progress("some figures are missing (see **failed** in the report)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("mesh-bench-overlay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Checks that every program the selected variants use is installed.
fn check_tools(selected: &[Variant]) -> Result<()> {
    let mut tools = vec!["ip", "nsenter", "ss", "ping", "iperf3"];
    if selected
        .iter()
        .any(|v| matches!(v, Variant::WireguardGo | Variant::Boringtun))
    {
        tools.push("wg");
    }
    if selected.contains(&Variant::WireguardGo) {
        tools.push("wireguard-go");
    }
    if selected.contains(&Variant::Boringtun) {
        tools.push("boringtun-cli");
    }
    for t in tools {
        if !proc::have(t) {
            let fix = match t {
                "boringtun-cli" => {
                    "install it with `cargo install boringtun-cli --locked` (and put ~/.cargo/bin in PATH), or leave boringtun out of --variants"
                }
                _ => {
                    "`bash bench/overlay.sh` installs it (apt-get install iperf3 wireguard-go wireguard-tools iproute2 util-linux iputils-ping)"
                }
            };
            return Err(OverlayBenchError::MissingTool {
                tool: t.to_owned(),
                fix: fix.to_owned(),
            });
        }
    }
    Ok(())
}

/// Runs everything; the report and whether every figure was measured.
fn work(cli: &Cli) -> Result<(Report, bool)> {
    if !nix::unistd::geteuid().is_root() {
        return Err(OverlayBenchError::InvalidOption {
            field: "user",
            reason: "the benchmark builds network namespaces: run it as root".to_owned(),
        });
    }
    let selected = cli.selected();
    check_tools(&selected)?;
    let started = Instant::now();
    let load_before = report::load_average();
    let machine = Machine::detect();
    let meshd_bin = mesh_testkit::meshd_bin()?;
    let meshd_path = meshd_bin.display().to_string();
    let mut versions = vec![
        (
            "meshd".to_owned(),
            report::version_of(&[&meshd_path, "--version"]),
        ),
        (
            "iperf3".to_owned(),
            report::version_of(&["iperf3", "--version"]),
        ),
    ];
    if selected.contains(&Variant::WireguardGo) {
        versions.push((
            "wireguard-go".to_owned(),
            report::version_of(&["wireguard-go", "--version"]),
        ));
    }
    if selected.contains(&Variant::Boringtun) {
        versions.push((
            "boringtun-cli".to_owned(),
            report::version_of(&["boringtun-cli", "--version"]),
        ));
    }
    progress(&format!(
        "machine: load average {load_before} (1, 5, 15 min)"
    ));

    progress("starting a lab of 2 hosts, each with its meshd");
    let lab = Arc::new(Lab::start(LabOptions::hosts(2))?);
    *LAB.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::downgrade(&lab));
    let wants_meshd = selected.contains(&Variant::Meshd);
    let mut memory = MeshdMemory::default();
    if wants_meshd {
        progress("forming the cluster: swarm init on host1, swarm join on host2");
        variants::form_cluster(&lab)?;
        thread::sleep(Duration::from_secs(2));
        memory.idle = lab.pid(1).and_then(|p| Memory::of(p).ok());
    }

    let mut reports = Vec::new();
    let mut complete = true;
    for v in &selected {
        progress(&format!("{}: setting up", v.label()));
        let setup = match v {
            Variant::Veth => variants::veth(&lab),
            Variant::Meshd => variants::meshd(&lab),
            Variant::WireguardGo => variants::userspace_wg(&lab, WgImpl::Go),
            Variant::Boringtun => variants::userspace_wg(&lab, WgImpl::Boringtun),
        };
        let setup = match setup {
            Ok(s) => s,
            Err(e) => {
                progress(&format!("{}: setup failed: {e}", v.label()));
                complete = false;
                reports.push(VariantReport {
                    variant: *v,
                    mtu: None,
                    how: "setup failed".to_owned(),
                    figures: Figures::default(),
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        progress(&format!(
            "{}: MTU {}, {} → {}",
            v.label(),
            setup.mtu,
            setup.client_ns.display(),
            setup.dst
        ));
        let (figures, error) = measure(&setup, cli);
        if let Some(e) = &error {
            progress(&format!("{}: {e}", v.label()));
            complete = false;
        }
        if *v == Variant::Meshd {
            memory.after_traffic = lab.pid(1).and_then(|p| Memory::of(p).ok());
        }
        reports.push(VariantReport {
            variant: *v,
            mtu: Some(setup.mtu),
            how: setup.how.clone(),
            figures,
            error,
        });
        drop(setup);
        thread::sleep(Duration::from_secs(1));
    }

    if wants_meshd && cli.peers > 0 {
        progress(&format!(
            "meshd memory: connecting {} standard WireGuard peers on host1",
            cli.peers
        ));
        let peers = variants::peers_memory(&lab, cli.peers, &progress);
        match &peers {
            Ok(p) => progress(&format!(
                "meshd on host1: VmRSS {:.1} MiB with {} peers",
                p.with_peers.rss_kib as f64 / 1024.0,
                p.peers
            )),
            Err(e) => {
                progress(&format!("meshd memory: {e}"));
                complete = false;
            }
        }
        memory.peers = Some(peers.map_err(|e| e.to_string()));
    }

    progress("tearing the lab down");
    drop(lab);
    let now = time::OffsetDateTime::now_utc();
    Ok((
        Report {
            date: format!("{} {:02}:{:02}", now.date(), now.hour(), now.minute()),
            command: cli.command_line(),
            machine,
            load_before,
            load_after: report::load_average(),
            versions,
            duration_secs: cli.duration,
            runs: cli.runs,
            udp_len: cli.udp_len,
            variants: reports,
            memory,
            elapsed: started.elapsed(),
        },
        complete,
    ))
}

/// One variant's figures: warm-up, TCP 1 stream (`runs` times), TCP 4 streams, UDP. Stops at
/// the first failure, returning what it has and why.
fn measure(setup: &Setup, cli: &Cli) -> (Figures, Option<String>) {
    let mut figures = Figures::default();
    let label = setup.variant.label();
    let mut server = match Server::start(&setup.server_ns, cli.port) {
        Ok(s) => Some(s),
        Err(e) => return (figures, Some(e.to_string())),
    };
    if cli.warmup > 0
        && let Err(e) = one(&mut server, setup, cli.warmup, Load::Tcp { streams: 1 })
    {
        return (figures, Some(format!("warm-up: {e}")));
    }
    for r in 1..=cli.runs {
        match one(&mut server, setup, cli.duration, Load::Tcp { streams: 1 }) {
            Ok(run) => {
                progress(&format!(
                    "{label}: TCP 1 stream {r}/{}: {:.2} Gb/s, {:.2} CPU s/GB",
                    cli.runs,
                    run.gbps(),
                    run.cpu_seconds_per_gb()
                ));
                figures.tcp1.push(run);
            }
            Err(e) => return (figures, Some(format!("TCP 1 stream: {e}"))),
        }
    }
    match one(&mut server, setup, cli.duration, Load::Tcp { streams: 4 }) {
        Ok(run) => {
            progress(&format!("{label}: TCP 4 streams: {:.2} Gb/s", run.gbps()));
            figures.tcp4 = Some(run);
        }
        Err(e) => return (figures, Some(format!("TCP 4 streams: {e}"))),
    }
    match one(
        &mut server,
        setup,
        cli.duration,
        Load::Udp { len: cli.udp_len },
    ) {
        Ok(run) => {
            let drops = run.rcvbuf_drops.map_or_else(String::new, |d| {
                format!(
                    ", {:.0}k/s dropped at full socket buffers in the server's namespace",
                    d as f64 / run.seconds.max(1e-9) / 1000.0
                )
            });
            progress(&format!(
                "{label}: UDP {} B: {:.0}k packets/s received ({:.0}k sent{drops})",
                cli.udp_len,
                run.received_pps() / 1000.0,
                run.sent_pps() / 1000.0
            ));
            figures.udp = Some(run);
        }
        Err(e) => return (figures, Some(format!("UDP: {e}"))),
    }
    (figures, None)
}

/// One iperf3 run; when it fails, the server is restarted and the run tried once more.
fn one(server: &mut Option<Server>, setup: &Setup, secs: u64, load: Load) -> Result<Run> {
    // A second between runs: the previous one's sockets and queues drain.
    thread::sleep(Duration::from_secs(1));
    let port = server.as_ref().map_or(0, Server::port);
    let first = match server.as_mut() {
        Some(s) => s.check_running().and_then(|()| {
            iperf::client(
                &setup.client_ns,
                &setup.server_ns,
                setup.dst,
                port,
                secs,
                load,
            )
        }),
        None => Err(OverlayBenchError::output(
            "the iperf3 server",
            "it is not running",
        )),
    };
    match first {
        Ok(run) => Ok(run),
        Err(e) => {
            tracing::warn!(error = %e, "iperf3 run failed; restarting the server and trying once more");
            progress(&format!("{}: {e}; retrying once", setup.variant.label()));
            if let Some(s) = server.take() {
                *server = Some(s.restart()?);
            }
            thread::sleep(Duration::from_secs(1));
            iperf::client(
                &setup.client_ns,
                &setup.server_ns,
                setup.dst,
                port,
                secs,
                load,
            )
        }
    }
}
