//! A simulated cluster for the tests: the state, a deterministic ID generator, the plan →
//! apply loop (checking after every applied plan that planning again is empty), and a node
//! side that moves tasks' observed states forward the way an agent does.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};

use mesh_api::constraint::parse_all;
use mesh_api::{
    Availability, ContainerSpec, Health, HealthConfig, Node, NodeDescription, NodeRole, NodeSpec,
    NodeState, NodeStatus, PortConfig, Protocol, PublishMode, ResourceAmounts, RestartCondition,
    RestartPolicy, Service, ServiceMode, ServiceSpec, Task, TaskSpec, TaskState, UpdateConfig,
    UpdateOrder, UpdateState,
};
use mesh_orchestrator::{Input, Plan, TaskChange, apply, plan};

pub const CPU: u64 = 1_000_000_000;
pub const GIB: u64 = 1 << 30;

pub fn node(id: &str) -> Node {
    Node {
        id: id.to_string(),
        version: 1,
        created_at: 0,
        updated_at: 0,
        spec: NodeSpec {
            labels: BTreeMap::new(),
            role: NodeRole::Worker,
            availability: Availability::Active,
        },
        description: NodeDescription {
            hostname: format!("host-{id}"),
            os: "linux".into(),
            architecture: "x86_64".into(),
            engine_version: "test".into(),
            nano_cpus: 4 * CPU,
            memory_bytes: 8 * GIB,
        },
        status: NodeStatus {
            state: NodeState::Ready,
            message: String::new(),
            addr: "10.0.0.1".into(),
        },
        role: NodeRole::Worker,
        raft_id: 0,
        control_addr: String::new(),
        data_port: 51820,
        manager_status: None,
        cert_expiry: 0,
        network_keys: BTreeMap::new(),
    }
}

pub fn template(image: &str) -> TaskSpec {
    TaskSpec {
        container: ContainerSpec {
            image: image.to_string(),
            stop_grace_period_ms: 10_000,
            ..Default::default()
        },
        restart_policy: RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        },
        ..Default::default()
    }
}

pub fn service(id: &str, mode: ServiceMode, tmpl: TaskSpec) -> Service {
    Service {
        id: id.to_string(),
        version: 1,
        created_at: 0,
        updated_at: 0,
        spec: ServiceSpec {
            name: id.to_string(),
            task_template: tmpl,
            mode,
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
            ..Default::default()
        },
        spec_version: 1,
        previous_spec: None,
        previous_spec_version: 0,
        update_status: None,
        ports: Vec::new(),
        virtual_ips: Vec::new(),
    }
}

pub fn replicated(id: &str, replicas: u64, image: &str) -> Service {
    service(id, ServiceMode::Replicated { replicas }, template(image))
}

pub fn host_port(port: u16) -> PortConfig {
    PortConfig {
        protocol: Protocol::Tcp,
        target_port: 80,
        published_port: port,
        publish_mode: PublishMode::Host,
        proxy_protocol: false,
    }
}

pub fn health() -> HealthConfig {
    HealthConfig {
        cmd: "true".into(),
        interval_ms: 1000,
        timeout_ms: 1000,
        retries: 1,
        start_period_ms: 0,
    }
}

pub fn update_config(parallelism: u64, delay_ms: u64, order: UpdateOrder) -> UpdateConfig {
    UpdateConfig {
        parallelism,
        delay_ms,
        order,
        monitor_ms: 5_000,
        ..Default::default()
    }
}

