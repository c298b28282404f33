//! The machine, the versions, and the report: a Markdown table of every figure with its
//! ratio to the plain veth and to wireguard-go, and the goals.

use std::fmt::Write as _;
use std::time::Duration;

use crate::iperf::Run;
use crate::proc::{self, Memory};
use crate::variants::{PeersMemory, Variant};

/// The goals of the benchmark's issue, as ratios of meshd to wireguard-go.
const GOAL_TCP1: f64 = 4.0;
const AIM_TCP1: f64 = 5.0;
const GOAL_TCP4: f64 = 3.0;
const GOAL_UDP: f64 = 3.0;
/// meshd's resident set with 100 peers must stay under this, MiB.
const GOAL_RSS_MIB: f64 = 50.0;

/// What the figures were measured on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// Operating system (`/etc/os-release`).
    pub os: String,
}

impl Machine {
    /// Reads the machine's facts; what cannot be read says so.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let field = |text: &str, key: &str, sep: char| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(sep)?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        Machine {
            cpu: field(&cpuinfo, "model name", ':').unwrap_or_else(|| "unknown CPU".to_owned()),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_mib: field(&meminfo, "MemTotal", ':')
                .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kib| kib / 1024),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            os: field(&os, "PRETTY_NAME", '=').unwrap_or_else(|| "unknown OS".to_owned()),
        }
    }

    fn summary(&self) -> String {
        format!(
            "{}, {} cores, {:.1} GiB RAM, Linux {}, {}",
            self.cpu,
            self.cores,
            self.memory_mib as f64 / 1024.0,
            self.kernel,
            self.os
        )
    }
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The first line `argv` prints (its version), or why it could not be had.
pub fn version_of(argv: &[&str]) -> String {
    match proc::run(None, argv, None, Duration::from_secs(10)) {
        Ok(out) => out
            .lines()
            .find(|l| !l.trim().is_empty())
            .map_or_else(|| "unknown".to_owned(), |l| l.trim().to_owned()),
        Err(e) => format!("unknown ({e})"),
    }
}

/// One variant's figures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Figures {
    /// TCP, 1 stream: every run.
    pub tcp1: Vec<Run>,
    /// TCP, 4 streams.
    pub tcp4: Option<Run>,
    /// UDP, small datagrams.
    pub udp: Option<Run>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl Figures {
    /// TCP 1 stream, Gb/s: the median of the runs.
    pub fn tcp1_gbps(&self) -> Option<f64> {
        median(self.tcp1.iter().map(Run::gbps).collect())
    }

    /// CPU seconds per GB during the 1-stream runs: the median of the runs.
    pub fn cpu_per_gb(&self) -> Option<f64> {
        median(self.tcp1.iter().map(Run::cpu_seconds_per_gb).collect())
    }

    /// TCP 4 streams, Gb/s.
    pub fn tcp4_gbps(&self) -> Option<f64> {
        self.tcp4.as_ref().map(Run::gbps)
    }

    /// UDP datagrams received per second.
    pub fn udp_pps(&self) -> Option<f64> {
        self.udp.as_ref().map(Run::received_pps)
    }
}

/// One variant in the report.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantReport {
    /// Which.
    pub variant: Variant,
    /// MTU on the way (when it was set up).
    pub mtu: Option<u32>,
    /// How it was set up.
    pub how: String,
    /// The figures measured (possibly partial).
    pub figures: Figures,
    /// Why it stopped short, if it did.
    pub error: Option<String>,
}

/// meshd's memory figures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MeshdMemory {
    /// host1's meshd once the cluster of two is formed, before any overlay.
    pub idle: Option<Memory>,
    /// host1's meshd after its throughput runs.
    pub after_traffic: Option<Memory>,
    /// With the standard WireGuard peers, or why not.
    pub peers: Option<Result<PeersMemory, String>>,
}

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Date (UTC).
    pub date: String,
    /// The command line that produced it.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Load averages before and after the run.
    pub load_before: String,
    /// Load averages after the run.
    pub load_after: String,
    /// (program, version line).
    pub versions: Vec<(String, String)>,
    /// iperf3 `-t`.
    pub duration_secs: u64,
    /// Runs of TCP 1 stream.
    pub runs: usize,
    /// UDP datagram size.
    pub udp_len: u32,
    /// Every variant that was asked for, in order.
    pub variants: Vec<VariantReport>,
    /// meshd's memory.
    pub memory: MeshdMemory,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

