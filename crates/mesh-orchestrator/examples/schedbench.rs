//! Scheduler and planner throughput on a simulated cluster.
//!
//! `cargo run --release -p mesh-orchestrator --example schedbench [-- NODES SERVICES REPLICAS]`
//!
//! Defaults: 1,000 nodes (a quarter each in zones a–d, three sizes), 100 services of 1,000
//! replicas (every tenth constrained to zone a, every tenth reserving CPU and memory, every
//! tenth at most 2 per node). Prints the placements per second of the pure scheduler and the
//! time of whole `plan` calls over that cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mesh_api::{
    Availability, ContainerSpec, Node, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus,
    ResourceAmounts, Service, ServiceMode, ServiceSpec, Task, TaskSpec, TaskState,
};
use mesh_orchestrator::{Decision, Input, Plan, Request, Scheduler, apply, plan};

const CPU: u64 = 1_000_000_000;
const GIB: u64 = 1 << 30;

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_string(), ["a", "b", "c", "d"][i % 4].to_string());
            let size = [8, 16, 32][i % 3];
            Node {
                id: format!("node{i:05}"),
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
                    hostname: format!("host{i:05}"),
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
                data_port: 51820,
                manager_status: None,
                cert_expiry: 0,
                network_keys: BTreeMap::new(),
            }
        })
        .collect()
}

fn services(n: usize, replicas: u64) -> Vec<Service> {
    (0..n)
        .map(|i| {
            let mut t = TaskSpec {
                container: ContainerSpec {
                    image: format!("app{i}:1"),
                    stop_grace_period_ms: 10_000,
                    ..Default::default()
                },
                ..Default::default()
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
                id: format!("svc{i:04}"),
                version: 1,
                created_at: 0,
                updated_at: 0,
                spec: ServiceSpec {
                    name: format!("svc{i:04}"),
                    task_template: t,
                    mode: ServiceMode::Replicated { replicas },
                    ..Default::default()
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

fn bench_scheduler(
    nodes: &[Node],
    services: &[Service],
    replicas: u64,
) -> (Duration, usize, usize) {
    let total = services.len() * replicas as usize;
    let mut requests = Vec::with_capacity(total);
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
    (took, placed, total - placed)
}

fn timed(input: &Input<'_>, counter: &mut u64) -> (Plan, Duration) {
    let start = Instant::now();
    let p = plan(input, &mut || {
        *counter += 1;
        format!("t{counter:09}")
    });
    (p, start.elapsed())
}

fn summary(p: &Plan) -> String {
    format!(
        "{} created, {} changes, {} removed",
        p.create.len(),
        p.tasks.len(),
        p.remove.len()
    )
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n_nodes = args.first().copied().unwrap_or(1_000);
    let n_services = args.get(1).copied().unwrap_or(100);
    let replicas = args.get(2).copied().unwrap_or(1_000) as u64;
    let mut nodes = nodes(n_nodes);
    let mut services = services(n_services, replicas);
    let total = n_services as u64 * replicas;
    println!(
        "cluster: {n_nodes} nodes, {n_services} services x {replicas} replicas = {total} tasks"
    );
    println!();

    // The pure scheduler, best of 5.
    let mut best = Duration::MAX;
    let (mut placed, mut pending) = (0, 0);
    for _ in 0..5 {
        let (took, p, q) = bench_scheduler(&nodes, &services, replicas);
        if took < best {
            best = took;
        }
        (placed, pending) = (p, q);
    }
    let rate = total as f64 / best.as_secs_f64();
    println!(
        "| scheduler: place {total} tasks in one batch | {:>10.1} ms | {:>12.0} placements/s |",
        best.as_secs_f64() * 1e3,
        rate
    );
    println!("|   placed / pending                          | {placed:>10} | {pending:>12} |");
    println!();

    // Whole plans.
    let mut tasks: Vec<Task> = Vec::new();
    let mut ids = 0u64;
    let mut now = 1_000_000u64;
    let mut rows: Vec<(String, Duration, String)> = Vec::new();

    let (p, took) = timed(&Input::new(&nodes, &services, &tasks, now), &mut ids);
    rows.push(("plan: empty cluster → all tasks".into(), took, summary(&p)));
    apply(&p, &mut services, &mut tasks, now);
    for t in &mut tasks {
        if t.status.state == TaskState::Assigned {
            t.status.state = TaskState::Running;
        }
    }

    now += 1_000;
    let (p, took) = timed(&Input::new(&nodes, &services, &tasks, now), &mut ids);
    rows.push((
        "plan: steady state (nothing to do)".into(),
        took,
        summary(&p),
    ));

    // 10 nodes die.
    for n in nodes.iter_mut().take(10) {
        n.status.state = NodeState::Down;
        n.updated_at = now;
    }
    now += 1_000;
    let (p, took) = timed(&Input::new(&nodes, &services, &tasks, now), &mut ids);
    rows.push((
        "plan: 10 nodes down → replace their tasks".into(),
        took,
        summary(&p),
    ));
    apply(&p, &mut services, &mut tasks, now);

    // A rolling update of one service starts.
    let s = &mut services[5];
    let old = s.spec.clone();
    s.spec.task_template.container.image = "app5:2".into();
    s.spec.update_config.parallelism = 10;
    s.previous_spec = Some(old);
    s.spec_version += 1;
    now += 1_000;
    let (p, took) = timed(&Input::new(&nodes, &services, &tasks, now), &mut ids);
    rows.push((
        "plan: rolling update starts (parallelism 10)".into(),
        took,
        summary(&p),
    ));
    apply(&p, &mut services, &mut tasks, now);

    // Scale every service down by 10 %.
    for s in &mut services {
        s.spec.mode = ServiceMode::Replicated {
            replicas: replicas - replicas / 10,
        };
    }
    now += 1_000;
    let (p, took) = timed(&Input::new(&nodes, &services, &tasks, now), &mut ids);
    rows.push((
        "plan: every service scaled down 10 %".into(),
        took,
        summary(&p),
    ));

    for (what, took, result) in rows {
        println!(
            "| {what:<45} | {:>9.1} ms | {result} |",
            took.as_secs_f64() * 1e3
        );
    }
}
