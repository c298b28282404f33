//! The reconcile step: services' desired state → task changes, then scheduling.
//!
//! Every decision is a function of the input alone, and every decision that must not be
//! taken twice is written into the state it produces (a desired state, a new task), so that
//! planning the applied state yields an empty plan.

use std::borrow::Cow;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use mesh_api::constraint::{Constraint, parse_all};
use mesh_api::{
    Availability, FailureAction, Health, Node, NodeState, RestartCondition, Service, ServiceMode,
    Task, TaskState, TaskStatus, UpdateOrder, UpdateState, UpdateStatus,
};
use tracing::debug;

use crate::scheduler::{
    Decision, HostPort, Request, Scheduler, service_host_ports, task_host_ports,
};
use crate::{Input, Plan, ServiceChange, TaskChange};

/// A replica slot of a replicated service, or the node of a global service's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SlotKey<'a> {
    Replica(u64),
    Node(&'a str),
}

/// The tasks of one slot and what this plan makes of it.
#[derive(Debug)]
struct SlotView<'a> {
    svc: usize,
    key: SlotKey<'a>,
    /// Existing tasks, oldest first.
    tasks: Vec<usize>,
    /// A task created by this plan for the slot (index into `created`).
    new_task: Option<usize>,
    /// The slot counts as one of the service's replicas.
    present: bool,
    /// Its task ended and the restart policy says it stays ended.
    done: bool,
    /// Scaled away (its tasks are being removed).
    dropped: bool,
    /// Global service: whether its node may get a new task (ready, active, constraints).
    wants: Option<bool>,
}

/// What a service needs, computed once per plan.
struct SvcInfo<'a> {
    s: Cow<'a, Service>,
    global: bool,
    host_ports: Vec<HostPort>,
    /// Host-mode port numbers, sorted: a task with other `host_ports` is dirty.
    port_numbers: Vec<u16>,
    /// The template's constraints; `None` when one does not parse.
    cons: Option<Vec<Constraint>>,
}

impl<'a> SvcInfo<'a> {
    fn new(s: Cow<'a, Service>) -> Self {
        let host_ports = service_host_ports(&s);
        let mut port_numbers: Vec<u16> = host_ports.iter().map(|p| p.port).collect();
        port_numbers.dedup();
        Self {
            global: matches!(s.spec.mode, ServiceMode::Global),
            cons: parse_all(&s.spec.task_template.placement.constraints).ok(),
            s,
            host_ports,
            port_numbers,
        }
    }

    /// Whether `t` must be replaced to match the service: its spec differs from the
    /// template, or it publishes other host-mode ports.
    fn dirty(&self, t: &Task) -> bool {
        if t.spec != self.s.spec.task_template {
            return true;
        }
        if t.host_ports.is_sorted() {
            t.host_ports != self.port_numbers
        } else {
            let mut p = t.host_ports.clone();
            p.sort_unstable();
            p.dedup();
            p != self.port_numbers
        }
    }

    fn template_fits(&self, n: &Node) -> bool {
        self.cons
            .as_ref()
            .is_some_and(|c| c.iter().all(|c| c.matches(n)))
    }
}

/// How a task that is supposed to run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Waiting for a node, or on a node that may run it.
    Live,
    /// Its node is down or gone.
    Lost,
    /// Its node is drained, or no longer satisfies its constraints.
    Moved,
    /// It ended.
    Ended(End),
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    Failed,
    Rejected,
    /// Observed `shutdown` although it was meant to run.
    Aborted,
    /// Orphaned or removed: nothing will report on it.
    Lost,
}

fn end_of(state: TaskState) -> End {
    match state {
        TaskState::Complete => End::Complete,
        TaskState::Failed => End::Failed,
        TaskState::Rejected => End::Rejected,
        TaskState::Shutdown => End::Aborted,
        _ => End::Lost,
    }
}

struct NewTask {
    task: Task,
    view: usize,
    cancelled: bool,
}

/// A decision of the scheduling step about an existing task.
enum Sched {
    Assign(String),
    Pending(String),
}

pub(crate) fn plan(input: &Input<'_>, new_id: &mut dyn FnMut() -> String) -> Plan {
    let mut svcs: Vec<SvcInfo<'_>> = input
        .services
        .iter()
        .map(|s| SvcInfo::new(Cow::Borrowed(s)))
        .collect();
    let mut p = Planner::new(input);
    p.run(&mut svcs, new_id);
    p.finish()
}

struct Planner<'a> {
    input: &'a Input<'a>,
    tasks: &'a [Task],
    now: u64,
    nodes: HashMap<&'a str, &'a Node>,
    /// Effective desired and observed states: the input's, moved forward by this plan.
    desired: Vec<TaskState>,
    observed: Vec<TaskState>,
    observed_msg: HashMap<usize, String>,
    removed: Vec<bool>,
    sched: HashMap<usize, Sched>,
    created: Vec<NewTask>,
    views: Vec<SlotView<'a>>,
    /// The view each task of a service is in.
    task_view: Vec<usize>,
    service_changes: Vec<ServiceChange>,
    wake: Option<u64>,
}

