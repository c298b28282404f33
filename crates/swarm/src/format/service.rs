//! What `service ls`, `service ps` and `service inspect --pretty` print.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use mesh_api::ids::short_id;
use mesh_api::{
    Health, PortConfig, Protocol, PublishMode, Service, ServiceMode, ServiceView, Task, TaskState,
    UpdateConfig,
};

use super::{
    Table, ago, capitalize, ellipsis, field, format_bytes, format_duration_ms, natural_cmp,
};

/// Longest ERROR cell of `service ps` without `--no-trunc` (docker's `maxErrLength`).
pub const MAX_ERROR_LEN: usize = 30;

/// An ID as tables print it: the first 12 characters, or whole with `--no-trunc`.
pub fn table_id(id: &str, no_trunc: bool) -> &str {
    if no_trunc { id } else { short_id(id) }
}

/// An image reference as tables print it: without its `@sha256:…` digest unless
/// `--no-trunc`, like docker.
pub fn image_column(image: &str, no_trunc: bool) -> &str {
    if no_trunc {
        return image;
    }
    image.split_once('@').map_or(image, |(name, _)| name)
}

/// The order of `docker service ls`: by name (natural order), then by ID.
pub fn service_order(x: &ServiceView, y: &ServiceView) -> Ordering {
    natural_cmp(&x.service.spec.name, &y.service.spec.name)
        .then_with(|| x.service.id.cmp(&y.service.id))
}

/// `replicated` or `global`.
pub fn mode_name(mode: ServiceMode) -> &'static str {
    match mode {
        ServiceMode::Replicated { .. } => "replicated",
        ServiceMode::Global => "global",
    }
}

/// The REPLICAS column: `running/desired`, and ` (max N per node)` when the placement
/// caps it.
pub fn replicas_column(view: &ServiceView) -> String {
    let mut text = format!("{}/{}", view.running_tasks, view.desired_tasks);
    let max = view.service.spec.task_template.placement.max_replicas;
    if max > 0 && matches!(view.service.spec.mode, ServiceMode::Replicated { .. }) {
        let _ = write!(text, " (max {max} per node)");
    }
    text
}

/// A run of consecutive published ports, as the PORTS column prints it.
#[derive(Debug, Clone, Copy)]
struct PortRange {
    protocol: Protocol,
    published: (u16, u16),
    target: (u16, u16),
}

impl PortRange {
    fn render(&self) -> String {
        let span = |(a, b): (u16, u16)| {
            if b > a {
                format!("{a}-{b}")
            } else {
                a.to_string()
            }
        };
        format!(
            "*:{}->{}/{}",
            span(self.published),
            span(self.target),
            self.protocol
        )
    }
}

/// The PORTS column of `service ls`: the ports published through the routing mesh,
/// `*:8080->80/tcp`, consecutive ones folded into ranges (`*:30000-30002->80-82/tcp`) the
/// way docker folds them. Ports still unallocated (published 0) are left out.
pub fn ingress_ports(ports: &[PortConfig]) -> String {
    let mut ingress: Vec<&PortConfig> = ports
        .iter()
        .filter(|p| p.publish_mode == PublishMode::Ingress && p.published_port != 0)
        .collect();
    ingress.sort_by_key(|p| (p.protocol, p.published_port, p.target_port));
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<PortRange> = None;
    for p in ingress {
        if let Some(r) = &mut current {
            let published_step = i32::from(p.published_port) - i32::from(r.published.1);
            let target_step = i32::from(p.target_port) - i32::from(r.target.1);
            let is_range = r.target.1 != r.target.0;
            let overlaps = p.target_port <= r.target.1;
            let extends = p.protocol == r.protocol
                && (0..=1).contains(&published_step)
                && (0..=1).contains(&target_step)
                && !(is_range && overlaps);
            if extends {
                r.published.1 = p.published_port;
                r.target.1 = p.target_port;
                continue;
            }
            out.push(r.render());
        }
        current = Some(PortRange {
            protocol: p.protocol,
            published: (p.published_port, p.published_port),
            target: (p.target_port, p.target_port),
        });
    }
    if let Some(r) = current {
        out.push(r.render());
    }
    out.join(", ")
}

