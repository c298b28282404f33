//! The routing mesh on this node: the data path chosen at start, fed with the plan made
//! from every network map ([`crate::meshplan`]).

use mesh_ingress::MeshPlan;
use mesh_ingress::userspace::{MeshStats, UserspaceConfig, UserspaceMesh};
use tracing::{info, warn};

use crate::config::DataplaneChoice;

/// The routing mesh's data path.
pub struct Mesh {
    userspace: UserspaceMesh,
    kind: &'static str,
}

impl Mesh {
    /// Starts the data path `choice` asks for, in the calling thread's namespace.
    pub fn start(choice: DataplaneChoice) -> anyhow::Result<Self> {
        let kind = match choice {
            DataplaneChoice::Userspace | DataplaneChoice::Auto => "userspace",
            DataplaneChoice::Ebpf => {
                anyhow::bail!(
                    "invalid --dataplane: the eBPF data path is not available in this build; use --dataplane userspace or auto"
                )
            }
        };
        let userspace = UserspaceMesh::start(UserspaceConfig::default())
            .map_err(|e| anyhow::anyhow!("starting the routing mesh's userspace path: {e}"))?;
        info!(dataplane = kind, "routing mesh started");
        Ok(Self { userspace, kind })
    }

    /// `ebpf` or `userspace`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Serves `plan`; what cannot be applied is logged, the rest is served.
    pub fn apply(&self, plan: &MeshPlan) {
        let report = self.userspace.apply(plan);
        if let Some(e) = &report.refused {
            warn!(error = %e, "the routing mesh refused the plan");
        }
        for f in &report.failures {
            warn!(item = %f.item, error = %f.error, "routing mesh");
        }
        for o in &report.opened {
            info!(item = %o, "routing mesh: opened");
        }
        for c in &report.closed {
            info!(item = %c, "routing mesh: closed");
        }
    }

    /// Live figures (listeners and VIP sandboxes also on the eBPF path).
    pub fn stats(&self) -> MeshStats {
        self.userspace.stats()
    }

    /// Closes every listener; open relays end.
    pub fn shutdown(self) {
        self.userspace.shutdown();
    }
}
