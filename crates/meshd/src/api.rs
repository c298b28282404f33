//! The control API: HTTP/JSON over the unix socket (and mTLS TCP), routes from
//! `mesh_api::api::routes`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mesh_api::NodeRole;
use mesh_api::api::{
    ErrorBody, ErrorKind, InitRequest, JoinRequest, JoinTokenResponse, LeaveRequest, LogsQuery,
    NodeRemoveQuery, TaskQuery, routes,
};
use mesh_api::node::NodeUpdate;
use serde::Serialize;

use crate::daemon::Daemon;

/// An API error as an HTTP response.
pub struct ApiError(pub ErrorBody);

impl From<ErrorBody> for ApiError {
    fn from(e: ErrorBody) -> Self {
        ApiError(e)
    }
}

impl From<mesh_manager::ManagerError> for ApiError {
    fn from(e: mesh_manager::ManagerError) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

#[derive(Serialize)]
struct Empty {}

/// The router of the control API.
pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route(routes::INFO, get(info))
        .route(routes::SWARM_INIT, post(init))
        .route(routes::SWARM_JOIN, post(join))
        .route(routes::SWARM_LEAVE, post(leave))
        .route(routes::SWARM, get(swarm))
        .route(routes::JOIN_TOKEN, get(join_token))
        .route(routes::JOIN_TOKEN_ROTATE, post(rotate_token))
        .route(routes::NODES, get(node_ls))
        .route(routes::NODE, get(node_inspect).delete(node_rm))
        .route(routes::NODE_UPDATE, post(node_update))
        .route(routes::NETWORKS, get(network_ls).post(network_create))
        .route(routes::NETWORK, get(network_inspect).delete(network_rm))
        .route(routes::NETWORK_CONNECT, post(network_connect))
        .route(routes::NETWORK_DISCONNECT, post(network_disconnect))
        .route(routes::SERVICES, get(service_ls).post(service_create))
        .route(routes::SERVICE, get(service_inspect).delete(service_rm))
        .route(routes::SERVICE_UPDATE, post(service_update))
        .route(routes::TASKS, get(task_ls))
        .route(routes::TASK, get(task_inspect))
        .route(routes::TASK_LOGS, get(task_logs))
        .route(routes::CONTAINERS, post(container_run))
        .route(routes::CONTAINER, axum::routing::delete(container_rm))
        .route(routes::CONTAINER_STOP, post(container_stop))
        .route(routes::IMAGES, get(image_ls))
        .route(routes::IMAGES_LOAD, post(image_load))
        .route(routes::IMAGE, axum::routing::delete(image_rm))
        .fallback(not_found)
        .with_state(d)
}

async fn not_found() -> ApiError {
    ApiError(ErrorBody::new(
        ErrorKind::NotFound,
        "no such API route; is the swarm CLI newer than this meshd?",
    ))
}

async fn info(State(d): State<Arc<Daemon>>) -> ApiResult<mesh_api::api::Info> {
    Ok(Json(d.info().await))
}

async fn init(
    State(d): State<Arc<Daemon>>,
    Json(req): Json<InitRequest>,
) -> ApiResult<mesh_api::api::InitResponse> {
    Ok(Json(d.init(req).await?))
}

async fn join(
    State(d): State<Arc<Daemon>>,
    Json(req): Json<JoinRequest>,
) -> ApiResult<mesh_api::api::JoinResponse> {
    Ok(Json(d.join(req).await?))
}

async fn leave(State(d): State<Arc<Daemon>>, Json(req): Json<LeaveRequest>) -> ApiResult<Empty> {
    d.leave(req.force).await?;
    Ok(Json(Empty {}))
}

async fn swarm(State(d): State<Arc<Daemon>>) -> ApiResult<mesh_api::api::SwarmView> {
    Ok(Json(d.manager()?.swarm_view()?))
}

fn parse_role(role: &str) -> Result<NodeRole, ApiError> {
    role.parse::<NodeRole>().map_err(|_| {
        ApiError(ErrorBody::new(
            ErrorKind::InvalidArgument,
            format!("unknown role {role:?}: use `worker` or `manager`"),
        ))
    })
}

async fn join_token(
    State(d): State<Arc<Daemon>>,
    Path(role): Path<String>,
) -> ApiResult<JoinTokenResponse> {
    let role = parse_role(&role)?;
    let m = d.manager()?;
    let token = m.join_token(role)?;
    Ok(Json(JoinTokenResponse {
        role,
        token,
        manager_addr: manager_addr(&d, &m),
    }))
}

fn manager_addr(d: &Daemon, m: &mesh_manager::Manager) -> String {
    let _ = d;
    m.store()
        .read(|s| s.nodes.get(m.node_id()).map(|n| n.control_addr.clone()))
        .unwrap_or_default()
}

async fn rotate_token(
    State(d): State<Arc<Daemon>>,
    Path(role): Path<String>,
) -> ApiResult<JoinTokenResponse> {
    let role = parse_role(&role)?;
    let m = d.manager()?;
    let token = m.rotate_token(role).await?;
    Ok(Json(JoinTokenResponse {
        role,
        token,
        manager_addr: manager_addr(&d, &m),
    }))
}

async fn node_ls(State(d): State<Arc<Daemon>>) -> ApiResult<Vec<mesh_api::Node>> {
    Ok(Json(d.manager()?.list_nodes(true).await))
}

