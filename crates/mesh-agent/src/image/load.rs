//! Loading image archives: OCI image layouts and `docker save` tarballs (old and new layout).
//!
//! Everything is checked and unpacked under `tmp/` first; only then are layers renamed into
//! `layers/` and image records and tags written, so a bad archive leaves the store unchanged.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::layer::{clean_relative, decompressed, unpack_layer};
use super::{
    Image, ImageConfig, ImageHealthcheck, ImageStore, LayerRecord, LoadedImage, write_atomic,
};
use crate::digest::{HashingReader, chain_ids, sha256_digest, sha256_hex};
use crate::error::ImageError;
use crate::reference;

const CONTAINERD_NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A directory under the store's `tmp/`, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(parent: &Path, prefix: &str) -> std::io::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = parent.join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
        fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %self.0.display(), error = %e, "could not remove a temp dir");
        }
    }
}

/// One image found in an archive, not yet checked against its config.
struct Pending {
    config_bytes: Vec<u8>,
    config_digest: String,
    manifest_digest: Option<String>,
    /// Full references (`docker.io/library/x:tag`).
    tags: Vec<String>,
    layers: Vec<LayerSource>,
}

struct LayerSource {
    path: PathBuf,
    /// The blob digest and size, when the format names them.
    digest: Option<(String, Option<u64>)>,
}

