//! The demo: a walkthrough, as a list of steps, run against a lab and printed as it goes.
//!
//! To grow the demo, add [`Step`]s to [`cluster_steps`] (or build another list): each step is a
//! title and one [`Action`]. A `swarm` step can save its trimmed output under a name, and later
//! steps use it as `{name}` inside their arguments.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::time::Duration;

use crate::cmd::CmdOutput;
use crate::error::LabError;
use crate::lab::Lab;

/// A test on a command's standard output.
pub type Check = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// What a step does.
pub enum Action {
    /// `swarm ARGS` against host `host`'s daemon; its trimmed stdout is saved as `save_as`.
    Swarm {
        /// Host index (1-based).
        host: usize,
        /// Arguments after `-H unix://…`; `{name}` is replaced by a saved value.
        args: Vec<String>,
        /// Name under which to save the output.
        save_as: Option<String>,
    },
    /// A command inside host `host`'s network namespace.
    Exec {
        /// Host index (1-based).
        host: usize,
        /// The command; `{name}` is replaced by a saved value.
        argv: Vec<String>,
    },
    /// Repeats `swarm ARGS` on host `host` until its output passes `until`.
    WaitSwarm {
        /// Host index (1-based).
        host: usize,
        /// Arguments after `-H unix://…`.
        args: Vec<String>,
        /// What is awaited, for messages.
        what: String,
        /// The test on the output.
        until: Check,
        /// How long to wait at most.
        timeout: Duration,
    },
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Swarm {
                host,
                args,
                save_as,
            } => f
                .debug_struct("Swarm")
                .field("host", host)
                .field("args", args)
                .field("save_as", save_as)
                .finish(),
            Action::Exec { host, argv } => f
                .debug_struct("Exec")
                .field("host", host)
                .field("argv", argv)
                .finish(),
            Action::WaitSwarm {
                host,
                args,
                what,
                timeout,
                ..
            } => f
                .debug_struct("WaitSwarm")
                .field("host", host)
                .field("args", args)
                .field("what", what)
                .field("timeout", timeout)
                .finish_non_exhaustive(),
        }
    }
}

/// One step of a walkthrough.
#[derive(Debug)]
pub struct Step {
    /// What the step does, in a few words.
    pub title: String,
    /// How.
    pub action: Action,
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

impl Step {
    /// A `swarm ARGS` step on host `host`.
    pub fn swarm(title: impl Into<String>, host: usize, args: &[&str]) -> Step {
        Step {
            title: title.into(),
            action: Action::Swarm {
                host,
                args: owned(args),
                save_as: None,
            },
        }
    }

    /// A command inside host `host`'s network namespace.
    pub fn exec(title: impl Into<String>, host: usize, argv: &[&str]) -> Step {
        Step {
            title: title.into(),
            action: Action::Exec {
                host,
                argv: owned(argv),
            },
        }
    }

    /// Repeats `swarm ARGS` on host `host` until `until` accepts its output.
    pub fn wait_swarm(
        title: impl Into<String>,
        host: usize,
        args: &[&str],
        timeout: Duration,
        until: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Step {
        let title = title.into();
        Step {
            action: Action::WaitSwarm {
                host,
                args: owned(args),
                what: title.clone(),
                until: Box::new(until),
                timeout,
            },
            title,
        }
    }

    /// Saves this `swarm` step's trimmed output as `{name}` for later steps.
    pub fn save_as(mut self, name: &str) -> Step {
        if let Action::Swarm { save_as, .. } = &mut self.action {
            *save_as = Some(name.to_owned());
        }
        self
    }
}

/// The number of nodes that `swarm node ls` output shows as Ready (a line with a `Ready`
/// column).
pub fn count_ready(node_ls: &str) -> usize {
    node_ls
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .any(|w| w.eq_ignore_ascii_case("ready"))
        })
        .count()
}

/// The cluster walkthrough: `swarm init` on host1, the worker token, `swarm join` on every
/// other host, then wait until `swarm node ls` shows every node Ready.
pub fn cluster_steps(lab: &Lab) -> Vec<Step> {
    let n = lab.hosts();
    let ip1 = lab.ip(1).to_string();
    let manager = lab.control_addr(1).to_string();
    let mut steps = vec![
        Step::swarm(
            "Create the swarm on host1",
            1,
            &["init", "--advertise-addr", &ip1],
        ),
        Step::swarm(
            "Get the worker join token",
            1,
            &["join-token", "-q", "worker"],
        )
        .save_as("token"),
    ];
    for i in 2..=n {
        steps.push(Step::swarm(
            format!("Join host{i} as a worker"),
            i,
            &["join", "--token", "{token}", &manager],
        ));
    }
    steps.push(Step::wait_swarm(
        format!("Wait until all {n} nodes are Ready"),
        1,
        &["node", "ls"],
        Duration::from_secs(60),
        move |out| count_ready(out) >= n,
    ));
    steps
}

