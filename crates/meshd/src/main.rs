//! meshd, the daemon on every host.

fn main() {}
