//! The `swarm` binary against a fake meshd on a temporary unix socket: each verb sends
//! the right request to the right route, prints docker's text, and fails the way docker
//! does.

mod common;

use common::*;
use mesh_api::api::{ErrorKind, InitRequest, JoinRequest, LeaveRequest};
use mesh_api::node::NodeUpdate;
use mesh_api::{
    Availability, ConnectRequest, DisconnectRequest, EndpointOwner, NetworkSpec, NetworkView,
    NodeRole,
};

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
            default_addr_pool: Vec::new(),
            default_addr_pool_mask_len: None,
        }
    );
}

#[test]
fn init_sends_the_address_pools() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&[
        "init",
        "--default-addr-pool",
        "10.20.0.0/16",
        "--default-addr-pool",
        "172.30.0.0/20",
        "--default-addr-pool-mask-length",
        "26",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reqs = d.requests();
    assert_eq!(d.lines(), ["POST /v1/swarm/init"]);
    let body: InitRequest = reqs[0].json();
    assert_eq!(body.default_addr_pool, ["10.20.0.0/16", "172.30.0.0/20"]);
    assert_eq!(body.default_addr_pool_mask_len, Some(26));
}

#[test]
fn init_refuses_bad_address_pools_naming_the_flag() {
    let d = FakeDaemon::unix(api);
    // One value at a time: usage errors.
    for (args, flag, words) in [
        (
            vec!["--default-addr-pool", "10.20.1.0/16"],
            "--default-addr-pool",
            "did you mean 10.20.0.0/16",
        ),
        (
            vec!["--default-addr-pool", "10.20.0.0"],
            "--default-addr-pool",
            "no prefix length",
        ),
        (
            vec!["--default-addr-pool", "fd00::/48"],
            "--default-addr-pool",
            "IPv6",
        ),
        (
            vec!["--default-addr-pool-mask-length", "30"],
            "--default-addr-pool-mask-length",
            "from 8 to 29",
        ),
        (
            vec!["--default-addr-pool-mask-length", "7"],
            "--default-addr-pool-mask-length",
            "from 8 to 29",
        ),
    ] {
        let mut full = vec!["init"];
        full.extend(&args);
        let o = d.run(&full);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains(&format!("invalid {flag}")), "{args:?}: {err}");
        assert!(err.contains(words), "{args:?}: {err}");
    }
    // Values that do not fit together: refused before sending, naming the flag.
    for (args, flag) in [
        (
            vec![
                "--default-addr-pool",
                "10.20.0.0/24",
                "--default-addr-pool-mask-length",
                "16",
            ],
            "--default-addr-pool-mask-length",
        ),
        (
            vec!["--default-addr-pool", "10.20.0.0/26"],
            "--default-addr-pool",
        ),
        (
            vec![
                "--default-addr-pool",
                "10.0.0.0/8",
                "--default-addr-pool",
                "10.20.0.0/16",
            ],
            "--default-addr-pool",
        ),
    ] {
        let mut full = vec!["init"];
        full.extend(&args);
        let o = d.run(&full);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.starts_with(&format!("invalid {flag}: ")),
            "{args:?}: {err}"
        );
    }
    assert!(d.requests().is_empty());
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

