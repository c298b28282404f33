//! Nodes: the hosts of a cluster, their desired spec and their observed status.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Runs tasks only.
    Worker,
    /// Runs tasks and is a Raft member holding the cluster state.
    Manager,
}

impl NodeRole {
    /// The role as the CLI and the certificates spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Worker => "worker",
            NodeRole::Manager => "manager",
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeRole {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "worker" => Ok(NodeRole::Worker),
            "manager" => Ok(NodeRole::Manager),
            other => Err(ValidationError::new(
                "--role",
                format!("unknown role {other:?}"),
                "use `worker` or `manager`",
            )),
        }
    }
}

/// Whether the scheduler may place tasks on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// New tasks may be placed here.
    #[default]
    Active,
    /// Running tasks stay, no new ones are placed.
    Pause,
    /// Tasks are moved off and none are placed.
    Drain,
}

impl Availability {
    /// The availability as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Availability {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            other => Err(ValidationError::new(
                "--availability",
                format!("unknown availability {other:?}"),
                "use `active`, `pause` or `drain`",
            )),
        }
    }
}

/// A node's observed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Not heard from yet.
    #[default]
    Unknown,
    /// Heartbeats stopped arriving in time.
    Down,
    /// Heartbeating.
    Ready,
    /// Left the cluster on purpose.
    Disconnected,
}

impl NodeState {
    /// The state as `node ls` prints it (capitalised, like docker).
    pub fn display(self) -> &'static str {
        match self {
            NodeState::Unknown => "Unknown",
            NodeState::Down => "Down",
            NodeState::Ready => "Ready",
            NodeState::Disconnected => "Disconnected",
        }
    }
}

/// How a manager is seen by the other managers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// Not known yet.
    #[default]
    Unknown,
    /// Answering.
    Reachable,
    /// Not answering.
    Unreachable,
}

/// What an operator asks of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeSpec {
    /// Labels used in placement constraints (`node.labels.KEY`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The role the node should have.
    pub role: NodeRole,
    /// Whether tasks may be placed on it.
    pub availability: Availability,
}

/// What a node reports about itself when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NodeDescription {
    /// Host name.
    pub hostname: String,
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture, e.g. `x86_64`.
    pub architecture: String,
    /// meshd version.
    pub engine_version: String,
    /// CPUs in billionths (docker's NanoCPUs): 2 CPUs = 2_000_000_000.
    #[serde(default)]
    pub nano_cpus: u64,
    /// Memory in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
}

/// Observed status of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NodeStatus {
    /// Ready, down, …
    pub state: NodeState,
    /// Why the node is in this state.
    #[serde(default)]
    pub message: String,
    /// Address the node advertises (IP only).
    pub addr: String,
}

/// Raft membership of a manager node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ManagerStatus {
    /// Whether this manager is the Raft leader.
    pub leader: bool,
    /// Whether other managers can reach it.
    pub reachability: Reachability,
    /// Control address `IP:PORT`.
    pub addr: String,
}

/// A host of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    /// Node ID (also the common name of its certificate).
    #[serde(rename = "ID")]
    pub id: String,
    /// Raft index of the last change.
    pub version: u64,
    /// Creation time, Unix milliseconds.
    pub created_at: u64,
    /// Last change, Unix milliseconds.
    pub updated_at: u64,
    /// Desired state.
    pub spec: NodeSpec,
    /// What the node reported.
    pub description: NodeDescription,
    /// Observed state.
    pub status: NodeStatus,
    /// Role the node's current certificate carries.
    pub role: NodeRole,
    /// Raft member ID, given when the node first becomes a manager.
    #[serde(default)]
    pub raft_id: u64,
    /// Control-plane address `IP:PORT` (QUIC).
    pub control_addr: String,
    /// Overlay data port (UDP).
    pub data_port: u16,
    /// Present when the node is a manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_status: Option<ManagerStatus>,
    /// Expiry of the node's certificate, Unix milliseconds.
    #[serde(default)]
    pub cert_expiry: u64,
    /// The node's WireGuard public key for each overlay network it takes part in
    /// (network ID → base64 key). Published by the node itself over its mTLS session.
    #[serde(default)]
    pub network_keys: BTreeMap<String, String>,
}

