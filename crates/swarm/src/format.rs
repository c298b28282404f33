//! Pure formatting and parsing: the table writer, durations, timestamps, sizes and the
//! human-readable blocks printed by `info`, `node ls`, `node inspect --pretty`,
//! `network ls`, `network connect` and the join instructions; [`service`] holds those of
//! services and tasks, [`container`] those of containers, images and logs. Nothing here
//! does I/O: the current time is always handed in.

pub mod container;
pub mod service;

use std::cmp::Ordering;
use std::fmt::Write as _;

use mesh_api::api::{Info, InitResponse};
use mesh_api::ids::short_id;
use mesh_api::{Availability, ConnectResponse, NetworkView, Node, NodeRole, Reachability};
use serde::Serialize;

/// Columns narrower than this are padded up to it (docker's tabwriter `minwidth`).
pub const TABLE_MIN_WIDTH: usize = 10;
/// Spaces between a cell's content and the next column (docker's tabwriter `padding`).
pub const TABLE_PADDING: usize = 3;

/// A text table aligned like docker's tabwriter: every column but the last is padded to
/// `max(widest cell + 3, 10)` characters; the last column is never padded.
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is `header`.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        let mut t = Table::default();
        t.row(header);
        t
    }

    /// Appends a row.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The aligned text, one line per row, each ending with `\n`.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let width = (widths[i] + TABLE_PADDING).max(TABLE_MIN_WIDTH);
                    let pad = width - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

/// Why a duration such as `--heartbeat-period 2s` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// the duration is empty; write a number followed by a unit, e.g. 2s or 1h30m
    #[error("the duration is empty; write a number followed by a unit, e.g. 2s or 1h30m")]
    Empty,
    /// A number is not followed by a unit.
    #[error("{number} in {input:?} has no unit; add one of ms, s, m, h or d (e.g. {number}s)")]
    MissingUnit {
        /// The whole input.
        input: String,
        /// The number that has no unit.
        number: String,
    },
    /// The unit is not one of ms, s, m, h, d.
    #[error(
        "{input:?} has the unknown unit {unit:?}; use ms, s, m, h or d (e.g. 500ms, 2s, 1h30m, 90d)"
    )]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit that was not understood.
        unit: String,
    },
    /// Something other than a number stands where a number must.
    #[error(
        "{input:?} is not a duration; write numbers followed by units, e.g. 500ms, 2s, 1h30m or 90d"
    )]
    Malformed {
        /// The whole input.
        input: String,
    },
    /// The value does not fit in 64 bits of milliseconds.
    #[error("{input:?} is too long a duration; use a shorter one")]
    Overflow {
        /// The whole input.
        input: String,
    },
    /// The value is below one millisecond.
    #[error("{input:?} is shorter than one millisecond; use at least 1ms")]
    TooShort {
        /// The whole input.
        input: String,
    },
}

/// Milliseconds in one of the units a duration may use.
fn unit_ms(unit: &str) -> Option<u128> {
    Some(match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    })
}

/// Parses a duration such as `500ms`, `2s`, `1.5h`, `1h30m` or `90d` into milliseconds.
///
/// A duration is one or more `NUMBER UNIT` pairs; numbers may have a fraction; units are
/// `ms`, `s`, `m`, `h` and `d`. `0` alone is zero. Results below 1 ms (other than zero)
/// and above `u64::MAX` ms are refused.
pub fn parse_duration_ms(input: &str) -> Result<u64, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(0);
    }
    // Total in nanoseconds so that fractions like 1.5ms stay exact enough.
    const NANOS_PER_MS: u128 = 1_000_000;
    let overflow = || DurationError::Overflow {
        input: input.to_string(),
    };
    let mut total_ns: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(DurationError::Malformed {
                input: input.to_string(),
            });
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if unit.is_empty() {
            return Err(DurationError::MissingUnit {
                input: input.to_string(),
                number: number.to_string(),
            });
        }
        let Some(ms) = unit_ms(unit) else {
            return Err(DurationError::UnknownUnit {
                input: input.to_string(),
                unit: unit.to_string(),
            });
        };
        let unit_ns = ms * NANOS_PER_MS;
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| overflow())?
        };
        let mut part = whole.checked_mul(unit_ns).ok_or_else(overflow)?;
        // Fraction digits beyond nanosecond precision of the unit are dropped.
        let mut scale = unit_ns;
        for digit in frac.chars().filter_map(|c| c.to_digit(10)) {
            scale /= 10;
            if scale == 0 {
                break;
            }
            part += u128::from(digit) * scale;
        }
        total_ns = total_ns.checked_add(part).ok_or_else(overflow)?;
    }
    let total_ms = total_ns / NANOS_PER_MS;
    if total_ms == 0 && total_ns > 0 {
        return Err(DurationError::TooShort {
            input: input.to_string(),
        });
    }
    u64::try_from(total_ms).map_err(|_| overflow())
}

