//! Service discovery on the lab: each task's resolver at 127.0.0.11 answers for the networks
//! it is on (service VIPs, `tasks.NAME`, dnsrr, aliases, containers), follows scale and health
//! changes, and gives NXDOMAIN for unknown cluster names; real clients (dig, busybox
//! nslookup, glibc getent) from inside tasks on different hosts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use mesh_api::{Task, TaskState};
use mesh_integration_tests::*;
use mesh_testkit::Lab;

fn tasks(lab: &Lab, service: &str) -> Vec<Task> {
    let out = ok(lab, 1, &["service", "ps", "--format", "json", service]);
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn running(lab: &Lab, service: &str) -> Vec<Task> {
    tasks(lab, service)
        .into_iter()
        .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
        .collect()
}

fn wait_running(lab: &Lab, service: &str, n: usize) -> Vec<Task> {
    lab.wait_until(&format!("{n} tasks of {service} running"), CONVERGE, || {
        let ts = running(lab, service);
        (ts.len() == n).then_some(ts)
    })
    .unwrap()
}

/// The namespace of `task` (its node's host index found from the node's hostname).
fn task_ns(lab: &Lab, task: &Task) -> String {
    let host = nodes(lab, 1)
        .unwrap()
        .into_iter()
        .find(|n| n.id == task.node_id)
        .map(|n| n.description.hostname)
        .unwrap();
    let i: usize = host.trim_start_matches("host").parse().unwrap();
    format!(
        "/var/run/netns/{}t{}",
        lab.sandbox_prefix(i),
        &task.id[..12]
    )
}

/// `dig @127.0.0.11 +short NAME TYPE` from inside the namespace, sorted lines.
fn dig(ns: &str, name: &str, qtype: &str) -> (String, BTreeSet<String>) {
    let out = in_netns(
        ns,
        &["dig", "@127.0.0.11", "+tries=1", "+time=2", name, qtype],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let short = in_netns(
        ns,
        &[
            "dig",
            "@127.0.0.11",
            "+short",
            "+tries=1",
            "+time=2",
            name,
            qtype,
        ],
    );
    let ips = String::from_utf8_lossy(&short.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    (status, ips)
}

fn ips_of(ts: &[Task]) -> BTreeSet<String> {
    ts.iter().map(|t| t.networks[0].ip.to_string()).collect()
}

#[test]
fn tasks_resolve_services_of_their_networks() {
    if !can_run() {
        return;
    }
    let lab = lab(3);
    form_cluster(&lab, 3);
    let image = test_image();
    for i in 1..=3 {
        ok(&lab, i, &["image", "load", "-i", &image]);
    }
    ok(
        &lab,
        1,
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "appnet",
        ],
    );
    ok(&lab, 1, &["network", "create", "-d", "overlay", "othernet"]);
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "name=appnet,alias=www",
            "meshd-test:latest",
        ],
    );
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "db",
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "appnet",
            "meshd-test:latest",
        ],
    );
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "hidden",
            "--network",
            "othernet",
            "meshd-test:latest",
        ],
    );
    let web = wait_running(&lab, "web", 3);
    let db = wait_running(&lab, "db", 2);
    wait_running(&lab, "hidden", 1);
    let vip = {
        let out = ok(&lab, 1, &["service", "inspect", "web"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["VirtualIps"][0]["Addr"].as_str().unwrap().to_string()
    };

    // From a task of web and from a task of db (on other hosts, usually).
    for from in [&web[0], &db[0]] {
        let ns = task_ns(&lab, from);
        // The node learns names with its next network map (a heartbeat period away).
        lab.wait_until("the node's names caught up", CONVERGE, || {
            (dig(&ns, "db", "A").1 == ips_of(&db)
                && dig(&ns, "tasks.web", "A").1 == ips_of(&web)
                && dig(&ns, "hidden", "A").0 == "NXDOMAIN")
                .then_some(())
        })
        .unwrap();
        let (st, ips) = dig(&ns, "web", "A");
        assert_eq!(
            (st.as_str(), ips.clone()),
            ("NOERROR", BTreeSet::from([vip.clone()]))
        );
        let (_, ips) = dig(&ns, "www", "A");
        assert_eq!(ips, BTreeSet::from([vip.clone()]), "alias");
        let (_, ips) = dig(&ns, "tasks.web", "A");
        assert_eq!(ips, ips_of(&web));
        let (_, ips) = dig(&ns, "db", "A");
        assert_eq!(ips, ips_of(&db), "dnsrr answers the tasks");
        let (st, ips) = dig(&ns, "web", "AAAA");
        assert_eq!(st, "NOERROR");
        assert!(ips.is_empty());
        let (st, _) = dig(&ns, "hidden", "A");
        assert_eq!(
            st, "NXDOMAIN",
            "a service of another network is not visible"
        );
        let (st, _) = dig(&ns, "tasks.nosuch", "A");
        assert_eq!(st, "NXDOMAIN");
        let name = format!("web.{}.{}", web[1].slot, web[1].id);
        let (_, ips) = dig(&ns, &name, "A");
        assert_eq!(
            ips,
            BTreeSet::from([web[1].networks[0].ip.to_string()]),
            "task name"
        );
    }

    // Scale: tasks.web follows.
    ok(&lab, 1, &["service", "scale", "web=4"]);
    let web4 = wait_running(&lab, "web", 4);
    let ns = task_ns(&lab, &db[0]);
    lab.wait_until("tasks.web has 4 addresses", Duration::from_secs(10), || {
        (dig(&ns, "tasks.web", "A").1 == ips_of(&web4)).then_some(())
    })
    .unwrap();

    // Health: a task is in tasks.NAME only once it passes its health check.
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "hc",
            "--replicas",
            "2",
            "--network",
            "appnet",
            "--health-cmd",
            "test -f /tmp/ok",
            "--health-interval",
            "300ms",
            "--health-retries",
            "1000",
            "meshd-test:latest",
        ],
    );
    let hc = wait_running(&lab, "hc", 2);
    let ips = lab
        .wait_until("tasks.hc known", CONVERGE, || {
            let (st, ips) = dig(&ns, "tasks.hc", "A");
            (st == "NOERROR").then_some(ips)
        })
        .unwrap();
    assert!(ips.is_empty(), "unhealthy tasks answered: {ips:?}");
    let pid = hc[0].status.pid.to_string();
    let touched = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-m", "touch", "/tmp/ok"])
        .status()
        .unwrap();
    assert!(touched.success());
    lab.wait_until("the healthy task answers", CONVERGE, || {
        (dig(&ns, "tasks.hc", "A").1 == BTreeSet::from([hc[0].networks[0].ip.to_string()]))
            .then_some(())
    })
    .unwrap();

    // busybox nslookup inside a standalone container on the attachable network.
    let out = lab.swarm(
        1,
        &[
            "run",
            "--rm",
            "--network",
            "appnet",
            "meshd-test:latest",
            "nslookup",
            "tasks.db",
        ],
    );
    for ip in ips_of(&db) {
        assert!(
            out.stdout.contains(&ip),
            "nslookup tasks.db: {}{}",
            out.stdout,
            out.stderr
        );
    }

    // glibc getent from inside a task's namespace, with the task's resolver configuration.
    let conf = lab.dir().join("task-resolv.conf");
    std::fs::write(&conf, "nameserver 127.0.0.11\noptions ndots:0\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/resolv.conf && nsenter --net={ns} getent ahosts tasks.web",
        conf.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for ip in ips_of(&web4) {
        assert!(text.contains(&ip), "getent ahosts tasks.web: {text}");
    }

    // Garbage does not hurt: the resolver still answers after it.
    let _ = in_netns(
        &ns,
        &[
            "python3",
            "-c",
            "import socket,os\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(500): s.sendto(os.urandom(i % 300 + 1), ('127.0.0.11', 53))",
        ],
    );
    assert_eq!(dig(&ns, "web", "A").1, BTreeSet::from([vip]));
}

