//! Node-local image store and OCI container runtime.