/// Formats milliseconds the way [`parse_duration_ms`] reads them: `500ms`, `2s`, `2.5s`,
/// `1h30m`, `90d`, `1d1h1m1.5s`; zero is `0s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let days = ms / 86_400_000;
    let hours = ms % 86_400_000 / 3_600_000;
    let minutes = ms % 3_600_000 / 60_000;
    let seconds = ms % 60_000 / 1_000;
    let millis = ms % 1_000;
    let mut out = String::new();
    if days > 0 {
        let _ = write!(out, "{days}d");
    }
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    if seconds > 0 || millis > 0 {
        if millis == 0 {
            let _ = write!(out, "{seconds}s");
        } else {
            let frac = format!("{millis:03}");
            let _ = write!(out, "{seconds}.{}s", frac.trim_end_matches('0'));
        }
    }
    out
}

/// Formats Unix milliseconds as RFC 3339 UTC, e.g. `2024-05-01T12:30:00.250Z`
/// (the fraction only when it is not zero).
pub fn format_timestamp_ms(ms: u64) -> String {
    let secs = ms / 1_000;
    let millis = ms % 1_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3_600, rem % 3_600 / 60, rem % 60);
    if millis == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{millis:03}Z")
    }
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Formats a byte count with binary units and four significant digits, like docker:
/// `512B`, `1.5KiB`, `1.952GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{}{}", significant(value, 4), UNITS[unit])
}

/// `value` with `digits` significant digits, trailing zeros removed (like Go's `%.4g`
/// for values below 10^digits).
fn significant(value: f64, digits: i32) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = usize::try_from((digits - 1 - magnitude).max(0)).unwrap_or(0);
    let s = format!("{value:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Compares strings the way people sort host names: runs of digits by value, so
/// `node2` < `node10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let alen = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                let blen = b.find(|c: char| !c.is_ascii_digit()).unwrap_or(b.len());
                let (an, bn) = (&a[..alen], &b[..blen]);
                let (at, bt) = (an.trim_start_matches('0'), bn.trim_start_matches('0'));
                let ord = at
                    .len()
                    .cmp(&bt.len())
                    .then_with(|| at.cmp(bt))
                    .then_with(|| an.len().cmp(&bn.len()));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[alen..];
                b = &b[blen..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                a = &a[x.len_utf8()..];
                b = &b[y.len_utf8()..];
            }
        }
    }
}

/// The order of `docker node ls`: by host name (natural order), then by ID.
pub fn node_order(x: &Node, y: &Node) -> Ordering {
    natural_cmp(&x.description.hostname, &y.description.hostname).then_with(|| x.id.cmp(&y.id))
}

/// Sorts nodes in [`node_order`].
pub fn sort_nodes(nodes: &mut [Node]) {
    nodes.sort_by(node_order);
}

/// First letter upper case, the rest unchanged (`drain` → `Drain`).
pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Availability as `node ls` prints it: `Active`, `Pause`, `Drain`.
pub fn availability_display(a: Availability) -> String {
    capitalize(a.as_str())
}

/// The MANAGER STATUS column: `Leader`, `Reachable`, `Unreachable`, `Unknown`, or empty
/// for a worker.
pub fn manager_status(node: &Node) -> &'static str {
    match &node.manager_status {
        None => "",
        Some(m) if m.leader => "Leader",
        Some(m) => match m.reachability {
            Reachability::Reachable => "Reachable",
            Reachability::Unreachable => "Unreachable",
            Reachability::Unknown => "Unknown",
        },
    }
}

/// The `node ls` table. `self_id` is the node the CLI talks to; its ID is followed by
/// ` *`. Nodes are printed in the order given (see [`sort_nodes`]).
pub fn node_table(nodes: &[Node], self_id: &str) -> String {
    let mut table = Table::new([
        "ID",
        "HOSTNAME",
        "STATUS",
        "AVAILABILITY",
        "MANAGER STATUS",
        "ENGINE VERSION",
    ]);
    for n in nodes {
        let marker = if !self_id.is_empty() && n.id == self_id {
            '*'
        } else {
            ' '
        };
        table.row([
            format!("{} {marker}", n.id),
            n.description.hostname.clone(),
            n.status.state.display().to_string(),
            availability_display(n.spec.availability),
            manager_status(n).to_string(),
            n.description.engine_version.clone(),
        ]);
    }
    table.render()
}

/// Serializes with four-space indentation, like docker's `inspect`.
pub fn to_json_pretty<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    value.serialize(&mut ser)?;
    // serde_json writes valid UTF-8.
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Re-lays out JSON text without reordering anything: `indent` `Some("    ")` gives
/// docker's `inspect` layout (the same as [`to_json_pretty`]), `None` gives compact JSON on
/// one line. The input must be valid JSON (e.g. a `RawValue` the daemon sent), so the
/// daemon's field order and fields unknown to this CLI survive.
pub fn reformat_json(raw: &str, indent: Option<&str>) -> String {
    fn newline(out: &mut String, indent: Option<&str>, depth: usize) {
        if let Some(unit) = indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(unit);
            }
        }
    }
    let mut out = String::with_capacity(raw.len() + raw.len() / 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
                match chars.next_if(|&n| n == '}' || n == ']') {
                    Some(close) => out.push(close),
                    None => {
                        depth += 1;
                        newline(&mut out, indent, depth);
                    }
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, indent, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, indent, depth);
            }
            ':' => {
                out.push(c);
                if indent.is_some() {
                    out.push(' ');
                }
            }
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// `label: value` aligned at column 24, the way `node inspect --pretty` prints its fields.
fn field(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<24}{value}", format!("{label}:"));
}