impl Node {
    /// Whether `reference` names this node exactly: its full ID or its hostname.
    /// ID prefixes are resolved by [`resolve_node`].
    pub fn matches_exactly(&self, reference: &str) -> bool {
        self.id == reference || self.description.hostname == reference
    }
}

/// Finds the node a user means by `reference`: a full ID, a hostname, or an
/// unambiguous ID prefix. The error names the reference and what to do.
pub fn resolve_node<'a, I>(nodes: I, reference: &str) -> Result<&'a Node, ValidationError>
where
    I: IntoIterator<Item = &'a Node> + Clone,
{
    if reference.is_empty() {
        return Err(ValidationError::new(
            "NODE",
            "empty node reference",
            "give a node ID or hostname (see `swarm node ls`)",
        ));
    }
    let exact: Vec<&Node> = nodes
        .clone()
        .into_iter()
        .filter(|n| n.matches_exactly(reference))
        .collect();
    match exact.as_slice() {
        [one] => return Ok(one),
        [] => {}
        many => {
            return Err(ValidationError::new(
                "NODE",
                format!("{reference:?} matches {} nodes", many.len()),
                "use the node ID instead of the hostname (see `swarm node ls`)",
            ));
        }
    }
    let prefixed: Vec<&Node> = nodes
        .into_iter()
        .filter(|n| n.id.starts_with(reference))
        .collect();
    match prefixed.as_slice() {
        [one] => Ok(one),
        [] => Err(ValidationError::new(
            "NODE",
            format!("no such node: {reference}"),
            "give a node ID or hostname listed by `swarm node ls`",
        )),
        many => Err(ValidationError::new(
            "NODE",
            format!(
                "ID prefix {reference:?} is ambiguous ({} nodes)",
                many.len()
            ),
            "give more characters of the node ID",
        )),
    }
}

/// Maximum length of a label key.
pub const MAX_LABEL_KEY: usize = 128;
/// Maximum length of a label value.
pub const MAX_LABEL_VALUE: usize = 4096;

/// Checks a label key: non-empty, at most 128 characters of `[A-Za-z0-9._/-]`.
pub fn validate_label_key(field: &str, key: &str) -> Result<(), ValidationError> {
    if key.is_empty() {
        return Err(ValidationError::new(
            field,
            "empty label key",
            "write KEY=VALUE with a non-empty KEY, e.g. zone=a",
        ));
    }
    if key.len() > MAX_LABEL_KEY {
        return Err(ValidationError::new(
            field,
            format!("label key is {} characters long", key.len()),
            format!("use at most {MAX_LABEL_KEY} characters"),
        ));
    }
    if let Some(bad) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(ValidationError::new(
            field,
            format!("label key {key:?} contains {bad:?}"),
            "use only letters, digits, '.', '_', '-' and '/' in label keys",
        ));
    }
    Ok(())
}

