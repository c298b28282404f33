//! `swarm version`.

use std::io::Write;

use mesh_api::api::{Info, routes};

use crate::client::Client;
use crate::error::{CliError, Result};

/// The client's block of `swarm version`.
pub fn client_block() -> String {
    format!(
        "Client:\n Version:       {}\n API version:   {}\n OS/Arch:       {}/{}\n",
        env!("CARGO_PKG_VERSION"),
        mesh_api::api::PREFIX.trim_start_matches('/'),
        std::env::consts::OS,
        std::env::consts::ARCH,
    )
}

/// The daemon's block of `swarm version`.
pub fn server_block(info: &Info) -> String {
    let state = if info.local_node_state.is_empty() {
        "inactive"
    } else {
        info.local_node_state.as_str()
    };
    format!(
        "Server:\n Version:       {}\n Swarm:         {state}\n",
        info.version
    )
}

/// Prints the client's version, then the daemon's. Like `docker version`, a daemon that
/// cannot be reached is reported on stderr after the client's block and fails the command.
pub async fn run(client: Result<Client>, out: &mut dyn Write) -> Result<()> {
    out.write_all(client_block().as_bytes())
        .map_err(CliError::Output)?;
    let info: Info = client?.get(routes::INFO).await?;
    write!(out, "\n{}", server_block(&info)).map_err(CliError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_name_the_versions() {
        let c = client_block();
        assert!(c.starts_with("Client:\n Version:       0."), "{c}");
        assert!(c.contains(" API version:   v1\n"), "{c}");
        let info = Info {
            version: "9.9.9".into(),
            local_node_state: "active".into(),
            ..Default::default()
        };
        assert_eq!(
            server_block(&info),
            "Server:\n Version:       9.9.9\n Swarm:         active\n"
        );
    }
}
