//! `swarm node ls | inspect | promote | demote | update | rm`.

use clap::{ArgGroup, Args, Subcommand};
use mesh_api::api::{path, routes};
use mesh_api::node::{NodeUpdate, parse_label, validate_label_key};
use mesh_api::{Availability, Node, NodeRole, ValidationError};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::{Ctx, Format, is_fatal, parse_format, report};
use crate::client::encode_segment;
use crate::error::{CliError, Result};
use crate::format::{node_order, node_pretty, node_table, reformat_json};

/// The `swarm node` verbs.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes of the swarm.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show details of one or more nodes (`self` is the node swarm talks to).
    Inspect(InspectArgs),
    /// Make one or more nodes managers.
    Promote(NodesArgs),
    /// Make one or more managers workers.
    Demote(NodesArgs),
    /// Change a node's availability, role or labels.
    Update(UpdateArgs),
    /// Remove one or more nodes from the swarm.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

/// A `--filter` of `node ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeFilter {
    /// `id=PREFIX`: the node ID starts with it.
    Id(String),
    /// `name=PREFIX`: the host name starts with it.
    Name(String),
    /// `role=manager|worker`.
    Role(NodeRole),
    /// `node.label=KEY` or `node.label=KEY=VALUE` (also spelled `label=`).
    Label {
        /// The label key.
        key: String,
        /// The value it must have, if given.
        value: Option<String>,
    },
}

impl NodeFilter {
    /// Parses `KEY=VALUE` as given to `--filter`.
    pub fn parse(s: &str) -> std::result::Result<Self, ValidationError> {
        const FIELD: &str = "--filter";
        let keys = "use id=, name=, role= or node.label=, e.g. --filter role=manager";
        let Some((key, value)) = s.split_once('=') else {
            return Err(ValidationError::new(
                FIELD,
                format!("{s:?} is not KEY=VALUE"),
                keys,
            ));
        };
        match key {
            "id" => Ok(NodeFilter::Id(value.to_string())),
            "name" => Ok(NodeFilter::Name(value.to_string())),
            "role" => match value {
                "manager" => Ok(NodeFilter::Role(NodeRole::Manager)),
                "worker" => Ok(NodeFilter::Role(NodeRole::Worker)),
                other => Err(ValidationError::new(
                    FIELD,
                    format!("unknown role {other:?}"),
                    "use role=manager or role=worker",
                )),
            },
            "node.label" | "label" => {
                let (k, v) = match value.split_once('=') {
                    Some((k, v)) => (k, Some(v.to_string())),
                    None => (value, None),
                };
                validate_label_key(FIELD, k)?;
                Ok(NodeFilter::Label {
                    key: k.to_string(),
                    value: v,
                })
            }
            other => Err(ValidationError::new(
                FIELD,
                format!("unknown filter {other:?}"),
                keys,
            )),
        }
    }

    fn key(&self) -> &'static str {
        match self {
            NodeFilter::Id(_) => "id",
            NodeFilter::Name(_) => "name",
            NodeFilter::Role(_) => "role",
            NodeFilter::Label { .. } => "node.label",
        }
    }

    /// Whether `node` passes this filter.
    pub fn matches(&self, node: &Node) -> bool {
        match self {
            NodeFilter::Id(p) => node.id.starts_with(p.as_str()),
            NodeFilter::Name(p) => node.description.hostname.starts_with(p.as_str()),
            NodeFilter::Role(r) => node.role == *r,
            NodeFilter::Label { key, value } => match (node.spec.labels.get(key), value) {
                (Some(v), Some(want)) => v == want,
                (Some(_), None) => true,
                (None, _) => false,
            },
        }
    }
}

/// Whether `node` passes `filters`: filters with the same key are alternatives (OR),
/// different keys must all hold (AND), like docker.
pub fn passes(node: &Node, filters: &[NodeFilter]) -> bool {
    let mut keys: Vec<&str> = filters.iter().map(NodeFilter::key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.iter().all(|k| {
        filters
            .iter()
            .filter(|f| f.key() == *k)
            .any(|f| f.matches(node))
    })
}

/// `swarm node ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only print node IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// `json`: one Node object per line, as the API returns it.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format, default_value = "")]
    pub format: Format,
    /// Filter: id=PREFIX, name=PREFIX, role=manager|worker, node.label=KEY[=VALUE].
    #[arg(short, long, value_name = "FILTER", value_parser = NodeFilter::parse)]
    pub filter: Vec<NodeFilter>,
}