/// Parses `KEY=VALUE` (or `KEY`, meaning an empty value) as given to `--label-add`.
pub fn parse_label(field: &str, s: &str) -> Result<(String, String), ValidationError> {
    let (k, v) = match s.split_once('=') {
        Some((k, v)) => (k, v),
        None => (s, ""),
    };
    validate_label_key(field, k)?;
    if v.len() > MAX_LABEL_VALUE {
        return Err(ValidationError::new(
            field,
            format!("value of label {k:?} is {} bytes long", v.len()),
            format!("use at most {MAX_LABEL_VALUE} bytes"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            format!("value of label {k:?} contains a control character"),
            "remove control characters (newlines, tabs) from the value",
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// A change to a node's spec, as `swarm node update|promote|demote` send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeUpdate {
    /// New availability.
    #[serde(default)]
    pub availability: Option<Availability>,
    /// New role.
    #[serde(default)]
    pub role: Option<NodeRole>,
    /// Labels to add or overwrite, `KEY=VALUE`.
    #[serde(default)]
    pub label_add: Vec<String>,
    /// Label keys to remove.
    #[serde(default)]
    pub label_rm: Vec<String>,
}

impl NodeUpdate {
    /// The spec that results from applying this update to `spec`, or why it can't be applied.
    /// Pure: `spec` is not changed.
    pub fn apply(&self, spec: &NodeSpec) -> Result<NodeSpec, ValidationError> {
        let mut next = spec.clone();
        if let Some(a) = self.availability {
            next.availability = a;
        }
        if let Some(r) = self.role {
            next.role = r;
        }
        for key in &self.label_rm {
            validate_label_key("--label-rm", key)?;
            if next.labels.remove(key).is_none() {
                return Err(ValidationError::new(
                    "--label-rm",
                    format!("key {key:?} doesn't exist in the node's labels"),
                    "list the labels with `swarm node inspect NODE`",
                ));
            }
        }
        for l in &self.label_add {
            let (k, v) = parse_label("--label-add", l)?;
            next.labels.insert(k, v);
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NodeSpec {
        NodeSpec {
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            role: NodeRole::Worker,
            availability: Availability::Active,
        }
    }

    fn node(id: &str, host: &str) -> Node {
        Node {
            id: id.into(),
            version: 1,
            created_at: 0,
            updated_at: 0,
            spec: spec(),
            description: NodeDescription {
                hostname: host.into(),
                ..Default::default()
            },
            status: NodeStatus::default(),
            role: NodeRole::Worker,
            raft_id: 0,
            control_addr: String::new(),
            data_port: 51820,
            manager_status: None,
            cert_expiry: 0,
            network_keys: BTreeMap::new(),
        }
    }

    #[test]
    fn labels_parse_and_reject() {
        assert_eq!(
            parse_label("--label-add", "zone=a").unwrap(),
            ("zone".into(), "a".into())
        );
        assert_eq!(
            parse_label("--label-add", "ssd").unwrap(),
            ("ssd".into(), String::new())
        );
        assert_eq!(
            parse_label("--label-add", "a=b=c").unwrap(),
            ("a".into(), "b=c".into())
        );
        let e = parse_label("--label-add", "=a").unwrap_err();
        assert_eq!(e.field, "--label-add");
        assert!(e.to_string().contains("empty label key"));
        assert!(parse_label("--label-add", "a b=c").is_err());
        assert!(parse_label("--label-add", "k=a\nb").is_err());
        assert!(parse_label("--label-add", &"k".repeat(200)).is_err());
    }

    #[test]
    fn update_applies_without_touching_input() {
        let s = spec();
        let u = NodeUpdate {
            availability: Some(Availability::Drain),
            role: Some(NodeRole::Manager),
            label_add: vec!["rack=r1".into()],
            label_rm: vec!["zone".into()],
        };
        let n = u.apply(&s).unwrap();
        assert_eq!(n.availability, Availability::Drain);
        assert_eq!(n.role, NodeRole::Manager);
        assert_eq!(n.labels.get("rack").map(String::as_str), Some("r1"));
        assert!(!n.labels.contains_key("zone"));
        assert_eq!(s, spec());
    }

    #[test]
    fn update_refuses_missing_label_and_changes_nothing() {
        let u = NodeUpdate {
            label_add: vec!["x=1".into()],
            label_rm: vec!["nope".into()],
            ..Default::default()
        };
        let e = u.apply(&spec()).unwrap_err();
        assert_eq!(e.field, "--label-rm");
        assert!(e.to_string().contains("nope"));
    }

    #[test]
    fn parse_enums() {
        assert_eq!(
            "drain".parse::<Availability>().unwrap(),
            Availability::Drain
        );
        assert!("drained".parse::<Availability>().is_err());
        assert_eq!("manager".parse::<NodeRole>().unwrap(), NodeRole::Manager);
        let e = "boss".parse::<NodeRole>().unwrap_err();
        assert!(e.to_string().contains("--role"));
    }

    #[test]
    fn resolve_by_id_prefix_and_hostname() {
        let nodes = [
            node("aaaa1111", "host1"),
            node("aaaa2222", "host2"),
            node("bbbb3333", "host3"),
        ];
        assert_eq!(resolve_node(&nodes, "host2").unwrap().id, "aaaa2222");
        assert_eq!(resolve_node(&nodes, "bbbb").unwrap().id, "bbbb3333");
        assert_eq!(resolve_node(&nodes, "aaaa1111").unwrap().id, "aaaa1111");
        assert!(
            resolve_node(&nodes, "aaaa")
                .unwrap_err()
                .to_string()
                .contains("ambiguous")
        );
        assert!(
            resolve_node(&nodes, "zzz")
                .unwrap_err()
                .to_string()
                .contains("no such node")
        );
        assert!(resolve_node(&nodes, "").is_err());
    }
}