/// The ports a service publishes: the allocated ones once the daemon filled them in,
/// else the spec's.
pub fn service_ports(service: &Service) -> &[PortConfig] {
    if service.ports.is_empty() {
        &service.spec.endpoint_spec.ports
    } else {
        &service.ports
    }
}

/// The `service ls` table: `ID  NAME  MODE  REPLICAS  IMAGE  PORTS`, in the order given
/// (see [`service_order`]).
pub fn service_table(views: &[ServiceView]) -> String {
    let mut table = Table::new(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]);
    for v in views {
        let s = &v.service;
        table.row([
            short_id(&s.id).to_string(),
            s.spec.name.clone(),
            mode_name(s.spec.mode).to_string(),
            replicas_column(v),
            image_column(&s.spec.task_template.container.image, false).to_string(),
            ingress_ports(service_ports(s)),
        ]);
    }
    table.render()
}

/// The order of `service ps`: by task name (`web.1`, `web.2`, … `web.10`), the newest
/// task of a slot first and its history after it.
pub fn task_order(x: &Task, y: &Task) -> Ordering {
    natural_cmp(&x.display_name(), &y.display_name())
        .then_with(|| y.created_at.cmp(&x.created_at))
        .then_with(|| x.id.cmp(&y.id))
}

/// A state as `service ps` prints it: `Running`, `Shutdown`, `Pending`.
pub fn state_display(state: TaskState) -> String {
    capitalize(state.as_str())
}

/// ` (healthy)`, ` (unhealthy)`, ` (health: starting)` as docker appends it to a status,
/// or nothing when the task has no health check.
pub fn health_suffix(health: Health) -> &'static str {
    match health {
        Health::None => "",
        Health::Starting => " (health: starting)",
        Health::Healthy => " (healthy)",
        Health::Unhealthy => " (unhealthy)",
    }
}

/// The CURRENT STATE column: `Running 5 seconds ago`, `Pending 3 seconds ago`, with the
/// health appended while the task runs (`Running 2 minutes ago (healthy)`).
pub fn current_state(task: &Task, now_ms: u64) -> String {
    let mut text = format!(
        "{} {}",
        state_display(task.status.state),
        ago(now_ms, task.status.timestamp)
    );
    if task.status.state == TaskState::Running {
        text.push_str(health_suffix(task.status.health));
    }
    text
}

/// The ERROR column: the error that ended the task, or why it is still pending (the
/// scheduler's reason), quoted and cut to [`MAX_ERROR_LEN`] characters unless `no_trunc`.
pub fn task_error(task: &Task, no_trunc: bool) -> String {
    let text = if !task.status.err.is_empty() {
        task.status.err.as_str()
    } else if task.status.state == TaskState::Pending {
        task.status.message.as_str()
    } else {
        ""
    };
    if text.is_empty() {
        return String::new();
    }
    let text = if no_trunc {
        text.to_string()
    } else {
        ellipsis(text, MAX_ERROR_LEN)
    };
    format!("\"{text}\"")
}