/// The overlay part of the demo: an encrypted network across the hosts, an endpoint
/// (a network namespace) on host1 and one on the last host, and the first pinging the
/// second over WireGuard. The endpoint namespaces are named after the lab, so the lab
/// removes them with everything else.
pub fn overlay_steps(lab: &Lab) -> Vec<Step> {
    let far = lab.hosts().max(1);
    let ep1 = lab.extra_netns_name("web1");
    let ep2 = lab.extra_netns_name("web2");
    let p1 = format!("/var/run/netns/{ep1}");
    let p2 = format!("/var/run/netns/{ep2}");
    vec![
        Step::swarm(
            "Create an encrypted overlay network",
            1,
            &[
                "network",
                "create",
                "-d",
                "overlay",
                "--subnet",
                "10.20.0.0/24",
                "--attachable",
                "appnet",
            ],
        ),
        Step::exec(
            "Make a namespace to attach on host1",
            1,
            &["ip", "netns", "add", &ep1],
        ),
        Step::swarm(
            "Connect it to appnet (host1)",
            1,
            &[
                "network",
                "connect",
                "appnet",
                "--netns",
                &p1,
                "--ip",
                "10.20.0.10",
            ],
        ),
        Step::exec(
            format!("Make a namespace to attach on host{far}"),
            far,
            &["ip", "netns", "add", &ep2],
        ),
        Step::swarm(
            format!("Connect it to appnet (host{far})"),
            far,
            &[
                "network",
                "connect",
                "appnet",
                "--netns",
                &p2,
                "--ip",
                "10.20.0.20",
            ],
        ),
        Step::swarm("The network and its endpoints", 1, &["network", "ls"]),
        Step::exec(
            format!("host1's endpoint pings host{far}'s over WireGuard"),
            1,
            &[
                "nsenter",
                &format!("--net={p1}"),
                "ping",
                "-c",
                "3",
                "-w",
                "15",
                "10.20.0.20",
            ],
        ),
    ]
}

/// The services part of the demo (after [`overlay_steps`]): the test image loaded on every
/// host, a replicated service on `appnet`, `service ps`, and each task answering, over the
/// encrypted overlay, with its own hostname to the endpoint host1 attached.
pub fn service_steps(lab: &Lab, image: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for i in 1..=lab.hosts() {
        steps.push(Step::swarm(
            format!("Load the test image on host{i}"),
            i,
            &["image", "load", "-i", image],
        ));
    }
    steps.push(Step::swarm(
        "Run a replicated service of 3 tasks on appnet, published on port 8080 of every node",
        1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "appnet",
            "-p",
            "8080:80",
            "meshd-test:latest",
        ],
    ));
    steps.push(Step::wait_swarm(
        "Wait until its 3 tasks run",
        1,
        &["service", "ls"],
        Duration::from_secs(60),
        |out| out.lines().any(|l| l.contains("web") && l.contains("3/3")),
    ));
    steps.push(Step::swarm(
        "Where its tasks run",
        1,
        &["service", "ps", "web"],
    ));
    let url = format!("http://{}:8080/", lab.ip(1));
    steps.push(Step::exec(
        "Requests to host1:8080 (sent from host2) are answered by every task in turn: the routing mesh",
        2,
        &[
            "sh",
            "-c",
            // The port opens on every node within a heartbeat of the tasks running.
            &format!(
                "for i in $(seq 50); do curl -s -m 2 -o /dev/null {url} && break; sleep 0.2; done; sleep 1; \
                 for i in 1 2 3 4 5 6; do curl -s -m 5 {url}; done"
            ),
        ],
    ));
    steps.push(Step::swarm(
        "The routing mesh's data path on host1 (eBPF keeps the client's address)",
        1,
        &["info"],
    ));
    steps.push(Step::swarm(
        "From inside a container on appnet, the service's name is its VIP, balanced over its tasks",
        1,
        &[
            "run",
            "--rm",
            "--network",
            "appnet",
            "meshd-test:latest",
            "sh",
            "-c",
            "for i in 1 2 3; do wget -q -O- http://web/; done",
        ],
    ));
    steps.push(Step::swarm("Their output", 1, &["service", "logs", "web"]));
    steps.push(Step::swarm(
        "From inside a container on appnet, tasks.web resolves to every task (embedded DNS)",
        1,
        &[
            "run",
            "--rm",
            "--network",
            "appnet",
            "meshd-test:latest",
            "nslookup",
            "tasks.web",
        ],
    ));
    steps
}

