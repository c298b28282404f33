//! Placement: spread, filters, pending reasons, and the standalone scheduler.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use mesh_api::{Availability, NodeRole, NodeState, ServiceMode, TaskState};
use mesh_orchestrator::{Decision, schedule};

#[test]
fn nine_replicas_spread_three_by_three() {
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    sim.services.push(replicated("web", 9, "img:1"));
    let p = sim.step();
    assert_eq!(p.create.len(), 9);
    assert!(
        p.create
            .iter()
            .all(|t| t.status.state == TaskState::Assigned)
    );
    let slots: Vec<u64> = p.create.iter().map(|t| t.slot).collect();
    assert_eq!(slots, (1..=9).collect::<Vec<_>>());
    sim.settle();
    let counts: Vec<usize> = sim.per_node("web").into_values().collect();
    assert_eq!(counts, vec![3, 3, 3]);
}

#[test]
fn spread_counts_other_services_as_tie_break() {
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    sim.services.push(replicated("a", 2, "img:1"));
    sim.settle();
    // n1 and n2 hold one task of `a`; the single task of `b` goes to the empty n3.
    sim.services.push(replicated("b", 1, "img:1"));
    sim.settle();
    assert_eq!(
        sim.per_node("b").into_keys().collect::<Vec<_>>(),
        vec!["n3"]
    );
}

#[test]
fn constraints_pick_matching_nodes() {
    // (constraint, nodes that may run the tasks)
    let table: &[(&str, &[&str])] = &[
        ("node.labels.zone==a", &["n1", "n2"]),
        ("node.labels.zone!=a", &["n3", "n4"]),
        ("node.labels.zone==b", &["n3"]),
        ("node.hostname==host-n4", &["n4"]),
        ("node.hostname!=host-n4", &["n1", "n2", "n3"]),
        ("node.role==manager", &["n2"]),
        ("node.role!=manager", &["n1", "n3", "n4"]),
        ("node.id==n3", &["n3"]),
        ("node.platform.os==linux", &["n1", "n2", "n3", "n4"]),
    ];
    for (expr, allowed) in table {
        let mut sim = Sim::with_nodes(&["n1", "n2", "n3", "n4"]);
        sim.node_mut("n1")
            .spec
            .labels
            .insert("zone".into(), "a".into());
        sim.node_mut("n2")
            .spec
            .labels
            .insert("zone".into(), "a".into());
        sim.node_mut("n2").spec.role = NodeRole::Manager;
        sim.node_mut("n3")
            .spec
            .labels
            .insert("zone".into(), "b".into());
        let mut s = replicated("web", 8, "img:1");
        s.spec.task_template.placement.constraints = vec![expr.to_string()];
        sim.services.push(s);
        sim.settle();
        let used: Vec<String> = sim.per_node("web").into_keys().collect();
        assert_eq!(
            used,
            allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{expr}"
        );
        assert_eq!(sim.running("web").len(), 8, "{expr}");
    }
}

#[test]
fn no_matching_node_pends_with_reason_then_places_when_one_joins() {
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    sim.node_mut("n3").status.state = NodeState::Down;
    let mut s = replicated("db", 2, "img:1");
    s.spec.task_template.placement.constraints = vec!["node.labels.disk==ssd".into()];
    sim.services.push(s);
    let p = sim.step();
    assert_eq!(p.create.len(), 2);
    for t in &p.create {
        assert_eq!(t.status.state, TaskState::Pending);
        assert_eq!(
            t.status.message,
            "no suitable node (1 node not ready; scheduling constraints not satisfied on 2 nodes)"
        );
    }
    sim.settle();
    assert_eq!(sim.pending("db").len(), 2);
    let mut n = node("n4");
    n.spec.labels.insert("disk".into(), "ssd".into());
    sim.nodes.push(n);
    let p = sim.step();
    assert_eq!(
        p.tasks
            .iter()
            .filter(|c| matches!(c, mesh_orchestrator::TaskChange::Assign { .. }))
            .count(),
        2
    );
    sim.settle();
    assert_eq!(sim.per_node("db").get("n4"), Some(&2));
}

#[test]
fn reservations_limit_placement() {
    let mut sim = Sim::with_nodes(&["n1", "n2"]);
    for n in &mut sim.nodes {
        n.description.nano_cpus = 2 * CPU;
        n.description.memory_bytes = 4 * GIB;
    }
    let mut s = replicated("cpu", 5, "img:1");
    s.spec.task_template.resources.reservations = reservation(CPU, 0);
    sim.services.push(s);
    sim.settle();
    assert_eq!(sim.running("cpu").len(), 4);
    let pending = sim.pending("cpu");
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].status.message,
        "no suitable node (insufficient resources on 2 nodes)"
    );
    // Memory is checked too, and a reservation of 0 is not checked at all.
    let mut m = replicated("mem", 3, "img:1");
    m.spec.task_template.resources.reservations = reservation(0, 3 * GIB);
    sim.services.push(m);
    sim.services.push(replicated("free", 4, "img:1"));
    sim.settle();
    assert_eq!(sim.running("mem").len(), 2);
    assert_eq!(sim.running("free").len(), 4);
    // Scaling the CPU service down frees room: the pending task is placed.
    sim.scale("cpu", 4);
    sim.settle();
    assert_eq!(sim.running("cpu").len(), 4);
    assert!(sim.pending("cpu").is_empty());
}

#[test]
fn max_replicas_per_node() {
    let mut sim = Sim::with_nodes(&["n1", "n2"]);
    let mut s = replicated("web", 5, "img:1");
    s.spec.task_template.placement.max_replicas = 2;
    sim.services.push(s);
    sim.settle();
    assert_eq!(
        sim.per_node("web").into_values().collect::<Vec<_>>(),
        vec![2, 2]
    );
    let pending = sim.pending("web");
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].status.message,
        "no suitable node (max replicas per node reached on 2 nodes)"
    );
    sim.nodes.push(node("n3"));
    sim.settle();
    assert_eq!(sim.running("web").len(), 5);
}

