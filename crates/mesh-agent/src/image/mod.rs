//! The node-local image store: content-addressed configs and manifests, layers unpacked once
//! per chain id and shared, tags the way docker spells them.
//!
//! Layout under the store root:
//! - `blobs/sha256/<hex>`: image configs and manifests, named by their digest;
//! - `layers/<chain hex>/`: one unpacked layer (overlayfs lower dir), `layers/<chain hex>.json`
//!   its record;
//! - `images/<config hex>.json`: one image's record;
//! - `repositories.json`: tag → image id;
//! - `tmp/`: work space of loads in progress (emptied on open).

mod layer;
mod load;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::digest::{is_sha256_hex, sha256_hex};
use crate::error::ImageError;
use crate::reference;

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// The image id: the digest of its config, `sha256:<hex>`.
    pub id: String,
    /// Its tags, in the short form users type (`busybox:latest`, `ghcr.io/a/b:v1`).
    pub tags: Vec<String>,
    /// The digest of the manifest it was loaded from, when the archive had one.
    pub manifest_digest: Option<String>,
    /// Total size of the files in its layers, in bytes.
    pub size: u64,
    /// When it was built, as its config says (RFC 3339), if it says.
    pub created: Option<String>,
    /// CPU architecture (`amd64`, `arm64`, ...).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<String>,
    /// Chain ids of the layers, bottom first: the names of the unpacked layer directories.
    pub chain_ids: Vec<String>,
    /// What the image says about how to run it.
    pub config: ImageConfig,
}

impl Image {
    /// The first 12 hex digits of the id, as docker shows it.
    pub fn short_id(&self) -> &str {
        let hex = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        &hex[..hex.len().min(12)]
    }
}

