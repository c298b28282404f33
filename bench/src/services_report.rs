//! The services benchmark's report: a Markdown table with the reference figures, the ratios
//! and the goals (pure: a function of the measured figures).

use std::fmt::Write as _;
use std::time::Duration;

use crate::services::{
    HOSTS, KILLED_HOST, POLL, SMALL_SERVICE, Section, ServicesReport, SystemFigures,
    update_settings,
};
use crate::stats::median;

/// Docker Swarm's time to N replicas running (N, attached to an overlay, seconds), as
/// measured on a machine of the same kind when the goals were set (quoted, not run here).
pub const SWARM_START: [(usize, bool, f64); 3] =
    [(10, false, 1.6), (30, false, 3.8), (30, true, 6.1)];
/// Docker Swarm: a killed host noticed (marked down), seconds (quoted).
pub const SWARM_KILL_DOWN: f64 = 11.8;
/// Docker Swarm: a killed host's tasks running elsewhere, seconds (quoted).
pub const SWARM_KILL_RECOVERED: f64 = 17.2;
/// Docker Swarm: a rolling update of 6 tasks with its defaults, seconds (quoted).
pub const SWARM_UPDATE: f64 = 10.1;
/// Nomad's C1M challenge: placements per second (quoted).
pub const NOMAD_PLACEMENTS: f64 = 3_750.0;
/// Goal: time to N running at most this share of Swarm's.
pub const START_RATIO_GOAL: f64 = 0.5;
/// Goal: a killed host's tasks running elsewhere within this long.
pub const KILL_GOAL: Duration = Duration::from_secs(4);
/// Goal: placements per second at least this many.
pub const PLACEMENTS_GOAL: f64 = 50_000.0;