async fn node_inspect(
    State(d): State<Arc<Daemon>>,
    Path(node): Path<String>,
) -> ApiResult<mesh_api::Node> {
    Ok(Json(d.manager()?.get_node(&node).await?))
}

async fn node_update(
    State(d): State<Arc<Daemon>>,
    Path(node): Path<String>,
    Json(upd): Json<NodeUpdate>,
) -> ApiResult<mesh_api::Node> {
    Ok(Json(d.manager()?.update_node(&node, &upd).await?))
}

async fn node_rm(
    State(d): State<Arc<Daemon>>,
    Path(node): Path<String>,
    Query(q): Query<NodeRemoveQuery>,
) -> ApiResult<Empty> {
    d.manager()?.remove_node(&node, q.force).await?;
    Ok(Json(Empty {}))
}

async fn network_ls(State(d): State<Arc<Daemon>>) -> ApiResult<Vec<mesh_api::NetworkView>> {
    Ok(Json(d.manager()?.list_networks()))
}

async fn network_create(
    State(d): State<Arc<Daemon>>,
    Json(spec): Json<mesh_api::NetworkSpec>,
) -> ApiResult<mesh_api::Network> {
    Ok(Json(d.manager()?.create_network(spec).await?))
}

async fn network_inspect(
    State(d): State<Arc<Daemon>>,
    Path(network): Path<String>,
) -> ApiResult<mesh_api::NetworkView> {
    Ok(Json(d.manager()?.get_network(&network)?))
}

async fn network_rm(State(d): State<Arc<Daemon>>, Path(network): Path<String>) -> ApiResult<Empty> {
    d.manager()?.remove_network(&network).await?;
    Ok(Json(Empty {}))
}

async fn network_connect(
    State(d): State<Arc<Daemon>>,
    Path(network): Path<String>,
    Json(req): Json<mesh_api::ConnectRequest>,
) -> ApiResult<mesh_api::ConnectResponse> {
    Ok(Json(d.connect(&network, req).await?))
}

async fn network_disconnect(
    State(d): State<Arc<Daemon>>,
    Path(network): Path<String>,
    Json(req): Json<mesh_api::DisconnectRequest>,
) -> ApiResult<Empty> {
    d.disconnect(&network, req).await?;
    Ok(Json(Empty {}))
}

async fn service_ls(State(d): State<Arc<Daemon>>) -> ApiResult<Vec<mesh_api::ServiceView>> {
    Ok(Json(d.manager()?.list_services()))
}

async fn service_create(
    State(d): State<Arc<Daemon>>,
    Json(spec): Json<mesh_api::ServiceSpec>,
) -> ApiResult<mesh_api::Service> {
    Ok(Json(d.manager()?.create_service(spec).await?))
}

async fn service_inspect(
    State(d): State<Arc<Daemon>>,
    Path(service): Path<String>,
) -> ApiResult<mesh_api::ServiceView> {
    Ok(Json(d.manager()?.get_service(&service)?))
}

async fn service_update(
    State(d): State<Arc<Daemon>>,
    Path(service): Path<String>,
    Json(upd): Json<mesh_api::ServiceUpdate>,
) -> ApiResult<mesh_api::Service> {
    Ok(Json(d.manager()?.update_service(&service, upd).await?))
}

async fn service_rm(State(d): State<Arc<Daemon>>, Path(service): Path<String>) -> ApiResult<Empty> {
    d.manager()?.remove_service(&service).await?;
    Ok(Json(Empty {}))
}

async fn task_ls(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<TaskQuery>,
) -> ApiResult<Vec<mesh_api::Task>> {
    Ok(Json(d.manager()?.list_tasks(&q)?))
}

async fn task_inspect(
    State(d): State<Arc<Daemon>>,
    Path(task): Path<String>,
) -> ApiResult<mesh_api::Task> {
    Ok(Json(d.manager()?.get_task(&task)?))
}

async fn task_logs(
    State(d): State<Arc<Daemon>>,
    Path(task): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<mesh_api::api::LogChunk> {
    Ok(Json(d.task_logs(&task, q).await?))
}

async fn container_run(
    State(d): State<Arc<Daemon>>,
    Json(req): Json<mesh_api::api::RunRequest>,
) -> ApiResult<mesh_api::Task> {
    Ok(Json(d.run_container(req).await?))
}

async fn container_rm(
    State(d): State<Arc<Daemon>>,
    Path(container): Path<String>,
    Query(q): Query<NodeRemoveQuery>,
) -> ApiResult<Empty> {
    d.remove_container(&container, q.force).await?;
    Ok(Json(Empty {}))
}

async fn container_stop(
    State(d): State<Arc<Daemon>>,
    Path(container): Path<String>,
) -> ApiResult<Empty> {
    d.stop_container(&container).await?;
    Ok(Json(Empty {}))
}

async fn image_ls(State(d): State<Arc<Daemon>>) -> ApiResult<Vec<mesh_api::api::ImageSummary>> {
    Ok(Json(d.images().await?))
}

async fn image_load(
    State(d): State<Arc<Daemon>>,
    Json(req): Json<mesh_api::api::ImageLoadRequest>,
) -> ApiResult<Vec<mesh_api::api::ImageSummary>> {
    Ok(Json(d.load_image(&req.path).await?))
}

async fn image_rm(
    State(d): State<Arc<Daemon>>,
    Path(image): Path<String>,
    Query(q): Query<NodeRemoveQuery>,
) -> ApiResult<Empty> {
    d.remove_image(&image, q.force).await?;
    Ok(Json(Empty {}))
}
