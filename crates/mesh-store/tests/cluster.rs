//! Clusters of real on-disk stores in temporary directories, connected by the in-process
//! transport.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use mesh_store::MemberInfo;
use mesh_store::RaftRole;
use mesh_store::StateMachine;
use mesh_store::Store;
use mesh_store::StoreConfig;
use mesh_store::StoreError;
use mesh_store::StoreEvent;
use mesh_store::mem::MemNetwork;
use serde::Deserialize;
use serde::Serialize;

/// A key-value map; every command returns the previous value.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Kv {
    map: BTreeMap<String, String>,
    /// Indexes of the applied commands, to check order and exactly-once application.
    indexes: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Cmd {
    Set(String, String),
    Del(String),
}

impl StateMachine for Kv {
    type Command = Cmd;
    type Output = Option<String>;

    fn apply(&mut self, index: u64, cmd: Cmd) -> Option<String> {
        self.indexes.push(index);
        match cmd {
            Cmd::Set(k, v) => self.map.insert(k, v),
            Cmd::Del(k) => self.map.remove(&k),
        }
    }
}

fn set(k: impl Into<String>, v: impl Into<String>) -> Cmd {
    Cmd::Set(k.into(), v.into())
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn member(id: u64) -> MemberInfo {
    MemberInfo::new(format!("127.0.0.{id}:2377"), format!("node-{id}"))
}

/// How long the helpers wait for the cluster to reach a state before failing the test.
const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    net: MemNetwork,
    tmp: tempfile::TempDir,
    cfg: StoreConfig,
    stores: BTreeMap<u64, Store<Kv>>,
}

impl Cluster {
    fn new(cfg: StoreConfig) -> Self {
        init_tracing();
        Self {
            net: MemNetwork::new(),
            tmp: tempfile::tempdir().unwrap(),
            cfg,
            stores: BTreeMap::new(),
        }
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.tmp.path().join(format!("node-{id}"))
    }

    async fn start(&mut self, id: u64) -> Store<Kv> {
        let store = Store::<Kv>::open(&self.dir(id), id, self.cfg.clone(), self.net.transport(id))
            .await
            .unwrap();
        self.net.register(id, store.rpc_handler());
        self.stores.insert(id, store.clone());
        store
    }

    async fn kill(&mut self, id: u64) {
        self.net.unregister(id);
        if let Some(s) = self.stores.remove(&id) {
            s.shutdown().await.unwrap();
        }
    }

    /// Kill `id` like SIGKILL on a QUIC host: nothing is closed, calls to it just hang.
    async fn kill_silently(&mut self, id: u64) {
        self.net.silence(id);
        if let Some(s) = self.stores.remove(&id) {
            s.shutdown().await.unwrap();
        }
    }

    /// Restart a member killed with `kill_silently`.
    async fn restart_silenced(&mut self, id: u64) -> Store<Kv> {
        let s = self.start(id).await;
        self.net.heal(id);
        s
    }

    fn get(&self, id: u64) -> Store<Kv> {
        self.stores[&id].clone()
    }

    /// Bootstrap `first`, add the others as learners, then make everyone a voter.
    async fn form(&mut self, ids: &[u64]) {
        for id in ids {
            self.start(*id).await;
        }
        let first = self.get(ids[0]);
        first.bootstrap(member(ids[0])).await.unwrap();
        wait_until("bootstrap leader", || {
            first.status().role == RaftRole::Leader
        })
        .await;
        for id in &ids[1..] {
            first.add_learner(*id, member(*id)).await.unwrap();
        }
        first
            .change_voters(ids.iter().copied().collect())
            .await
            .unwrap();
    }

