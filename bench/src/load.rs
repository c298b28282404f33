//! Write load: N concurrent clients for a fixed time (and at most a fixed count), and the
//! probe that finds the first write accepted after a fault.
//!
//! Both systems are driven by the same code; only [`Workload`] differs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hyper::Method;
use tokio::sync::{mpsc, watch};

use crate::BenchError;
use crate::http::{Conn, Endpoint, shorten};
use crate::stats::Latency;

/// One small write, as each system takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// meshd: `POST /v1/nodes/{node}/update` with `{"label_add":["bench-c<client>=<seq>"]}`.
    /// Labels are applied as deltas, so concurrent writers never conflict; each client
    /// overwrites its own key, so the node's labels stay bounded.
    MeshdLabel {
        /// Node ID (or `self`) whose labels are written.
        node: String,
    },
    /// etcd: `POST /v3/kv/put` with `{"key":b64("bench/c<client>"),"value":b64("<seq>")}`.
    EtcdPut,
}

impl Workload {
    /// The path and body of write number `seq` of client `client`.
    pub fn request(&self, client: usize, seq: u64) -> (String, Bytes) {
        match self {
            Workload::MeshdLabel { node } => (
                mesh_api::api::path(mesh_api::api::routes::NODE_UPDATE, &[("node", node)]),
                Bytes::from(format!(r#"{{"label_add":["bench-c{client}={seq}"]}}"#)),
            ),
            Workload::EtcdPut => (
                "/v3/kv/put".to_owned(),
                Bytes::from(format!(
                    r#"{{"key":"{}","value":"{}"}}"#,
                    BASE64.encode(format!("bench/c{client}")),
                    BASE64.encode(seq.to_string())
                )),
            ),
        }
    }

    /// A short description, for the report.
    pub fn describe(&self) -> &'static str {
        match self {
            Workload::MeshdLabel { .. } => {
                r#"POST /v1/nodes/{id}/update {"label_add":["bench-cN=SEQ"]}"#
            }
            Workload::EtcdPut => r#"POST /v3/kv/put {"key":"bench/cN","value":"SEQ"}"#,
        }
    }
}

/// A load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Where the writes go.
    pub endpoint: Endpoint,
    /// What they are.
    pub workload: Workload,
    /// Concurrent clients, each with its own keep-alive connection and one write in flight.
    pub clients: usize,
    /// Writes before the measured window are not counted.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Longest a single write may take; a write that takes longer counts as an error.
    pub request_timeout: Duration,
    /// Most writes sent in all (warm-up included); the window ends early when reached.
    pub max_writes: u64,
}

/// What a load run measured (in its window only).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadResult {
    /// Accepted writes in the window.
    pub writes: u64,
    /// Failed or timed out writes in the window.
    pub errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Length of the window (shorter than asked when `max_writes` ran out).
    pub window: Duration,
    /// Latencies of the accepted writes.
    pub latency: Latency,
}