/// The simulated cluster.
pub struct Sim {
    pub nodes: Vec<Node>,
    pub services: Vec<Service>,
    pub tasks: Vec<Task>,
    pub now: u64,
    pub history: usize,
    next_id: u64,
    /// `(node, image)` pairs whose tasks the node rejects.
    pub missing: HashSet<(String, String)>,
    /// Images whose tasks fail right after starting.
    pub failing: HashSet<String>,
    /// Images whose tasks complete right after starting.
    pub completing: HashSet<String>,
    /// Images whose health check fails.
    pub unhealthy: HashSet<String>,
    /// Nodes whose agent does nothing (e.g. a frozen host); down nodes never act.
    pub frozen: HashSet<String>,
    /// Every plan applied, in order.
    pub plans: Vec<Plan>,
    /// Set by a plan: when to plan again.
    pub wakeup: Option<u64>,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    pub fn new() -> Self {
        Self {
            nodes: Vec::new(),
            services: Vec::new(),
            tasks: Vec::new(),
            now: 1_000_000,
            history: 5,
            next_id: 0,
            missing: HashSet::new(),
            failing: HashSet::new(),
            completing: HashSet::new(),
            unhealthy: HashSet::new(),
            frozen: HashSet::new(),
            plans: Vec::new(),
            wakeup: None,
        }
    }

    pub fn with_nodes(ids: &[&str]) -> Self {
        let mut s = Self::new();
        for id in ids {
            s.nodes.push(node(id));
        }
        s
    }

    pub fn node_mut(&mut self, id: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node")
    }

    pub fn svc(&self, id: &str) -> &Service {
        self.services.iter().find(|s| s.id == id).expect("service")
    }

    pub fn svc_mut(&mut self, id: &str) -> &mut Service {
        self.services
            .iter_mut()
            .find(|s| s.id == id)
            .expect("service")
    }

    pub fn task(&self, id: &str) -> &Task {
        self.tasks.iter().find(|t| t.id == id).expect("task")
    }

    pub fn task_mut(&mut self, id: &str) -> &mut Task {
        self.tasks.iter_mut().find(|t| t.id == id).expect("task")
    }

    /// A template change as the manager does it: previous spec kept, version bumped, the
    /// update status cleared so that a new update starts.
    pub fn update_spec(&mut self, id: &str, f: impl FnOnce(&mut ServiceSpec)) {
        let s = self.svc_mut(id);
        let old = s.spec.clone();
        f(&mut s.spec);
        if s.spec.task_template != old.task_template {
            s.previous_spec = Some(old);
            s.previous_spec_version = s.spec_version;
            s.spec_version += 1;
            s.update_status = None;
        }
    }

    pub fn scale(&mut self, id: &str, replicas: u64) {
        self.svc_mut(id).spec.mode = ServiceMode::Replicated { replicas };
    }