#[test]
fn network_create_posts_the_spec_and_prints_the_id() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.30.0.0/24",
        "--gateway",
        "10.30.0.254",
        "--attachable",
        "--allow-overlap",
        "--label",
        "tier=web",
        "--label",
        "owner=ops",
        "frontend",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{NET_NEW_ID}\n"));
    let reqs = d.requests();
    assert_eq!(d.lines(), ["POST /v1/networks"]);
    assert_eq!(
        reqs[0].json::<NetworkSpec>(),
        NetworkSpec {
            name: "frontend".into(),
            driver: "overlay".into(),
            subnet: Some("10.30.0.0/24".parse().unwrap()),
            gateway: Some("10.30.0.254".parse().unwrap()),
            attachable: true,
            allow_overlap: true,
            labels: [("owner", "ops"), ("tier", "web")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ingress: false,
        }
    );

    // Without flags: the overlay driver, and the daemon picks the subnet.
    let o = d.run(&["network", "create", "plain"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{NET_NEW_ID}\n"));
    assert_eq!(
        d.requests()[1].json::<NetworkSpec>(),
        NetworkSpec {
            name: "plain".into(),
            driver: "overlay".into(),
            ..Default::default()
        }
    );
}

#[test]
fn network_create_reports_the_daemons_refusal() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["network", "create", "appnet"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: network with name appnet already exists\n"
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn network_create_validates_flags_before_sending() {
    let d = FakeDaemon::unix(api);
    for (args, flag, words) in [
        (
            vec!["--subnet", "10.20.0.5/24"],
            "--subnet",
            "did you mean 10.20.0.0/24?",
        ),
        (
            vec!["--subnet", "10.20.0.0"],
            "--subnet",
            "no prefix length",
        ),
        (vec!["--subnet", "10.0.0.0/30"], "--subnet", "/8 to /29"),
        (vec!["--subnet", "fd00::/64"], "--subnet", "IPv6"),
        (vec!["-d", "bridge"], "--driver", "use `-d overlay`"),
        (
            vec!["--subnet", "10.20.0.0/24", "--gateway", "nope"],
            "--gateway",
            "not an IPv4 address",
        ),
        (vec!["--label", "=x"], "--label", "empty label key"),
    ] {
        let mut full = vec!["network", "create"];
        full.extend(&args);
        full.push("net");
        let o = d.run(&full);
        assert_eq!(o.status.code(), Some(2), "{full:?}");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("invalid {flag}: ")),
            "{full:?}: {err}"
        );
        assert!(err.contains(words), "{full:?}: {err}");
    }
    // A bad name.
    let o = d.run(&["network", "create", "a b"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("is not a valid network name"),
        "{}",
        stderr(&o)
    );
    // A gateway needs a subnet.
    let o = d.run(&["network", "create", "--gateway", "10.0.0.1", "net"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--subnet"), "{}", stderr(&o));
    // A gateway outside its subnet.
    let o = d.run(&[
        "network",
        "create",
        "--subnet",
        "10.20.0.0/24",
        "--gateway",
        "10.21.0.1",
        "net",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "invalid --gateway: 10.21.0.1 is not a usable address of 10.20.0.0/24; give an address between 10.20.0.1 and 10.20.0.254\n"
    );
    assert!(d.requests().is_empty());
}

#[test]
fn network_ls_prints_dockers_columns_sorted_by_name() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["network", "ls"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "\
NETWORK ID     NAME      DRIVER    SCOPE
nwapp0000000   appnet    overlay   swarm
nwdb20000000   db2       overlay   swarm
nwdb10000000   db10      overlay   swarm
"
    );
    assert_eq!(d.lines(), ["GET /v1/networks"]);

    let o = d.run(&["network", "ls", "--no-trunc"]);
    assert!(
        stdout(&o).contains(&format!("\n{NET_APP_ID}   appnet   ")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn network_ls_quiet_filters_and_json() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["network", "ls", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "nwapp0000000\nnwdb20000000\nnwdb10000000\n");

    let o = d.run(&["network", "ls", "-q", "--no-trunc", "-f", "name=db"]);
    assert_eq!(stdout(&o), format!("{NET_DB2_ID}\n{NET_DB10_ID}\n"));

    let o = d.run(&["network", "ls", "-q", "-f", "id=app", "-f", "id=db10"]);
    assert_eq!(stdout(&o), "nwapp0000000\nnwdb10000000\n");

    let o = d.run(&["network", "ls", "-q", "--filter", "driver=bridge"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");

    let o = d.run(&[
        "network",
        "ls",
        "-f",
        "label=tier=db",
        "-f",
        "driver=overlay",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let view: NetworkView = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(view.network.id, NET_DB10_ID);
    assert_eq!(view.network.subnet.to_string(), "10.0.2.0/24");

    let o = d.run(&["network", "ls", "--format", "json"]);
    assert_eq!(stdout(&o).lines().count(), 3);

    let o = d.run(&["network", "ls", "--filter", "colour=red"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid --filter"), "{}", stderr(&o));
}

#[test]
fn network_inspect_prints_a_json_array_with_endpoints() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["network", "inspect", "appnet", NET_DB2_ID]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        d.lines(),
        [
            "GET /v1/networks/appnet",
            &format!("GET /v1/networks/{NET_DB2_ID}")
        ]
    );
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!("[\n    {{\n        \"ID\": \"{NET_APP_ID}\",\n")),
        "{out}"
    );
    assert!(
        out.contains("\n        \"Subnet\": \"10.20.0.0/24\",\n"),
        "{out}"
    );
    let got: Vec<NetworkView> = serde_json::from_str(&out).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].endpoints.len(), 2);
    assert!(matches!(
        &got[0].endpoints[0].owner,
        EndpointOwner::Netns { path, .. } if path == "/run/netns/blue"
    ));
    assert_eq!(got[1].network.spec.name, "db2");

    let o = d.run(&["network", "inspect", "--format", "json", "db10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1);
}

#[test]
fn network_inspect_prints_what_it_found_and_fails_for_the_rest() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["network", "inspect", "ghost", "db2"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: network ghost not found\n"
    );
    let got: Vec<NetworkView> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].network.id, NET_DB2_ID);
}

#[test]
fn network_rm_deletes_each_network() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["network", "rm", "appnet", "ghost", "db2"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "appnet\ndb2\n");
    assert_eq!(
        stderr(&o),
        "Error response from daemon: network ghost not found\n"
    );
    assert_eq!(
        d.lines(),
        [
            "DELETE /v1/networks/appnet",
            "DELETE /v1/networks/ghost",
            "DELETE /v1/networks/db2"
        ]
    );

    // `remove` is an alias; --force ignores networks that do not exist.
    let o = d.run(&["network", "remove", "-f", "ghost", "db10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "db10\n");
    assert_eq!(stderr(&o), "");

    let o = d.run(&["network", "rm"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("<NETWORK>"), "{}", stderr(&o));
}

#[test]
fn network_connect_a_namespace_prints_its_address() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&[
        "network",
        "connect",
        "--netns",
        "/run/netns/red",
        "--ifname",
        "eth1",
        "--ip",
        "10.20.0.9",
        "appnet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "10.20.0.9/24\n");
    let reqs = d.requests();
    assert_eq!(d.lines(), ["POST /v1/networks/appnet/connect"]);
    assert_eq!(
        reqs[0].json::<ConnectRequest>(),
        ConnectRequest {
            netns: Some("/run/netns/red".into()),
            ifname: Some("eth1".into()),
            ip: Some("10.20.0.9".parse().unwrap()),
            wg_public_key: None,
            wg_endpoint: None,
        }
    );
}

#[test]
fn network_connect_a_wireguard_peer_prints_its_config() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&[
        "network",
        "connect",
        "--wg-public-key",
        PEER_KEY,
        "--wg-endpoint",
        "198.51.100.7:51820",
        NET_APP_ID,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "10.20.0.4/24\n\
             \n\
             [Interface]\n\
             Address = 10.20.0.4/24\n\
             \n\
             [Peer]\n\
             PublicKey = {NODE_WG_KEY}\n\
             Endpoint = 192.0.2.1:51820\n\
             AllowedIPs = 10.20.0.0/24\n\
             PersistentKeepalive = 25\n"
        )
    );
    let reqs = d.requests();
    assert_eq!(
        d.lines(),
        [format!("POST /v1/networks/{NET_APP_ID}/connect")]
    );
    assert_eq!(
        reqs[0].json::<ConnectRequest>(),
        ConnectRequest {
            wg_public_key: Some(PEER_KEY.into()),
            wg_endpoint: Some("198.51.100.7:51820".parse().unwrap()),
            ..Default::default()
        }
    );
}

#[test]
fn network_connect_reports_the_daemons_refusal() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&["network", "connect", "--netns", "/run/netns/red", "db2"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: network db2 is not attachable; create it with --attachable\n"
    );
    let o = d.run(&["network", "connect", "--netns", "/run/netns/red", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: network ghost not found\n"
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn network_connect_needs_exactly_one_peer_and_valid_flags() {
    let d = FakeDaemon::unix(api);
    // Neither, or both, of --netns and --wg-public-key.
    let o = d.run(&["network", "connect", "appnet"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("--netns <PATH>|--wg-public-key <KEY>"),
        "{err}"
    );
    let o = d.run(&[
        "network",
        "connect",
        "--netns",
        "/run/netns/red",
        "--wg-public-key",
        PEER_KEY,
        "appnet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("'--netns <PATH>' cannot be used with '--wg-public-key <KEY>'"),
        "{err}"
    );
    // Flags that belong to the other kind of peer.
    let o = d.run(&[
        "network",
        "connect",
        "--wg-endpoint",
        "198.51.100.7:51820",
        "--netns",
        "/n",
        "appnet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--wg-endpoint"), "{}", stderr(&o));
    let o = d.run(&[
        "network",
        "connect",
        "--ifname",
        "eth1",
        "--wg-public-key",
        PEER_KEY,
        "appnet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--ifname"), "{}", stderr(&o));
    // Bad values.
    for (args, flag) in [
        (vec!["--netns", "red"], "--netns"),
        (
            vec!["--netns", "/n", "--ifname", "a-name-too-long-x"],
            "--ifname",
        ),
        (vec!["--netns", "/n", "--ip", "10.20.0"], "--ip"),
        (vec!["--wg-public-key", "not-a-key"], "--wg-public-key"),
        (
            vec![
                "--wg-public-key",
                PEER_KEY,
                "--wg-endpoint",
                "peer.example:51820",
            ],
            "--wg-endpoint",
        ),
    ] {
        let mut full = vec!["network", "connect"];
        full.extend(&args);
        full.push("appnet");
        let o = d.run(&full);
        assert_eq!(o.status.code(), Some(2), "{full:?}");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("invalid {flag}: ")),
            "{full:?}: {err}"
        );
    }
    assert!(d.requests().is_empty());
}

#[test]
fn network_disconnect_posts_the_namespace_or_the_endpoint() {
    let d = FakeDaemon::unix(api);
    let o = d.run(&[
        "network",
        "disconnect",
        "--netns",
        "/run/netns/blue",
        "appnet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    let o = d.run(&[
        "network",
        "disconnect",
        "--endpoint",
        "ep2bbbbbbbbbbbbbbbbbbbbbb",
        "appnet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reqs = d.requests();
    assert_eq!(
        d.lines(),
        [
            "POST /v1/networks/appnet/disconnect",
            "POST /v1/networks/appnet/disconnect"
        ]
    );
    assert_eq!(
        reqs[0].json::<DisconnectRequest>(),
        DisconnectRequest {
            netns: Some("/run/netns/blue".into()),
            endpoint: None,
        }
    );
    assert_eq!(
        reqs[1].json::<DisconnectRequest>(),
        DisconnectRequest {
            netns: None,
            endpoint: Some("ep2bbbbbbbbbbbbbbbbbbbbbb".into()),
        }
    );

    let o = d.run(&["network", "disconnect", "--netns", "/n", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: network ghost not found\n"
    );

    let o = d.run(&["network", "disconnect", "appnet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--netns <PATH>|--endpoint <ID>"),
        "{}",
        stderr(&o)
    );
    let o = d.run(&[
        "network",
        "disconnect",
        "--netns",
        "/n",
        "--endpoint",
        "e",
        "appnet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(d.requests().len(), 3);
}

#[test]
fn network_verbs_report_a_missing_daemon_once() {
    let (_dir, path) = dead_socket();
    let host = format!("unix://{}", path.display());
    let o = swarm(&["-H", &host, "network", "rm", "a", "b"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("Cannot connect to the meshd daemon at {host}. Is meshd running?\n")
    );
    let o = swarm(&["-H", &host, "network", "inspect", "a", "b"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}
