//! The `swarm` binary against a fake meshd on a temporary unix socket: each verb sends
//! the right request to the right route, prints docker's text, and fails the way docker
//! does.

mod common;

use common::*;
use mesh_api::api::{ErrorKind, InitRequest, JoinRequest, LeaveRequest};
use mesh_api::node::NodeUpdate;
use mesh_api::{Availability, NodeRole};

#[test]
fn init_posts_the_settings_and_prints_the_join_command() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&[
        "init",
        "--advertise-addr",
        "192.0.2.1",
        "--listen-addr",
        "0.0.0.0:2377",
        "--heartbeat-period",
        "1s",
        "--node-down-after",
        "1h30m",
        "--cert-expiry",
        "90d",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Swarm initialized: current node (n1aaaaaaaaaaaaaaaaaaaaaaa) is now a manager.\n\
         \n\
         To add a worker to this swarm, run the following command:\n\
         \n\
         \x20   swarm join --token SWMTKN-1-digest-workersecret 192.0.2.1:2377\n\
         \n\
         To add a manager to this swarm, run 'swarm join-token manager' and follow the instructions.\n"
    );
    let reqs = d.requests();
    assert_eq!(d.lines(), ["POST /v1/swarm/init"]);
    let body: InitRequest = reqs[0].json();
    assert_eq!(
        body,
        InitRequest {
            advertise_addr: Some("192.0.2.1".into()),
            listen_addr: Some("0.0.0.0:2377".into()),
            force_new_cluster: false,
            heartbeat_period_ms: Some(1_000),
            node_down_after_ms: Some(5_400_000),
            cert_expiry_ms: Some(90 * 86_400_000),
        }
    );
}

#[test]
fn init_with_a_bad_duration_names_the_flag_and_sends_nothing() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["init", "--heartbeat-period", "5x"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("--heartbeat-period"), "{err}");
    assert!(err.contains("unknown unit"), "{err}");
    let o = d.run(&[
        "init",
        "--heartbeat-period",
        "1s",
        "--node-down-after",
        "1s",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("invalid --node-down-after"), "{err}");
    assert!(d.requests().is_empty());
}

#[test]
fn join_posts_the_token_and_the_manager_address() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&[
        "join",
        "--token",
        "SWMTKN-1-digest-secret",
        "--advertise-addr",
        "192.0.2.9",
        "192.0.2.1:2377",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "This node joined a swarm as a manager.\n");
    let reqs = d.requests();
    assert_eq!(d.lines(), ["POST /v1/swarm/join"]);
    let body: JoinRequest = reqs[0].json();
    assert_eq!(
        body,
        JoinRequest {
            token: "SWMTKN-1-digest-secret".into(),
            remote_addr: "192.0.2.1:2377".into(),
            advertise_addr: Some("192.0.2.9".into()),
            listen_addr: None,
        }
    );
}

#[test]
fn join_token_prints_the_command_or_only_the_token() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["join-token", "worker"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "To add a worker to this swarm, run the following command:\n\n    swarm join --token SWMTKN-1-digest-workersecret 192.0.2.1:2377\n"
    );
    let o = d.run(&["join-token", "-q", "manager"]);
    assert_eq!(stdout(&o), "SWMTKN-1-digest-managersecret\n");
    assert_eq!(
        d.lines(),
        [
            "GET /v1/swarm/join-token/worker",
            "GET /v1/swarm/join-token/manager"
        ]
    );
}

#[test]
fn join_token_rotate_posts_and_says_so() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["join-token", "--rotate", "worker"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Successfully rotated worker join token.\n\nTo add a worker to this swarm, run the following command:\n\n    swarm join --token SWMTKN-1-digest-workerrotated 192.0.2.1:2377\n"
    );
    let o = d.run(&["join-token", "--rotate", "-q", "manager"]);
    assert_eq!(stdout(&o), "SWMTKN-1-digest-managerrotated\n");
    assert_eq!(
        d.lines(),
        [
            "POST /v1/swarm/join-token/worker/rotate",
            "POST /v1/swarm/join-token/manager/rotate"
        ]
    );
}

#[test]
fn join_token_refuses_an_unknown_role_locally() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["join-token", "boss"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("unknown role \"boss\""), "{err}");
    assert!(err.contains("use `worker` or `manager`"), "{err}");
    assert!(d.requests().is_empty());
}