/// `swarm node inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print a human-readable block instead of JSON.
    #[arg(long, conflicts_with = "format")]
    pub pretty: bool,
    /// `json`: the nodes as one compact JSON array.
    #[arg(short, long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Option<Format>,
    /// Node IDs, ID prefixes or host names; `self` is the node swarm talks to.
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

/// Verbs that take a list of nodes.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Node IDs, ID prefixes or host names; `self` is the node swarm talks to.
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

/// `swarm node update`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["availability", "label_add", "label_rm", "role"])
))]
pub struct UpdateArgs {
    /// active, pause or drain.
    #[arg(long, value_name = "AVAILABILITY", value_parser = parse_availability)]
    pub availability: Option<Availability>,
    /// Add or change a label (KEY=VALUE); repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = label_add)]
    pub label_add: Vec<String>,
    /// Remove a label (KEY); repeatable.
    #[arg(long, value_name = "KEY", value_parser = label_rm)]
    pub label_rm: Vec<String>,
    /// worker or manager.
    #[arg(long, value_name = "ROLE", value_parser = parse_role)]
    pub role: Option<NodeRole>,
    /// Node ID, ID prefix or host name; `self` is the node swarm talks to.
    #[arg(value_name = "NODE")]
    pub node: String,
}

/// `swarm node rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove the node even if it is not down.
    #[arg(short, long)]
    pub force: bool,
    /// Node IDs, ID prefixes or host names.
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

fn parse_availability(s: &str) -> std::result::Result<Availability, ValidationError> {
    s.parse()
}

fn parse_role(s: &str) -> std::result::Result<NodeRole, ValidationError> {
    s.parse()
}

fn label_add(s: &str) -> std::result::Result<String, ValidationError> {
    parse_label("--label-add", s).map(|_| s.to_string())
}

fn label_rm(s: &str) -> std::result::Result<String, ValidationError> {
    validate_label_key("--label-rm", s).map(|()| s.to_string())
}

/// Runs a `swarm node` verb.
pub async fn run(ctx: &mut Ctx<'_>, command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Ls(a) => ls(ctx, a).await,
        NodeCommand::Inspect(a) => inspect(ctx, a).await,
        NodeCommand::Promote(a) => change_role(ctx, a.nodes, NodeRole::Manager).await,
        NodeCommand::Demote(a) => change_role(ctx, a.nodes, NodeRole::Worker).await,
        NodeCommand::Update(a) => update(ctx, a).await,
        NodeCommand::Rm(a) => rm(ctx, a).await,
    }
}

/// Resolves `self` to this node's ID (asking the daemon once); other references pass
/// through for the daemon to resolve.
#[derive(Debug, Default)]
struct SelfRef {
    id: Option<String>,
}

impl SelfRef {
    async fn resolve(&mut self, ctx: &Ctx<'_>, reference: &str) -> Result<String> {
        if reference != "self" {
            return Ok(reference.to_string());
        }
        if let Some(id) = &self.id {
            return Ok(id.clone());
        }
        let info = ctx.info().await?;
        if info.node_id.is_empty() {
            return Err(CliError::NotInSwarm);
        }
        self.id = Some(info.node_id.clone());
        Ok(info.node_id)
    }
}

fn node_route(id: &str) -> String {
    path(routes::NODE, &[("node", &encode_segment(id))])
}

fn update_route(id: &str) -> String {
    path(routes::NODE_UPDATE, &[("node", &encode_segment(id))])
}

