//! The control-plane benchmark: meshd's Raft-backed API against a 3-member etcd, both on a
//! lab of the same topology, one after the other in the same invocation.
//!
//! For each system: writes per second and latency with 1 client and with N clients on the
//! leader (and N clients through a follower), then the time from SIGKILLing the leader to
//! the first write a surviving member accepts. For meshd also how fast a killed node is
//! marked down (a worker, a manager that is not the leader, and the killed leader).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::etcd::{self, EtcdCluster};
use crate::http::Endpoint;
use crate::load::{self, LoadResult, LoadSpec, ProbeResult, ProbeSpec, Workload};
use crate::machine::{self, Disk, Machine};
use crate::meshd::MeshdCluster;
use crate::{BenchError, netns};

/// Hosts of the meshd lab: 3 managers and 1 worker (the worker is killed to measure down
/// detection).
pub const MESHD_HOSTS: usize = 4;
/// Managers (Raft voters) of the meshd cluster, and members of the etcd cluster.
pub const VOTERS: usize = 3;
/// Time allowed to form a cluster or for it to become healthy again after a fault.
const SETUP_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest one write of a load run may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The leader-kill probe starts a write this often…
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// …each bounded by this.
const PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);
/// Longest the probe waits for a write after the fault.
const PROBE_GIVE_UP: Duration = Duration::from_secs(30);
/// Down detection polls the leader this often.
const DOWN_POLL: Duration = Duration::from_millis(20);
/// Longest to wait for a killed node to be marked down.
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Rounds of `write 4 KiB + fdatasync` to characterise the disk.
const FSYNC_ROUNDS: usize = 200;

/// Which systems to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Systems {
    /// meshd and etcd (the default, and what the figures in the docs come from).
    Both,
    /// meshd only.
    Meshd,
    /// etcd only.
    Etcd,
}

/// Options of the benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftOptions {
    /// Load before each measured window.
    pub warmup: Duration,
    /// Each measured window.
    pub duration: Duration,
    /// Concurrent clients of the many-clients rows.
    pub clients: usize,
    /// Leader kills, and kills of each kind of node for down detection.
    pub runs: usize,
    /// Most writes per load run, warm-up included.
    pub max_writes: u64,
    /// Which systems to run.
    pub systems: Systems,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            clients: 64,
            runs: 3,
            max_writes: 2_000_000,
            systems: Systems::Both,
        }
    }
}

impl RaftOptions {
    /// Checks the bounds; the error names the option and its range.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |field: &'static str, reason: &str| {
            Err(BenchError::InvalidOption {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.duration < Duration::from_millis(100) || self.duration > Duration::from_secs(600) {
            return bad("--duration", "must be between 0.1 and 600 seconds");
        }
        if self.warmup > Duration::from_secs(60) {
            return bad("--warmup", "must be at most 60 seconds");
        }
        if !(1..=1024).contains(&self.clients) {
            return bad("--clients", "must be between 1 and 1024");
        }
        if !(1..=20).contains(&self.runs) {
            return bad("--runs", "must be between 1 and 20");
        }
        if self.max_writes == 0 || self.max_writes > 100_000_000 {
            return bad("--max-writes", "must be between 1 and 100000000");
        }
        Ok(())
    }
}

/// What one system measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Its version.
    pub version: String,
    /// Its settings that matter here, in words.
    pub settings: String,
    /// 1 client on the leader.
    pub one: LoadResult,
    /// N clients on the leader.
    pub many: LoadResult,
    /// N clients on a follower (forwarded to the leader).
    pub many_follower: LoadResult,
    /// Leader kill → first accepted write, per run.
    pub leader_kill: Vec<ProbeResult>,
    /// Leader kill → the killed leader marked down by the new one, per run (meshd only).
    pub leader_down: Vec<Duration>,
    /// Worker kill → marked down, per run (meshd only).
    pub worker_down: Vec<Duration>,
    /// Kill of a manager that is not the leader → marked down, per run (meshd only).
    pub manager_down: Vec<Duration>,
}

/// Everything the benchmark measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftReport {
    /// Day of the run (UTC), `YYYY-MM-DD`.
    pub date: String,
    /// The machine.
    pub machine: Machine,
    /// The disk holding both systems' data.
    pub disk: Disk,
    /// The options.
    pub options: RaftOptions,
    /// meshd's figures, when it ran.
    pub meshd: Option<Figures>,
    /// etcd's figures, when it ran.
    pub etcd: Option<Figures>,
}

