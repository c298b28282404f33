//! Random events over many steps. After every step: the applied plan's successor is empty,
//! no state moved backwards, nothing was assigned to an ineligible node (all checked by the
//! harness), at most one active task per slot for stop-first services and per node for
//! global ones. At the end, with every node healthy again, each service runs its replicas.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use mesh_api::{Availability, FailureAction, NodeState, ServiceMode, TaskState, UpdateOrder};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.below(v.len() as u64) as usize])
        }
    }
}

fn invariants(sim: &Sim) {
    for s in &sim.services {
        let stop_first = s.spec.update_config.order == UpdateOrder::StopFirst
            && s.spec.rollback_config.order == UpdateOrder::StopFirst;
        let mut per: BTreeMap<(u64, String), usize> = BTreeMap::new();
        for t in sim.active(&s.id) {
            let key = match s.spec.mode {
                ServiceMode::Global => (0, t.node_id.clone()),
                ServiceMode::Replicated { .. } => (t.slot, String::new()),
            };
            *per.entry(key).or_default() += 1;
        }
        for (key, n) in per {
            if stop_first {
                assert!(n <= 1, "{}: {n} active tasks in {key:?}", s.id);
            } else {
                assert!(n <= 2, "{}: {n} active tasks in {key:?}", s.id);
            }
        }
    }
    // Running tasks are on nodes that exist.
    for t in &sim.tasks {
        if t.status.state == TaskState::Running && !t.service_id.is_empty() {
            assert!(
                sim.nodes.iter().any(|n| n.id == t.node_id) || t.desired_state > TaskState::Running
            );
        }
    }
}

