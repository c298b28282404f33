//! The container supervisor: `mesh-shim --runc PATH --root DIR --bundle DIR --id ID`.
//! See `mesh_agent::shim_main`.

fn main() {
    std::process::exit(mesh_agent::shim_main(std::env::args_os().skip(1).collect()));
}
