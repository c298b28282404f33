//! A meshd cluster on a lab, driven through its HTTP API: formed with `init`, `join` and
//! promotions like a user would, then probed, loaded and faulted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use mesh_api::api::{Info, InitRequest, InitResponse, JoinRequest, JoinTokenResponse, routes};
use mesh_api::{Node, NodeRole, NodeState, Reachability};
use mesh_testkit::{Lab, LabOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::{Endpoint, request_json};
use crate::{BenchError, cleanup, kill, netns};

/// Longest a setup request (init, join, promote) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a probe request (info, node inspect) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`MeshdCluster::kill_host`] keeps killing what is left of a host.
const KILL_HOST_SWEEP: Duration = Duration::from_secs(2);

/// A meshd cluster: hosts `1..=managers` are managers (voters), the others workers.
pub struct MeshdCluster {
    lab: Arc<Lab>,
    managers: usize,
    /// Node ID of each host.
    ids: BTreeMap<usize, String>,
}

impl MeshdCluster {
    /// Starts a lab of `hosts` hosts, initialises the cluster on host 1, joins the others
    /// as workers, promotes hosts `2..=managers`, and waits until it is healthy.
    pub fn start(hosts: usize, managers: usize, timeout: Duration) -> Result<Self, BenchError> {
        if managers == 0 || managers > hosts {
            return Err(BenchError::InvalidOption {
                field: "managers",
                reason: format!("must be between 1 and the number of hosts ({hosts})"),
            });
        }
        let lab = Arc::new(Lab::start(LabOptions::hosts(hosts))?);
        cleanup::register_lab(&lab);
        let mut c = MeshdCluster {
            lab,
            managers,
            ids: BTreeMap::new(),
        };
        c.form(timeout)?;
        Ok(c)
    }

    fn form(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let hosts = self.lab.hosts();
        let _: InitResponse = self.api(
            1,
            Method::POST,
            routes::SWARM_INIT.to_owned(),
            Some(&InitRequest {
                advertise_addr: Some(self.lab.ip(1).to_string()),
                ..InitRequest::default()
            }),
            SETUP_TIMEOUT,
        )?;
        let token: JoinTokenResponse = self.api(
            1,
            Method::GET,
            mesh_api::api::path(routes::JOIN_TOKEN, &[("role", "worker")]),
            None::<&()>,
            SETUP_TIMEOUT,
        )?;
        for i in 2..=hosts {
            let _: serde_json::Value = self.api(
                i,
                Method::POST,
                routes::SWARM_JOIN.to_owned(),
                Some(&JoinRequest {
                    token: token.token.clone(),
                    remote_addr: self.lab.control_addr(1).to_string(),
                    advertise_addr: None,
                    listen_addr: None,
                }),
                SETUP_TIMEOUT,
            )?;
        }
        let nodes = self
            .lab
            .wait_until(&format!("{hosts} nodes ready"), timeout, || {
                let ns = self.nodes(1).ok()?;
                (ns.len() == hosts && ns.iter().all(|n| n.status.state == NodeState::Ready))
                    .then_some(ns)
            })?;
        for n in nodes {
            let host = n
                .description
                .hostname
                .strip_prefix("host")
                .and_then(|h| h.parse::<usize>().ok())
                .ok_or_else(|| {
                    BenchError::Cluster(format!(
                        "node {} has hostname {:?}, not hostN",
                        n.id, n.description.hostname
                    ))
                })?;
            self.ids.insert(host, n.id);
        }
        for i in 2..=self.managers {
            let _: Node = self.api(
                1,
                Method::POST,
                mesh_api::api::path(routes::NODE_UPDATE, &[("node", self.node_id(i))]),
                Some(&serde_json::json!({ "role": "manager" })),
                SETUP_TIMEOUT,
            )?;
        }
        self.wait_healthy(timeout)?;
        Ok(())
    }

    /// The lab.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// Number of managers.
    pub fn managers(&self) -> usize {
        self.managers
    }

    /// Host `i`'s API socket.
    pub fn endpoint(&self, i: usize) -> Endpoint {
        Endpoint::Unix(self.lab.socket(i).to_path_buf())
    }

    /// Host `i`'s node ID.
    pub fn node_id(&self, i: usize) -> &str {
        self.ids.get(&i).map_or("", String::as_str)
    }

    /// The leader host `i` knows of, if any.
    pub fn leader_seen_by(&self, i: usize) -> Option<usize> {
        let raft = self.info(i).ok()?.raft?;
        self.host_of(&raft.leader_node_id?)
    }

    /// The host whose node has ID `node_id`.
    pub fn host_of(&self, node_id: &str) -> Option<usize> {
        self.ids
            .iter()
            .find_map(|(h, id)| (id == node_id).then_some(*h))
    }

    /// One API request to host `i`'s daemon, on a fresh connection, bounded by `timeout`.
    pub fn api<T, B>(
        &self,
        i: usize,
        method: Method,
        path: String,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, BenchError>
    where
        T: DeserializeOwned + Send + 'static,
        B: Serialize + ?Sized,
    {
        let ep = self.endpoint(i);
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| BenchError::Cluster(format!("cannot encode a request: {e}")))?;
        netns::run("meshd-api", None, move || async move {
            request_json(&ep, method, &path, body.as_ref(), timeout).await
        })
    }

    /// `GET /v1/info` on host `i`.
    pub fn info(&self, i: usize) -> Result<Info, BenchError> {
        self.api(
            i,
            Method::GET,
            routes::INFO.to_owned(),
            None::<&()>,
            PROBE_TIMEOUT,
        )
    }

    /// `GET /v1/nodes` on host `via` (probes the other managers).
    pub fn nodes(&self, via: usize) -> Result<Vec<Node>, BenchError> {
        self.api(
            via,
            Method::GET,
            routes::NODES.to_owned(),
            None::<&()>,
            PROBE_TIMEOUT,
        )
    }

    /// `GET /v1/nodes/{id of host i}` on host `via`: the stored node, no probing.
    pub fn node(&self, via: usize, i: usize) -> Result<Node, BenchError> {
        self.api(
            via,
            Method::GET,
            mesh_api::api::path(routes::NODE, &[("node", self.node_id(i))]),
            None::<&()>,
            PROBE_TIMEOUT,
        )
    }

    /// meshd's version, as its API reports it.
    pub fn version(&self) -> Result<String, BenchError> {
        Ok(self.info(1)?.version)
    }

    /// The leader as every running manager sees it, if they agree and have a quorum.
    fn agreed_leader(&self) -> Option<usize> {
        let mut leader = None;
        for m in 1..=self.managers {
            if self.lab.pid(m).is_none() {
                continue;
            }
            let inf = self.info(m).ok()?;
            let raft = inf.raft?;
            if !inf.control_available || inf.managers != self.managers || !raft.has_quorum {
                return None;
            }
            let l = self.host_of(&raft.leader_node_id?)?;
            if *leader.get_or_insert(l) != l {
                return None;
            }
        }
        leader
    }

    /// Waits until every daemon runs, every manager agrees on one leader with a quorum, and
    /// the leader lists every node ready and every manager reachable. Returns the leader.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<usize, BenchError> {
        let hosts = self.lab.hosts();
        Ok(self.lab.wait_until("a healthy cluster", timeout, || {
            if (1..=hosts).any(|i| self.lab.pid(i).is_none()) {
                return None;
            }
            let leader = self.agreed_leader()?;
            let ns = self.nodes(leader).ok()?;
            let ready = ns.len() == hosts && ns.iter().all(|n| n.status.state == NodeState::Ready);
            let managers: Vec<_> = ns
                .iter()
                .filter(|n| n.spec.role == NodeRole::Manager)
                .filter_map(|n| n.manager_status.as_ref())
                .collect();
            let reachable = managers.len() == self.managers
                && managers
                    .iter()
                    .all(|m| m.reachability == Reachability::Reachable);
            (ready && reachable).then_some(leader)
        })?)
    }

    /// A manager other than `leader` (the lowest-numbered).
    pub fn follower(&self, leader: usize) -> usize {
        (1..=self.managers).find(|m| *m != leader).unwrap_or(leader)
    }

    /// SIGKILLs host `i`'s meshd; returns the instant just before the signal.
    pub fn kill(&self, i: usize) -> Instant {
        let t = Instant::now();
        self.lab.kill(i);
        t
    }

    /// SIGKILLs host `i` as a whole, the way a host that loses its power looks from the
    /// others: its meshd and every process in its network namespace or in the namespaces its
    /// meshd made for its tasks and sandboxes (the containers and their shims), and their
    /// descendants, all at once (see [`crate::kill`]). Returns the instant just before the
    /// first signal. The namespaces stay, with nothing in them, until the daemon cleans up
    /// after a restart or the lab goes.
    pub fn kill_host(&self, i: usize) -> Instant {
        let mut namespaces = kill::named_netns(&self.lab.sandbox_prefix(i));
        namespaces.extend(kill::netns_id(&self.lab.netns_path(i)));
        let t = Instant::now();
        let killed = kill::kill_host(&namespaces, KILL_HOST_SWEEP);
        // Reaps the daemon (already dead) and forgets it.
        self.lab.kill(i);
        tracing::info!(host = i, killed, "host killed");
        t
    }

    /// Starts host `i`'s meshd again.
    pub fn restart(&self, i: usize) -> Result<(), BenchError> {
        Ok(self.lab.start_daemon(i)?)
    }

    /// Polls host `via` every `every` until it stores host `i`'s node as down; returns the
    /// time from `since`.
    pub fn wait_down(
        &self,
        via: usize,
        i: usize,
        since: Instant,
        every: Duration,
        timeout: Duration,
    ) -> Result<Duration, BenchError> {
        loop {
            let node = self.node(via, i);
            let now = Instant::now();
            if let Ok(n) = &node
                && n.status.state == NodeState::Down
            {
                return Ok(now - since);
            }
            if now - since > timeout {
                let last = match &node {
                    Ok(n) => format!("state {:?}", n.status.state),
                    Err(e) => e.to_string(),
                };
                return Err(BenchError::Timeout {
                    what: format!("host{via} to mark host{i} down (last answer: {last})"),
                    after: timeout,
                    details: String::new(),
                });
            }
            std::thread::sleep(every);
        }
    }
}
