//! Glue between the replicated state and the pure orchestrator (`mesh-orchestrator`).

use crate::state::ClusterState;
use crate::tasks::TaskPlan;

/// One orchestrator pass over `s` at `now`: the plan to write, and when to look again.
pub fn plan(
    s: &ClusterState,
    now: u64,
    new_id: &mut dyn FnMut() -> String,
) -> (TaskPlan, Option<u64>) {
    let _ = (s, now, new_id);
    (TaskPlan::default(), None)
}
