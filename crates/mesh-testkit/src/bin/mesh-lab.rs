//! `mesh-lab`: start a lab of meshd hosts on this machine, walk through a demo, or sweep
//! stale labs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread;

use clap::{Parser, Subcommand};
use mesh_testkit::{Lab, LabError, LabOptions, demo, swarm_bin, sweep_stale};
use nix::sys::signal::{SigSet, Signal};

/// Lab of meshd hosts, each in its own network namespace, on this one machine (needs root).
#[derive(Debug, Parser)]
#[command(name = "mesh-lab", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a lab and stay in the foreground; Ctrl-C (or SIGTERM) stops it and cleans up.
    Up {
        /// Number of hosts (1 to 199).
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Directory for the hosts' data, sockets and logs (kept afterwards); a temporary
        /// directory by default.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also make the client namespace at 192.0.2.200.
        #[arg(long)]
        client: bool,
        /// Extra argument for every meshd (repeat for several).
        #[arg(long = "meshd-arg", value_name = "ARG", allow_hyphen_values = true)]
        meshd_args: Vec<String>,
    },
    /// Walk through building a cluster: init on host1, join the others, wait until every node
    /// is Ready; then clean up.
    Demo {
        /// Number of hosts (1 to 199).
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Keep the lab up after the walkthrough, until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Extra argument for every meshd (repeat for several).
        #[arg(long = "meshd-arg", value_name = "ARG", allow_hyphen_values = true)]
        meshd_args: Vec<String>,
        /// Only form the cluster; skip the overlay network and service parts.
        #[arg(long)]
        cluster_only: bool,
        /// Image archive for the service part (`scripts/build-test-image.sh` makes one);
        /// without it the demo stops after the overlay part.
        #[arg(long, value_name = "TAR")]
        image: Option<std::path::PathBuf>,
    },
    /// Remove labs whose process has died.
    Sweep,
}

/// State shared by the worker and the signal thread.
#[derive(Default)]
struct Shared {
    lab: Mutex<Option<Weak<Lab>>>,
    interrupted: Mutex<bool>,
    woken: Condvar,
}

