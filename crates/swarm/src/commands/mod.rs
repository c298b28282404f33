//! The command line: flags (clap) and the code of each verb.

pub mod container;
pub mod image;
pub mod network;
pub mod node;
pub mod service;
pub mod swarm;
pub mod tasks;
pub mod version;

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mesh_api::api::{Info, routes};

use crate::client::{Client, Host, TlsFiles};
use crate::error::{CliError, Result};

/// Command-line client of meshd.
#[derive(Debug, Parser)]
#[command(
    name = "swarm",
    version,
    about = "Command-line client of meshd, the container orchestrator",
    propagate_version = true,
    disable_help_subcommand = true,
    after_help = "Environment:\n  SWARM_HOST       daemon address, like -H\n  SWARM_CERT_PATH  directory with ca.crt, node.crt and node.key for tcp:// hosts\n  SWARM_LOG        log filter, e.g. debug"
)]
pub struct Cli {
    /// Connection and logging flags.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags valid before or after any verb.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Daemon to talk to: unix:///PATH, or tcp://HOST[:PORT] (mutual TLS, port 2376 by default).
    #[arg(
        short = 'H',
        long,
        env = "SWARM_HOST",
        global = true,
        help_heading = "Global Options",
        value_name = "HOST",
        default_value = crate::client::DEFAULT_HOST
    )]
    pub host: Host,
    /// Root CA certificate of the cluster (PEM), for tcp:// hosts.
    #[arg(
        long,
        global = true,
        help_heading = "Global Options",
        value_name = "FILE"
    )]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate (PEM), for tcp:// hosts.
    #[arg(
        long,
        global = true,
        help_heading = "Global Options",
        value_name = "FILE"
    )]
    pub tlscert: Option<PathBuf>,
    /// Client private key (PEM), for tcp:// hosts.
    #[arg(
        long,
        global = true,
        help_heading = "Global Options",
        value_name = "FILE"
    )]
    pub tlskey: Option<PathBuf>,
    /// Directory holding ca.crt, node.crt and node.key, used when the TLS flags are absent.
    #[arg(
        long = "cert-path",
        env = "SWARM_CERT_PATH",
        global = true,
        help_heading = "Global Options",
        value_name = "DIR",
        hide = true
    )]
    pub cert_path: Option<PathBuf>,
    /// Print debug logs on stderr (or set SWARM_LOG, e.g. SWARM_LOG=debug).
    #[arg(short = 'D', long, global = true, help_heading = "Global Options")]
    pub debug: bool,
}

/// The verbs of `swarm`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Initialize a swarm: this node becomes its first manager.
    Init(swarm::InitArgs),
    /// Join a swarm as a worker or a manager.
    Join(swarm::JoinArgs),
    /// Manage join tokens.
    JoinToken(swarm::JoinTokenArgs),
    /// Leave the swarm.
    Leave(swarm::LeaveArgs),
    /// Show the state of the swarm as this node sees it.
    Info(swarm::InfoArgs),
    /// Manage the nodes of the swarm.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Manage the overlay networks of the swarm.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Run a standalone container on the node swarm talks to.
    Run(Box<container::RunArgs>),
    /// Manage standalone containers.
    #[command(subcommand)]
    Container(container::ContainerCommand),
    /// Manage the images of the node swarm talks to.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// List images (`swarm image ls`).
    Images(image::LsArgs),
    /// Remove images (`swarm image rm`).
    Rmi(image::RmArgs),
    /// Load an image (`swarm image load`).
    Load(image::LoadArgs),
    /// Fetch the output of a container (`swarm container logs`).
    Logs(container::LogsArgs),
    /// Remove containers (`swarm container rm`).
    Rm(container::RmArgs),
    /// Stop containers (`swarm container stop`).
    Stop(container::StopArgs),
    /// Show the versions of swarm and of the daemon.
    Version,
}

/// What a command needs: the client and where to print.
pub struct Ctx<'a> {
    /// Client of the daemon.
    pub client: Client,
    /// Standard output.
    pub out: &'a mut dyn Write,
}

impl Ctx<'_> {
    /// Prints `text` as is.
    pub fn print(&mut self, text: &str) -> Result<()> {
        self.out
            .write_all(text.as_bytes())
            .map_err(CliError::Output)
    }

    /// Prints `text` and a newline.
    pub fn println(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "{text}").map_err(CliError::Output)
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<Info> {
        self.client.get(routes::INFO).await
    }
}

