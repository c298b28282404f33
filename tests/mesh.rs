//! The routing mesh on the lab, on each data path: published ports answered on every node
//! round-robin by every task (also by nodes that run none), a killed task and a dead node's
//! tasks out of rotation,
//! service VIPs from inside tasks, UDP by flow, host-mode ports, port conflicts, the
//! client's address at the backend, and `wrk` across a rolling update and a drain with no
//! failed request. Real containers, real clients (curl, wrk, socat).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use mesh_api::{Task, TaskState};
use mesh_integration_tests::*;
use mesh_testkit::{Lab, LabOptions};

fn mesh_lab(dataplane: &str) -> Lab {
    Lab::start(LabOptions {
        hosts: 3,
        meshd_args: vec!["--dataplane".into(), dataplane.into()],
        client: true,
        dir: None,
    })
    .expect("lab starts")
}

fn running(lab: &Lab, service: &str) -> Vec<Task> {
    let out = ok(lab, 1, &["service", "ps", "--format", "json", service]);
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Task>(l).unwrap())
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

/// The hostname a task's container has (its answer to `GET /`).
fn task_hostnames(ts: &[Task]) -> BTreeSet<String> {
    ts.iter().map(|t| t.id[..12].to_string()).collect()
}

fn load_image(lab: &Lab) {
    let image = test_image();
    for i in 1..=lab.hosts() {
        ok(lab, i, &["image", "load", "-i", &image]);
    }
}

/// `curl http://URL` from the client namespace: the body, or None on any failure.
fn curl(lab: &Lab, url: &str) -> Option<String> {
    let out = lab.exec_client(&["curl", "-s", "-f", "-m", "5", url]);
    (out.status == 0).then(|| out.stdout.trim().to_string())
}

fn host_of(lab: &Lab, t: &Task) -> usize {
    let host = nodes(lab, 1)
        .unwrap()
        .into_iter()
        .find(|n| n.id == t.node_id)
        .unwrap()
        .description
        .hostname;
    host.trim_start_matches("host").parse().unwrap()
}

/// Waits until every node's published port answers with every task's name.
fn wait_served(lab: &Lab, port: u16, names: &BTreeSet<String>) {
    for i in 1..=lab.hosts() {
        let url = format!("http://{}:{port}/", lab.ip(i));
        lab.wait_until(&format!("{url} answered by every task"), CONVERGE, || {
            let got: BTreeSet<String> = (0..names.len() * 2)
                .map(|_| curl(lab, &url))
                .collect::<Option<_>>()?;
            (got == *names).then_some(())
        })
        .unwrap();
    }
}