/// A one-name upstream resolver in python: `example.test` A → 203.0.113.7; NXDOMAIN else.
const UPSTREAM: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 5300))
while True:
    q, a = s.recvfrom(4096)
    if len(q) < 12: continue
    i = 12
    labels = []
    while q[i] != 0:
        labels.append(q[i+1:i+1+q[i]].decode().lower()); i += 1 + q[i]
    qend = i + 5
    name = ".".join(labels)
    qtype = struct.unpack(">H", q[i+1:i+3])[0]
    if name == "example.test":
        ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + bytes([203, 0, 113, 7]) if qtype == 1 else b""
        flags, n = 0x8180, (1 if qtype == 1 else 0)
    else:
        ans, flags, n = b"", 0x8183, 0
    s.sendto(q[:2] + struct.pack(">HHHHH", flags, 1, n, 0, 0) + q[12:qend] + ans, a)
"#;

struct Upstreams(Vec<std::process::Child>);
impl Drop for Upstreams {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn forwarding_truncation_and_a_node_cut_off() {
    if !can_run() {
        return;
    }
    let lab = mesh_testkit::Lab::start(mesh_testkit::LabOptions {
        hosts: 3,
        meshd_args: vec!["--dns-upstream".into(), "127.0.0.1:5300".into()],
        client: false,
        dir: None,
    })
    .unwrap();
    let mut upstreams = Upstreams(Vec::new());
    for i in 1..=3 {
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", lab.netns_path(i).display()))
            .args(["python3", "-c", UPSTREAM])
            .spawn()
            .unwrap();
        upstreams.0.push(child);
    }
    form_cluster(&lab, 3);
    let image = test_image();
    for i in 1..=3 {
        ok(&lab, i, &["image", "load", "-i", &image]);
    }
    ok(
        &lab,
        1,
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "appnet",
        ],
    );
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "many",
            "--replicas",
            "36",
            "--network",
            "appnet",
            "meshd-test:latest",
        ],
    );
    let many = wait_running(&lab, "many", 36);
    let ns = task_ns(&lab, &many[0]);

    // Other names go to the host's upstream.
    let (st, ips) = dig(&ns, "example.test", "A");
    assert_eq!(
        (st.as_str(), ips),
        ("NOERROR", BTreeSet::from(["203.0.113.7".to_string()]))
    );
    let (st, _) = dig(&ns, "nothing.test", "A");
    assert_eq!(st, "NXDOMAIN");

    // 36 addresses do not fit 512 bytes: truncated over UDP, complete over TCP.
    lab.wait_until("36 addresses in tasks.many", CONVERGE, || {
        (dig(&ns, "tasks.many", "A").1 == ips_of(&many)).then_some(())
    })
    .unwrap();
    let out = in_netns(
        &ns,
        &[
            "dig",
            "@127.0.0.11",
            "+noedns",
            "+tries=1",
            "+time=3",
            "tasks.many",
            "A",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Truncated, retrying in TCP mode"), "{text}");
    assert_eq!(text.matches("IN\tA\t").count(), 36, "{text}");

    // An unreachable upstream: SERVFAIL, quickly.
    for mut c in std::mem::take(&mut upstreams.0) {
        let _ = c.kill();
        let _ = c.wait();
    }
    let (st, _) = dig(&ns, "other.test", "A");
    assert_eq!(st, "SERVFAIL");

    // A node cut off long enough to be marked down, and back: the names its containers
    // see are right again by themselves (a standalone container: nothing replaces it).
    let id = ok(
        &lab,
        3,
        &[
            "run",
            "-d",
            "--network",
            "appnet",
            "--name",
            "probe",
            "meshd-test:latest",
        ],
    );
    let ns3 = format!(
        "/var/run/netns/{}t{}",
        lab.sandbox_prefix(3),
        &id.trim()[..12]
    );
    lab.wait_until("the probe resolves", CONVERGE, || {
        (dig(&ns3, "tasks.many", "A").1 == ips_of(&running(&lab, "many"))).then_some(())
    })
    .unwrap();
    lab.partition(&[3], &[1, 2]).unwrap();
    lab.wait_until("host3 marked down", CONVERGE, || {
        nodes(&lab, 1)?
            .into_iter()
            .any(|n| {
                n.description.hostname == "host3" && n.status.state == mesh_api::NodeState::Down
            })
            .then_some(())
    })
    .unwrap();
    ok(&lab, 1, &["service", "scale", "many=4"]);
    wait_running(&lab, "many", 4);
    lab.heal().unwrap();
    lab.wait_until("host3's container sees the current tasks", CONVERGE, || {
        let want = ips_of(&running(&lab, "many"));
        (want.len() == 4 && dig(&ns3, "tasks.many", "A").1 == want).then_some(())
    })
    .unwrap();
}
