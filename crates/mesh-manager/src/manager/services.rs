//! The manager's service and task duties: the API behind `swarm service|run|container`,
//! the dispatcher's task RPCs (assignments long-poll, status reports) and the orchestrator
//! loop that turns the pure plan into Raft writes.

use std::time::Duration;

use mesh_api::api::{LogChunk, LogsQuery, RunRequest, TaskQuery};
use mesh_api::node::resolve_node;
use mesh_api::{
    Service, ServiceMode, ServiceSpec, ServiceUpdate, ServiceView, Task, TaskSpec, TaskState,
    TaskStatus, new_id,
};
use mesh_transport::Peer;
use tracing::{debug, info, warn};

use super::{Manager, decode, encode, now_ms};
use crate::error::ManagerError;
use crate::rpc::{self, AssignmentsRequest, AssignmentsResponse, TaskStatusRequest};
use crate::state::{ClusterState, Command};

/// Longest an `assignments` call waits for a change.
const MAX_ASSIGNMENT_WAIT: Duration = Duration::from_secs(20);
/// Time a `task_logs` call to a node may take.
const LOGS_TIMEOUT: Duration = Duration::from_secs(5);

fn no_such_service(reference: &str) -> ManagerError {
    ManagerError::NotFound(format!(
        "no such service: {reference}; `swarm service ls` lists them"
    ))
}

fn no_such_task(reference: &str) -> ManagerError {
    ManagerError::NotFound(format!("no such task or container: {reference}"))
}

/// A service with its task counts.
pub fn service_view(s: &ClusterState, svc: &Service) -> ServiceView {
    let mut running = 0;
    let mut desired = 0;
    for t in s.tasks.values().filter(|t| t.service_id == svc.id) {
        if t.desired_state == TaskState::Running {
            desired += 1;
            if t.status.state == TaskState::Running {
                running += 1;
            }
        }
    }
    let desired_tasks = match svc.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::Global => desired,
    };
    ServiceView {
        service: svc.clone(),
        running_tasks: running,
        desired_tasks,
    }
}

/// A task or container by ID, unambiguous ID prefix, or container name.
pub fn resolve_task<'a>(s: &'a ClusterState, reference: &str) -> Option<&'a Task> {
    if let Some(t) = s.tasks.get(reference) {
        return Some(t);
    }
    if let Some(t) = s
        .tasks
        .values()
        .filter(|t| t.service_id.is_empty() && t.service_name == reference)
        .max_by_key(|t| t.created_at)
    {
        return Some(t);
    }
    let mut prefixed = s.tasks.values().filter(|t| t.id.starts_with(reference));
    match (prefixed.next(), prefixed.next()) {
        (Some(t), None) if reference.len() >= 4 => Some(t),
        _ => None,
    }
}

impl Manager {
    // ------------------------------------------------------------ services API

    /// `swarm service create`.
    pub async fn create_service(&self, spec: ServiceSpec) -> Result<Service, ManagerError> {
        spec.validate()?;
        let id = new_id();
        self.write(Command::CreateService {
            id: id.clone(),
            spec: Box::new(spec),
            now: now_ms(),
        })
        .await?;
        self.store
            .read(|s| s.services.get(&id).cloned())
            .ok_or_else(|| no_such_service(&id))
    }

    /// `swarm service update|scale|rollback`.
    pub async fn update_service(
        &self,
        reference: &str,
        update: ServiceUpdate,
    ) -> Result<Service, ManagerError> {
        let svc = self
            .store
            .read(|s| s.resolve_service(reference).cloned())
            .ok_or_else(|| no_such_service(reference))?;
        if !update.rollback {
            // Checked here for a clear error; applied again on the current spec in Raft.
            update.apply(&svc.spec)?;
        }
        self.write(Command::UpdateService {
            id: svc.id.clone(),
            update: Box::new(update),
            expect_version: None,
            now: now_ms(),
        })
        .await?;
        self.store
            .read(|s| s.services.get(&svc.id).cloned())
            .ok_or_else(|| no_such_service(&svc.id))
    }

    /// `swarm service rm`.
    pub async fn remove_service(&self, reference: &str) -> Result<(), ManagerError> {
        let id = self
            .store
            .read(|s| s.resolve_service(reference).map(|s| s.id.clone()))
            .ok_or_else(|| no_such_service(reference))?;
        self.write(Command::RemoveService { id, now: now_ms() })
            .await?;
        Ok(())
    }

    /// `swarm service ls`.
    pub fn list_services(&self) -> Vec<ServiceView> {
        self.store.read(|s| {
            let mut v: Vec<_> = s.services.values().map(|x| service_view(s, x)).collect();
            v.sort_by(|a, b| a.service.spec.name.cmp(&b.service.spec.name));
            v
        })
    }