#[test]
fn leave_sends_force() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["leave", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Node left the swarm.\n");
    let reqs = d.requests();
    assert_eq!(d.lines(), ["POST /v1/swarm/leave"]);
    assert_eq!(reqs[0].json::<LeaveRequest>(), LeaveRequest { force: true });
}

#[test]
fn info_prints_the_swarm_block_or_json() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["info"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for line in [
        "Swarm: active\n",
        " NodeID: n1aaaaaaaaaaaaaaaaaaaaaaa\n",
        " Is Manager: true\n",
        " ClusterID: c1eeeeeeeeeeeeeeeeeeeeeee\n",
        " Managers: 2\n",
        " Nodes: 4\n",
        "  Term: 2\n",
        "  Heartbeat Period: 500ms\n",
        "  Node Down After: 2s\n",
        " Manager Addresses:\n  192.0.2.1:2377\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let o = d.run(&["info", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: mesh_api::api::Info = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(got, info());
    assert_eq!(stdout(&o).lines().count(), 1);
}

#[test]
fn node_ls_prints_docker_columns_sorted_with_the_self_marker() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["node", "ls"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "\
ID                            HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION
n1aaaaaaaaaaaaaaaaaaaaaaa *   manager1   Ready     Active         Leader           0.1.0
n2bbbbbbbbbbbbbbbbbbbbbbb     manager2   Ready     Active         Unreachable      0.1.0
w9ccccccccccccccccccccccc     worker9    Ready     Active                          0.1.0
w10dddddddddddddddddddddd     worker10   Down      Drain                           0.1.0
"
    );
    let mut lines = d.lines();
    lines.sort();
    assert_eq!(lines, ["GET /v1/info", "GET /v1/nodes"]);
}

#[test]
fn node_ls_quiet_filters_and_json() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["node", "ls", "-q", "--filter", "role=worker"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{WORKER9_ID}\n{WORKER10_ID}\n"));

    let o = d.run(&["node", "ls", "-q", "-f", "name=manager", "-f", "id=n2"]);
    assert_eq!(stdout(&o), format!("{MANAGER2_ID}\n"));

    let o = d.run(&["node", "ls", "-f", "node.label=zone=b", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let node: mesh_api::Node = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(node.id, WORKER10_ID);
    assert_eq!(node.spec.availability, Availability::Drain);

    let o = d.run(&["node", "ls", "--filter", "colour=red"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--filter"), "{}", stderr(&o));
}

#[test]
fn node_inspect_self_resolves_through_info_and_prints_a_json_array() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["node", "inspect", "self"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        d.lines(),
        ["GET /v1/info", &format!("GET /v1/nodes/{SELF_ID}")]
    );
    let out = stdout(&o);
    assert!(
        out.starts_with("[\n    {\n        \"ID\": \"n1aaaa"),
        "{out}"
    );
    let got: Vec<mesh_api::Node> = serde_json::from_str(&out).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].description.hostname, "manager1");

    let o = d.run(&["node", "inspect", "--pretty", "worker10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Hostname:               worker10\n"), "{out}");
    assert!(out.contains("Labels:\n - zone=b\n"), "{out}");
    assert!(out.contains(" Availability:          Drain\n"), "{out}");
}

#[test]
fn node_inspect_prints_what_it_found_and_fails_for_the_rest() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["node", "inspect", "--format", "json", "manager2", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: no such node: ghost\n"
    );
    let got: Vec<mesh_api::Node> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, MANAGER2_ID);
}

#[test]
fn promote_and_demote_post_the_role_and_report_each_node() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["node", "promote", "worker9", "ghost", "manager1"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "Node worker9 promoted to a manager in the swarm.\nNode manager1 is already a manager.\n"
    );
    assert_eq!(
        stderr(&o),
        "Error response from daemon: no such node: ghost\n"
    );
    let reqs = d.requests();
    assert_eq!(
        d.lines(),
        [
            "GET /v1/nodes/worker9",
            "POST /v1/nodes/worker9/update",
            "GET /v1/nodes/ghost",
            "GET /v1/nodes/manager1",
        ]
    );
    assert_eq!(
        reqs[1].json::<NodeUpdate>(),
        NodeUpdate {
            role: Some(NodeRole::Manager),
            ..Default::default()
        }
    );

    let d = FakeDaemon::unix(api);
    let o = d.run(&["node", "demote", "manager2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Manager manager2 demoted in the swarm.\n");
    let reqs = d.requests();
    assert_eq!(reqs[1].line(), "POST /v1/nodes/manager2/update");
    assert_eq!(
        reqs[1].json::<NodeUpdate>(),
        NodeUpdate {
            role: Some(NodeRole::Worker),
            ..Default::default()
        }
    );
}

