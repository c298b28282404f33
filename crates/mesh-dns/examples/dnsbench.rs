//! A resolver endpoint for benchmarks (bench/dns.sh): serves N services, each a VIP
//! (`svcI`), K task addresses (`tasks.svcI`) and K task names (`svcI.SLOT.ID`), on one
//! address; or prints the same names for another server or for dnsperf.
//!
//! ```text
//! dnsbench serve ADDR:PORT [--services N] [--tasks K] [--threads T] [--upstream IP:PORT]
//! dnsbench unbound|hosts|queries [--services N] [--tasks K]
//! ```
//!
//! `serve` prints `rss_empty_kib=…` (the resolver running with an empty table),
//! `rss_table_kib=…` (with the table in place) and `ready`, then serves until killed.
//! `unbound` prints `local-data:` lines, `hosts` an /etc/hosts-style file (for dnsmasq's
//! `--addn-hosts`), `queries` a dnsperf query file of `svcI A` and `tasks.svcI A`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;

use mesh_dns::{Resolver, ResolverConfig, Table};

const NETWORK: &str = "bench";

struct Args {
    mode: String,
    listen: Option<SocketAddr>,
    services: u32,
    tasks: u32,
    threads: usize,
    upstreams: Vec<SocketAddr>,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "dnsbench: {problem}\nusage: dnsbench serve ADDR:PORT [--services N] [--tasks K] \
         [--threads T] [--upstream IP:PORT]\n       dnsbench unbound|hosts|queries \
         [--services N] [--tasks K]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage("no mode given"));
    let mut args = Args {
        mode,
        listen: None,
        services: 100,
        tasks: 3,
        threads: 1,
        upstreams: Vec::new(),
    };
    if args.mode == "serve" {
        let listen = it.next().unwrap_or_else(|| usage("serve needs ADDR:PORT"));
        args.listen =
            Some(listen.parse().unwrap_or_else(|_| {
                usage("ADDR:PORT is not an address and port, e.g. 10.0.0.1:53")
            }));
    }
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = || {
            value
                .parse::<u32>()
                .unwrap_or_else(|_| usage(&format!("{flag} takes a whole number, not {value}")))
        };
        match flag.as_str() {
            "--services" => args.services = number().max(1),
            "--tasks" => args.tasks = number(),
            "--threads" => args.threads = number() as usize,
            "--upstream" => args.upstreams.push(
                value
                    .parse()
                    .unwrap_or_else(|_| usage("--upstream takes IP:PORT, e.g. 127.0.0.1:5353")),
            ),
            _ => usage(&format!("unknown option {flag}")),
        }
    }
    if u64::from(args.services) * u64::from(args.tasks.max(1)) > 60_000 {
        usage("--services × --tasks must stay under 60,000 (the addresses are from 10.1.0.0/16)");
    }
    args
}

/// The VIP of service `i` (from 1) and its `k` task addresses and names.
struct Service {
    name: String,
    vip: Ipv4Addr,
    tasks: Vec<(String, Ipv4Addr)>,
}

fn services(n: u32, k: u32) -> impl Iterator<Item = Service> {
    (1..=n).map(move |i| Service {
        name: format!("svc{i}"),
        vip: Ipv4Addr::from(0x0A00_0000 + i),
        tasks: (0..k)
            .map(|j| {
                let seq = (i - 1) * k + j + 1;
                // A 25-character task ID, as the orchestrator makes them.
                let id = format!(
                    "{:025x}",
                    u128::from(seq).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                );
                let id = &id[id.len() - 25..];
                (
                    format!("svc{i}.{}.{id}", j + 1),
                    Ipv4Addr::from(0x0A01_0000 + seq),
                )
            })
            .collect(),
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn trim_heap() {
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn reuseport_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn serve(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let Some(listen) = args.listen else {
        usage("serve needs ADDR:PORT")
    };
    let resolver = Resolver::new(ResolverConfig {
        upstreams: args.upstreams.clone(),
        threads: args.threads,
        ..ResolverConfig::default()
    })?;
    // One UDP socket per thread, on the same address (SO_REUSEPORT), as unbound does.
    let udp = (0..args.threads)
        .map(|_| reuseport_udp(listen))
        .collect::<Result<Vec<_>, _>>()?;
    let tcp = TcpListener::bind(listen)?;
    let _endpoint = resolver.serve_sockets(vec![NETWORK.into()], udp, vec![tcp])?;
    trim_heap();
    println!("rss_empty_kib={}", rss_kib());

    let mut b = Table::builder();
    for s in services(args.services, args.tasks) {
        let task_ips: Vec<IpAddr> = s.tasks.iter().map(|t| IpAddr::V4(t.1)).collect();
        b.add_service(NETWORK, &s.name, Some(IpAddr::V4(s.vip)), &task_ips)?;
        for (name, ip) in &s.tasks {
            b.add_ip(NETWORK, name, IpAddr::V4(*ip))?;
        }
    }
    resolver.set_table(Arc::new(b.build()));
    trim_heap();
    println!("table_names={}", resolver.table().name_count());
    println!("rss_table_kib={}", rss_kib());
    println!("ready");
    loop {
        std::thread::park();
    }
}

fn main() {
    let args = parse_args();
    match args.mode.as_str() {
        "serve" => {
            if let Err(e) = serve(&args) {
                eprintln!("dnsbench: {e}");
                std::process::exit(1);
            }
        }
        "unbound" => {
            for s in services(args.services, args.tasks) {
                println!("local-data: \"{}. 0 IN A {}\"", s.name, s.vip);
                for (name, ip) in &s.tasks {
                    println!("local-data: \"tasks.{}. 0 IN A {ip}\"", s.name);
                    println!("local-data: \"{name}. 0 IN A {ip}\"");
                }
            }
        }
        "hosts" => {
            for s in services(args.services, args.tasks) {
                println!("{} {}", s.vip, s.name);
                for (name, ip) in &s.tasks {
                    println!("{ip} tasks.{}", s.name);
                    println!("{ip} {name}");
                }
            }
        }
        "queries" => {
            for s in services(args.services, args.tasks) {
                println!("{} A", s.name);
                println!("tasks.{} A", s.name);
            }
        }
        other => usage(&format!("unknown mode {other}")),
    }
}