/// The runtime part of an image config (docker's `config` object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `User`: `uid`, `uid:gid`, `name` or `name:group`.
    pub user: Option<String>,
    /// `Env`: `KEY=value` entries.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `ExposedPorts`: `80/tcp`, `53/udp`, ...
    pub exposed_ports: Vec<String>,
    /// `Volumes`: paths the image declares as volumes.
    pub volumes: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`, e.g. `SIGQUIT`.
    pub stop_signal: Option<String>,
    /// `Healthcheck`, if the image defines one.
    pub healthcheck: Option<ImageHealthcheck>,
}

/// docker's `Healthcheck` object of an image config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageHealthcheck {
    /// `["CMD", args...]`, `["CMD-SHELL", command]` or `["NONE"]`.
    pub test: Vec<String>,
    /// Time between checks.
    pub interval: Option<Duration>,
    /// Time one check may take.
    pub timeout: Option<Duration>,
    /// Time after start during which failures do not count.
    pub start_period: Option<Duration>,
    /// Consecutive failures that make the container unhealthy.
    pub retries: Option<u32>,
}

/// One image an archive brought in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// The image id, `sha256:<hex>`.
    pub id: String,
    /// The tags it got from the archive (short form).
    pub tags: Vec<String>,
}

/// What `ImageStore::remove` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemovedImage {
    /// Tags taken away (short form).
    pub untagged: Vec<String>,
    /// The id of the image deleted, if it was (not when another tag still names it).
    pub deleted: Option<String>,
    /// Layers deleted because no image or container uses them any more (chain ids).
    pub layers_deleted: Vec<String>,
}

/// The stored record of a layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub chain_id: String,
    pub diff_id: String,
    pub size: u64,
}

/// What the store reads of a container's `meta.json` to know what it uses.
#[derive(Debug, Deserialize)]
pub(crate) struct ContainerUse {
    pub image_id: String,
    #[serde(default)]
    pub lower_dirs: Vec<PathBuf>,
}

/// The node-local image store. Cheap to share behind an `Arc`; its methods block (file I/O),
/// so call `load` from a blocking context (`tokio::task::spawn_blocking`).
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    lock: Mutex<()>,
}

impl ImageStore {
    /// Opens (creating as needed) the store rooted at `root` and empties its `tmp/`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in [
            "blobs/sha256",
            "layers",
            "images",
            "tmp",
            "containers",
            "volumes",
        ] {
            let p = root.join(dir);
            fs::create_dir_all(&p)
                .map_err(|e| ImageError::io(format!("creating {}", p.display()), e))?;
        }
        let root = fs::canonicalize(root)
            .map_err(|e| ImageError::io(format!("resolving {}", root.display()), e))?;
        let tmp = root.join("tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let p = e.path();
                if let Err(err) = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p)) {
                    warn!(path = %p.display(), error = %err, "could not clear a leftover temp entry");
                }
            }
        }
        Ok(ImageStore {
            root,
            lock: Mutex::new(()),
        })
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn layer_dir(&self, chain_id: &str) -> PathBuf {
        let hex = chain_id.strip_prefix("sha256:").unwrap_or(chain_id);
        self.root.join("layers").join(hex)
    }

    /// The unpacked layer directories of `image`, bottom first.
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image.chain_ids.iter().map(|c| self.layer_dir(c)).collect()
    }

    fn image_record_path(&self, id: &str) -> PathBuf {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        self.root.join("images").join(format!("{hex}.json"))
    }

    fn repositories_path(&self) -> PathBuf {
        self.root.join("repositories.json")
    }

    pub(crate) fn read_repositories(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let p = self.repositories_path();
        match fs::read(&p) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|e| ImageError::json(format!("reading {}", p.display()), e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ImageError::io(format!("reading {}", p.display()), e)),
        }
    }

    pub(crate) fn write_repositories(
        &self,
        repos: &BTreeMap<String, String>,
    ) -> Result<(), ImageError> {
        let p = self.repositories_path();
        let data = serde_json::to_vec_pretty(repos)
            .map_err(|e| ImageError::json(format!("encoding {}", p.display()), e))?;
        write_atomic(&p, &data).map_err(|e| ImageError::io(format!("writing {}", p.display()), e))
    }

    fn read_image_record(&self, id: &str) -> Result<Option<Image>, ImageError> {
        let p = self.image_record_path(id);
        match fs::read(&p) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| ImageError::json(format!("reading {}", p.display()), e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io(format!("reading {}", p.display()), e)),
        }
    }

    pub(crate) fn write_image_record(&self, image: &Image) -> Result<(), ImageError> {
        let p = self.image_record_path(&image.id);
        let mut stored = image.clone();
        stored.tags.clear();
        let data = serde_json::to_vec_pretty(&stored)
            .map_err(|e| ImageError::json(format!("encoding {}", p.display()), e))?;
        write_atomic(&p, &data).map_err(|e| ImageError::io(format!("writing {}", p.display()), e))
    }

    fn all_ids(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.root.join("images");
        let entries = fs::read_dir(&dir)
            .map_err(|e| ImageError::io(format!("listing {}", dir.display()), e))?;
        let mut ids = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(hex) = name.strip_suffix(".json")
                && is_sha256_hex(hex)
            {
                ids.push(format!("sha256:{hex}"));
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn with_tags(&self, mut image: Image, repos: &BTreeMap<String, String>) -> Image {
        image.tags = repos
            .iter()
            .filter(|(_, id)| **id == image.id)
            .map(|(tag, _)| reference::familiar(tag))
            .collect();
        image
    }

    /// Loads an OCI image layout tarball or a `docker save` tarball (plain, gzip or zstd
    /// compressed). Verifies every digest the format gives; on any error the store is left as
    /// it was. Returns the images it holds with their tags.
    pub fn load(&self, path: &Path) -> Result<Vec<LoadedImage>, ImageError> {
        load::load(self, path)
    }

    /// All images, with their tags, sorted by id.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let repos = self.read_repositories()?;
        let mut out = Vec::new();
        for id in self.all_ids()? {
            if let Some(img) = self.read_image_record(&id)? {
                out.push(self.with_tags(img, &repos));
            }
        }
        Ok(out)
    }

    /// Finds an image by `name[:tag]` (docker's normalization: `busybox` is
    /// `docker.io/library/busybox:latest`), `name@sha256:...`, a full `sha256:` id, or a unique
    /// prefix of the id's hex digits.
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let repos = self.read_repositories()?;
        let id = self.resolve_id(reference, &repos)?;
        match self.read_image_record(&id)? {
            Some(img) => Ok(self.with_tags(img, &repos)),
            None => Err(ImageError::ImageNotFound {
                reference: reference.to_string(),
            }),
        }
    }

    fn resolve_id(
        &self,
        reference: &str,
        repos: &BTreeMap<String, String>,
    ) -> Result<String, ImageError> {
        let not_found = || ImageError::ImageNotFound {
            reference: reference.to_string(),
        };
        // A full id.
        if let Some(hex) = sha256_hex(reference) {
            let id = format!("sha256:{hex}");
            return if self.image_record_path(&id).exists() {
                Ok(id)
            } else {
                self.by_manifest_digest(&id)?.ok_or_else(not_found)
            };
        }
        let parsed = reference::parse(reference);
        // A name, possibly with a tag or a digest.
        if let Ok(r) = &parsed {
            if let Some(digest) = &r.digest {
                if self.image_record_path(digest).exists() {
                    return Ok(digest.clone());
                }
                return self.by_manifest_digest(digest)?.ok_or_else(not_found);
            }
            if let Some(id) = repos.get(&r.full()) {
                return Ok(id.clone());
            }
        }
        // A prefix of an id.
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hex = hex.to_ascii_lowercase();
            let matches: Vec<String> = self
                .all_ids()?
                .into_iter()
                .filter(|id| id["sha256:".len()..].starts_with(&hex))
                .collect();
            match matches.len() {
                0 => {}
                1 => return Ok(matches[0].clone()),
                _ => {
                    return Err(ImageError::AmbiguousReference {
                        reference: reference.to_string(),
                        candidates: matches
                            .iter()
                            .map(|m| m.get(7..19).unwrap_or(m).to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        }
        match parsed {
            Ok(_) => Err(not_found()),
            Err(reason) => Err(ImageError::InvalidReference {
                reference: reference.to_string(),
                reason,
            }),
        }
    }

    fn by_manifest_digest(&self, digest: &str) -> Result<Option<String>, ImageError> {
        for id in self.all_ids()? {
            if let Some(img) = self.read_image_record(&id)?
                && img.manifest_digest.as_deref() == Some(digest)
            {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Containers (ids) in this store's root whose image is `image_id`.
    pub fn containers_using(&self, image_id: &str) -> Result<Vec<String>, ImageError> {
        Ok(self
            .container_uses()?
            .into_iter()
            .filter(|(_, u)| u.image_id == image_id)
            .map(|(id, _)| id)
            .collect())
    }

    fn container_uses(&self) -> Result<Vec<(String, ContainerUse)>, ImageError> {
        let dir = self.root.join("containers");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io(format!("listing {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let meta = e.path().join("meta.json");
            match fs::read(&meta) {
                Ok(data) => match serde_json::from_slice::<ContainerUse>(&data) {
                    Ok(u) => out.push((id, u)),
                    Err(err) => {
                        warn!(path = %meta.display(), error = %err, "unreadable container record")
                    }
                },
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    warn!(path = %meta.display(), error = %err, "unreadable container record")
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Removes a tag, or an image. Given a tag while other tags name the same image, only
    /// that tag goes. Given an id or the last tag, the image goes with all its tags, and so
    /// do the layers no other image or container uses. Refused with `ImageInUse` (naming the
    /// containers) while a container uses the image, unless `force`.
    pub fn remove(&self, reference: &str, force: bool) -> Result<RemovedImage, ImageError> {
        let _guard = self.lock();
        let mut repos = self.read_repositories()?;
        let id = self.resolve_id(reference, &repos)?;
        let tags_of_image: Vec<String> = repos
            .iter()
            .filter(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .collect();
        let by_tag = reference::parse(reference)
            .ok()
            .filter(|r| r.digest.is_none())
            .map(|r| r.full())
            .filter(|full| repos.contains_key(full));
        let mut out = RemovedImage::default();
        if let Some(tag) = by_tag
            && tags_of_image.len() > 1
        {
            repos.remove(&tag);
            self.write_repositories(&repos)?;
            info!(tag = %tag, image = %id, "untagged image");
            out.untagged.push(reference::familiar(&tag));
            return Ok(out);
        }
        let users = self.containers_using(&id)?;
        if !users.is_empty() && !force {
            return Err(ImageError::ImageInUse {
                image: id,
                containers: users.join(", "),
            });
        }
        for t in &tags_of_image {
            repos.remove(t);
            out.untagged.push(reference::familiar(t));
        }
        self.write_repositories(&repos)?;
        let record = self.read_image_record(&id)?;
        let p = self.image_record_path(&id);
        fs::remove_file(&p).map_err(|e| ImageError::io(format!("removing {}", p.display()), e))?;
        if let Some(img) = &record {
            for blob in std::iter::once(&img.id).chain(img.manifest_digest.iter()) {
                if let Some(hex) = sha256_hex(blob) {
                    let _ = fs::remove_file(self.root.join("blobs/sha256").join(hex));
                }
            }
        }
        info!(image = %id, forced = force && !users.is_empty(), "removed image");
        out.deleted = Some(id);
        out.layers_deleted = self.prune_layers_locked()?;
        Ok(out)
    }

    /// Deletes the layers no image and no container uses (as after a forced removal whose
    /// containers are gone since); returns their chain ids.
    pub fn prune_layers(&self) -> Result<Vec<String>, ImageError> {
        let _guard = self.lock();
        self.prune_layers_locked()
    }

    fn prune_layers_locked(&self) -> Result<Vec<String>, ImageError> {
        let mut used: BTreeSet<PathBuf> = BTreeSet::new();
        for id in self.all_ids()? {
            if let Some(img) = self.read_image_record(&id)? {
                used.extend(self.layer_dirs(&img));
            }
        }
        for (_, u) in self.container_uses()? {
            used.extend(u.lower_dirs);
        }
        let dir = self.root.join("layers");
        let entries = fs::read_dir(&dir)
            .map_err(|e| ImageError::io(format!("listing {}", dir.display()), e))?;
        let mut deleted = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_sha256_hex(&name) || used.contains(&e.path()) {
                continue;
            }
            let path = e.path();
            fs::remove_dir_all(&path)
                .map_err(|err| ImageError::io(format!("removing {}", path.display()), err))?;
            let _ = fs::remove_file(dir.join(format!("{name}.json")));
            debug!(layer = %name, "removed unused layer");
            deleted.push(format!("sha256:{name}"));
        }
        Ok(deleted)
    }
}

/// Writes `data` to `path` through a temp file and a rename, so readers see all or nothing.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}
