//! What `container ls`, `image ls` and the `logs` verbs print.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use mesh_api::api::ImageSummary;
use mesh_api::{ContainerSpec, Task, TaskState};

use super::service::{health_suffix, node_column, table_id};
use super::{Table, ellipsis, format_size_decimal, human_duration, parse_rfc3339_ms};

/// Longest COMMAND cell of `container ls` without `--no-trunc` (quotes excluded).
pub const MAX_COMMAND_LEN: usize = 20;

/// The command a container runs as far as its spec says: the entrypoint given, then the
/// arguments (empty when both come from the image).
pub fn container_command(spec: &ContainerSpec) -> String {
    spec.command
        .iter()
        .flatten()
        .chain(&spec.args)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The COMMAND column: the command quoted, cut to [`MAX_COMMAND_LEN`] characters unless
/// `no_trunc`, like docker.
pub fn command_column(spec: &ContainerSpec, no_trunc: bool) -> String {
    let command = container_command(spec);
    let command = if no_trunc {
        command
    } else {
        ellipsis(&command, MAX_COMMAND_LEN)
    };
    format!("{command:?}")
}

/// The STATUS column of `container ls`, docker's words: `Up 5 seconds (healthy)`,
/// `Exited (0) 2 minutes ago`, `Created` before it starts, and the state itself for a
/// container that ended without an exit code (`Rejected 3 seconds ago`).
pub fn container_status(task: &Task, now_ms: u64) -> String {
    let since = now_ms.saturating_sub(task.status.timestamp);
    let state = task.status.state;
    match state {
        TaskState::Running => format!(
            "Up {}{}",
            human_duration(since),
            health_suffix(task.status.health)
        ),
        s if s.is_terminal() => match task.status.exit_code {
            Some(code) => format!("Exited ({code}) {} ago", human_duration(since)),
            None => format!(
                "{} {} ago",
                super::capitalize(state.as_str()),
                human_duration(since)
            ),
        },
        TaskState::Starting => "Starting".to_string(),
        _ => "Created".to_string(),
    }
}

/// The order of `container ls`: the newest first.
pub fn container_order(x: &Task, y: &Task) -> Ordering {
    y.created_at
        .cmp(&x.created_at)
        .then_with(|| x.id.cmp(&y.id))
}

/// The `container ls` table: `CONTAINER ID  IMAGE  COMMAND  CREATED  STATUS  NODE
/// NAMES`, in the order given (see [`container_order`]).
pub fn container_table(
    tasks: &[Task],
    node_names: &BTreeMap<String, String>,
    now_ms: u64,
    no_trunc: bool,
) -> String {
    let mut table = Table::new([
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "NODE",
        "NAMES",
    ]);
    for t in tasks {
        table.row([
            table_id(&t.id, no_trunc).to_string(),
            t.spec.container.image.clone(),
            command_column(&t.spec.container, no_trunc),
            format!(
                "{} ago",
                human_duration(now_ms.saturating_sub(t.created_at))
            ),
            container_status(t, now_ms),
            node_column(node_names, &t.node_id),
            t.container_name(),
        ]);
    }
    table.render()
}

/// `(repository, tag)` of a `name:tag` reference: the tag follows the last `:` after the
/// last `/` (a registry port is no tag); `latest` is not assumed.
pub fn split_reference(reference: &str) -> (&str, &str) {
    let name_start = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[name_start..].rfind(':') {
        Some(i) => (
            &reference[..name_start + i],
            &reference[name_start + i + 1..],
        ),
        None => (reference, "<none>"),
    }
}

/// An image ID as `image ls` prints it: without `sha256:`, 12 hexadecimal digits unless
/// `no_trunc` (then whole, with its algorithm).
pub fn image_id(id: &str, no_trunc: bool) -> &str {
    if no_trunc {
        return id;
    }
    let hex = id.split_once(':').map_or(id, |(_, hex)| hex);
    hex.get(..12).unwrap_or(hex)
}

/// The order of `image ls`: the newest first, then by reference.
pub fn image_order(x: &ImageSummary, y: &ImageSummary) -> Ordering {
    let created = |i: &ImageSummary| parse_rfc3339_ms(&i.created).unwrap_or(0);
    created(y)
        .cmp(&created(x))
        .then_with(|| x.repo_tags.cmp(&y.repo_tags))
        .then_with(|| x.id.cmp(&y.id))
}

/// The `image ls` table: `REPOSITORY  TAG  IMAGE ID  CREATED  SIZE`, one row per tag
/// (`<none>  <none>` for an untagged image), in the order given (see [`image_order`]).
pub fn image_table(images: &[ImageSummary], now_ms: u64, no_trunc: bool) -> String {
    let mut table = Table::new(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
    for image in images {
        let created = match parse_rfc3339_ms(&image.created) {
            Some(ms) => format!("{} ago", human_duration(now_ms.saturating_sub(ms))),
            None => "N/A".to_string(),
        };
        let mut tags: Vec<(&str, &str)> =
            image.repo_tags.iter().map(|t| split_reference(t)).collect();
        if tags.is_empty() {
            tags.push(("<none>", "<none>"));
        }
        for (repository, tag) in tags {
            table.row([
                repository.to_string(),
                tag.to_string(),
                image_id(&image.id, no_trunc).to_string(),
                created.clone(),
                format_size_decimal(image.size),
            ]);
        }
    }
    table.render()
}

/// What `image load` prints for the images it loaded: `Loaded image: NAME:TAG` per tag,
/// or `Loaded image ID: sha256:…` for an image without one (docker's wording).
pub fn loaded_message(images: &[ImageSummary]) -> String {
    let mut out = String::new();
    for image in images {
        if image.repo_tags.is_empty() {
            out.push_str(&format!("Loaded image ID: {}\n", image.id));
        }
        for tag in &image.repo_tags {
            out.push_str(&format!("Loaded image: {tag}\n"));
        }
    }
    out
}

/// What `image rm` prints for an image it removed: `Deleted: ID` when it was named by
/// its ID, `Untagged: NAME:TAG` when by a reference (docker's words).
pub fn removed_message(reference: &str) -> String {
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    let is_id = reference.starts_with("sha256:")
        || (hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if is_id {
        format!("Deleted: {reference}")
    } else {
        format!("Untagged: {reference}")
    }
}

/// How a task's log lines are prefixed by `service logs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefixStyle {
    /// Leave the task ID out (`--no-task-ids`).
    pub no_task_ids: bool,
    /// Whole task IDs (`--no-trunc`).
    pub no_trunc: bool,
    /// Digits of the largest slot: shorter slots are padded so that the `|` align.
    pub slot_width: usize,
}

/// The prefix of a task's log lines, docker's: `web.1.abcdef123456@host1    | `
/// (`web.1@host1    | ` with `--no-task-ids`; a global task is named after its node).
pub fn log_prefix(task: &Task, node_name: &str, style: PrefixStyle) -> String {
    let mut name = task.display_name();
    if !style.no_task_ids {
        name.push('.');
        name.push_str(table_id(&task.id, style.no_trunc));
    }
    let digits = task.slot.max(1).to_string().len();
    let pad = if task.slot > 0 {
        style.slot_width.saturating_sub(digits)
    } else {
        0
    };
    format!("{name}@{node_name}{}    | ", " ".repeat(pad))
}

/// Cuts a stream of output into whole lines: output arrives in chunks that may end in the
/// middle of a line, which is kept until its end arrives (or the stream ends).
#[derive(Debug, Clone, Default)]
pub struct LineSplitter {
    partial: String,
}

impl LineSplitter {
    /// Adds output; returns the lines it completed, without their `\n` (nor a `\r`
    /// before it).
    pub fn push(&mut self, data: &str) -> Vec<String> {
        self.partial.push_str(data);
        let Some(last) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(last + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        complete
            .split_terminator('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
            .collect()
    }

    /// The stream ended: the unfinished last line, if any.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.partial);
        (!rest.is_empty()).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::{TaskSpec, TaskStatus};

    const NOW: u64 = 1_714_566_600_000;

    fn container(id: &str, name: &str, created: u64, state: TaskState) -> Task {
        Task {
            id: id.into(),
            version: 1,
            created_at: created,
            updated_at: created,
            service_id: String::new(),
            service_name: name.into(),
            slot: 0,
            node_id: "n1aaaaaaaaaaaaaaaaaaaaaaa".into(),
            spec: TaskSpec {
                container: ContainerSpec {
                    image: "meshd-test:latest".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            spec_version: 0,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                timestamp: created,
                ..Default::default()
            },
            networks: Vec::new(),
            host_ports: Vec::new(),
        }
    }

    #[test]
    fn commands_are_quoted_and_cut() {
        let mut spec = ContainerSpec::default();
        assert_eq!(command_column(&spec, false), "\"\"");
        spec.command = Some(vec!["/bin/sh".into(), "-c".into()]);
        spec.args = vec!["echo \"hi\" && sleep 3600".into()];
        assert_eq!(command_column(&spec, false), "\"/bin/sh -c echo \\\"hi…\"");
        assert_eq!(
            command_column(&spec, true),
            "\"/bin/sh -c echo \\\"hi\\\" && sleep 3600\""
        );
    }

    #[test]
    fn container_table_has_dockers_columns() {
        let mut up = container(
            "c1up00000000000000000000a",
            "web-test",
            NOW - 120_000,
            TaskState::Running,
        );
        up.status.timestamp = NOW - 90_000;
        up.status.health = mesh_api::Health::Healthy;
        up.spec.container.args = vec!["sleep".into(), "1d".into()];
        let mut done = container(
            "c2ex00000000000000000000b",
            "job",
            NOW - 3_600_000,
            TaskState::Complete,
        );
        done.status.timestamp = NOW - 5_000;
        done.status.exit_code = Some(0);
        done.node_id = "n9zzzzzzzzzzzzzzzzzzzzzzz".into();
        let mut rejected = container(
            "c3rj00000000000000000000c",
            "bad",
            NOW - 10_000,
            TaskState::Rejected,
        );
        rejected.status.timestamp = NOW - 2_000;
        let created = container(
            "c4cr00000000000000000000d",
            "new",
            NOW - 500,
            TaskState::Preparing,
        );
        let mut tasks = vec![done, up, rejected, created];
        tasks.sort_by(container_order);
        let nodes: BTreeMap<String, String> =
            [("n1aaaaaaaaaaaaaaaaaaaaaaa".to_string(), "host1".to_string())].into();
        assert_eq!(
            container_table(&tasks, &nodes, NOW, false),
            "\
CONTAINER ID   IMAGE               COMMAND      CREATED                  STATUS                        NODE                        NAMES
c4cr00000000   meshd-test:latest   \"\"           Less than a second ago   Created                       host1                       new
c3rj00000000   meshd-test:latest   \"\"           10 seconds ago           Rejected 2 seconds ago        host1                       bad
c1up00000000   meshd-test:latest   \"sleep 1d\"   2 minutes ago            Up About a minute (healthy)   host1                       web-test
c2ex00000000   meshd-test:latest   \"\"           About an hour ago        Exited (0) 5 seconds ago      n9zzzzzzzzzzzzzzzzzzzzzzz   job
"
        );
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(
            split_reference("meshd-test:latest"),
            ("meshd-test", "latest")
        );
        assert_eq!(
            split_reference("registry:5000/team/app:v2"),
            ("registry:5000/team/app", "v2")
        );
        assert_eq!(
            split_reference("registry:5000/team/app"),
            ("registry:5000/team/app", "<none>")
        );
    }

    #[test]
    fn image_table_has_dockers_columns() {
        let mut images = vec![
            ImageSummary {
                id: "sha256:0123456789abcdef0123456789abcdef".into(),
                repo_tags: vec!["meshd-test:latest".into(), "meshd-test:v1".into()],
                size: 7_800_000,
                created: "2024-05-01T12:29:00Z".into(),
            },
            ImageSummary {
                id: "sha256:fedcba9876543210fedcba9876543210".into(),
                repo_tags: Vec::new(),
                size: 1_234,
                created: String::new(),
            },
            ImageSummary {
                id: "sha256:aaaaaaaaaaaabbbbbbbbbbbbcccccccc".into(),
                repo_tags: vec!["tools:1.0".into()],
                size: 142_300_000,
                created: "2024-05-01T10:30:00+00:00".into(),
            },
        ];
        images.sort_by(image_order);
        assert_eq!(
            image_table(&images, NOW, false),
            "\
REPOSITORY   TAG       IMAGE ID       CREATED              SIZE
meshd-test   latest    0123456789ab   About a minute ago   7.8MB
meshd-test   v1        0123456789ab   About a minute ago   7.8MB
tools        1.0       aaaaaaaaaaaa   2 hours ago          142MB
<none>       <none>    fedcba987654   N/A                  1.23kB
"
        );
        assert_eq!(
            loaded_message(&images),
            "Loaded image: meshd-test:latest\nLoaded image: meshd-test:v1\nLoaded image: tools:1.0\nLoaded image ID: sha256:fedcba9876543210fedcba9876543210\n"
        );
        assert_eq!(image_id("sha256:abc", false), "abc");
        assert_eq!(
            removed_message("meshd-test:latest"),
            "Untagged: meshd-test:latest"
        );
        assert_eq!(removed_message("0123456789ab"), "Deleted: 0123456789ab");
        assert_eq!(removed_message("sha256:0123"), "Deleted: sha256:0123");
        assert_eq!(image_id("sha256:abc", true), "sha256:abc");
    }

    #[test]
    fn log_prefixes_match_docker() {
        let mut t = container("abcdef1234567890abcdefghi", "web", NOW, TaskState::Running);
        t.service_id = "svc".into();
        t.slot = 1;
        let style = PrefixStyle {
            slot_width: 2,
            ..Default::default()
        };
        assert_eq!(
            log_prefix(&t, "host1", style),
            "web.1.abcdef123456@host1     | "
        );
        t.slot = 10;
        assert_eq!(
            log_prefix(&t, "host1", style),
            "web.10.abcdef123456@host1    | "
        );
        let bare = PrefixStyle {
            no_task_ids: true,
            slot_width: 1,
            ..Default::default()
        };
        t.slot = 3;
        assert_eq!(log_prefix(&t, "host2", bare), "web.3@host2    | ");
        let whole = PrefixStyle {
            no_trunc: true,
            slot_width: 1,
            ..Default::default()
        };
        assert_eq!(
            log_prefix(&t, "host2", whole),
            "web.3.abcdef1234567890abcdefghi@host2    | "
        );
        // A global task is named after its node.
        t.slot = 0;
        t.node_id = "n1".into();
        assert_eq!(log_prefix(&t, "host1", bare), "web.n1@host1    | ");
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let mut s = LineSplitter::default();
        assert!(s.push("").is_empty());
        assert_eq!(s.push("one\ntw"), ["one"]);
        assert!(s.push("o").is_empty());
        assert_eq!(s.push("\r\nthree\n\nfour"), ["two", "three", ""]);
        assert_eq!(s.finish().as_deref(), Some("four"));
        assert_eq!(s.finish(), None);
    }
}
