//! What a node keeps about itself in its data directory, apart from Raft:
//! `node.json` (identity and last known managers) and `certs/` (its credentials).

use std::io::Write;
use std::path::{Path, PathBuf};

use mesh_api::NodeRole;
use serde::{Deserialize, Serialize};

/// Contents of `node.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    /// Node ID.
    pub node_id: String,
    /// Cluster ID.
    pub cluster_id: String,
    /// Raft ID this node uses as a manager.
    pub raft_id: u64,
    /// Role of the node when last saved.
    pub role: NodeRole,
    /// Last known manager control addresses.
    pub managers: Vec<String>,
    /// Advertised IP.
    pub advertise_addr: String,
    /// Control listen address.
    pub listen_addr: String,
}

/// Paths inside the data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    /// `node.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("node.json")
    }
    /// `certs/`.
    pub fn certs(&self) -> PathBuf {
        self.root.join("certs")
    }
    /// `raft/`.
    pub fn raft(&self) -> PathBuf {
        self.root.join("raft")
    }

    /// Reads `node.json`, if the node is part of a cluster.
    pub fn load_state(&self) -> anyhow::Result<Option<LocalState>> {
        let p = self.state_file();
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                anyhow::anyhow!(
                    "{} is corrupt ({e}); move it away to reset this node",
                    p.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", p.display())),
        }
    }

    /// Writes `node.json` atomically (temp file, fsync, rename, fsync dir).
    pub fn save_state(&self, s: &LocalState) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", self.root.display()))?;
        let p = self.state_file();
        let tmp = self.root.join(".node.json.tmp");
        let body = serde_json::to_vec_pretty(s)?;
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)
            .map_err(|e| anyhow::anyhow!("cannot rename to {}: {e}", p.display()))?;
        if let Ok(d) = std::fs::File::open(&self.root) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Removes everything that ties this node to a cluster.
    pub fn wipe(&self) -> anyhow::Result<()> {
        for p in [self.state_file()] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow::anyhow!("cannot remove {}: {e}", p.display())),
            }
        }
        for d in [self.certs(), self.raft()] {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow::anyhow!("cannot remove {}: {e}", d.display())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_wipes() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::new(t.path());
        assert!(d.load_state().unwrap().is_none());
        let s = LocalState {
            node_id: "n".into(),
            cluster_id: "c".into(),
            raft_id: 7,
            role: NodeRole::Manager,
            managers: vec!["192.0.2.1:2377".into()],
            advertise_addr: "192.0.2.1".into(),
            listen_addr: "0.0.0.0:2377".into(),
        };
        d.save_state(&s).unwrap();
        assert_eq!(d.load_state().unwrap(), Some(s));
        std::fs::create_dir_all(d.raft()).unwrap();
        d.wipe().unwrap();
        assert!(d.load_state().unwrap().is_none());
        assert!(!d.raft().exists());
        std::fs::write(d.state_file(), b"{").unwrap();
        assert!(d.load_state().unwrap_err().to_string().contains("corrupt"));
    }
}