    /// `swarm service inspect`.
    pub fn get_service(&self, reference: &str) -> Result<ServiceView, ManagerError> {
        self.store
            .read(|s| s.resolve_service(reference).map(|x| service_view(s, x)))
            .ok_or_else(|| no_such_service(reference))
    }

    /// `swarm service ps`, `swarm container ls`.
    pub fn list_tasks(&self, q: &TaskQuery) -> Result<Vec<Task>, ManagerError> {
        self.store.read(|s| {
            let service_id = match &q.service {
                Some(r) => Some(
                    s.resolve_service(r)
                        .map(|x| x.id.clone())
                        .ok_or_else(|| no_such_service(r))?,
                ),
                None => None,
            };
            let node_id = match &q.node {
                Some(r) => Some(resolve_node(s.nodes.values(), r)?.id.clone()),
                None => None,
            };
            let mut v: Vec<Task> = s
                .tasks
                .values()
                .filter(|t| service_id.as_ref().is_none_or(|id| t.service_id == *id))
                .filter(|t| node_id.as_ref().is_none_or(|id| t.node_id == *id))
                .filter(|t| !q.containers || t.service_id.is_empty())
                .filter(|t| !q.running || t.desired_state == TaskState::Running)
                .cloned()
                .collect();
            v.sort_by(|a, b| {
                (a.service_name.as_str(), a.slot, a.node_id.as_str())
                    .cmp(&(b.service_name.as_str(), b.slot, b.node_id.as_str()))
                    .then(b.created_at.cmp(&a.created_at))
            });
            Ok(v)
        })
    }

    /// `swarm inspect TASK`.
    pub fn get_task(&self, reference: &str) -> Result<Task, ManagerError> {
        self.store
            .read(|s| resolve_task(s, reference).cloned())
            .ok_or_else(|| no_such_task(reference))
    }

    /// `swarm run` on `node_id`: a standalone container, started by that node.
    pub async fn run_container(
        &self,
        node_id: &str,
        req: RunRequest,
    ) -> Result<Task, ManagerError> {
        let name = match req.name {
            Some(n) => {
                mesh_api::service::validate_service_name(&n).map_err(|mut e| {
                    e.field = "--name".into();
                    e
                })?;
                n
            }
            None => format!("c-{}", &new_id()[..8]),
        };
        let mut spec: TaskSpec = req.spec;
        spec.restart_policy.condition = mesh_api::RestartCondition::None;
        spec.container.validate()?;
        let now = now_ms();
        let task = Task {
            id: new_id(),
            version: 0,
            created_at: now,
            updated_at: now,
            service_id: String::new(),
            service_name: name,
            slot: 0,
            node_id: node_id.to_string(),
            spec,
            spec_version: 0,
            desired_state: TaskState::Running,
            status: TaskStatus::default(),
            networks: Vec::new(),
            host_ports: Vec::new(),
        };
        let id = task.id.clone();
        self.write(Command::CreateTask {
            task: Box::new(task),
            now,
        })
        .await?;
        self.store
            .read(|s| s.tasks.get(&id).cloned())
            .ok_or_else(|| no_such_task(&id))
    }

    /// `swarm container rm|stop`: the node stops it (and forgets it with `Remove`).
    pub async fn set_task_desired(
        &self,
        reference: &str,
        state: TaskState,
    ) -> Result<Task, ManagerError> {
        let t = self
            .store
            .read(|s| resolve_task(s, reference).cloned())
            .ok_or_else(|| no_such_task(reference))?;
        self.write(Command::SetTaskDesired {
            id: t.id.clone(),
            state,
            now: now_ms(),
        })
        .await?;
        Ok(t)
    }

