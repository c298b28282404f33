//! The loads of the routing-mesh benchmark: `wrk` (HTTP requests per second and latency
//! percentiles, keep-alive or a new connection per request) and `iperf3` (TCP throughput),
//! run inside a lab namespace, each bounded in time, and their outputs read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use mesh_bench::cleanup;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::mesh_error::{MeshBenchError, Result, tail};

/// How long a tool may run past the duration it was asked for before it is killed.
const GRACE: Duration = Duration::from_secs(30);

/// What a finished command printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// `program args…` as one line, for messages.
pub fn render(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| {
            if a.is_empty() || a.contains([' ', '\'', '"']) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args…` inside the network namespace at `netns` (through `nsenter --net`,
/// which execs the program: the child is the program itself), or in this process's
/// namespace when `None`. Killed (SIGKILL) if still running after `timeout`; killed too if
/// the benchmark is interrupted meanwhile.
pub fn run_in(
    netns: Option<&Path>,
    program: &str,
    args: &[String],
    timeout: Duration,
) -> Result<Finished> {
    let line = render(program, args);
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| MeshBenchError::io(format!("start `{line}`"), e))?;
    let pid = child.id();
    cleanup::track_pid(pid);
    tracing::debug!(pid, command = %line, "started");
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let reader = thread::spawn(move || {
        let mut o = String::new();
        let mut e = String::new();
        let err_reader = thread::spawn(move || {
            if let Some(s) = err.as_mut() {
                let _ = s.read_to_string(&mut e);
            }
            e
        });
        if let Some(s) = out.as_mut() {
            let _ = s.read_to_string(&mut o);
        }
        (o, err_reader.join().unwrap_or_default())
    });
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    let timed_out = rx.recv_timeout(timeout).is_err();
    if timed_out && let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
    }
    let status = waiter
        .join()
        .map_err(|_| MeshBenchError::Cluster(format!("the thread waiting for `{line}` panicked")))?
        .map_err(|e| MeshBenchError::io(format!("wait for `{line}`"), e))?;
    cleanup::forget_pid(pid);
    let (stdout, stderr) = reader.join().unwrap_or_default();
    if timed_out {
        return Err(MeshBenchError::Hung {
            command: line,
            after: timeout,
        });
    }
    Ok(Finished {
        code: status.code(),
        stdout,
        stderr,
    })
}

/// [`run_in`], and an error unless the command exits 0.
pub fn run_ok(
    netns: Option<&Path>,
    program: &str,
    args: &[String],
    timeout: Duration,
) -> Result<String> {
    let f = run_in(netns, program, args, timeout)?;
    if f.code == Some(0) {
        return Ok(f.stdout);
    }
    Err(MeshBenchError::Command {
        command: render(program, args),
        status: f
            .code
            .map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}")),
        output: tail(&format!("{}\n{}", f.stdout, f.stderr), 600),
    })
}

/// One HTTP load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLoad {
    /// Where `wrk` runs.
    pub netns: PathBuf,
    /// `http://…/`.
    pub url: String,
    /// `wrk -t`.
    pub threads: u32,
    /// `wrk -c`.
    pub connections: u32,
    /// `wrk -d`.
    pub duration: Duration,
    /// A new connection per request (`Connection: close` on every request), else keep-alive.
    pub close: bool,
}

impl HttpLoad {
    /// `wrk`'s arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{}s", self.duration.as_secs().max(1)),
            "--latency".to_owned(),
        ];
        if self.close {
            a.push("-H".to_owned());
            a.push("Connection: close".to_owned());
        }
        a.push(self.url.clone());
        a
    }

    /// Runs `wrk` and reads its figures.
    pub fn run(&self) -> Result<WrkResult> {
        let out = run_ok(
            Some(&self.netns),
            "wrk",
            &self.args(),
            self.duration + GRACE,
        )?;
        parse_wrk(&out)
    }
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WrkResult {
    /// Completed requests per second (`Requests/sec`).
    pub rps: f64,
    /// Completed requests.
    pub requests: u64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Socket errors: connect, read, write and timeout, added up.
    pub socket_errors: u64,
    /// Answers that were neither 2xx nor 3xx.
    pub non_2xx: u64,
}

