//! swarm, the meshd command-line client.

fn main() {}
