//! What a container should be: the caller's description and its validation.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;

/// Everything the runtime needs to create one container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConfig {
    /// Unique id: letters, digits, `_`, `.`, `-`, starting with a letter or digit, at most
    /// 128 characters. Names the bundle directory and the runc container.
    pub id: String,
    /// Human name (for listings only); may be empty.
    pub name: String,
    /// Hostname inside the container; the first 12 characters of the id when `None`.
    pub hostname: Option<String>,
    /// Image reference, resolved through the image store (`name:tag`, id, digest).
    pub image: String,
    /// Replaces the image's Entrypoint (and then its Cmd is not used, as in docker).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    pub args: Option<Vec<String>>,
    /// `KEY=value` entries, applied over the image's Env.
    pub env: Vec<String>,
    /// Working directory (absolute); the image's WorkingDir or `/` when `None`. Created if
    /// missing.
    pub workdir: Option<String>,
    /// `uid`, `uid:gid`, `name` or `name:group` (names from the image's /etc/passwd and
    /// /etc/group); the image's User or root when `None`.
    pub user: Option<String>,
    /// Volumes, bind mounts and tmpfs mounts.
    pub mounts: Vec<MountSpec>,
    /// Resource limits.
    pub limits: Limits,
    /// Network namespace to join (e.g. `/var/run/netns/NAME`). `None` gives the container a
    /// namespace of its own with only a loopback device.
    pub netns: Option<PathBuf>,
    /// Content of the container's /etc/resolv.conf; the host's when `None`.
    pub resolv_conf: Option<String>,
    /// Extra /etc/hosts entries after the localhost lines.
    pub hosts: Vec<(IpAddr, Vec<String>)>,
    /// Signal `stop` sends first (`SIGTERM`, `TERM`, `15`); the image's StopSignal or
    /// SIGTERM when `None`.
    pub stop_signal: Option<String>,
    /// Free-form labels, kept with the container and listed back.
    pub labels: BTreeMap<String, String>,
}

/// A mount into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MountSpec {
    /// A named directory under the runtime root (`volumes/<name>`), shared by every container
    /// that mounts the same name; created on first use.
    Volume {
        /// Volume name: letters, digits, `_`, `.`, `-`.
        name: String,
        /// Absolute path in the container.
        target: String,
        /// Mount it read-only.
        #[serde(default)]
        readonly: bool,
    },
    /// A host file or directory.
    Bind {
        /// Absolute host path; must exist.
        source: PathBuf,
        /// Absolute path in the container.
        target: String,
        /// Mount it read-only.
        #[serde(default)]
        readonly: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Absolute path in the container.
        target: String,
        /// Size limit in bytes; the kernel's default (half of RAM) when `None`.
        #[serde(default)]
        size: Option<u64>,
    },
}

impl MountSpec {
    /// The path in the container.
    pub fn target(&self) -> &str {
        match self {
            MountSpec::Volume { target, .. }
            | MountSpec::Bind { target, .. }
            | MountSpec::Tmpfs { target, .. } => target,
        }
    }
}

/// Resource limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// CPU in billionths of a CPU (docker's NanoCpus): 1_500_000_000 is one and a half CPUs.
    pub nano_cpus: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes.
    pub pids: Option<u64>,
}

/// Whether `s` is a safe id or name: `[A-Za-z0-9][A-Za-z0-9_.-]*`, 1..=max characters.
pub(crate) fn is_safe_name(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Checks a container id.
pub(crate) fn validate_id(id: &str) -> Result<(), RuntimeError> {
    if is_safe_name(id, 128) {
        Ok(())
    } else {
        Err(RuntimeError::invalid(
            "id",
            format!(
                "`{id}` is not a valid container id: use 1 to 128 letters, digits, `_`, `.`, `-`, starting with a letter or digit"
            ),
        ))
    }
}

/// Parses a signal written as `SIGTERM`, `TERM` or `15`.
pub(crate) fn parse_signal(s: &str) -> Option<Signal> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().ok()
}