/// Runs the benchmark, telling `progress` what it does.
pub fn run(opts: &RaftOptions, progress: &dyn Fn(&str)) -> Result<RaftReport, BenchError> {
    opts.validate()?;
    let machine = Machine::detect();
    progress(&format!("machine: {}", machine.summary()));
    // Both labs keep their data (meshd's data dirs, etcd's) in a temporary directory.
    let disk = machine::probe_disk(&std::env::temp_dir(), FSYNC_ROUNDS)?;
    progress(&format!("disk: {}", disk.summary()));
    let meshd = match opts.systems {
        Systems::Both | Systems::Meshd => Some(run_meshd(opts, progress)?),
        Systems::Etcd => None,
    };
    let etcd = match opts.systems {
        Systems::Both | Systems::Etcd => Some(run_etcd(opts, progress)?),
        Systems::Meshd => None,
    };
    Ok(RaftReport {
        date: time::OffsetDateTime::now_utc().date().to_string(),
        machine,
        disk,
        options: opts.clone(),
        meshd,
        etcd,
    })
}

/// Seconds as short as they go: `10 s`, `0.5 s`, `1.25 s`.
pub fn span(d: Duration) -> String {
    let text = format!("{:.3}", d.as_secs_f64());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} s")
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Runs one load in `ns` (or here) and reports it.
fn measure(
    opts: &RaftOptions,
    progress: &dyn Fn(&str),
    what: &str,
    endpoint: Endpoint,
    workload: Workload,
    clients: usize,
    ns: Option<PathBuf>,
) -> Result<LoadResult, BenchError> {
    progress(&format!(
        "{what}: {} warm-up, {} measured…",
        span(opts.warmup),
        span(opts.duration)
    ));
    let spec = LoadSpec {
        endpoint,
        workload,
        clients,
        warmup: opts.warmup,
        duration: opts.duration,
        request_timeout: REQUEST_TIMEOUT,
        max_writes: opts.max_writes,
    };
    let r = netns::run("load", ns, move || load::run(spec))?;
    progress(&format!(
        "  {:.0} writes/s, p50 {}, p99 {}, {} errors",
        r.per_sec(),
        ms(r.latency.p50),
        ms(r.latency.p99),
        r.errors
    ));
    if let Some(e) = &r.first_error {
        progress(&format!("  first error: {e}"));
    }
    Ok(r)
}

/// Starts `probe` writing to a survivor, waits for steady writes, injects `fault` and
/// returns what the probe saw and the fault's instant.
fn kill_and_probe(
    spec: ProbeSpec,
    ns: Option<PathBuf>,
    fault: impl FnOnce() -> Result<Instant, BenchError>,
) -> Result<(ProbeResult, Instant), BenchError> {
    let (ctl, link) = load::probe_channels();
    let handle = netns::spawn("probe", ns, move || load::probe(spec, link))?;
    if ctl.steady.recv_timeout(PROBE_GIVE_UP * 2).is_err() {
        // The probe gave up (its error says why) or hangs (then this times out).
        drop(ctl);
        return match netns::join(handle) {
            Err(e) => Err(e),
            Ok(_) => Err(BenchError::timeout("steady writes", PROBE_GIVE_UP)),
        };
    }
    let at = match fault() {
        Ok(t) => t,
        Err(e) => {
            // Without a fault the probe gives up once its time is over.
            drop(ctl);
            let _ = netns::join(handle);
            return Err(e);
        }
    };
    let _ = ctl.fault_at.send(Some(at));
    Ok((netns::join(handle)?, at))
}

