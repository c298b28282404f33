//! A node's credentials on disk: `ca.crt`, `node.crt`, `node.key`.
//!
//! [`NodeCredentials::save`] replaces the three files as one unit: it writes `*.new` files and
//! syncs them, then records a `commit` marker, renames the new files over the old ones, and
//! removes the marker. [`NodeCredentials::load`] finishes an interrupted commit (marker present)
//! or discards an unfinished write (no marker), so a crash at any point leaves either the old
//! set or the new set, never a certificate next to the wrong key.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{PkiError, Result};
use crate::node::{NodeKey, verify_signed_by};

/// File name of the CA certificate.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the node certificate.
pub const NODE_CERT_FILE: &str = "node.crt";
/// File name of the node private key.
pub const NODE_KEY_FILE: &str = "node.key";
const COMMIT_MARKER: &str = "commit";
const FILES: [&str; 3] = [CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE];
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// A node's TLS credentials: the cluster CA, its certificate and its private key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCredentials {
    /// Cluster root certificate.
    pub ca_cert_pem: String,
    /// This node's certificate.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
}

impl fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCredentials")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

fn new_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.new"))
}

/// Writes `contents` to `path` (mode 0600, truncating) and syncs it.
fn write_synced(path: &Path, contents: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_err("create", path))?;
    // The mode given to open() is not applied to a file that already existed.
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .map_err(io_err("set permissions of", path))?;
    file.write_all(contents).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("sync", path))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

