//! swarm, the meshd command-line client.

fn main() -> std::process::ExitCode {
    swarm::main_entry()
}
