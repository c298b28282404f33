//! The control-plane benchmark's report: a Markdown table with the ratios and the goals
//! (pure: a function of the measured figures).

use std::fmt::Write as _;
use std::time::Duration;

use crate::load::LoadResult;
use crate::raft::{Figures, RaftReport, VOTERS, span};
use crate::stats::median;

/// Goal: meshd's writes per second at least this many times etcd's (1 and N clients).
pub const WRITE_RATIO_GOAL: f64 = 2.0;
/// Goal: leader kill → first accepted write at most this long.
pub const KILL_TO_WRITE_GOAL: Duration = Duration::from_millis(1500);
/// Goal: a killed node marked down within this long.
pub const DOWN_GOAL: Duration = Duration::from_secs(2);
/// Docker Swarm's time to mark a killed node down, as measured when the goal was set
/// (quoted, not run here).
pub const SWARM_DOWN_QUOTED: &str = "11.8 s";

/// Renders the report as Markdown: a header with the machine, versions and settings, the
/// table, and notes on failed writes.
pub fn render(r: &RaftReport) -> String {
    let mut out = String::new();
    let o = &r.options;
    let _ = writeln!(
        out,
        "### Control plane (Raft): meshd vs etcd, {VOTERS} voters each\n"
    );
    let _ = writeln!(out, "- date: {}", r.date);
    let _ = writeln!(out, "- machine: {}", r.machine.summary());
    let _ = writeln!(
        out,
        "- disk holding both systems' data: {}",
        r.disk.summary()
    );
    let version = |f: &Option<Figures>| {
        f.as_ref()
            .map_or_else(|| "not run".to_owned(), |f| f.version.clone())
    };
    let _ = writeln!(
        out,
        "- versions: meshd {}, etcd {}",
        version(&r.meshd),
        version(&r.etcd)
    );
    if let Some(f) = &r.meshd {
        let _ = writeln!(out, "- meshd: {}", f.settings);
    }
    if let Some(f) = &r.etcd {
        let _ = writeln!(out, "- etcd: {}", f.settings);
    }
    let _ = writeln!(
        out,
        "- topology: one lab host (network namespace on a bridge) per manager / member; meshd has a 4th host, a worker",
    );
    let _ = writeln!(
        out,
        "- load: {} warm-up, then {} measured per row; each client has one keep-alive connection and one write in flight; meshd through the host's API unix socket, etcd through its JSON gateway from inside the host's namespace",
        span(o.warmup),
        span(o.duration)
    );
    let _ = writeln!(
        out,
        "- leader kill: a write every 20 ms, each on a fresh connection to a surviving voter with a 300 ms timeout; the figure runs from the SIGKILL to the end of the first accepted write started after it; runs: {}",
        o.runs
    );
    let _ = writeln!(
        out,
        "- down detection: SIGKILL, then the leader's stored node state is read every 20 ms until it is `down`\n"
    );

    let m = r.meshd.as_ref();
    let e = r.etcd.as_ref();
    let n = o.clients;
    let _ = writeln!(out, "| figure | meshd | etcd | meshd / etcd | goal | met |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- | --- |");
    rate_row(
        &mut out,
        "writes/s, 1 client, on the leader",
        m.map(|f| &f.one),
        e.map(|f| &f.one),
        true,
    );
    latency_row(
        &mut out,
        "latency p50 / p99, 1 client",
        m.map(|f| &f.one),
        e.map(|f| &f.one),
    );
    rate_row(
        &mut out,
        &format!("writes/s, {n} clients, on the leader"),
        m.map(|f| &f.many),
        e.map(|f| &f.many),
        true,
    );
    latency_row(
        &mut out,
        &format!("latency p50 / p99, {n} clients"),
        m.map(|f| &f.many),
        e.map(|f| &f.many),
    );
    rate_row(
        &mut out,
        &format!("writes/s, {n} clients, through a follower"),
        m.map(|f| &f.many_follower),
        e.map(|f| &f.many_follower),
        false,
    );
    latency_row(
        &mut out,
        &format!("latency p50 / p99, {n} clients, through a follower"),
        m.map(|f| &f.many_follower),
        e.map(|f| &f.many_follower),
    );
    let kills = |f: Option<&Figures>| -> Vec<Duration> {
        f.map(|f| f.leader_kill.iter().map(|p| p.first_write).collect())
            .unwrap_or_default()
    };
    let mk = kills(m);
    let ek = kills(e);
    let _ = writeln!(
        out,
        "| leader kill → first accepted write (median; each run) | {} | {} | {} | ≤ {} | {} |",
        runs_cell(&mk),
        runs_cell(&ek),
        ratio_cell(
            median(&mk).map(|d| d.as_secs_f64()),
            median(&ek).map(|d| d.as_secs_f64())
        ),
        secs(KILL_TO_WRITE_GOAL),
        met(median(&mk).map(|d| d <= KILL_TO_WRITE_GOAL)),
    );
    for (label, runs) in [
        ("killed worker marked down", m.map(|f| &f.worker_down)),
        (
            "killed manager (not the leader) marked down",
            m.map(|f| &f.manager_down),
        ),
        (
            "killed leader marked down (by the new leader)",
            m.map(|f| &f.leader_down),
        ),
    ] {
        let runs = runs.cloned().unwrap_or_default();
        let _ = writeln!(
            out,
            "| {label} (median; each run) | {} | — | — | ≤ {} (Docker Swarm: {SWARM_DOWN_QUOTED}) | {} |",
            runs_cell(&runs),
            secs(DOWN_GOAL),
            met(median(&runs).map(|d| d <= DOWN_GOAL)),
        );
    }
    let _ = writeln!(
        out,
        "\nGoals: at least {WRITE_RATIO_GOAL}× etcd's writes/s with 1 and {n} clients, at most {} from leader kill to an accepted write, a killed node marked down within {}. The Docker Swarm figure is quoted from the issue that set the goals (not run here); that issue measured etcd 3.4 at 723 writes/s with 1 client (p99 2.3 ms), 3.1k/s with 64, and 1.47 s from leader kill to a write, on a machine of the same kind.",
        secs(KILL_TO_WRITE_GOAL),
        secs(DOWN_GOAL)
    );
    let mut notes = Vec::new();
    for (sys, f) in [("meshd", m), ("etcd", e)] {
        let Some(f) = f else { continue };
        for (row, l) in [
            ("1 client", &f.one),
            ("many clients", &f.many),
            ("many clients through a follower", &f.many_follower),
        ] {
            if l.errors > 0 {
                notes.push(format!(
                    "- {sys}, {row}: {} writes failed (first: {})",
                    l.errors,
                    l.first_error.as_deref().unwrap_or("?")
                ));
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\nFailed writes (not counted above):\n");
        for note in notes {
            let _ = writeln!(out, "{note}");
        }
    }
    out
}

fn rate_row(
    out: &mut String,
    label: &str,
    m: Option<&LoadResult>,
    e: Option<&LoadResult>,
    goal: bool,
) {
    let rate = |l: Option<&LoadResult>| l.map(LoadResult::per_sec);
    let cell =
        |l: Option<&LoadResult>| rate(l).map_or_else(|| "—".to_owned(), |v| format!("{v:.0}"));
    let ratio = match (rate(m), rate(e)) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let (goal_cell, met_cell) = if goal {
        (
            format!("≥ {WRITE_RATIO_GOAL}× etcd"),
            met(ratio.map(|r| r >= WRITE_RATIO_GOAL)),
        )
    } else {
        ("—".to_owned(), String::new())
    };
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {} | {goal_cell} | {met_cell} |",
        cell(m),
        cell(e),
        ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×")),
    );
}

fn latency_row(out: &mut String, label: &str, m: Option<&LoadResult>, e: Option<&LoadResult>) {
    let cell = |l: Option<&LoadResult>| {
        l.map_or_else(
            || "—".to_owned(),
            |l| {
                format!(
                    "{:.2} / {:.2} ms",
                    l.latency.p50.as_secs_f64() * 1000.0,
                    l.latency.p99.as_secs_f64() * 1000.0
                )
            },
        )
    };
    let ratio = match (m, e) {
        (Some(a), Some(b)) if !b.latency.p99.is_zero() => format!(
            "p99 {:.2}×",
            a.latency.p99.as_secs_f64() / b.latency.p99.as_secs_f64()
        ),
        _ => "—".to_owned(),
    };
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {ratio} | — | |",
        cell(m),
        cell(e)
    );
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `median (a, b, c)`, or `—` without runs.
fn runs_cell(runs: &[Duration]) -> String {
    match median(runs) {
        None => "—".to_owned(),
        Some(m) => format!(
            "{} ({})",
            secs(m),
            runs.iter().map(|d| secs(*d)).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn ratio_cell(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".to_owned(),
    }
}

fn met(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "yes".to_owned(),
        Some(false) => "**no**".to_owned(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::load::ProbeResult;
    use crate::machine::{Disk, Machine};
    use crate::raft::RaftOptions;
    use crate::stats::Latency;

    fn load(writes: u64, p99_ms: u64) -> LoadResult {
        LoadResult {
            writes,
            errors: 0,
            first_error: None,
            window: Duration::from_secs(10),
            latency: Latency {
                count: writes as usize,
                p50: Duration::from_millis(1),
                p99: Duration::from_millis(p99_ms),
                max: Duration::from_millis(p99_ms),
            },
        }
    }

    fn figures(version: &str, rate: u64, kill_ms: u64, down: bool) -> Figures {
        let d = |v: u64| Duration::from_millis(v);
        Figures {
            version: version.into(),
            settings: "s".into(),
            one: load(rate * 10, 2),
            many: load(rate * 40, 8),
            many_follower: LoadResult {
                errors: 2,
                first_error: Some("status 503".into()),
                ..load(rate * 30, 9)
            },
            leader_kill: [kill_ms, kill_ms + 100, kill_ms - 100]
                .iter()
                .map(|v| ProbeResult {
                    first_write: d(*v),
                    failed_writes: 0,
                })
                .collect(),
            leader_down: if down { vec![d(2500)] } else { vec![] },
            worker_down: if down { vec![d(1900), d(1800)] } else { vec![] },
            manager_down: if down { vec![d(1700)] } else { vec![] },
        }
    }

    fn report() -> RaftReport {
        RaftReport {
            date: "2030-01-02".into(),
            machine: Machine::default(),
            disk: Disk {
                dir: PathBuf::from("/tmp"),
                filesystem: Some("ext4 on /dev/vda".into()),
                append: Duration::from_millis(4),
                overwrite: Duration::from_micros(900),
            },
            options: RaftOptions::default(),
            meshd: Some(figures("0.1.0", 2000, 1000, true)),
            etcd: Some(figures("3.4.23", 800, 1500, false)),
        }
    }

    #[test]
    fn table_has_ratios_goals_and_verdicts() {
        let t = render(&report());
        assert!(t.contains("meshd 0.1.0, etcd 3.4.23"), "{t}");
        assert!(
            t.contains("ext4 on /dev/vda (/tmp): 4 KiB write + fdatasync takes 4.00 ms appending, 0.90 ms overwriting"),
            "{t}"
        );
        assert!(
            t.contains(
                "| writes/s, 1 client, on the leader | 2000 | 800 | 2.50× | ≥ 2× etcd | yes |"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "| latency p50 / p99, 1 client | 1.00 / 2.00 ms | 1.00 / 2.00 ms | p99 1.00× |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| leader kill → first accepted write (median; each run) | 1.00 s (1.00 s, 1.10 s, 0.90 s) | 1.50 s (1.50 s, 1.60 s, 1.40 s) | 0.67× | ≤ 1.50 s | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| killed worker marked down (median; each run) | 1.80 s (1.90 s, 1.80 s) | — | — | ≤ 2.00 s (Docker Swarm: 11.8 s) | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| killed leader marked down (by the new leader) (median; each run) | 2.50 s (2.50 s) | — | — | ≤ 2.00 s (Docker Swarm: 11.8 s) | **no** |"),
            "{t}"
        );
        assert!(
            t.contains(
                "- meshd, many clients through a follower: 2 writes failed (first: status 503)"
            ),
            "{t}"
        );
    }

    #[test]
    fn a_system_not_run_shows_dashes() {
        let mut r = report();
        r.etcd = None;
        let t = render(&r);
        assert!(t.contains("etcd not run"), "{t}");
        assert!(
            t.contains("| writes/s, 1 client, on the leader | 2000 | — | — | ≥ 2× etcd |  |"),
            "{t}"
        );
    }
}