    /// Wait until exactly one of `ids` leads and the others follow it; return it.
    async fn leader_among(&self, ids: &[u64]) -> u64 {
        let start = Instant::now();
        loop {
            let leaders: Vec<u64> = ids
                .iter()
                .filter(|id| {
                    self.stores[id].status().role == RaftRole::Leader
                        && self.stores[id].status().has_quorum
                })
                .copied()
                .collect();
            if let [l] = leaders[..]
                && ids
                    .iter()
                    .all(|id| self.stores[id].status().leader_id == Some(l))
            {
                return l;
            }
            assert!(start.elapsed() < WAIT, "no agreed leader among {ids:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until every store in `ids` holds `expected`.
    async fn converge(&self, ids: &[u64], expected: &BTreeMap<String, String>) {
        for id in ids {
            let s = self.get(*id);
            wait_until(&format!("node {id} converges"), || {
                s.read(|kv| &kv.map == expected)
            })
            .await;
        }
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn write_many(
    store: &Store<Kv>,
    prefix: &str,
    n: usize,
    expected: &mut BTreeMap<String, String>,
) {
    for i in 0..n {
        let (k, v) = (format!("{prefix}-{i}"), format!("v{i}"));
        store.write(set(&k, &v)).await.unwrap();
        expected.insert(k, v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_write_read_restart() {
    let mut c = Cluster::new(StoreConfig::default());
    let s = c.start(1).await;
    assert!(!s.is_initialized());
    assert_eq!(
        s.write(set("a", "1")).await,
        Err(StoreError::NotInitialized)
    );

    s.bootstrap(member(1)).await.unwrap();
    assert!(s.is_initialized());
    // Bootstrapping again is harmless.
    s.bootstrap(member(1)).await.unwrap();

    let mut events = s.subscribe();
    assert_eq!(s.write(set("a", "1")).await.unwrap(), None);
    assert_eq!(s.write(set("a", "2")).await.unwrap(), Some("1".to_string()));
    assert_eq!(s.write(set("b", "x")).await.unwrap(), None);
    assert_eq!(
        s.write(Cmd::Del("b".into())).await.unwrap(),
        Some("x".to_string())
    );
    assert_eq!(s.read(|kv| kv.map.get("a").cloned()), Some("2".to_string()));

    // Events come in log order with the outputs the writers saw.
    let mut outputs = Vec::new();
    let mut last_index = 0;
    for _ in 0..4 {
        match events.recv().await.unwrap() {
            StoreEvent::Applied { index, output } => {
                assert!(index > last_index);
                last_index = index;
                outputs.push(output);
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(
        outputs,
        vec![None, Some("1".into()), None, Some("x".into())]
    );
    let status = s.status();
    assert_eq!(status.role, RaftRole::Leader);
    assert_eq!(status.voters.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert!(status.has_quorum);
    let before = s.read(|kv| kv.clone());

    c.kill(1).await;
    assert_eq!(s.write(set("c", "3")).await, Err(StoreError::ShutDown));

    let s = c.start(1).await;
    assert!(s.is_initialized());
    assert_eq!(s.read(|kv| kv.clone()), before, "state rebuilt from disk");
    assert_eq!(s.write(set("c", "3")).await.unwrap(), None);
    assert_eq!(s.read(|kv| kv.map.len()), 2);
    // Each command was applied exactly once.
    let idx = s.read(|kv| kv.indexes.clone());
    assert_eq!(idx.len(), 5);
    assert!(idx.windows(2).all(|w| w[0] < w[1]));
    c.kill(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_store_releases_its_directory() {
    let mut c = Cluster::new(StoreConfig::default());
    let s = c.start(1).await;
    s.bootstrap(member(1)).await.unwrap();
    let mut expected = BTreeMap::new();
    write_many(&s, "k", 5, &mut expected).await;
    // Killed without a clean shutdown: every handle dropped.
    c.net.unregister(1);
    c.stores.remove(&1);
    drop(s);
    let s = c.start(1).await;
    assert_eq!(s.read(|kv| kv.map.clone()), expected);
    write_many(&s, "more", 2, &mut expected).await;
    c.kill(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_from_every_member() {
    let mut c = Cluster::new(StoreConfig::default());
    c.form(&[1, 2, 3]).await;
    c.leader_among(&[1, 2, 3]).await;
    let mut tasks = Vec::new();
    for i in 0..60u64 {
        let s = c.get(1 + i % 3);
        tasks.push(tokio::spawn(async move {
            s.write(set(format!("c-{i}"), "v")).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), None);
    }
    let expected: BTreeMap<String, String> = (0..60)
        .map(|i| (format!("c-{i}"), "v".to_string()))
        .collect();
    c.converge(&[1, 2, 3], &expected).await;
    for id in [1, 2, 3] {
        // Applied exactly once each, in log order.
        let idx = c.get(id).read(|kv| kv.indexes.clone());
        assert_eq!(idx.len(), 60);
        assert!(idx.windows(2).all(|w| w[0] < w[1]));
    }
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_writes_are_applied_once_and_survive_a_restart() {
    let mut c = Cluster::new(StoreConfig::default());
    c.form(&[1, 2, 3]).await;
    let leader = c.leader_among(&[1, 2, 3]).await;
    // Most writes on the leader, the others through followers, all in flight at once.
    let n = 400u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = if i % 4 == 0 {
            c.get(1 + i % 3)
        } else {
            c.get(leader)
        };
        tasks.push(tokio::spawn(async move {
            s.write(set(format!("k-{i}"), format!("v{i}"))).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), None);
    }
    let expected: BTreeMap<String, String> = (0..n)
        .map(|i| (format!("k-{i}"), format!("v{i}")))
        .collect();
    c.converge(&[1, 2, 3], &expected).await;
    let before: Vec<Kv> = [1, 2, 3]
        .iter()
        .map(|id| c.get(*id).read(|kv| kv.clone()))
        .collect();
    for kv in &before {
        assert_eq!(kv.indexes.len() as u64, n, "each write applied once");
        assert!(kv.indexes.windows(2).all(|w| w[0] < w[1]));
    }

    // Every member stopped, then rebuilt from its own disk.
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    c.leader_among(&[1, 2, 3]).await;
    c.converge(&[1, 2, 3], &expected).await;
    for (i, id) in [1, 2, 3].iter().enumerate() {
        assert_eq!(c.get(*id).read(|kv| kv.clone()), before[i], "member {id}");
    }
    // A member restarted alone reads its whole state back from its disk.
    let lone = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    c.kill(lone).await;
    c.net.cut(lone);
    let s = c.start(lone).await;
    wait_until("the log replayed", || {
        s.read(|kv| kv.indexes.len() as u64) == n
    })
    .await;
    assert_eq!(s.read(|kv| kv.map.clone()), expected);
    c.net.heal(lone);
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_writes_are_applied_once_each_with_its_own_output() {
    let cfg = StoreConfig {
        batch_writes: true,
        ..Default::default()
    };
    let mut c = Cluster::new(cfg);
    c.form(&[1, 2, 3]).await;
    let leader = c.leader_among(&[1, 2, 3]).await;
    let mut events = c.get(leader).subscribe();
    // Every key written twice, concurrently: each write answers with the value it replaced.
    let n = 300u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = if i % 4 == 0 {
            c.get(1 + i % 3)
        } else {
            c.get(leader)
        };
        tasks.push(tokio::spawn(async move {
            let k = format!("k-{}", i % (n / 2));
            (i, s.write(set(k, format!("v{i}"))).await)
        }));
    }
    let mut replaced: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for t in tasks {
        let (i, out) = t.await.unwrap();
        replaced
            .entry(format!("k-{}", i % (n / 2)))
            .or_default()
            .push(out.unwrap());
    }
    for (k, outs) in &replaced {
        // One of the two writes of a key found it empty, the other found the first's value.
        assert_eq!(outs.len(), 2, "{k}");
        assert_eq!(
            outs.iter().filter(|o| o.is_none()).count(),
            1,
            "{k}: {outs:?}"
        );
    }
    let expected = c.get(leader).read(|kv| kv.map.clone());
    assert_eq!(expected.len() as u64, n / 2);
    c.converge(&[1, 2, 3], &expected).await;
    let state = c.get(leader).read(|kv| kv.clone());
    assert_eq!(state.indexes.len() as u64, n, "each write applied once");
    assert!(
        state.indexes.windows(2).all(|w| w[0] <= w[1]),
        "in log order"
    );
    assert!(
        state.indexes.windows(2).any(|w| w[0] == w[1]),
        "some writes shared an entry"
    );
    // Subscribers see every write, in order.
    let mut seen = 0;
    while seen < n {
        match events.recv().await.unwrap() {
            StoreEvent::Applied { .. } => seen += 1,
            other => panic!("unexpected event {other:?}"),
        }
    }
    for id in [1, 2, 3] {
        assert_eq!(c.get(id).read(|kv| kv.clone()), state, "member {id}");
    }

    // Rebuilt from disk, batches included.
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    c.leader_among(&[1, 2, 3]).await;
    c.converge(&[1, 2, 3], &expected).await;
    for id in [1, 2, 3] {
        assert_eq!(c.get(id).read(|kv| kv.clone()), state, "member {id}");
    }
    // A lone write still goes through.
    assert_eq!(
        c.get(2).write(set("k-0", "last")).await.unwrap(),
        expected.get("k-0").cloned()
    );
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_id_is_bound_to_the_directory() {
    let mut c = Cluster::new(StoreConfig::default());
    c.start(1).await;
    c.kill(1).await;
    let err = Store::<Kv>::open(&c.dir(1), 7, StoreConfig::default(), c.net.transport(7))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, StoreError::InvalidArgument { field, .. } if field == "raft_id"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_member_and_config_are_rejected() {
    let mut c = Cluster::new(StoreConfig::default());
    let s = c.start(1).await;
    let err = s
        .bootstrap(MemberInfo::new("not-an-addr", "n1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("me.addr"), "{err}");
    let bad = StoreConfig {
        election_min_ms: 50,
        ..Default::default()
    };
    let err = Store::<Kv>::open(&c.dir(9), 9, bad, c.net.transport(9))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("election_min_ms"), "{err}");
    c.kill(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_leader_and_follower_writes() {
    let mut c = Cluster::new(StoreConfig::default());
    c.form(&[1, 2, 3]).await;
    let leader = c.leader_among(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();

    let mut expected = BTreeMap::new();
    write_many(&c.get(leader), "on-leader", 10, &mut expected).await;
    // A follower forwards to the leader and returns the leader's answer.
    let f = c.get(follower);
    assert_eq!(
        f.write(set("on-leader-0", "changed")).await.unwrap(),
        Some("v0".to_string())
    );
    // Read-your-writes on the follower that wrote.
    assert_eq!(
        f.read(|kv| kv.map.get("on-leader-0").cloned()),
        Some("changed".to_string())
    );
    expected.insert("on-leader-0".into(), "changed".into());
    write_many(&f, "via-follower", 10, &mut expected).await;
    c.converge(&[1, 2, 3], &expected).await;

    let st = c.get(leader).status();
    assert_eq!(st.voters.len(), 3);
    assert!(st.learners.is_empty());
    assert_eq!(st.replication.len(), 3);
    let fs = f.status();
    assert_eq!(fs.role, RaftRole::Follower);
    assert_eq!(fs.leader_id, Some(leader));
    assert_eq!(fs.leader, Some(member(leader)));
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_death_keeps_acknowledged_writes() {
    let mut c = Cluster::new(StoreConfig::default());
    c.form(&[1, 2, 3]).await;
    let leader = c.leader_among(&[1, 2, 3]).await;
    let mut expected = BTreeMap::new();
    write_many(&c.get(leader), "before", 20, &mut expected).await;

    c.kill(leader).await;
    let killed_at = Instant::now();
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    // Writes on a survivor go through as soon as a new leader is elected.
    let s = c.get(survivors[0]);
    s.write(set("first-after", "1")).await.unwrap();
    expected.insert("first-after".into(), "1".into());
    tracing::info!(elapsed = ?killed_at.elapsed(), "first write accepted after the leader died");
    write_many(&s, "after", 10, &mut expected).await;
    let new_leader = c.leader_among(&survivors).await;
    assert_ne!(new_leader, leader);
    c.converge(&survivors, &expected).await;

    // The dead member comes back from its disk and catches up.
    c.start(leader).await;
    write_many(&c.get(new_leader), "back", 5, &mut expected).await;
    c.converge(&[1, 2, 3], &expected).await;
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_restart_from_disk() {
    let mut c = Cluster::new(StoreConfig::default());
    c.form(&[1, 2, 3]).await;
    let leader = c.leader_among(&[1, 2, 3]).await;
    let mut expected = BTreeMap::new();
    write_many(&c.get(leader), "k", 30, &mut expected).await;
    c.converge(&[1, 2, 3], &expected).await;
    for id in [1, 2, 3] {
        c.kill(id).await;
    }

    for id in [1, 2, 3] {
        c.start(id).await;
    }
    c.leader_among(&[1, 2, 3]).await;
    c.converge(&[1, 2, 3], &expected).await;
    let states: Vec<Kv> = [1, 2, 3]
        .iter()
        .map(|id| c.get(*id).read(|kv| kv.clone()))
        .collect();
    assert_eq!(states[0], states[1]);
    assert_eq!(states[1], states[2]);
    // Each command applied exactly once per member, in order.
    assert_eq!(states[0].indexes.len(), 30);

    // And the cluster keeps working.
    write_many(&c.get(2), "again", 3, &mut expected).await;
    c.converge(&[1, 2, 3], &expected).await;
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_cannot_write_majority_can() {
    // A long write timeout: a refusal before it is the fast no-quorum path, not the backstop.
    let cfg = StoreConfig {
        write_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let mut c = Cluster::new(cfg);
    c.form(&[1, 2, 3]).await;
    let old_leader = c.leader_among(&[1, 2, 3]).await;
    let mut expected = BTreeMap::new();
    write_many(&c.get(old_leader), "k", 5, &mut expected).await;
    c.converge(&[1, 2, 3], &expected).await;

    // Partition the leader away from the two others.
    c.net.cut(old_leader);
    let old = c.get(old_leader);
    let t = Instant::now();
    let err = old.write(set("lost", "x")).await.unwrap_err();
    tracing::info!(elapsed = ?t.elapsed(), "partitioned leader refused a write");
    assert!(
        matches!(err, StoreError::NoQuorum { voters: 3, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.starts_with("no quorum: "), "{msg}");
    assert!(msg.contains("of 3 managers reachable"), "{msg}");
    assert!(msg.contains("reads still work"), "{msg}");
    // Reads still work on the minority.
    assert_eq!(old.read(|kv| kv.map.clone()), expected);
    assert!(!old.status().has_quorum);

    // The majority elects a leader and accepts writes.
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != old_leader).collect();
    write_many(&c.get(majority[1]), "majority", 5, &mut expected).await;
    let new_leader = c.leader_among(&majority).await;
    assert_ne!(new_leader, old_leader);
    // The old leader still refuses.
    assert!(matches!(
        old.write(set("lost", "y")).await,
        Err(StoreError::NoQuorum { .. })
    ));

    // Healing: the old leader rejoins as a follower and the refused writes never show up.
    c.net.heal(old_leader);
    c.leader_among(&[1, 2, 3]).await;
    c.converge(&[1, 2, 3], &expected).await;

    // A lone follower cut off cannot write either.
    let leader = c.leader_among(&[1, 2, 3]).await;
    let lone = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    c.net.cut(lone);
    let t = Instant::now();
    let err = c.get(lone).write(set("lone", "x")).await.unwrap_err();
    tracing::info!(elapsed = ?t.elapsed(), "partitioned follower refused a write");
    assert!(matches!(err, StoreError::NoQuorum { .. }), "{err}");
    c.net.heal(lone);
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
}

fn compacting_cfg() -> StoreConfig {
    StoreConfig {
        snapshot_every_logs: 20,
        keep_logs: 5,
        ..Default::default()
    }
}

fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_log_bounded() {
    let mut c = Cluster::new(compacting_cfg());
    let s = c.start(1).await;
    s.bootstrap(member(1)).await.unwrap();
    let mut expected = BTreeMap::new();
    write_many(&s, "k", 200, &mut expected).await;
    // Snapshots are built and the log purged in the background; once they have caught up,
    // at most one snapshot interval plus the kept tail remains.
    wait_until("log bounded by snapshot + purge", || {
        let st = s.status();
        match (st.last_log_index, st.purged_index, st.snapshot_index) {
            (Some(last), Some(purged), Some(snap)) => snap >= 150 && last - purged <= 20 + 5 + 2,
            _ => false,
        }
    })
    .await;
    // Only the newest snapshot file is kept.
    wait_until("old snapshots deleted", || {
        snapshot_files(&c.dir(1)).len() == 1
    })
    .await;

    c.kill(1).await;
    let s = c.start(1).await;
    assert_eq!(
        s.read(|kv| kv.map.clone()),
        expected,
        "state rebuilt from snapshot + log"
    );
    assert_eq!(s.read(|kv| kv.indexes.len()), 200);
    s.write(set("after-restart", "1")).await.unwrap();
    c.kill(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_learner_receives_a_snapshot() {
    let mut c = Cluster::new(compacting_cfg());
    let s = c.start(1).await;
    s.bootstrap(member(1)).await.unwrap();
    let mut expected = BTreeMap::new();
    write_many(&s, "k", 100, &mut expected).await;
    wait_until("leader purged its log", || {
        s.status().purged_index.is_some_and(|p| p > 10)
    })
    .await;

    let learner = c.start(2).await;
    let mut events = learner.subscribe();
    s.add_learner(2, member(2)).await.unwrap();
    // add_learner returned once the learner's log caught up; it applies on the next commit
    // notice.
    assert!(s.status().replication[&2].is_some_and(|i| i >= 100));
    c.converge(&[2], &expected).await;
    let st = learner.status();
    assert_eq!(st.role, RaftRole::Learner);
    assert!(st.snapshot_index.is_some(), "state came by snapshot");
    match events.recv().await.unwrap() {
        StoreEvent::StateReplaced { index } => assert!(index > 10),
        other => panic!("expected a snapshot install, got {other:?}"),
    }
    assert_eq!(
        s.status().learners.keys().copied().collect::<Vec<_>>(),
        vec![2]
    );

    // New writes keep flowing to the learner, and it survives a restart.
    write_many(&s, "more", 5, &mut expected).await;
    c.converge(&[2], &expected).await;
    c.kill(2).await;
    let learner = c.start(2).await;
    assert_eq!(learner.read(|kv| kv.map.clone()), expected);
    c.kill(1).await;
    c.kill(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_voters_one_three_two() {
    let mut c = Cluster::new(StoreConfig::default());
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    let s1 = c.get(1);
    s1.bootstrap(member(1)).await.unwrap();
    let mut expected = BTreeMap::new();
    write_many(&s1, "one", 3, &mut expected).await;

    s1.add_learner(2, member(2)).await.unwrap();
    s1.add_learner(3, member(3)).await.unwrap();
    assert_eq!(s1.status().learners.len(), 2);
    s1.change_voters(BTreeSet::from([1, 2, 3])).await.unwrap();
    let st = s1.status();
    assert_eq!(st.voters.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(st.learners.is_empty());
    assert!(!st.joint);
    write_many(&s1, "three", 3, &mut expected).await;
    c.converge(&[1, 2, 3], &expected).await;

    // Shrink to two voters; issued from a follower, so it is forwarded.
    c.get(2)
        .change_voters(BTreeSet::from([1, 2]))
        .await
        .unwrap();
    let leader = c.leader_among(&[1, 2]).await;
    wait_until("3 leaves the configuration", || {
        let st = c.get(leader).status();
        st.voters.keys().copied().collect::<Vec<_>>() == vec![1, 2] && st.learners.is_empty()
    })
    .await;
    write_many(&c.get(leader), "two", 3, &mut expected).await;
    c.converge(&[1, 2], &expected).await;

    // Removing a voter works the same way, down to one; the last voter cannot go.
    c.get(leader).remove_member(2).await.unwrap();
    wait_until("1 alone", || {
        c.get(1).status().voters.len() == 1 && c.get(1).status().role == RaftRole::Leader
    })
    .await;
    let err = c.get(1).remove_member(1).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument { .. }), "{err}");
    assert!(c.get(1).change_voters(BTreeSet::new()).await.is_err());
    write_many(&c.get(1), "one-again", 2, &mut expected).await;
    c.converge(&[1], &expected).await;
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_recovers_state() {
    let mut c = Cluster::new(compacting_cfg());
    c.form(&[1, 2, 3]).await;
    let leader = c.leader_among(&[1, 2, 3]).await;
    let mut expected = BTreeMap::new();
    // Enough writes for a snapshot plus a log tail.
    write_many(&c.get(leader), "k", 50, &mut expected).await;
    c.converge(&[1, 2, 3], &expected).await;
    // Two managers are lost for good; the third is stopped.
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
    let survivor = 2;
    let err = Store::<Kv>::force_new_cluster(
        &c.dir(99),
        99,
        member(99),
        compacting_cfg(),
        c.net.transport(99),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&err, StoreError::InvalidArgument { field, .. } if field == "dir"),
        "{err}"
    );
    let s = Store::<Kv>::force_new_cluster(
        &c.dir(survivor),
        survivor,
        member(survivor),
        compacting_cfg(),
        c.net.transport(survivor),
    )
    .await
    .unwrap();
    c.net.register(survivor, s.rpc_handler());
    c.stores.insert(survivor, s.clone());
    assert_eq!(s.read(|kv| kv.map.clone()), expected);
    let st = s.status();
    assert_eq!(
        st.voters.keys().copied().collect::<Vec<_>>(),
        vec![survivor]
    );
    assert_eq!(st.role, RaftRole::Leader);
    assert!(
        !c.dir(survivor)
            .join("force-new-cluster.state.json")
            .exists()
    );

    // It accepts writes, and a brand-new member receives the recovered state.
    write_many(&s, "new", 5, &mut expected).await;
    c.start(4).await;
    s.add_learner(4, member(4)).await.unwrap();
    s.change_voters(BTreeSet::from([survivor, 4]))
        .await
        .unwrap();
    c.converge(&[4], &expected).await;

    // Survives a restart too.
    c.kill(survivor).await;
    c.kill(4).await;
    c.start(survivor).await;
    c.start(4).await;
    c.leader_among(&[survivor, 4]).await;
    c.converge(&[survivor, 4], &expected).await;
    c.kill(survivor).await;
    c.kill(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_force_new_cluster_is_resumed() {
    let mut c = Cluster::new(StoreConfig::default());
    let s = c.start(1).await;
    s.bootstrap(member(1)).await.unwrap();
    s.write(set("old", "1")).await.unwrap();
    c.kill(1).await;

    // As left by a force_new_cluster that stopped after wiping the Raft state.
    let recovered = Kv {
        map: BTreeMap::from([("recovered".to_string(), "yes".to_string())]),
        indexes: vec![1],
    };
    let dir = c.dir(1);
    std::fs::write(
        dir.join("force-new-cluster.state.json"),
        serde_json::to_vec(&recovered).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(dir.join("raft.redb")).unwrap();

    let err = Store::<Kv>::open(&dir, 1, StoreConfig::default(), c.net.transport(1))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("force_new_cluster again"), "{err}");

    let s = Store::<Kv>::force_new_cluster(
        &dir,
        1,
        member(1),
        StoreConfig::default(),
        c.net.transport(1),
    )
    .await
    .unwrap();
    assert_eq!(s.read(|kv| kv.clone()), recovered);
    assert!(!dir.join("force-new-cluster.state.json").exists());
    s.write(set("new", "1")).await.unwrap();
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_write_follows_a_new_leader_when_the_old_one_dies_silently() {
    let mut c = Cluster::new(StoreConfig::default());
    c.form(&[1, 2, 3]).await;
    let leader = c.leader_among(&[1, 2, 3]).await;
    let mut expected = BTreeMap::new();
    write_many(&c.get(leader), "before", 5, &mut expected).await;
    c.converge(&[1, 2, 3], &expected).await;
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let f = c.get(survivors[0]);

    // The follower still trusts the leader when it forwards; the forward hangs (a dead peer
    // never answers) until the follower sees a new leader and sends the write there.
    let killed_at = Instant::now();
    c.kill_silently(leader).await;
    let out = f.write(set("first-after", "1")).await.unwrap();
    let elapsed = killed_at.elapsed();
    tracing::info!(
        ?elapsed,
        write_timeout = ?c.cfg.write_timeout,
        "first write through a follower accepted after the leader died silently"
    );
    assert_eq!(out, None);
    expected.insert("first-after".into(), "1".into());
    write_many(&f, "after", 5, &mut expected).await;
    let new_leader = c.leader_among(&survivors).await;
    assert_ne!(new_leader, leader);
    c.converge(&survivors, &expected).await;
    for id in &survivors {
        // Each write applied exactly once.
        let idx = c.get(*id).read(|kv| kv.indexes.clone());
        assert_eq!(idx.len(), expected.len(), "member {id}");
    }

    c.restart_silenced(leader).await;
    c.converge(&[1, 2, 3], &expected).await;
    assert_eq!(
        c.get(leader).read(|kv| kv.indexes.len()),
        expected.len(),
        "the old leader too"
    );
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_forward_committed_by_the_old_leader_is_applied_once() {
    let mut c = Cluster::new(StoreConfig::default());
    c.form(&[1, 2, 3]).await;
    let leader = c.leader_among(&[1, 2, 3]).await;
    c.get(leader).write(set("x", "0")).await.unwrap();
    let mut expected = BTreeMap::from([("x".to_string(), "0".to_string())]);
    c.converge(&[1, 2, 3], &expected).await;
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();

    // The leader commits the forwarded write, but its answer never reaches the follower.
    c.net.hold_replies(leader);
    let f = c.get(survivors[0]);
    let writer = tokio::spawn(async move { f.write(set("x", "1")).await });
    expected.insert("x".into(), "1".into());
    c.converge(&[1, 2, 3], &expected).await;
    let killed_at = Instant::now();
    c.kill_silently(leader).await;

    // The follower abandons the forward and sends the write again to the new leader, whose
    // log already holds it: the state machine recognises the request and answers with the
    // output of its first application ("0" was the previous value), applying nothing.
    let out = writer.await.unwrap().unwrap();
    tracing::info!(elapsed = ?killed_at.elapsed(), "abandoned write answered after the leader died");
    assert_eq!(out, Some("0".to_string()));
    c.leader_among(&survivors).await;
    write_many(&c.get(survivors[1]), "later", 3, &mut expected).await;
    c.converge(&survivors, &expected).await;
    for id in &survivors {
        // "x" twice and "later" three times.
        let idx = c.get(*id).read(|kv| kv.indexes.clone());
        assert_eq!(idx.len(), 5, "applied once on member {id}: {idx:?}");
    }

    // The old leader comes back, replays its log (where the write appears twice) and receives
    // the rest: it ends up with the same state.
    c.restart_silenced(leader).await;
    c.converge(&[1, 2, 3], &expected).await;
    let states: Vec<Kv> = [1, 2, 3]
        .iter()
        .map(|id| c.get(*id).read(|kv| kv.clone()))
        .collect();
    assert_eq!(states[0], states[1]);
    assert_eq!(states[1], states[2]);
    assert_eq!(states[0].indexes.len(), 5);
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_make_writes_fail_with_no_quorum() {
    // A long write timeout: a refusal before it is the fast no-quorum path, not the backstop.
    let cfg = StoreConfig {
        write_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let mut c = Cluster::new(cfg);
    c.form(&[1, 2, 3]).await;
    let leader = c.leader_among(&[1, 2, 3]).await;
    let mut expected = BTreeMap::new();
    write_many(&c.get(leader), "k", 3, &mut expected).await;
    c.converge(&[1, 2, 3], &expected).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();

    // A follower whose links went silent: it forwards to a leader it just heard from, the
    // forward hangs, the leader goes quiet; the write is abandoned and refused.
    let lone = followers[0];
    c.net.silence(lone);
    let t = Instant::now();
    let err = c.get(lone).write(set("lone", "x")).await.unwrap_err();
    tracing::info!(elapsed = ?t.elapsed(), error = %err, "silenced follower refused a write");
    assert!(matches!(err, StoreError::NoQuorum { .. }), "{err}");
    c.net.heal(lone);
    let leader = c.leader_among(&[1, 2, 3]).await;

    // A leader whose followers went silent mid-write loses its lease and refuses.
    for id in [1, 2, 3].into_iter().filter(|i| *i != leader) {
        c.net.silence(id);
    }
    let t = Instant::now();
    let err = c.get(leader).write(set("lost", "x")).await.unwrap_err();
    tracing::info!(elapsed = ?t.elapsed(), error = %err, "leader with silent followers refused a write");
    assert!(
        matches!(err, StoreError::NoQuorum { voters: 3, .. }),
        "{err}"
    );
    for id in [1, 2, 3] {
        c.net.heal(id);
    }
    // Healed, the cluster writes again (the refused write may or may not survive in the log,
    // as with any Raft store).
    let leader = c.leader_among(&[1, 2, 3]).await;
    c.get(leader).write(set("healed", "1")).await.unwrap();
    let reference = c.get(leader);
    for id in [1, 2, 3] {
        let s = c.get(id);
        wait_until(&format!("node {id} converges"), || {
            s.read(|kv| kv.clone()) == reference.read(|kv| kv.clone())
        })
        .await;
    }
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
}
