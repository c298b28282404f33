//! A stock WireGuard peer (Debian's wireguard-go + wg) joins a meshd overlay through one
//! node and talks to endpoints on that node and on another one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

use mesh_integration_tests::*;
use mesh_testkit::{Lab, LabOptions};

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn sh_in(ns: &str, script: &str) -> std::process::Output {
    in_netns(ns, &["sh", "-c", script])
}

#[test]
fn stock_wireguard_peer_reaches_overlay_endpoints() {
    if !can_run() {
        return;
    }
    assert!(
        have("wireguard-go") && have("wg"),
        "wireguard-go and wg are needed (apt-get install wireguard-go wireguard-tools; scripts/deps.sh does it)"
    );
    let lab = Lab::start(LabOptions {
        hosts: 2,
        meshd_args: vec![],
        client: true,
        dir: None,
    })
    .unwrap();
    let guard = NetnsGuard::default();
    form_cluster(&lab, 2);
    for i in 1..=2 {
        guard.add_prefix(&sandbox_prefix(&lab, i));
    }
    ok(
        &lab,
        1,
        &[
            "network",
            "create",
            "--subnet",
            "10.70.0.0/24",
            "--attachable",
            "appnet",
        ],
    );
    let ep1 = guard.add(&format!("{}-ep", lab.netns(1)));
    let ep2 = guard.add(&format!("{}-ep", lab.netns(2)));
    let ip1 = ok(&lab, 1, &["network", "connect", "appnet", "--netns", &ep1]);
    let ip2 = ok(&lab, 2, &["network", "connect", "appnet", "--netns", &ep2]);
    let ip1 = ip1.trim().split('/').next().unwrap().to_string();
    let ip2 = ip2.trim().split('/').next().unwrap().to_string();

    // The stock peer's keys, made by `wg`.
    let private = Command::new("wg").arg("genkey").output().unwrap();
    let private = String::from_utf8(private.stdout)
        .unwrap()
        .trim()
        .to_string();
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    pubkey
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let public = String::from_utf8(pubkey.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();

    let client = format!("/var/run/netns/{}", lab.client_netns().unwrap());
    let cfg = ok(
        &lab,
        1,
        &[
            "network",
            "connect",
            "appnet",
            "--wg-public-key",
            &public,
            "--wg-endpoint",
            "192.0.2.200:51999",
        ],
    );
    // First line: its address; then a wg config naming host1's key and endpoint.
    let addr = cfg.lines().next().unwrap().trim().to_string();
    let node_key = cfg
        .lines()
        .find_map(|l| l.strip_prefix("PublicKey = "))
        .expect("config names the node's key")
        .trim()
        .to_string();
    assert!(cfg.contains("Endpoint = 192.0.2.1:51820"), "{cfg}");

    // wireguard-go in the client namespace, in the foreground so we hold its PID.
    let wg = Command::new("nsenter")
        .arg(format!("--net={client}"))
        .args(["wireguard-go", "-f", "wgx"])
        .env("WG_PROCESS_FOREGROUND", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _wg = Child(wg);
    lab.wait_until("wireguard-go's interface", CONVERGE, || {
        sh_in(&client, "ip link show wgx")
            .status
            .success()
            .then_some(())
    })
    .unwrap();
    let key_file = std::env::temp_dir().join(format!("meshd-interop-{}.key", std::process::id()));
    std::fs::write(&key_file, &private).unwrap();
    let setup = format!(
        "wg set wgx private-key {key} listen-port 51999 peer {node_key} endpoint 192.0.2.1:51820 allowed-ips 10.70.0.0/24 persistent-keepalive 25 && ip addr add {addr} dev wgx && ip link set wgx up",
        key = key_file.display()
    );
    let out = sh_in(&client, &setup);
    let _ = std::fs::remove_file(&key_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The stock peer reaches the endpoint on host1 and, through host1, the one on host2.
    for ip in [&ip1, &ip2] {
        lab.wait_until(&format!("stock peer pings {ip}"), CONVERGE, || {
            pings(&client, ip).then_some(())
        })
        .unwrap();
    }
    // And the endpoints reach it.
    let peer_ip = addr.split('/').next().unwrap();
    assert!(pings(&ep2, peer_ip));
    // `wg show` on the stock side saw a handshake with host1.
    let show = sh_in(&client, "wg show wgx latest-handshakes");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains(&node_key), "{text}");
}
