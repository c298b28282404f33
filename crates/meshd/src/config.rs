//! Daemon configuration: command-line flags, optionally merged over a TOML file with
//! the same keys (flags win).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// meshd: the daemon on every host of a meshd cluster.
#[derive(Debug, Clone, Parser, Default)]
#[command(name = "meshd", version, about)]
pub struct Flags {
    /// Directory for the node's identity, certificates and Raft state [default: /var/lib/meshd]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Unix socket of the control API [default: /run/meshd/meshd.sock]
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Control-plane listen address, QUIC over UDP [default: 0.0.0.0:2377]
    #[arg(long)]
    pub listen_addr: Option<String>,
    /// Address other nodes reach this node at (IP)
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Overlay data port, UDP [default: 51820]
    #[arg(long)]
    pub data_port: Option<u16>,
    /// Node host name [default: the system's]
    #[arg(long)]
    pub hostname: Option<String>,
    /// TOML file with the same keys as these flags (data-dir, socket, …)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Serve the control API on this TCP address too, with mutual TLS (client
    /// certificates of this cluster's CA with the manager role)
    #[arg(long)]
    pub remote_api_addr: Option<String>,
    /// Prefix of the overlay sandbox namespaces this daemon creates (1–16 lowercase
    /// letters or digits) [default: msb + the first 8 characters of the node ID]
    #[arg(long)]
    pub sandbox_prefix: Option<String>,
    /// Resolver the tasks' embedded DNS forwards other names to, IP or IP:PORT (repeat for
    /// several) [default: the nameservers of /etc/resolv.conf]
    #[arg(long = "dns-upstream", value_name = "ADDR")]
    pub dns_upstream: Vec<String>,
    /// Data path of the routing mesh (published ports, VIPs): `ebpf`, `userspace`, or
    /// `auto` (eBPF where the kernel allows it, else userspace) [default: auto]
    #[arg(long, value_name = "PATH")]
    pub dataplane: Option<String>,
}

/// Which data path the routing mesh runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataplaneChoice {
    /// eBPF where the kernel allows it, else userspace.
    Auto,
    /// The eBPF path; meshd refuses to start without it.
    Ebpf,
    /// The userspace path.
    Userspace,
}

/// The TOML file: the same keys as the flags.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    listen_addr: Option<String>,
    advertise_addr: Option<String>,
    data_port: Option<u16>,
    hostname: Option<String>,
    remote_api_addr: Option<String>,
    sandbox_prefix: Option<String>,
    dns_upstream: Option<Vec<String>>,
    dataplane: Option<String>,
}

/// The effective, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// API socket.
    pub socket: PathBuf,
    /// Control listen address.
    pub listen_addr: SocketAddr,
    /// Advertised IP, if known.
    pub advertise_addr: Option<IpAddr>,
    /// Overlay data port.
    pub data_port: u16,
    /// Host name.
    pub hostname: String,
    /// Remote API address.
    pub remote_api_addr: Option<SocketAddr>,
    /// Prefix of overlay sandbox namespaces, if set.
    pub sandbox_prefix: Option<String>,
    /// Upstream resolvers of the embedded DNS (empty: those of /etc/resolv.conf).
    pub dns_upstreams: Vec<SocketAddr>,
    /// The routing mesh's data path.
    pub dataplane: DataplaneChoice,
}

/// A configuration value that is wrong; the message names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// invalid {key}: {value:?} {problem}; {fix}
    #[error("invalid {key}: {value:?} {problem}; {fix}")]
    Invalid {
        /// Flag or key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        problem: &'static str,
        /// How to fix it.
        fix: &'static str,
    },
    /// cannot read config file {path}: {source}
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// config file {path} is not valid: {source}
    #[error("config file {path} is not valid: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        source: toml::de::Error,
    },
}

/// Parses `IP:PORT` or `IP` (with `default_port`).
pub fn parse_listen(
    key: &'static str,
    s: &str,
    default_port: u16,
) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(ConfigError::Invalid {
        key,
        value: s.to_string(),
        problem: "is not an address",
        fix: "give IP:PORT or IP, e.g. 0.0.0.0:2377",
    })
}

/// Parses an advertise address: an IP, or `IP:PORT` whose port is ignored.
pub fn parse_advertise(s: &str) -> Result<IpAddr, ConfigError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a.ip());
    }
    Err(ConfigError::Invalid {
        key: "--advertise-addr",
        value: s.to_string(),
        problem: "is not an IP address",
        fix: "give the IP other nodes reach this host at, e.g. 192.0.2.1",
    })
}