#[test]
fn node_update_sends_every_change() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&[
        "node",
        "update",
        "--availability",
        "drain",
        "--label-add",
        "zone=a",
        "--label-add",
        "ssd",
        "--label-rm",
        "rack",
        "--role",
        "manager",
        "worker9",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "worker9\n");
    let reqs = d.requests();
    assert_eq!(d.lines(), ["POST /v1/nodes/worker9/update"]);
    assert_eq!(
        reqs[0].json::<NodeUpdate>(),
        NodeUpdate {
            availability: Some(Availability::Drain),
            role: Some(NodeRole::Manager),
            label_add: vec!["zone=a".into(), "ssd".into()],
            label_rm: vec!["rack".into()],
        }
    );
}

#[test]
fn node_update_validates_flags_before_sending() {
    let d = FakeDaemon::unix(api);
    for (args, flag) in [
        (vec!["--availability", "drained"], "--availability"),
        (vec!["--label-add", "=x"], "--label-add"),
        (vec!["--label-rm", "bad key"], "--label-rm"),
        (vec!["--role", "boss"], "--role"),
    ] {
        let mut full = vec!["node", "update"];
        full.extend(args);
        full.push("worker9");
        let o = d.run(&full);
        assert_eq!(o.status.code(), Some(2), "{full:?}");
        let err = stderr(&o);
        assert!(err.contains(&format!("invalid {flag}")), "{full:?}: {err}");
    }
    let o = d.run(&["node", "update", "worker9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(d.requests().is_empty());
}

#[test]
fn node_rm_deletes_each_node_with_force() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["node", "rm", "--force", "worker9", "worker10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "worker9\nworker10\n");
    assert_eq!(
        d.lines(),
        [
            "DELETE /v1/nodes/worker9?force=true",
            "DELETE /v1/nodes/worker10?force=true"
        ]
    );
    let o = d.run(&["node", "rm", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: no such node: ghost\n"
    );
    assert_eq!(
        d.lines().last().map(String::as_str),
        Some("DELETE /v1/nodes/ghost?force=false")
    );
}

#[test]
fn daemon_errors_render_with_the_prefix_and_exit_1() {
    let d = FakeDaemon::unix(|_| {
        error(
            ErrorKind::NoQuorum,
            "the managers have no quorum: writes are refused until a majority is back",
        )
    });
    let o = d.run(&["node", "update", "--availability", "pause", "worker9"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: the managers have no quorum: writes are refused until a majority is back\n"
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn a_missing_daemon_is_reported_like_docker() {
    let (_dir, path) = dead_socket();
    let host = format!("unix://{}", path.display());
    let o = swarm(&["-H", &host, "node", "ls"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("Cannot connect to the meshd daemon at {host}. Is meshd running?\n")
    );
    // Multi-node verbs stop at the first connection failure instead of repeating it.
    let o = swarm(&["-H", &host, "node", "rm", "a", "b"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn the_default_host_is_the_system_socket() {
    if std::path::Path::new(mesh_api::api::DEFAULT_SOCKET).exists() {
        return; // a real meshd runs here; nothing to prove about its absence.
    }
    let o = swarm(&["info"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Cannot connect to the meshd daemon at unix:///run/meshd/meshd.sock. Is meshd running?\n"
    );
}

#[test]
fn swarm_host_env_selects_the_daemon() {
    let d = FakeDaemon::unix(api);
    let o = swarm(&["join-token", "-q", "worker"], &[("SWARM_HOST", &d.host)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "SWMTKN-1-digest-workersecret\n");
}

#[test]
fn bad_hosts_are_usage_errors() {
    let o = swarm(&["-H", "http://example", "info"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("-H/--host"), "{}", stderr(&o));
    let o = swarm(&["-H", "tcp://127.0.0.1:2376", "info"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("needs mutual TLS"), "{}", stderr(&o));
}

#[test]
fn version_prints_client_and_server() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!(
            "Client:\n Version:       {}\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{out}"
    );
    assert!(
        out.contains("\nServer:\n Version:       0.1.0\n Swarm:         active\n"),
        "{out}"
    );

    let (_dir, path) = dead_socket();
    let o = swarm(
        &["-H", &format!("unix://{}", path.display()), "version"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).starts_with("Client:\n"));
    assert!(stderr(&o).starts_with("Cannot connect to the meshd daemon"));
}