/// Reads one figure of a variant.
type Get = fn(&Figures) -> Option<f64>;
/// Shows one figure.
type Fmt = fn(f64) -> String;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Report {
    fn figure(&self, v: Variant, f: impl Fn(&Figures) -> Option<f64>) -> Option<f64> {
        self.variants
            .iter()
            .find(|r| r.variant == v)
            .and_then(|r| f(&r.figures))
    }

    /// Renders the report as Markdown.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### Overlay data plane: meshd, wireguard-go, boringtun-cli and the plain veth\n"
        );
        let _ = writeln!(s, "- Date: {} (UTC)", self.date);
        let _ = writeln!(s, "- Command: `{}`", self.command);
        let _ = writeln!(s, "- Machine: {}", self.machine.summary());
        let _ = writeln!(
            s,
            "- Load average (1, 5, 15 min): {} before, {} after; the run took {:.0} s",
            self.load_before,
            self.load_after,
            self.elapsed.as_secs_f64()
        );
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|(p, v)| format!("{p}: {v}"))
            .collect();
        let _ = writeln!(s, "- Versions: {}", versions.join("; "));
        let _ = writeln!(
            s,
            "- Topology: one lab (2 host namespaces on one bridge, veth MTU 1500) for every variant; iperf3 client on host1's side, server on host2's. Each figure is the receiver's, from `iperf3 -J` runs of {} s (after a warm-up run); TCP 1 stream is the median of {} runs; UDP is `-u -l {} -b 0`, datagrams received (sent − lost) per second; CPU is the whole machine's user + system + softirq seconds (`/proc/stat`, all CPUs) during the 1-stream runs, per GB (10^9 bytes) received.",
            self.duration_secs, self.runs, self.udp_len
        );
        for v in &self.variants {
            let mtu = v.mtu.map_or_else(|| "—".to_owned(), |m| m.to_string());
            let _ = writeln!(s, "- {} (MTU {mtu}): {}", v.variant.label(), v.how);
        }
        s.push('\n');

        // The figures, each with its ratios.
        let cols: Vec<Variant> = self.variants.iter().map(|v| v.variant).collect();
        let _ = write!(s, "| figure |");
        for c in &cols {
            let _ = write!(s, " {} |", c.label());
        }
        let _ = write!(s, "\n| --- |");
        for _ in &cols {
            let _ = write!(s, " ---: |");
        }
        s.push('\n');
        let rows: [(String, Get, Fmt); 4] = [
            (
                format!("TCP 1 stream, Gb/s (median of {})", self.runs),
                Figures::tcp1_gbps,
                |x| format!("{x:.2}"),
            ),
            ("TCP 4 streams, Gb/s".to_owned(), Figures::tcp4_gbps, |x| {
                format!("{x:.2}")
            }),
            (
                format!("UDP {} B received, packets/s", self.udp_len),
                Figures::udp_pps,
                |x| format!("{:.0}k", x / 1000.0),
            ),
            (
                "CPU s per GB (TCP 1 stream, lower is better)".to_owned(),
                Figures::cpu_per_gb,
                |x| format!("{x:.2}"),
            ),
        ];
        for (name, get, fmt) in rows {
            let _ = write!(s, "| {name} |");
            for c in &cols {
                let cell = self.figure(*c, get).map_or_else(|| "—".to_owned(), fmt);
                let bold = *c == Variant::Meshd && cell != "—";
                let _ = write!(s, " {} |", if bold { format!("**{cell}**") } else { cell });
            }
            s.push('\n');
            for (refname, reference) in [
                ("plain veth", Variant::Veth),
                ("wireguard-go", Variant::WireguardGo),
            ] {
                let _ = write!(s, "| &nbsp;&nbsp;× {refname} |");
                let base = self.figure(reference, get);
                for c in &cols {
                    let cell = match (self.figure(*c, get), base) {
                        (Some(x), Some(b)) if b > 0.0 => format!("{:.2}×", x / b),
                        _ => "—".to_owned(),
                    };
                    let _ = write!(s, " {cell} |");
                }
                s.push('\n');
            }
        }
        s.push('\n');

        // Goals.
        let _ = writeln!(s, "| goal | measured | met |\n| --- | ---: | --- |");
        let ratio = |get: Get| match (
            self.figure(Variant::Meshd, get),
            self.figure(Variant::WireguardGo, get),
        ) {
            (Some(x), Some(b)) if b > 0.0 => Some(x / b),
            _ => None,
        };
        let verdict = |r: Option<f64>, goal: f64| match r {
            Some(r) if r >= goal => "yes",
            Some(_) => "**no**",
            None => "—",
        };
        let shown = |r: Option<f64>| r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"));
        let r1 = ratio(Figures::tcp1_gbps);
        let _ = writeln!(
            s,
            "| meshd TCP 1 stream ≥ {GOAL_TCP1}× wireguard-go (aim {AIM_TCP1}×) | {} | {}{} |",
            shown(r1),
            verdict(r1, GOAL_TCP1),
            match r1 {
                Some(r) if r >= AIM_TCP1 => ", aim reached",
                Some(r) if r >= GOAL_TCP1 => ", aim not reached",
                _ => "",
            }
        );
        let r4 = ratio(Figures::tcp4_gbps);
        let _ = writeln!(
            s,
            "| meshd TCP 4 streams ≥ {GOAL_TCP4}× wireguard-go | {} | {} |",
            shown(r4),
            verdict(r4, GOAL_TCP4)
        );
        let ru = ratio(Figures::udp_pps);
        let _ = writeln!(
            s,
            "| meshd UDP {} B packets/s ≥ {GOAL_UDP}× wireguard-go | {} | {} |",
            self.udp_len,
            shown(ru),
            verdict(ru, GOAL_UDP)
        );
        match &self.memory.peers {
            Some(Ok(p)) => {
                let rss = mib(p.with_peers.rss_kib);
                let _ = writeln!(
                    s,
                    "| meshd resident set with {} peers < {GOAL_RSS_MIB} MiB | {rss:.1} MiB | {} |",
                    p.peers,
                    if rss < GOAL_RSS_MIB { "yes" } else { "**no**" }
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(
                    s,
                    "| meshd resident set with peers < {GOAL_RSS_MIB} MiB | failed: {e} | — |"
                );
            }
            None => {}
        }
        s.push('\n');

        // Details.
        let _ = writeln!(s, "Details:\n");
        for v in &self.variants {
            let runs: Vec<String> = v
                .figures
                .tcp1
                .iter()
                .map(|r| {
                    format!(
                        "{:.2} Gb/s ({:.2} CPU s/GB, CPUs {:.0}% busy)",
                        r.gbps(),
                        r.cpu_seconds_per_gb(),
                        r.cpu_share * 100.0
                    )
                })
                .collect();
            let mut line = format!("- {}: TCP 1 stream runs: {}", v.variant.label(), {
                if runs.is_empty() {
                    "none".to_owned()
                } else {
                    runs.join(", ")
                }
            });
            if let Some(r) = &v.figures.tcp4 {
                let _ = write!(
                    line,
                    "; TCP 4 streams: CPUs {:.0}% busy, {:.2} CPU s/GB",
                    r.cpu_share * 100.0,
                    r.cpu_seconds_per_gb()
                );
            }
            if let Some(r) = &v.figures.udp {
                let lost = r.sent_packets.saturating_sub(r.received_packets);
                let pct = |n: u64| {
                    if r.sent_packets > 0 {
                        n as f64 * 100.0 / r.sent_packets as f64
                    } else {
                        0.0
                    }
                };
                let _ = write!(
                    line,
                    "; UDP: {:.0}k packets/s sent, {:.0}k received, {:.1}% lost",
                    r.sent_pps() / 1000.0,
                    r.received_pps() / 1000.0,
                    pct(lost)
                );
                if let Some(d) = r.rcvbuf_drops {
                    let _ = write!(
                        line,
                        " ({:.1}% of those sent dropped at full socket receive buffers in the server's namespace)",
                        pct(d)
                    );
                }
            }
            if let Some(e) = &v.error {
                let _ = write!(line, "; **failed**: {e}");
            }
            let _ = writeln!(s, "{line}");
        }
        let mem = |m: &Memory| {
            format!(
                "{:.1} MiB (peak {:.1} MiB)",
                mib(m.rss_kib),
                mib(m.peak_kib)
            )
        };
        let mut parts = Vec::new();
        if let Some(m) = &self.memory.idle {
            parts.push(format!("cluster formed, no overlay: {}", mem(m)));
        }
        if let Some(m) = &self.memory.after_traffic {
            parts.push(format!("after its throughput runs: {}", mem(m)));
        }
        if let Some(Ok(p)) = &self.memory.peers {
            parts.push(format!(
                "with {} standard WireGuard peers on a second network (`swarm network connect --wg-public-key`, {} routes via its wg0): {}",
                p.peers,
                p.routes,
                mem(&p.with_peers)
            ));
        }
        if !parts.is_empty() {
            let _ = writeln!(s, "- meshd on host1, VmRSS: {}", parts.join("; "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(gbps: f64, cpu: f64, pps: f64) -> Run {
        Run {
            bytes: (gbps * 1e9 / 8.0 * 8.0) as u64,
            seconds: 8.0,
            bits_per_second: gbps * 1e9,
            sent_packets: (pps * 8.0 * 2.0) as u64,
            received_packets: (pps * 8.0) as u64,
            cpu_seconds: cpu,
            cpu_share: 0.5,
            rcvbuf_drops: None,
        }
    }

    fn variant(v: Variant, gbps: f64, pps: f64) -> VariantReport {
        VariantReport {
            variant: v,
            mtu: Some(1420),
            how: "how".to_owned(),
            figures: Figures {
                tcp1: vec![
                    run(gbps, 8.0, 0.0),
                    run(gbps * 2.0, 8.0, 0.0),
                    run(gbps / 2.0, 8.0, 0.0),
                ],
                tcp4: Some(run(gbps, 8.0, 0.0)),
                udp: Some(run(0.1, 1.0, pps)),
            },
            error: None,
        }
    }

    #[test]
    fn ratios_and_goals() {
        let report = Report {
            date: "2025-01-01".to_owned(),
            command: "mesh-bench-overlay".to_owned(),
            machine: Machine::default(),
            load_before: "0.1 0.1 0.1".to_owned(),
            load_after: "1.0 0.5 0.2".to_owned(),
            versions: vec![("iperf3".to_owned(), "iperf 3.12".to_owned())],
            duration_secs: 8,
            runs: 3,
            udp_len: 64,
            variants: vec![
                variant(Variant::Veth, 18.0, 600_000.0),
                variant(Variant::Meshd, 4.5, 200_000.0),
                variant(Variant::WireguardGo, 1.0, 100_000.0),
            ],
            memory: MeshdMemory {
                idle: None,
                after_traffic: None,
                peers: Some(Ok(PeersMemory {
                    peers: 100,
                    routes: 100,
                    before: Memory {
                        rss_kib: 10_000,
                        peak_kib: 10_000,
                    },
                    with_peers: Memory {
                        rss_kib: 20_480,
                        peak_kib: 30_000,
                    },
                })),
            },
            elapsed: Duration::from_secs(200),
        };
        let text = report.render();
        // The median of 1, 2 and 0.5 times the figure is the figure.
        assert!(text.contains("| **4.50** |"), "{text}");
        assert!(
            text.contains("| 4.50× |") || text.contains(" 4.50× |"),
            "{text}"
        );
        assert!(
            text.contains("≥ 4× wireguard-go (aim 5×) | 4.50× | yes, aim not reached |"),
            "{text}"
        );
        assert!(
            text.contains("≥ 3× wireguard-go | 2.00× | **no** |"),
            "{text}"
        );
        assert!(text.contains("| 20.0 MiB | yes |"), "{text}");
        assert!(text.contains("| 600k |"), "{text}");
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
