//! Services and tasks in the replicated state: the commands' apply logic (pure).
//!
//! Everything the cluster must agree on is decided here, at apply time: published ports and
//! VIPs are allocated, task addresses are given when a task is assigned and released when it
//! ends, and a task's observed state only moves forward.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use mesh_api::service::{PUBLISHED_PORT_MAX, PUBLISHED_PORT_MIN};
use mesh_api::{
    Endpoint, EndpointMode, EndpointOwner, PortConfig, PublishMode, Service, ServiceSpec,
    ServiceUpdate, Task, TaskAttachment, TaskState, TaskStatus, TaskStatusUpdate, UpdateState,
    UpdateStatus, VirtualIp,
};

use crate::ipam;
use crate::state::{Applied, ClusterState, Output, RejectKind, Rejected};

pub use mesh_orchestrator::{Plan as TaskPlan, ServiceChange, TaskChange};

fn reject(kind: RejectKind, message: impl Into<String>) -> Output {
    Err(Rejected {
        kind,
        message: message.into(),
    })
}

fn applied(object: Option<String>) -> Output {
    Ok(Applied {
        object,
        ..Default::default()
    })
}

/// A task whose addresses could not be given waits, with the reason. A replicated task may
/// go to another node; a global task stays bound to its node.
fn back_to_pending(t: &mut Task, reason: String, now: u64) {
    if t.slot > 0 || t.service_id.is_empty() {
        t.node_id.clear();
    }
    t.status.state = TaskState::Pending;
    t.status.message = reason;
    t.status.timestamp = now;
}

/// ID of the endpoint of task `task_id` on its `i`-th network (deterministic: every manager
/// derives the same one).
pub fn task_endpoint_id(task_id: &str, i: usize) -> String {
    format!("{i}-{task_id}")
}

impl ClusterState {
    /// A service by ID, name or unambiguous ID prefix.
    pub fn resolve_service(&self, reference: &str) -> Option<&Service> {
        crate::state::resolve_in(&self.services, reference, |s| &s.spec.name)
    }

    /// Addresses of network `network_id` in use: endpoints and service VIPs.
    pub fn used_ips(&self, network_id: &str) -> BTreeSet<Ipv4Addr> {
        let mut used: BTreeSet<Ipv4Addr> = self
            .endpoints
            .values()
            .filter(|e| e.network_id == network_id)
            .map(|e| e.ip)
            .collect();
        for s in self.services.values() {
            used.extend(
                s.virtual_ips
                    .iter()
                    .filter(|v| v.network_id == network_id)
                    .map(|v| v.addr),
            );
        }
        used
    }

    /// The signature of the tasks assigned to `node_id`: it changes whenever one of them
    /// changes, appears or goes away. Nodes long-poll on it.
    pub fn assignments_version(&self, node_id: &str) -> (u64, u64) {
        let mut count = 0u64;
        let mut max = 0u64;
        for t in self.tasks.values().filter(|t| t.node_id == node_id) {
            count += 1;
            max = max.max(t.version);
        }
        (count, max)
    }