fn routing_mesh(dataplane: &str) {
    if !can_run() {
        return;
    }
    let lab = mesh_lab(dataplane);
    form_cluster(&lab, 3);
    load_image(&lab);
    let inf = info(&lab, 1).unwrap();
    assert_eq!(
        inf.routing_mesh.as_ref().map(|m| m.dataplane.as_str()),
        Some(dataplane),
        "swarm info names the data path"
    );
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
            "web",
            "--replicas",
            "3",
            "--network",
            "appnet",
            "-p",
            "8080:80",
            "meshd-test:latest",
        ],
    );
    let ts = wait_running(&lab, "web", 3);
    let names = task_hostnames(&ts);
    assert_eq!(
        ts.iter().map(|t| &t.node_id).collect::<BTreeSet<_>>().len(),
        3
    );

    // A port another service publishes is refused, and nothing is created.
    let err = fails(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "web2",
            "-p",
            "8080:80",
            "meshd-test:latest",
        ],
    );
    assert!(
        err.contains("8080/tcp is already published by service web"),
        "{err}"
    );
    assert!(!ok(&lab, 1, &["service", "ls"]).contains("web2"));

    // Every node answers, every task in turn (round-robin per node).
    wait_served(&lab, 8080, &names);
    for i in 1..=3 {
        let url = format!("http://{}:8080/", lab.ip(i));
        let answers: Vec<String> = (0..6).map(|_| curl(&lab, &url).unwrap()).collect();
        for w in answers.windows(3) {
            let set: BTreeSet<&String> = w.iter().collect();
            assert_eq!(set.len(), 3, "host{i}: not round-robin: {answers:?}");
        }
    }

    // A client on a node of the cluster reaches another node's published port, also when
    // the task chosen runs on the client's own node.
    let from_host2: BTreeSet<String> = (0..6)
        .map(|_| {
            let out = lab.exec(
                2,
                &[
                    "curl",
                    "-s",
                    "-f",
                    "-m",
                    "5",
                    &format!("http://{}:8080/", lab.ip(1)),
                ],
            );
            assert_eq!(
                out.status, 0,
                "curl from host2 to host1:8080: {}",
                out.stderr
            );
            out.stdout.trim().to_string()
        })
        .collect();
    assert_eq!(from_host2, names);

    // A node's published port from the node itself: by loopback and by its own address
    // (the eBPF path leaves these to meshd's listener).
    for url in [
        "http://127.0.0.1:8080/".to_string(),
        format!("http://{}:8080/", lab.ip(2)),
    ] {
        let got: BTreeSet<String> = (0..6)
            .map(|_| {
                let out = lab.exec(2, &["curl", "-s", "-f", "-m", "5", &url]);
                assert_eq!(out.status, 0, "curl {url} on host2: {}", out.stderr);
                out.stdout.trim().to_string()
            })
            .collect();
        assert_eq!(got, names, "{url} from host2 itself");
    }
    // From a task (eBPF path: the ingress sandbox reaches its host by the mesh link; on the
    // userspace path the sandbox has no way out of the overlay).
    if dataplane == "ebpf" {
        let ts = wait_running(&lab, "web", 3);
        let inside = &ts[0];
        let ih = host_of(&lab, inside);
        let runc_root = lab.data_dir(ih).join("runtime/runc");
        let url = format!("http://{}:8080/", lab.ip(ih));
        let got: BTreeSet<String> = (0..6)
            .map(|_| {
                let out = lab.exec(
                    ih,
                    &[
                        "runc",
                        "--root",
                        runc_root.to_str().unwrap(),
                        "exec",
                        &inside.id,
                        "wget",
                        "-q",
                        "-O-",
                        &url,
                    ],
                );
                assert_eq!(
                    out.status, 0,
                    "wget {url} in a task of host{ih}: {}",
                    out.stderr
                );
                out.stdout.trim().to_string()
            })
            .collect();
        assert_eq!(got, names, "{url} from a task on host{ih}");
    }

    // The VIP from inside a task on appnet: web:80 → each task in turn.
    let out = ok(
        &lab,
        1,
        &[
            "run",
            "--rm",
            "--network",
            "appnet",
            "meshd-test:latest",
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6; do wget -q -O- http://web/; done",
        ],
    );
    let via_vip: BTreeSet<String> = out.lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(via_vip, names, "the VIP balances over every task");

    // The backend sees the client's address: natively on the eBPF path; on the userspace
    // path through a PROXY protocol v2 header, asked for per port.
    if dataplane == "ebpf" {
        let got = curl(&lab, &format!("http://{}:8080/cgi-bin/ip", lab.ip(2))).unwrap();
        // httpd listens dual-stack: an IPv4 client shows as [::ffff:a.b.c.d].
        let got = got.trim_start_matches("[::ffff:").trim_end_matches(']');
        assert_eq!(got, lab.client_ip().to_string());
    } else {
        ok(
            &lab,
            1,
            &[
                "service",
                "create",
                "--name",
                "pp",
                "-p",
                "published=8090,target=80,proxy-protocol=v2",
                "meshd-test:latest",
                "sh",
                "-c",
                "nc -ll -p 80 -e sh -c 'dd bs=28 count=1 2>/dev/null | od -An -tu1'",
            ],
        );
        wait_running(&lab, "pp", 1);
        let header = lab
            .wait_until("the PROXY header reaches the task", CONVERGE, || {
                let out = lab.exec_client(&[
                    "sh",
                    "-c",
                    &format!("echo hi | nc -w 2 -q 2 {} 8090", lab.ip(3)),
                ]);
                let nums: Vec<u8> = out
                    .stdout
                    .split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect();
                (nums.len() >= 28).then_some(nums)
            })
            .unwrap();
        assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n", "PROXY v2 signature");
        assert_eq!(header[12], 0x21);
        assert_eq!(header[13], 0x11, "TCP over IPv4");
        assert_eq!(&header[16..20], &lab.client_ip().octets(), "client address");
        assert_eq!(
            &header[20..24],
            &lab.ip(3).octets(),
            "the address it connected to"
        );
    }

    // Host mode: published on the task's node only.
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "edge",
            "-p",
            "mode=host,published=8081,target=80",
            "meshd-test:latest",
        ],
    );
    let edge = wait_running(&lab, "edge", 1);
    let h = host_of(&lab, &edge[0]);
    let url = format!("http://{}:8081/", lab.ip(h));
    let got = lab
        .wait_until("the host-mode port answers", CONVERGE, || curl(&lab, &url))
        .unwrap();
    assert_eq!(got, edge[0].id[..12]);
    for i in (1..=3).filter(|i| *i != h) {
        assert_eq!(curl(&lab, &format!("http://{}:8081/", lab.ip(i))), None);
    }

    // UDP, by flow: a real UDP server in each task (the host's socat, bind-mounted), on port
    // 53 of the task: the task's own resolver (127.0.0.11:53) leaves it free.
    ok(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "echo",
            "--replicas",
            "2",
            "-p",
            "5353:53/udp",
            "--mount",
            "type=bind,source=/usr,target=/host/usr,readonly",
            "meshd-test:latest",
            "/host/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "--library-path",
            "/host/usr/lib/x86_64-linux-gnu",
            "/host/usr/bin/socat",
            "UDP-RECVFROM:53,fork",
            "SYSTEM:hostname",
        ],
    );
    let echo = wait_running(&lab, "echo", 2);
    let echo_names = task_hostnames(&echo);
    let udp = |i: usize| {
        let out = lab.exec_client(&[
            "sh",
            "-c",
            &format!("echo q | socat -T 2 - UDP:{}:5353", lab.ip(i)),
        ]);
        (out.status == 0 && !out.stdout.trim().is_empty()).then(|| out.stdout.trim().to_string())
    };
    for i in 1..=3 {
        let got = lab
            .wait_until(&format!("UDP on host{i} from both tasks"), CONVERGE, || {
                let got: BTreeSet<String> = (0..4).map(|_| udp(i)).collect::<Option<_>>()?;
                (got == echo_names).then_some(got)
            })
            .unwrap();
        assert_eq!(got, echo_names);
    }

    // A node with no task of the service still serves it.
    ok(&lab, 1, &["service", "scale", "web=1"]);
    let one = wait_running(&lab, "web", 1);
    let only: BTreeSet<String> = task_hostnames(&one);
    wait_served(&lab, 8080, &only);

    // A killed task gets no new connection: after a second, every request succeeds.
    ok(&lab, 1, &["service", "scale", "web=3"]);
    let ts = wait_running(&lab, "web", 3);
    wait_served(&lab, 8080, &task_hostnames(&ts));
    let victim = &ts[0];
    let vh = host_of(&lab, victim);
    let runc_root = lab.data_dir(vh).join("runtime/runc");
    let out = lab.exec(
        vh,
        &[
            "runc",
            "--root",
            runc_root.to_str().unwrap(),
            "kill",
            &victim.id,
            "KILL",
        ],
    );
    assert_eq!(out.status, 0, "runc kill: {}", out.stderr);
    std::thread::sleep(Duration::from_secs(1));
    for i in 1..=3 {
        for _ in 0..6 {
            let url = format!("http://{}:8080/", lab.ip(i));
            let got = curl(&lab, &url);
            assert!(
                got.is_some(),
                "a request to host{i} failed after the task was killed"
            );
            assert_ne!(got.unwrap(), victim.id[..12], "the killed task answered");
        }
    }

    // A dead node's tasks get no new connection: a second after host3's meshd is killed
    // (its mesh, overlay and probes gone with it), every request to the others succeeds.
    let ts = wait_running(&lab, "web", 3);
    wait_served(&lab, 8080, &task_hostnames(&ts));
    assert!(
        ts.iter().any(|t| host_of(&lab, t) == 3),
        "a task of web runs on host3 before it dies"
    );
    lab.kill(3);
    std::thread::sleep(Duration::from_secs(1));
    for i in 1..=2 {
        let url = format!("http://{}:8080/", lab.ip(i));
        for _ in 0..9 {
            // A connection sent to a dead node would be answered only after a SYN
            // retransmission (1 s): the connect timeout catches it.
            let out = lab.exec_client(&[
                "curl",
                "-s",
                "-f",
                "--connect-timeout",
                "0.9",
                "-m",
                "5",
                &url,
            ]);
            assert_eq!(
                out.status, 0,
                "a request to host{i} failed a second after host3 died: {}",
                out.stderr
            );
        }
    }
}