    /// A piece of a task's output, fetched from the node that runs it.
    pub async fn task_logs(
        &self,
        reference: &str,
        query: LogsQuery,
    ) -> Result<LogChunk, ManagerError> {
        let (task, addr) = self
            .store
            .read(|s| {
                resolve_task(s, reference).map(|t| {
                    (
                        t.clone(),
                        s.nodes.get(&t.node_id).map(|n| n.control_addr.clone()),
                    )
                })
            })
            .ok_or_else(|| no_such_task(reference))?;
        let Some(addr) = addr else {
            return Err(ManagerError::NotFound(format!(
                "task {} has no node (yet): it has no output",
                task.id
            )));
        };
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
            ManagerError::NotFound(format!(
                "node {} has no usable control address",
                task.node_id
            ))
        })?;
        let body = encode(&rpc::TaskLogsRequest {
            task_id: task.id.clone(),
            query,
        })?;
        let reply = self
            .transport
            .call(addr, rpc::TASK_LOGS, body, LOGS_TIMEOUT)
            .await
            .map_err(|e| {
                ManagerError::NotFound(format!(
                    "the logs of task {} are on node {}, which did not answer: {e}",
                    task.id, task.node_id
                ))
            })?;
        decode(&reply)
    }

    // ------------------------------------------------------------ dispatcher RPCs

    pub(super) async fn rpc_assignments(
        &self,
        peer: &Peer,
        body: &[u8],
    ) -> Result<Vec<u8>, ManagerError> {
        let id = self.authorize(peer, false)?;
        let req: AssignmentsRequest = decode(body)?;
        let wait = Duration::from_millis(req.wait_ms).min(MAX_ASSIGNMENT_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let mut events = self.store.subscribe();
        let mut stop = self.stop.subscribe();
        loop {
            let version = self.store.read(|s| s.assignments_version(&id));
            if req.known != Some(version) || tokio::time::Instant::now() >= deadline {
                let reply = self.store.read(|s| {
                    let tasks: Vec<Task> = s
                        .tasks
                        .values()
                        // Pending global tasks know their node already, but wait.
                        .filter(|t| t.node_id == id && t.status.state >= TaskState::Assigned)
                        .cloned()
                        .collect();
                    let mut services: Vec<Service> = Vec::new();
                    for t in &tasks {
                        if let Some(svc) = s.services.get(&t.service_id)
                            && !services.iter().any(|x| x.id == svc.id)
                        {
                            services.push(svc.clone());
                        }
                    }
                    AssignmentsResponse {
                        version,
                        tasks,
                        services,
                    }
                });
                return encode(&reply);
            }
            tokio::select! {
                r = events.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                        return Err(ManagerError::Store("the store is shutting down".into()));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stop.changed() => {
                    return Err(ManagerError::Store("the manager is stopping".into()));
                }
            }
        }
    }

    pub(super) async fn rpc_task_status(
        &self,
        peer: &Peer,
        body: &[u8],
    ) -> Result<Vec<u8>, ManagerError> {
        let id = self.authorize(peer, false)?;
        let req: TaskStatusRequest = decode(body)?;
        if req.updates.is_empty() {
            return encode(&0u64);
        }
        self.write(Command::UpdateTaskStatus {
            node_id: id,
            updates: req.updates,
        })
        .await?;
        encode(&0u64)
    }

    pub(super) async fn rpc_run(&self, peer: &Peer, body: &[u8]) -> Result<Vec<u8>, ManagerError> {
        let id = self.authorize(peer, false)?;
        let req: RunRequest = decode(body)?;
        encode(&self.run_container(&id, req).await?)
    }

    pub(super) async fn rpc_container_desired(
        &self,
        peer: &Peer,
        body: &[u8],
    ) -> Result<Vec<u8>, ManagerError> {
        let id = self.authorize(peer, false)?;
        let req: rpc::ContainerDesiredRequest = decode(body)?;
        let t = self
            .store
            .read(|s| resolve_task(s, &req.reference).cloned())
            .ok_or_else(|| no_such_task(&req.reference))?;
        if t.node_id != id || !t.service_id.is_empty() {
            return Err(ManagerError::PermissionDenied(format!(
                "{} is not a container of this node; run the command on its node or on a manager",
                req.reference
            )));
        }
        encode(&self.set_task_desired(&t.id, req.state).await?)
    }

    // ------------------------------------------------------------ orchestrator loop

    /// Runs the orchestrator and scheduler on the leader: after every change of the
    /// state, and when something timed is due.
    pub(super) async fn orchestrate_loop(&self) {
        let mut events = self.store.subscribe();
        let mut stop = self.stop.subscribe();
        let mut wake_at: Option<u64> = None;
        loop {
            let sleep_for = match wake_at {
                Some(t) => Duration::from_millis(t.saturating_sub(now_ms())),
                None => Duration::from_secs(1),
            }
            .min(Duration::from_secs(1));
            tokio::select! {
                r = events.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                        break;
                    }
                    // Take every event already queued: one pass for a burst.
                    while events.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(sleep_for) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            if !self.is_leader() {
                wake_at = None;
                continue;
            }
            let now = now_ms();
            let snapshot = self.store.read(crate::orchestration::Snapshot::of);
            let (plan, next) = snapshot.plan(now, &mut new_id);
            wake_at = next;
            if plan.is_empty() {
                continue;
            }
            debug!(
                create = plan.create.len(),
                changes = plan.tasks.len(),
                remove = plan.remove.len(),
                "orchestrator plan"
            );
            for c in &plan.services {
                info!(change = ?c, "service update status");
            }
            if let Err(e) = self
                .write(Command::ApplyPlan {
                    plan: Box::new(plan),
                    now,
                })
                .await
            {
                warn!(error = %e, "could not apply the orchestrator's plan; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                wake_at = Some(now_ms());
            }
        }
        debug!("orchestrator loop stopped");
    }
}