impl LoadResult {
    /// Accepted writes per second.
    pub fn per_sec(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.writes as f64 / secs
        } else {
            0.0
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct ClientTally {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

/// Runs the load; call it inside [`crate::netns`] when the endpoint is a lab address.
pub async fn run(spec: LoadSpec) -> Result<LoadResult, BenchError> {
    if spec.clients == 0 {
        return Err(BenchError::InvalidOption {
            field: "clients",
            reason: "must be at least 1".to_owned(),
        });
    }
    let start = Instant::now();
    let from = start + spec.warmup;
    let end = from + spec.duration;
    let budget = Arc::new(AtomicU64::new(spec.max_writes));
    let per_client_cap = usize::try_from(spec.max_writes / spec.clients as u64 + 1)
        .unwrap_or(usize::MAX)
        .min(1 << 22);
    let spec = Arc::new(spec);
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..spec.clients {
        let spec = Arc::clone(&spec);
        let budget = Arc::clone(&budget);
        tasks.spawn(client_loop(spec, client, from, end, budget, per_client_cap));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut last_done: Option<Instant> = None;
    while let Some(joined) = tasks.join_next().await {
        let tally =
            joined.map_err(|e| BenchError::Cluster(format!("a client task failed: {e}")))?;
        all.extend(tally.latencies);
        errors += tally.errors;
        if first_error.is_none() {
            first_error = tally.first_error;
        }
        last_done = last_done.max(tally.last_done);
    }
    let exhausted = budget.load(Ordering::SeqCst) == 0;
    let window = match last_done {
        Some(t) if exhausted && t < end => t.saturating_duration_since(from),
        _ => spec.duration,
    };
    Ok(LoadResult {
        writes: all.len() as u64,
        errors,
        first_error,
        window,
        latency: Latency::of(&mut all),
    })
}

async fn client_loop(
    spec: Arc<LoadSpec>,
    client: usize,
    from: Instant,
    end: Instant,
    budget: Arc<AtomicU64>,
    cap: usize,
) -> ClientTally {
    let mut tally = ClientTally {
        latencies: Vec::with_capacity(cap.min(1 << 16)),
        ..ClientTally::default()
    };
    let mut conn: Option<Conn> = None;
    let mut seq: u64 = 0;
    while Instant::now() < end {
        if budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_err()
        {
            break;
        }
        let t0 = Instant::now();
        let outcome = match conn.as_mut() {
            Some(c) => write_once(c, &spec.workload, client, seq, spec.request_timeout).await,
            None => match Conn::connect(&spec.endpoint, spec.request_timeout).await {
                Ok(mut c) => {
                    let r =
                        write_once(&mut c, &spec.workload, client, seq, spec.request_timeout).await;
                    conn = Some(c);
                    r
                }
                Err(e) => Err(e.to_string()),
            },
        };
        seq += 1;
        let t1 = Instant::now();
        let counted = t0 >= from && t1 <= end;
        match outcome {
            Ok(()) => {
                if counted && tally.latencies.len() < cap {
                    tally.latencies.push(t1 - t0);
                    tally.last_done = Some(t1);
                }
            }
            Err(e) => {
                if counted {
                    tally.errors += 1;
                    tally.first_error.get_or_insert(e);
                }
                // A fresh connection for the next write, after a pause so a failing server
                // is not hammered.
                conn = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tally
}

/// One write on `conn`; `Err` carries why it was not accepted.
async fn write_once(
    conn: &mut Conn,
    workload: &Workload,
    client: usize,
    seq: u64,
    timeout: Duration,
) -> Result<(), String> {
    let (path, body) = workload.request(client, seq);
    match tokio::time::timeout(timeout, conn.call(Method::POST, &path, body)).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((status, _))) if (200..300).contains(&status) => Ok(()),
        Ok(Ok((status, body))) => Err(format!("status {status}: {}", shorten(&body))),
    }
}

/// The probe that measures how long a fault stops writes.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// Where the writes go (a member that survives the fault).
    pub endpoint: Endpoint,
    /// What they are.
    pub workload: Workload,
    /// A new write starts this often, each on a fresh connection.
    pub interval: Duration,
    /// Longest one write may take before it counts as failed.
    pub attempt_timeout: Duration,
    /// Successful writes needed before the fault may be injected.
    pub steady_writes: u32,
    /// How long to wait for the steady writes, and then for a write after the fault.
    pub give_up_after: Duration,
}

/// What the probe saw after the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResult {
    /// From the fault to the end of the first accepted write that started after it.
    pub first_write: Duration,
    /// Writes that started after the fault and failed or timed out before that one.
    pub failed_writes: u64,
}

/// The handles of a running probe, for the thread that injects the fault.
pub struct ProbeControl {
    /// Receives `()` once writes are steady.
    pub steady: std::sync::mpsc::Receiver<()>,
    /// Send the instant of the fault here.
    pub fault_at: watch::Sender<Option<Instant>>,
}

/// The probe's receiving ends.
pub struct ProbeLink {
    steady: std::sync::mpsc::Sender<()>,
    fault_at: watch::Receiver<Option<Instant>>,
}

/// Makes the channels between a probe and the thread that injects the fault.
pub fn probe_channels() -> (ProbeControl, ProbeLink) {
    let (steady_tx, steady_rx) = std::sync::mpsc::channel();
    let (fault_tx, fault_rx) = watch::channel(None);
    (
        ProbeControl {
            steady: steady_rx,
            fault_at: fault_tx,
        },
        ProbeLink {
            steady: steady_tx,
            fault_at: fault_rx,
        },
    )
}

/// Starts a write every `interval` (each bounded by `attempt_timeout`); once
/// `steady_writes` have succeeded it says so on `link.steady`, then waits for the fault's
/// instant and returns when a write that started after it is accepted.
pub async fn probe(spec: ProbeSpec, link: ProbeLink) -> Result<ProbeResult, BenchError> {
    struct Attempt {
        start: Instant,
        end: Instant,
        ok: bool,
    }
    let ProbeLink { steady, fault_at } = link;
    let (tx, mut rx) = mpsc::unbounded_channel::<Attempt>();
    let mut ticker = tokio::time::interval(spec.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut oks = 0u32;
    let mut steady_sent = false;
    let mut failed = 0u64;
    let mut seq = 0u64;
    let spec = Arc::new(spec);
    loop {
        let fault = *fault_at.borrow();
        let deadline = fault.unwrap_or(started) + spec.give_up_after;
        if Instant::now() >= deadline {
            return Err(BenchError::timeout(
                match fault {
                    Some(_) => format!("a write accepted by {} after the fault", spec.endpoint),
                    None => format!(
                        "{} writes in a row accepted by {}",
                        spec.steady_writes, spec.endpoint
                    ),
                },
                spec.give_up_after,
            ));
        }
        tokio::select! {
            _ = ticker.tick() => {
                let tx = tx.clone();
                let spec = Arc::clone(&spec);
                seq += 1;
                let n = seq;
                tokio::spawn(async move {
                    let start = Instant::now();
                    let ok = match Conn::connect(&spec.endpoint, spec.attempt_timeout).await {
                        Ok(mut c) => {
                            let left = spec.attempt_timeout.saturating_sub(start.elapsed());
                            write_once(&mut c, &spec.workload, 0, n, left).await.is_ok()
                        }
                        Err(_) => false,
                    };
                    let _ = tx.send(Attempt { start, end: Instant::now(), ok });
                });
            }
            Some(a) = rx.recv() => {
                match fault {
                    None if a.ok => {
                        oks += 1;
                        if oks >= spec.steady_writes && !steady_sent {
                            steady_sent = true;
                            let _ = steady.send(());
                        }
                    }
                    None => oks = 0,
                    Some(t) if a.start >= t && a.ok => {
                        return Ok(ProbeResult { first_write: a.end - t, failed_writes: failed });
                    }
                    Some(t) if a.start >= t => failed += 1,
                    Some(_) => {}
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meshd_writes_are_label_deltas_per_client() {
        let w = Workload::MeshdLabel { node: "abc".into() };
        let (path, body) = w.request(7, 42);
        assert_eq!(path, "/v1/nodes/abc/update");
        let upd: mesh_api::node::NodeUpdate = serde_json::from_slice(&body).unwrap();
        assert_eq!(upd.label_add, vec!["bench-c7=42".to_owned()]);
        assert!(upd.role.is_none() && upd.availability.is_none());
    }

    #[test]
    fn etcd_writes_are_base64_puts() {
        let (path, body) = Workload::EtcdPut.request(3, 9);
        assert_eq!(path, "/v3/kv/put");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let key = BASE64.decode(v["key"].as_str().unwrap()).unwrap();
        let value = BASE64.decode(v["value"].as_str().unwrap()).unwrap();
        assert_eq!(key, b"bench/c3");
        assert_eq!(value, b"9");
    }

    #[test]
    fn rate_is_writes_over_the_window() {
        let r = LoadResult {
            writes: 500,
            errors: 0,
            first_error: None,
            window: Duration::from_millis(250),
            latency: Latency::default(),
        };
        assert!((r.per_sec() - 2000.0).abs() < 1e-9);
        let empty = LoadResult {
            window: Duration::ZERO,
            ..r
        };
        assert_eq!(empty.per_sec(), 0.0);
    }

    #[tokio::test]
    async fn load_against_nothing_counts_errors_not_writes() {
        let spec = LoadSpec {
            endpoint: Endpoint::Unix(std::env::temp_dir().join("mesh-bench-none.sock")),
            workload: Workload::EtcdPut,
            clients: 2,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(100),
            request_timeout: Duration::from_millis(50),
            max_writes: 1000,
        };
        let r = run(spec).await.unwrap();
        assert_eq!(r.writes, 0);
        assert!(r.errors > 0);
        assert!(r.first_error.unwrap().contains("mesh-bench-none.sock"));
    }
}
