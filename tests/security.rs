//! Certificates on the lab: renewal before expiry, the remote API's mutual TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_integration_tests::*;
use mesh_testkit::{Lab, LabOptions};

#[test]
fn certificates_are_renewed_before_they_expire() {
    if !can_run() {
        return;
    }
    let lab = lab(2);
    // Short-lived certificates: renewed every few seconds, the cluster must not notice.
    ok(
        &lab,
        1,
        &[
            "init",
            "--advertise-addr",
            "192.0.2.1",
            "--cert-expiry",
            "12s",
        ],
    );
    let token = ok(&lab, 1, &["join-token", "-q", "worker"]);
    ok(
        &lab,
        2,
        &["join", "--token", token.trim(), "192.0.2.1:2377"],
    );
    wait_ready(&lab, 1, 2);
    let first: Vec<u64> = (1..=2)
        .map(|i| info(&lab, i).unwrap().cert_expiry)
        .collect();
    lab.wait_until("both certificates renewed", CONVERGE, || {
        let now: Vec<u64> = (1..=2)
            .map(|i| info(&lab, i).map(|x| x.cert_expiry))
            .collect::<Option<_>>()?;
        (now[0] > first[0] && now[1] > first[1]).then_some(())
    })
    .unwrap();
    // Past the first certificates' expiry, everything still works.
    std::thread::sleep(std::time::Duration::from_secs(14));
    wait_ready(&lab, 1, 2);
    ok(
        &lab,
        1,
        &["node", "update", "--label-add", "renewed=yes", "host2"],
    );
}

#[test]
fn remote_api_needs_a_manager_certificate_of_this_cluster() {
    if !can_run() {
        return;
    }
    let lab = Lab::start(LabOptions {
        hosts: 2,
        meshd_args: vec!["--remote-api-addr".into(), "0.0.0.0:2376".into()],
        client: false,
        dir: None,
    })
    .unwrap();
    form_cluster(&lab, 2);
    let swarm = mesh_testkit::swarm_bin().unwrap();
    let swarm = swarm.to_str().unwrap();
    let certs = |i: usize| lab.data_dir(i).join("certs");
    let remote = |from: usize, certs_of: usize| {
        let dir = certs(certs_of);
        lab.exec(
            from,
            &[
                swarm,
                "-H",
                "tcp://192.0.2.1:2376",
                "--tlscacert",
                dir.join("ca.crt").to_str().unwrap(),
                "--tlscert",
                dir.join("node.crt").to_str().unwrap(),
                "--tlskey",
                dir.join("node.key").to_str().unwrap(),
                "node",
                "ls",
            ],
        )
    };
    // A manager certificate works from another host.
    let out = remote(2, 1);
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("host2"), "{}", out.stdout);
    // A worker certificate of the same cluster is refused.
    let out = remote(2, 2);
    assert_ne!(out.status, 0, "{}", out.stdout);
    // A certificate of another cluster is refused in the handshake.
    let other = lab_with_own_cluster();
    let dir = other.data_dir(1).join("certs");
    let out = lab.exec(
        2,
        &[
            swarm,
            "-H",
            "tcp://192.0.2.1:2376",
            "--tlscacert",
            certs(1).join("ca.crt").to_str().unwrap(),
            "--tlscert",
            dir.join("node.crt").to_str().unwrap(),
            "--tlskey",
            dir.join("node.key").to_str().unwrap(),
            "node",
            "ls",
        ],
    );
    assert_ne!(out.status, 0, "{}", out.stdout);
}

fn lab_with_own_cluster() -> Lab {
    let lab = lab(1);
    ok(&lab, 1, &["init", "--advertise-addr", "192.0.2.1"]);
    lab
}
