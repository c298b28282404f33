//! `swarm service`, `swarm run`, `swarm container` and `swarm image` against a fake meshd
//! that keeps services, tasks, their output and images in memory: each verb sends the
//! right requests, prints docker's text, and fails the way docker does.

// The fake daemon's helpers: a failure to set it up is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use mesh_api::api::{ErrorKind, ImageLoadRequest, ImageSummary, RunRequest};
use mesh_api::service::DEFAULT_STOP_GRACE_MS;
use mesh_api::{
    ContainerSpec, FailureAction, PortConfig, Protocol, PublishMode, Service, ServiceMode,
    ServiceSpec, ServiceUpdate, ServiceView, Task, TaskSpec, TaskState, TaskStatus, UpdateConfig,
    UpdateOrder,
};

const WEB_ID: &str = "svcweb0000000000000000000";
const DB_ID: &str = "svcdb00000000000000000000";
const NEW_ID: &str = "svcnew0000000000000000000";
const HOUR: u64 = 3_600_000;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn service(id: &str, name: &str, replicas: u64) -> Service {
    Service {
        id: id.into(),
        version: 4,
        created_at: now() - 5 * HOUR,
        updated_at: now() - 5 * HOUR,
        spec: ServiceSpec {
            name: name.into(),
            task_template: TaskSpec {
                container: ContainerSpec {
                    image: "meshd-test:latest".into(),
                    stop_grace_period_ms: DEFAULT_STOP_GRACE_MS,
                    ..Default::default()
                },
                ..Default::default()
            },
            mode: ServiceMode::Replicated { replicas },
            ..Default::default()
        },
        spec_version: 2,
        previous_spec: None,
        previous_spec_version: 0,
        update_status: None,
        ports: Vec::new(),
        virtual_ips: Vec::new(),
    }
}

fn task(id: &str, svc: &Service, slot: u64, node: &str, state: TaskState) -> Task {
    let desired = if state.is_terminal() {
        TaskState::Shutdown
    } else {
        TaskState::Running
    };
    Task {
        id: id.into(),
        version: 9,
        created_at: now() - 3 * HOUR,
        updated_at: now() - 3 * HOUR,
        service_id: svc.id.clone(),
        service_name: svc.spec.name.clone(),
        slot,
        node_id: node.into(),
        spec: svc.spec.task_template.clone(),
        spec_version: svc.spec_version,
        desired_state: desired,
        status: TaskStatus {
            state,
            timestamp: now() - 3 * HOUR,
            ..Default::default()
        },
        networks: Vec::new(),
        host_ports: Vec::new(),
    }
}

fn container(id: &str, name: &str, state: TaskState, exit_code: Option<i32>) -> Task {
    Task {
        id: id.into(),
        version: 9,
        created_at: now() - 2 * HOUR,
        updated_at: now() - 2 * HOUR,
        service_id: String::new(),
        service_name: name.into(),
        slot: 0,
        node_id: SELF_ID.into(),
        spec: TaskSpec {
            container: ContainerSpec {
                image: "meshd-test:latest".into(),
                args: vec!["sleep".into(), "1d".into()],
                ..Default::default()
            },
            ..Default::default()
        },
        spec_version: 0,
        desired_state: TaskState::Running,
        status: TaskStatus {
            state,
            timestamp: now() - 3 * HOUR,
            exit_code,
            ..Default::default()
        },
        networks: Vec::new(),
        host_ports: Vec::new(),
    }
}

/// What the fake daemon holds.
struct World {
    services: Vec<Service>,
    tasks: Vec<Task>,
    /// Task ID → (all its output, whether it ended).
    output: BTreeMap<String, (String, bool)>,
    images: Vec<ImageSummary>,
    /// `GET /v1/tasks` answers so far.
    task_lists: usize,
    /// After this many `GET /v1/tasks`, the tasks of `web` run (for `--detach=false`).
    converge_after: Option<usize>,
    /// After this many `GET /v1/tasks`, `web` is gone (ends `service logs -f`).
    remove_web_after: Option<usize>,
}