#[derive(Deserialize)]
struct RawImage {
    created: Option<String>,
    architecture: Option<String>,
    os: Option<String>,
    config: Option<RawConfig>,
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    user: Option<String>,
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    volumes: Option<BTreeMap<String, serde_json::Value>>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
    healthcheck: Option<RawHealthcheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawHealthcheck {
    test: Option<Vec<String>>,
    interval: Option<i64>,
    timeout: Option<i64>,
    start_period: Option<i64>,
    retries: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

fn nanos(v: Option<i64>) -> Option<Duration> {
    v.filter(|n| *n > 0)
        .map(|n| Duration::from_nanos(n.unsigned_abs()))
}

impl From<RawConfig> for ImageConfig {
    fn from(c: RawConfig) -> Self {
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        ImageConfig {
            user: nonempty(c.user),
            env: c.env.unwrap_or_default(),
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            working_dir: nonempty(c.working_dir),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            volumes: c.volumes.unwrap_or_default().into_keys().collect(),
            labels: c.labels.unwrap_or_default(),
            stop_signal: nonempty(c.stop_signal),
            healthcheck: c.healthcheck.and_then(|h| {
                let test = h.test.unwrap_or_default();
                (!test.is_empty()).then(|| ImageHealthcheck {
                    test,
                    interval: nanos(h.interval),
                    timeout: nanos(h.timeout),
                    start_period: nanos(h.start_period),
                    retries: h
                        .retries
                        .filter(|r| *r > 0)
                        .map(|r| u32::try_from(r).unwrap_or(u32::MAX)),
                })
            }),
        }
    }
}

pub(super) fn load(store: &ImageStore, path: &Path) -> Result<Vec<LoadedImage>, ImageError> {
    let work = TempDir::new(&store.root().join("tmp"), "load")
        .map_err(|e| ImageError::io("creating a temp dir under the store", e))?;
    let archive = work.path().join("archive");
    fs::create_dir(&archive)
        .map_err(|e| ImageError::io(format!("creating {}", archive.display()), e))?;
    extract_archive(path, &archive)?;
    let archive = fs::canonicalize(&archive)
        .map_err(|e| ImageError::io(format!("resolving {}", archive.display()), e))?;

    let pending = if archive.join("manifest.json").is_file() {
        docker_images(path, &archive)?
    } else if archive.join("index.json").is_file() {
        oci_images(path, &archive)?
    } else {
        return Err(ImageError::bad(
            path,
            "neither manifest.json (docker save) nor index.json (OCI image layout) at its top",
        ));
    };
    if pending.is_empty() {
        return Err(ImageError::bad(path, "it holds no image for this platform"));
    }
    // The same image may be listed once per tag.
    let mut merged: Vec<Pending> = Vec::new();
    for p in pending {
        match merged
            .iter_mut()
            .find(|m| m.config_digest == p.config_digest)
        {
            Some(m) => {
                for t in p.tags {
                    if !m.tags.contains(&t) {
                        m.tags.push(t);
                    }
                }
            }
            None => merged.push(p),
        }
    }

    let staged_root = work.path().join("layers");
    fs::create_dir(&staged_root)
        .map_err(|e| ImageError::io(format!("creating {}", staged_root.display()), e))?;
    let mut staged: BTreeMap<String, LayerRecord> = BTreeMap::new();
    let mut images: Vec<(Image, Pending)> = Vec::new();
    for p in merged {
        let image = stage_image(store, path, &p, &staged_root, &mut staged)?;
        images.push((image, p));
    }

    // Everything checked: move it into place.
    let _guard = store.lock();
    for (chain, rec) in &staged {
        let dst = store.layer_dir(chain);
        let hex = chain.strip_prefix("sha256:").unwrap_or(chain);
        if !dst.exists() {
            let src = staged_root.join(hex);
            fs::rename(&src, &dst).map_err(|e| {
                ImageError::io(format!("moving {} to {}", src.display(), dst.display()), e)
            })?;
        }
        let rec_path = store.root().join("layers").join(format!("{hex}.json"));
        let data = serde_json::to_vec_pretty(rec)
            .map_err(|e| ImageError::json("encoding a layer record", e))?;
        write_atomic(&rec_path, &data)
            .map_err(|e| ImageError::io(format!("writing {}", rec_path.display()), e))?;
    }
    let mut repos = store.read_repositories()?;
    let mut loaded = Vec::new();
    for (image, p) in &images {
        let blobs = store.root().join("blobs/sha256");
        if let Some(hex) = sha256_hex(&p.config_digest) {
            let b = blobs.join(hex);
            write_atomic(&b, &p.config_bytes)
                .map_err(|e| ImageError::io(format!("writing {}", b.display()), e))?;
        }
        store.write_image_record(image)?;
        for t in &p.tags {
            if let Some(old) = repos.insert(t.clone(), image.id.clone())
                && old != image.id
            {
                info!(tag = %t, from = %old, to = %image.id, "tag moved to the new image");
            }
        }
        info!(image = %image.id, tags = ?p.tags, layers = image.chain_ids.len(), "loaded image");
        loaded.push(LoadedImage {
            id: image.id.clone(),
            tags: p.tags.iter().map(|t| reference::familiar(t)).collect(),
        });
    }
    store.write_repositories(&repos)?;
    Ok(loaded)
}

/// Checks one image's config against its layers and unpacks the layers not yet in the store.
fn stage_image(
    store: &ImageStore,
    path: &Path,
    p: &Pending,
    staged_root: &Path,
    staged: &mut BTreeMap<String, LayerRecord>,
) -> Result<Image, ImageError> {
    let raw: RawImage = serde_json::from_slice(&p.config_bytes).map_err(|e| {
        ImageError::bad(
            path,
            format!("image config {} is not valid: {e}", p.config_digest),
        )
    })?;
    let diff_ids = raw.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    if let Some(bad) = diff_ids.iter().find(|d| sha256_hex(d).is_none()) {
        return Err(ImageError::bad(
            path,
            format!(
                "image config {}: diff_id `{bad}` is not a sha256 digest",
                p.config_digest
            ),
        ));
    }
    if diff_ids.len() != p.layers.len() {
        return Err(ImageError::bad(
            path,
            format!(
                "image {} lists {} layers but its config has {} diff_ids",
                p.config_digest,
                p.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let chains = chain_ids(&diff_ids);
    let mut size = 0u64;
    for (i, layer) in p.layers.iter().enumerate() {
        let chain = &chains[i];
        let hex = chain.strip_prefix("sha256:").unwrap_or(chain);
        if let Some(rec) = staged.get(chain) {
            size += rec.size;
            continue;
        }
        if store.layer_dir(chain).is_dir() {
            let rec_path = store.root().join("layers").join(format!("{hex}.json"));
            if let Ok(data) = fs::read(&rec_path)
                && let Ok(rec) = serde_json::from_slice::<LayerRecord>(&data)
            {
                debug!(layer = %chain, "layer already unpacked");
                size += rec.size;
                continue;
            }
        }
        if let Some((digest, expected_size)) = &layer.digest {
            verify_file(path, &layer.path, digest, *expected_size)?;
        }
        let dest = staged_root.join(hex);
        fs::create_dir(&dest)
            .map_err(|e| ImageError::io(format!("creating {}", dest.display()), e))?;
        let f = fs::File::open(&layer.path)
            .map_err(|e| ImageError::io(format!("opening layer {}", layer.path.display()), e))?;
        let dec = decompressed(BufReader::with_capacity(1 << 16, f))
            .map_err(|e| ImageError::bad(path, format!("layer {}: {e}", diff_ids[i])))?;
        let mut hashing = HashingReader::new(dec);
        let layer_size = unpack_layer(&mut hashing, &dest)
            .map_err(|e| ImageError::bad(path, format!("layer {}: {e}", diff_ids[i])))?;
        let (actual, _) = hashing
            .finish()
            .map_err(|e| ImageError::bad(path, format!("layer {}: {e}", diff_ids[i])))?;
        if actual != diff_ids[i] {
            return Err(ImageError::bad(
                path,
                format!(
                    "layer {} of image {}: its content has digest {actual}, the config says {}",
                    i + 1,
                    p.config_digest,
                    diff_ids[i]
                ),
            ));
        }
        debug!(layer = %chain, size = layer_size, "unpacked layer");
        staged.insert(
            chain.clone(),
            LayerRecord {
                chain_id: chain.clone(),
                diff_id: diff_ids[i].clone(),
                size: layer_size,
            },
        );
        size += layer_size;
    }
    let arch = std::env::consts::ARCH;
    Ok(Image {
        id: p.config_digest.clone(),
        tags: p.tags.iter().map(|t| reference::familiar(t)).collect(),
        manifest_digest: p.manifest_digest.clone(),
        size,
        created: raw.created,
        architecture: raw
            .architecture
            .unwrap_or_else(|| oci_arch(arch).to_string()),
        os: raw.os.unwrap_or_else(|| "linux".into()),
        diff_ids,
        chain_ids: chains,
        config: raw.config.unwrap_or_default().into(),
    })
}

/// Extracts the outer archive (plain, gzip or zstd tar) into `dest`: files, directories and
/// links only, confined to `dest`.
fn extract_archive(path: &Path, dest: &Path) -> Result<(), ImageError> {
    let f = fs::File::open(path)
        .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
    let reader = decompressed(BufReader::with_capacity(1 << 16, f))
        .map_err(|e| ImageError::bad(path, e.to_string()))?;
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(false);
    ar.set_preserve_ownerships(false);
    ar.set_unpack_xattrs(false);
    ar.set_preserve_mtime(false);
    let entries = ar
        .entries()
        .map_err(|e| ImageError::bad(path, format!("not a tar archive: {e}")))?;
    let mut count = 0usize;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| ImageError::bad(path, format!("not a valid tar archive: {e}")))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            continue;
        }
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        entry
            .unpack_in(dest)
            .map_err(|e| ImageError::bad(path, format!("entry `{name}`: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(ImageError::bad(path, "the archive is empty"));
    }
    Ok(())
}

/// `rel` inside the extracted archive, following symlinks but never out of it.
fn archive_file(path: &Path, archive: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let clean = clean_relative(Path::new(rel))
        .map_err(|e| ImageError::bad(path, e))?
        .ok_or_else(|| ImageError::bad(path, format!("empty path `{rel}`")))?;
    let joined = archive.join(clean);
    let real = fs::canonicalize(&joined)
        .map_err(|_| ImageError::bad(path, format!("`{rel}` is missing from the archive")))?;
    if !real.starts_with(archive) {
        return Err(ImageError::bad(
            path,
            format!("`{rel}` points outside the archive"),
        ));
    }
    if !real.is_file() {
        return Err(ImageError::bad(path, format!("`{rel}` is not a file")));
    }
    Ok(real)
}

fn read_limited(path: &Path, file: &Path, what: &str) -> Result<Vec<u8>, ImageError> {
    const MAX: u64 = 16 << 20;
    let f = fs::File::open(file)
        .map_err(|e| ImageError::io(format!("opening {}", file.display()), e))?;
    let mut data = Vec::new();
    f.take(MAX + 1)
        .read_to_end(&mut data)
        .map_err(|e| ImageError::io(format!("reading {}", file.display()), e))?;
    if data.len() as u64 > MAX {
        return Err(ImageError::bad(
            path,
            format!("{what} is larger than 16 MiB"),
        ));
    }
    Ok(data)
}

/// Checks that `file` has `digest` (and `size`, when given).
fn verify_file(
    path: &Path,
    file: &Path,
    digest: &str,
    size: Option<u64>,
) -> Result<(), ImageError> {
    let f = fs::File::open(file)
        .map_err(|e| ImageError::io(format!("opening {}", file.display()), e))?;
    let (actual, n) = HashingReader::new(BufReader::with_capacity(1 << 16, f))
        .finish()
        .map_err(|e| ImageError::io(format!("reading {}", file.display()), e))?;
    if actual != digest {
        return Err(ImageError::bad(
            path,
            format!("blob {digest} has digest {actual}: the archive is corrupt"),
        ));
    }
    if let Some(size) = size
        && size != n
    {
        return Err(ImageError::bad(
            path,
            format!("blob {digest} is {n} bytes, its descriptor says {size}"),
        ));
    }
    Ok(())
}

fn parse_tag(path: &Path, tag: &str) -> Result<String, ImageError> {
    reference::parse(tag)
        .map(|r| r.full())
        .map_err(|e| ImageError::bad(path, format!("tag `{tag}`: {e}")))
}

/// The hex digest a path of the form `blobs/sha256/<hex>` or `<hex>.json` names.
fn digest_in_name(rel: &str) -> Option<String> {
    let name = rel.rsplit('/').next()?;
    let name = name.strip_suffix(".json").unwrap_or(name);
    let d = format!("sha256:{name}");
    sha256_hex(&d).is_some().then_some(d)
}

fn docker_images(path: &Path, archive: &Path) -> Result<Vec<Pending>, ImageError> {
    let data = read_limited(path, &archive.join("manifest.json"), "manifest.json")?;
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&data)
        .map_err(|e| ImageError::bad(path, format!("manifest.json is not valid: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let config_path = archive_file(path, archive, &entry.config)?;
        let config_bytes = read_limited(path, &config_path, "an image config")?;
        let config_digest = sha256_digest(&config_bytes);
        if let Some(named) = digest_in_name(&entry.config)
            && named != config_digest
        {
            return Err(ImageError::bad(
                path,
                format!(
                    "config `{}` has digest {config_digest}: the archive is corrupt",
                    entry.config
                ),
            ));
        }
        let mut layers = Vec::new();
        for l in &entry.layers {
            let p = archive_file(path, archive, l)?;
            let digest = l
                .strip_prefix("blobs/sha256/")
                .and_then(|_| digest_in_name(l))
                .map(|d| (d, None));
            layers.push(LayerSource { path: p, digest });
        }
        let tags = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| parse_tag(path, t))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Pending {
            config_bytes,
            config_digest,
            manifest_digest: None,
            tags,
            layers,
        });
    }
    Ok(out)
}

fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn platform_matches(desc: &Descriptor) -> bool {
    match desc.platform() {
        None => true,
        Some(p) => {
            p.os().to_string() == "linux"
                && p.architecture().to_string() == oci_arch(std::env::consts::ARCH)
        }
    }
}

fn read_blob(
    path: &Path,
    archive: &Path,
    digest: &str,
    size: u64,
    what: &str,
) -> Result<(PathBuf, Vec<u8>), ImageError> {
    let hex = sha256_hex(digest).ok_or_else(|| {
        ImageError::bad(
            path,
            format!("{what} digest `{digest}` is not sha256: unsupported"),
        )
    })?;
    let file = archive_file(path, archive, &format!("blobs/sha256/{hex}"))?;
    let data = read_limited(path, &file, what)?;
    let actual = sha256_digest(&data);
    if actual != digest {
        return Err(ImageError::bad(
            path,
            format!("{what} {digest} has digest {actual}: the archive is corrupt"),
        ));
    }
    if data.len() as u64 != size {
        return Err(ImageError::bad(
            path,
            format!(
                "{what} {digest} is {} bytes, its descriptor says {size}",
                data.len()
            ),
        ));
    }
    Ok((file, data))
}

fn oci_images(path: &Path, archive: &Path) -> Result<Vec<Pending>, ImageError> {
    let data = read_limited(path, &archive.join("index.json"), "index.json")?;
    let index = ImageIndex::from_reader(&data[..])
        .map_err(|e| ImageError::bad(path, format!("index.json is not valid: {e}")))?;
    let mut out = Vec::new();
    for desc in index.manifests() {
        if !platform_matches(desc) {
            continue;
        }
        let mut tags = Vec::new();
        if let Some(ann) = desc.annotations() {
            if let Some(name) = ann.get(CONTAINERD_NAME) {
                tags.push(parse_tag(path, name)?);
            } else if let Some(name) = ann.get(REF_NAME) {
                if name.contains(':') || name.contains('/') {
                    tags.push(parse_tag(path, name)?);
                } else {
                    warn!(ref_name = %name, "OCI ref.name is only a tag without a name: image loaded untagged");
                }
            }
        }
        collect_oci(path, archive, desc, &tags, &mut out, 0)?;
    }
    Ok(out)
}

fn is_index(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageIndex)
        || matches!(mt, MediaType::Other(s) if s == DOCKER_MANIFEST_LIST)
}

fn collect_oci(
    path: &Path,
    archive: &Path,
    desc: &Descriptor,
    tags: &[String],
    out: &mut Vec<Pending>,
    depth: usize,
) -> Result<(), ImageError> {
    if depth > 4 {
        return Err(ImageError::bad(path, "image indexes nested too deep"));
    }
    let digest = desc.digest().to_string();
    if is_index(desc.media_type()) {
        let (_, data) = read_blob(path, archive, &digest, desc.size(), "image index")?;
        let index = ImageIndex::from_reader(&data[..])
            .map_err(|e| ImageError::bad(path, format!("image index {digest}: {e}")))?;
        let before = out.len();
        for child in index.manifests().iter().filter(|d| platform_matches(d)) {
            collect_oci(path, archive, child, tags, out, depth + 1)?;
            if out.len() > before {
                break;
            }
        }
        return Ok(());
    }
    let (_, data) = read_blob(path, archive, &digest, desc.size(), "manifest")?;
    let manifest = ImageManifest::from_reader(&data[..])
        .map_err(|e| ImageError::bad(path, format!("manifest {digest}: {e}")))?;
    let cfg = manifest.config();
    let config_digest = cfg.digest().to_string();
    let (_, config_bytes) = read_blob(path, archive, &config_digest, cfg.size(), "image config")?;
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let d = l.digest().to_string();
        let hex = sha256_hex(&d).ok_or_else(|| {
            ImageError::bad(
                path,
                format!("layer digest `{d}` is not sha256: unsupported"),
            )
        })?;
        let file = archive_file(path, archive, &format!("blobs/sha256/{hex}"))?;
        layers.push(LayerSource {
            path: file,
            digest: Some((d, Some(l.size()))),
        });
    }
    out.push(Pending {
        config_bytes,
        config_digest,
        manifest_digest: Some(digest),
        tags: tags.to_vec(),
        layers,
    });
    Ok(())
}
