//! Scheduler throughput: meshd's pure scheduler and planner (`mesh_orchestrator`) on a
//! simulated cluster, called in-process. No lab, no I/O: the figures are the CPU cost of the
//! placement decisions alone.
//!
//! The cluster: `nodes` nodes, a quarter each labelled `zone=a|b|c|d`, three sizes (8, 16 and
//! 32 CPUs with 2 GiB of memory per CPU), all ready and active; `services` replicated
//! services of `replicas` tasks each, where every tenth service is constrained to zone a,
//! every tenth reserves 0.05 CPU and 32 MiB per task, and every tenth runs at most 2 tasks per
//! node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mesh_api::{
    Availability, ContainerSpec, Node, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus,
    ResourceAmounts, Service, ServiceMode, ServiceSpec, Task, TaskSpec, TaskState,
};
use mesh_orchestrator::{Decision, Input, Request, Scheduler, apply, plan};

use crate::BenchError;
use crate::stats::median;

const CPU: u64 = 1_000_000_000;
const GIB: u64 = 1 << 30;

/// Size of the simulated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedOptions {
    /// Nodes.
    pub nodes: usize,
    /// Services.
    pub services: usize,
    /// Replicas of each service.
    pub replicas: usize,
    /// Timed repetitions of each figure (the median is kept).
    pub runs: usize,
}

impl Default for SchedOptions {
    fn default() -> Self {
        SchedOptions {
            nodes: 1_000,
            services: 100,
            replicas: 1_000,
            runs: 3,
        }
    }
}

impl SchedOptions {
    /// Checks the bounds; the error names the option and its range.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |field: &'static str, reason: &str| {
            Err(BenchError::InvalidOption {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(1..=100_000).contains(&self.nodes) {
            return bad("--sched-nodes", "must be between 1 and 100000");
        }
        if !(1..=10_000).contains(&self.services) {
            return bad("--sched-services", "must be between 1 and 10000");
        }
        if !(1..=100_000).contains(&self.replicas) {
            return bad("--sched-replicas", "must be between 1 and 100000");
        }
        if self.services.saturating_mul(self.replicas) > 2_000_000 {
            return bad(
                "--sched-replicas",
                "services × replicas must be at most 2000000 (memory); lower one of them",
            );
        }
        if !(1..=20).contains(&self.runs) {
            return bad("--runs", "must be between 1 and 20");
        }
        Ok(())
    }

    /// Tasks in the cluster.
    pub fn tasks(&self) -> usize {
        self.services * self.replicas
    }
}

/// What the scheduler benchmark measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedFigures {
    /// The cluster's size.
    pub options: SchedOptions,
    /// `Scheduler::schedule` of every task in one batch, per run.
    pub schedule: Vec<Duration>,
    /// Tasks placed by it (the others stay pending: no node fits).
    pub placed: usize,
    /// `plan` from an empty cluster (every task created and placed), per run.
    pub full_plan: Vec<Duration>,
    /// Tasks the full plan created, and how many of them it placed.
    pub plan_created: usize,
    /// Of those, placed on a node.
    pub plan_assigned: usize,
    /// `plan` of the same cluster once every task runs (nothing to do), per run.
    pub steady_plan: Vec<Duration>,
}

impl SchedFigures {
    /// Placements per second: tasks handed to the scheduler over the median batch time.
    pub fn placements_per_sec(&self) -> Option<f64> {
        let t = median(&self.schedule)?;
        (!t.is_zero()).then(|| self.options.tasks() as f64 / t.as_secs_f64())
    }
}

/// The simulated nodes.
pub fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_owned(), ["a", "b", "c", "d"][i % 4].to_owned());
            let size = [8, 16, 32][i % 3];
            Node {
                id: format!("node{i:06}"),
                version: 1,
                created_at: 0,
                updated_at: 0,
                spec: NodeSpec {
                    labels,
                    role: if i < 3 {
                        NodeRole::Manager
                    } else {
                        NodeRole::Worker
                    },
                    availability: Availability::Active,
                },
                description: NodeDescription {
                    hostname: format!("host{i:06}"),
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                    engine_version: "bench".into(),
                    nano_cpus: size * CPU,
                    memory_bytes: size * 2 * GIB,
                },
                status: NodeStatus {
                    state: NodeState::Ready,
                    message: String::new(),
                    addr: String::new(),
                },
                role: NodeRole::Worker,
                raft_id: 0,
                control_addr: String::new(),
                data_port: mesh_api::api::DEFAULT_DATA_PORT,
                manager_status: None,
                cert_expiry: 0,
                network_keys: BTreeMap::new(),
            }
        })
        .collect()
}

/// The simulated services.
pub fn services(n: usize, replicas: usize) -> Vec<Service> {
    (0..n)
        .map(|i| {
            let mut t = TaskSpec {
                container: ContainerSpec {
                    image: format!("app{i}:1"),
                    stop_grace_period_ms: mesh_api::service::DEFAULT_STOP_GRACE_MS,
                    ..ContainerSpec::default()
                },
                ..TaskSpec::default()
            };
            match i % 10 {
                0 => t.placement.constraints = vec!["node.labels.zone==a".into()],
                1 => {
                    t.resources.reservations = ResourceAmounts {
                        nano_cpus: CPU / 20,
                        memory_bytes: 32 << 20,
                    }
                }
                2 => t.placement.max_replicas = 2,
                _ => {}
            }
            Service {
                id: format!("svc{i:05}"),
                version: 1,
                created_at: 0,
                updated_at: 0,
                spec: ServiceSpec {
                    name: format!("svc{i:05}"),
                    task_template: t,
                    mode: ServiceMode::Replicated {
                        replicas: replicas as u64,
                    },
                    ..ServiceSpec::default()
                },
                spec_version: 1,
                previous_spec: None,
                previous_spec_version: 0,
                update_status: None,
                ports: Vec::new(),
                virtual_ips: Vec::new(),
            }
        })
        .collect()
}