/// The human-readable block of `node inspect --pretty`.
pub fn node_pretty(n: &Node) -> String {
    let mut out = String::new();
    field(&mut out, "ID", &n.id);
    if !n.spec.labels.is_empty() {
        out.push_str("Labels:\n");
        for (k, v) in &n.spec.labels {
            let _ = writeln!(out, " - {k}={v}");
        }
    }
    field(&mut out, "Hostname", &n.description.hostname);
    field(&mut out, "Joined at", format_timestamp_ms(n.created_at));
    out.push_str("Status:\n");
    field(&mut out, " State", n.status.state.display());
    if !n.status.message.is_empty() {
        field(&mut out, " Message", &n.status.message);
    }
    field(
        &mut out,
        " Availability",
        availability_display(n.spec.availability),
    );
    field(&mut out, " Address", &n.status.addr);
    if let Some(m) = &n.manager_status {
        out.push_str("Manager Status:\n");
        field(&mut out, " Address", &m.addr);
        let raft = match m.reachability {
            Reachability::Reachable => "Reachable",
            Reachability::Unreachable => "Unreachable",
            Reachability::Unknown => "Unknown",
        };
        field(&mut out, " Raft Status", raft);
        field(&mut out, " Leader", if m.leader { "Yes" } else { "No" });
    }
    out.push_str("Platform:\n");
    field(&mut out, " Operating System", &n.description.os);
    field(&mut out, " Architecture", &n.description.architecture);
    out.push_str("Resources:\n");
    field(
        &mut out,
        " CPUs",
        significant(n.description.nano_cpus as f64 / 1e9, 6),
    );
    field(
        &mut out,
        " Memory",
        format_bytes(n.description.memory_bytes),
    );
    field(&mut out, "Engine Version", &n.description.engine_version);
    field(&mut out, "Data Port", n.data_port);
    if n.cert_expiry > 0 {
        out.push_str("TLS Info:\n");
        field(
            &mut out,
            " Certificate Expiry",
            format_timestamp_ms(n.cert_expiry),
        );
    }
    out
}

/// The Swarm block of `swarm info`, modelled on `docker info`'s Swarm section.
pub fn info_block(info: &Info) -> String {
    let mut out = String::new();
    let state = if info.local_node_state.is_empty() {
        "inactive"
    } else {
        info.local_node_state.as_str()
    };
    let _ = writeln!(out, "Swarm: {state}");
    if !info.error.is_empty() {
        let _ = writeln!(out, " Error: {}", info.error);
    }
    if state == "inactive" {
        return out;
    }
    let _ = writeln!(out, " NodeID: {}", info.node_id);
    let _ = writeln!(out, " Is Manager: {}", info.control_available);
    if info.control_available {
        let _ = writeln!(out, " ClusterID: {}", info.cluster_id);
        let _ = writeln!(out, " Managers: {}", info.managers);
        let _ = writeln!(out, " Nodes: {}", info.nodes);
    }
    if !info.hostname.is_empty() {
        let _ = writeln!(out, " Hostname: {}", info.hostname);
    }
    let _ = writeln!(out, " Data Path Port: {}", info.data_port);
    if let Some(m) = &info.routing_mesh {
        out.push_str(" Routing Mesh:\n");
        let _ = writeln!(out, "  Dataplane: {}", m.dataplane);
        let _ = writeln!(out, "  Published Ports: {}", m.published_ports);
        let _ = writeln!(out, "  VIP Networks: {}", m.vip_networks);
        if m.dataplane == "userspace" {
            let _ = writeln!(out, "  Relayed TCP Connections: {}", m.tcp_relays);
            let _ = writeln!(out, "  UDP Flows: {}", m.udp_flows);
        }
    }
    if let Some(raft) = &info.raft {
        out.push_str(" Raft:\n");
        let leader = match (&raft.leader_node_id, raft.leader) {
            (Some(node), _) if !node.is_empty() => node.clone(),
            (_, Some(id)) => format!("raft member {id}"),
            _ => "none elected".to_string(),
        };
        let _ = writeln!(out, "  Leader: {leader}");
        let _ = writeln!(out, "  Term: {}", raft.term);
        let _ = writeln!(out, "  Has Quorum: {}", raft.has_quorum);
        let _ = writeln!(out, "  Member ID: {}", raft.id);
        let _ = writeln!(out, "  Last Log Index: {}", raft.last_log_index);
        let _ = writeln!(out, "  Last Applied: {}", raft.last_applied);
        let _ = writeln!(out, "  Snapshot Index: {}", raft.snapshot_index);
    }
    out.push_str(" Dispatcher:\n");
    let _ = writeln!(
        out,
        "  Heartbeat Period: {}",
        format_duration_ms(info.heartbeat_period_ms)
    );
    let _ = writeln!(
        out,
        "  Node Down After: {}",
        format_duration_ms(info.node_down_after_ms)
    );
    if info.cert_expiry > 0 {
        out.push_str(" Node Certificate:\n");
        let _ = writeln!(out, "  Expires: {}", format_timestamp_ms(info.cert_expiry));
    }
    let _ = writeln!(out, " Node Address: {}", info.node_addr);
    if !info.remote_managers.is_empty() {
        out.push_str(" Manager Addresses:\n");
        let mut addrs: Vec<&str> = info
            .remote_managers
            .iter()
            .map(|m| m.addr.as_str())
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        for a in addrs {
            let _ = writeln!(out, "  {a}");
        }
    }
    out
}