fn system_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Config {
    /// Merges flags over the file named by `--config` and validates the result.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let listen = flags
            .listen_addr
            .or(file.listen_addr)
            .unwrap_or_else(|| format!("0.0.0.0:{}", mesh_api::api::DEFAULT_CONTROL_PORT));
        let listen_addr = parse_listen(
            "--listen-addr",
            &listen,
            mesh_api::api::DEFAULT_CONTROL_PORT,
        )?;
        let advertise_addr = match flags.advertise_addr.or(file.advertise_addr) {
            Some(s) => Some(parse_advertise(&s)?),
            None => None,
        };
        let remote_api_addr = match flags.remote_api_addr.or(file.remote_api_addr) {
            Some(s) => Some(parse_listen("--remote-api-addr", &s, 2376)?),
            None => None,
        };
        let data_port = flags
            .data_port
            .or(file.data_port)
            .unwrap_or(mesh_api::api::DEFAULT_DATA_PORT);
        if data_port == 0 {
            return Err(ConfigError::Invalid {
                key: "--data-port",
                value: "0".into(),
                problem: "is not a usable port",
                fix: "give a UDP port between 1 and 65535 (default 51820)",
            });
        }
        let hostname = flags
            .hostname
            .or(file.hostname)
            .unwrap_or_else(system_hostname);
        if hostname.is_empty()
            || hostname.len() > 253
            || !hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(ConfigError::Invalid {
                key: "--hostname",
                value: hostname,
                problem: "is not a valid host name",
                fix: "use letters, digits, '-', '_' and '.' only",
            });
        }
        let sandbox_prefix = flags.sandbox_prefix.or(file.sandbox_prefix);
        if let Some(p) = &sandbox_prefix
            && (p.is_empty()
                || p.len() > 16
                || !p
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        {
            return Err(ConfigError::Invalid {
                key: "--sandbox-prefix",
                value: p.clone(),
                problem: "is not a usable namespace prefix",
                fix: "use 1 to 16 lowercase letters or digits",
            });
        }
        let upstream_strings = if flags.dns_upstream.is_empty() {
            file.dns_upstream.unwrap_or_default()
        } else {
            flags.dns_upstream
        };
        let mut dns_upstreams = Vec::new();
        for u in upstream_strings {
            let addr = u
                .parse::<SocketAddr>()
                .or_else(|_| u.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match addr {
                Ok(a) => dns_upstreams.push(a),
                Err(_) => {
                    return Err(ConfigError::Invalid {
                        key: "--dns-upstream",
                        value: u,
                        problem: "is not an IP address or IP:PORT",
                        fix: "give e.g. 192.0.2.53 or 192.0.2.53:53",
                    });
                }
            }
        }
        let dataplane = match flags.dataplane.or(file.dataplane).as_deref() {
            None | Some("auto") => DataplaneChoice::Auto,
            Some("ebpf") => DataplaneChoice::Ebpf,
            Some("userspace") => DataplaneChoice::Userspace,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "--dataplane",
                    value: other.to_string(),
                    problem: "is not a data path",
                    fix: "use auto, ebpf or userspace",
                });
            }
        };
        Ok(Config {
            dns_upstreams,
            dataplane,
            sandbox_prefix,
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("/var/lib/meshd")),
            socket: flags
                .socket
                .or(file.socket)
                .unwrap_or_else(|| PathBuf::from(mesh_api::api::DEFAULT_SOCKET)),
            listen_addr,
            advertise_addr,
            data_port,
            hostname,
            remote_api_addr,
        })
    }
}

fn read_file(p: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
        path: p.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: p.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("meshd.toml");
        std::fs::write(
            &f,
            "data-dir = \"/tmp/x\"\nlisten-addr = \"10.0.0.1:2400\"\nhostname = \"filehost\"\n",
        )
        .unwrap();
        let c = Config::load(Flags {
            config: Some(f),
            hostname: Some("flaghost".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.listen_addr, "10.0.0.1:2400".parse().unwrap());
        assert_eq!(c.hostname, "flaghost");
        assert_eq!(c.data_port, 51820);
        assert_eq!(c.socket, PathBuf::from("/run/meshd/meshd.sock"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::load(Flags {
            advertise_addr: Some("not-an-ip".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--advertise-addr"), "{e}");
        let e = Config::load(Flags {
            listen_addr: Some("x:y".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--listen-addr"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "data_dirr = 1\n").unwrap();
        let e = Config::load(Flags {
            config: Some(f),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("not valid"), "{e}");
    }

    #[test]
    fn listen_accepts_ip_only() {
        assert_eq!(
            parse_listen("--listen-addr", "192.0.2.1", 2377).unwrap(),
            "192.0.2.1:2377".parse().unwrap()
        );
        assert_eq!(
            parse_advertise("192.0.2.1:2377").unwrap(),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