impl Shared {
    fn interrupted(&self) -> bool {
        *self
            .interrupted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_interrupt(&self) {
        let mut flag = self
            .interrupted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !*flag {
            flag = self
                .woken
                .wait(flag)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn register(&self, lab: &Arc<Lab>) {
        *self.lab.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::downgrade(lab));
    }
}

enum Event {
    Done(Result<(), LabError>),
    Signal,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESH_LAB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    if let Cmd::Sweep = cli.cmd {
        let removed = sweep_stale();
        if removed.is_empty() {
            println!("no stale lab found");
        }
        for ns in removed {
            println!("removed network namespace {ns}");
        }
        return ExitCode::SUCCESS;
    }

    // Signals are taken by one thread with sigwait; block them before any thread starts so
    // every thread inherits the mask (child processes get a clean mask from std).
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("mesh-lab: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }

    let shared = Arc::new(Shared::default());
    let (tx, rx) = mpsc::channel();
    {
        let shared = Arc::clone(&shared);
        let tx = tx.clone();
        thread::spawn(move || signal_loop(signals, &shared, &tx));
    }
    {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            let result = work(cli.cmd, &shared);
            let _ = tx.send(Event::Done(result));
        });
    }
    loop {
        let event = rx.recv();
        if let Ok(Event::Done(_)) = event {
            // The signal thread may be tearing the lab down right now: wait for it to finish.
            let lab = shared
                .lab
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .and_then(Weak::upgrade);
            if let Some(lab) = lab {
                lab.teardown();
            }
        }
        match event {
            Ok(Event::Signal) => continue,
            Ok(Event::Done(Ok(()))) => return ExitCode::SUCCESS,
            Ok(Event::Done(Err(e))) => {
                if shared.interrupted() {
                    eprintln!("mesh-lab: interrupted");
                    return ExitCode::from(130);
                }
                eprintln!("mesh-lab: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => return ExitCode::FAILURE,
        }
    }
}

fn signal_loop(signals: SigSet, shared: &Shared, tx: &mpsc::Sender<Event>) {
    loop {
        let Ok(sig) = signals.wait() else {
            continue;
        };
        let mut flag = shared
            .interrupted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *flag {
            eprintln!(
                "mesh-lab: {sig} again, exiting now; run `mesh-lab sweep` to remove what is left"
            );
            std::process::exit(130);
        }
        *flag = true;
        shared.woken.notify_all();
        drop(flag);
        eprintln!("mesh-lab: {sig}: stopping the lab and cleaning up (again to exit at once)");
        let lab = shared
            .lab
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(Weak::upgrade);
        if let Some(lab) = lab {
            lab.teardown();
        }
        let _ = tx.send(Event::Signal);
    }
}

fn work(cmd: Cmd, shared: &Shared) -> Result<(), LabError> {
    match cmd {
        Cmd::Up {
            hosts,
            dir,
            client,
            meshd_args,
        } => {
            let lab = Arc::new(Lab::start(LabOptions {
                hosts,
                meshd_args,
                client,
                dir,
            })?);
            shared.register(&lab);
            if shared.interrupted() {
                return Ok(());
            }
            print_lab(&lab);
            println!("\nPress Ctrl-C to stop the lab and clean up.");
            let _ = std::io::stdout().flush();
            shared.wait_interrupt();
            Ok(())
        }
        Cmd::Demo {
            hosts,
            keep,
            meshd_args,
            cluster_only,
            image,
        } => {
            println!("Starting a lab of {hosts} hosts...");
            let lab = Arc::new(Lab::start(LabOptions {
                hosts,
                meshd_args,
                client: false,
                dir: None,
            })?);
            shared.register(&lab);
            if shared.interrupted() {
                return Ok(());
            }
            print_lab(&lab);
            let mut steps = demo::cluster_steps(&lab);
            if !cluster_only {
                steps.extend(demo::overlay_steps(&lab));
                if let Some(image) = &image {
                    let image = std::fs::canonicalize(image).map_err(|source| LabError::Io {
                        what: format!(
                            "--image {}: the archive must exist (make it with `bash scripts/build-test-image.sh`)",
                            image.display()
                        ),
                        source,
                    })?;
                    steps.extend(demo::service_steps(&lab, &image.to_string_lossy()));
                }
            }
            let mut out = std::io::stdout();
            demo::run(&lab, &steps, &mut out)?;
            if keep {
                println!("\nThe cluster stays up. Press Ctrl-C to stop it and clean up.");
                let _ = out.flush();
                shared.wait_interrupt();
            }
            Ok(())
        }
        Cmd::Sweep => {
            sweep_stale();
            Ok(())
        }
    }
}

fn print_lab(lab: &Lab) {
    let swarm = swarm_bin()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "swarm".to_owned());
    println!(
        "Lab {} is up: {} hosts on bridge br0 in netns {} (192.0.2.0/24); files in {}",
        lab.id(),
        lab.hosts(),
        lab.lab_netns(),
        lab.dir().display()
    );
    for i in 1..=lab.hosts() {
        let pid = lab
            .pid(i)
            .map_or_else(|| "not running".to_owned(), |p| format!("pid {p}"));
        println!(
            "\nhost{i}  {}  netns {}  meshd {pid}",
            lab.ip(i),
            lab.netns(i)
        );
        println!("  {swarm} -H unix://{} node ls", lab.socket(i).display());
        println!("  nsenter --net={} bash", lab.netns_path(i).display());
        println!("  log: {}", lab.log_path(i).display());
    }
    if let Some(c) = lab.client_netns() {
        println!("\nclient  {}  netns {c}", lab.client_ip());
        println!("  nsenter --net=/var/run/netns/{c} bash");
    }
    let _ = std::io::stdout().flush();
}
