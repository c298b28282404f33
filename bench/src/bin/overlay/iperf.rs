//! iperf3: a server in one namespace, bounded client runs from another, figures read from
//! its JSON (`-J`), and the machine's CPU time around each run.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::error::{OverlayBenchError, Result};
use crate::proc::{self, Background, CpuTimes};

/// How long the client may take beyond its `-t`.
const SLACK: Duration = Duration::from_secs(30);

/// What a client run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// TCP with this many parallel streams.
    Tcp {
        /// `-P`.
        streams: u32,
    },
    /// UDP datagrams of this many bytes, as fast as the sender can (`-u -l LEN -b 0`).
    Udp {
        /// `-l`.
        len: u32,
    },
}

/// One client run's figures (the receiver's side).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Run {
    /// Bytes received.
    pub bytes: u64,
    /// Seconds the receiver measured.
    pub seconds: f64,
    /// Received throughput, bits per second.
    pub bits_per_second: f64,
    /// UDP: datagrams the sender sent.
    pub sent_packets: u64,
    /// UDP: datagrams received (sent minus lost).
    pub received_packets: u64,
    /// The machine's busy CPU seconds (user + system + softirq, all CPUs) during the run.
    pub cpu_seconds: f64,
    /// The share of all CPUs' time that was busy during the run.
    pub cpu_share: f64,
    /// UDP: datagrams dropped because a socket's receive buffer was full, in the server's
    /// namespace (`Udp: RcvbufErrors` of its `/proc/net/snmp`), during the run.
    pub rcvbuf_drops: Option<u64>,
}

impl Run {
    /// Received throughput in Gb/s.
    pub fn gbps(&self) -> f64 {
        self.bits_per_second / 1e9
    }

    /// Datagrams received per second.
    pub fn received_pps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.received_packets as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Datagrams sent per second.
    pub fn sent_pps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.sent_packets as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The machine's CPU seconds per GB (10^9 bytes) received.
    pub fn cpu_seconds_per_gb(&self) -> f64 {
        if self.bytes > 0 {
            self.cpu_seconds / (self.bytes as f64 / 1e9)
        } else {
            0.0
        }
    }
}

/// An iperf3 server (`iperf3 -s -p PORT`) in a namespace, stopped on drop.
#[derive(Debug)]
pub struct Server {
    bg: Background,
    netns: PathBuf,
    port: u16,
}

impl Server {
    /// Starts the server in `netns` and waits until it listens.
    pub fn start(netns: &Path, port: u16) -> Result<Server> {
        let p = port.to_string();
        let mut bg = Background::spawn(netns, &["iperf3", "-s", "-p", &p], &[], None)?;
        let filter = format!("sport = :{port}");
        proc::wait_for(
            &format!("iperf3 to listen on port {port} in {}", netns.display()),
            Duration::from_secs(10),
            || {
                if bg.check_running().is_err() {
                    // Reported below with its exit status.
                    return Some(());
                }
                proc::run(
                    Some(netns),
                    &["ss", "-Hltn", &filter],
                    None,
                    Duration::from_secs(5),
                )
                .ok()
                .filter(|out| !out.trim().is_empty())
                .map(|_| ())
            },
        )?;
        bg.check_running()?;
        Ok(Server {
            bg,
            netns: netns.to_path_buf(),
            port,
        })
    }