/// Runs `each` on every reference independently, printing failures as they happen.
async fn for_each_node<F>(ctx: &mut Ctx<'_>, references: &[String], mut each: F) -> Result<()>
where
    F: for<'a, 'b> AsyncFnMut(&'a mut Ctx<'b>, &'a mut SelfRef, &'a str) -> Result<()>,
{
    let mut me = SelfRef::default();
    let mut failed = 0;
    for reference in references {
        match each(ctx, &mut me, reference).await {
            Ok(()) => {}
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => {
                report(&e);
                failed += 1;
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::SomeFailed {
            failed,
            total: references.len(),
        })
    }
}

fn decode_node(route: &str, raw: &RawValue) -> Result<Node> {
    serde_json::from_str(raw.get()).map_err(|e| CliError::Decode {
        route: route.to_string(),
        detail: e.to_string(),
    })
}

/// `swarm node ls`.
pub async fn ls(ctx: &mut Ctx<'_>, args: LsArgs) -> Result<()> {
    let raws: Vec<Box<RawValue>> = ctx.client.get(routes::NODES).await?;
    let mut nodes = Vec::with_capacity(raws.len());
    for raw in raws {
        let node = decode_node(routes::NODES, &raw)?;
        if passes(&node, &args.filter) {
            nodes.push((node, raw));
        }
    }
    nodes.sort_by(|a, b| node_order(&a.0, &b.0));
    if args.quiet {
        let ids: String = nodes.iter().map(|(n, _)| format!("{}\n", n.id)).collect();
        return ctx.print(&ids);
    }
    match args.format {
        Format::Json => {
            let lines: String = nodes
                .iter()
                .map(|(_, raw)| reformat_json(raw.get(), None) + "\n")
                .collect();
            ctx.print(&lines)
        }
        Format::Human => {
            let me = ctx.info().await?;
            let nodes: Vec<Node> = nodes.into_iter().map(|(n, _)| n).collect();
            ctx.print(&node_table(&nodes, &me.node_id))
        }
    }
}

/// `swarm node inspect`.
pub async fn inspect(ctx: &mut Ctx<'_>, args: InspectArgs) -> Result<()> {
    let mut found: Vec<Box<RawValue>> = Vec::new();
    let result = for_each_node(ctx, &args.nodes, async |ctx, me, reference| {
        let id = me.resolve(ctx, reference).await?;
        let raw: Box<RawValue> = ctx.client.get(&node_route(&id)).await?;
        found.push(raw);
        Ok(())
    })
    .await;
    if let Err(e) = &result
        && is_fatal(e)
    {
        return result;
    }
    if args.pretty {
        let mut blocks = Vec::with_capacity(found.len());
        for raw in &found {
            blocks.push(node_pretty(&decode_node(routes::NODE, raw)?));
        }
        ctx.print(&blocks.join("\n"))?;
    } else {
        // Docker's layout: a JSON array, indented with four spaces, or compact with --format json.
        let array = format!(
            "[{}]",
            found.iter().map(|r| r.get()).collect::<Vec<_>>().join(",")
        );
        let indent = (args.format != Some(Format::Json)).then_some("    ");
        ctx.println(&reformat_json(&array, indent))?;
    }
    result
}

/// `swarm node promote` and `swarm node demote`.
async fn change_role(ctx: &mut Ctx<'_>, references: Vec<String>, role: NodeRole) -> Result<()> {
    for_each_node(ctx, &references, async |ctx, me, reference| {
        let id = me.resolve(ctx, reference).await?;
        let node: Node = ctx.client.get(&node_route(&id)).await?;
        if node.spec.role == role {
            return ctx.println(&format!("Node {reference} is already a {role}."));
        }
        let update = NodeUpdate {
            role: Some(role),
            ..NodeUpdate::default()
        };
        let _: IgnoredAny = ctx.client.post(&update_route(&id), &update).await?;
        match role {
            NodeRole::Manager => ctx.println(&format!(
                "Node {reference} promoted to a manager in the swarm."
            )),
            NodeRole::Worker => ctx.println(&format!("Manager {reference} demoted in the swarm.")),
        }
    })
    .await
}

/// `swarm node update`.
pub async fn update(ctx: &mut Ctx<'_>, args: UpdateArgs) -> Result<()> {
    let update = NodeUpdate {
        availability: args.availability,
        role: args.role,
        label_add: args.label_add,
        label_rm: args.label_rm,
    };
    let id = SelfRef::default().resolve(ctx, &args.node).await?;
    let _: IgnoredAny = ctx.client.post(&update_route(&id), &update).await?;
    ctx.println(&args.node)
}

/// `swarm node rm`.
pub async fn rm(ctx: &mut Ctx<'_>, args: RmArgs) -> Result<()> {
    let force = args.force;
    for_each_node(ctx, &args.nodes, async |ctx, me, reference| {
        let id = me.resolve(ctx, reference).await?;
        ctx.client
            .delete(&format!("{}?force={force}", node_route(&id)))
            .await?;
        ctx.println(reference)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::{NodeDescription, NodeSpec, NodeStatus};
    use std::collections::BTreeMap;

    fn node(id: &str, host: &str, role: NodeRole, labels: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            version: 1,
            created_at: 0,
            updated_at: 0,
            spec: NodeSpec {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                role,
                availability: Availability::Active,
            },
            description: NodeDescription {
                hostname: host.into(),
                ..Default::default()
            },
            status: NodeStatus::default(),
            role,
            raft_id: 0,
            control_addr: String::new(),
            data_port: 51820,
            manager_status: None,
            cert_expiry: 0,
            network_keys: Default::default(),
        }
    }

    fn f(s: &str) -> NodeFilter {
        NodeFilter::parse(s).unwrap()
    }

    #[test]
    fn filters_parse() {
        assert_eq!(f("id=ab"), NodeFilter::Id("ab".into()));
        assert_eq!(f("name=web"), NodeFilter::Name("web".into()));
        assert_eq!(f("role=worker"), NodeFilter::Role(NodeRole::Worker));
        assert_eq!(
            f("node.label=zone=a"),
            NodeFilter::Label {
                key: "zone".into(),
                value: Some("a".into())
            }
        );
        assert_eq!(
            f("label=ssd"),
            NodeFilter::Label {
                key: "ssd".into(),
                value: None
            }
        );
        for bad in ["role", "role=boss", "colour=red", "node.label="] {
            let e = NodeFilter::parse(bad).unwrap_err();
            assert_eq!(e.field, "--filter", "{bad}");
        }
    }

    #[test]
    fn filters_combine_like_docker() {
        let a = node("aaa1", "web1", NodeRole::Manager, &[("zone", "a")]);
        let b = node("bbb2", "web2", NodeRole::Worker, &[("zone", "b")]);
        let c = node("ccc3", "db1", NodeRole::Worker, &[]);
        let pick = |filters: &[NodeFilter]| -> Vec<&str> {
            [&a, &b, &c]
                .into_iter()
                .filter(|n| passes(n, filters))
                .map(|n| n.id.as_str())
                .collect()
        };
        assert_eq!(pick(&[]), ["aaa1", "bbb2", "ccc3"]);
        assert_eq!(pick(&[f("role=manager")]), ["aaa1"]);
        assert_eq!(pick(&[f("role=worker")]), ["bbb2", "ccc3"]);
        assert_eq!(pick(&[f("name=web")]), ["aaa1", "bbb2"]);
        assert_eq!(pick(&[f("id=bb"), f("id=cc")]), ["bbb2", "ccc3"]);
        assert_eq!(pick(&[f("name=web"), f("role=worker")]), ["bbb2"]);
        assert_eq!(pick(&[f("node.label=zone")]), ["aaa1", "bbb2"]);
        assert_eq!(pick(&[f("node.label=zone=b")]), ["bbb2"]);
        assert_eq!(
            pick(&[f("role=manager"), f("id=c"), f("role=worker")]),
            ["ccc3"]
        );
    }

    #[test]
    fn update_flags_are_validated_locally() {
        let e = parse_availability("drained").unwrap_err();
        assert_eq!(e.field, "--availability");
        assert_eq!(label_add("=x").unwrap_err().field, "--label-add");
        assert_eq!(label_rm("a b").unwrap_err().field, "--label-rm");
        assert_eq!(parse_role("boss").unwrap_err().field, "--role");
        assert_eq!(label_add("zone=a").unwrap(), "zone=a");
    }

    #[test]
    fn node_references_are_encoded_in_routes() {
        assert_eq!(node_route("abc"), "/v1/nodes/abc");
        assert_eq!(update_route("a/b"), "/v1/nodes/a%2Fb/update");
    }
}