    pub fn input(&self) -> Input<'_> {
        let mut i = Input::new(&self.nodes, &self.services, &self.tasks, self.now);
        i.task_history = self.history;
        i
    }

    /// Plans without applying.
    pub fn plan(&mut self) -> Plan {
        let mut n = self.next_id;
        let p = plan(&self.input(), &mut || {
            n += 1;
            format!("task{n:05}")
        });
        self.next_id = n;
        p
    }

    /// Plans, checks the plan, applies it, and checks that planning again is empty.
    pub fn step(&mut self) -> Plan {
        let before = (self.services.clone(), self.tasks.clone());
        let p = self.plan();
        self.check_plan(&p);
        apply(&p, &mut self.services, &mut self.tasks, self.now);
        self.wakeup = p.next_wakeup_ms;
        let again = self.plan();
        assert!(
            again.is_empty(),
            "not idempotent at t={}: after applying\n{}\nthe next plan is\n{}\nstate:\n{}\nstate before:\n{}",
            self.now,
            summary(&p),
            summary(&again),
            self.dump(),
            {
                let mut b = Sim::new();
                b.nodes = self.nodes.clone();
                (b.services, b.tasks) = before;
                b.dump()
            }
        );
        self.plans.push(p.clone());
        p
    }

    /// What every plan must respect.
    pub fn check_plan(&self, p: &Plan) {
        let by_id: HashMap<&str, &Task> = self.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
        let mut seen = HashSet::new();
        for c in &p.tasks {
            let kind = std::mem::discriminant(c);
            assert!(
                seen.insert((c.task_id().to_string(), kind)),
                "two changes of a kind: {c:?}"
            );
            let t = by_id
                .get(c.task_id())
                .unwrap_or_else(|| panic!("unknown task in {c:?}"));
            match c {
                TaskChange::Assign { node_id, .. } => {
                    assert!(t.status.state <= TaskState::Pending, "reassigning {t:?}");
                    assert_eq!(t.desired_state, TaskState::Running);
                    self.check_eligible(node_id, &t.spec);
                    if !t.node_id.is_empty() {
                        assert_eq!(&t.node_id, node_id, "global task moved");
                    }
                }
                TaskChange::Pending { .. } => assert!(t.status.state <= TaskState::Pending),
                TaskChange::Desired { state, .. } => {
                    assert!(
                        *state > t.desired_state,
                        "desired backwards: {c:?} on {t:?}"
                    )
                }
                TaskChange::Observed { state, .. } => {
                    assert!(
                        *state > t.status.state,
                        "observed backwards: {c:?} on {t:?}"
                    )
                }
            }
        }
        for t in &p.create {
            assert!(!by_id.contains_key(t.id.as_str()));
            assert_eq!(t.desired_state, TaskState::Running);
            match t.status.state {
                TaskState::Assigned => self.check_eligible(&t.node_id, &t.spec),
                TaskState::Pending => assert!(!t.status.message.is_empty()),
                other => panic!("created in state {other}"),
            }
        }
        for id in &p.remove {
            assert!(by_id.contains_key(id.as_str()), "removing unknown {id}");
        }
    }

    fn check_eligible(&self, node_id: &str, spec: &TaskSpec) {
        let n = self
            .nodes
            .iter()
            .find(|n| n.id == node_id)
            .expect("assigned to a known node");
        assert_eq!(
            n.status.state,
            NodeState::Ready,
            "assigned to {node_id} not ready"
        );
        assert_eq!(
            n.spec.availability,
            Availability::Active,
            "assigned to {node_id} not active"
        );
        let cons = parse_all(&spec.placement.constraints).expect("constraints parse");
        assert!(
            cons.iter().all(|c| c.matches(n)),
            "assigned to {node_id} against constraints"
        );
    }

    /// The node side: each ready, unfrozen node moves its tasks one step forward.
    /// Whether anything changed.
    pub fn agents(&mut self) -> bool {
        let ready: HashSet<String> = self
            .nodes
            .iter()
            .filter(|n| n.status.state == NodeState::Ready && !self.frozen.contains(&n.id))
            .map(|n| n.id.clone())
            .collect();
        let now = self.now;
        let mut changed = false;
        for t in &mut self.tasks {
            if t.node_id.is_empty() || !ready.contains(&t.node_id) {
                continue;
            }
            let st = t.status.state;
            if st < TaskState::Assigned || st.is_terminal() {
                continue;
            }
            let image = t.spec.container.image.clone();
            let before = (st, t.status.health);
            if t.desired_state > TaskState::Running {
                t.status.state = TaskState::Shutdown;
                t.status.message = "shutdown".into();
            } else if st < TaskState::Running {
                if self.missing.contains(&(t.node_id.clone(), image.clone())) {
                    t.status.state = TaskState::Rejected;
                    t.status.err = format!("image {image} is not present on node {}", t.node_id);
                } else {
                    t.status.state = TaskState::Running;
                    t.status.health = if t.spec.container.healthcheck.is_some() {
                        Health::Starting
                    } else {
                        Health::None
                    };
                }
            } else if t.status.health == Health::Starting {
                t.status.health = if self.unhealthy.contains(&image) {
                    Health::Unhealthy
                } else {
                    Health::Healthy
                };
            } else if t.status.health == Health::Unhealthy {
                // Like docker, the agent kills a task whose health check fails.
                t.status.state = TaskState::Failed;
                t.status.err = "unhealthy container".into();
            } else if self.failing.contains(&image) {
                t.status.state = TaskState::Failed;
                t.status.exit_code = Some(1);
            } else if self.completing.contains(&image) {
                t.status.state = TaskState::Complete;
                t.status.exit_code = Some(0);
            }
            if (t.status.state, t.status.health) != before {
                t.status.timestamp = now;
                t.version += 1;
                changed = true;
            }
        }
        changed
    }

    /// Plans and runs the agents until neither changes anything (time stands still).
    pub fn settle(&mut self) {
        for _ in 0..200 {
            let p = self.step();
            let moved = self.agents();
            if p.is_empty() && !moved {
                return;
            }
        }
        panic!("no convergence at t={}", self.now);
    }

    /// Settles, then jumps to each wake-up time and settles again, until nothing is due
    /// or `limit_ms` has passed.
    pub fn run_for(&mut self, limit_ms: u64) {
        let end = self.now + limit_ms;
        self.settle();
        while let Some(at) = self.wakeup {
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.settle();
        }
        self.now = self.now.max(end);
        self.settle();
    }

    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    pub fn of(&self, service: &str) -> impl Iterator<Item = &Task> {
        let service = service.to_string();
        self.tasks.iter().filter(move |t| t.service_id == service)
    }

    /// Desired running, observed at most running.
    pub fn active(&self, service: &str) -> Vec<&Task> {
        self.of(service)
            .filter(|t| {
                t.desired_state == TaskState::Running && t.status.state <= TaskState::Running
            })
            .collect()
    }

    pub fn running(&self, service: &str) -> Vec<&Task> {
        self.of(service)
            .filter(|t| {
                t.desired_state == TaskState::Running && t.status.state == TaskState::Running
            })
            .collect()
    }

    pub fn pending(&self, service: &str) -> Vec<&Task> {
        self.of(service)
            .filter(|t| {
                t.desired_state == TaskState::Running && t.status.state == TaskState::Pending
            })
            .collect()
    }

    /// Running tasks of the service per node.
    pub fn per_node(&self, service: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in self.running(service) {
            *m.entry(t.node_id.clone()).or_default() += 1;
        }
        m
    }

    pub fn images(&self, service: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in self.running(service) {
            *m.entry(t.spec.container.image.clone()).or_default() += 1;
        }
        m
    }

    pub fn status(&self, service: &str) -> Option<UpdateState> {
        self.svc(service).update_status.as_ref().map(|s| s.state)
    }

    /// At most one active task per slot.
    pub fn assert_one_per_slot(&self, service: &str) {
        let mut m: BTreeMap<u64, usize> = BTreeMap::new();
        for t in self.active(service) {
            *m.entry(t.slot).or_default() += 1;
        }
        for (slot, n) in m {
            assert!(n <= 1, "slot {slot} of {service} has {n} active tasks");
        }
    }
}