/// Renders the report as Markdown: a header with the machine, versions and settings, the
/// table, and the sections that failed.
pub fn render(r: &ServicesReport) -> String {
    let mut out = String::new();
    let o = &r.options;
    let _ = writeln!(
        out,
        "### Services: time to N running, killed host, rolling update, scheduler\n"
    );
    let _ = writeln!(out, "- date: {}", r.date);
    let _ = writeln!(out, "- machine: {}", r.machine.summary());
    let version = |f: &Option<SystemFigures>| {
        f.as_ref()
            .filter(|f| !f.version.is_empty())
            .map_or_else(|| "not run".to_owned(), |f| f.version.clone())
    };
    let swarm_source = if r.swarm.is_some() {
        format!(
            "Docker Swarm {} (Debian docker.io) run here, side by side",
            version(&r.swarm)
        )
    } else {
        "Docker Swarm not run here: its figures are quoted".to_owned()
    };
    let _ = writeln!(
        out,
        "- versions: meshd {}, {}; {swarm_source}; Nomad quoted",
        version(&r.meshd),
        r.runc_version.as_deref().unwrap_or("runc not found"),
    );
    let _ = writeln!(
        out,
        "- lab: {HOSTS} hosts (network namespaces on one bridge, one daemon each): the cluster formed on host1 (the only manager), host2 and host3 joined as workers, the test image (busybox, `httpd` until SIGTERM) loaded on every host; a fresh lab per section and system; all through each system's API (Swarm: one dockerd per host with its own mount and UTS namespaces, data and exec roots, `--iptables=false --bridge=none`)"
    );
    let _ = writeln!(
        out,
        "- timing: from the API call to the first poll that shows the change done; the service's tasks listed every {} ms on one keep-alive connection to the manager's socket; a task counts when its desired and observed states are `running`; runs: {} (median, then each run)",
        POLL.as_millis(),
        o.runs
    );
    let _ = writeln!(
        out,
        "- time to N running: a service of N replicas (the CLIs' defaults otherwise), without and with `--network` (an overlay created beforehand); the service is removed and its tasks awaited stopped between runs"
    );
    let _ = writeln!(
        out,
        "- killed host: {SMALL_SERVICE} replicas spread over the {HOSTS} hosts; host{KILLED_HOST} killed as a whole (every process in its network namespaces and their descendants: the daemon, containerd and shims, the containers; frozen, then SIGKILLed at once); until {SMALL_SERVICE} tasks run on host1 and host2; host{KILLED_HOST} is restarted and rejoins between runs"
    );
    let u = update_settings(o.update_monitor);
    let _ = writeln!(
        out,
        "- rolling update: {SMALL_SERVICE} replicas, an update of one environment variable with parallelism {}, delay {} ms, monitor {} ms, order {}, failure action {} (Docker Swarm's defaults, which its quoted figure used); `completed` comes one monitor period after the last new task started, in both systems",
        u.parallelism,
        u.delay_ms,
        u.monitor_ms,
        u.order.as_str(),
        u.failure_action.as_str()
    );
    let so = &o.sched;
    let _ = writeln!(
        out,
        "- scheduler: `mesh_orchestrator` called in-process on {} simulated nodes (zones a–d, 8/16/32 CPUs), {} services × {} replicas = {} tasks (every tenth service constrained to a zone, every tenth reserving resources, every tenth at most 2 per node); one `Scheduler::schedule` batch of every task, and one `plan` from an empty cluster (creates and places every task)\n",
        so.nodes,
        so.services,
        so.replicas,
        so.services * so.replicas
    );

    let m = r.meshd.as_ref();
    let sw = r.swarm.as_ref();
    let _ = writeln!(
        out,
        "| figure | meshd | Docker Swarm | meshd / Swarm | goal | met |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- | --- |");
    // Time to N running: every (N, network) either system measured, in the options' order.
    let mut keys: Vec<(usize, bool)> = Vec::new();
    for network in [false, true] {
        for n in &o.replicas {
            let measured = [m, sw].iter().flatten().any(|f| {
                f.start
                    .iter()
                    .any(|row| row.replicas == *n && row.network == network)
            });
            if measured {
                keys.push((*n, network));
            }
        }
    }
    for (n, network) in keys {
        let label = format!(
            "time to {n} running{}",
            if network { ", on an overlay" } else { "" }
        );
        let runs = |f: Option<&SystemFigures>| -> Vec<Duration> {
            f.and_then(|f| {
                f.start
                    .iter()
                    .find(|row| row.replicas == n && row.network == network)
            })
            .map(|row| row.runs.clone())
            .unwrap_or_default()
        };
        let quoted = SWARM_START
            .iter()
            .find(|(q, net, _)| *q == n && *net == network)
            .map(|(_, _, s)| *s);
        let (ref_cell, reference) = reference_of(&runs(sw), quoted);
        let mr = runs(m);
        let ratio = ratio(secs_of(&mr), reference);
        let (goal, met_cell) = match reference {
            Some(s) => (
                format!("≤ {:.2} s (half of Swarm's)", s * START_RATIO_GOAL),
                met(ratio.map(|r| r <= START_RATIO_GOAL)),
            ),
            None => ("—".to_owned(), String::new()),
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {ref_cell} | {} | {goal} | {met_cell} |",
            runs_cell(&mr),
            ratio_cell(ratio),
        );
    }
    if o.sections.contains(&Section::Kill) {
        let pick = |f: Option<&SystemFigures>, down: bool| -> Vec<Duration> {
            f.map(|f| {
                f.kill
                    .iter()
                    .map(|k| if down { k.down } else { k.recovered })
                    .collect()
            })
            .unwrap_or_default()
        };
        let md = pick(m, true);
        let (ref_cell, reference) = reference_of(&pick(sw, true), Some(SWARM_KILL_DOWN));
        let _ = writeln!(
            out,
            "| killed host marked down | {} | {ref_cell} | {} | — | |",
            runs_cell(&md),
            ratio_cell(ratio(secs_of(&md), reference)),
        );
        let mr = pick(m, false);
        let (ref_cell, reference) = reference_of(&pick(sw, false), Some(SWARM_KILL_RECOVERED));
        let _ = writeln!(
            out,
            "| killed host's tasks running elsewhere | {} | {ref_cell} | {} | ≤ {} | {} |",
            runs_cell(&mr),
            ratio_cell(ratio(secs_of(&mr), reference)),
            secs(KILL_GOAL),
            met(median(&mr).map(|d| d <= KILL_GOAL)),
        );
    }
    if o.sections.contains(&Section::Update) {
        let pick = |f: Option<&SystemFigures>, done: bool| -> Vec<Duration> {
            f.map(|f| {
                f.update
                    .iter()
                    .map(|u| {
                        if done {
                            u.completed
                        } else {
                            u.new_tasks_running
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
        };
        let mn = pick(m, false);
        let (ref_cell, reference) = reference_of(&pick(sw, false), None);
        let _ = writeln!(
            out,
            "| rolling update of {SMALL_SERVICE}: every task on the new spec | {} | {ref_cell} | {} | — | |",
            runs_cell(&mn),
            ratio_cell(ratio(secs_of(&mn), reference)),
        );
        let md = pick(m, true);
        let (ref_cell, reference) = reference_of(&pick(sw, true), Some(SWARM_UPDATE));
        let ratio = ratio(secs_of(&md), reference);
        let _ = writeln!(
            out,
            "| rolling update of {SMALL_SERVICE}: update completed | {} | {ref_cell} | {} | ≤ Swarm's, same settings | {} |",
            runs_cell(&md),
            ratio_cell(ratio),
            met(ratio.map(|r| r <= 1.0)),
        );
    }
    if let Some(f) = &r.sched {
        let rate = f.placements_per_sec();
        let _ = writeln!(
            out,
            "| scheduler: placements/s ({} of {} placed in one batch; median batch {}) | {} | {} (Nomad C1M, quoted) | {} | ≥ {} | {} |",
            f.placed,
            f.options.tasks(),
            ms_cell(median(&f.schedule)),
            rate.map_or_else(|| "—".to_owned(), thousands),
            thousands(NOMAD_PLACEMENTS),
            ratio_cell(ratio(rate, Some(NOMAD_PLACEMENTS))),
            thousands(PLACEMENTS_GOAL),
            met(rate.map(|v| v >= PLACEMENTS_GOAL)),
        );
        let _ = writeln!(
            out,
            "| one `plan` from an empty cluster: {} tasks created, {} placed | {} | — | — | — | |",
            f.plan_created,
            f.plan_assigned,
            ms_runs_cell(&f.full_plan),
        );
        let _ = writeln!(
            out,
            "| one `plan` of that cluster running (nothing to do) | {} | — | — | — | |",
            ms_runs_cell(&f.steady_plan),
        );
    }
    let _ = writeln!(
        out,
        "\nGoals: at most half of Docker Swarm's time to N running, a killed host's tasks running elsewhere within {}, a rolling update no slower than Swarm's with the same settings, at least {} placements/s. Ratios and goals use Swarm's figures measured in this run when it ran, else the figures quoted from the issue that set the goals (Debian docker.io 20.10 on 3 hosts of the same kind of machine): 10 replicas running in 1.6 s, 30 in 3.8 s (6.1 s on an overlay), a killed host noticed after 11.8 s and its tasks running elsewhere after 17.2 s, a 6-task rolling update in 10.1 s. Nomad's C1M figure is quoted too (a real cluster of 5,000 hosts, so its rate includes far more than the placement decisions timed here).",
        secs(KILL_GOAL),
        thousands(PLACEMENTS_GOAL),
    );
    if !r.failures.is_empty() {
        let _ = writeln!(
            out,
            "\nSections that failed (their rows are missing or partial):\n"
        );
        for f in &r.failures {
            let _ = writeln!(out, "- {}, {}: {}", f.system, f.section.name(), f.error);
        }
    }
    out
}

/// The reference cell and figure (seconds): Swarm's runs measured here, else its quoted
/// figure, else nothing.
fn reference_of(live: &[Duration], quoted: Option<f64>) -> (String, Option<f64>) {
    if !live.is_empty() {
        (runs_cell(live), secs_of(live))
    } else if let Some(q) = quoted {
        (format!("{q:.2} s (quoted)"), Some(q))
    } else {
        ("—".to_owned(), None)
    }
}

fn secs_of(runs: &[Duration]) -> Option<f64> {
    median(runs).map(|d| d.as_secs_f64())
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

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `median (a, b, c)` in seconds, or `—` without runs.
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

fn ms_cell(d: Option<Duration>) -> String {
    d.map_or_else(
        || "—".to_owned(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
    )
}

/// `median (a, b, c)` in milliseconds, or `—` without runs.
fn ms_runs_cell(runs: &[Duration]) -> String {
    match median(runs) {
        None => "—".to_owned(),
        Some(m) => format!(
            "{} ({})",
            ms_cell(Some(m)),
            runs.iter()
                .map(|d| ms_cell(Some(*d)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A whole number with a comma every three digits: `1,234,567`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
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
    use super::*;
    use crate::machine::Machine;
    use crate::sched::{SchedFigures, SchedOptions};
    use crate::services::{Failure, KillRun, ServicesOptions, StartRow, UpdateRun};

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn meshd() -> SystemFigures {
        SystemFigures {
            version: "0.1.0 (abc123)".into(),
            start: vec![
                StartRow {
                    replicas: 10,
                    network: false,
                    runs: vec![d(700), d(600), d(900)],
                },
                StartRow {
                    replicas: 100,
                    network: false,
                    runs: vec![d(5000)],
                },
                StartRow {
                    replicas: 30,
                    network: true,
                    runs: vec![d(4000)],
                },
            ],
            kill: vec![KillRun {
                tasks_on_host: 2,
                down: d(1800),
                recovered: d(3000),
            }],
            update: vec![UpdateRun {
                new_tasks_running: d(4000),
                completed: d(9000),
            }],
        }
    }

    fn report() -> ServicesReport {
        ServicesReport {
            date: "2030-01-02".into(),
            machine: Machine::default(),
            options: ServicesOptions::default(),
            runc_version: Some("runc version 1.1.5".into()),
            meshd: Some(meshd()),
            swarm: None,
            sched: Some(SchedFigures {
                options: SchedOptions::default(),
                schedule: vec![d(100), d(200), d(50)],
                placed: 100_000,
                full_plan: vec![d(400)],
                plan_created: 100_000,
                plan_assigned: 99_000,
                steady_plan: vec![d(30)],
            }),
            failures: vec![Failure {
                system: "meshd".into(),
                section: Section::Update,
                error: "timed out".into(),
            }],
        }
    }

    #[test]
    fn quoted_references_ratios_goals_and_verdicts() {
        let t = render(&report());
        assert!(
            t.contains("meshd 0.1.0 (abc123), runc version 1.1.5; Docker Swarm not run here"),
            "{t}"
        );
        assert!(
            t.contains("| time to 10 running | 0.70 s (0.70 s, 0.60 s, 0.90 s) | 1.60 s (quoted) | 0.44× | ≤ 0.80 s (half of Swarm's) | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| time to 100 running | 5.00 s (5.00 s) | — | — | — |  |"),
            "{t}"
        );
        assert!(
            t.contains("| time to 30 running, on an overlay | 4.00 s (4.00 s) | 6.10 s (quoted) | 0.66× | ≤ 3.05 s (half of Swarm's) | **no** |"),
            "{t}"
        );
        assert!(
            t.contains("| killed host's tasks running elsewhere | 3.00 s (3.00 s) | 17.20 s (quoted) | 0.17× | ≤ 4.00 s | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| rolling update of 6: update completed | 9.00 s (9.00 s) | 10.10 s (quoted) | 0.89× | ≤ Swarm's, same settings | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| scheduler: placements/s (100000 of 100000 placed in one batch; median batch 100.0 ms) | 1,000,000 | 3,750 (Nomad C1M, quoted) | 266.67× | ≥ 50,000 | yes |"),
            "{t}"
        );
        assert!(
            t.contains("| one `plan` from an empty cluster: 100000 tasks created, 99000 placed | 400.0 ms (400.0 ms) |"),
            "{t}"
        );
        assert!(t.contains("- meshd, update: timed out"), "{t}");
        assert!(t.contains("monitor 5000 ms, order stop-first"), "{t}");
    }

    #[test]
    fn live_swarm_figures_replace_the_quoted_ones() {
        let mut r = report();
        let mut sw = meshd();
        sw.version = "20.10.24+dfsg1".into();
        sw.start[0].runs = vec![d(2000)];
        sw.start.truncate(1);
        sw.kill[0].recovered = d(15_000);
        r.swarm = Some(sw);
        let t = render(&r);
        assert!(
            t.contains("Docker Swarm 20.10.24+dfsg1 (Debian docker.io) run here"),
            "{t}"
        );
        assert!(
            t.contains("| time to 10 running | 0.70 s (0.70 s, 0.60 s, 0.90 s) | 2.00 s (2.00 s) | 0.35× | ≤ 1.00 s (half of Swarm's) | yes |"),
            "{t}"
        );
        // A row Swarm did not measure falls back to the quoted figure.
        assert!(
            t.contains("| time to 30 running, on an overlay | 4.00 s (4.00 s) | 6.10 s (quoted) |"),
            "{t}"
        );
        assert!(
            t.contains("| killed host's tasks running elsewhere | 3.00 s (3.00 s) | 15.00 s (15.00 s) | 0.20× |"),
            "{t}"
        );
        assert!(
            t.contains("| rolling update of 6: every task on the new spec | 4.00 s (4.00 s) | 4.00 s (4.00 s) | 1.00× |"),
            "{t}"
        );
    }

    #[test]
    fn sections_not_run_leave_no_rows() {
        let mut r = report();
        r.options.sections = vec![Section::Scheduler];
        r.meshd = None;
        r.failures.clear();
        let t = render(&r);
        assert!(!t.contains("killed host marked down |"), "{t}");
        assert!(!t.contains("| rolling update"), "{t}");
        assert!(!t.contains("| time to"), "{t}");
        assert!(t.contains("| scheduler: placements/s"), "{t}");
        assert!(!t.contains("failed"), "{t}");
        assert!(t.contains("meshd not run"), "{t}");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(3_750.0), "3,750");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(0.0), "0");
    }
}