    /// Stops it and starts it again (after a run that left it stuck).
    pub fn restart(self) -> Result<Server> {
        let (netns, port) = (self.netns.clone(), self.port);
        drop(self);
        Server::start(&netns, port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it still runs.
    pub fn check_running(&mut self) -> Result<()> {
        self.bg.check_running()
    }
}

/// Runs an iperf3 client in `netns` against `dst:port` (a server in `server_ns`) for `secs`
/// seconds, with the machine's CPU time read just before and just after (and, for UDP, the
/// server namespace's socket-buffer drops).
pub fn client(
    netns: &Path,
    server_ns: &Path,
    dst: Ipv4Addr,
    port: u16,
    secs: u64,
    load: Load,
) -> Result<Run> {
    let (d, p, t) = (dst.to_string(), port.to_string(), secs.to_string());
    let mut argv: Vec<String> = [
        "iperf3",
        "-c",
        &d,
        "-p",
        &p,
        "-t",
        &t,
        "-J",
        "--connect-timeout",
        "5000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    match load {
        Load::Tcp { streams } => {
            argv.extend(["-P".to_owned(), streams.to_string()]);
        }
        Load::Udp { len } => {
            argv.extend(
                ["-u", "-b", "0", "-l"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .chain([len.to_string()]),
            );
        }
    }
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let what = format!("iperf3 {load:?} to {dst}");
    let udp = matches!(load, Load::Udp { .. });
    let drops_before = udp.then(|| udp_rcvbuf_errors(server_ns)).flatten();
    let before = CpuTimes::now()?;
    let done = proc::run_to_end(Some(netns), &refs, None, Duration::from_secs(secs) + SLACK)?;
    let after = CpuTimes::now()?;
    let drops_after = udp.then(|| udp_rcvbuf_errors(server_ns)).flatten();
    if !done.success {
        // iperf3 -J reports its own errors as JSON on standard output.
        let said = parse(&done.stdout, load)
            .err()
            .unwrap_or_else(|| done.stderr.trim().to_owned());
        return Err(OverlayBenchError::Command {
            command: done.command,
            status: done.status,
            stderr: said,
        });
    }
    let out = done.stdout;
    let mut run = parse(&out, load).map_err(|reason| OverlayBenchError::output(&what, reason))?;
    let (busy, share) = after.since(&before);
    run.cpu_seconds = busy;
    run.cpu_share = share;
    if let (Some(a), Some(b)) = (drops_after, drops_before) {
        run.rcvbuf_drops = Some(a.saturating_sub(b));
    }
    Ok(run)
}

/// `RcvbufErrors` of the `Udp:` lines of `/proc/net/snmp` in namespace `ns`.
fn udp_rcvbuf_errors(ns: &Path) -> Option<u64> {
    let snmp = proc::run(
        Some(ns),
        &["cat", "/proc/net/snmp"],
        None,
        Duration::from_secs(10),
    )
    .ok()?;
    snmp_field(&snmp, "Udp:", "RcvbufErrors")
}

/// A field of `/proc/net/snmp`: a header line and a value line share their prefix.
fn snmp_field(snmp: &str, prefix: &str, field: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with(prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Reads a client's JSON report: the receiver's figures.
fn parse(json: &str, load: Load) -> std::result::Result<Run, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON ({e})"))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3 says: {err}"));
    }
    let end = v.get("end").ok_or("no `end` section")?;
    let received = end
        .get("sum_received")
        .or_else(|| end.get("sum"))
        .ok_or("no `end.sum_received` section")?;
    let num = |o: &Value, k: &str| o.get(k).and_then(Value::as_f64);
    let seconds = num(received, "seconds").ok_or("no `seconds` in the receiver's sum")?;
    let bytes = num(received, "bytes").ok_or("no `bytes` in the receiver's sum")? as u64;
    let bits_per_second =
        num(received, "bits_per_second").ok_or("no `bits_per_second` in the receiver's sum")?;
    let mut run = Run {
        bytes,
        seconds,
        bits_per_second,
        ..Run::default()
    };
    if let Load::Udp { .. } = load {
        let packets = num(received, "packets").ok_or("no `packets` in the receiver's sum")? as u64;
        let lost =
            num(received, "lost_packets").ok_or("no `lost_packets` in the receiver's sum")?;
        // `lost` is negative when datagrams arrive out of order more than they are lost.
        run.received_packets = packets.saturating_sub(lost.max(0.0) as u64);
        run.sent_packets = end
            .get("sum_sent")
            .and_then(|s| num(s, "packets"))
            .map_or(packets, |p| p as u64);
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_report() {
        let json = r#"{"start":{},"end":{"sum_sent":{"seconds":8,"bytes":9000000000,"bits_per_second":9e9},
            "sum_received":{"seconds":8.0,"bytes":8000000000,"bits_per_second":8e9}}}"#;
        let r = parse(json, Load::Tcp { streams: 1 }).unwrap();
        assert_eq!(r.bytes, 8_000_000_000);
        assert!((r.gbps() - 8.0).abs() < 1e-9);
        let mut r = r;
        r.cpu_seconds = 4.0;
        assert!((r.cpu_seconds_per_gb() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn udp_report_counts_received_datagrams() {
        // As iperf3 3.12 prints it.
        let json = r#"{"end":{"sum":{"seconds":1.000131,"bytes":9946880,"bits_per_second":79574005.5,
            "lost_packets":86369,"packets":155420,"sender":true},
            "sum_sent":{"seconds":1.000013,"bytes":9946880,"bits_per_second":79574005.5,"lost_packets":0,"packets":155420},
            "sum_received":{"seconds":1.000131,"bytes":4354816,"bits_per_second":34833964.7,
            "lost_packets":86369,"packets":154413}}}"#;
        let r = parse(json, Load::Udp { len: 64 }).unwrap();
        assert_eq!(r.received_packets, 68044);
        assert_eq!(r.received_packets * 64, r.bytes);
        assert_eq!(r.sent_packets, 155420);
        assert!(
            (r.received_pps() - 68035.1).abs() < 1.0,
            "{}",
            r.received_pps()
        );
    }

    #[test]
    fn snmp_udp_fields() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 797961 0 452168 1 452168 0\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 0\n";
        assert_eq!(snmp_field(snmp, "Udp:", "RcvbufErrors"), Some(452_168));
        assert_eq!(snmp_field(snmp, "Udp:", "InDatagrams"), Some(797_961));
        assert_eq!(snmp_field(snmp, "Udp:", "Nope"), None);
    }

    #[test]
    fn errors_are_iperf3s_own() {
        let e = parse(
            r#"{"start":{},"error":"unable to connect to server"}"#,
            Load::Tcp { streams: 1 },
        )
        .unwrap_err();
        assert!(e.contains("unable to connect"), "{e}");
        assert!(
            parse("garbage", Load::Udp { len: 64 })
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
