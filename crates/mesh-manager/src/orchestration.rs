//! Glue between the replicated state and the pure orchestrator (`mesh-orchestrator`).

use mesh_api::{Node, Service, Task};

use crate::state::ClusterState;
use crate::tasks::TaskPlan;

/// What the orchestrator reads, copied out of the store so that planning does not hold it.
pub struct Snapshot {
    nodes: Vec<Node>,
    services: Vec<Service>,
    tasks: Vec<Task>,
}

impl Snapshot {
    /// Copies the objects the orchestrator needs.
    pub fn of(s: &ClusterState) -> Self {
        Self {
            nodes: s.nodes.values().cloned().collect(),
            services: s.services.values().cloned().collect(),
            tasks: s.tasks.values().cloned().collect(),
        }
    }

    /// One orchestrator pass at `now`: the plan to write, and when to look again.
    pub fn plan(&self, now: u64, new_id: &mut dyn FnMut() -> String) -> (TaskPlan, Option<u64>) {
        let input = mesh_orchestrator::Input::new(&self.nodes, &self.services, &self.tasks, now);
        let plan = mesh_orchestrator::plan(&input, new_id);
        let next = plan.next_wakeup_ms;
        (plan, next)
    }
}