fn world() -> World {
    let web = service(WEB_ID, "web", 3);
    let mut db = service(DB_ID, "db", 1);
    db.spec.task_template.container.image = "meshd-test:v2".into();
    db.spec.endpoint_spec.ports = vec![PortConfig {
        protocol: Protocol::Tcp,
        target_port: 5432,
        published_port: 5432,
        publish_mode: PublishMode::Host,
        proxy_protocol: false,
    }];
    let mut web_ingress = web.clone();
    web_ingress.ports = vec![PortConfig {
        protocol: Protocol::Tcp,
        target_port: 80,
        published_port: 8080,
        publish_mode: PublishMode::Ingress,
        proxy_protocol: false,
    }];
    let mut failed = task(
        "t1old0000000000000000000a",
        &web,
        1,
        SELF_ID,
        TaskState::Failed,
    );
    failed.created_at -= HOUR;
    failed.status.err = "task: non-zero exit (137): killed".into();
    let mut pending = task("t3pen0000000000000000000c", &web, 3, "", TaskState::Pending);
    pending.status.message = "no suitable node (1 node is drained)".into();
    let mut db1 = task(
        "d1run0000000000000000000e",
        &db,
        1,
        WORKER9_ID,
        TaskState::Running,
    );
    db1.host_ports = vec![5432];
    let tasks = vec![
        task(
            "t1new0000000000000000000b",
            &web,
            1,
            SELF_ID,
            TaskState::Running,
        ),
        failed,
        pending,
        task(
            "t2run0000000000000000000d",
            &web,
            2,
            WORKER9_ID,
            TaskState::Running,
        ),
        db1,
        container("c1run0000000000000000000f", "job", TaskState::Running, None),
        container(
            "c2end0000000000000000000g",
            "old-job",
            TaskState::Complete,
            Some(0),
        ),
    ];
    let output = [
        (
            "t1new0000000000000000000b",
            "hello from 1\nsecond line\n",
            false,
        ),
        ("t1old0000000000000000000a", "crashed\n", true),
        (
            "t2run0000000000000000000d",
            "hello from 2\nno newline",
            false,
        ),
        (
            "c1run0000000000000000000f",
            "job line 1\njob line 2\njob line 3\n",
            false,
        ),
    ]
    .into_iter()
    .map(|(id, text, done)| (id.to_string(), (text.to_string(), done)))
    .collect();
    World {
        services: vec![web_ingress, db],
        tasks,
        output,
        images: vec![ImageSummary {
            id: "sha256:0123456789abcdef0123456789abcdef".into(),
            repo_tags: vec!["meshd-test:latest".into()],
            size: 7_800_000,
            created: "2024-05-01T12:30:00Z".into(),
        }],
        task_lists: 0,
        converge_after: None,
        remove_web_after: None,
    }
}

fn ok<T: serde::Serialize>(value: &T) -> (u16, String) {
    (200, serde_json::to_string(value).unwrap())
}

fn query(uri: &str) -> BTreeMap<String, String> {
    uri.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%20", " ")))
        .collect()
}

fn view(w: &World, s: &Service) -> ServiceView {
    let wanted: Vec<&Task> = w
        .tasks
        .iter()
        .filter(|t| t.service_id == s.id && t.desired_state == TaskState::Running)
        .collect();
    ServiceView {
        service: s.clone(),
        running_tasks: wanted
            .iter()
            .filter(|t| t.status.state == TaskState::Running)
            .count() as u64,
        desired_tasks: s.replicas().unwrap_or(wanted.len() as u64),
    }
}

fn find_service<'a>(w: &'a World, reference: &str) -> Option<&'a Service> {
    w.services
        .iter()
        .find(|s| s.id == reference || s.spec.name == reference || s.id.starts_with(reference))
}

fn find_task<'a>(w: &'a World, reference: &str) -> Option<&'a Task> {
    w.tasks.iter().find(|t| {
        t.id == reference
            || (t.service_id.is_empty() && t.service_name == reference)
            || (reference.len() >= 4 && t.id.starts_with(reference))
    })
}

/// Output from `offset`, at most 8 bytes at a time (so that lines arrive in pieces), or
/// the last `tail` lines.
fn chunk(text: &str, done: bool, q: &BTreeMap<String, String>) -> (u16, String) {
    let mut offset: usize = q.get("offset").map_or(0, |o| o.parse().unwrap());
    if offset == 0
        && let Some(tail) = q.get("tail")
    {
        let tail: usize = tail.parse().unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        offset = lines[..lines.len().saturating_sub(tail)]
            .iter()
            .map(|l| l.len())
            .sum();
    }
    let end = (offset + 8).min(text.len());
    let data = &text[offset..end];
    ok(&mesh_api::api::LogChunk {
        data: data.to_string(),
        next_offset: end as u64,
        finished: done && end == text.len(),
    })
}