/// A latency as `wrk` prints it: `812.00us`, `1.20ms`, `2.01s`, `1.50m`.
pub fn parse_latency(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v * scale))
}

/// Reads `wrk --latency`'s output.
pub fn parse_wrk(out: &str) -> Result<WrkResult> {
    let bad = |what| MeshBenchError::Parse {
        tool: "wrk",
        what,
        output: tail(out, 800),
    };
    let mut r = WrkResult::default();
    let (mut rps, mut p50, mut p99, mut requests) = (None, None, None, None);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = v.parse::<f64>().ok(),
            ["50%", v] => p50 = parse_latency(v),
            ["99%", v] => p99 = parse_latency(v),
            [n, "requests", "in", ..] => requests = n.parse::<u64>().ok(),
            ["Socket", "errors:", rest @ ..] => {
                // connect N, read N, write N, timeout N
                r.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    r.rps = rps.ok_or_else(|| bad("Requests/sec"))?;
    r.p50 = p50.ok_or_else(|| bad("the 50% latency (wrk --latency)"))?;
    r.p99 = p99.ok_or_else(|| bad("the 99% latency (wrk --latency)"))?;
    r.requests = requests.ok_or_else(|| bad("the request count"))?;
    Ok(r)
}

/// One TCP throughput load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpLoad {
    /// Where the `iperf3` client runs.
    pub netns: PathBuf,
    /// The server's address as the client reaches it.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// `iperf3 -t`.
    pub duration: Duration,
}

impl TcpLoad {
    /// `iperf3`'s arguments: one stream, client to server, JSON output.
    pub fn args(&self) -> Vec<String> {
        vec![
            "-c".to_owned(),
            self.host.clone(),
            "-p".to_owned(),
            self.port.to_string(),
            "-t".to_owned(),
            self.duration.as_secs().max(1).to_string(),
            "--connect-timeout".to_owned(),
            "5000".to_owned(),
            "-J".to_owned(),
        ]
    }

    /// Runs the `iperf3` client and reads the receiver's throughput.
    pub fn run(&self) -> Result<IperfResult> {
        let f = run_in(
            Some(&self.netns),
            "iperf3",
            &self.args(),
            self.duration + GRACE,
        )?;
        // iperf3 -J reports its own failures in the JSON (and exits 1).
        match parse_iperf(&f.stdout) {
            Ok(r) => Ok(r),
            Err(e) if f.code == Some(0) => Err(e),
            Err(_) => Err(MeshBenchError::Command {
                command: render("iperf3", &self.args()),
                status: f
                    .code
                    .map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}")),
                output: tail(&format!("{}\n{}", f.stdout, f.stderr), 600),
            }),
        }
    }
}

/// What one `iperf3` run measured.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct IperfResult {
    /// Bits per second received by the server.
    pub bits_per_sec: f64,
    /// TCP retransmissions of the sender.
    pub retransmits: u64,
}