fn run(seed: u64, steps: usize) {
    eprintln!("seed {seed}");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    sim.history = rng.below(6) as usize;
    let mut next_node = 4;
    let mut next_svc = 0;
    let mut next_image = 2;
    for _ in 0..steps {
        let node_ids: Vec<String> = sim.nodes.iter().map(|n| n.id.clone()).collect();
        let svc_ids: Vec<String> = sim.services.iter().map(|s| s.id.clone()).collect();
        match rng.below(20) {
            0 if sim.nodes.len() < 7 => {
                let mut n = node(&format!("n{next_node}"));
                next_node += 1;
                if rng.chance(50) {
                    n.spec
                        .labels
                        .insert("zone".into(), if rng.chance(50) { "a" } else { "b" }.into());
                }
                sim.nodes.push(n);
            }
            1 if sim.nodes.len() > 1 => {
                let id = rng.pick(&node_ids).unwrap().clone();
                sim.nodes.retain(|n| n.id != id);
            }
            2 | 3 => {
                if let Some(id) = rng.pick(&node_ids) {
                    let now = sim.now;
                    let n = sim.node_mut(id);
                    n.status.state = if n.status.state == NodeState::Ready {
                        NodeState::Down
                    } else {
                        NodeState::Ready
                    };
                    n.updated_at = now;
                }
            }
            4 => {
                if let Some(id) = rng.pick(&node_ids) {
                    let a = *rng
                        .pick(&[
                            Availability::Active,
                            Availability::Pause,
                            Availability::Drain,
                        ])
                        .unwrap();
                    sim.node_mut(id).spec.availability = a;
                }
            }
            5 if sim.services.len() < 5 => {
                let id = format!("s{next_svc}");
                next_svc += 1;
                let mut s = if rng.chance(25) {
                    service(&id, ServiceMode::Global, template("img:1"))
                } else {
                    replicated(&id, rng.below(7), "img:1")
                };
                let t = &mut s.spec.task_template;
                t.restart_policy.delay_ms = rng.below(3) * 1_000;
                if rng.chance(20) {
                    t.placement.constraints = vec!["node.labels.zone==a".into()];
                }
                if rng.chance(20) {
                    t.placement.max_replicas = 1 + rng.below(2);
                }
                if rng.chance(20) {
                    t.resources.reservations = reservation(CPU, 0);
                }
                if rng.chance(15) {
                    s.spec.endpoint_spec.ports = vec![host_port(8000 + rng.below(3) as u16)];
                }
                if rng.chance(15) {
                    s.spec.task_template.container.healthcheck = Some(health());
                }
                if rng.chance(15) {
                    let rp = &mut s.spec.task_template.restart_policy;
                    rp.max_attempts = 1 + rng.below(3);
                    rp.window_ms = rng.below(3) * 5_000;
                    rp.condition = *rng
                        .pick(&[
                            mesh_api::RestartCondition::Any,
                            mesh_api::RestartCondition::OnFailure,
                            mesh_api::RestartCondition::None,
                        ])
                        .unwrap();
                }
                let order = if rng.chance(70) {
                    UpdateOrder::StopFirst
                } else {
                    UpdateOrder::StartFirst
                };
                let mut cfg = update_config(rng.below(3), rng.below(3) * 1_000, order);
                cfg.failure_action = *rng
                    .pick(&[
                        FailureAction::Pause,
                        FailureAction::Continue,
                        FailureAction::Rollback,
                    ])
                    .unwrap();
                s.spec.update_config = cfg;
                s.spec.rollback_config = cfg;
                sim.services.push(s);
            }
            6 if !svc_ids.is_empty() && rng.chance(30) => {
                let id = rng.pick(&svc_ids).unwrap().clone();
                sim.services.retain(|s| s.id != id);
            }
            7 | 8 => {
                if let Some(id) = rng.pick(&svc_ids)
                    && matches!(sim.svc(id).spec.mode, ServiceMode::Replicated { .. })
                {
                    let r = rng.below(8);
                    sim.scale(id, r);
                }
            }
            9 | 10 => {
                if let Some(id) = rng.pick(&svc_ids) {
                    let image = format!("img:{next_image}");
                    next_image += 1;
                    if rng.chance(25) {
                        sim.failing.insert(image.clone());
                    } else if rng.chance(10) {
                        sim.unhealthy.insert(image.clone());
                    }
                    if rng.chance(20)
                        && let Some(n) = rng.pick(&node_ids)
                    {
                        sim.missing.insert((n.clone(), image.clone()));
                    }
                    let id = id.clone();
                    sim.update_spec(&id, |s| s.task_template.container.image = image);
                }
            }
            11 => {
                // A running task fails.
                let running: Vec<String> = sim
                    .tasks
                    .iter()
                    .filter(|t| t.status.state == TaskState::Running && !t.service_id.is_empty())
                    .map(|t| t.id.clone())
                    .collect();
                if let Some(id) = rng.pick(&running) {
                    let now = sim.now;
                    let t = sim.task_mut(id);
                    t.status.state = TaskState::Failed;
                    t.status.timestamp = now;
                }
            }
            12 => {
                if let Some(id) = rng.pick(&node_ids) {
                    let id = id.clone();
                    let v = if rng.chance(50) { "a" } else { "b" };
                    sim.node_mut(&id)
                        .spec
                        .labels
                        .insert("zone".into(), v.into());
                }
            }
            14 => {
                // The operator resumes a paused update (the manager clears the status).
                if let Some(id) = rng.pick(&svc_ids) {
                    let id = id.clone();
                    let s = sim.svc_mut(&id);
                    if s.update_status.as_ref().is_some_and(|u| {
                        matches!(
                            u.state,
                            mesh_api::UpdateState::Paused | mesh_api::UpdateState::RollbackPaused
                        )
                    }) {
                        s.update_status = None;
                    }
                }
            }
            13 => {
                if let Some(at) = sim.wakeup {
                    sim.now = sim.now.max(at);
                }
            }
            _ => sim.advance(rng.below(3_000)),
        }
        // One plan, one round of node reports.
        sim.step();
        invariants(&sim);
        sim.agents();
        invariants(&sim);
    }

    // Heal everything; a fresh node takes the slots every node rejected.
    sim.failing.clear();
    sim.missing.clear();
    sim.unhealthy.clear();
    for n in &mut sim.nodes {
        n.status.state = NodeState::Ready;
        n.spec.availability = Availability::Active;
        n.spec.labels.insert("zone".into(), "a".into());
    }
    let mut fresh = node("fresh");
    fresh.spec.labels.insert("zone".into(), "a".into());
    sim.nodes.push(fresh);
    sim.run_for(600_000);
    invariants(&sim);
    for s in &sim.services {
        let t = &s.spec.task_template;
        let unconstrained = t.placement.max_replicas == 0
            && t.resources.reservations.nano_cpus == 0
            && s.spec.endpoint_spec.ports.is_empty()
            && t.restart_policy.max_attempts == 0
            && t.restart_policy.condition == mesh_api::RestartCondition::Any;
        let why: Vec<String> = sim
            .active(&s.id)
            .iter()
            .filter(|t| t.status.state < TaskState::Running)
            .map(|t| {
                format!(
                    "{} {} {}: {}",
                    t.id, t.node_id, t.status.state, t.status.message
                )
            })
            .collect();
        let ServiceMode::Replicated { replicas } = s.spec.mode else {
            if unconstrained {
                assert_eq!(
                    sim.running(&s.id).len(),
                    sim.nodes.len(),
                    "seed {seed}: global {} {why:#?}",
                    s.id
                );
            }
            continue;
        };
        if unconstrained {
            assert_eq!(
                sim.running(&s.id).len() as u64,
                replicas,
                "seed {seed}: {} {why:#?}",
                s.id
            );
        }
        assert!(
            sim.running(&s.id).len() as u64 <= replicas,
            "seed {seed}: {}",
            s.id
        );
    }
}

#[test]
fn random_events_keep_invariants() {
    // MESH_ORCHESTRATOR_SEEDS=N runs more seeds (e.g. a few thousand before a release).
    let seeds: u64 = std::env::var("MESH_ORCHESTRATOR_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let from: u64 = std::env::var("MESH_ORCHESTRATOR_SEED_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for seed in from..from + seeds {
        run(seed, 250);
    }
}