fn handle(w: &mut World, req: &Recorded) -> (u16, String) {
    let path = req.uri.split('?').next().unwrap_or_default();
    let q = query(&req.uri);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let no_service = |s: &str| {
        error(
            ErrorKind::NotFound,
            &format!("no such service: {s}; `swarm service ls` lists them"),
        )
    };
    let no_task = |t: &str| {
        error(
            ErrorKind::NotFound,
            &format!("no such task or container: {t}"),
        )
    };
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "nodes"]) => ok(&nodes()),
        ("GET", ["v1", "networks"]) => ok(&networks()),
        ("GET", ["v1", "services"]) => {
            let views: Vec<ServiceView> = w.services.iter().map(|s| view(w, s)).collect();
            ok(&views)
        }
        ("POST", ["v1", "services"]) => {
            let spec: ServiceSpec = req.json();
            if let Err(e) = spec.validate() {
                return error(ErrorKind::InvalidArgument, &e.to_string());
            }
            let mut s = service(NEW_ID, &spec.name, 0);
            s.spec = spec;
            w.services.push(s.clone());
            ok(&s)
        }
        ("GET", ["v1", "services", s]) => match find_service(w, s) {
            Some(svc) => ok(&view(w, svc)),
            None => no_service(s),
        },
        ("DELETE", ["v1", "services", s]) => match find_service(w, s) {
            Some(_) => (200, "{}".into()),
            None => no_service(s),
        },
        ("POST", ["v1", "services", s, "update"]) => {
            let Some(svc) = find_service(w, s).cloned() else {
                return no_service(s);
            };
            let u: ServiceUpdate = req.json();
            let mut next = svc.clone();
            if !u.rollback {
                match u.apply(&svc.spec) {
                    Ok(spec) => next.spec = spec,
                    Err(e) => return error(ErrorKind::InvalidArgument, &e.to_string()),
                }
            }
            ok(&next)
        }
        ("GET", ["v1", "tasks"]) => {
            w.task_lists += 1;
            if w.remove_web_after.is_some_and(|n| w.task_lists > n) {
                return no_service("web");
            }
            if w.converge_after.is_some_and(|n| w.task_lists > n) {
                for t in &mut w.tasks {
                    if t.service_id == NEW_ID {
                        t.status.state = TaskState::Running;
                    }
                }
            }
            let service_id = match q.get("service") {
                Some(s) => match find_service(w, s) {
                    Some(svc) => Some(svc.id.clone()),
                    None => return no_service(s),
                },
                None => None,
            };
            let list: Vec<&Task> = w
                .tasks
                .iter()
                .filter(|t| service_id.as_ref().is_none_or(|id| &t.service_id == id))
                .filter(|t| !q.contains_key("containers") || t.service_id.is_empty())
                .filter(|t| !q.contains_key("running") || t.desired_state == TaskState::Running)
                .collect();
            ok(&list)
        }
        ("GET", ["v1", "tasks", t]) => match find_task(w, t) {
            Some(task) => ok(task),
            None => no_task(t),
        },
        ("GET", ["v1", "tasks", t, "logs"]) => {
            let Some(task) = find_task(w, t) else {
                return no_task(t);
            };
            match w.output.get(&task.id) {
                Some((text, done)) => chunk(text, *done, &q),
                None => error(
                    ErrorKind::NotFound,
                    &format!("task {} has no output on its node", task.id),
                ),
            }
        }
        ("POST", ["v1", "containers"]) => {
            let r: RunRequest = req.json();
            let name = r.name.unwrap_or_else(|| "c-generated".into());
            let mut c = container("c9new0000000000000000000h", &name, TaskState::Pending, None);
            c.spec = r.spec;
            let (exit_code, state, text) = match c.spec.container.args.first().map(String::as_str) {
                Some("fail") => (Some(3), TaskState::Failed, "about to fail\nbye"),
                Some("reject") => (None, TaskState::Rejected, ""),
                _ => (Some(0), TaskState::Complete, "ok\n"),
            };
            let mut ended = c.clone();
            ended.status.state = state;
            ended.status.exit_code = exit_code;
            if state == TaskState::Rejected {
                ended.status.err = "no such image: nope:1".into();
            } else {
                w.output.insert(c.id.clone(), (text.to_string(), true));
            }
            w.tasks.push(ended);
            ok(&c)
        }
        ("DELETE", ["v1", "containers", c]) | ("POST", ["v1", "containers", c, "stop"]) => {
            match find_task(w, c) {
                Some(_) => (200, "{}".into()),
                None => no_task(c),
            }
        }
        ("GET", ["v1", "images"]) => ok(&w.images),
        ("POST", ["v1", "images", "load"]) => {
            let r: ImageLoadRequest = req.json();
            if !r.path.starts_with('/') {
                return error(ErrorKind::InvalidArgument, "the path must be absolute");
            }
            ok(&vec![ImageSummary {
                id: "sha256:feedfeedfeedfeedfeedfeed".into(),
                repo_tags: vec!["meshd-test:latest".into(), "meshd-test:v2".into()],
                size: 1_000,
                created: String::new(),
            }])
        }
        ("DELETE", ["v1", "images", i]) => {
            let i = i.replace("%3A", ":");
            if w.images.iter().any(|x| x.repo_tags.contains(&i)) {
                (200, "{}".into())
            } else {
                error(ErrorKind::NotFound, &format!("no such image: {i}"))
            }
        }
        _ => error(ErrorKind::NotFound, &format!("no route {}", req.line())),
    }
}

