//! Write throughput of a 3-member cluster in one process: on-disk stores in a temporary
//! directory (or `--dir`), connected by the in-process transport, with N concurrent writers on
//! the leader (each with one write in flight).
//!
//! ```sh
//! cargo run --release -p mesh-store --example throughput -- --clients 1,64 --seconds 5
//! ```
//!
//! Options: `--clients LIST` (comma-separated, default `1,64`), `--seconds S` per row (default
//! 5), `--members N` (default 3), `--via-follower` (write through a follower instead),
//! `--dir PATH` (where the stores live; default a temporary directory under `$TMPDIR`),
//! `--batch-writes` (sets `StoreConfig::batch_writes`: concurrent writes share log entries).
//! Figures depend on the disk's fsync time and on whatever else runs on the machine.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use mesh_store::MemberInfo;
use mesh_store::RaftRole;
use mesh_store::StateMachine;
use mesh_store::Store;
use mesh_store::StoreConfig;
use mesh_store::StoreError;
use mesh_store::mem::MemNetwork;
use serde::Deserialize;
use serde::Serialize;

/// Labels of one node, as the manager's writes in the control-plane benchmark change them.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Labels {
    labels: BTreeMap<String, String>,
    version: u64,
}

impl StateMachine for Labels {
    type Command = (String, String);
    type Output = u64;

    fn apply(&mut self, index: u64, (k, v): (String, String)) -> u64 {
        self.labels.insert(k, v);
        self.version = index;
        index
    }
}

struct Args {
    clients: Vec<usize>,
    seconds: u64,
    members: u64,
    via_follower: bool,
    batch_writes: bool,
    dir: Option<PathBuf>,
}

fn usage(why: &str) -> StoreError {
    StoreError::InvalidArgument {
        field: "command line".to_string(),
        reason: format!(
            "{why}; usage: throughput [--clients 1,64] [--seconds 5] [--members 3] [--via-follower] [--batch-writes] [--dir PATH]"
        ),
    }
}

fn parse_args() -> Result<Args, StoreError> {
    let mut args = Args {
        clients: vec![1, 64],
        seconds: 5,
        members: 3,
        via_follower: false,
        batch_writes: false,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--clients" => {
                let v = value("--clients")?;
                args.clients = v
                    .split(',')
                    .map(|c| c.trim().parse::<usize>().ok().filter(|n| *n > 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        usage(&format!(
                            "--clients `{v}` is not a list of positive numbers"
                        ))
                    })?;
            }
            "--seconds" => {
                let v = value("--seconds")?;
                args.seconds =
                    v.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        usage(&format!("--seconds `{v}` is not a positive number"))
                    })?;
            }
            "--members" => {
                let v = value("--members")?;
                args.members = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=7).contains(n))
                    .ok_or_else(|| {
                        usage(&format!("--members `{v}` is not a number from 1 to 7"))
                    })?;
            }
            "--via-follower" => args.via_follower = true,
            "--batch-writes" => args.batch_writes = true,
            "--dir" => args.dir = Some(PathBuf::from(value("--dir")?)),
            other => return Err(usage(&format!("unknown argument `{other}`"))),
        }
    }
    if args.via_follower && args.members < 2 {
        return Err(usage("--via-follower needs --members 2 or more"));
    }
    Ok(args)
}

fn member(id: u64) -> MemberInfo {
    MemberInfo::new(format!("127.0.0.{id}:2377"), format!("node-{id}"))
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> Result<(), StoreError> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > Duration::from_secs(30) {
            return Err(StoreError::Raft {
                reason: format!("timed out waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Writes per second with `clients` writers on `target` for `secs` seconds.
async fn run(target: &Store<Labels>, clients: usize, secs: u64) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (s, stop, done, errors) = (target.clone(), stop.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                match s.write((format!("client-{c}"), format!("{seq}"))).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Warm-up, then the measured window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (start, before) = (Instant::now(), done.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (elapsed, after) = (start.elapsed(), done.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (
        (after - before) as f64 / elapsed.as_secs_f64(),
        errors.load(Ordering::Relaxed),
    )
}

async fn main_inner() -> Result<(), StoreError> {
    let args = parse_args()?;
    let tmp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp =
                std::env::temp_dir().join(format!("mesh-store-throughput-{}", std::process::id()));
            tmp.clone()
        }
    };
    let cfg = StoreConfig {
        batch_writes: args.batch_writes,
        ..Default::default()
    };
    let net = MemNetwork::new();
    let mut stores = BTreeMap::new();
    for id in 1..=args.members {
        let dir = root.join(format!("node-{id}"));
        let s = Store::<Labels>::open(&dir, id, cfg.clone(), net.transport(id)).await?;
        net.register(id, s.rpc_handler());
        stores.insert(id, s);
    }
    let first = stores[&1].clone();
    first.bootstrap(member(1)).await?;
    wait_for("a leader", || first.status().role == RaftRole::Leader).await?;
    for id in 2..=args.members {
        first.add_learner(id, member(id)).await?;
    }
    first
        .change_voters((1..=args.members).collect::<BTreeSet<u64>>())
        .await?;
    let leader = first.status().leader_id.unwrap_or(1);
    let target_id = if args.via_follower {
        (1..=args.members)
            .find(|id| *id != leader)
            .unwrap_or(leader)
    } else {
        leader
    };
    let target = stores[&target_id].clone();
    println!(
        "{} member(s), writes on member {target_id} ({}{}), store directories under {}",
        args.members,
        if target_id == leader {
            "the leader"
        } else {
            "a follower"
        },
        if args.batch_writes {
            ", batch_writes on"
        } else {
            ""
        },
        root.display()
    );
    for &clients in &args.clients {
        let (rate, errors) = run(&target, clients, args.seconds).await;
        println!("clients {clients:>4}: {rate:>9.0} writes/s ({errors} errors)");
    }
    for s in stores.values() {
        s.shutdown().await?;
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_thread_names(true)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_inner()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
