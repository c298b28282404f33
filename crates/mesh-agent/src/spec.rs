//! The OCI runtime config (`config.json`) of a container, with docker-like defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder, get_default_maskedpaths,
    get_default_readonly_paths,
};

use crate::config::{ContainerConfig, MountSpec};
use crate::error::RuntimeError;
use crate::user::ResolvedUser;

/// The capabilities docker grants by default.
const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

const CFS_PERIOD_US: u64 = 100_000;

/// Everything `build` needs besides the caller's config.
pub(crate) struct SpecInputs<'a> {
    pub cfg: &'a ContainerConfig,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: &'a ResolvedUser,
    pub hostname: String,
    /// Files in the bundle bind-mounted over /etc/resolv.conf, /etc/hosts, /etc/hostname.
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
    pub hostname_file: PathBuf,
    /// Host directory of each volume mount, in `cfg.mounts` order (None for other kinds).
    pub volume_dirs: Vec<Option<PathBuf>>,
    pub cgroups_path: String,
    pub annotations: HashMap<String, String>,
}

fn spec_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::other("building the OCI runtime config", e.to_string())
}

fn mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> Result<Mount, RuntimeError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)
}

/// The open-files limit containers get: this process's hard limit (raising it would need
/// privileges the daemon may not have), at most 2^20.
fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc == 0 {
        lim.rlim_max.min(1 << 20)
    } else {
        1024
    }
}

/// Builds the runtime config.
pub(crate) fn build(inp: &SpecInputs<'_>) -> Result<Spec, RuntimeError> {
    let cfg = inp.cfg;
    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPS.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(spec_err)?;
    let mut user = UserBuilder::default().uid(inp.user.uid).gid(inp.user.gid);
    if !inp.user.additional_gids.is_empty() {
        user = user.additional_gids(inp.user.additional_gids.clone());
    }
    let nofile = nofile_limit();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user.build().map_err(spec_err)?)
        .args(inp.args.clone())
        .env(inp.env.clone())
        .cwd(inp.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(false)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(nofile)
                .soft(nofile)
                .build()
                .map_err(spec_err)?,
        ])
        .build()
        .map_err(spec_err)?;

    let mut mounts = vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
        mount(
            "/etc/resolv.conf",
            "bind",
            &inp.resolv_conf,
            &["rbind", "rprivate"],
        )?,
        mount("/etc/hosts", "bind", &inp.hosts, &["rbind", "rprivate"])?,
        mount(
            "/etc/hostname",
            "bind",
            &inp.hostname_file,
            &["rbind", "rprivate"],
        )?,
    ];
    for (i, m) in cfg.mounts.iter().enumerate() {
        let built = match m {
            MountSpec::Volume {
                target, readonly, ..
            } => {
                let dir = inp
                    .volume_dirs
                    .get(i)
                    .cloned()
                    .flatten()
                    .ok_or_else(|| spec_err(format!("volume {i} has no directory")))?;
                let mut o = vec!["rbind", "rprivate"];
                if *readonly {
                    o.push("ro");
                }
                mount(target, "bind", &dir, &o)?
            }
            MountSpec::Bind {
                source,
                target,
                readonly,
            } => {
                let mut o = vec!["rbind", "rprivate"];
                if *readonly {
                    o.push("ro");
                }
                mount(target, "bind", source, &o)?
            }
            MountSpec::Tmpfs { target, size } => {
                let size_opt = size.map(|s| format!("size={s}"));
                let mut o = vec!["nosuid", "nodev", "mode=1777"];
                if let Some(s) = &size_opt {
                    o.push(s);
                }
                mount(target, "tmpfs", Path::new("tmpfs"), &o)?
            }
        };
        mounts.push(built);
    }

    let mut namespaces = Vec::new();
    for t in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ] {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(t)
                .build()
                .map_err(spec_err)?,
        );
    }
    let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    if let Some(p) = &cfg.netns {
        net = net.path(p.clone());
    }
    namespaces.push(net.build().map_err(spec_err)?);

    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(spec_err)?,
    ]);
    if let Some(m) = cfg.limits.memory_bytes {
        let limit = i64::try_from(m).map_err(|_| {
            RuntimeError::invalid("limits.memory_bytes", format!("{m} is too large"))
        })?;
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .map_err(spec_err)?,
        );
    }
    if let Some(n) = cfg.limits.nano_cpus {
        let quota = i64::try_from(u128::from(n) * u128::from(CFS_PERIOD_US) / 1_000_000_000)
            .map_err(|_| RuntimeError::invalid("limits.nano_cpus", format!("{n} is too large")))?;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CFS_PERIOD_US)
                .build()
                .map_err(spec_err)?,
        );
    }
    if let Some(p) = cfg.limits.pids {
        let limit = i64::try_from(p)
            .map_err(|_| RuntimeError::invalid("limits.pids", format!("{p} is too large")))?;
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(spec_err)?,
        );
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(spec_err)?)
        .cgroups_path(PathBuf::from(&inp.cgroups_path))
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()
        .map_err(spec_err)?;

    SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .map_err(spec_err)?,
        )
        .process(process)
        .hostname(inp.hostname.clone())
        .mounts(mounts)
        .linux(linux)
        .annotations(inp.annotations.clone())
        .build()
        .map_err(spec_err)
}
