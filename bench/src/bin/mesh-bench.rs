//! `mesh-bench`: runs a benchmark of meshd against its reference and prints the figures.
//! Needs root (network namespaces). Usually started by `bench/control.sh` or
//! `bench/services.sh`, which build and install what they need first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_bench::raft::{self, RaftOptions, Systems};
use mesh_bench::sched::SchedOptions;
use mesh_bench::services::{self, Section, ServicesOptions};
use mesh_bench::{BenchError, cleanup, report, services_report};
use nix::sys::signal::{SigSet, Signal};

/// Benchmarks of meshd, each against a reference run side by side.
#[derive(Parser)]
#[command(name = "mesh-bench", version)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Control plane: Raft writes with 1 and N clients, leader kill → first accepted write,
    /// killed node → marked down; meshd (3 managers) against etcd (3 members).
    Raft {
        /// Seconds measured per load row.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of load before each measured window.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Concurrent clients of the many-clients rows.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Leader kills (and kills per kind of node for down detection).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Most writes per load row, warm-up included.
        #[arg(long, default_value_t = 2_000_000)]
        max_writes: u64,
        /// Which systems to run.
        #[arg(long, value_enum, default_value_t = Systems::Both)]
        systems: Systems,
        /// Also write the report (Markdown) to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Services: time from `service create` to N tasks running (with and without an
    /// overlay), a killed host's tasks running elsewhere, a rolling update of 6 tasks, and
    /// the scheduler's placements per second; against Docker Swarm's and Nomad's figures.
    Services {
        /// Runs of each figure (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Replica counts of the time-to-N-running rows.
        #[arg(long, value_delimiter = ',', default_values_t = [10usize, 30, 100])]
        replicas: Vec<usize>,
        /// Sections to run, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = Section::ALL)]
        sections: Vec<Section>,
        /// The test image tarball (`scripts/build-test-image.sh FILE`); built when absent.
        #[arg(long, value_name = "FILE", env = "MESH_BENCH_IMAGE")]
        image: Option<PathBuf>,
        /// Monitor period of the rolling update, seconds (Docker Swarm's default: 5).
        #[arg(long, default_value_t = 5.0)]
        update_monitor: f64,
        /// Simulated nodes of the scheduler section.
        #[arg(long, default_value_t = 1_000)]
        sched_nodes: usize,
        /// Simulated services of the scheduler section.
        #[arg(long, default_value_t = 100)]
        sched_services: usize,
        /// Replicas of each simulated service.
        #[arg(long, default_value_t = 1_000)]
        sched_replicas: usize,
        /// Which systems run the lab sections: `both` runs a live Docker Swarm (Debian's
        /// docker.io) after meshd for each section; with `meshd`, Swarm's figures are quoted.
        #[arg(long, value_enum, default_value_t = services::Systems::Both)]
        systems: services::Systems,
        /// Also write the report (Markdown) to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

fn seconds(field: &'static str, v: f64) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(v).map_err(|_| BenchError::InvalidOption {
        field,
        reason: format!("{v} is not a number of seconds; give e.g. 10 or 0.5"),
    })
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

    // Signals are taken by one thread with sigwait; block them before any thread starts so
    // every thread inherits the mask (child processes get a clean mask from std).
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("mesh-bench: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            eprintln!("mesh-bench: {sig}: stopping the labs and the reference, cleaning up…");
            cleanup::run();
            std::process::exit(130);
        }
    });

    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(work(cli.bench));
    });
    match rx.recv() {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("mesh-bench: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("mesh-bench: the benchmark thread panicked (see above)");
            cleanup::run();
            ExitCode::FAILURE
        }
    }
}

fn need_root() -> Result<(), BenchError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(BenchError::InvalidOption {
            field: "user",
            reason: "the benchmark builds network namespaces: run it as root".to_owned(),
        })
    }
}

fn write_out(out: Option<PathBuf>, text: &str) -> Result<(), BenchError> {
    if let Some(path) = out {
        std::fs::write(&path, text)
            .map_err(|e| BenchError::io(format!("write {}", path.display()), e))?;
        eprintln!("mesh-bench: report written to {}", path.display());
    }
    Ok(())
}

fn work(bench: Bench) -> Result<(), BenchError> {
    let progress = |msg: &str| eprintln!("mesh-bench: {msg}");
    match bench {
        Bench::Raft {
            duration,
            warmup,
            clients,
            runs,
            max_writes,
            systems,
            out,
        } => {
            let opts = RaftOptions {
                warmup: seconds("--warmup", warmup)?,
                duration: seconds("--duration", duration)?,
                clients,
                runs,
                max_writes,
                systems,
            };
            opts.validate()?;
            need_root()?;
            let r = raft::run(&opts, &progress)?;
            let text = report::render(&r);
            println!("\n{text}");
            write_out(out, &text)
        }
        Bench::Services {
            runs,
            replicas,
            sections,
            image,
            update_monitor,
            sched_nodes,
            sched_services,
            sched_replicas,
            systems,
            out,
        } => {
            let opts = ServicesOptions {
                runs,
                replicas,
                sections,
                systems,
                image,
                update_monitor: seconds("--update-monitor", update_monitor)?,
                sched: SchedOptions {
                    nodes: sched_nodes,
                    services: sched_services,
                    replicas: sched_replicas,
                    runs,
                },
            };
            opts.validate()?;
            if opts.sections != [Section::Scheduler] {
                need_root()?;
            }
            let r = services::run(&opts, &progress)?;
            let text = services_report::render(&r);
            println!("\n{text}");
            write_out(out, &text)?;
            match r.failures.first() {
                None => Ok(()),
                Some(f) => Err(BenchError::Cluster(format!(
                    "{} section(s) failed, the first ({}, {}): {}",
                    r.failures.len(),
                    f.system,
                    f.section.name(),
                    f.error
                ))),
            }
        }
    }
}