fn substitute(arg: &str, vars: &BTreeMap<String, String>) -> String {
    let mut s = arg.to_owned();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

fn print_output(out: &mut dyn Write, o: &CmdOutput) -> std::io::Result<()> {
    for line in o.stdout.lines() {
        writeln!(out, "  {line}")?;
    }
    for line in o.stderr.lines() {
        writeln!(out, "  ! {line}")?;
    }
    Ok(())
}

/// Runs `steps` on `lab`, printing each step's title, command and output to `out`. Stops at
/// the first failing step.
pub fn run(lab: &Lab, steps: &[Step], out: &mut dyn Write) -> Result<(), LabError> {
    let mut vars = BTreeMap::new();
    let total = steps.len();
    for (n, step) in steps.iter().enumerate() {
        let fail = |e: LabError| LabError::DemoStep {
            step: step.title.clone(),
            source: Box::new(e),
        };
        let w =
            |r: std::io::Result<()>| r.map_err(|e| fail(LabError::io("write the walkthrough", e)));
        if lab.is_torn_down() {
            return Err(fail(LabError::TornDown));
        }
        w(writeln!(out, "\n== Step {}/{total}: {}", n + 1, step.title))?;
        match &step.action {
            Action::Swarm {
                host,
                args,
                save_as,
            } => {
                let args: Vec<String> = args.iter().map(|a| substitute(a, &vars)).collect();
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                w(writeln!(
                    out,
                    "host{host}$ swarm -H unix://{} {}",
                    lab.socket(*host).display(),
                    args.join(" ")
                ))?;
                let o = lab.swarm(*host, &argv);
                w(print_output(out, &o))?;
                let stdout = o.ok().map_err(fail)?;
                if let Some(name) = save_as {
                    vars.insert(name.clone(), stdout.trim().to_owned());
                }
            }
            Action::Exec { host, argv } => {
                let argv: Vec<String> = argv.iter().map(|a| substitute(a, &vars)).collect();
                let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
                w(writeln!(
                    out,
                    "host{host}$ nsenter --net={} {}",
                    lab.netns_path(*host).display(),
                    argv.join(" ")
                ))?;
                let o = lab.exec(*host, &refs);
                w(print_output(out, &o))?;
                o.ok().map_err(fail)?;
            }
            Action::WaitSwarm {
                host,
                args,
                what,
                until,
                timeout,
            } => {
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                w(writeln!(
                    out,
                    "host{host}$ swarm -H unix://{} {}   (repeated until it passes, {}s at most)",
                    lab.socket(*host).display(),
                    args.join(" "),
                    timeout.as_secs()
                ))?;
                let mut last = None;
                let result = lab.wait_until(what, *timeout, || {
                    let o = lab.swarm(*host, &argv);
                    let pass = o.success() && until(&o.stdout);
                    last = Some(o.clone());
                    pass.then_some(o)
                });
                match result {
                    Ok(o) => w(print_output(out, &o))?,
                    Err(e) => {
                        if let Some(o) = &last {
                            w(writeln!(out, "  (last output)"))?;
                            w(print_output(out, o))?;
                        }
                        return Err(fail(e));
                    }
                }
            }
        }
    }
    w_done(out)
}

fn w_done(out: &mut dyn Write) -> Result<(), LabError> {
    writeln!(out, "\n== Done.")
        .and_then(|()| out.flush())
        .map_err(|e| LabError::io("write the walkthrough", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_nodes_are_counted() {
        let out = "ID  HOSTNAME  STATUS  AVAILABILITY  MANAGER STATUS\n\
                   a1 *  host1  Ready  Active  Leader\n\
                   b2  host2  Down  Active\n\
                   c3  host3  ready  Active\n";
        assert_eq!(count_ready(out), 2);
        assert_eq!(count_ready(""), 0);
    }

    #[test]
    fn saved_values_are_substituted() {
        let mut vars = BTreeMap::new();
        vars.insert("token".to_owned(), "SWMTKN-1-x-y".to_owned());
        assert_eq!(substitute("{token}", &vars), "SWMTKN-1-x-y");
        assert_eq!(
            substitute("a{token}b{other}", &vars),
            "aSWMTKN-1-x-yb{other}"
        );
    }

    #[test]
    fn save_as_only_touches_swarm_steps() {
        let s = Step::swarm("t", 1, &["a"]).save_as("x");
        assert!(matches!(s.action, Action::Swarm { save_as: Some(ref n), .. } if n == "x"));
        let e = Step::exec("t", 1, &["true"]).save_as("x");
        assert!(matches!(e.action, Action::Exec { .. }));
    }
}