fn read_if_present(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Completes or discards an interrupted [`NodeCredentials::save`] in `dir`.
fn recover(dir: &Path) -> Result<()> {
    let marker = dir.join(COMMIT_MARKER);
    let committed = marker.exists();
    let mut changed = false;
    for name in FILES {
        let pending = new_path(dir, name);
        if !pending.exists() {
            continue;
        }
        changed = true;
        if committed {
            let target = dir.join(name);
            fs::rename(&pending, &target).map_err(io_err("rename", &pending))?;
        } else {
            remove_if_present(&pending)?;
        }
    }
    if committed {
        tracing::warn!(dir = %dir.display(), "finished an interrupted credentials update");
        sync_dir(dir)?;
        remove_if_present(&marker)?;
        changed = true;
    } else if changed {
        tracing::warn!(dir = %dir.display(), "discarded an unfinished credentials update");
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(())
}

impl NodeCredentials {
    /// Writes the three files into `dir` (created with mode 0700 if missing) as one atomic
    /// update; every file gets mode 0600.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(io_err("set permissions of", dir))?;
        // Finish or discard anything a previous crash left behind before starting over.
        recover(dir)?;
        let contents = [
            (CA_CERT_FILE, &self.ca_cert_pem),
            (NODE_CERT_FILE, &self.cert_pem),
            (NODE_KEY_FILE, &self.key_pem),
        ];
        for (name, text) in contents {
            write_synced(&new_path(dir, name), text.as_bytes())?;
        }
        sync_dir(dir)?;
        // From here on the new set wins, even across a crash.
        let marker = dir.join(COMMIT_MARKER);
        write_synced(&marker, b"")?;
        sync_dir(dir)?;
        for name in FILES {
            let pending = new_path(dir, name);
            fs::rename(&pending, dir.join(name)).map_err(io_err("rename", &pending))?;
        }
        sync_dir(dir)?;
        fs::remove_file(&marker).map_err(io_err("remove", &marker))?;
        sync_dir(dir)?;
        tracing::debug!(dir = %dir.display(), "saved node credentials");
        Ok(())
    }

    /// Reads the credentials from `dir`: `None` if there are none (a node that never joined),
    /// an error if only some files exist or they do not belong together.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        if !dir.exists() {
            return Ok(None);
        }
        recover(dir)?;
        let ca = read_if_present(&dir.join(CA_CERT_FILE))?;
        let cert = read_if_present(&dir.join(NODE_CERT_FILE))?;
        let key = read_if_present(&dir.join(NODE_KEY_FILE))?;
        let (ca_cert_pem, cert_pem, key_pem) = match (ca, cert, key) {
            (None, None, None) => return Ok(None),
            (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    (CA_CERT_FILE, ca.is_none()),
                    (NODE_CERT_FILE, cert.is_none()),
                    (NODE_KEY_FILE, key.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, absent)| absent.then_some(name))
                .collect();
                return Err(PkiError::InconsistentCredentials {
                    dir: dir.to_owned(),
                    reason: format!("{} missing", missing.join(", ")),
                });
            }
        };
        let creds = Self {
            ca_cert_pem,
            cert_pem,
            key_pem,
        };
        creds
            .validate()
            .map_err(|e| PkiError::InconsistentCredentials {
                dir: dir.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Some(creds))
    }

    /// Checks that the node certificate is signed by the CA and certifies the key.
    pub fn validate(&self) -> Result<()> {
        verify_signed_by(&self.cert_pem, &self.ca_cert_pem)?;
        let key = NodeKey::from_pem(&self.key_pem)?;
        if !key.matches_cert(&self.cert_pem)? {
            return Err(PkiError::BadKey {
                field: "node key",
                reason: "the key does not belong to the node certificate".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::generate_root_ca;
    use crate::node::sign_node_cert;
    use mesh_api::NodeRole;

    fn creds() -> NodeCredentials {
        let ca = generate_root_ca("c").unwrap();
        let key = NodeKey::generate().unwrap();
        let cert = sign_node_cert(
            &ca,
            &key.csr_pem().unwrap(),
            "node1",
            NodeRole::Worker,
            "c",
            1_700_000_000_000,
            3_600_000,
        )
        .unwrap();
        NodeCredentials {
            ca_cert_pem: ca.cert_pem,
            cert_pem: cert,
            key_pem: key.key_pem(),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn save_and_load_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        assert_eq!(NodeCredentials::load(&dir).unwrap(), None);
        let c = creds();
        c.save(&dir).unwrap();
        for name in FILES {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(NodeCredentials::load(&dir).unwrap(), Some(c.clone()));
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        // Overwriting replaces the set.
        let d = creds();
        d.save(&dir).unwrap();
        assert_eq!(NodeCredentials::load(&dir).unwrap(), Some(d));
        assert!(!format!("{c:?}").contains("PRIVATE"));
    }

    #[test]
    fn empty_directory_has_no_credentials() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(NodeCredentials::load(tmp.path()).unwrap(), None);
    }

    #[test]
    fn partial_set_is_an_error_naming_the_missing_file() {
        let tmp = tempfile::tempdir().unwrap();
        creds().save(tmp.path()).unwrap();
        fs::remove_file(tmp.path().join(NODE_KEY_FILE)).unwrap();
        let err = NodeCredentials::load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("node.key missing"), "{err}");
    }

    #[test]
    fn mismatched_key_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = creds();
        c.key_pem = NodeKey::generate().unwrap().key_pem();
        c.save(tmp.path()).unwrap();
        let err = NodeCredentials::load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
    }

    #[test]
    fn interrupted_commit_is_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let old = creds();
        old.save(tmp.path()).unwrap();
        // Simulate a crash after the marker and the first rename.
        let new = creds();
        fs::write(new_path(tmp.path(), NODE_CERT_FILE), &new.cert_pem).unwrap();
        fs::write(new_path(tmp.path(), CA_CERT_FILE), &new.ca_cert_pem).unwrap();
        fs::write(tmp.path().join(NODE_KEY_FILE), &new.key_pem).unwrap();
        fs::write(tmp.path().join(COMMIT_MARKER), b"").unwrap();
        assert_eq!(NodeCredentials::load(tmp.path()).unwrap(), Some(new));
        assert!(!tmp.path().join(COMMIT_MARKER).exists());
    }

    #[test]
    fn unfinished_write_is_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        let old = creds();
        old.save(tmp.path()).unwrap();
        // Simulate a crash while writing the new files, before the marker.
        fs::write(new_path(tmp.path(), NODE_CERT_FILE), "half a cert").unwrap();
        assert_eq!(NodeCredentials::load(tmp.path()).unwrap(), Some(old));
        assert!(!new_path(tmp.path(), NODE_CERT_FILE).exists());
    }
}