/// `To add a worker to this swarm, run the following command: …`, as `join-token`
/// prints it (ends with one newline).
pub fn join_instructions(role: NodeRole, token: &str, manager_addr: &str) -> String {
    format!(
        "To add a {role} to this swarm, run the following command:\n\n    swarm join --token {token} {manager_addr}\n"
    )
}

/// What `swarm init` prints on success.
pub fn init_message(resp: &InitResponse) -> String {
    format!(
        "Swarm initialized: current node ({}) is now a manager.\n\n{}\nTo add a manager to this swarm, run 'swarm join-token manager' and follow the instructions.\n",
        resp.node_id,
        join_instructions(NodeRole::Worker, &resp.worker_token, &resp.manager_addr)
    )
}

/// The SCOPE column of `network ls`: every meshd network spans the swarm.
pub const NETWORK_SCOPE: &str = "swarm";

/// The order of `docker network ls`: by name (natural order), then by ID.
pub fn network_order(x: &NetworkView, y: &NetworkView) -> Ordering {
    natural_cmp(&x.network.spec.name, &y.network.spec.name)
        .then_with(|| x.network.id.cmp(&y.network.id))
}

/// A network ID as `network ls` prints it: the first 12 characters, or whole with
/// `--no-trunc`.
pub fn network_id(id: &str, no_trunc: bool) -> &str {
    if no_trunc { id } else { short_id(id) }
}

/// The `network ls` table, docker's four columns: `NETWORK ID`, `NAME`, `DRIVER`,
/// `SCOPE`. Networks are printed in the order given (see [`network_order`]).
pub fn network_table(networks: &[NetworkView], no_trunc: bool) -> String {
    let mut table = Table::new(["NETWORK ID", "NAME", "DRIVER", "SCOPE"]);
    for v in networks {
        table.row([
            network_id(&v.network.id, no_trunc).to_string(),
            v.network.spec.name.clone(),
            v.network.spec.driver.clone(),
            NETWORK_SCOPE.to_string(),
        ]);
    }
    table.render()
}

/// The address a connected endpoint holds, with the network's prefix length:
/// `10.20.0.2/24`.
pub fn endpoint_address(resp: &ConnectResponse) -> String {
    format!("{}/{}", resp.endpoint.ip, resp.subnet.prefix_len())
}

/// A `wg-quick` configuration for an external WireGuard peer just connected: its
/// address, and the serving node as its only peer, routing the network's subnet. The
/// user adds the `PrivateKey` that matches the public key they gave. `None` when the
/// answer carries no node public key (it was not a WireGuard connection).
pub fn wg_peer_config(resp: &ConnectResponse) -> Option<String> {
    let public_key = resp.node_public_key.as_deref()?;
    let mut out = String::new();
    out.push_str("[Interface]\n");
    let _ = writeln!(out, "Address = {}", endpoint_address(resp));
    out.push_str("\n[Peer]\n");
    let _ = writeln!(out, "PublicKey = {public_key}");
    if let Some(endpoint) = resp.node_endpoint {
        let _ = writeln!(out, "Endpoint = {endpoint}");
    }
    let _ = writeln!(out, "AllowedIPs = {}", resp.subnet.trunc());
    out.push_str("PersistentKeepalive = 25\n");
    Some(out)
}

/// A span of time the way docker words it (`units.HumanDuration`): `Less than a second`,
/// `1 second`, `5 seconds`, `About a minute`, `5 minutes`, `About an hour`, `5 hours`,
/// `3 days`, `2 weeks`, `3 months`, `2 years`.
pub fn human_duration(ms: u64) -> String {
    let seconds = ms / 1_000;
    let minutes = seconds / 60;
    // Docker rounds hours to the nearest.
    let hours = (ms + 1_800_000) / 3_600_000;
    if seconds < 1 {
        "Less than a second".to_string()
    } else if seconds == 1 {
        "1 second".to_string()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".to_string()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".to_string()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", ms / 3_600_000 / 24 / 365)
    }
}

/// `5 seconds ago`, `less than a second ago`, `about a minute ago`: the time since `then`
/// (Unix ms) in lower case, as `service ps` prints it. A time in the future reads as now.
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    format!(
        "{} ago",
        human_duration(now_ms.saturating_sub(then_ms)).to_lowercase()
    )
}