fn seconds(runs: &[Duration]) -> String {
    runs.iter()
        .map(|d| format!("{:.2} s", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn run_meshd(opts: &RaftOptions, progress: &dyn Fn(&str)) -> Result<Figures, BenchError> {
    progress(&format!(
        "meshd: a lab of {MESHD_HOSTS} hosts, {VOTERS} managers and {} worker…",
        MESHD_HOSTS - VOTERS
    ));
    let c = MeshdCluster::start(MESHD_HOSTS, VOTERS, SETUP_TIMEOUT)?;
    let mut version = c.version()?;
    if let Some(rev) = std::env::var("MESH_BENCH_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
    {
        version.push_str(&format!(" ({})", rev.trim()));
    }
    let info = c.info(1)?;
    let store = mesh_store::StoreConfig::default();
    let settings = format!(
        "Raft heartbeat {} ms, election timeout {}–{} ms; node heartbeat {} ms, a node is marked down after {} ms of silence; Raft log in redb, fsynced before a write is acknowledged",
        store.heartbeat_ms,
        store.election_min_ms,
        store.election_max_ms,
        info.heartbeat_period_ms,
        info.node_down_after_ms
    );
    let leader = c.wait_healthy(SETUP_TIMEOUT)?;
    let follower = c.follower(leader);
    progress(&format!(
        "meshd {version}: leader host{leader}, writes through host{follower} as the follower"
    ));
    let workload = Workload::MeshdLabel {
        node: c.node_id(leader).to_owned(),
    };
    let one = measure(
        opts,
        progress,
        "meshd: 1 client on the leader",
        c.endpoint(leader),
        workload.clone(),
        1,
        None,
    )?;
    let many = measure(
        opts,
        progress,
        &format!("meshd: {} clients on the leader", opts.clients),
        c.endpoint(leader),
        workload.clone(),
        opts.clients,
        None,
    )?;
    let many_follower = measure(
        opts,
        progress,
        &format!("meshd: {} clients through a follower", opts.clients),
        c.endpoint(follower),
        workload,
        opts.clients,
        None,
    )?;

    let mut leader_kill = Vec::new();
    let mut leader_down = Vec::new();
    for run in 1..=opts.runs {
        let leader = c.wait_healthy(SETUP_TIMEOUT)?;
        let survivor = c.follower(leader);
        progress(&format!(
            "meshd: leader kill {run}/{}: SIGKILL host{leader}, writing through host{survivor}…",
            opts.runs
        ));
        let spec = ProbeSpec {
            endpoint: c.endpoint(survivor),
            workload: Workload::MeshdLabel {
                node: c.node_id(survivor).to_owned(),
            },
            interval: PROBE_INTERVAL,
            attempt_timeout: PROBE_ATTEMPT_TIMEOUT,
            steady_writes: 10,
            give_up_after: PROBE_GIVE_UP,
        };
        let (probe, at) = kill_and_probe(spec, None, || Ok(c.kill(leader)))?;
        let new_leader = c.lab().wait_until("a new leader", DOWN_TIMEOUT, || {
            c.leader_seen_by(survivor).filter(|l| *l != leader)
        })?;
        let down = c.wait_down(new_leader, leader, at, DOWN_POLL, DOWN_TIMEOUT)?;
        progress(&format!(
            "  first accepted write after {:.3} s ({} failed before); host{leader} marked down by host{new_leader} after {:.3} s",
            probe.first_write.as_secs_f64(),
            probe.failed_writes,
            down.as_secs_f64()
        ));
        leader_kill.push(probe);
        leader_down.push(down);
        c.restart(leader)?;
    }

    let worker = MESHD_HOSTS;
    let mut worker_down = Vec::new();
    for run in 1..=opts.runs {
        let leader = c.wait_healthy(SETUP_TIMEOUT)?;
        let at = c.kill(worker);
        let d = c.wait_down(leader, worker, at, DOWN_POLL, DOWN_TIMEOUT)?;
        progress(&format!(
            "meshd: worker kill {run}/{}: host{worker} marked down after {:.3} s",
            opts.runs,
            d.as_secs_f64()
        ));
        worker_down.push(d);
        c.restart(worker)?;
    }
    let mut manager_down = Vec::new();
    for run in 1..=opts.runs {
        let leader = c.wait_healthy(SETUP_TIMEOUT)?;
        let m = c.follower(leader);
        let at = c.kill(m);
        let d = c.wait_down(leader, m, at, DOWN_POLL, DOWN_TIMEOUT)?;
        progress(&format!(
            "meshd: manager kill {run}/{}: host{m} (not the leader) marked down after {:.3} s",
            opts.runs,
            d.as_secs_f64()
        ));
        manager_down.push(d);
        c.restart(m)?;
    }
    c.wait_healthy(SETUP_TIMEOUT)?;
    progress(&format!(
        "meshd: leader kill → write {}; down: leader {}, worker {}, manager {}",
        seconds(
            &leader_kill
                .iter()
                .map(|p| p.first_write)
                .collect::<Vec<_>>()
        ),
        seconds(&leader_down),
        seconds(&worker_down),
        seconds(&manager_down)
    ));
    Ok(Figures {
        version,
        settings,
        one,
        many,
        many_follower,
        leader_kill,
        leader_down,
        worker_down,
        manager_down,
    })
}

fn run_etcd(opts: &RaftOptions, progress: &dyn Fn(&str)) -> Result<Figures, BenchError> {
    let bin = etcd::binary()?;
    let version = etcd::version(&bin)?;
    progress(&format!(
        "etcd {version}: a lab of {VOTERS} hosts, one member each…"
    ));
    let mut c = EtcdCluster::start(VOTERS, SETUP_TIMEOUT)?;
    let settings = format!(
        "heartbeat {} ms, election timeout {} ms (etcd's defaults, as every other setting); WAL fsynced before a write is acknowledged",
        etcd::HEARTBEAT_MS,
        etcd::ELECTION_MS
    );
    let leader = c.wait_healthy(SETUP_TIMEOUT)?;
    let follower = c.follower(leader);
    progress(&format!(
        "etcd: leader member {leader}, writes through member {follower} as the follower"
    ));
    let one = measure(
        opts,
        progress,
        "etcd: 1 client on the leader",
        c.endpoint(leader),
        Workload::EtcdPut,
        1,
        Some(c.netns(leader)),
    )?;
    let many = measure(
        opts,
        progress,
        &format!("etcd: {} clients on the leader", opts.clients),
        c.endpoint(leader),
        Workload::EtcdPut,
        opts.clients,
        Some(c.netns(leader)),
    )?;
    let many_follower = measure(
        opts,
        progress,
        &format!("etcd: {} clients through a follower", opts.clients),
        c.endpoint(follower),
        Workload::EtcdPut,
        opts.clients,
        Some(c.netns(follower)),
    )?;
    let mut leader_kill = Vec::new();
    for run in 1..=opts.runs {
        let leader = c.wait_healthy(SETUP_TIMEOUT)?;
        let survivor = c.follower(leader);
        progress(&format!(
            "etcd: leader kill {run}/{}: SIGKILL member {leader}, writing through member {survivor}…",
            opts.runs
        ));
        let spec = ProbeSpec {
            endpoint: c.endpoint(survivor),
            workload: Workload::EtcdPut,
            interval: PROBE_INTERVAL,
            attempt_timeout: PROBE_ATTEMPT_TIMEOUT,
            steady_writes: 10,
            give_up_after: PROBE_GIVE_UP,
        };
        let ns = Some(c.netns(survivor));
        let (probe, _) = kill_and_probe(spec, ns, || c.kill(leader))?;
        progress(&format!(
            "  first accepted write after {:.3} s ({} failed before)",
            probe.first_write.as_secs_f64(),
            probe.failed_writes
        ));
        leader_kill.push(probe);
        c.restart(leader)?;
    }
    c.wait_healthy(SETUP_TIMEOUT)?;
    Ok(Figures {
        version,
        settings,
        one,
        many,
        many_follower,
        leader_kill,
        leader_down: Vec::new(),
        worker_down: Vec::new(),
        manager_down: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_name_the_option() {
        assert!(RaftOptions::default().validate().is_ok());
        let cases = [
            (
                RaftOptions {
                    duration: Duration::ZERO,
                    ..RaftOptions::default()
                },
                "--duration",
            ),
            (
                RaftOptions {
                    clients: 0,
                    ..RaftOptions::default()
                },
                "--clients",
            ),
            (
                RaftOptions {
                    runs: 21,
                    ..RaftOptions::default()
                },
                "--runs",
            ),
            (
                RaftOptions {
                    warmup: Duration::from_secs(61),
                    ..RaftOptions::default()
                },
                "--warmup",
            ),
            (
                RaftOptions {
                    max_writes: 0,
                    ..RaftOptions::default()
                },
                "--max-writes",
            ),
        ];
        for (o, field) in cases {
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(ms(Duration::from_micros(1234)), "1.23 ms");
        assert_eq!(span(Duration::from_secs(10)), "10 s");
        assert_eq!(span(Duration::from_millis(500)), "0.5 s");
        assert_eq!(span(Duration::from_millis(1250)), "1.25 s");
        assert_eq!(span(Duration::ZERO), "0 s");
        assert_eq!(
            seconds(&[Duration::from_millis(1500), Duration::from_millis(20)]),
            "1.50 s, 0.02 s"
        );
    }
}
