//! swarm, the meshd command-line client.
//!
//! It speaks only meshd's HTTP/JSON control API ([`mesh_api::api`]), over the daemon's
//! unix socket or mutual-TLS TCP. The library half exposes the [`client::Client`] and
//! the pure formatters so that tests and tools can reuse them; `main.rs` only calls
//! [`main_entry`].

#![warn(missing_docs)]

pub mod client;
pub mod commands;
pub mod error;
pub mod format;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

pub use client::{Client, Host, TlsFiles};
pub use commands::Cli;
pub use error::CliError;

/// Exit code of a failed command (usage errors exit with 2, from clap; `swarm run` exits
/// with its container's code).
pub const EXIT_FAILURE: u8 = 1;

/// Sends logs to stderr: `debug` with `-D`, otherwise as `SWARM_LOG` says (default `warn`).
fn init_tracing(debug: bool) {
    let filter = if debug {
        EnvFilter::new("debug")
    } else {
        EnvFilter::try_from_env("SWARM_LOG").unwrap_or_else(|_| EnvFilter::new("warn"))
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false)
        .try_init();
}

/// Parses the command line, runs it and turns the outcome into the process exit code:
/// 0 on success, 1 on failure (the message on stderr), 2 on a usage error, and for
/// `swarm run` the container's exit code (125 when it could not run).
pub fn main_entry() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.debug);
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = commands::run(cli, &mut out).and_then(|()| out.flush().map_err(CliError::Output));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            if !e.already_reported() {
                let _ = out.flush();
                let _ = writeln!(io::stderr().lock(), "{e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
