//! The runc runtime for real: overlayfs, runc, a network namespace, the shim.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use mesh_agent::{
    ContainerConfig, ContainerState, HealthCheck, HealthCmd, HealthState, HealthStatus, ImageError,
    Limits, LogFollower, MountSpec, Runtime, RuntimeError, read_log, run_health_check,
};

const T: Duration = Duration::from_secs(10);

fn sh(script: &str) -> Option<Vec<String>> {
    Some(vec!["sh".into(), "-c".into(), script.into()])
}

async fn exec_ok(rt: &impl Runtime, id: &str, script: &str) -> String {
    let r = rt
        .exec(id, &["sh".into(), "-c".into(), script.into()], T)
        .await
        .unwrap_or_else(|e| panic!("exec {script}: {e}"));
    assert_eq!(r.exit_code, 0, "exec {script}: {r:?}");
    r.stdout.trim_end().to_string()
}

fn host_cgroup(controller: &str, id: &str, file: &str) -> String {
    fs::read_to_string(format!("/sys/fs/cgroup/{controller}/meshd/{id}/{file}"))
        .unwrap_or_else(|e| panic!("reading the {controller} cgroup of {id}: {e}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_as_configured_in_a_netns() {
    init_tracing();
    require_host();
    let root = TestRoot::new();
    let ns = Netns::new();
    let rt = root.runtime();
    let image = rt.store().load(&test_image()).unwrap().remove(0);

    let host_dir = tempfile::tempdir().unwrap();
    fs::write(host_dir.path().join("hello.txt"), "hello from the host\n").unwrap();
    let volume = unique("vol");

    // c1: nobody, in /work/dir, with every kind of mount, limits, DNS and hosts.
    let c1 = unique("c1-");
    let mut cfg = ContainerConfig::new(&c1, "meshd-test");
    cfg.name = "first".into();
    cfg.hostname = Some("web-1".into());
    cfg.args = sh(
        "echo started as $(id -u):$(id -g) in $(pwd) with \"$@\"; echo to-stderr >&2; echo line3; exec sleep 1000",
    )
    .map(|mut v| {
        v.push("argv0".into());
        v.push("one arg".into());
        v
    });
    cfg.env = vec!["FOO=bar baz".into(), "FROM_SPEC=1".into()];
    cfg.workdir = Some("/work/dir".into());
    cfg.user = Some("nobody".into());
    cfg.mounts = vec![
        MountSpec::Bind {
            source: host_dir.path().to_path_buf(),
            target: "/host".into(),
            readonly: true,
        },
        MountSpec::Volume {
            name: volume.clone(),
            target: "/shared".into(),
            readonly: false,
        },
        MountSpec::Tmpfs {
            target: "/scratch".into(),
            size: Some(8 << 20),
        },
    ];
    cfg.limits = Limits {
        nano_cpus: Some(500_000_000),
        memory_bytes: Some(64 << 20),
        pids: Some(100),
    };
    cfg.netns = Some(ns.path());
    cfg.resolv_conf = Some("nameserver 10.0.0.53\nsearch example.internal\n".into());
    cfg.hosts = vec![(
        "10.1.2.3".parse().unwrap(),
        vec!["db".into(), "db.internal".into()],
    )];
    cfg.labels.insert("task".into(), "t1".into());
    rt.create(&cfg).await.unwrap();
    assert_eq!(rt.state(&c1).await.unwrap(), ContainerState::Created);
    assert!(matches!(
        rt.create(&cfg).await,
        Err(RuntimeError::AlreadyExists { .. })
    ));
    rt.start(&c1).await.unwrap();
    let ContainerState::Running { pid } = rt.state(&c1).await.unwrap() else {
        panic!("c1 is not running");
    };
    assert!(pid > 1);
    // The container is in the namespace we gave it.
    let ours = fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let given = fs::metadata(ns.path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(ours.to_string_lossy(), format!("net:[{}]", given.ino()));

    assert_eq!(exec_ok(&rt, &c1, "id -u; id -g").await, "65534\n65534");
    assert_eq!(exec_ok(&rt, &c1, "pwd").await, "/work/dir");
    assert_eq!(exec_ok(&rt, &c1, "hostname").await, "web-1");
    assert_eq!(
        exec_ok(&rt, &c1, "echo \"$FOO|$FROM_SPEC|$HOSTNAME|$HOME\"").await,
        "bar baz|1|web-1|/nonexistent"
    );
    assert!(exec_ok(&rt, &c1, "echo $PATH").await.contains("/usr/bin"));
    assert_eq!(
        exec_ok(&rt, &c1, "cat /host/hello.txt").await,
        "hello from the host"
    );
    let ro = rt
        .exec(&c1, &["touch".into(), "/host/new".into()], T)
        .await
        .unwrap();
    assert_ne!(ro.exit_code, 0, "read-only bind mount was writable");
    assert!(!host_dir.path().join("new").exists());
    let resolv = exec_ok(&rt, &c1, "cat /etc/resolv.conf").await;
    assert!(
        resolv.contains("nameserver 10.0.0.53") && resolv.contains("search example.internal"),
        "{resolv}"
    );
    let hosts = exec_ok(&rt, &c1, "cat /etc/hosts").await;
    assert!(hosts.contains("10.1.2.3\tdb db.internal"), "{hosts}");
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    let mounts = exec_ok(&rt, &c1, "cat /proc/mounts").await;
    let scratch = mounts
        .lines()
        .find(|l| l.contains(" /scratch "))
        .unwrap_or_else(|| panic!("{mounts}"));
    assert!(
        scratch.starts_with("tmpfs") && scratch.contains("size=8192k"),
        "{scratch}"
    );
    assert_eq!(
        exec_ok(&rt, &c1, "echo x > /scratch/f && cat /scratch/f").await,
        "x"
    );
    // Limits, seen from inside and from the host.
    assert_eq!(
        exec_ok(&rt, &c1, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes").await,
        (64u64 << 20).to_string()
    );
    assert_eq!(
        host_cgroup("memory", &c1, "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(host_cgroup("cpu", &c1, "cpu.cfs_quota_us"), "50000");
    assert_eq!(host_cgroup("pids", &c1, "pids.max"), "100");
    // Bounded output.
    let big = rt
        .exec(
            &c1,
            &["sh".into(), "-c".into(), "yes | head -c 200000".into()],
            T,
        )
        .await
        .unwrap();
    assert_eq!(big.exit_code, 0);
    assert!(big.truncated && big.stdout.len() == mesh_agent::EXEC_OUTPUT_LIMIT);
    // A command that hangs is killed at its timeout.
    let hang = rt
        .exec(
            &c1,
            &["sleep".into(), "100".into()],
            Duration::from_millis(300),
        )
        .await;
    assert!(
        matches!(hang, Err(RuntimeError::ExecTimeout { .. })),
        "{hang:?}"
    );

    // c2: root, the image's default command (the HTTP server) on a given port, sharing the
    // volume and the namespace.
    let c2 = unique("c2-");
    let mut cfg2 = ContainerConfig::new(&c2, &image.id[..19]);
    cfg2.hostname = Some("web-2".into());
    cfg2.env = vec!["PORT=8080".into()];
    cfg2.netns = Some(ns.path());
    cfg2.mounts = vec![MountSpec::Volume {
        name: volume.clone(),
        target: "/data".into(),
        readonly: false,
    }];
    rt.create(&cfg2).await.unwrap();
    rt.start(&c2).await.unwrap();
    exec_ok(&rt, &c2, "echo shared-content > /data/from-c2").await;
    assert_eq!(
        exec_ok(&rt, &c1, "cat /shared/from-c2").await,
        "shared-content"
    );
    // The server answers with its hostname, from the namespace.
    let mut answer = String::new();
    for _ in 0..100 {
        let out = ns.run(&["/bin/busybox", "wget", "-qO-", "http://127.0.0.1:8080/"]);
        answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, "web-2");

    // Health checks through exec.
    let check = HealthCheck {
        cmd: HealthCmd::Shell("wget -qO- http://127.0.0.1:8080/ | grep -q web-2".into()),
        interval: Duration::from_secs(1),
        timeout: T,
        retries: 1,
        start_period: Duration::ZERO,
    };
    let mut health = HealthState::new();
    let probe = run_health_check(&rt, &c2, &check).await;
    assert!(probe.passed, "{probe:?}");
    assert_eq!(
        health.record(probe.passed, Duration::from_secs(1), &check),
        Some(HealthStatus::Healthy)
    );
    let failing = HealthCheck {
        cmd: HealthCmd::Exec(vec!["false".into()]),
        ..check.clone()
    };
    let probe = run_health_check(&rt, &c2, &failing).await;
    assert!(!probe.passed && probe.exit_code == Some(1), "{probe:?}");
    assert_eq!(
        health.record(probe.passed, Duration::from_secs(2), &failing),
        Some(HealthStatus::Unhealthy)
    );

    // The image can't be removed while containers use it.
    let err = rt.store().remove("meshd-test", false).unwrap_err();
    assert!(matches!(err, ImageError::ImageInUse { .. }), "{err}");
    assert!(
        err.to_string().contains(&c1) && err.to_string().contains(&c2),
        "{err}"
    );

    // Listing finds both, with labels and config.
    let list = rt.list().await.unwrap();
    let l1 = list.iter().find(|c| c.id == c1).unwrap();
    assert_eq!(l1.name, "first");
    assert_eq!(l1.labels.get("task").map(String::as_str), Some("t1"));
    assert_eq!(l1.image_id, image.id);
    assert!(matches!(l1.state, ContainerState::Running { .. }));

    // Stop: c2 handles TERM and exits 0 quickly; c1's sleep ignores TERM (PID 1) and is
    // killed after the grace period.
    let e2 = rt.stop(&c2, Duration::from_secs(20)).await.unwrap();
    assert_eq!(e2.code, 0, "{e2:?}");
    let e1 = rt.stop(&c1, Duration::from_millis(500)).await.unwrap();
    assert_eq!(e1.code, 137, "{e1:?}");
    assert_eq!(rt.stop(&c1, T).await.unwrap(), e1, "stop is idempotent");
    assert_eq!(rt.wait(&c1).await.unwrap(), e1);
    assert_eq!(rt.state(&c1).await.unwrap(), ContainerState::Exited(e1));
    assert!(matches!(
        rt.exec(&c1, &["true".into()], T).await,
        Err(RuntimeError::WrongState { .. })
    ));
    assert!(matches!(
        rt.start(&c1).await,
        Err(RuntimeError::WrongState { .. })
    ));

    // Logs: stdout and stderr merged, in order.
    let log = read_log(&rt.log_path(&c1)).unwrap();
    assert_eq!(
        log,
        [
            "started as 65534:65534 in /work/dir with one arg",
            "to-stderr",
            "line3"
        ]
    );
    let mut follower = LogFollower::open(&rt.log_path(&c1), true).unwrap();
    assert_eq!(follower.next_line().await.unwrap(), log[0]);

    // Remove cleans mounts, the bundle and the cgroups.
    for id in [&c1, &c2] {
        rt.remove(id).await.unwrap();
        assert!(!rt.bundle_path(id).exists());
        assert!(!Path::new(&format!("/sys/fs/cgroup/memory/meshd/{id}")).exists());
        assert_eq!(rt.state(id).await.unwrap(), ContainerState::Missing);
        rt.remove(id).await.unwrap();
    }
    assert!(root.mounts().is_empty(), "{:?}", root.mounts());
    // The volume outlives its containers.
    assert!(rt.volume_path(&volume).join("from-c2").is_file());
    rt.store().remove("meshd-test", false).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_errors_and_whiteouts() {
    init_tracing();
    require_host();
    let root = TestRoot::new();
    let rt = root.runtime();
    rt.store().load(&test_image()).unwrap();

    // Exit codes are recorded.
    let c3 = unique("c3-");
    let mut cfg = ContainerConfig::new(&c3, "meshd-test");
    cfg.args = sh("echo bye; exit 3");
    rt.create(&cfg).await.unwrap();
    rt.start(&c3).await.unwrap();
    let e = rt.wait(&c3).await.unwrap();
    assert_eq!((e.code, e.error.as_deref()), (3, None));
    assert_eq!(read_log(&rt.log_path(&c3)).unwrap(), ["bye"]);
    rt.remove(&c3).await.unwrap();

    // A missing executable reaches the caller with runc's words.
    let c4 = unique("c4-");
    let mut cfg = ContainerConfig::new(&c4, "meshd-test");
    cfg.entrypoint = Some(vec!["/bin/nope".into()]);
    rt.create(&cfg).await.unwrap();
    let err = rt.start(&c4).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RuntimeError::StartFailed { .. }), "{msg}");
    assert!(
        msg.contains("exec") && msg.contains("/bin/nope") && msg.contains("no such file"),
        "{msg}"
    );
    let ContainerState::Exited(e) = rt.state(&c4).await.unwrap() else {
        panic!("c4 should have exited");
    };
    assert!(e.error.is_some());
    rt.remove(&c4).await.unwrap();

    // A stop signal of the image's choosing; a stop before start.
    let c6 = unique("c6-");
    let mut cfg = ContainerConfig::new(&c6, "meshd-test");
    cfg.args = sh("trap 'exit 42' USR1; while true; do sleep 0.1; done");
    cfg.stop_signal = Some("USR1".into());
    rt.create(&cfg).await.unwrap();
    rt.start(&c6).await.unwrap();
    assert_eq!(rt.stop(&c6, T).await.unwrap().code, 42);
    rt.remove(&c6).await.unwrap();
    let c7 = unique("c7-");
    rt.create(&ContainerConfig::new(&c7, "meshd-test"))
        .await
        .unwrap();
    let e = rt.stop(&c7, T).await.unwrap();
    assert!(e.error.is_some());
    assert!(matches!(
        rt.start(&c7).await,
        Err(RuntimeError::WrongState { .. })
    ));
    rt.remove(&c7).await.unwrap();

    // Whiteouts and opaque directories of a docker-save image hold in the container.
    let base = test_image_base_layer();
    let (tarball, _) = docker_save(&[SavedImage {
        tags: &["whiteouts:1"],
        layers: vec![base, layer_two(), layer_three()],
        cmd: &[
            "sh",
            "-c",
            "ls /data; test -e /gone.txt && echo GONE-IS-THERE; cat /kept.txt; echo; echo $FROM_IMAGE",
        ],
    }]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("save.tar");
    fs::write(&p, tarball).unwrap();
    rt.store().load(&p).unwrap();
    let c8 = unique("c8-");
    rt.create(&ContainerConfig::new(&c8, "whiteouts:1"))
        .await
        .unwrap();
    rt.start(&c8).await.unwrap();
    assert_eq!(rt.wait(&c8).await.unwrap().code, 0);
    assert_eq!(
        read_log(&rt.log_path(&c8)).unwrap(),
        ["c.txt", "kept", "yes"]
    );
    rt.remove(&c8).await.unwrap();
    assert!(root.mounts().is_empty(), "{:?}", root.mounts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_survive_the_runtime() {
    init_tracing();
    require_host();
    let root = TestRoot::new();
    let c5 = unique("c5-");
    let volume = unique("vol");
    {
        let rt = root.runtime();
        rt.store().load(&test_image()).unwrap();
        let mut cfg = ContainerConfig::new(&c5, "meshd-test");
        cfg.args =
            sh("echo waiting; while [ ! -e /v/done ]; do sleep 0.05; done; echo done; exit 7");
        cfg.mounts = vec![MountSpec::Volume {
            name: volume.clone(),
            target: "/v".into(),
            readonly: false,
        }];
        cfg.labels.insert("task".into(), "t5".into());
        rt.create(&cfg).await.unwrap();
        rt.start(&c5).await.unwrap();
    }
    // A new runtime (as after a daemon restart) finds it running...
    let rt = root.runtime();
    let list = rt.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, c5);
    assert_eq!(list[0].labels.get("task").map(String::as_str), Some("t5"));
    let ContainerState::Running { pid } = list[0].state else {
        panic!(
            "not running after the runtime went away: {:?}",
            list[0].state
        );
    };
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // ...and later learns its exit code.
    fs::write(rt.volume_path(&volume).join("done"), "").unwrap();
    let e = rt.wait(&c5).await.unwrap();
    assert_eq!(e.code, 7);
    assert_eq!(read_log(&rt.log_path(&c5)).unwrap(), ["waiting", "done"]);
    rt.remove(&c5).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_are_refused_and_leave_nothing() {
    init_tracing();
    require_host();
    let root = TestRoot::new();
    let rt = root.runtime();
    rt.store().load(&test_image()).unwrap();
    let containers = root.dir.join("containers");
    let field = |e: RuntimeError| match e {
        RuntimeError::InvalidConfig { field, reason } => (field, reason),
        other => panic!("expected InvalidConfig, got {other}"),
    };

    let (f, _) = field(
        rt.create(&ContainerConfig::new("../escape", "meshd-test"))
            .await
            .unwrap_err(),
    );
    assert_eq!(f, "id");
    let (f, _) = field(rt.start("a/b").await.unwrap_err());
    assert_eq!(f, "id");

    let id = unique("bad-");
    match rt.create(&ContainerConfig::new(&id, "nope:1")).await {
        Err(RuntimeError::Image(ImageError::ImageNotFound { reference })) => {
            assert_eq!(reference, "nope:1")
        }
        other => panic!("expected ImageNotFound, got {other:?}"),
    }

    let mut cfg = ContainerConfig::new(&id, "meshd-test");
    cfg.mounts = vec![MountSpec::Tmpfs {
        target: "relative/dir".into(),
        size: None,
    }];
    let (f, reason) = field(rt.create(&cfg).await.unwrap_err());
    assert_eq!(f, "mounts[0].target");
    assert!(reason.contains("absolute"), "{reason}");

    let mut cfg = ContainerConfig::new(&id, "meshd-test");
    cfg.user = Some("ghost".into());
    let (f, reason) = field(rt.create(&cfg).await.unwrap_err());
    assert_eq!(f, "user");
    assert!(reason.contains("unknown user `ghost`"), "{reason}");

    let mut cfg = ContainerConfig::new(&id, "meshd-test");
    cfg.netns = Some("/var/run/netns/does-not-exist".into());
    let (f, _) = field(rt.create(&cfg).await.unwrap_err());
    assert_eq!(f, "netns");

    let mut cfg = ContainerConfig::new(&id, "meshd-test");
    cfg.mounts = vec![MountSpec::Bind {
        source: "/does/not/exist".into(),
        target: "/x".into(),
        readonly: false,
    }];
    let (f, _) = field(rt.create(&cfg).await.unwrap_err());
    assert_eq!(f, "mounts[0].source");

    assert!(matches!(
        rt.start(&id).await,
        Err(RuntimeError::NotFound { .. })
    ));
    let elsewhere = tempfile::tempdir().unwrap();
    let shim = vec![std::ffi::OsString::from(env!("CARGO_BIN_EXE_mesh-shim"))];
    match mesh_agent::OciRuntime::new(elsewhere.path(), rt.store().clone(), shim.clone()) {
        Err(e) => assert!(
            matches!(&e, RuntimeError::InvalidConfig { field, .. } if field == "root"),
            "{e}"
        ),
        Ok(_) => panic!("a runtime rooted away from its store was accepted"),
    }
    mesh_agent::OciRuntime::new(&root.dir, rt.store().clone(), shim).unwrap();
    // A command that is not there is an error, not an exit code.
    let c9 = unique("c9-");
    let mut cfg = ContainerConfig::new(&c9, "meshd-test");
    cfg.args = sh("exec sleep 100");
    rt.create(&cfg).await.unwrap();
    rt.start(&c9).await.unwrap();
    let err = rt
        .exec(&c9, &["/no/such/tool".into()], T)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/no/such/tool"), "{err}");
    rt.remove(&c9).await.unwrap();

    assert_eq!(fs::read_dir(&containers).unwrap().count(), 0);
    assert!(root.mounts().is_empty(), "{:?}", root.mounts());
    assert!(rt.list().await.unwrap().is_empty());
}