/// Prints one failure of a multi-object verb on stderr.
pub fn report(err: &CliError) {
    let _ = writeln!(io::stderr().lock(), "{err}");
}

/// Errors after which trying the next object of a multi-object verb is pointless.
pub fn is_fatal(e: &CliError) -> bool {
    matches!(
        e,
        CliError::Output(_)
            | CliError::Connect { .. }
            | CliError::PermissionDenied { .. }
            | CliError::TlsHandshake { .. }
            | CliError::MissingTls { .. }
    )
}

/// Runs `each` on every reference independently, printing failures on stderr as they
/// happen; stops at the first [fatal](is_fatal) one. Fails with [`CliError::SomeFailed`]
/// when any failed.
pub async fn for_each<F>(ctx: &mut Ctx<'_>, references: &[String], mut each: F) -> Result<()>
where
    F: for<'a, 'b> AsyncFnMut(&'a mut Ctx<'b>, &'a str) -> Result<()>,
{
    let mut failed = 0;
    for reference in references {
        match each(ctx, reference).await {
            Ok(()) => {}
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => {
                report(&e);
                failed += 1;
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::SomeFailed {
            failed,
            total: references.len(),
        })
    }
}

/// Builds the client from the global flags.
pub fn client(global: &GlobalArgs) -> Result<Client> {
    let tls = TlsFiles::resolve(
        &global.host,
        global.tlscacert.clone(),
        global.tlscert.clone(),
        global.tlskey.clone(),
        global.cert_path.as_deref(),
    )?;
    Client::new(global.host.clone(), tls.as_ref())
}

/// Runs a parsed command line, printing on `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let client = client(&cli.global);
    runtime.block_on(async move {
        let command = match cli.command {
            Command::Version => return version::run(client, out).await,
            other => other,
        };
        let mut ctx = Ctx {
            client: client?,
            out,
        };
        match command {
            Command::Init(a) => swarm::init(&mut ctx, a).await,
            Command::Join(a) => swarm::join(&mut ctx, a).await,
            Command::JoinToken(a) => swarm::join_token(&mut ctx, a).await,
            Command::Leave(a) => swarm::leave(&mut ctx, a).await,
            Command::Info(a) => swarm::info(&mut ctx, a).await,
            Command::Node(c) => node::run(&mut ctx, c).await,
            Command::Network(c) => network::run(&mut ctx, c).await,
            Command::Service(c) => service::run(&mut ctx, c).await,
            Command::Run(a) => container::run(&mut ctx, *a).await,
            Command::Container(c) => container::run_command(&mut ctx, c).await,
            Command::Image(c) => image::run(&mut ctx, c).await,
            Command::Images(a) => image::ls(&mut ctx, a).await,
            Command::Rmi(a) => image::rm(&mut ctx, a).await,
            Command::Load(a) => image::load(&mut ctx, a).await,
            Command::Logs(a) => container::logs(&mut ctx, a).await,
            Command::Rm(a) => container::rm(&mut ctx, a).await,
            Command::Stop(a) => container::stop(&mut ctx, a).await,
            Command::Version => Ok(()),
        }
    })
}

/// The current time in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Output format of `ls`, `info` and `inspect` verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The human-readable default.
    Human,
    /// JSON, as the API returns it.
    Json,
}

/// Parses `--format`.
pub fn parse_format(s: &str) -> std::result::Result<Format, mesh_api::ValidationError> {
    match s {
        "json" => Ok(Format::Json),
        "" | "table" | "pretty" => Ok(Format::Human),
        other => Err(mesh_api::ValidationError::new(
            "--format",
            format!("unsupported format {other:?}"),
            "use `json`, or leave --format out for the human-readable output",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn formats_parse() {
        assert_eq!(parse_format("json"), Ok(Format::Json));
        assert_eq!(parse_format("table"), Ok(Format::Human));
        let e = parse_format("{{.ID}}").unwrap_err();
        assert_eq!(e.field, "--format");
    }

    #[test]
    fn host_defaults_to_the_local_socket() {
        let cli = Cli::try_parse_from(["swarm", "info"]).unwrap();
        assert_eq!(cli.global.host, Host::default());
        let cli = Cli::try_parse_from(["swarm", "-H", "tcp://10.0.0.1:2376", "info"]).unwrap();
        assert_eq!(cli.global.host.to_string(), "tcp://10.0.0.1:2376");
        let e = Cli::try_parse_from(["swarm", "-H", "http://x", "info"]).unwrap_err();
        assert!(e.to_string().contains("-H/--host"), "{e}");
    }
}