fn daemon_with(w: World) -> (FakeDaemon, Arc<Mutex<World>>) {
    let world = Arc::new(Mutex::new(w));
    let shared = world.clone();
    let d = FakeDaemon::unix(move |req| handle(&mut shared.lock().unwrap(), req));
    (d, world)
}

fn daemon() -> FakeDaemon {
    daemon_with(world()).0
}

#[test]
fn service_create_posts_the_spec_and_prints_the_id() {
    let d = daemon();
    let o = d.run(&[
        "service",
        "create",
        "--name",
        "api",
        "--replicas",
        "2",
        "-p",
        "8080:80",
        "--update-parallelism",
        "2",
        "--update-order",
        "start-first",
        "meshd-test:latest",
        "sh",
        "-c",
        "echo hi",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{NEW_ID}\n"));
    let reqs = d.requests();
    assert_eq!(d.lines(), ["POST /v1/services"]);
    let spec: ServiceSpec = reqs[0].json();
    assert_eq!(spec.name, "api");
    assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 2 });
    assert_eq!(spec.task_template.container.command, None);
    assert_eq!(spec.task_template.container.args, ["sh", "-c", "echo hi"]);
    assert_eq!(spec.endpoint_spec.ports[0].published_port, 8080);
    assert_eq!(
        spec.update_config,
        UpdateConfig {
            parallelism: 2,
            order: UpdateOrder::StartFirst,
            ..UpdateConfig::default()
        }
    );
}