    /// Resolves network references of a spec to IDs; an unknown network is the error.
    fn resolve_spec_networks(&self, spec: &mut ServiceSpec) -> Result<(), Rejected> {
        for n in &mut spec.task_template.networks {
            match self.resolve_network(&n.target) {
                Some(net) => n.target = net.id.clone(),
                None => {
                    return Err(Rejected {
                        kind: RejectKind::NotFound,
                        message: format!(
                            "invalid --network: network {} not found; create it with `swarm network create -d overlay {}`",
                            n.target, n.target
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Published ports with numbers: given ones checked against other services, missing
    /// ones allocated from 30000–32767 (keeping what `keep` had for the same target).
    fn allocate_ports(
        &self,
        service_id: &str,
        spec: &ServiceSpec,
        keep: &[PortConfig],
    ) -> Result<Vec<PortConfig>, Rejected> {
        let taken = |proto, port: u16| {
            self.services.values().find(|s| {
                s.id != service_id
                    && s.ports.iter().any(|p| {
                        p.publish_mode == PublishMode::Ingress
                            && p.protocol == proto
                            && p.published_port == port
                    })
            })
        };
        let mut out: Vec<PortConfig> = Vec::new();
        for p in &spec.endpoint_spec.ports {
            let mut p = *p;
            if p.publish_mode == PublishMode::Ingress {
                if p.published_port == 0 {
                    if let Some(k) = keep.iter().find(|k| {
                        k.target_port == p.target_port
                            && k.protocol == p.protocol
                            && k.publish_mode == PublishMode::Ingress
                    }) {
                        p.published_port = k.published_port;
                    } else {
                        let free = (PUBLISHED_PORT_MIN..=PUBLISHED_PORT_MAX).find(|port| {
                            taken(p.protocol, *port).is_none()
                                && !out
                                    .iter()
                                    .any(|o| o.protocol == p.protocol && o.published_port == *port)
                        });
                        match free {
                            Some(port) => p.published_port = port,
                            None => {
                                return Err(Rejected {
                                    kind: RejectKind::FailedPrecondition,
                                    message: format!(
                                        "no free port left in {PUBLISHED_PORT_MIN}-{PUBLISHED_PORT_MAX}; give one with -p PUBLISHED:{}",
                                        p.target_port
                                    ),
                                });
                            }
                        }
                    }
                } else if let Some(other) = taken(p.protocol, p.published_port) {
                    return Err(Rejected {
                        kind: RejectKind::Conflict,
                        message: format!(
                            "invalid --publish: port {}/{} is already published by service {}; choose another published port",
                            p.published_port, p.protocol, other.spec.name
                        ),
                    });
                }
            }
            out.push(p);
        }
        Ok(out)
    }

    /// VIPs for the spec's networks (endpoint mode `vip`), keeping existing ones.
    fn allocate_vips(
        &self,
        spec: &ServiceSpec,
        keep: &[VirtualIp],
    ) -> Result<Vec<VirtualIp>, Rejected> {
        if spec.endpoint_spec.mode == EndpointMode::Dnsrr {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for n in &spec.task_template.networks {
            if let Some(v) = keep.iter().find(|v| v.network_id == n.target) {
                out.push(v.clone());
                continue;
            }
            let Some(net) = self.networks.get(&n.target) else {
                continue;
            };
            let used = self.used_ips(&net.id);
            match ipam::allocate_ip(&net.subnet, net.gateway, &used) {
                Some(addr) => out.push(VirtualIp {
                    network_id: net.id.clone(),
                    addr,
                }),
                None => {
                    return Err(Rejected {
                        kind: RejectKind::FailedPrecondition,
                        message: format!(
                            "network {} has no free address left in {} for the service's VIP",
                            net.spec.name, net.subnet
                        ),
                    });
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn apply_create_service(
        &mut self,
        index: u64,
        id: String,
        mut spec: ServiceSpec,
        now: u64,
    ) -> Output {
        if let Err(e) = spec.validate() {
            return reject(RejectKind::FailedPrecondition, e.to_string());
        }
        if let Some(other) = self.services.values().find(|s| s.spec.name == spec.name) {
            return reject(
                RejectKind::Conflict,
                format!(
                    "service {} already exists ({}); choose another name or `swarm service update` it",
                    spec.name, other.id
                ),
            );
        }
        if self.tasks.values().any(|t| {
            t.service_id.is_empty()
                && t.service_name == spec.name
                && t.desired_state == TaskState::Running
        }) {
            return reject(
                RejectKind::Conflict,
                format!(
                    "a container named {} exists; choose another service name",
                    spec.name
                ),
            );
        }
        if self.services.contains_key(&id) {
            return reject(RejectKind::Conflict, format!("service {id} already exists"));
        }
        self.resolve_spec_networks(&mut spec)?;
        let ports = self.allocate_ports(&id, &spec, &[])?;
        let vips = self.allocate_vips(&spec, &[])?;
        if ports.iter().any(|p| p.publish_mode == PublishMode::Ingress) {
            self.ensure_ingress_network(index, now)?;
        }
        self.services.insert(
            id.clone(),
            Service {
                id: id.clone(),
                version: index,
                created_at: now,
                updated_at: now,
                spec,
                spec_version: 1,
                previous_spec: None,
                previous_spec_version: 0,
                update_status: None,
                ports,
                virtual_ips: vips,
            },
        );
        if !self.services[&id].virtual_ips.is_empty() {
            self.network_version += 1;
        }
        applied(Some(id))
    }

    pub(crate) fn apply_update_service(
        &mut self,
        index: u64,
        id: &str,
        update: &ServiceUpdate,
        expect_version: Option<u64>,
        now: u64,
    ) -> Output {
        let Some(svc) = self.services.get(id) else {
            return reject(RejectKind::NotFound, format!("no such service: {id}"));
        };
        if let Some(v) = expect_version
            && v != svc.version
        {
            return reject(
                RejectKind::Conflict,
                format!(
                    "service {} changed while this update was prepared (version {} now, {v} expected); retry the command",
                    svc.spec.name, svc.version
                ),
            );
        }
        let (mut spec, rollback) = if update.rollback {
            match &svc.previous_spec {
                Some(prev) => (prev.clone(), true),
                None => {
                    return reject(
                        RejectKind::FailedPrecondition,
                        format!(
                            "service {} has no previous spec to roll back to",
                            svc.spec.name
                        ),
                    );
                }
            }
        } else {
            match update.apply(&svc.spec) {
                Ok(s) => (s, false),
                Err(e) => return reject(RejectKind::FailedPrecondition, e.to_string()),
            }
        };
        if spec.name != svc.spec.name {
            return reject(
                RejectKind::FailedPrecondition,
                "invalid --name: a service cannot be renamed; create a new service instead",
            );
        }
        if std::mem::discriminant(&spec.mode) != std::mem::discriminant(&svc.spec.mode) {
            return reject(
                RejectKind::FailedPrecondition,
                "invalid --mode: a service cannot change between replicated and global; create a new service instead",
            );
        }
        self.resolve_spec_networks(&mut spec)?;
        let ports = self.allocate_ports(id, &spec, &svc.ports)?;
        let vips = self.allocate_vips(&spec, &svc.virtual_ips)?;
        let template_changed = spec.task_template != svc.spec.task_template;
        let mesh_changed = vips != svc.virtual_ips || ports != svc.ports;
        if ports.iter().any(|p| p.publish_mode == PublishMode::Ingress) {
            self.ensure_ingress_network(index, now)?;
        }
        let Some(svc) = self.services.get_mut(id) else {
            return reject(RejectKind::NotFound, format!("no such service: {id}"));
        };
        if rollback {
            // The previous spec exists (checked above); its resolved copy was just validated.
            mesh_orchestrator::roll_back(svc, "manually requested rollback".into(), now);
        } else if template_changed {
            let current = std::mem::replace(&mut svc.spec, spec);
            svc.previous_spec = Some(current);
            svc.previous_spec_version = svc.spec_version;
            svc.spec_version += 1;
            svc.update_status = Some(UpdateStatus {
                state: UpdateState::Updating,
                started_at: now,
                completed_at: 0,
                message: "update in progress".into(),
            });
        } else {
            // Replicas, update settings, labels, ports: no task is replaced.
            svc.spec = spec;
        }
        svc.ports = ports;
        svc.virtual_ips = vips;
        svc.version = index;
        svc.updated_at = now;
        if mesh_changed {
            self.network_version += 1;
        }
        applied(Some(id.to_string()))
    }

    pub(crate) fn apply_remove_service(&mut self, index: u64, id: &str, now: u64) -> Output {
        let Some(svc) = self.services.remove(id) else {
            return reject(RejectKind::NotFound, format!("no such service: {id}"));
        };
        let ids: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.service_id == svc.id)
            .map(|t| t.id.clone())
            .collect();
        for tid in ids {
            self.set_desired(index, &tid, TaskState::Remove, now);
        }
        if !svc.virtual_ips.is_empty() || !svc.ports.is_empty() {
            self.network_version += 1;
        }
        applied(Some(svc.id))
    }

    /// A standalone container (`swarm run`): a task with no service, pinned to its node.
    pub(crate) fn apply_create_task(&mut self, index: u64, mut task: Task, now: u64) -> Output {
        if self.tasks.contains_key(&task.id) {
            return reject(
                RejectKind::Conflict,
                format!("task {} already exists", task.id),
            );
        }
        if !self.nodes.contains_key(&task.node_id) {
            return reject(
                RejectKind::NotFound,
                format!("no such node: {}", task.node_id),
            );
        }
        if let Err(e) = task.spec.container.validate() {
            return reject(RejectKind::FailedPrecondition, e.to_string());
        }
        if task.service_id.is_empty() {
            if let Some(other) = self.tasks.values().find(|t| {
                t.service_id.is_empty()
                    && t.service_name == task.service_name
                    && !(t.desired_state > TaskState::Running && t.status.state.is_terminal())
            }) {
                return reject(
                    RejectKind::Conflict,
                    format!(
                        "the container name {} is already in use by container {}; remove it (`swarm container rm {}`) or choose another --name",
                        task.service_name, other.id, task.service_name
                    ),
                );
            }
            if self
                .services
                .values()
                .any(|s| s.spec.name == task.service_name)
            {
                return reject(
                    RejectKind::Conflict,
                    format!(
                        "the name {} is used by a service; choose another --name",
                        task.service_name
                    ),
                );
            }
        }
        for n in &mut task.spec.networks {
            let Some(net) = self.resolve_network(&n.target) else {
                return reject(
                    RejectKind::NotFound,
                    format!(
                        "invalid --network: network {} not found; create it with `swarm network create -d overlay --attachable {}`",
                        n.target, n.target
                    ),
                );
            };
            if task.service_id.is_empty() && !net.spec.attachable {
                return reject(
                    RejectKind::FailedPrecondition,
                    format!(
                        "network {} is not attachable; standalone containers need `swarm network create --attachable`",
                        net.spec.name
                    ),
                );
            }
            n.target = net.id.clone();
        }
        task.version = index;
        task.created_at = now;
        task.updated_at = now;
        task.status.state = TaskState::Assigned;
        task.status.timestamp = now;
        task.status.message = "assigned".into();
        if let Err(msg) = self.attach_task_networks(&mut task) {
            return reject(RejectKind::FailedPrecondition, msg);
        }
        let id = task.id.clone();
        self.tasks.insert(id.clone(), task);
        applied(Some(id))
    }

    /// Allocates the addresses of an assigned task on each of its networks, and on the
    /// ingress network when its service publishes ports in ingress mode (the last interface).
    fn attach_task_networks(&mut self, task: &mut Task) -> Result<(), String> {
        let mut targets: Vec<(String, Vec<String>)> = Vec::new();
        for n in &task.spec.networks {
            let Some(net) = self.resolve_network(&n.target) else {
                return Err(format!("network {} no longer exists", n.target));
            };
            targets.push((net.id.clone(), n.aliases.clone()));
        }
        if let Some(net) = self
            .services
            .get(&task.service_id)
            .filter(|s| crate::mesh::publishes_ingress(s))
            .and_then(|_| self.ingress_network())
        {
            targets.push((net.id.clone(), Vec::new()));
        }
        let mut made: Vec<Endpoint> = Vec::new();
        let mut attachments = Vec::new();
        for (i, (network_id, aliases)) in targets.into_iter().enumerate() {
            let Some(net) = self.networks.get(&network_id) else {
                return Err(format!("network {network_id} no longer exists"));
            };
            let mut used = self.used_ips(&net.id);
            used.extend(made.iter().filter(|e| e.network_id == net.id).map(|e| e.ip));
            let Some(ip) = ipam::allocate_ip(&net.subnet, net.gateway, &used) else {
                return Err(format!(
                    "network {} has no free address left in {}",
                    net.spec.name, net.subnet
                ));
            };
            let ifname = format!("eth{i}");
            let id = task_endpoint_id(&task.id, i);
            made.push(Endpoint {
                id: id.clone(),
                network_id: net.id.clone(),
                node_id: task.node_id.clone(),
                ip,
                owner: EndpointOwner::Task {
                    task_id: task.id.clone(),
                    ifname: ifname.clone(),
                },
                created_at: task.updated_at,
            });
            attachments.push(TaskAttachment {
                network_id: net.id.clone(),
                endpoint_id: id,
                ip,
                ifname,
                aliases,
            });
        }
        if !made.is_empty() {
            self.network_version += 1;
        }
        let networks: BTreeSet<String> = made.iter().map(|e| e.network_id.clone()).collect();
        for e in made {
            self.endpoints.insert(e.id.clone(), e);
        }
        for net in networks {
            // The source of this node's VIP connections on the network.
            if let Err(e) = self.ensure_lb_endpoint(&net, &task.node_id, task.updated_at) {
                tracing::warn!(task = %task.id, error = %e, "no load-balancer address");
            }
        }
        task.networks = attachments;
        Ok(())
    }

    /// Returns a task's addresses to their pools.
    fn release_task_networks(&mut self, task_id: &str) {
        let before = self.endpoints.len();
        self.endpoints.retain(
            |_, e| !matches!(&e.owner, EndpointOwner::Task { task_id: t, .. } if t == task_id),
        );
        if self.endpoints.len() != before {
            self.network_version += 1;
            self.release_idle_lb_endpoints();
        }
    }

    pub(crate) fn set_desired(&mut self, index: u64, task_id: &str, state: TaskState, now: u64) {
        let Some(t) = self.tasks.get(task_id) else {
            return;
        };
        if state <= t.desired_state {
            return;
        }
        let was_serving = t.is_serving();
        let in_mesh = self.task_in_mesh(t);
        let Some(t) = self.tasks.get_mut(task_id) else {
            return;
        };
        let was_serving = was_serving && in_mesh;
        t.desired_state = state;
        t.version = index;
        t.updated_at = now;
        if was_serving {
            // Out of DNS answers (and load balancing) before it stops.
            self.network_version += 1;
        }
        let Some(t) = self.tasks.get_mut(task_id) else {
            return;
        };
        // A task no node ever got ends here.
        if t.node_id.is_empty() && state > TaskState::Running && !t.status.state.is_terminal() {
            t.status = TaskStatus {
                state: TaskState::Shutdown,
                timestamp: now,
                message: "shut down before it was scheduled".into(),
                ..Default::default()
            };
        }
        if t.status.state.is_terminal() && state == TaskState::Remove {
            self.tasks.remove(task_id);
            self.release_task_networks(task_id);
        }
    }

    fn set_observed(&mut self, index: u64, task_id: &str, status: TaskStatus) {
        let Some(t) = self.tasks.get(task_id) else {
            return;
        };
        if status.state < t.status.state || status == t.status {
            return;
        }
        let terminal = status.state.is_terminal();
        let was_serving = t.is_serving();
        let in_mesh = self.task_in_mesh(t);
        let Some(t) = self.tasks.get_mut(task_id) else {
            return;
        };
        t.status = status;
        t.version = index;
        t.updated_at = t.status.timestamp;
        if was_serving != t.is_serving() && in_mesh {
            // Started, turned healthy or unhealthy, or ended: DNS answers change.
            self.network_version += 1;
        }
        let Some(t) = self.tasks.get(task_id) else {
            return;
        };
        let remove = terminal && t.desired_state == TaskState::Remove;
        if terminal {
            self.release_task_networks(task_id);
        }
        if remove {
            self.tasks.remove(task_id);
        }
    }

    pub(crate) fn apply_task_status(
        &mut self,
        index: u64,
        node_id: &str,
        updates: Vec<TaskStatusUpdate>,
    ) -> Output {
        let mut changed = 0;
        for u in updates {
            let Some(t) = self.tasks.get(&u.task_id) else {
                continue;
            };
            if t.node_id != node_id {
                continue;
            }
            let before = t.version;
            self.set_observed(index, &u.task_id, u.status);
            if self
                .tasks
                .get(&u.task_id)
                .is_none_or(|t| t.version != before)
            {
                changed += 1;
            }
        }
        Ok(Applied {
            object: Some(changed.to_string()),
            ..Default::default()
        })
    }

    pub(crate) fn apply_plan(&mut self, index: u64, plan: TaskPlan, now: u64) -> Output {
        for mut t in plan.create {
            if self.tasks.contains_key(&t.id) {
                continue;
            }
            if !t.service_id.is_empty() && !self.services.contains_key(&t.service_id) {
                continue;
            }
            t.version = index;
            t.created_at = now;
            t.updated_at = now;
            // A global task waiting for room on its node has its node but is still pending:
            // its addresses come with its assignment.
            if !t.node_id.is_empty() && !self.nodes.contains_key(&t.node_id) {
                continue;
            }
            if t.status.state == TaskState::Assigned
                && let Err(msg) = self.attach_task_networks(&mut t)
            {
                back_to_pending(&mut t, msg, now);
            }
            self.tasks.insert(t.id.clone(), t);
        }
        for c in plan.tasks {
            match c {
                TaskChange::Assign { task_id, node_id } => {
                    if !self.nodes.contains_key(&node_id) {
                        continue;
                    }
                    let Some(t) = self.tasks.get(&task_id) else {
                        continue;
                    };
                    if !(t.node_id.is_empty() || t.node_id == node_id)
                        || t.desired_state != TaskState::Running
                        || t.status.state > TaskState::Pending
                    {
                        continue;
                    }
                    let mut t = t.clone();
                    t.node_id = node_id;
                    t.version = index;
                    t.updated_at = now;
                    match self.attach_task_networks(&mut t) {
                        Ok(()) => {
                            t.status = TaskStatus {
                                state: TaskState::Assigned,
                                timestamp: now,
                                message: "scheduler assigned task to node".into(),
                                ..Default::default()
                            };
                        }
                        Err(msg) => back_to_pending(&mut t, msg, now),
                    }
                    self.tasks.insert(task_id, t);
                }
                TaskChange::Pending { task_id, reason } => {
                    if let Some(t) = self.tasks.get_mut(&task_id)
                        && t.status.state <= TaskState::Pending
                        && (t.status.state != TaskState::Pending || t.status.message != reason)
                    {
                        t.status.state = TaskState::Pending;
                        t.status.message = reason;
                        t.status.timestamp = now;
                        t.version = index;
                        t.updated_at = now;
                    }
                }
                TaskChange::Desired { task_id, state } => {
                    self.set_desired(index, &task_id, state, now);
                }
                TaskChange::Observed {
                    task_id,
                    state,
                    message,
                } => {
                    let Some(t) = self.tasks.get(&task_id) else {
                        continue;
                    };
                    let status = TaskStatus {
                        state,
                        timestamp: now,
                        message,
                        ..t.status.clone()
                    };
                    self.set_observed(index, &task_id, status);
                }
            }
        }
        for id in plan.remove {
            if self.tasks.remove(&id).is_some() {
                self.release_task_networks(&id);
            }
        }
        for c in plan.services {
            match c {
                ServiceChange::UpdateStatus { service_id, status } => {
                    if let Some(s) = self.services.get_mut(&service_id)
                        && s.update_status != status
                    {
                        s.update_status = status;
                        s.version = index;
                        s.updated_at = now;
                    }
                }
                ServiceChange::Rollback {
                    service_id,
                    message,
                } => {
                    let Some(s) = self.services.get_mut(&service_id) else {
                        continue;
                    };
                    if !mesh_orchestrator::roll_back(s, message, now) {
                        continue;
                    }
                    s.version = index;
                    s.updated_at = now;
                }
            }
        }
        applied(None)
    }

    /// When a node is removed: its tasks can no longer report.
    pub(crate) fn orphan_tasks_of(&mut self, index: u64, node_id: &str, now: u64) {
        let ids: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.node_id == node_id && !t.status.state.is_terminal())
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            self.set_desired(index, &id, TaskState::Shutdown, now);
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            let status = TaskStatus {
                state: TaskState::Orphaned,
                timestamp: now,
                message: "its node was removed from the cluster".into(),
                ..t.status.clone()
            };
            self.set_observed(index, &id, status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use crate::state::tests::{cluster, node};
    use mesh_api::service::parse_port;
    use mesh_api::{ContainerSpec, NetworkAttachmentConfig, NetworkSpec, NodeRole, TaskSpec};

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(
            1,
            Command::CreateCluster {
                cluster: Box::new(cluster()),
                node: Box::new(node("n1", "host1", NodeRole::Manager)),
            },
        )
        .unwrap();
        s.apply(
            2,
            Command::CreateNode {
                node: Box::new(node("n2", "host2", NodeRole::Worker)),
            },
        )
        .unwrap();
        s.apply(
            3,
            Command::CreateNetwork {
                id: "net1".into(),
                spec: NetworkSpec {
                    name: "appnet".into(),
                    driver: "overlay".into(),
                    subnet: Some("10.30.0.0/24".parse().unwrap()),
                    ..Default::default()
                },
                now: 3,
            },
        )
        .unwrap();
        s
    }

    fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            task_template: TaskSpec {
                container: ContainerSpec {
                    image: "meshd-test".into(),
                    stop_grace_period_ms: 1000,
                    ..Default::default()
                },
                networks: vec![NetworkAttachmentConfig {
                    target: "appnet".into(),
                    aliases: vec![],
                }],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn task(id: &str, service: &str, slot: u64) -> Task {
        Task {
            id: id.into(),
            version: 0,
            created_at: 0,
            updated_at: 0,
            service_id: service.into(),
            service_name: "web".into(),
            slot,
            node_id: String::new(),
            spec: spec("web").task_template,
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus::default(),
            networks: vec![],
            host_ports: vec![],
        }
    }

    fn create(s: &mut ClusterState, index: u64, id: &str, sp: ServiceSpec) -> Output {
        s.apply(
            index,
            Command::CreateService {
                id: id.into(),
                spec: Box::new(sp),
                now: index,
            },
        )
    }

    #[test]
    fn create_resolves_networks_allocates_vip_and_ports() {
        let mut s = state();
        let mut sp = spec("web");
        sp.endpoint_spec.ports = vec![parse_port("8080:80").unwrap(), parse_port("81").unwrap()];
        create(&mut s, 4, "s1", sp).unwrap();
        let svc = &s.services["s1"];
        assert_eq!(svc.spec.task_template.networks[0].target, "net1");
        assert_eq!(svc.virtual_ips.len(), 1);
        assert_eq!(
            svc.virtual_ips[0].addr,
            "10.30.0.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(svc.ports[0].published_port, 8080);
        assert_eq!(svc.ports[1].published_port, PUBLISHED_PORT_MIN);

        // The same published port, or the same name, is refused and changes nothing.
        let before = s.clone();
        let mut other = spec("api");
        other.endpoint_spec.ports = vec![parse_port("8080:90").unwrap()];
        let e = create(&mut s, 5, "s2", other).unwrap_err();
        assert_eq!(e.kind, RejectKind::Conflict);
        assert!(
            e.message.contains("already published by service web"),
            "{}",
            e.message
        );
        assert_eq!(
            create(&mut s, 5, "s2", spec("web")).unwrap_err().kind,
            RejectKind::Conflict
        );
        let mut unknown = spec("db");
        unknown.task_template.networks[0].target = "nope".into();
        let e = create(&mut s, 5, "s3", unknown).unwrap_err();
        assert!(
            e.message.contains("network nope not found"),
            "{}",
            e.message
        );
        assert_eq!(s, before);

        // A network used by a service cannot go.
        let e = s
            .apply(6, Command::RemoveNetwork { id: "net1".into() })
            .unwrap_err();
        assert!(e.message.contains("service(s) web"), "{}", e.message);
    }

    #[test]
    fn assignment_allocates_addresses_and_the_end_releases_them() {
        let mut s = state();
        create(&mut s, 4, "s1", spec("web")).unwrap();
        let plan = TaskPlan {
            create: vec![task("t1", "s1", 1)],
            ..Default::default()
        };
        s.apply(
            5,
            Command::ApplyPlan {
                plan: Box::new(plan),
                now: 5,
            },
        )
        .unwrap();
        assert!(s.endpoints.is_empty());
        let v0 = s.network_version;
        let plan = TaskPlan {
            tasks: vec![TaskChange::Assign {
                task_id: "t1".into(),
                node_id: "n2".into(),
            }],
            ..Default::default()
        };
        s.apply(
            6,
            Command::ApplyPlan {
                plan: Box::new(plan),
                now: 6,
            },
        )
        .unwrap();
        let t = &s.tasks["t1"];
        assert_eq!(t.status.state, TaskState::Assigned);
        assert_eq!(t.networks.len(), 1);
        // .1 gateway, .2 the VIP, .3 the task.
        assert_eq!(t.networks[0].ip, "10.30.0.3".parse::<Ipv4Addr>().unwrap());
        assert!(s.network_version > v0);
        // The task's address and the node's load-balancer address on the network.
        assert_eq!(s.endpoints.len(), 2);
        let lb = &s.endpoints[&crate::mesh::lb_endpoint_id("net1", "n2")];
        assert_eq!(lb.owner, EndpointOwner::LoadBalancer);
        assert_eq!(lb.ip, "10.30.0.4".parse::<Ipv4Addr>().unwrap());
        assert_eq!(s.assignments_version("n2"), (1, 6));

        // Only the task's node reports on it; states only move forward.
        let report = |state: TaskState| TaskStatusUpdate {
            task_id: "t1".into(),
            status: TaskStatus {
                state,
                timestamp: 7,
                ..Default::default()
            },
        };
        s.apply(
            7,
            Command::UpdateTaskStatus {
                node_id: "n1".into(),
                updates: vec![report(TaskState::Running)],
            },
        )
        .unwrap();
        assert_eq!(s.tasks["t1"].status.state, TaskState::Assigned);
        s.apply(
            8,
            Command::UpdateTaskStatus {
                node_id: "n2".into(),
                updates: vec![report(TaskState::Running)],
            },
        )
        .unwrap();
        assert_eq!(s.tasks["t1"].status.state, TaskState::Running);
        s.apply(
            9,
            Command::UpdateTaskStatus {
                node_id: "n2".into(),
                updates: vec![report(TaskState::Preparing)],
            },
        )
        .unwrap();
        assert_eq!(s.tasks["t1"].status.state, TaskState::Running);
        s.apply(
            10,
            Command::UpdateTaskStatus {
                node_id: "n2".into(),
                updates: vec![report(TaskState::Failed)],
            },
        )
        .unwrap();
        assert_eq!(s.tasks["t1"].status.state, TaskState::Failed);
        assert!(
            s.endpoints.is_empty(),
            "a finished task's address is released"
        );
    }

    #[test]
    fn removing_a_service_removes_finished_tasks_and_shuts_down_the_rest() {
        let mut s = state();
        create(&mut s, 4, "s1", spec("web")).unwrap();
        let mut unassigned = task("t1", "s1", 1);
        unassigned.status.state = TaskState::Pending;
        let mut placed = task("t2", "s1", 2);
        placed.node_id = "n1".into();
        placed.status.state = TaskState::Assigned;
        let plan = TaskPlan {
            create: vec![unassigned, placed],
            ..Default::default()
        };
        s.apply(
            5,
            Command::ApplyPlan {
                plan: Box::new(plan),
                now: 5,
            },
        )
        .unwrap();
        assert_eq!(
            s.endpoints.len(),
            2,
            "the task's address and n1's load balancer"
        );
        s.apply(
            6,
            Command::RemoveService {
                id: "s1".into(),
                now: 6,
            },
        )
        .unwrap();
        assert!(!s.tasks.contains_key("t1"), "never scheduled: gone at once");
        assert_eq!(s.tasks["t2"].desired_state, TaskState::Remove);
        s.apply(
            7,
            Command::UpdateTaskStatus {
                node_id: "n1".into(),
                updates: vec![TaskStatusUpdate {
                    task_id: "t2".into(),
                    status: TaskStatus {
                        state: TaskState::Shutdown,
                        timestamp: 7,
                        ..Default::default()
                    },
                }],
            },
        )
        .unwrap();
        assert!(s.tasks.is_empty());
        assert!(s.endpoints.is_empty());
    }

    #[test]
    fn updates_keep_previous_spec_and_rollback_swaps() {
        let mut s = state();
        create(&mut s, 4, "s1", spec("web")).unwrap();
        let scale = ServiceUpdate {
            replicas: Some(4),
            ..Default::default()
        };
        s.apply(
            5,
            Command::UpdateService {
                id: "s1".into(),
                update: Box::new(scale),
                expect_version: None,
                now: 5,
            },
        )
        .unwrap();
        assert_eq!(s.services["s1"].spec_version, 1, "scaling is not an update");
        assert!(s.services["s1"].update_status.is_none());
        let image = ServiceUpdate {
            image: Some("meshd-test:v2".into()),
            ..Default::default()
        };
        s.apply(
            6,
            Command::UpdateService {
                id: "s1".into(),
                update: Box::new(image),
                expect_version: None,
                now: 6,
            },
        )
        .unwrap();
        let svc = &s.services["s1"];
        assert_eq!(svc.spec_version, 2);
        assert_eq!(
            svc.update_status.as_ref().unwrap().state,
            UpdateState::Updating
        );
        assert_eq!(
            svc.previous_spec
                .as_ref()
                .unwrap()
                .task_template
                .container
                .image,
            "meshd-test"
        );
        let rollback = ServiceUpdate {
            rollback: true,
            ..Default::default()
        };
        s.apply(
            7,
            Command::UpdateService {
                id: "s1".into(),
                update: Box::new(rollback),
                expect_version: None,
                now: 7,
            },
        )
        .unwrap();
        let svc = &s.services["s1"];
        assert_eq!(svc.spec.task_template.container.image, "meshd-test");
        assert_eq!(
            svc.update_status.as_ref().unwrap().state,
            UpdateState::RollbackStarted
        );
    }

    #[test]
    fn containers_need_attachable_networks_and_unique_names() {
        let mut s = state();
        let mut t = task("c1", "", 0);
        t.service_name = "tool".into();
        t.node_id = "n1".into();
        let e = s
            .apply(
                4,
                Command::CreateTask {
                    task: Box::new(t.clone()),
                    now: 4,
                },
            )
            .unwrap_err();
        assert!(e.message.contains("not attachable"), "{}", e.message);
        t.spec.networks.clear();
        s.apply(
            5,
            Command::CreateTask {
                task: Box::new(t.clone()),
                now: 5,
            },
        )
        .unwrap();
        t.id = "c2".into();
        let e = s
            .apply(
                6,
                Command::CreateTask {
                    task: Box::new(t),
                    now: 6,
                },
            )
            .unwrap_err();
        assert!(e.message.contains("already in use"), "{}", e.message);
    }
}
