//! The daemon's API for images (this node's store), standalone containers and task logs.

use std::path::Path;
use std::time::Duration;

use mesh_api::api::{ErrorBody, ErrorKind, ImageSummary, LogChunk, LogsQuery, RunRequest};
use mesh_api::{Task, TaskState};
use mesh_manager::rpc;

use crate::daemon::{Daemon, remote_err};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn err(kind: ErrorKind, msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(kind, msg)
}

fn not_in_swarm() -> ErrorBody {
    err(
        ErrorKind::NotManager,
        "This node is not part of a swarm. Use \"swarm init\" or \"swarm join\" first.",
    )
}

impl Daemon {
    /// `swarm image ls`: this node's images.
    pub async fn images(&self) -> Result<Vec<ImageSummary>, ErrorBody> {
        self.engine()
            .list_images()
            .await
            .map_err(|e| err(ErrorKind::Internal, format!("{e:#}")))
    }

    /// `swarm image load -i FILE`: into this node's store.
    pub async fn load_image(&self, path: &str) -> Result<Vec<ImageSummary>, ErrorBody> {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!(
                    "invalid --input: {path:?} is not an absolute path; give the archive's full path"
                ),
            ));
        }
        if !p.is_file() {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("invalid --input: {path} is not a file on this node"),
            ));
        }
        self.engine()
            .load_image(p)
            .await
            .map_err(|e| err(ErrorKind::InvalidArgument, format!("{e:#}")))
    }

    /// `swarm image rm`.
    pub async fn remove_image(&self, reference: &str, force: bool) -> Result<(), ErrorBody> {
        self.engine()
            .remove_image(reference, force)
            .await
            .map_err(|e| {
                let msg = format!("{e:#}");
                let kind = if msg.contains("no image matches") {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::FailedPrecondition
                };
                err(kind, msg)
            })
    }

    /// `swarm service logs` / `container logs`: a piece of a task's output, from its node.
    pub async fn task_logs(&self, reference: &str, q: LogsQuery) -> Result<LogChunk, ErrorBody> {
        if let Ok(m) = self.manager() {
            return m.task_logs(reference, q).await.map_err(ErrorBody::from);
        }
        // A worker serves the logs of its own containers.
        let id = reference.to_string();
        self.engine()
            .read_logs(&id, q)
            .await
            .map_err(|e| err(ErrorKind::NotFound, format!("{e:#}")))
    }

    /// `swarm run`: a standalone container on this node.
    pub async fn run_container(&self, req: RunRequest) -> Result<Task, ErrorBody> {
        let Some(active) = self.active() else {
            return Err(not_in_swarm());
        };
        let node_id = active.local_state().node_id;
        if !self.engine().has_image(&req.spec.container.image).await {
            return Err(err(
                ErrorKind::FailedPrecondition,
                format!(
                    "image {} is not present on this node; load it with `swarm image load -i FILE`",
                    req.spec.container.image
                ),
            ));
        }
        if let Ok(m) = self.manager() {
            return m
                .run_container(&node_id, req)
                .await
                .map_err(ErrorBody::from);
        }
        let body = serde_json::to_vec(&req).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let reply = active
            .call_manager(rpc::RUN, body, CALL_TIMEOUT)
            .await
            .map_err(remote_err)?;
        serde_json::from_slice(&reply).map_err(|e| err(ErrorKind::Internal, e.to_string()))
    }

    /// `swarm container stop`: the container stops and stays (for its logs and exit code).
    pub async fn stop_container(&self, reference: &str) -> Result<(), ErrorBody> {
        self.set_container_desired(reference, TaskState::Shutdown)
            .await
    }

    async fn set_container_desired(
        &self,
        reference: &str,
        state: TaskState,
    ) -> Result<(), ErrorBody> {
        let Some(active) = self.active() else {
            return Err(not_in_swarm());
        };
        if let Ok(m) = self.manager() {
            let t = m.get_task(reference).map_err(ErrorBody::from)?;
            if !t.service_id.is_empty() {
                return Err(err(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "{reference} is a task of service {}; scale or update the service instead",
                        t.service_name
                    ),
                ));
            }
            m.set_task_desired(&t.id, state)
                .await
                .map_err(ErrorBody::from)?;
            return Ok(());
        }
        let body = serde_json::to_vec(&rpc::ContainerDesiredRequest {
            reference: reference.to_string(),
            state,
        })
        .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        active
            .call_manager(rpc::CONTAINER_DESIRED, body, CALL_TIMEOUT)
            .await
            .map_err(remote_err)?;
        Ok(())
    }

    /// `swarm container rm [-f]`: a running container needs `force`.
    pub async fn remove_container(&self, reference: &str, force: bool) -> Result<(), ErrorBody> {
        if !force && let Ok(m) = self.manager() {
            let t = m.get_task(reference).map_err(ErrorBody::from)?;
            if !t.status.state.is_terminal() {
                return Err(err(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "container {} is {}; stop it first or use `swarm container rm -f`",
                        t.service_name, t.status.state
                    ),
                ));
            }
        }
        self.set_container_desired(reference, TaskState::Remove)
            .await
    }
}
