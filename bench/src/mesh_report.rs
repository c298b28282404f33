//! The routing-mesh benchmark's report: a Markdown table of every path's figures, the ratios
//! the goals are about, and every run (pure: a function of the measured figures).

use std::fmt::Write as _;
use std::time::Duration;

use mesh_bench::machine::Machine;
use mesh_bench::stats;

use crate::mesh_load::{IperfResult, WrkResult};

/// Goal: the eBPF path's requests per second at least this share of direct's, both modes.
pub const EBPF_GOAL: f64 = 0.9;
/// Goal: the userspace path's requests per second at least this share of HAProxy's with
/// as many threads as the relay has workers, both modes.
pub const USERSPACE_GOAL: f64 = 1.0;

/// How a row's load reaches the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Straight to one task, no balancing.
    Direct,
    /// meshd's eBPF path (published port on host1).
    Ebpf,
    /// meshd's userspace path (published port on host1).
    Userspace,
    /// HAProxy with this many threads, in host1's namespace.
    Haproxy(u32),
}

impl PathKind {
    /// The row's label.
    pub fn label(self, relay_workers: Option<usize>) -> String {
        match self {
            PathKind::Direct => "direct to one task (no balancing)".to_owned(),
            PathKind::Ebpf => "meshd, eBPF path".to_owned(),
            PathKind::Userspace => match relay_workers {
                Some(w) => format!("meshd, userspace path ({w} workers)"),
                None => "meshd, userspace path".to_owned(),
            },
            PathKind::Haproxy(1) => "HAProxy, 1 thread".to_owned(),
            PathKind::Haproxy(t) => format!("HAProxy, {t} threads"),
        }
    }
}

/// What one path measured: every run of each load.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Figures {
    /// `wrk`, keep-alive.
    pub keepalive: Vec<WrkResult>,
    /// `wrk`, a new connection per request.
    pub close: Vec<WrkResult>,
    /// `iperf3`, one stream.
    pub iperf: Vec<IperfResult>,
}

/// Medians of one `wrk` load's runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WrkMedian {
    /// Requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

/// The median of each figure of `runs`, each on its own; `None` without runs.
pub fn wrk_median(runs: &[WrkResult]) -> Option<WrkMedian> {
    Some(WrkMedian {
        rps: median_f64(&runs.iter().map(|r| r.rps).collect::<Vec<_>>())?,
        p50: stats::median(&runs.iter().map(|r| r.p50).collect::<Vec<_>>())?,
        p99: stats::median(&runs.iter().map(|r| r.p99).collect::<Vec<_>>())?,
    })
}

/// The median of `values` (the lower middle one for an even count); `None` when empty.
pub fn median_f64(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len().checked_sub(1)? / 2).copied()
}

impl Figures {
    /// Medians of the keep-alive runs.
    pub fn keepalive(&self) -> Option<WrkMedian> {
        wrk_median(&self.keepalive)
    }

    /// Medians of the new-connection runs.
    pub fn close(&self) -> Option<WrkMedian> {
        wrk_median(&self.close)
    }

    /// Median throughput, bits per second.
    pub fn iperf(&self) -> Option<f64> {
        median_f64(
            &self
                .iperf
                .iter()
                .map(|r| r.bits_per_sec)
                .collect::<Vec<_>>(),
        )
    }
}

/// One row: a path on a lab of `hosts` hosts, and what it measured or why it failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The path.
    pub path: PathKind,
    /// Hosts of its lab (1: every task on host1; 3: one `web` task per host).
    pub hosts: usize,
    /// The figures, or why there are none.
    pub outcome: Result<Figures, String>,
}

impl Row {
    fn figures(&self) -> Option<&Figures> {
        self.outcome.as_ref().ok()
    }
}

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The machine.
    pub machine: Machine,
    /// `name version` of each program involved.
    pub versions: Vec<String>,
    /// The command line that produced it.
    pub command: String,
    /// Seconds of each measured run.
    pub duration: Duration,
    /// Runs per figure.
    pub runs: usize,
    /// `wrk -t`.
    pub threads: u32,
    /// `wrk -c`.
    pub connections: u32,
    /// The userspace relay's worker threads, as counted in meshd.
    pub relay_workers: Option<usize>,
    /// Every row, in the order measured.
    pub rows: Vec<Row>,
}

fn find(rows: &[Row], path: PathKind, hosts: usize) -> Option<&Figures> {
    rows.iter()
        .find(|r| r.path == path && r.hosts == hosts)
        .and_then(Row::figures)
}

