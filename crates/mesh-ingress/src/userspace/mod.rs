//! The userspace data path.