#[test]
fn routing_mesh_userspace() {
    routing_mesh("userspace");
}

/// `wrk` from the client against one node while the service is updated task by task and a
/// node is drained: not one failed request.
fn no_failed_request_across_update_and_drain(dataplane: &str) {
    if !can_run() {
        return;
    }
    let lab = mesh_lab(dataplane);
    form_cluster(&lab, 3);
    load_image(&lab);
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
            "-p",
            "8080:80",
            "--update-parallelism",
            "1",
            "--update-delay",
            "1s",
            "meshd-test:latest",
        ],
    );
    let ts = wait_running(&lab, "web", 3);
    wait_served(&lab, 8080, &task_hostnames(&ts));

    let url = format!("http://{}:8080/", lab.ip(1));
    let wrk = std::thread::scope(|s| {
        let load = s.spawn(|| lab.exec_client(&["wrk", "-t1", "-c8", "-d20s", "--latency", &url]));
        std::thread::sleep(Duration::from_secs(2));
        ok(
            &lab,
            1,
            &["service", "update", "--env-add", "VERSION=2", "web"],
        );
        lab.wait_until("the update completes", CONVERGE, || {
            let out = ok(&lab, 1, &["service", "inspect", "web"]);
            out.contains("\"completed\"").then_some(())
        })
        .unwrap();
        ok(
            &lab,
            1,
            &["node", "update", "--availability", "drain", "host2"],
        );
        lab.wait_until("host2 drained", CONVERGE, || {
            let ts = running(&lab, "web");
            (ts.len() == 3 && ts.iter().all(|t| host_of(&lab, t) != 2)).then_some(())
        })
        .unwrap();
        load.join().unwrap()
    });
    assert_eq!(wrk.status, 0, "wrk: {}", wrk.stderr);
    let out = wrk.stdout;
    assert!(out.contains("requests in"), "{out}");
    assert!(!out.contains("Socket errors"), "failed connections: {out}");
    assert!(!out.contains("Non-2xx"), "failed requests: {out}");
}

#[test]
fn no_failed_request_across_update_and_drain_userspace() {
    no_failed_request_across_update_and_drain("userspace");
}

#[test]
fn routing_mesh_ebpf() {
    routing_mesh("ebpf");
}

#[test]
fn no_failed_request_across_update_and_drain_ebpf() {
    no_failed_request_across_update_and_drain("ebpf");
}
