//! The sandbox plumbing this crate relies on (namespaces, bridge, veths, routes).

pub(crate) use mesh_sandbox::{
    EndpointSpec, SandboxError, SandboxSpec, VETH_ID_CHARS, attach_endpoint, delete_sandbox,
    detach_endpoint, ensure_sandbox, list_endpoints, list_sandboxes, netns_path, run_in_netns,
    sync_routes,
};