#[test]
fn host_ports_conflict() {
    let mut sim = Sim::with_nodes(&["n1", "n2"]);
    let mut s = replicated("web", 3, "img:1");
    s.spec.endpoint_spec.ports = vec![host_port(8080)];
    sim.services.push(s);
    sim.settle();
    assert_eq!(
        sim.per_node("web").into_values().collect::<Vec<_>>(),
        vec![1, 1]
    );
    assert_eq!(
        sim.pending("web")[0].status.message,
        "no suitable node (host-mode port already in use on 2 nodes)"
    );
    assert!(
        sim.running("web")
            .iter()
            .all(|t| t.host_ports == vec![8080])
    );
    // Another service on the same port also waits; UDP on the same number does not clash.
    let mut other = replicated("other", 1, "img:1");
    other.spec.endpoint_spec.ports = vec![host_port(8080)];
    sim.services.push(other);
    let mut udp = replicated("udp", 2, "img:1");
    let mut p = host_port(8080);
    p.protocol = mesh_api::Protocol::Udp;
    udp.spec.endpoint_spec.ports = vec![p];
    sim.services.push(udp);
    sim.settle();
    assert_eq!(sim.running("other").len(), 0);
    assert_eq!(sim.running("udp").len(), 2);
}

#[test]
fn pause_and_drain_refuse_new_tasks() {
    let mut sim = Sim::with_nodes(&["n1", "n2", "n3"]);
    sim.node_mut("n1").spec.availability = Availability::Pause;
    sim.node_mut("n2").spec.availability = Availability::Drain;
    sim.services.push(replicated("web", 2, "img:1"));
    sim.settle();
    assert_eq!(
        sim.per_node("web").into_iter().collect::<Vec<_>>(),
        vec![("n3".to_string(), 2)]
    );
    sim.node_mut("n3").spec.availability = Availability::Drain;
    sim.settle();
    assert_eq!(
        sim.pending("web")[0].status.message,
        "no suitable node (1 node paused; 2 nodes drained)"
    );
}

#[test]
fn invalid_constraint_names_the_field() {
    let mut sim = Sim::with_nodes(&["n1"]);
    let mut s = replicated("web", 1, "img:1");
    s.spec.task_template.placement.constraints = vec!["node.colour==red".into()];
    sim.services.push(s);
    sim.settle();
    let msg = &sim.pending("web")[0].status.message;
    assert!(
        msg.starts_with("invalid placement constraint: invalid --constraint"),
        "{msg}"
    );
}

#[test]
fn no_nodes_at_all() {
    let mut sim = Sim::new();
    sim.services.push(replicated("web", 1, "img:1"));
    sim.settle();
    assert_eq!(
        sim.pending("web")[0].status.message,
        "no suitable node (no nodes in the cluster)"
    );
}

#[test]
fn standalone_scheduler_places_a_batch() {
    let nodes: Vec<_> = (0..4).map(|i| node(&format!("n{i}"))).collect();
    let svc = replicated("web", 0, "img:1");
    let batch: Vec<_> = (0..10)
        .map(|i| {
            let mut t = mesh_orchestrator_test_task(&svc, i);
            t.status.state = TaskState::Pending;
            t
        })
        .collect();
    let d = schedule(&nodes, std::slice::from_ref(&svc), &[], &batch);
    let mut per = std::collections::BTreeMap::<String, usize>::new();
    for x in &d {
        match x {
            Decision::Assign { node_id } => *per.entry(node_id.clone()).or_default() += 1,
            Decision::Pending { reason } => panic!("{reason}"),
        }
    }
    assert_eq!(per.into_values().collect::<Vec<_>>(), vec![3, 3, 2, 2]);
    // The first two go to the nodes with the smallest IDs.
    assert_eq!(
        d[0],
        Decision::Assign {
            node_id: "n0".into()
        }
    );
    assert_eq!(
        d[1],
        Decision::Assign {
            node_id: "n1".into()
        }
    );
}

#[test]
fn global_task_waits_on_its_node_for_resources() {
    let mut sim = Sim::with_nodes(&["n1", "n2"]);
    sim.node_mut("n2").description.nano_cpus = CPU / 2;
    let mut s = service("agent", ServiceMode::Global, template("img:1"));
    s.spec.task_template.resources.reservations = reservation(CPU, 0);
    sim.services.push(s);
    sim.settle();
    assert_eq!(
        sim.per_node("agent").into_keys().collect::<Vec<_>>(),
        vec!["n1"]
    );
    let p = sim.pending("agent");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].node_id, "n2");
    assert_eq!(
        p[0].status.message,
        "no suitable node (insufficient resources on 1 node)"
    );
    sim.node_mut("n2").description.nano_cpus = 2 * CPU;
    sim.settle();
    assert_eq!(sim.running("agent").len(), 2);
}

fn mesh_orchestrator_test_task(svc: &mesh_api::Service, i: u64) -> mesh_api::Task {
    mesh_api::Task {
        id: format!("t{i}"),
        version: 0,
        created_at: 0,
        updated_at: 0,
        service_id: svc.id.clone(),
        service_name: svc.spec.name.clone(),
        slot: i + 1,
        node_id: String::new(),
        spec: svc.spec.task_template.clone(),
        spec_version: 1,
        desired_state: TaskState::Running,
        status: Default::default(),
        networks: Vec::new(),
        host_ports: Vec::new(),
    }
}