/// Checks an in-container absolute path, naming `field` in the error.
pub(crate) fn validate_container_path(field: &str, p: &str) -> Result<(), RuntimeError> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(RuntimeError::invalid(
            field,
            format!("`{p}` is relative: give an absolute path in the container, like /data"),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(RuntimeError::invalid(
            field,
            format!("`{p}` contains `..`: give a plain absolute path"),
        ));
    }
    if p.contains('\0') || p.contains(',') || p.contains(':') {
        return Err(RuntimeError::invalid(
            field,
            format!("`{p}` contains a NUL, `,` or `:`: pick a path without them"),
        ));
    }
    if path.components().count() < 2 {
        return Err(RuntimeError::invalid(
            field,
            "`/` cannot be a mount target: pick a directory under it",
        ));
    }
    Ok(())
}

fn validate_hostname(h: &str) -> Result<(), RuntimeError> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && !h.starts_with('-')
        && !h.starts_with('.')
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::invalid(
            "hostname",
            format!("`{h}` is not a valid hostname: use at most 64 letters, digits, `-`, `.`"),
        ))
    }
}

impl ContainerConfig {
    /// A config with the given id and image and everything else defaulted.
    pub fn new(id: impl Into<String>, image: impl Into<String>) -> ContainerConfig {
        ContainerConfig {
            id: id.into(),
            image: image.into(),
            ..ContainerConfig::default()
        }
    }

    /// The hostname the container gets.
    pub fn effective_hostname(&self) -> String {
        match &self.hostname {
            Some(h) => h.clone(),
            None => self.id.chars().take(12).collect(),
        }
    }

    /// Checks everything that does not need the image or the runtime; the error names the
    /// field and says how to fix it.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        validate_id(&self.id)?;
        if self.name.len() > 256 || self.name.chars().any(char::is_control) {
            return Err(RuntimeError::invalid(
                "name",
                "use at most 256 printable characters",
            ));
        }
        validate_hostname(&self.effective_hostname())?;
        if self.image.trim().is_empty() {
            return Err(RuntimeError::invalid(
                "image",
                "it is empty: give an image reference such as busybox:latest",
            ));
        }
        if let Some(ep) = &self.entrypoint
            && ep.first().is_some_and(|a| a.is_empty())
        {
            return Err(RuntimeError::invalid(
                "entrypoint",
                "its first element is empty: give the program to run",
            ));
        }
        for (i, kv) in self.env.iter().enumerate() {
            let key = kv.split('=').next().unwrap_or_default();
            if key.is_empty() || kv.contains('\0') {
                return Err(RuntimeError::invalid(
                    format!("env[{i}]"),
                    format!("`{kv}` is not KEY=value with a non-empty KEY"),
                ));
            }
        }
        if let Some(w) = &self.workdir
            && (!w.starts_with('/') || w.contains('\0'))
        {
            return Err(RuntimeError::invalid(
                "workdir",
                format!("`{w}` is not absolute: give an absolute path like /app"),
            ));
        }
        if let Some(u) = &self.user {
            validate_user_syntax(u)?;
        }
        let mut targets: Vec<&str> = Vec::new();
        for (i, m) in self.mounts.iter().enumerate() {
            let field = format!("mounts[{i}].target");
            validate_container_path(&field, m.target())?;
            let t = m.target().trim_end_matches('/');
            if targets.contains(&t) {
                return Err(RuntimeError::invalid(
                    field,
                    format!("`{t}` is the target of an earlier mount too: mount each path once"),
                ));
            }
            targets.push(t);
            match m {
                MountSpec::Volume { name, .. } => {
                    if !is_safe_name(name, 128) {
                        return Err(RuntimeError::invalid(
                            format!("mounts[{i}].name"),
                            format!(
                                "`{name}` is not a valid volume name: use letters, digits, `_`, `.`, `-`, starting with a letter or digit"
                            ),
                        ));
                    }
                }
                MountSpec::Bind { source, .. } => {
                    if !source.is_absolute() {
                        return Err(RuntimeError::invalid(
                            format!("mounts[{i}].source"),
                            format!(
                                "`{}` is relative: give an absolute host path",
                                source.display()
                            ),
                        ));
                    }
                    if !source.exists() {
                        return Err(RuntimeError::invalid(
                            format!("mounts[{i}].source"),
                            format!(
                                "`{}` does not exist on this host: create it first",
                                source.display()
                            ),
                        ));
                    }
                }
                MountSpec::Tmpfs { size, .. } => {
                    if *size == Some(0) {
                        return Err(RuntimeError::invalid(
                            format!("mounts[{i}].size"),
                            "0 bytes: give a size in bytes or leave it unset",
                        ));
                    }
                }
            }
        }
        if let Some(n) = self.limits.nano_cpus
            && n < 10_000_000
        {
            return Err(RuntimeError::invalid(
                "limits.nano_cpus",
                format!("{n} is below 0.01 CPU (10000000): give more or leave it unset"),
            ));
        }
        if let Some(m) = self.limits.memory_bytes
            && m < 6 * 1024 * 1024
        {
            return Err(RuntimeError::invalid(
                "limits.memory_bytes",
                format!("{m} bytes is below the 6 MiB minimum: give more or leave it unset"),
            ));
        }
        if self.limits.pids == Some(0) {
            return Err(RuntimeError::invalid(
                "limits.pids",
                "0 would forbid every process: give at least 1 or leave it unset",
            ));
        }
        if let Some(ns) = &self.netns {
            if !ns.is_absolute() {
                return Err(RuntimeError::invalid(
                    "netns",
                    format!(
                        "`{}` is relative: give the absolute path of a network namespace such as /var/run/netns/NAME",
                        ns.display()
                    ),
                ));
            }
            if !ns.exists() {
                return Err(RuntimeError::invalid(
                    "netns",
                    format!(
                        "`{}` does not exist: create the network namespace first",
                        ns.display()
                    ),
                ));
            }
        }
        if let Some(r) = &self.resolv_conf
            && r.contains('\0')
        {
            return Err(RuntimeError::invalid(
                "resolv_conf",
                "it contains a NUL byte",
            ));
        }
        for (i, (_, names)) in self.hosts.iter().enumerate() {
            if names.is_empty() {
                return Err(RuntimeError::invalid(
                    format!("hosts[{i}]"),
                    "no names for this address: give at least one",
                ));
            }
            for n in names {
                if n.is_empty()
                    || n.chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '#')
                {
                    return Err(RuntimeError::invalid(
                        format!("hosts[{i}]"),
                        format!("`{n}` is not a host name"),
                    ));
                }
            }
        }
        if let Some(s) = &self.stop_signal
            && parse_signal(s).is_none()
        {
            return Err(RuntimeError::invalid(
                "stop_signal",
                format!("`{s}` is not a signal: use a name like SIGTERM or a number like 15"),
            ));
        }
        Ok(())
    }
}