/// The PORTS column of `service ps`: the host-mode ports the task took on its node,
/// `*:80->8080/tcp`, matched with its service's ports for the target and protocol.
pub fn task_ports(task: &Task, service: Option<&Service>) -> String {
    let host: Vec<&PortConfig> = service
        .map(|s| {
            s.spec
                .endpoint_spec
                .ports
                .iter()
                .filter(|p| p.publish_mode == PublishMode::Host)
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for &port in &task.host_ports {
        let known: Vec<&&PortConfig> = host.iter().filter(|p| p.published_port == port).collect();
        if known.is_empty() {
            out.push(format!("*:{port}"));
        }
        for p in known {
            out.push(format!("*:{port}->{}/{}", p.target_port, p.protocol));
        }
    }
    out.join(", ")
}

/// A node as tables print it: its host name when known, else its ID; empty for a task
/// not scheduled yet.
pub fn node_column(node_names: &BTreeMap<String, String>, node_id: &str) -> String {
    match node_names.get(node_id) {
        Some(name) if !name.is_empty() => name.clone(),
        _ => node_id.to_string(),
    }
}

/// What `service ps` needs besides the tasks.
#[derive(Debug, Clone, Copy)]
pub struct PsContext<'a> {
    /// The current time, Unix ms.
    pub now_ms: u64,
    /// Whole IDs, images and errors.
    pub no_trunc: bool,
    /// Node ID → host name.
    pub node_names: &'a BTreeMap<String, String>,
    /// Service ID → service (for the PORTS column).
    pub services: &'a BTreeMap<String, Service>,
}

/// The `service ps` table: `ID  NAME  IMAGE  NODE  DESIRED STATE  CURRENT STATE  ERROR
/// PORTS`. `tasks` must be in [`task_order`]; a task that follows another of the same
/// slot is its history and prints as ` \_ web.1`, like docker.
pub fn ps_table(tasks: &[Task], ctx: &PsContext<'_>) -> String {
    let mut table = Table::new([
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ]);
    let mut previous = String::new();
    for t in tasks {
        let name = t.display_name();
        let shown = if name == previous {
            format!(" \\_ {name}")
        } else {
            name.clone()
        };
        previous = name;
        table.row([
            table_id(&t.id, ctx.no_trunc).to_string(),
            shown,
            image_column(&t.spec.container.image, ctx.no_trunc).to_string(),
            node_column(ctx.node_names, &t.node_id),
            state_display(t.desired_state),
            current_state(t, ctx.now_ms),
            task_error(t, ctx.no_trunc),
            task_ports(t, ctx.services.get(&t.service_id)),
        ]);
    }
    table.render()
}

fn update_config_block(out: &mut String, title: &str, order_label: &str, u: &UpdateConfig) {
    let _ = writeln!(out, "{title}:");
    field(out, " Parallelism", u.parallelism);
    if u.delay_ms > 0 {
        field(out, " Delay", format_duration_ms(u.delay_ms));
    }
    field(out, " On failure", u.failure_action.as_str());
    field(out, " Monitoring Period", format_duration_ms(u.monitor_ms));
    field(
        out,
        " Max failure ratio",
        super::significant(f64::from(u.max_failure_permille) / 1000.0, 3),
    );
    field(out, order_label, u.order.as_str());
}

/// The human-readable block of `service inspect --pretty`, modelled on docker's.
/// `network_names` maps network IDs to names (IDs print as they are when missing).
pub fn service_pretty(
    view: &ServiceView,
    network_names: &BTreeMap<String, String>,
    now_ms: u64,
) -> String {
    let s = &view.service;
    let spec = &s.spec;
    let t = &spec.task_template;
    let c = &t.container;
    let mut out = String::new();
    field(&mut out, "ID", &s.id);
    field(&mut out, "Name", &spec.name);
    if !spec.labels.is_empty() {
        out.push_str("Labels:\n");
        for (k, v) in &spec.labels {
            let _ = writeln!(out, " - {k}={v}");
        }
    }
    match spec.mode {
        ServiceMode::Replicated { replicas } => {
            field(&mut out, "Service Mode", "Replicated");
            field(&mut out, " Replicas", replicas);
        }
        ServiceMode::Global => field(&mut out, "Service Mode", "Global"),
    }
    field(
        &mut out,
        "Tasks",
        format!(
            "{} running, {} desired",
            view.running_tasks, view.desired_tasks
        ),
    );
    if let Some(u) = &s.update_status {
        out.push_str("UpdateStatus:\n");
        field(&mut out, " State", u.state.as_str());
        if u.started_at > 0 {
            field(&mut out, " Started", ago(now_ms, u.started_at));
        }
        if u.completed_at > 0 {
            field(&mut out, " Completed", ago(now_ms, u.completed_at));
        }
        if !u.message.is_empty() {
            field(&mut out, " Message", &u.message);
        }
    }
    if !t.placement.constraints.is_empty() || t.placement.max_replicas > 0 {
        out.push_str("Placement:\n");
        if !t.placement.constraints.is_empty() {
            field(
                &mut out,
                " Constraints",
                format!("[{}]", t.placement.constraints.join(" ")),
            );
        }
        if t.placement.max_replicas > 0 {
            field(&mut out, " Max Replicas Per Node", t.placement.max_replicas);
        }
    }
    update_config_block(
        &mut out,
        "UpdateConfig",
        " Update order",
        &spec.update_config,
    );
    update_config_block(
        &mut out,
        "RollbackConfig",
        " Rollback order",
        &spec.rollback_config,
    );
    out.push_str("ContainerSpec:\n");
    field(&mut out, " Image", &c.image);
    if let Some(cmd) = &c.command {
        field(&mut out, " Command", cmd.join(" "));
    }
    if !c.args.is_empty() {
        field(&mut out, " Args", c.args.join(" "));
    }
    if !c.env.is_empty() {
        field(&mut out, " Env", c.env.join(" "));
    }
    if let Some(dir) = &c.dir {
        field(&mut out, " Dir", dir);
    }
    if let Some(user) = &c.user {
        field(&mut out, " User", user);
    }
    if let Some(host) = &c.hostname {
        field(&mut out, " Hostname", host);
    }
    if let Some(sig) = &c.stop_signal {
        field(&mut out, " StopSignal", sig);
    }
    field(
        &mut out,
        " StopGracePeriod",
        format_duration_ms(c.stop_grace_period_ms),
    );
    if !c.mounts.is_empty() {
        out.push_str("Mounts:\n");
        for m in &c.mounts {
            field(&mut out, " Target", &m.target);
            if !m.source.is_empty() {
                field(&mut out, "  Source", &m.source);
            }
            field(&mut out, "  ReadOnly", m.read_only);
            let kind = match m.kind {
                mesh_api::MountType::Volume => "volume",
                mesh_api::MountType::Bind => "bind",
                mesh_api::MountType::Tmpfs => "tmpfs",
            };
            field(&mut out, "  Type", kind);
        }
    }
    if let Some(h) = &c.healthcheck {
        out.push_str("Healthcheck:\n");
        field(&mut out, " Command", &h.cmd);
        field(&mut out, " Interval", format_duration_ms(h.interval_ms));
        field(&mut out, " Timeout", format_duration_ms(h.timeout_ms));
        field(&mut out, " Retries", h.retries);
        field(
            &mut out,
            " Start Period",
            format_duration_ms(h.start_period_ms),
        );
    }
    let r = &t.resources;
    if *r != mesh_api::Resources::default() {
        out.push_str("Resources:\n");
        for (title, amounts) in [(" Reservations", r.reservations), (" Limits", r.limits)] {
            if amounts == mesh_api::ResourceAmounts::default() {
                continue;
            }
            let _ = writeln!(out, "{title}:");
            if amounts.nano_cpus > 0 {
                field(
                    &mut out,
                    "  CPU",
                    super::significant(amounts.nano_cpus as f64 / 1e9, 6),
                );
            }
            if amounts.memory_bytes > 0 {
                field(&mut out, "  Memory", format_bytes(amounts.memory_bytes));
            }
        }
    }
    let rp = &t.restart_policy;
    out.push_str("RestartPolicy:\n");
    field(&mut out, " Condition", rp.condition.as_str());
    field(&mut out, " Delay", format_duration_ms(rp.delay_ms));
    if rp.max_attempts > 0 {
        field(&mut out, " Max Attempts", rp.max_attempts);
    }
    if rp.window_ms > 0 {
        field(&mut out, " Window", format_duration_ms(rp.window_ms));
    }
    if !t.networks.is_empty() {
        let names: Vec<String> = t
            .networks
            .iter()
            .map(|n| {
                let name = node_column(network_names, &n.target);
                if n.aliases.is_empty() {
                    name
                } else {
                    format!("{name} (aliases: {})", n.aliases.join(", "))
                }
            })
            .collect();
        field(&mut out, "Networks", names.join(", "));
    }
    let mode = match spec.endpoint_spec.mode {
        mesh_api::EndpointMode::Vip => "vip",
        mesh_api::EndpointMode::Dnsrr => "dnsrr",
    };
    field(&mut out, "Endpoint Mode", mode);
    let ports = service_ports(s);
    if !ports.is_empty() {
        out.push_str("Ports:\n");
        for p in ports {
            let published = if p.published_port == 0 {
                "(to be allocated)".to_string()
            } else {
                p.published_port.to_string()
            };
            let _ = writeln!(out, " PublishedPort = {published}");
            let _ = writeln!(out, "  Protocol = {}", p.protocol);
            let _ = writeln!(out, "  TargetPort = {}", p.target_port);
            let mode = match p.publish_mode {
                PublishMode::Ingress => "ingress",
                PublishMode::Host => "host",
            };
            let _ = writeln!(out, "  PublishMode = {mode}");
        }
    }
    if !s.virtual_ips.is_empty() {
        out.push_str("Virtual IPs:\n");
        for vip in &s.virtual_ips {
            let _ = writeln!(
                out,
                " {}: {}",
                node_column(network_names, &vip.network_id),
                vip.addr
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::{
        ContainerSpec, EndpointSpec, HealthConfig, NetworkAttachmentConfig, Placement, ServiceSpec,
        TaskSpec, TaskStatus, UpdateState, UpdateStatus,
    };

    const NOW: u64 = 1_714_566_600_000;

    fn service(id: &str, name: &str, mode: ServiceMode) -> Service {
        Service {
            id: id.into(),
            version: 1,
            created_at: NOW,
            updated_at: NOW,
            spec: ServiceSpec {
                name: name.into(),
                task_template: TaskSpec {
                    container: ContainerSpec {
                        image: "meshd-test:latest".into(),
                        stop_grace_period_ms: 10_000,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                mode,
                ..Default::default()
            },
            spec_version: 1,
            previous_spec: None,
            previous_spec_version: 0,
            update_status: None,
            ports: Vec::new(),
            virtual_ips: Vec::new(),
        }
    }

    fn view(s: Service, running: u64, desired: u64) -> ServiceView {
        ServiceView {
            service: s,
            running_tasks: running,
            desired_tasks: desired,
        }
    }

    fn port(published: u16, target: u16, protocol: Protocol, mode: PublishMode) -> PortConfig {
        PortConfig {
            protocol,
            target_port: target,
            published_port: published,
            publish_mode: mode,
            proxy_protocol: false,
        }
    }

    fn task(id: &str, slot: u64, created: u64, state: TaskState, desired: TaskState) -> Task {
        Task {
            id: id.into(),
            version: 1,
            created_at: created,
            updated_at: created,
            service_id: "svcweb0000000000000000000".into(),
            service_name: "web".into(),
            slot,
            node_id: "n1aaaaaaaaaaaaaaaaaaaaaaa".into(),
            spec: TaskSpec {
                container: ContainerSpec {
                    image: "meshd-test:latest".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            spec_version: 1,
            desired_state: desired,
            status: TaskStatus {
                state,
                timestamp: created,
                ..Default::default()
            },
            networks: Vec::new(),
            host_ports: Vec::new(),
        }
    }

    #[test]
    fn ingress_ports_fold_like_docker() {
        use Protocol::{Tcp, Udp};
        use PublishMode::{Host, Ingress};
        assert_eq!(ingress_ports(&[]), "");
        assert_eq!(
            ingress_ports(&[port(8080, 80, Tcp, Ingress)]),
            "*:8080->80/tcp"
        );
        assert_eq!(
            ingress_ports(&[
                port(30002, 82, Tcp, Ingress),
                port(30000, 80, Tcp, Ingress),
                port(30001, 81, Tcp, Ingress),
                port(5353, 53, Udp, Ingress),
                port(9000, 9000, Tcp, Host),
                port(0, 443, Tcp, Ingress),
                port(8443, 443, Tcp, Ingress),
            ]),
            "*:8443->443/tcp, *:30000-30002->80-82/tcp, *:5353->53/udp"
        );
    }

    #[test]
    fn service_table_has_dockers_columns() {
        let mut web = service(
            "svcweb0000000000000000000",
            "web",
            ServiceMode::Replicated { replicas: 3 },
        );
        web.ports = vec![port(8080, 80, Protocol::Tcp, PublishMode::Ingress)];
        web.spec.task_template.container.image = "meshd-test:latest@sha256:abcd".into();
        let mut capped = service(
            "svccap0000000000000000000",
            "capped",
            ServiceMode::Replicated { replicas: 4 },
        );
        capped.spec.task_template.placement = Placement {
            constraints: Vec::new(),
            max_replicas: 2,
        };
        let agent = service("svcagt0000000000000000000", "agent10", ServiceMode::Global);
        let agent2 = service("svcag20000000000000000000", "agent2", ServiceMode::Global);
        let mut views = vec![
            view(web, 2, 3),
            view(agent, 4, 4),
            view(capped, 4, 4),
            view(agent2, 0, 0),
        ];
        views.sort_by(service_order);
        assert_eq!(
            service_table(&views),
            "\
ID             NAME      MODE         REPLICAS               IMAGE               PORTS
svcag2000000   agent2    global       0/0                    meshd-test:latest   
svcagt000000   agent10   global       4/4                    meshd-test:latest   
svccap000000   capped    replicated   4/4 (max 2 per node)   meshd-test:latest   
svcweb000000   web       replicated   2/3                    meshd-test:latest   *:8080->80/tcp
"
        );
    }

    #[test]
    fn ps_table_shows_history_pending_reasons_and_health() {
        let mut running = task(
            "t1new0000000000000000000a",
            1,
            NOW - 5_000,
            TaskState::Running,
            TaskState::Running,
        );
        running.status.health = Health::Healthy;
        let mut failed = task(
            "t1old0000000000000000000b",
            1,
            NOW - 60_000,
            TaskState::Failed,
            TaskState::Shutdown,
        );
        failed.status.timestamp = NOW - 20_000;
        failed.status.err =
            "task: non-zero exit (1): the process was killed by the OOM killer".into();
        failed.status.exit_code = Some(1);
        let mut pending = task(
            "t2pen0000000000000000000c",
            2,
            NOW - 3_000,
            TaskState::Pending,
            TaskState::Running,
        );
        pending.node_id.clear();
        pending.status.message = "no suitable node (insufficient resources on 2 nodes)".into();
        let mut tenth = task(
            "t10ru0000000000000000000d",
            10,
            NOW - 1_000,
            TaskState::Running,
            TaskState::Running,
        );
        tenth.node_id = "n2bbbbbbbbbbbbbbbbbbbbbbb".into();
        tenth.host_ports = vec![8080];
        let mut tasks = vec![tenth, pending, failed, running];
        tasks.sort_by(task_order);
        let nodes: BTreeMap<String, String> = [
            ("n1aaaaaaaaaaaaaaaaaaaaaaa".to_string(), "host1".to_string()),
            ("n2bbbbbbbbbbbbbbbbbbbbbbb".to_string(), "host2".to_string()),
        ]
        .into();
        let mut svc = service(
            "svcweb0000000000000000000",
            "web",
            ServiceMode::Replicated { replicas: 3 },
        );
        svc.spec.endpoint_spec = EndpointSpec {
            ports: vec![port(8080, 80, Protocol::Tcp, PublishMode::Host)],
            ..Default::default()
        };
        let services: BTreeMap<String, Service> = [(svc.id.clone(), svc)].into();
        let ctx = PsContext {
            now_ms: NOW,
            no_trunc: false,
            node_names: &nodes,
            services: &services,
        };
        let want = "\
ID             NAME        IMAGE               NODE      DESIRED STATE   CURRENT STATE                     ERROR                              PORTS
t1new0000000   web.1       meshd-test:latest   host1     Running         Running 5 seconds ago (healthy)                                      
t1old0000000    \\_ web.1   meshd-test:latest   host1     Shutdown        Failed 20 seconds ago             \"task: non-zero exit (1): the …\"   
t2pen0000000   web.2       meshd-test:latest             Running         Pending 3 seconds ago             \"no suitable node (insufficien…\"   
t10ru0000000   web.10      meshd-test:latest   host2     Running         Running 1 second ago                                                 *:8080->80/tcp
";
        assert_eq!(ps_table(&tasks, &ctx), want);
        let whole = ps_table(
            &tasks,
            &PsContext {
                no_trunc: true,
                ..ctx
            },
        );
        assert!(
            whole.contains("t1old0000000000000000000b    \\_ web.1"),
            "{whole}"
        );
        assert!(
            whole.contains("\"no suitable node (insufficient resources on 2 nodes)\""),
            "{whole}"
        );
    }

    #[test]
    fn errors_are_quoted_and_cut() {
        let mut t = task("t", 1, NOW, TaskState::Rejected, TaskState::Shutdown);
        assert_eq!(task_error(&t, false), "");
        t.status.err = "no such image: meshd-test:v9".into();
        assert_eq!(task_error(&t, false), "\"no such image: meshd-test:v9\"");
        t.status.err = "x".repeat(40);
        let cut = task_error(&t, false);
        assert_eq!(cut.chars().count(), MAX_ERROR_LEN + 2);
        assert!(cut.ends_with("…\""), "{cut}");
        assert_eq!(task_error(&t, true).len(), 42);
        // A running task's status message is no error.
        let mut r = task("r", 1, NOW, TaskState::Running, TaskState::Running);
        r.status.message = "started".into();
        assert_eq!(task_error(&r, false), "");
    }

    #[test]
    fn current_state_words_like_docker() {
        let mut t = task("t", 1, NOW - 90_000, TaskState::Running, TaskState::Running);
        assert_eq!(current_state(&t, NOW), "Running about a minute ago");
        t.status.health = Health::Starting;
        assert_eq!(
            current_state(&t, NOW),
            "Running about a minute ago (health: starting)"
        );
        t.status.state = TaskState::Shutdown;
        assert_eq!(current_state(&t, NOW), "Shutdown about a minute ago");
    }

    #[test]
    fn pretty_block_names_the_settings() {
        let mut s = service(
            "svcweb0000000000000000000",
            "web",
            ServiceMode::Replicated { replicas: 3 },
        );
        s.spec.labels.insert("tier".into(), "front".into());
        s.spec.task_template.container.args = vec!["sleep".into(), "1d".into()];
        s.spec.task_template.container.env = vec!["A=1".into()];
        s.spec.task_template.container.healthcheck = Some(HealthConfig {
            cmd: "true".into(),
            interval_ms: 30_000,
            timeout_ms: 30_000,
            retries: 3,
            start_period_ms: 0,
        });
        s.spec.task_template.placement.constraints = vec!["node.role==worker".into()];
        s.spec.task_template.resources.limits.memory_bytes = 64 << 20;
        s.spec.task_template.networks = vec![NetworkAttachmentConfig {
            target: "nwapp0000000000000000000a".into(),
            aliases: vec!["www".into()],
        }];
        s.ports = vec![port(8080, 80, Protocol::Tcp, PublishMode::Ingress)];
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Completed,
            started_at: NOW - 60_000,
            completed_at: NOW - 30_000,
            message: "update completed".into(),
        });
        let names: BTreeMap<String, String> = [(
            "nwapp0000000000000000000a".to_string(),
            "appnet".to_string(),
        )]
        .into();
        let text = service_pretty(&view(s, 3, 3), &names, NOW);
        for line in [
            "ID:                     svcweb0000000000000000000\n",
            "Name:                   web\n",
            "Labels:\n - tier=front\n",
            "Service Mode:           Replicated\n Replicas:              3\n",
            "Tasks:                  3 running, 3 desired\n",
            " State:                 completed\n",
            " Constraints:           [node.role==worker]\n",
            "UpdateConfig:\n Parallelism:           1\n",
            " On failure:            pause\n",
            " Monitoring Period:     5s\n",
            " Update order:          stop-first\n",
            "RollbackConfig:\n",
            " Rollback order:        stop-first\n",
            " Image:                 meshd-test:latest\n",
            " Args:                  sleep 1d\n",
            " Env:                   A=1\n",
            "Healthcheck:\n Command:               true\n Interval:              30s\n",
            " Limits:\n  Memory:               64MiB\n",
            "Networks:               appnet (aliases: www)\n",
            "Endpoint Mode:          vip\n",
            "Ports:\n PublishedPort = 8080\n  Protocol = tcp\n  TargetPort = 80\n  PublishMode = ingress\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