fn int(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn gbps(bits: f64) -> String {
    format!("{:.2}", bits / 1e9)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"))
}

fn wrk_cells(m: Option<WrkMedian>) -> (String, String) {
    match m {
        Some(m) => (int(m.rps), format!("{} / {}", ms(m.p50), ms(m.p99))),
        None => ("—".to_owned(), "—".to_owned()),
    }
}

/// Renders the report as Markdown.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Routing mesh: meshd's eBPF and userspace paths vs HAProxy and direct\n"
    );
    let _ = writeln!(out, "- date: {}", r.date);
    let _ = writeln!(out, "- command: `{}`", r.command);
    let _ = writeln!(out, "- machine: {}", r.machine.summary());
    let _ = writeln!(out, "- versions: {}", r.versions.join(", "));
    let _ = writeln!(
        out,
        "- backends: 3 tasks of meshd's test image running the host's nginx (`worker_processes 1`, `access_log off`, `return 200` with the task's hostname); 1 task running `iperf3 -s`; all real meshd tasks on the ingress network"
    );
    let _ = writeln!(
        out,
        "- load: from the lab's client namespace, `wrk -t{} -c{} -d{}s --latency` keep-alive, then with `-H 'Connection: close'` (a new connection per request); `iperf3 -t {}` one TCP stream, the receiver's rate; each figure the median of {} run(s), the runs of a lab's paths interleaved (run 1 of each path, then run 2, …)",
        r.threads,
        r.connections,
        r.duration.as_secs(),
        r.duration.as_secs(),
        r.runs
    );
    let _ = writeln!(
        out,
        "- paths, all entering by host1 (1-host labs: every task on host1, so no path crosses WireGuard): meshd's published ports (8080, 5201; `meshd --dataplane ebpf`, then a lab with `--dataplane userspace`); HAProxy in host1's namespace (TCP mode, `balance roundrobin`, `option splice-auto`, `nbthread` 1 and 2) one process per thread count, side by side on ports of their own, with its backend connections opened in host1's ingress sandbox, as the userspace relay's; direct: the client to one task's ingress address, forwarded by the kernel through host1 and the ingress sandbox like the eBPF path's packets (a veth pair of the benchmark's, from a second client address), without balancing. HAProxy runs beside the userspace path, direct beside the eBPF path"
    );
    if r.rows.iter().any(|x| x.hosts == 3) {
        let _ = writeln!(
            out,
            "- 3-host rows (extra information): a lab of 3 hosts, one nginx task per host and the iperf3 task on host2, the load still to host1: two requests in three (and all of iperf3) go to another node — the eBPF path encapsulates them to it over the underlay, the userspace relay sends them over the ingress network's WireGuard overlay"
        );
    }
    let _ = writeln!(out);

    let _ = writeln!(
        out,
        "| path | hosts | req/s, keep-alive | p50 / p99 ms | req/s, new connection | p50 / p99 ms | iperf3 Gb/s |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &r.rows {
        let label = row.path.label(r.relay_workers);
        match &row.outcome {
            Ok(f) => {
                let (ka, ka_lat) = wrk_cells(f.keepalive());
                let (cl, cl_lat) = wrk_cells(f.close());
                let ip = f.iperf().map_or_else(|| "—".to_owned(), gbps);
                let _ = writeln!(
                    out,
                    "| {label} | {} | {ka} | {ka_lat} | {cl} | {cl_lat} | {ip} |",
                    row.hosts
                );
            }
            Err(_) => {
                let _ = writeln!(
                    out,
                    "| {label} | {} | failed | | failed | | failed |",
                    row.hosts
                );
            }
        }
    }
    let _ = writeln!(out);

    // Ratios.
    let _ = writeln!(
        out,
        "| ratio (1 host) | keep-alive | new connection | iperf3 | goal | met |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- | --- |");
    let ratios = |a: Option<&Figures>, b: Option<&Figures>| {
        (
            ratio(
                a.and_then(|f| f.keepalive()).map(|m| m.rps),
                b.and_then(|f| f.keepalive()).map(|m| m.rps),
            ),
            ratio(
                a.and_then(|f| f.close()).map(|m| m.rps),
                b.and_then(|f| f.close()).map(|m| m.rps),
            ),
            ratio(a.and_then(Figures::iperf), b.and_then(Figures::iperf)),
        )
    };
    let met = |ka: Option<f64>, cl: Option<f64>, goal: f64| match (ka, cl) {
        (Some(a), Some(b)) => {
            if a >= goal && b >= goal {
                "yes".to_owned()
            } else {
                "**no**".to_owned()
            }
        }
        _ => String::new(),
    };
    let (ka, cl, ip) = ratios(
        find(&r.rows, PathKind::Ebpf, 1),
        find(&r.rows, PathKind::Direct, 1),
    );
    let _ = writeln!(
        out,
        "| eBPF / direct | {} | {} | {} | ≥ {EBPF_GOAL}× in both modes | {} |",
        ratio_cell(ka),
        ratio_cell(cl),
        ratio_cell(ip),
        met(ka, cl, EBPF_GOAL)
    );
    let mut haproxies: Vec<u32> = r
        .rows
        .iter()
        .filter_map(|x| match x.path {
            PathKind::Haproxy(t) if x.hosts == 1 => Some(t),
            _ => None,
        })
        .collect();
    haproxies.sort_unstable();
    haproxies.dedup();
    for t in &haproxies {
        let (ka, cl, ip) = ratios(
            find(&r.rows, PathKind::Userspace, 1),
            find(&r.rows, PathKind::Haproxy(*t), 1),
        );
        let same = r.relay_workers == Some(*t as usize);
        let (goal, verdict) = if same {
            (
                format!("≥ {USERSPACE_GOAL}× in both modes (same threads)"),
                met(ka, cl, USERSPACE_GOAL),
            )
        } else {
            ("— (other thread count)".to_owned(), String::new())
        };
        let _ = writeln!(
            out,
            "| userspace / {} | {} | {} | {} | {goal} | {verdict} |",
            PathKind::Haproxy(*t).label(None),
            ratio_cell(ka),
            ratio_cell(cl),
            ratio_cell(ip),
        );
    }
    if !haproxies.is_empty()
        && !haproxies
            .iter()
            .any(|t| r.relay_workers == Some(*t as usize))
    {
        let _ = writeln!(
            out,
            "\nThe userspace relay has {} workers, and no HAProxy row has as many threads: its goal is not judged.",
            r.relay_workers
                .map_or_else(|| "an unknown number of".to_owned(), |w| w.to_string())
        );
    }
    let _ = writeln!(
        out,
        "\nGoals: the eBPF path at least {EBPF_GOAL}× direct's requests/s, keep-alive and with a new connection per request; the userspace path at least HAProxy's with as many threads as the relay has workers (its tokio runtime's threads, one per core). Reference figures on this kind of machine (wrk -t2 -c64 -d10s, 3 nginx): direct 118k req/s keep-alive and 38k with a new connection each; HAProxy 1 thread 79k / 17k, 2 threads 87k / 19k."
    );

    // Every run.
    let _ = writeln!(
        out,
        "\nEvery run (req/s keep-alive; req/s new connection; iperf3 Gb/s):\n"
    );
    for row in &r.rows {
        let label = row.path.label(r.relay_workers);
        match &row.outcome {
            Ok(f) => {
                let list =
                    |v: &[WrkResult]| v.iter().map(|w| int(w.rps)).collect::<Vec<_>>().join(", ");
                let ip = f
                    .iperf
                    .iter()
                    .map(|i| gbps(i.bits_per_sec))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    out,
                    "- {label}, {} host(s): {}; {}; {}",
                    row.hosts,
                    list(&f.keepalive),
                    list(&f.close),
                    ip
                );
            }
            Err(e) => {
                let _ = writeln!(out, "- {label}, {} host(s): **failed**: {e}", row.hosts);
            }
        }
    }

    // Errors seen under load.
    let mut notes = Vec::new();
    for row in &r.rows {
        let Some(f) = row.figures() else { continue };
        let label = row.path.label(r.relay_workers);
        for (mode, runs) in [("keep-alive", &f.keepalive), ("new connection", &f.close)] {
            let sock: u64 = runs.iter().map(|w| w.socket_errors).sum();
            let bad: u64 = runs.iter().map(|w| w.non_2xx).sum();
            let reqs: u64 = runs.iter().map(|w| w.requests).sum();
            if sock > 0 || bad > 0 {
                notes.push(format!(
                    "- {label}, {} host(s), {mode}: {sock} socket errors and {bad} non-2xx answers over {} requests",
                    row.hosts,
                    int(reqs as f64)
                ));
            }
        }
        let retr: u64 = f.iperf.iter().map(|i| i.retransmits).sum();
        if retr > 0 {
            notes.push(format!(
                "- {label}, {} host(s), iperf3: {} TCP retransmissions over {} run(s)",
                row.hosts,
                int(retr as f64),
                f.iperf.len()
            ));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(
            out,
            "\nSeen under load (wrk's socket errors add up connect, read, write and timeout errors; iperf3's retransmissions are the sender's):\n"
        );
        for n in notes {
            let _ = writeln!(out, "{n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrk(rps: f64, p99_ms: u64) -> WrkResult {
        WrkResult {
            rps,
            requests: (rps * 10.0) as u64,
            p50: Duration::from_micros(500),
            p99: Duration::from_millis(p99_ms),
            socket_errors: 0,
            non_2xx: 0,
        }
    }

    fn figures(ka: f64, cl: f64, gbits: f64) -> Figures {
        Figures {
            keepalive: vec![wrk(ka * 0.9, 2), wrk(ka, 1), wrk(ka * 1.1, 3)],
            close: vec![wrk(cl, 4)],
            iperf: vec![IperfResult {
                bits_per_sec: gbits * 1e9,
                retransmits: 0,
            }],
        }
    }

    fn report() -> Report {
        Report {
            date: "2030-01-02".into(),
            machine: Machine::default(),
            versions: vec!["meshd 0.1.0".into(), "HAProxy 2.6.12".into()],
            command: "mesh-bench-mesh --runs 3".into(),
            duration: Duration::from_secs(10),
            runs: 3,
            threads: 2,
            connections: 64,
            relay_workers: Some(2),
            rows: vec![
                Row {
                    path: PathKind::Direct,
                    hosts: 1,
                    outcome: Ok(figures(100_000.0, 40_000.0, 20.0)),
                },
                Row {
                    path: PathKind::Ebpf,
                    hosts: 1,
                    outcome: Ok(figures(95_000.0, 34_000.0, 19.0)),
                },
                Row {
                    path: PathKind::Userspace,
                    hosts: 1,
                    outcome: Ok(figures(90_000.0, 20_000.0, 10.0)),
                },
                Row {
                    path: PathKind::Haproxy(1),
                    hosts: 1,
                    outcome: Ok(figures(81_000.0, 17_000.0, 8.0)),
                },
                Row {
                    path: PathKind::Haproxy(2),
                    hosts: 1,
                    outcome: Ok(figures(87_000.0, 21_000.0, 9.0)),
                },
                Row {
                    path: PathKind::Ebpf,
                    hosts: 3,
                    outcome: Err("lab: meshd did not start".into()),
                },
            ],
        }
    }

    #[test]
    fn medians_take_each_figure_on_its_own() {
        assert_eq!(median_f64(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median_f64(&[4.0, 1.0, 3.0, 2.0]), Some(2.0));
        assert_eq!(median_f64(&[]), None);
        let m = wrk_median(&[wrk(10.0, 9), wrk(30.0, 1), wrk(20.0, 5)]).unwrap();
        assert_eq!(m.rps, 20.0);
        assert_eq!(m.p99, Duration::from_millis(5));
        assert_eq!(wrk_median(&[]), None);
    }

    #[test]
    fn table_has_figures_ratios_and_verdicts() {
        let t = render(&report());
        assert!(
            t.contains("| direct to one task (no balancing) | 1 | 100,000 | 0.50 / 2.00 | 40,000 | 0.50 / 4.00 | 20.00 |"),
            "{t}"
        );
        assert!(
            t.contains("| meshd, userspace path (2 workers) | 1 | 90,000 |"),
            "{t}"
        );
        assert!(
            t.contains("| eBPF / direct | 0.95× | 0.85× | 0.95× | ≥ 0.9× in both modes | **no** |"),
            "{t}"
        );
        assert!(
            t.contains("| userspace / HAProxy, 2 threads | 1.03× | 0.95× | 1.11× | ≥ 1× in both modes (same threads) | **no** |"),
            "{t}"
        );
        assert!(
            t.contains("| userspace / HAProxy, 1 thread | 1.11× | 1.18× | 1.25× | — (other thread count) |  |"),
            "{t}"
        );
        assert!(
            t.contains("| meshd, eBPF path | 3 | failed | | failed | | failed |"),
            "{t}"
        );
        assert!(
            t.contains("- meshd, eBPF path, 3 host(s): **failed**: lab: meshd did not start"),
            "{t}"
        );
        assert!(t.contains("- direct to one task (no balancing), 1 host(s): 90,000, 100,000, 110,000; 40,000; 20.00"), "{t}");
        assert!(!t.contains("Seen under load"), "{t}");
    }

    #[test]
    fn errors_under_load_are_listed() {
        let mut r = report();
        if let Ok(f) = &mut r.rows[1].outcome {
            f.close[0].socket_errors = 7;
            f.iperf[0].retransmits = 1234;
        }
        let t = render(&r);
        assert!(
            t.contains("- meshd, eBPF path, 1 host(s), new connection: 7 socket errors and 0 non-2xx answers over 340,000 requests"),
            "{t}"
        );
        assert!(
            t.contains("iperf3: 1,234 TCP retransmissions over 1 run(s)"),
            "{t}"
        );
    }

    #[test]
    fn a_missing_reference_leaves_the_ratio_empty() {
        let mut r = report();
        r.rows.retain(|x| x.path != PathKind::Direct);
        r.relay_workers = Some(4);
        let t = render(&r);
        assert!(
            t.contains("| eBPF / direct | — | — | — | ≥ 0.9× in both modes |  |"),
            "{t}"
        );
        assert!(t.contains("The userspace relay has 4 workers"), "{t}");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(int(0.4), "0");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(1000.0), "1,000");
        assert_eq!(int(1234567.0), "1,234,567");
    }
}