/// One line per element of a plan.
pub fn summary(p: &Plan) -> String {
    let mut out = String::new();
    for t in &p.create {
        out += &format!(
            "  create {} {}/{} slot {} node {:?} {} {:?} image {}\n",
            t.id,
            t.service_id,
            t.spec_version,
            t.slot,
            t.node_id,
            t.status.state,
            t.status.message,
            t.spec.container.image
        );
    }
    for c in &p.tasks {
        out += &format!("  {c:?}\n");
    }
    for r in &p.remove {
        out += &format!("  remove {r}\n");
    }
    for s in &p.services {
        out += &format!("  {s:?}\n");
    }
    out += &format!("  wakeup {:?}\n", p.next_wakeup_ms);
    out
}

impl Sim {
    /// The state, one line per node, service and task.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out += &format!(
                "  node {} {:?} {:?} labels {:?}\n",
                n.id, n.status.state, n.spec.availability, n.spec.labels
            );
        }
        for s in &self.services {
            out += &format!(
                "  service {} {:?} v{} image {} status {:?} cfg {:?}\n",
                s.id,
                s.spec.mode,
                s.spec_version,
                s.spec.task_template.container.image,
                s.update_status,
                s.spec.update_config
            );
        }
        for t in &self.tasks {
            out += &format!(
                "  task {} {} slot {} node {:?} created {} desired {} observed {} at {} {:?} image {} health {:?}\n",
                t.id,
                t.service_id,
                t.slot,
                t.node_id,
                t.created_at,
                t.desired_state,
                t.status.state,
                t.status.timestamp,
                t.status.message,
                t.spec.container.image,
                t.status.health
            );
        }
        out
    }
}

pub fn reservation(cpus: u64, mem: u64) -> ResourceAmounts {
    ResourceAmounts {
        nano_cpus: cpus,
        memory_bytes: mem,
    }
}