#[test]
fn service_create_checks_flags_before_sending() {
    let d = daemon();
    let o = d.run(&["service", "create", "--limit-cpu", "lots", "meshd-test"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("invalid --limit-cpu"), "{err}");
    assert!(err.contains("write e.g. 0.5 or 2"), "{err}");
    let o = d.run(&[
        "service",
        "create",
        "--mode",
        "global",
        "--replicas",
        "2",
        "meshd-test",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("invalid --replicas: a global service"),
        "{}",
        stderr(&o)
    );
    assert!(d.requests().is_empty());
}

#[test]
fn service_create_detach_false_waits_until_converged() {
    let mut w = world();
    // The fake's new service has spec version 2: these tasks are made for it.
    let new = service(NEW_ID, "api", 2);
    w.tasks.push(task(
        "n1pen0000000000000000000x",
        &new,
        1,
        SELF_ID,
        TaskState::Preparing,
    ));
    w.tasks.push(task(
        "n2pen0000000000000000000y",
        &new,
        2,
        WORKER9_ID,
        TaskState::Preparing,
    ));
    w.converge_after = Some(1);
    let (d, _world) = daemon_with(w);
    let o = d.run(&[
        "service",
        "create",
        "--name",
        "api",
        "--replicas",
        "2",
        "--detach=false",
        "meshd-test:latest",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with(&format!("{NEW_ID}\n")), "{out}");
    assert!(out.ends_with("api: 2/2 running\napi: converged\n"), "{out}");
}

#[test]
fn service_ls_prints_dockers_columns() {
    let d = daemon();
    let o = d.run(&["service", "ls"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "\
ID             NAME      MODE         REPLICAS   IMAGE               PORTS
svcdb0000000   db        replicated   1/1        meshd-test:v2       
svcweb000000   web       replicated   2/3        meshd-test:latest   *:8080->80/tcp
"
    );
    let o = d.run(&["service", "ls", "-q", "-f", "name=w"]);
    assert_eq!(stdout(&o), format!("{WEB_ID}\n"));
    let o = d.run(&["service", "ls", "--format", "json"]);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let v: ServiceView = serde_json::from_str(lines[1]).unwrap();
    assert_eq!((v.running_tasks, v.desired_tasks), (2, 3));
}

#[test]
fn service_ps_prints_history_nodes_and_pending_reasons() {
    let d = daemon();
    let o = d.run(&["service", "ps", "web", "db"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "\
ID             NAME        IMAGE               NODE       DESIRED STATE   CURRENT STATE         ERROR                              PORTS
d1run0000000   db.1        meshd-test:v2       worker9    Running         Running 3 hours ago                                      *:5432->5432/tcp
t1new0000000   web.1       meshd-test:latest   manager1   Running         Running 3 hours ago                                      
t1old0000000    \\_ web.1   meshd-test:latest   manager1   Shutdown        Failed 3 hours ago    \"task: non-zero exit (137): ki…\"   
t2run0000000   web.2       meshd-test:latest   worker9    Running         Running 3 hours ago                                      
t3pen0000000   web.3       meshd-test:latest              Running         Pending 3 hours ago   \"no suitable node (1 node is d…\"   
"
    );
    let o = d.run(&["service", "ps", "-q", "-f", "desired-state=running", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "t1new0000000\nt2run0000000\nt3pen0000000\n");
    assert!(
        d.lines()
            .contains(&format!("GET /v1/tasks?service={WEB_ID}&running=true")),
        "{:?}",
        d.lines()
    );
    let o = d.run(&["service", "ps", "--no-trunc", "web"]);
    assert!(
        stdout(&o).contains("\"no suitable node (1 node is drained)\""),
        "{}",
        stdout(&o)
    );
}

#[test]
fn service_ps_reports_missing_services_after_the_table() {
    let d = daemon();
    let o = d.run(&["service", "ps", "-f", "node=worker9", "web", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Error response from daemon: no such service: ghost; `swarm service ls` lists them\n"
    );
    let out = stdout(&o);
    assert!(out.contains("t2run0000000   web.2"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let o = d.run(&["service", "ps", "-f", "colour=red", "web"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid --filter"), "{}", stderr(&o));
}

#[test]
fn service_inspect_prints_a_json_array_or_pretty_blocks() {
    let d = daemon();
    let o = d.run(&["service", "inspect", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("[\n    {\n        \"ID\": \"svcweb"),
        "{out}"
    );
    let got: Vec<ServiceView> = serde_json::from_str(&out).unwrap();
    assert_eq!(got[0].service.spec.name, "web");
    let o = d.run(&["service", "inspect", "--pretty", "web"]);
    let out = stdout(&o);
    assert!(out.contains("Name:                   web\n"), "{out}");
    assert!(out.contains(" Replicas:              3\n"), "{out}");
    assert!(out.contains(" PublishedPort = 8080\n"), "{out}");
    let o = d.run(&["service", "inspect", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "[]\n");
}

#[test]
fn service_logs_prefix_every_line_with_the_task() {
    let d = daemon();
    let o = d.run(&["service", "logs", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "\
web.1.t1new0000000@manager1    | hello from 1
web.1.t1new0000000@manager1    | second line
web.1.t1old0000000@manager1    | crashed
web.2.t2run0000000@worker9    | hello from 2
web.2.t2run0000000@worker9    | no newline
"
    );
    let o = d.run(&["service", "logs", "--no-task-ids", "--tail", "1", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "web.1@manager1    | second line\nweb.1@manager1    | crashed\nweb.2@worker9    | no newline\n"
    );
    assert!(
        d.lines()
            .contains(&"GET /v1/tasks/t1new0000000000000000000b/logs?offset=0&tail=1".to_string()),
        "{:?}",
        d.lines()
    );
}

#[test]
fn service_logs_of_one_task() {
    let d = daemon();
    let o = d.run(&["service", "logs", "t1old0000000000000000000a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "web.1.t1old0000000@manager1    | crashed\n");
    let o = d.run(&["service", "logs", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no such service or task: ghost"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn service_logs_follow_picks_up_new_tasks_until_the_service_goes() {
    let mut w = world();
    w.remove_web_after = Some(3);
    let (d, world) = daemon_with(w);
    // A task that appears while following.
    {
        let mut w = world.lock().unwrap();
        let web = w.services[0].clone();
        let mut late = task(
            "t4new0000000000000000000z",
            &web,
            4,
            SELF_ID,
            TaskState::Running,
        );
        late.created_at = now();
        w.output
            .insert(late.id.clone(), ("late task\n".to_string(), false));
        w.tasks.push(late);
    }
    let o = d.run(&["service", "logs", "-f", "--no-task-ids", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for line in [
        "web.1@manager1    | hello from 1\n",
        "web.1@manager1    | crashed\n",
        "web.2@worker9    | hello from 2\n",
        "web.4@manager1    | late task\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    // The unfinished line of a running task stays unprinted while following.
    assert!(!out.contains("no newline"), "{out}");
}

#[test]
fn service_scale_posts_replicas_and_reports_each_service() {
    let d = daemon();
    let o = d.run(&["service", "scale", "web=5", "ghost=1", "db=0"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "web scaled to 5\ndb scaled to 0\n");
    assert_eq!(
        stderr(&o),
        "Error response from daemon: no such service: ghost; `swarm service ls` lists them\n"
    );
    let reqs = d.requests();
    assert_eq!(
        d.lines(),
        [
            "POST /v1/services/web/update",
            "POST /v1/services/ghost/update",
            "POST /v1/services/db/update"
        ]
    );
    assert_eq!(
        reqs[0].json::<ServiceUpdate>(),
        ServiceUpdate {
            replicas: Some(5),
            ..Default::default()
        }
    );
    let o = d.run(&["service", "scale", "web"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid SERVICE=REPLICAS: \"web\" has no '='"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn service_update_reads_the_service_and_sends_the_changed_settings() {
    let d = daemon();
    let o = d.run(&[
        "service",
        "update",
        "--image",
        "meshd-test:v2",
        "--env-add",
        "MODE=prod",
        "--update-failure-action",
        "rollback",
        "--update-delay",
        "2s",
        "web",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "web\n");
    let reqs = d.requests();
    assert_eq!(
        d.lines(),
        [
            "GET /v1/services/web",
            &format!("POST /v1/services/{WEB_ID}/update")
        ]
    );
    assert_eq!(
        reqs[1].json::<ServiceUpdate>(),
        ServiceUpdate {
            image: Some("meshd-test:v2".into()),
            env_add: vec!["MODE=prod".into()],
            update_config: Some(UpdateConfig {
                failure_action: FailureAction::Rollback,
                delay_ms: 2_000,
                ..UpdateConfig::default()
            }),
            ..Default::default()
        }
    );
}

#[test]
fn service_update_checks_the_change_against_the_service() {
    let d = daemon();
    let o = d.run(&["service", "update", "--health-retries", "2", "web"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("invalid --health-cmd: "),
        "{}",
        stderr(&o)
    );
    assert_eq!(d.lines(), ["GET /v1/services/web"]);
}

#[test]
fn service_rollback_and_rm() {
    let d = daemon();
    let o = d.run(&["service", "rollback", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "web\n");
    let reqs = d.requests();
    assert_eq!(reqs[0].line(), "POST /v1/services/web/update");
    assert_eq!(
        reqs[0].json::<ServiceUpdate>(),
        ServiceUpdate {
            rollback: true,
            ..Default::default()
        }
    );
    let o = d.run(&["service", "rm", "web", "ghost", "db"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "web\ndb\n");
    assert!(
        stderr(&o).contains("no such service: ghost"),
        "{}",
        stderr(&o)
    );
    assert!(d.lines().ends_with(&[
        "DELETE /v1/services/web".to_string(),
        "DELETE /v1/services/ghost".to_string(),
        "DELETE /v1/services/db".to_string(),
    ]));
}

#[test]
fn run_prints_the_output_and_exits_with_the_containers_code() {
    let d = daemon();
    let o = d.run(&[
        "run",
        "--rm",
        "--name",
        "job2",
        "meshd-test:latest",
        "fail",
        "now",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "about to fail\nbye\n");
    assert_eq!(stderr(&o), "");
    let reqs = d.requests();
    assert_eq!(reqs[0].line(), "POST /v1/containers");
    let r: RunRequest = reqs[0].json();
    assert_eq!(r.name.as_deref(), Some("job2"));
    assert_eq!(r.spec.container.args, ["fail", "now"]);
    assert_eq!(
        d.lines().last().map(String::as_str),
        Some("DELETE /v1/containers/c9new0000000000000000000h?force=true")
    );
    let d = daemon();
    let o = d.run(&["run", "meshd-test:latest"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "ok\n");
    assert!(!d.lines().iter().any(|l| l.starts_with("DELETE")));
}

#[test]
fn run_detached_prints_the_id_and_a_rejected_container_exits_125() {
    let d = daemon();
    let o = d.run(&["run", "-d", "meshd-test:latest"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "c9new0000000000000000000h\n");
    assert_eq!(d.lines(), ["POST /v1/containers"]);
    let d = daemon();
    let o = d.run(&["run", "--name", "bad", "nope:1", "reject"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).starts_with("container bad did not run: no such image: nope:1;"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn container_ls_shows_running_containers_or_all() {
    let d = daemon();
    let o = d.run(&["container", "ls"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "\
CONTAINER ID   IMAGE               COMMAND      CREATED       STATUS       NODE       NAMES
c1run0000000   meshd-test:latest   \"sleep 1d\"   2 hours ago   Up 3 hours   manager1   job
"
    );
    assert_eq!(d.lines()[0], "GET /v1/tasks?containers=true");
    let o = d.run(&["container", "ps", "-a", "-q"]);
    assert_eq!(stdout(&o), "c1run0000000\nc2end0000000\n", "{}", stderr(&o));
    let o = d.run(&["container", "ls", "-a"]);
    assert!(
        stdout(&o).contains("Exited (0) 3 hours ago"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn container_logs_rm_and_stop() {
    let d = daemon();
    let o = d.run(&["container", "logs", "--tail", "2", "job"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "job line 2\njob line 3\n");
    let o = d.run(&["logs", "job"]);
    assert_eq!(stdout(&o), "job line 1\njob line 2\njob line 3\n");
    let o = d.run(&["container", "rm", "-f", "job", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "job\n");
    assert_eq!(
        stderr(&o),
        "Error response from daemon: no such task or container: ghost\n"
    );
    let o = d.run(&["container", "stop", "job"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "job\n");
    let lines = d.lines();
    assert!(lines.contains(&"DELETE /v1/containers/job?force=true".to_string()));
    assert!(lines.contains(&"POST /v1/containers/job/stop".to_string()));
}

#[test]
fn image_load_sends_an_absolute_path_and_prints_each_tag() {
    let d = daemon();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meshd-test.tar");
    std::fs::write(&file, b"not really a tarball").unwrap();
    let o = d.run(&["image", "load", "-i", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Loaded image: meshd-test:latest\nLoaded image: meshd-test:v2\n"
    );
    let reqs = d.requests();
    assert_eq!(reqs[0].line(), "POST /v1/images/load");
    assert_eq!(
        reqs[0].json::<ImageLoadRequest>().path,
        file.to_str().unwrap()
    );
    let missing = dir.path().join("missing.tar");
    let o = d.run(&["load", "--input", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("invalid --input: cannot read "),
        "{}",
        stderr(&o)
    );
    assert_eq!(d.requests().len(), 1);
}

#[test]
fn image_ls_and_rm() {
    let d = daemon();
    let o = d.run(&["image", "ls"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("REPOSITORY   TAG       IMAGE ID       CREATED"),
        "{out}"
    );
    assert!(
        out.contains("meshd-test   latest    0123456789ab   "),
        "{out}"
    );
    assert!(out.trim_end().ends_with("7.8MB"), "{out}");
    let o = d.run(&["images", "-q"]);
    assert_eq!(stdout(&o), "0123456789ab\n");
    let o = d.run(&["rmi", "meshd-test:latest", "ghost:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "Untagged: meshd-test:latest\n");
    assert_eq!(
        stderr(&o),
        "Error response from daemon: no such image: ghost:1\n"
    );
    assert!(
        d.lines()
            .contains(&"DELETE /v1/images/meshd-test%3Alatest?force=false".to_string()),
        "{:?}",
        d.lines()
    );
}
