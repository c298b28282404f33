//! What the task verbs share: the routes of tasks and their logs, the node names tables
//! print, and the readers of task output behind `service logs`, `container logs` and
//! `swarm run`.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_api::api::{LogChunk, LogsQuery, TaskQuery, path, routes};
use mesh_api::{Node, Task, ValidationError};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tracing::debug;

use super::Ctx;
use crate::client::encode_segment;
use crate::error::{CliError, Result};
use crate::format::container::LineSplitter;

/// Time between two polls of a followed log (`-f`).
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// `GET /v1/tasks` with `query` as its query string.
pub fn tasks_route(query: &TaskQuery) -> String {
    let mut params: Vec<String> = Vec::new();
    if let Some(s) = &query.service {
        params.push(format!("service={}", encode_segment(s)));
    }
    if let Some(n) = &query.node {
        params.push(format!("node={}", encode_segment(n)));
    }
    if query.containers {
        params.push("containers=true".to_string());
    }
    if query.running {
        params.push("running=true".to_string());
    }
    if params.is_empty() {
        routes::TASKS.to_string()
    } else {
        format!("{}?{}", routes::TASKS, params.join("&"))
    }
}

/// The route of a task (or container) as the user named it.
pub fn task_route(reference: &str) -> String {
    path(routes::TASK, &[("task", &encode_segment(reference))])
}

/// `GET /v1/tasks/{task}/logs` from `query.offset`, with `tail` when given.
pub fn logs_route(task_id: &str, query: LogsQuery) -> String {
    let mut route = format!(
        "{}?offset={}",
        path(routes::TASK_LOGS, &[("task", &encode_segment(task_id))]),
        query.offset
    );
    if let Some(tail) = query.tail {
        route.push_str(&format!("&tail={tail}"));
    }
    route
}

/// `--tail`: the last N lines, or all of them (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tail(pub Option<u64>);

/// Parses `--tail`: a number of lines, or `all`.
pub fn parse_tail(s: &str) -> std::result::Result<Tail, ValidationError> {
    match s.trim() {
        "all" => Ok(Tail(None)),
        n => n.parse::<u64>().map(|n| Tail(Some(n))).map_err(|_| {
            ValidationError::new(
                "--tail",
                format!("{s:?} is not a number of lines"),
                "give a number of lines from the end, e.g. --tail 20, or --tail all",
            )
        }),
    }
}

/// Decodes one element of a list answer, keeping the raw JSON beside it for `--format json`.
pub fn decode_raw<T: DeserializeOwned>(route: &str, raw: &RawValue) -> Result<T> {
    serde_json::from_str(raw.get()).map_err(|e| CliError::Decode {
        route: route.to_string(),
        detail: e.to_string(),
    })
}

/// `GET` a list, each element decoded and kept with its raw JSON.
pub async fn get_list<T: DeserializeOwned>(
    ctx: &Ctx<'_>,
    route: &str,
) -> Result<Vec<(T, Box<RawValue>)>> {
    let raws: Vec<Box<RawValue>> = ctx.client.get(route).await?;
    raws.into_iter()
        .map(|raw| Ok((decode_raw(route, &raw)?, raw)))
        .collect()
}

/// Node ID → host name, for the NODE columns and log prefixes. Best effort: without the
/// node list (e.g. asked on a worker) the IDs are printed instead.
pub async fn node_names(ctx: &Ctx<'_>) -> BTreeMap<String, String> {
    match ctx.client.get::<Vec<Node>>(routes::NODES).await {
        Ok(nodes) => nodes
            .into_iter()
            .map(|n| (n.id, n.description.hostname))
            .collect(),
        Err(e) => {
            debug!(error = %e, "no node names; printing node IDs");
            BTreeMap::new()
        }
    }
}

/// The output of one task being read, from its beginning (or its last `tail` lines).
#[derive(Debug, Clone)]
pub struct TaskLog {
    /// The task (refreshed while following).
    pub task: Task,
    /// Printed before each line.
    pub prefix: String,
    offset: u64,
    tail: Option<u64>,
    started: bool,
    lines: LineSplitter,
    /// No more output will come.
    pub finished: bool,
}

impl TaskLog {
    /// A reader of `task`'s output that starts with its last `tail` lines (all with `None`).
    pub fn new(task: Task, prefix: String, tail: Option<u64>) -> Self {
        TaskLog {
            task,
            prefix,
            offset: 0,
            tail,
            started: false,
            lines: LineSplitter::default(),
            finished: false,
        }
    }

    /// Fetches the next piece of output and prints its whole lines. Returns whether any
    /// output came; sets [`TaskLog::finished`] (after printing a last unfinished line)
    /// when the task has ended and everything was read.
    pub async fn poll(&mut self, ctx: &mut Ctx<'_>) -> Result<bool> {
        let query = LogsQuery {
            offset: self.offset,
            tail: if self.started { None } else { self.tail },
        };
        let chunk: LogChunk = ctx.client.get(&logs_route(&self.task.id, query)).await?;
        self.started = true;
        let got = !chunk.data.is_empty();
        self.offset = chunk.next_offset.max(self.offset);
        let mut text = String::new();
        for line in self.lines.push(&chunk.data) {
            text.push_str(&self.prefix);
            text.push_str(&line);
            text.push('\n');
        }
        if chunk.finished && !got {
            if let Some(last) = self.lines.finish() {
                text.push_str(&self.prefix);
                text.push_str(&last);
                text.push('\n');
            }
            self.finished = true;
        }
        ctx.print(&text)?;
        Ok(got)
    }

    /// Prints everything there is now, then a last unfinished line.
    pub async fn read_all(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        while !self.finished && self.poll(ctx).await? {}
        if let Some(last) = self.lines.finish() {
            ctx.print(&format!("{}{last}\n", self.prefix))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_queries_become_query_strings() {
        assert_eq!(tasks_route(&TaskQuery::default()), "/v1/tasks");
        assert_eq!(
            tasks_route(&TaskQuery {
                service: Some("web app".into()),
                running: true,
                ..Default::default()
            }),
            "/v1/tasks?service=web%20app&running=true"
        );
        assert_eq!(
            tasks_route(&TaskQuery {
                containers: true,
                node: Some("host1".into()),
                ..Default::default()
            }),
            "/v1/tasks?node=host1&containers=true"
        );
    }

    #[test]
    fn log_routes_carry_the_offset_and_tail() {
        assert_eq!(
            logs_route("abc", LogsQuery::default()),
            "/v1/tasks/abc/logs?offset=0"
        );
        assert_eq!(
            logs_route(
                "a/b",
                LogsQuery {
                    offset: 12,
                    tail: Some(5)
                }
            ),
            "/v1/tasks/a%2Fb/logs?offset=12&tail=5"
        );
        assert_eq!(task_route("web.1"), "/v1/tasks/web.1");
    }

    #[test]
    fn tails_parse() {
        assert_eq!(parse_tail("all"), Ok(Tail(None)));
        assert_eq!(parse_tail("20"), Ok(Tail(Some(20))));
        for bad in ["-1", "ten", ""] {
            assert_eq!(parse_tail(bad).unwrap_err().field, "--tail", "{bad}");
        }
    }
}
