//! Interoperation with a standard WireGuard implementation: wireguard-go, configured with `wg`,
//! as an external peer of an overlay network. Skipped when either is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn wireguard_go_peer_talks_to_the_overlay() {
    if sh(&["sh", "-c", "command -v wireguard-go && command -v wg"])
        .stdout
        .is_empty()
    {
        eprintln!("wireguard-go or wg is not installed; skipping");
        return;
    }
    let mut lab = Lab::new(2);
    let e0 = lab.endpoint_ns("a0");
    let mut net = Net::new("interop", "10.69.0.0/24", 1);
    net.local[0] = vec![endpoint("ep0", ip("10.69.0.2"), &e0)];
    let theirs = mesh_overlay::KeyPair::generate();
    let mut plan = host_plan(&[&net], 0);
    plan.networks[0].peers.push(mesh_overlay::PeerPlan {
        id: "wggo".into(),
        public_key: theirs.public(),
        endpoint: Some("172.31.250.2:51821".parse().unwrap()),
        allowed_ips: vec![ip("10.69.0.50")],
        keepalive_secs: Some(25),
    });
    let o0 = lab.start(0);
    o0.apply(&plan).unwrap();

    // wireguard-go on host 1, 10.69.0.50 (an interface name of its own: wireguard-go's control
    // sockets live in one directory for the whole machine).
    let wgx = format!("w{}", lab.tag.replace('x', ""));
    let wgx = wgx.as_str();
    let h1 = format!("--net={}", netns_path(&lab.hosts[1]).display());
    let _wg = Kill(
        Command::new("nsenter")
            .args([&h1, "wireguard-go", "-f", wgx])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wireguard-go"),
    );
    assert!(
        wait_for(Duration::from_secs(10), || sh(&[
            "ip",
            "-n",
            &lab.hosts[1],
            "link",
            "show",
            wgx
        ])
        .status
        .success()),
        "wireguard-go made no interface"
    );
    let key_file = std::env::temp_dir().join(format!("{}-wg.key", lab.tag));
    std::fs::write(&key_file, theirs.private_b64()).unwrap();
    let key_path = key_file.display().to_string();
    let ours = net.keys[0].public_b64();
    let configured = sh(&[
        "nsenter",
        &h1,
        "wg",
        "set",
        wgx,
        "listen-port",
        "51821",
        "private-key",
        &key_path,
        "peer",
        &ours,
        "endpoint",
        "172.31.250.1:51820",
        "allowed-ips",
        "10.69.0.0/24",
    ]);
    let _ = std::fs::remove_file(&key_file);
    assert!(configured.status.success(), "{configured:?}");
    ok(&[
        "ip",
        "-n",
        &lab.hosts[1],
        "addr",
        "add",
        "10.69.0.50/24",
        "dev",
        wgx,
    ]);
    ok(&["ip", "-n", &lab.hosts[1], "link", "set", wgx, "up"]);

    // Both ways: ping, then TCP with a known payload.
    assert!(ping_until(&e0, ip("10.69.0.50"), Duration::from_secs(20)));
    assert!(ping_until(
        &lab.hosts[1],
        ip("10.69.0.2"),
        Duration::from_secs(20)
    ));
    let data = pattern(2 << 20, 11);
    tcp_transfer(
        &e0,
        &lab.hosts[1],
        ip("10.69.0.50"),
        &data,
        Duration::from_secs(30),
    );
    tcp_transfer(
        &lab.hosts[1],
        &e0,
        ip("10.69.0.2"),
        &data,
        Duration::from_secs(30),
    );
    let wg = ok(&["nsenter", &h1, "wg", "show", wgx, "transfer"]);
    assert!(wg.contains(&ours), "{wg}");
    let st = o0.status();
    let p = st.networks[0]
        .peers
        .iter()
        .find(|p| p.id == "wggo")
        .unwrap();
    assert!(p.last_handshake.is_some() && p.rx_bytes > 2 << 20, "{p:?}");
    drop(o0);
}