/// One batch of every task through a fresh scheduler: its time and how many were placed.
fn schedule_once(nodes: &[Node], services: &[Service], replicas: usize) -> (Duration, usize) {
    let mut requests = Vec::with_capacity(services.len() * replicas);
    for s in services {
        for _ in 0..replicas {
            requests.push(Request {
                service_id: &s.id,
                spec: &s.spec.task_template,
                host_ports: &[],
                node_id: None,
                avoid: Vec::new(),
            });
        }
    }
    let mut sched = Scheduler::new(nodes);
    let start = Instant::now();
    let decisions = sched.schedule(&requests);
    let took = start.elapsed();
    let placed = decisions
        .iter()
        .filter(|d| matches!(d, Decision::Assign { .. }))
        .count();
    (took, placed)
}

/// Runs the scheduler benchmark, telling `progress` what it does.
pub fn run(opts: &SchedOptions, progress: &dyn Fn(&str)) -> Result<SchedFigures, BenchError> {
    opts.validate()?;
    progress(&format!(
        "scheduler: {} simulated nodes, {} services × {} replicas = {} tasks, {} runs…",
        opts.nodes,
        opts.services,
        opts.replicas,
        opts.tasks(),
        opts.runs
    ));
    let nodes = nodes(opts.nodes);
    let services = services(opts.services, opts.replicas);

    let mut schedule = Vec::new();
    let mut placed = 0;
    for _ in 0..opts.runs {
        let (took, p) = schedule_once(&nodes, &services, opts.replicas);
        schedule.push(took);
        placed = p;
    }

    let now = 1_000_000u64;
    let mut full_plan = Vec::new();
    let mut last = None;
    for _ in 0..opts.runs {
        let mut ids = 0u64;
        let input = Input::new(&nodes, &services, &[], now);
        let start = Instant::now();
        let p = plan(&input, &mut || {
            ids += 1;
            format!("t{ids:09}")
        });
        full_plan.push(start.elapsed());
        last = Some(p);
    }
    let p = last.ok_or_else(|| BenchError::Cluster("no plan was made".to_owned()))?;
    let plan_created = p.create.len();
    let plan_assigned = p
        .create
        .iter()
        .filter(|t| t.status.state == TaskState::Assigned)
        .count();

    // Apply it, let every placed task run, and plan again: nothing to do.
    let mut services_after = services.clone();
    let mut tasks: Vec<Task> = Vec::new();
    apply(&p, &mut services_after, &mut tasks, now);
    drop(p);
    for t in &mut tasks {
        if t.status.state == TaskState::Assigned {
            t.status.state = TaskState::Running;
        }
    }
    let mut steady_plan = Vec::new();
    for run in 0..opts.runs {
        let mut ids = 0u64;
        let input = Input::new(&nodes, &services_after, &tasks, now + 1_000 + run as u64);
        let start = Instant::now();
        let p = plan(&input, &mut || {
            ids += 1;
            format!("s{ids:09}")
        });
        steady_plan.push(start.elapsed());
        if !p.create.is_empty() {
            return Err(BenchError::Cluster(format!(
                "the steady-state plan created {} tasks; expected none",
                p.create.len()
            )));
        }
    }
    let f = SchedFigures {
        options: *opts,
        schedule,
        placed,
        full_plan,
        plan_created,
        plan_assigned,
        steady_plan,
    };
    progress(&format!(
        "  {:.0} placements/s ({} of {} placed); full plan {:.1} ms, steady plan {:.1} ms (medians)",
        f.placements_per_sec().unwrap_or(0.0),
        f.placed,
        opts.tasks(),
        median(&f.full_plan).unwrap_or_default().as_secs_f64() * 1e3,
        median(&f.steady_plan).unwrap_or_default().as_secs_f64() * 1e3,
    ));
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_cluster_is_placed_and_planned() {
        let opts = SchedOptions {
            nodes: 12,
            services: 10,
            replicas: 6,
            runs: 2,
        };
        let f = run(&opts, &|_| {}).unwrap();
        assert_eq!(f.schedule.len(), 2);
        assert_eq!(f.full_plan.len(), 2);
        assert_eq!(f.steady_plan.len(), 2);
        // Every task fits somewhere: zone a has 3 nodes, max 2 per node allows 24.
        assert_eq!(f.placed, 60);
        assert_eq!(f.plan_created, 60);
        assert_eq!(f.plan_assigned, 60);
        assert!(f.placements_per_sec().unwrap() > 0.0);
    }

    #[test]
    fn the_cluster_has_the_documented_shape() {
        let n = nodes(8);
        assert_eq!(n[1].spec.labels["zone"], "b");
        assert_eq!(n[2].description.nano_cpus, 32 * CPU);
        let s = services(11, 3);
        assert_eq!(s[10].spec.task_template.placement.constraints.len(), 1);
        assert_eq!(s[2].spec.task_template.placement.max_replicas, 2);
        assert_eq!(
            s[1].spec.task_template.resources.reservations.memory_bytes,
            32 << 20
        );
    }

    #[test]
    fn bounds_name_the_option() {
        assert!(SchedOptions::default().validate().is_ok());
        let e = SchedOptions {
            nodes: 0,
            ..SchedOptions::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--sched-nodes"), "{e}");
        let e = SchedOptions {
            services: 10_000,
            replicas: 1_000,
            ..SchedOptions::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--sched-replicas"), "{e}");
    }
}
