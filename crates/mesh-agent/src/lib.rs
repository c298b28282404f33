//! meshd's node-local image store and OCI container runtime.
//!
//! - [`ImageStore`] loads OCI image layouts and `docker save` tarballs, unpacks each layer
//!   once (by chain id) and resolves references the way docker users type them.
//! - [`Runtime`] is the container interface meshd drives; [`RuncRuntime`] implements it
//!   with runc, each container supervised by a shim ([`shim_main`]) that survives meshd
//!   restarts and records the exit code.
//! - [`HealthState`] and [`run_health_check`] evaluate health checks.
//!
//! This crate knows nothing of the cluster: no tasks, no scheduling, no managers. It never
//! creates network namespaces: the caller hands one over in [`ContainerConfig::netns`].

mod config;
mod digest;
mod error;
mod health;
mod image;
mod logs;
mod reference;
mod runc;
mod runtime;
mod shim;
mod spec;
mod user;

pub use config::{ContainerConfig, Limits, MountSpec};
pub use error::{ImageError, RuntimeError};
pub use health::{
    HealthCheck, HealthCmd, HealthProbe, HealthState, HealthStatus, run_health_check,
};
pub use image::{Image, ImageConfig, ImageHealthcheck, ImageStore, LoadedImage, RemovedImage};
pub use logs::{LogFollower, read_log, read_log_tail};
pub use runc::{OciRuntime, RuncOptions, RuncRuntime};
pub use runtime::{ContainerInfo, ContainerState, EXEC_OUTPUT_LIMIT, ExecResult, Exit, Runtime};
pub use shim::shim_main;