/// Reads `iperf3 -J`'s output: the receiver's throughput, or the error it reports.
pub fn parse_iperf(json: &str) -> Result<IperfResult> {
    let bad = |what| MeshBenchError::Parse {
        tool: "iperf3",
        what,
        output: tail(json, 800),
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|_| bad("a JSON document"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(MeshBenchError::Command {
            command: "iperf3".to_owned(),
            status: "error".to_owned(),
            output: err.to_owned(),
        });
    }
    let end = v.get("end").ok_or_else(|| bad("`end`"))?;
    let bits_per_sec = end
        .pointer("/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| bad("`end.sum_received.bits_per_second`"))?;
    let retransmits = end
        .pointer("/sum_sent/retransmits")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    Ok(IperfResult {
        bits_per_sec,
        retransmits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://192.0.2.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   531.23us  201.13us  10.02ms   88.84%
    Req/Sec    60.12k     3.21k   66.19k    70.00%
  Latency Distribution
     50%  499.00us
     75%  600.00us
     90%  700.00us
     99%    1.20ms
  1196402 requests in 10.00s, 174.55MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 5
Requests/sec: 119630.22
Transfer/sec:     17.45MB
";

    #[test]
    fn reads_wrk_output() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.rps, 119630.22);
        assert_eq!(r.requests, 1196402);
        assert_eq!(r.p50, Duration::from_micros(499));
        assert_eq!(r.p99, Duration::from_micros(1200));
        assert_eq!(r.socket_errors, 5);
        assert_eq!(r.non_2xx, 5);
    }

    #[test]
    fn a_clean_run_has_no_errors() {
        let clean: String = WRK
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = parse_wrk(&clean).unwrap();
        assert_eq!((r.socket_errors, r.non_2xx), (0, 0));
    }

    #[test]
    fn wrk_output_without_figures_is_an_error_naming_them() {
        let e = parse_wrk("unable to connect to 192.0.2.1:8080 Connection refused")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Requests/sec") && e.contains("Connection refused"),
            "{e}"
        );
        let no_latency: String = WRK.lines().filter(|l| !l.contains('%')).collect();
        assert!(parse_wrk(&no_latency).is_err());
    }

    #[test]
    fn latencies_in_every_unit() {
        assert_eq!(parse_latency("812.00us"), Some(Duration::from_micros(812)));
        assert_eq!(parse_latency("1.50ms"), Some(Duration::from_micros(1500)));
        assert_eq!(parse_latency("2.00s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_latency("1.00m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_latency("3ks"), None);
        assert_eq!(parse_latency("12"), None);
        assert_eq!(parse_latency("-1ms"), None);
    }

    #[test]
    fn wrk_arguments_for_both_modes() {
        let mut l = HttpLoad {
            netns: "/var/run/netns/c".into(),
            url: "http://192.0.2.1:8080/".into(),
            threads: 2,
            connections: 64,
            duration: Duration::from_secs(10),
            close: false,
        };
        assert_eq!(
            render("wrk", &l.args()),
            "wrk -t2 -c64 -d10s --latency http://192.0.2.1:8080/"
        );
        l.close = true;
        assert_eq!(
            render("wrk", &l.args()),
            "wrk -t2 -c64 -d10s --latency -H 'Connection: close' http://192.0.2.1:8080/"
        );
    }

    #[test]
    fn reads_iperf3_json() {
        let j = r#"{"start":{},"intervals":[],"end":{"sum_sent":{"bits_per_second":9.9e9,"retransmits":12},"sum_received":{"bits_per_second":9.8e9}}}"#;
        let r = parse_iperf(j).unwrap();
        assert_eq!(r.bits_per_sec, 9.8e9);
        assert_eq!(r.retransmits, 12);
        let e = parse_iperf(
            r#"{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Connection refused"), "{e}");
        assert!(parse_iperf("not json").is_err());
        assert!(parse_iperf(r#"{"end":{}}"#).is_err());
    }

    #[test]
    fn commands_run_bounded_and_report_failures() {
        let f = run_in(
            None,
            "sh",
            &["-c".into(), "echo out; echo err >&2".into()],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(f.code, Some(0));
        assert_eq!(f.stdout.trim(), "out");
        assert_eq!(f.stderr.trim(), "err");
        let e = run_ok(
            None,
            "sh",
            &["-c".into(), "echo boom >&2; exit 3".into()],
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("exit 3") && e.contains("boom"), "{e}");
        let e = run_in(None, "sleep", &["30".into()], Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("was killed"), "{e}");
        let e = run_in(None, "/nonexistent/tool", &[], Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/tool"), "{e}");
    }
}