fn validate_user_syntax(u: &str) -> Result<(), RuntimeError> {
    let (user, group) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'$'))
    };
    if !ok_part(user) || group.is_some_and(|g| !ok_part(g)) {
        return Err(RuntimeError::invalid(
            "user",
            format!("`{u}` is not `uid`, `uid:gid`, `name` or `name:group`"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let mut c = ContainerConfig::new("ok-1", "busybox");
        c.validate().unwrap();
        c.id = "../x".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`id`"), "{e}");
        c.id = "ok".into();
        c.mounts.push(MountSpec::Tmpfs {
            target: "data".into(),
            size: None,
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("mounts[0].target") && e.contains("relative"),
            "{e}"
        );
        c.mounts[0] = MountSpec::Tmpfs {
            target: "/a/../b".into(),
            size: None,
        };
        assert!(c.validate().is_err());
        c.mounts.clear();
        c.user = Some("a b".into());
        assert!(c.validate().unwrap_err().to_string().contains("`user`"));
        c.user = None;
        c.stop_signal = Some("SIGNOPE".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("stop_signal")
        );
        c.stop_signal = Some("quit".into());
        c.validate().unwrap();
        c.env = vec!["=x".into()];
        assert!(c.validate().unwrap_err().to_string().contains("env[0]"));
    }

    #[test]
    fn signals_parse_in_every_spelling() {
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGWAT"), None);
    }

    #[test]
    fn config_round_trips_through_json() {
        let mut c = ContainerConfig::new("a", "b");
        c.mounts = vec![
            MountSpec::Volume {
                name: "v".into(),
                target: "/v".into(),
                readonly: false,
            },
            MountSpec::Tmpfs {
                target: "/t".into(),
                size: Some(1 << 20),
            },
        ];
        c.hosts = vec![("10.0.0.2".parse().unwrap(), vec!["db".into()])];
        let j = serde_json::to_string(&c).unwrap();
        let back: ContainerConfig = serde_json::from_str(&j).unwrap();
        assert_eq!(back, c);
    }
}