/// `s` cut to `max` characters, the last one replaced by `…` when it was cut (docker's
/// `Ellipsis`).
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A byte count with decimal units and three significant digits, like `docker image ls`:
/// `512B`, `1.23kB`, `7.8MB`, `142MB`.
pub fn format_size_decimal(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let mut text = significant(value, 3);
    // 999.95 rounds up to 1000: carry into the next unit.
    if text == "1000" && unit + 1 < UNITS.len() {
        text = "1".to_string();
        unit += 1;
    }
    format!("{text}{}", UNITS[unit])
}

/// Days since 1970-01-01 of a Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// Parses an RFC 3339 time such as `2024-05-01T12:30:00Z`,
/// `2024-05-01T12:30:00.123456789+02:00` into Unix milliseconds; `None` when it is not one
/// (or is before 1970).
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let num = |t: &str| -> Option<u64> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (date, rest) = s.split_at_checked(10)?;
    let mut parts = date.split('-');
    let (y, m, d) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (time, rest) = rest.split_at_checked(8)?;
    let mut parts = time.split(':');
    let (hh, mm, ss) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let (millis, zone) = match rest.strip_prefix('.') {
        Some(frac) => {
            let end = frac
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(frac.len());
            let digits = &frac[..end];
            if digits.is_empty() {
                return None;
            }
            let ms = format!("{digits:0<3}");
            (num(&ms[..3])?, &frac[end..])
        }
        None => (0, rest),
    };
    let offset_s: i64 = match zone {
        "Z" | "z" => 0,
        _ => {
            let (sign, hm) = match zone.split_at_checked(1)? {
                ("+", hm) => (1, hm),
                ("-", hm) => (-1, hm),
                _ => return None,
            };
            let (h, m) = hm.split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let secs = i64::try_from(num(h)? * 3_600 + num(m)? * 60).ok()?;
            sign * secs
        }
    };
    let days = days_from_civil(y, m, d)?;
    let local = i64::try_from(days * 86_400 + hh * 3_600 + mm * 60 + ss).ok()?;
    let utc = u64::try_from(local - offset_s).ok()?;
    Some(utc * 1_000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::api::{RaftInfo, RemoteManager};
    use mesh_api::{ManagerStatus, NodeDescription, NodeSpec, NodeState, NodeStatus};
    use std::collections::BTreeMap;

    fn node(id: &str, host: &str, manager: Option<(bool, Reachability)>) -> Node {
        Node {
            id: id.into(),
            version: 1,
            created_at: 0,
            updated_at: 0,
            spec: NodeSpec {
                labels: BTreeMap::new(),
                role: if manager.is_some() {
                    NodeRole::Manager
                } else {
                    NodeRole::Worker
                },
                availability: Availability::Active,
            },
            description: NodeDescription {
                hostname: host.into(),
                os: "linux".into(),
                architecture: "x86_64".into(),
                engine_version: "0.1.0".into(),
                nano_cpus: 2_000_000_000,
                memory_bytes: 2_095_882_240,
            },
            status: NodeStatus {
                state: NodeState::Ready,
                message: String::new(),
                addr: "10.0.0.1".into(),
            },
            role: if manager.is_some() {
                NodeRole::Manager
            } else {
                NodeRole::Worker
            },
            raft_id: 0,
            control_addr: "10.0.0.1:2377".into(),
            data_port: 51820,
            manager_status: manager.map(|(leader, reachability)| ManagerStatus {
                leader,
                reachability,
                addr: "10.0.0.1:2377".into(),
            }),
            cert_expiry: 0,
            network_keys: Default::default(),
        }
    }

    #[test]
    fn table_pads_like_tabwriter() {
        let mut t = Table::new(["A", "LONGER HEADER", "LAST"]);
        t.row(["x", "y", "z"]);
        t.row(["a-very-long-first-cell", "", "end"]);
        let got = t.render();
        // 22 characters + 3 of padding = 25 for the first column, 13 + 3 for the second.
        let want = "\
A                        LONGER HEADER   LAST
x                        y               z
a-very-long-first-cell                   end
";
        assert_eq!(got, want);
    }

    #[test]
    fn table_minimum_width_is_ten() {
        let mut t = Table::new(["ID", "X"]);
        t.row(["1", "2"]);
        assert_eq!(t.render(), "ID        X\n1         2\n");
    }

    #[test]
    fn node_table_marks_self_and_manager_status() {
        let mut nodes = vec![
            node("id10", "node10", None),
            node("id2", "node2", Some((false, Reachability::Unreachable))),
            node("id1", "node1", Some((true, Reachability::Reachable))),
            node("id3", "node3", Some((false, Reachability::Reachable))),
        ];
        nodes[0].spec.availability = Availability::Drain;
        nodes[0].status.state = NodeState::Down;
        sort_nodes(&mut nodes);
        let got = node_table(&nodes, "id2");
        let want = "\
ID        HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION
id1       node1      Ready     Active         Leader           0.1.0
id2 *     node2      Ready     Active         Unreachable      0.1.0
id3       node3      Ready     Active         Reachable        0.1.0
id10      node10     Down      Drain                           0.1.0
";
        assert_eq!(got, want);
    }

    #[test]
    fn node_table_without_self_has_no_marker() {
        let nodes = vec![node("abc", "h", None)];
        let got = node_table(&nodes, "");
        assert!(!got.contains('*'), "{got}");
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["node10", "node2", "node1", "alpha", "node02", "Node3"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["Node3", "alpha", "node1", "node2", "node02", "node10"]);
        assert_eq!(natural_cmp("a", "a"), Ordering::Equal);
        assert_eq!(natural_cmp("a", "ab"), Ordering::Less);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2s"), Ok(2_000));
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("90d"), Ok(90 * 86_400_000));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert_eq!(parse_duration_ms(".5s"), Ok(500));
        assert_eq!(parse_duration_ms("2160h0m0s"), Ok(2160 * 3_600_000));
        assert_eq!(parse_duration_ms("1d2h3m4s5ms"), Ok(93_784_005));
        assert_eq!(parse_duration_ms(" 3s "), Ok(3_000));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
    }

    #[test]
    fn durations_refuse_with_a_fix() {
        assert_eq!(parse_duration_ms(""), Err(DurationError::Empty));
        let e = parse_duration_ms("5").unwrap_err();
        assert!(matches!(e, DurationError::MissingUnit { .. }), "{e}");
        assert!(e.to_string().contains("5s"), "{e}");
        let e = parse_duration_ms("5x").unwrap_err();
        assert!(matches!(e, DurationError::UnknownUnit { ref unit, .. } if unit == "x"));
        assert!(e.to_string().contains("use ms, s, m, h or d"), "{e}");
        assert!(matches!(
            parse_duration_ms("5 s"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration_ms("s"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration_ms("1..2s"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration_ms("-1s"),
            Err(DurationError::Malformed { .. })
        ));
        assert!(matches!(
            parse_duration_ms("99999999999999999999999999999d"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(
            parse_duration_ms("300000000000000d"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(
            parse_duration_ms("0.5ms"),
            Err(DurationError::TooShort { .. })
        ));
    }

    #[test]
    fn durations_format_and_round_trip() {
        for (ms, text) in [
            (0, "0s"),
            (500, "500ms"),
            (2_000, "2s"),
            (2_500, "2.5s"),
            (60_000, "1m"),
            (5_400_000, "1h30m"),
            (90 * 86_400_000, "90d"),
            (90_061_500, "1d1h1m1.5s"),
            (1_001, "1.001s"),
        ] {
            assert_eq!(format_duration_ms(ms), text);
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_timestamp_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_timestamp_ms(1_714_566_600_250),
            "2024-05-01T12:30:00.250Z"
        );
        assert_eq!(format_timestamp_ms(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(format_bytes(0), "0B");
        assert_eq!(format_bytes(512), "512B");
        assert_eq!(format_bytes(1536), "1.5KiB");
        assert_eq!(format_bytes(2_095_882_240), "1.952GiB");
    }

    #[test]
    fn init_and_join_text_match_docker() {
        let resp = InitResponse {
            node_id: "abc".into(),
            cluster_id: "c".into(),
            worker_token: "SWMTKN-1-x-y".into(),
            manager_addr: "192.0.2.1:2377".into(),
        };
        assert_eq!(
            init_message(&resp),
            "Swarm initialized: current node (abc) is now a manager.\n\
             \n\
             To add a worker to this swarm, run the following command:\n\
             \n    swarm join --token SWMTKN-1-x-y 192.0.2.1:2377\n\
             \n\
             To add a manager to this swarm, run 'swarm join-token manager' and follow the instructions.\n"
        );
        assert_eq!(
            join_instructions(NodeRole::Manager, "T", "A:1"),
            "To add a manager to this swarm, run the following command:\n\n    swarm join --token T A:1\n"
        );
    }

    #[test]
    fn info_block_for_a_manager() {
        let info = Info {
            version: "0.1.0".into(),
            local_node_state: "active".into(),
            node_id: "n1".into(),
            hostname: "host1".into(),
            node_addr: "10.0.0.1".into(),
            control_available: true,
            cluster_id: "c1".into(),
            managers: 3,
            nodes: 5,
            remote_managers: vec![
                RemoteManager {
                    node_id: "n2".into(),
                    addr: "10.0.0.2:2377".into(),
                },
                RemoteManager {
                    node_id: "n1".into(),
                    addr: "10.0.0.1:2377".into(),
                },
            ],
            raft: Some(RaftInfo {
                id: 1,
                term: 4,
                leader: Some(1),
                leader_node_id: Some("n1".into()),
                last_log_index: 10,
                last_applied: 9,
                snapshot_index: 0,
                has_quorum: true,
            }),
            heartbeat_period_ms: 500,
            node_down_after_ms: 2_000,
            cert_expiry: 0,
            data_port: 51820,
            routing_mesh: Some(mesh_api::api::RoutingMeshInfo {
                dataplane: "ebpf".into(),
                published_ports: 2,
                vip_networks: 1,
                tcp_relays: 0,
                udp_flows: 0,
            }),
            error: String::new(),
        };
        let text = info_block(&info);
        for line in [
            " Routing Mesh:\n  Dataplane: ebpf\n  Published Ports: 2\n  VIP Networks: 1\n",
            "Swarm: active\n",
            " NodeID: n1\n",
            " Is Manager: true\n",
            " ClusterID: c1\n",
            " Managers: 3\n",
            " Nodes: 5\n",
            "  Leader: n1\n",
            "  Term: 4\n",
            "  Heartbeat Period: 500ms\n",
            "  Node Down After: 2s\n",
            " Node Address: 10.0.0.1\n",
            " Manager Addresses:\n  10.0.0.1:2377\n  10.0.0.2:2377\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn info_block_for_an_inactive_node() {
        let info = Info {
            local_node_state: "inactive".into(),
            ..Default::default()
        };
        assert_eq!(info_block(&info), "Swarm: inactive\n");
    }

    #[test]
    fn info_block_for_a_worker_hides_manager_fields() {
        let info = Info {
            local_node_state: "active".into(),
            node_id: "w".into(),
            ..Default::default()
        };
        let text = info_block(&info);
        assert!(text.contains(" Is Manager: false\n"), "{text}");
        assert!(!text.contains("ClusterID"), "{text}");
        assert!(!text.contains("Raft"), "{text}");
    }

    #[test]
    fn pretty_node_block() {
        let mut n = node("id1", "node1", Some((true, Reachability::Reachable)));
        n.spec.labels.insert("zone".into(), "a".into());
        let text = node_pretty(&n);
        assert!(text.starts_with("ID:                     id1\n"), "{text}");
        assert!(text.contains("Labels:\n - zone=a\n"), "{text}");
        assert!(text.contains(" Leader:                Yes\n"), "{text}");
        assert!(text.contains(" CPUs:                  2\n"), "{text}");
        assert!(
            text.contains(" Memory:                1.952GiB\n"),
            "{text}"
        );
        assert!(text.contains(" Availability:          Active\n"), "{text}");
    }

    #[test]
    fn reformat_matches_serde_json_and_keeps_order() {
        let samples = [
            r#"{"b":1,"a":[1,2,{"x":"y"}],"c":{},"d":[],"e":null}"#,
            r#"[{"s":"quote \" brace { ] , : end","u":"é\u00e9\\"},true,false,-1.5e3]"#,
            r#"  { "spaced" : [ 1 , 2 ] , "empty" : { } }  "#,
            "[]",
            "\"just a string\"",
            "42",
        ];
        for raw in samples {
            let value: serde_json::Value = serde_json::from_str(raw).unwrap();
            let pretty = reformat_json(raw, Some("    "));
            let compact = reformat_json(raw, None);
            // Same content as serde_json reads it...
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&pretty).unwrap(),
                value
            );
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&compact).unwrap(),
                value
            );
            assert!(!compact.contains('\n'), "{compact}");
        }
        // ...laid out exactly like serde_json's pretty printer, in the input's order.
        let raw = r#"{"b":1,"a":[1,{"x":"y"}],"c":{},"d":[]}"#;
        assert_eq!(
            reformat_json(raw, Some("    ")),
            "{\n    \"b\": 1,\n    \"a\": [\n        1,\n        {\n            \"x\": \"y\"\n        }\n    ],\n    \"c\": {},\n    \"d\": []\n}"
        );
        let sorted = r#"[{"a":{"k":[1,2]},"b":"v , :"}]"#;
        let value: serde_json::Value = serde_json::from_str(sorted).unwrap();
        assert_eq!(
            reformat_json(sorted, Some("    ")),
            to_json_pretty(&value).unwrap()
        );
    }

    fn network_view(id: &str, name: &str) -> NetworkView {
        NetworkView {
            network: mesh_api::Network {
                id: id.into(),
                version: 1,
                created_at: 0,
                updated_at: 0,
                spec: mesh_api::NetworkSpec {
                    name: name.into(),
                    driver: "overlay".into(),
                    ..Default::default()
                },
                subnet: "10.0.1.0/24".parse().unwrap(),
                gateway: "10.0.1.1".parse().unwrap(),
                mtu: 1440,
            },
            endpoints: Vec::new(),
        }
    }

    fn connect_response(wg: bool) -> ConnectResponse {
        ConnectResponse {
            endpoint: mesh_api::Endpoint {
                id: "ep1".into(),
                network_id: "nw1".into(),
                node_id: "n1".into(),
                ip: "10.20.0.7".parse().unwrap(),
                owner: if wg {
                    mesh_api::EndpointOwner::External {
                        public_key: "peer".into(),
                        endpoint: None,
                    }
                } else {
                    mesh_api::EndpointOwner::Netns {
                        path: "/run/netns/blue".into(),
                        ifname: "eth0".into(),
                    }
                },
                created_at: 0,
            },
            subnet: "10.20.0.0/24".parse().unwrap(),
            gateway: "10.20.0.1".parse().unwrap(),
            mtu: 1440,
            node_public_key: wg.then(|| "NODEKEY".to_string()),
            node_endpoint: wg.then(|| "192.0.2.1:51820".parse().unwrap()),
        }
    }

    #[test]
    fn network_table_has_dockers_columns_and_short_ids() {
        let mut views = vec![
            network_view("nw10aaaaaaaaaaaaaaaaaaaaa", "net10"),
            network_view("nw2bbbbbbbbbbbbbbbbbbbbbb", "net2"),
            network_view("nwappccccccccccccccccccccc", "appnet"),
        ];
        views.sort_by(network_order);
        assert_eq!(
            network_table(&views, false),
            "\
NETWORK ID     NAME      DRIVER    SCOPE
nwappccccccc   appnet    overlay   swarm
nw2bbbbbbbbb   net2      overlay   swarm
nw10aaaaaaaa   net10     overlay   swarm
"
        );
        let whole = network_table(&views[..1], true);
        assert!(
            whole.contains("\nnwappccccccccccccccccccccc   appnet"),
            "{whole}"
        );
        assert_eq!(network_id("short", false), "short");
    }

    #[test]
    fn endpoint_addresses_carry_the_prefix() {
        assert_eq!(endpoint_address(&connect_response(false)), "10.20.0.7/24");
        assert_eq!(wg_peer_config(&connect_response(false)), None);
    }

    #[test]
    fn wg_config_is_ready_for_wg_quick() {
        let mut resp = connect_response(true);
        assert_eq!(
            wg_peer_config(&resp).unwrap(),
            "[Interface]\n\
             Address = 10.20.0.7/24\n\
             \n\
             [Peer]\n\
             PublicKey = NODEKEY\n\
             Endpoint = 192.0.2.1:51820\n\
             AllowedIPs = 10.20.0.0/24\n\
             PersistentKeepalive = 25\n"
        );
        resp.node_endpoint = Some("[2001:db8::1]:51820".parse().unwrap());
        let text = wg_peer_config(&resp).unwrap();
        assert!(text.contains("Endpoint = [2001:db8::1]:51820\n"), "{text}");
        resp.node_endpoint = None;
        let text = wg_peer_config(&resp).unwrap();
        assert!(!text.contains("Endpoint"), "{text}");
    }

    #[test]
    fn json_is_indented_with_four_spaces() {
        let v = serde_json::json!([{"ID": "a"}]);
        assert_eq!(
            to_json_pretty(&v).unwrap(),
            "[\n    {\n        \"ID\": \"a\"\n    }\n]"
        );
    }

    #[test]
    fn human_durations_match_docker() {
        for (ms, text) in [
            (0, "Less than a second"),
            (999, "Less than a second"),
            (1_000, "1 second"),
            (5_400, "5 seconds"),
            (59_999, "59 seconds"),
            (60_000, "About a minute"),
            (119_999, "About a minute"),
            (120_000, "2 minutes"),
            (3_599_999, "59 minutes"),
            (3_600_000, "About an hour"),
            (5_399_999, "About an hour"),
            (5_400_000, "2 hours"),
            (47 * 3_600_000, "47 hours"),
            (48 * 3_600_000, "2 days"),
            (15 * 86_400_000, "2 weeks"),
            (61 * 86_400_000, "2 months"),
            (800 * 86_400_000, "2 years"),
        ] {
            assert_eq!(human_duration(ms), text, "{ms}");
        }
        assert_eq!(ago(10_000, 5_000), "5 seconds ago");
        assert_eq!(ago(10_000, 9_500), "less than a second ago");
        assert_eq!(ago(10_000, 20_000), "less than a second ago");
        assert_eq!(ago(100_000, 10_000), "about a minute ago");
    }

    #[test]
    fn ellipsis_cuts_with_a_marker() {
        assert_eq!(ellipsis("short", 20), "short");
        assert_eq!(ellipsis("exactly-ten", 11), "exactly-ten");
        assert_eq!(ellipsis("sleep 1d && echo done", 10), "sleep 1d …");
        assert_eq!(ellipsis("éééé", 3), "éé…");
    }

    #[test]
    fn decimal_sizes_like_image_ls() {
        assert_eq!(format_size_decimal(0), "0B");
        assert_eq!(format_size_decimal(512), "512B");
        assert_eq!(format_size_decimal(1_234), "1.23kB");
        assert_eq!(format_size_decimal(7_800_000), "7.8MB");
        assert_eq!(format_size_decimal(142_300_000), "142MB");
        assert_eq!(format_size_decimal(999_999), "1MB");
        assert_eq!(format_size_decimal(4_410_000_000), "4.41GB");
    }

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:30:00.250Z"),
            Some(1_714_566_600_250)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T14:30:00.250123456+02:00"),
            Some(1_714_566_600_250)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T11:30:00-01:00"),
            Some(1_714_566_600_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        for ms in [0, 951_782_400_000, 1_714_566_600_250] {
            assert_eq!(parse_rfc3339_ms(&format_timestamp_ms(ms)), Some(ms));
        }
        for bad in [
            "",
            "yesterday",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-05-01T25:00:00Z",
            "2024-05-01T12:30:00",
            "2024-05-01T12:30:00.Z",
            "2024-05-01T12:30:00+2:00",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