impl<'a> Planner<'a> {
    fn new(input: &'a Input<'a>) -> Self {
        let tasks = input.tasks;
        Self {
            input,
            tasks,
            now: input.now_ms,
            nodes: input.nodes.iter().map(|n| (n.id.as_str(), n)).collect(),
            desired: tasks.iter().map(|t| t.desired_state).collect(),
            observed: tasks.iter().map(|t| t.status.state).collect(),
            observed_msg: HashMap::new(),
            removed: vec![false; tasks.len()],
            sched: HashMap::new(),
            created: Vec::new(),
            views: Vec::new(),
            task_view: vec![usize::MAX; tasks.len()],
            service_changes: Vec::new(),
            wake: None,
        }
    }

    fn run(&mut self, svcs: &mut [SvcInfo<'a>], new_id: &mut dyn FnMut() -> String) {
        let tasks = self.tasks;
        let mut by_service: HashMap<&'a str, Vec<usize>> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if t.service_id.is_empty() {
                self.standalone(i);
            } else {
                by_service.entry(t.service_id.as_str()).or_default().push(i);
            }
        }
        for (si, svc) in svcs.iter_mut().enumerate() {
            let list = by_service.remove(svc.s.id.as_str()).unwrap_or_default();
            let mark = (
                self.created.len(),
                self.views.len(),
                self.service_changes.len(),
            );
            let Some(message) = self.reconcile(svc, si, &list, new_id) else {
                continue;
            };
            // The update failed and rolls back: plan this service again as the rollback
            // will see it, so that the applied plan needs no second step.
            self.reset(mark, &list);
            let rolled = rolled_back(&svc.s, self.now, message.clone());
            self.service_changes.push(ServiceChange::Rollback {
                service_id: rolled.id.clone(),
                message,
            });
            self.service_changes.push(ServiceChange::UpdateStatus {
                service_id: rolled.id.clone(),
                status: rolled.update_status.clone(),
            });
            *svc = SvcInfo::new(Cow::Owned(rolled));
            self.reconcile(svc, si, &list, new_id);
        }
        // Tasks of services that no longer exist.
        let mut orphans: Vec<usize> = by_service.into_values().flatten().collect();
        orphans.sort_unstable();
        for i in orphans {
            self.retire(i);
        }
        self.sweep();
        self.trim(svcs);
        self.schedule(svcs);
    }

    // ---- small helpers -------------------------------------------------------------

    fn node(&self, id: &str) -> Option<&'a Node> {
        self.nodes.get(id).copied()
    }

    /// Down, disconnected or not in the cluster: its tasks are replaced.
    fn lost(n: Option<&Node>) -> bool {
        n.is_none_or(|n| matches!(n.status.state, NodeState::Down | NodeState::Disconnected))
    }

    /// Nothing will report on its tasks any more: removed, disconnected, or down for long.
    fn gone(&mut self, n: Option<&Node>) -> bool {
        match n {
            None => true,
            Some(n) => match n.status.state {
                NodeState::Disconnected => true,
                NodeState::Down => {
                    let at = n.updated_at.saturating_add(self.input.orphan_after_ms);
                    if self.now >= at {
                        true
                    } else {
                        self.wake(at);
                        false
                    }
                }
                _ => false,
            },
        }
    }

    fn wake(&mut self, at: u64) {
        if at > self.now {
            self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
        }
    }

    fn set_desired(&mut self, i: usize, state: TaskState) {
        if state > self.desired[i] {
            self.desired[i] = state;
        }
    }

    fn set_observed(&mut self, i: usize, state: TaskState, message: String) {
        if state > self.observed[i] {
            self.observed[i] = state;
            self.observed_msg.insert(i, message);
        }
    }

    /// Desired `remove`: deleted at once when nothing runs for it, else once it stopped.
    fn retire(&mut self, i: usize) {
        let t = &self.tasks[i];
        let o = self.observed[i];
        let unplaced = o < TaskState::Assigned || t.node_id.is_empty();
        let node = self.node(&t.node_id);
        if o.is_terminal() || unplaced || self.gone(node) {
            self.removed[i] = true;
        } else {
            self.set_desired(i, TaskState::Remove);
        }
    }

    fn finished(&self, i: usize) -> bool {
        self.desired[i] > TaskState::Running && self.observed[i].is_terminal()
    }

    /// Standalone containers are left alone, except when their node is gone.
    fn standalone(&mut self, i: usize) {
        let t = &self.tasks[i];
        let o = self.observed[i];
        if o < TaskState::Assigned || o > TaskState::Running || t.node_id.is_empty() {
            return;
        }
        let node = self.node(&t.node_id);
        if self.gone(node) {
            let msg = format!("node {} is gone", t.node_id);
            self.set_observed(i, TaskState::Orphaned, msg);
        }
    }

    // ---- per service ---------------------------------------------------------------

    /// Undoes what reconciling one service did (its tasks are `list`).
    fn reset(&mut self, mark: (usize, usize, usize), list: &[usize]) {
        for &i in list {
            self.desired[i] = self.tasks[i].desired_state;
            self.observed[i] = self.tasks[i].status.state;
            self.observed_msg.remove(&i);
            self.removed[i] = false;
        }
        self.created.truncate(mark.0);
        self.views.truncate(mark.1);
        self.service_changes.truncate(mark.2);
    }

    /// Plans one service; the message of a rollback when its update failed and must roll
    /// back.
    fn reconcile(
        &mut self,
        svc: &SvcInfo<'_>,
        si: usize,
        list: &[usize],
        new_id: &mut dyn FnMut() -> String,
    ) -> Option<String> {
        let tasks = self.tasks;
        let mut groups: BTreeMap<SlotKey<'a>, Vec<usize>> = BTreeMap::new();
        for &i in list {
            let t = &tasks[i];
            let key = if svc.global {
                if t.slot != 0 || t.node_id.is_empty() {
                    self.retire(i);
                    continue;
                }
                SlotKey::Node(t.node_id.as_str())
            } else {
                if t.slot == 0 {
                    self.retire(i);
                    continue;
                }
                SlotKey::Replica(t.slot)
            };
            groups.entry(key).or_default().push(i);
        }
        if svc.global {
            for n in self.input.nodes {
                groups.entry(SlotKey::Node(n.id.as_str())).or_default();
            }
        }
        let first = self.views.len();
        for (key, mut ts) in groups {
            ts.sort_by(|&a, &b| {
                (tasks[a].created_at, &tasks[a].id).cmp(&(tasks[b].created_at, &tasks[b].id))
            });
            let vi = self.views.len();
            for &i in &ts {
                self.task_view[i] = vi;
            }
            self.views.push(SlotView {
                svc: si,
                key,
                tasks: ts,
                new_task: None,
                present: false,
                done: false,
                dropped: false,
                wants: None,
            });
            self.step_slot(svc, vi, new_id);
        }
        if let ServiceMode::Replicated { replicas } = svc.s.spec.mode {
            self.scale(svc, si, first, replicas, new_id);
        }
        let rollback = self.update(svc, first, new_id);
        debug!(
            service = %svc.s.spec.name,
            slots = self.views.len() - first,
            rollback = rollback.is_some(),
            "service reconciled"
        );
        rollback
    }

    /// Whether a global service wants a task on node `id`.
    fn global_wants(&self, svc: &SvcInfo<'_>, id: &str) -> bool {
        self.node(id).is_some_and(|n| {
            n.status.state == NodeState::Ready
                && n.spec.availability == Availability::Active
                && svc.template_fits(n)
        })
    }

    fn classify(&mut self, svc: &SvcInfo<'_>, i: usize) -> Kind {
        let t = &self.tasks[i];
        let o = t.status.state;
        if o.is_terminal() {
            return Kind::Ended(end_of(o));
        }
        let node = self.node(&t.node_id);
        if o < TaskState::Assigned {
            if svc.global
                && node.is_none_or(|n| {
                    Self::lost(Some(n))
                        || n.spec.availability == Availability::Drain
                        || !svc.template_fits(n)
                })
            {
                return Kind::Moved;
            }
            return Kind::Live;
        }
        let Some(n) = node else {
            return Kind::Lost;
        };
        if Self::lost(Some(n)) {
            return Kind::Lost;
        }
        if n.spec.availability == Availability::Drain {
            return Kind::Moved;
        }
        let own_fits = if t.spec == svc.s.spec.task_template {
            svc.cons
                .as_ref()
                .is_none_or(|c| c.iter().all(|c| c.matches(n)))
        } else {
            // A constraint that does not parse never evicts a running task.
            parse_all(&t.spec.placement.constraints)
                .map_or(true, |c| c.iter().all(|c| c.matches(n)))
        };
        if !own_fits || (svc.global && !svc.template_fits(n)) {
            return Kind::Moved;
        }
        Kind::Live
    }

    fn should_restart(&self, svc: &SvcInfo<'_>, list: &[usize], end: End) -> bool {
        let p = &svc.s.spec.task_template.restart_policy;
        let by_condition = match p.condition {
            RestartCondition::None => false,
            RestartCondition::OnFailure => end != End::Complete,
            RestartCondition::Any => true,
        };
        if !by_condition {
            return false;
        }
        if p.max_attempts == 0 {
            return true;
        }
        let Some((&l, earlier)) = list.split_last() else {
            return true;
        };
        let last = &self.tasks[l];
        let end_at = last.status.timestamp;
        let restarts = earlier
            .iter()
            .filter(|&&e| {
                let t = &self.tasks[e];
                let counts = match t.status.state {
                    TaskState::Failed => true,
                    TaskState::Complete => p.condition == RestartCondition::Any,
                    _ => false,
                };
                counts
                    && t.spec == last.spec
                    && (p.window_ms == 0
                        || t.status.timestamp.saturating_add(p.window_ms) >= end_at)
            })
            .count() as u64;
        restarts < p.max_attempts
    }

    fn create(
        &mut self,
        svc: &SvcInfo<'_>,
        vi: usize,
        new_id: &mut dyn FnMut() -> String,
    ) -> usize {
        let s: &Service = &svc.s;
        let (slot, node_id) = match self.views[vi].key {
            SlotKey::Replica(n) => (n, String::new()),
            SlotKey::Node(id) => (0, id.to_string()),
        };
        let task = Task {
            id: new_id(),
            version: 0,
            created_at: self.now,
            updated_at: self.now,
            service_id: s.id.clone(),
            service_name: s.spec.name.clone(),
            slot,
            node_id,
            spec: s.spec.task_template.clone(),
            spec_version: s.spec_version,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::New,
                timestamp: self.now,
                message: "created".to_string(),
                ..Default::default()
            },
            networks: Vec::new(),
            host_ports: svc.port_numbers.clone(),
        };
        let n = self.created.len();
        self.created.push(NewTask {
            task,
            view: vi,
            cancelled: false,
        });
        self.views[vi].new_task = Some(n);
        self.views[vi].present = true;
        n
    }

    /// Failures, node loss, drains and restarts of one slot.
    fn step_slot(&mut self, svc: &SvcInfo<'_>, vi: usize, new_id: &mut dyn FnMut() -> String) {
        let tasks = self.tasks;
        let list = std::mem::take(&mut self.views[vi].tasks);
        let wants = match self.views[vi].key {
            SlotKey::Node(id) => Some(self.global_wants(svc, id)),
            SlotKey::Replica(_) => None,
        };
        self.views[vi].wants = wants;
        let Some((&l, older)) = list.split_last() else {
            self.views[vi].tasks = list;
            if wants == Some(true) {
                self.create(svc, vi, new_id);
            }
            return;
        };
        let l_kind = (self.desired[l] == TaskState::Running).then(|| self.classify(svc, l));
        let mut live_old = Vec::new();
        for &i in older {
            if self.desired[i] != TaskState::Running {
                continue;
            }
            match self.classify(svc, i) {
                Kind::Live => live_old.push(i),
                Kind::Lost | Kind::Moved | Kind::Ended(_) => {
                    self.set_desired(i, TaskState::Shutdown)
                }
            }
        }
        let (mut present, mut done, mut replace) = (false, false, false);
        match l_kind {
            None => {
                if self.desired[l] == TaskState::Complete {
                    present = true;
                    done = true;
                }
            }
            Some(Kind::Live) => present = true,
            Some(Kind::Lost | Kind::Moved) => {
                self.set_desired(l, TaskState::Shutdown);
                replace = true;
            }
            Some(Kind::Ended(end)) => {
                let restart = match end {
                    End::Lost => true,
                    End::Rejected if !svc.global => true,
                    _ => self.should_restart(svc, &list, end),
                };
                if restart {
                    self.set_desired(l, TaskState::Shutdown);
                    replace = true;
                } else {
                    self.set_desired(l, TaskState::Complete);
                    present = true;
                    done = true;
                }
            }
        }
        self.views[vi].tasks = list;
        self.views[vi].done = done;
        self.views[vi].present = present;
        if (replace && wants != Some(false)) || (!present && wants == Some(true)) {
            self.create(svc, vi, new_id);
        }
        let view = &self.views[vi];
        let serving = view.new_task.is_none() && !done && present && tasks[l].is_serving();
        if !view.present || done || serving {
            for o in live_old {
                self.set_desired(o, TaskState::Shutdown);
            }
        }
    }

    fn cancel_new(&mut self, vi: usize) {
        if let Some(n) = self.views[vi].new_task.take() {
            self.created[n].cancelled = true;
        }
    }

    /// Replicated: as many present slots as replicas.
    fn scale(
        &mut self,
        svc: &SvcInfo<'_>,
        si: usize,
        first: usize,
        replicas: u64,
        new_id: &mut dyn FnMut() -> String,
    ) {
        let present: Vec<usize> = (first..self.views.len())
            .filter(|&v| self.views[v].present)
            .collect();
        let n = present.len() as u64;
        if n > replicas {
            let k = usize::try_from(n - replicas).unwrap_or(usize::MAX);
            for v in self.pick_scale_down(&present, k) {
                self.cancel_new(v);
                let list = std::mem::take(&mut self.views[v].tasks);
                for &i in &list {
                    self.retire(i);
                }
                let view = &mut self.views[v];
                view.tasks = list;
                view.present = false;
                view.done = false;
                view.dropped = true;
            }
        } else if n < replicas {
            let mut by_slot: HashMap<u64, usize> = HashMap::new();
            let mut used: HashSet<u64> = HashSet::new();
            for v in first..self.views.len() {
                let view = &self.views[v];
                let SlotKey::Replica(slot) = view.key else {
                    continue;
                };
                by_slot.insert(slot, v);
                let busy = view
                    .tasks
                    .iter()
                    .any(|&i| !self.finished(i) && !self.removed[i]);
                if view.present || busy {
                    used.insert(slot);
                }
            }
            let mut next = 1u64;
            for _ in n..replicas {
                while used.contains(&next) {
                    next += 1;
                }
                let vi = match by_slot.get(&next) {
                    Some(&v) => v,
                    None => {
                        self.views.push(SlotView {
                            svc: si,
                            key: SlotKey::Replica(next),
                            tasks: Vec::new(),
                            new_task: None,
                            present: false,
                            done: false,
                            dropped: false,
                            wants: None,
                        });
                        self.views.len() - 1
                    }
                };
                self.create(svc, vi, new_id);
                used.insert(next);
            }
        }
    }

    /// Which `k` of the `present` slots go: first those whose task is not placed yet or
    /// ended, then those not running yet, then running ones, taken from the nodes with the
    /// most tasks of the service; the highest slot number first among equals.
    fn pick_scale_down(&self, present: &[usize], k: usize) -> Vec<usize> {
        let tasks = self.tasks;
        let mut ranked: Vec<(u8, u64, Option<&'a str>, usize)> = Vec::with_capacity(present.len());
        for &v in present {
            let view = &self.views[v];
            let SlotKey::Replica(slot) = view.key else {
                continue;
            };
            let last = view.tasks.last().map(|&i| &tasks[i]);
            let (rank, node) = match (view.new_task, last) {
                (Some(_), _) | (None, None) => (0, None),
                (None, Some(t)) if t.status.state < TaskState::Assigned => (0, None),
                (None, Some(_)) if view.done => (1, None),
                (None, Some(t)) if t.status.state < TaskState::Running => {
                    (2, Some(t.node_id.as_str()))
                }
                (None, Some(t)) => (3, Some(t.node_id.as_str())),
            };
            ranked.push((rank, slot, node, v));
        }
        ranked.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut picked = Vec::with_capacity(k);
        let mut counts: HashMap<&'a str, u64> = HashMap::new();
        for r in &ranked {
            if let Some(n) = r.2 {
                *counts.entry(n).or_default() += 1;
            }
        }
        for rank in 0..=3u8 {
            if picked.len() >= k {
                break;
            }
            let group: Vec<&(u8, u64, Option<&'a str>, usize)> =
                ranked.iter().filter(|r| r.0 == rank).collect();
            if rank < 2 {
                for r in group {
                    if picked.len() >= k {
                        break;
                    }
                    picked.push(r.3);
                }
                continue;
            }
            // Spread the removal: the node with the most tasks of the service loses first.
            let mut per_node: BTreeMap<&'a str, Vec<(u64, usize)>> = BTreeMap::new();
            for r in group {
                per_node
                    .entry(r.2.unwrap_or(""))
                    .or_default()
                    .push((r.1, r.3));
            }
            let mut heap: BinaryHeap<(u64, u64, &'a str)> = BinaryHeap::new();
            for (node, slots) in per_node.iter_mut() {
                slots.sort_unstable();
                if let Some(&(top, _)) = slots.last() {
                    heap.push((counts.get(node).copied().unwrap_or(0), top, node));
                }
            }
            while picked.len() < k {
                let Some((count, _, node)) = heap.pop() else {
                    break;
                };
                let Some(slots) = per_node.get_mut(node) else {
                    continue;
                };
                let Some((_, v)) = slots.pop() else {
                    continue;
                };
                picked.push(v);
                let count = count.saturating_sub(1);
                counts.insert(node, count);
                if let Some(&(top, _)) = slots.last() {
                    heap.push((count, top, node));
                }
            }
        }
        picked
    }

    // ---- rolling update ------------------------------------------------------------

    fn set_status(&mut self, s: &Service, status: UpdateStatus) {
        if s.update_status.as_ref() != Some(&status) {
            self.service_changes.push(ServiceChange::UpdateStatus {
                service_id: s.id.clone(),
                status: Some(status),
            });
        }
    }

    /// Whether `t` was made by the update that started at `started_at`: it matches the
    /// service, carries the service's current spec version, and was created since the start.
    /// (Tasks created in the same millisecond before the start share those traits only if
    /// they were made from the same spec version, i.e. for this update.)
    fn by_update(svc: &SvcInfo<'_>, t: &Task, started_at: u64) -> bool {
        t.created_at >= started_at && t.spec_version == svc.s.spec_version && !svc.dirty(t)
    }

    /// The rolling update of one service. Returns the message of a rollback when the
    /// update failed and its failure action is to roll back.
    fn update(
        &mut self,
        svc: &SvcInfo<'_>,
        first: usize,
        new_id: &mut dyn FnMut() -> String,
    ) -> Option<String> {
        let s: &Service = &svc.s;
        let tasks = self.tasks;
        let now = self.now;
        let status = s.update_status.as_ref();
        let state = status.map(|u| u.state);
        if matches!(
            state,
            Some(UpdateState::Paused | UpdateState::RollbackPaused)
        ) {
            return None;
        }
        let rolling_back = state == Some(UpdateState::RollbackStarted);
        let cfg = if rolling_back {
            s.spec.rollback_config
        } else {
            s.spec.update_config
        };
        let in_progress = state.is_some_and(UpdateState::in_progress);
        let views: Vec<usize> = (first..self.views.len())
            .filter(|&v| self.views[v].present && !self.views[v].dropped)
            .collect();

        // Slots whose current task must be replaced: (rank, view).
        let mut dirty: Vec<(u8, usize)> = Vec::new();
        for &v in &views {
            let view = &self.views[v];
            if view.new_task.is_some() {
                continue;
            }
            let Some(&l) = view.tasks.last() else {
                continue;
            };
            let t = &tasks[l];
            let live = self.desired[l] == TaskState::Running && !t.status.state.is_terminal();
            // A global task is replaced only where a new one may go (not on a paused node).
            if !(live || view.done) || view.wants == Some(false) || !svc.dirty(t) {
                continue;
            }
            let rank = if view.done || t.status.state < TaskState::Assigned {
                0
            } else if t.status.state < TaskState::Running {
                1
            } else {
                2
            };
            dirty.push((rank, v));
        }
        if !in_progress && dirty.is_empty() {
            return None;
        }
        let started_at = match status {
            Some(st) if in_progress => st.started_at,
            _ => now,
        };
        let mut new_status = (!in_progress).then(|| UpdateStatus {
            state: UpdateState::Updating,
            started_at: now,
            completed_at: 0,
            message: "update in progress".to_string(),
        });

        // Monitor: slots touched by this update, and those where a new task failed.
        let (mut updated, mut failed) = (0u64, 0u64);
        let mut first_failure: Option<(u64, &'a str)> = None;
        for v in first..self.views.len() {
            let view = &self.views[v];
            if view.dropped {
                continue;
            }
            let (mut touched, mut bad) = (false, false);
            for &i in &view.tasks {
                let t = &tasks[i];
                // Tasks on their way out (scaled away) no longer count.
                if self.removed[i]
                    || self.desired[i] == TaskState::Remove
                    || !Self::by_update(svc, t, started_at)
                {
                    continue;
                }
                touched = true;
                let st = t.status.state;
                if matches!(st, TaskState::Failed | TaskState::Rejected)
                    || (st == TaskState::Running && t.status.health == Health::Unhealthy)
                {
                    bad = true;
                    let key = (t.status.timestamp, t.id.as_str());
                    if first_failure.is_none_or(|f| key < f) {
                        first_failure = Some(key);
                    }
                }
            }
            updated += u64::from(touched);
            failed += u64::from(bad);
        }
        if let Some((_, task_id)) = first_failure
            && cfg.failure_action != FailureAction::Continue
            && failed * 1000 > u64::from(cfg.max_failure_permille) * updated
        {
            if cfg.failure_action == FailureAction::Rollback
                && !rolling_back
                && s.previous_spec.is_some()
            {
                return Some(format!(
                    "update rolled back: task {task_id} failed or ended early \
                     ({failed} of {updated} updated tasks failed)"
                ));
            }
            let (state, what) = if rolling_back {
                (UpdateState::RollbackPaused, "rollback")
            } else {
                (UpdateState::Paused, "update")
            };
            let extra = if cfg.failure_action == FailureAction::Rollback && !rolling_back {
                "; no previous spec to roll back to"
            } else {
                ""
            };
            self.set_status(
                s,
                UpdateStatus {
                    state,
                    started_at,
                    completed_at: 0,
                    message: format!(
                        "{what} paused: task {task_id} failed or ended early \
                         ({failed} of {updated} updated tasks failed){extra}"
                    ),
                },
            );
            return None;
        }

        // Slots still being updated: their new task does not serve yet, or served for less
        // than the update delay.
        let mut in_flight = 0usize;
        for &v in &views {
            let view = &self.views[v];
            if let Some(n) = view.new_task {
                let t = &self.created[n].task;
                if Self::by_update(svc, t, started_at) {
                    in_flight += 1;
                }
                continue;
            }
            if view.done {
                continue;
            }
            let Some(&l) = view.tasks.last() else {
                continue;
            };
            let t = &tasks[l];
            if !Self::by_update(svc, t, started_at) {
                continue;
            }
            if t.is_serving() {
                let until = t.status.timestamp.saturating_add(cfg.delay_ms);
                if now < until {
                    in_flight += 1;
                    self.wake(until);
                }
            } else {
                in_flight += 1;
            }
        }
        let free = if cfg.parallelism == 0 {
            usize::MAX
        } else {
            usize::try_from(cfg.parallelism)
                .unwrap_or(usize::MAX)
                .saturating_sub(in_flight)
        };
        dirty.sort_by_key(|&(rank, v)| (rank, self.views[v].key));
        let picked = dirty.len().min(free);
        for &(_, v) in &dirty[..picked] {
            let view = &self.views[v];
            let done = view.done;
            let Some(&l) = view.tasks.last() else {
                continue;
            };
            // Start-first keeps only a task that serves; one that doesn't yet just goes.
            if !done && (cfg.order == UpdateOrder::StopFirst || !tasks[l].is_serving()) {
                self.set_desired(l, TaskState::Shutdown);
            }
            self.create(svc, v, new_id);
        }
        if dirty.is_empty() && in_flight == 0 {
            // Done once the monitor window of every new task has passed.
            let mut until = 0u64;
            for &v in &views {
                let view = &self.views[v];
                if let Some(&l) = view.tasks.last() {
                    let t = &tasks[l];
                    if t.is_serving() && Self::by_update(svc, t, started_at) {
                        until = until.max(t.status.timestamp.saturating_add(cfg.monitor_ms));
                    }
                }
            }
            if now >= until {
                new_status = Some(UpdateStatus {
                    state: if rolling_back {
                        UpdateState::RollbackCompleted
                    } else {
                        UpdateState::Completed
                    },
                    started_at,
                    completed_at: now,
                    message: if rolling_back {
                        "rollback completed".to_string()
                    } else {
                        "update completed".to_string()
                    },
                });
            } else {
                self.wake(until);
            }
        }
        if let Some(st) = new_status {
            self.set_status(s, st);
        }
        None
    }

    // ---- after all services ----------------------------------------------------------

    /// Tasks meant to stop that never reached a node stop here; those of a node that is gone
    /// are orphaned; removed ones that stopped are deleted.
    fn sweep(&mut self) {
        let tasks = self.tasks;
        for (i, t) in tasks.iter().enumerate() {
            if self.removed[i] || t.service_id.is_empty() {
                continue;
            }
            let (d, o) = (self.desired[i], self.observed[i]);
            if d <= TaskState::Running {
                continue;
            }
            if o > TaskState::Running {
                if d == TaskState::Remove {
                    self.removed[i] = true;
                }
                continue;
            }
            if o < TaskState::Assigned || t.node_id.is_empty() {
                if d == TaskState::Remove {
                    self.removed[i] = true;
                } else {
                    self.set_observed(
                        i,
                        TaskState::Shutdown,
                        "stopped before it was assigned".to_string(),
                    );
                }
                continue;
            }
            let node = self.node(&t.node_id);
            if self.gone(node) {
                if d == TaskState::Remove {
                    self.removed[i] = true;
                } else {
                    let msg = format!("node {} is gone", t.node_id);
                    self.set_observed(i, TaskState::Orphaned, msg);
                }
            }
        }
    }

    /// At most `task_history` finished tasks per slot (at least one; more when the restart
    /// policy counts attempts); none for a global service's node that left the cluster.
    fn trim(&mut self, svcs: &[SvcInfo<'_>]) {
        for v in 0..self.views.len() {
            let view = &self.views[v];
            if view.dropped {
                continue;
            }
            let p = &svcs[view.svc].s.spec.task_template.restart_policy;
            // At least one: the last finished task tells the restart delay of the next and
            // which node rejected the slot.
            let mut keep = self
                .input
                .task_history
                .max(usize::try_from(p.max_attempts).unwrap_or(usize::MAX))
                .max(1);
            let node_left = matches!(view.key, SlotKey::Node(id) if self.node(id).is_none());
            if node_left {
                keep = 0;
            }
            let last = view.tasks.last().copied();
            let finished: Vec<usize> = view
                .tasks
                .iter()
                .copied()
                .filter(|&i| {
                    // A slot's ended current task is no history, until replaced.
                    let current =
                        !node_left && view.done && view.new_task.is_none() && Some(i) == last;
                    !self.removed[i] && self.finished(i) && !current
                })
                .collect();
            if finished.len() > keep {
                for &i in &finished[..finished.len() - keep] {
                    self.removed[i] = true;
                }
            }
        }
    }

    /// Why task `t` (at position `pos` of view `vi`) must wait, if it must, and until when
    /// when that is a time.
    fn hold(
        &self,
        svc: &SvcInfo<'_>,
        vi: usize,
        pos: usize,
        t: &Task,
    ) -> Option<(String, Option<u64>)> {
        let tasks = self.tasks;
        let view = &self.views[vi];
        // Stop-first: an older task of the slot is still stopping on a node that will report.
        for &o in &view.tasks[..pos] {
            if self.removed[o]
                || self.desired[o] <= TaskState::Running
                || self.observed[o] < TaskState::Assigned
                || self.observed[o] > TaskState::Running
            {
                continue;
            }
            let node = self.node(&tasks[o].node_id);
            if !Self::lost(node) && node.is_some_and(|n| n.spec.availability != Availability::Drain)
            {
                return Some((format!("waiting for task {} to stop", tasks[o].id), None));
            }
        }
        // Restart delay after the previous task of the slot ended.
        let prev = view.tasks[..pos]
            .iter()
            .rev()
            .find(|&&o| !self.removed[o])?;
        let prev = &tasks[*prev];
        let st = prev.status.state;
        let own_end = matches!(st, TaskState::Complete | TaskState::Failed)
            || (svc.global && st == TaskState::Rejected);
        let delay = svc.s.spec.task_template.restart_policy.delay_ms;
        if own_end && delay > 0 && prev.spec == t.spec && prev.status.timestamp <= t.created_at {
            let until = prev.status.timestamp.saturating_add(delay);
            if self.now < until {
                let reason = format!(
                    "restart delay: waiting {} after task {} {}",
                    fmt_ms(delay),
                    prev.id,
                    st
                );
                return Some((reason, Some(until)));
            }
        }
        None
    }

    fn schedule(&mut self, svcs: &[SvcInfo<'_>]) {
        let tasks = self.tasks;
        let mut sch = Scheduler::new(self.input.nodes);
        let svc_index: HashMap<&str, usize> = svcs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.s.id.as_str(), i))
            .collect();
        for (i, t) in tasks.iter().enumerate() {
            let o = self.observed[i];
            if self.removed[i]
                || t.node_id.is_empty()
                || !(TaskState::Assigned..=TaskState::Running).contains(&o)
            {
                continue;
            }
            let svc = svc_index.get(t.service_id.as_str()).map(|&si| &svcs[si]);
            let ports: Cow<'_, [HostPort]> = match svc {
                Some(svc) if t.host_ports.is_empty() => Cow::Borrowed(&svc.host_ports),
                _ => Cow::Owned(task_host_ports(t, svc.map(|s| &*s.s))),
            };
            sch.add_task(
                &t.node_id,
                &t.service_id,
                t.spec.resources.reservations,
                &ports,
                self.desired[i] == TaskState::Running,
            );
        }

        // What waits for a node: existing unassigned tasks, then the new ones.
        enum Target {
            Old(usize),
            New(usize),
        }
        let mut waiting: Vec<(Target, usize)> = Vec::new();
        for vi in 0..self.views.len() {
            let view = &self.views[vi];
            if view.dropped {
                continue;
            }
            for (pos, &i) in view.tasks.iter().enumerate() {
                if !self.removed[i]
                    && self.desired[i] == TaskState::Running
                    && self.observed[i] < TaskState::Assigned
                {
                    waiting.push((Target::Old(i), pos));
                }
            }
        }
        for (n, nt) in self.created.iter().enumerate() {
            if !nt.cancelled {
                waiting.push((Target::New(n), self.views[nt.view].tasks.len()));
            }
        }

        let mut requests: Vec<Request<'_>> = Vec::new();
        let mut asked: Vec<usize> = Vec::new();
        let mut outcome: Vec<Option<Decision>> = Vec::with_capacity(waiting.len());
        let mut holds: Vec<Option<String>> = Vec::with_capacity(waiting.len());
        let mut wakes: Vec<u64> = Vec::new();
        for (target, pos) in &waiting {
            let (vi, t) = match *target {
                Target::Old(i) => (self.task_view[i], &tasks[i]),
                Target::New(n) => (self.created[n].view, &self.created[n].task),
            };
            let svc = &svcs[self.views[vi].svc];
            let hold = self.hold(svc, vi, *pos, t);
            if let Some((_, Some(at))) = hold {
                wakes.push(at);
            }
            holds.push(hold.map(|h| h.0));
        }
        for at in wakes {
            self.wake(at);
        }
        for (k, (target, pos)) in waiting.iter().enumerate() {
            if let Some(reason) = holds[k].take() {
                outcome.push(Some(Decision::Pending { reason }));
                continue;
            }
            outcome.push(None);
            let (vi, t) = match *target {
                Target::Old(i) => (self.task_view[i], &tasks[i]),
                Target::New(n) => (self.created[n].view, &self.created[n].task),
            };
            let view = &self.views[vi];
            let svc = &svcs[view.svc];
            let avoid: Vec<&str> = if svc.global {
                Vec::new()
            } else {
                view.tasks[..*pos]
                    .iter()
                    .filter(|&&o| !self.removed[o])
                    .map(|&o| &tasks[o])
                    .filter(|o| {
                        o.status.state == TaskState::Rejected
                            && !o.node_id.is_empty()
                            && o.spec == t.spec
                    })
                    .map(|o| o.node_id.as_str())
                    .collect()
            };
            let node_id = match view.key {
                SlotKey::Node(id) => Some(id),
                SlotKey::Replica(_) => None,
            };
            requests.push(Request {
                service_id: svc.s.id.as_str(),
                spec: &t.spec,
                host_ports: &svc.host_ports,
                node_id,
                avoid,
            });
            asked.push(k);
        }
        let decisions = sch.schedule(&requests);
        drop(requests);
        for (k, d) in asked.into_iter().zip(decisions) {
            outcome[k] = Some(d);
        }

        for ((target, _), d) in waiting.into_iter().zip(outcome) {
            let Some(d) = d else {
                continue;
            };
            match target {
                Target::New(n) => {
                    let t = &mut self.created[n].task;
                    match d {
                        Decision::Assign { node_id } => {
                            t.node_id = node_id;
                            t.status.state = TaskState::Assigned;
                            t.status.message = "assigned".to_string();
                        }
                        Decision::Pending { reason } => {
                            t.status.state = TaskState::Pending;
                            t.status.message = reason;
                        }
                    }
                }
                Target::Old(i) => match d {
                    Decision::Assign { node_id } => {
                        self.sched.insert(i, Sched::Assign(node_id));
                    }
                    Decision::Pending { reason } => {
                        let st = &tasks[i].status;
                        if st.state != TaskState::Pending || st.message != reason {
                            self.sched.insert(i, Sched::Pending(reason));
                        }
                    }
                },
            }
        }
    }

    fn finish(self) -> Plan {
        let tasks = self.tasks;
        let mut plan = Plan {
            next_wakeup_ms: self.wake,
            services: self.service_changes,
            ..Plan::default()
        };
        let mut sched = self.sched;
        let mut msgs = self.observed_msg;
        for (i, t) in tasks.iter().enumerate() {
            if self.removed[i] {
                plan.remove.push(t.id.clone());
                continue;
            }
            match sched.remove(&i) {
                Some(Sched::Assign(node_id)) => plan.tasks.push(TaskChange::Assign {
                    task_id: t.id.clone(),
                    node_id,
                }),
                Some(Sched::Pending(reason)) => plan.tasks.push(TaskChange::Pending {
                    task_id: t.id.clone(),
                    reason,
                }),
                None => {}
            }
            if self.desired[i] != t.desired_state {
                plan.tasks.push(TaskChange::Desired {
                    task_id: t.id.clone(),
                    state: self.desired[i],
                });
            }
            if self.observed[i] != t.status.state {
                plan.tasks.push(TaskChange::Observed {
                    task_id: t.id.clone(),
                    state: self.observed[i],
                    message: msgs.remove(&i).unwrap_or_default(),
                });
            }
        }
        plan.create = self
            .created
            .into_iter()
            .filter(|n| !n.cancelled)
            .map(|n| n.task)
            .collect();
        debug!(
            create = plan.create.len(),
            changes = plan.tasks.len(),
            remove = plan.remove.len(),
            services = plan.services.len(),
            next_wakeup_ms = ?plan.next_wakeup_ms,
            "plan"
        );
        plan
    }
}

/// The service as it is once a rollback is applied at `now` (the rule of [`crate::apply()`]).
fn rolled_back(s: &Service, now: u64, message: String) -> Service {
    let mut r = s.clone();
    if let Some(previous) = r.previous_spec.take() {
        let failed = std::mem::replace(&mut r.spec, previous);
        r.previous_spec = Some(failed);
        r.previous_spec_version = r.spec_version;
        r.spec_version += 1;
    }
    r.update_status = Some(UpdateStatus {
        state: UpdateState::RollbackStarted,
        started_at: now,
        completed_at: 0,
        message,
    });
    r
}

/// `1.5s`, `200ms`, `2m`.
fn fmt_ms(ms: u64) -> String {
    if ms.is_multiple_of(60_000) && ms >= 60_000 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 1000 {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_ms;

    #[test]
    fn durations_read_like_flags() {
        assert_eq!(fmt_ms(5_000), "5s");
        assert_eq!(fmt_ms(120_000), "2m");
        assert_eq!(fmt_ms(1_500), "1.500s");
        assert_eq!(fmt_ms(250), "250ms");
    }
}
