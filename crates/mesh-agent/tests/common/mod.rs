//! Test fixtures: a store root, a network namespace and the test image, each cleaned up on
//! drop (panics included).

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use mesh_agent::{ImageStore, RuncOptions, RuncRuntime};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "mesh_agent=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Fails the test with a clear message when the host lacks what these tests need.
pub fn require_host() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests mount overlayfs and run runc: run them as root"
    );
    let runc = Command::new("runc").arg("--version").output();
    assert!(
        runc.is_ok_and(|o| o.status.success()),
        "runc is not installed: apt-get install -y runc"
    );
}

/// A unique name for this test process.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The test image (scripts/build-test-image.sh), built once per test binary.
pub fn test_image() -> PathBuf {
    static IMAGE: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let m = IMAGE.get_or_init(|| Mutex::new(None));
    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = g.as_ref() {
        return p.clone();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("meshd-test.tar");
    let status = Command::new("bash")
        .arg(repo.join("scripts/build-test-image.sh"))
        .arg(&out)
        .status()
        .expect("running scripts/build-test-image.sh");
    assert!(status.success(), "scripts/build-test-image.sh failed");
    *g = Some(out.clone());
    out
}

/// The uncompressed base layer of the test image, and its digest (its diff id).
pub fn test_image_base_layer() -> Vec<u8> {
    let f = fs::File::open(test_image()).unwrap();
    let mut ar = tar::Archive::new(f);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        if !path.starts_with("blobs/sha256") || e.header().size().unwrap() < 100_000 {
            continue;
        }
        let mut gz = Vec::new();
        e.read_to_end(&mut gz).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        return out;
    }
    panic!("no layer blob in the test image");
}

/// A runtime root; on drop, kills whatever still runs there, deletes it from runc, unmounts
/// and removes everything.
pub struct TestRoot {
    pub dir: PathBuf,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        let dir = std::env::temp_dir().join(unique("mesh-agent-test-"));
        fs::create_dir_all(&dir).unwrap();
        TestRoot { dir }
    }

    pub fn store(&self) -> Arc<ImageStore> {
        Arc::new(ImageStore::open(&self.dir).unwrap())
    }

    pub fn runtime(&self) -> RuncRuntime {
        let shim = vec![OsString::from(env!("CARGO_BIN_EXE_mesh-shim"))];
        let mut opts = RuncOptions::new(shim);
        opts.start_timeout = std::time::Duration::from_secs(30);
        RuncRuntime::with_options(&self.dir, self.store(), opts).unwrap()
    }

    pub fn mounts(&self) -> Vec<String> {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(self.dir.to_str().unwrap()))
            .collect()
    }
}

fn read_pid(p: &Path) -> Option<i32> {
    fs::read_to_string(p)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let containers = self.dir.join("containers");
        if let Ok(entries) = fs::read_dir(&containers) {
            for e in entries.flatten() {
                let b = e.path();
                for f in ["pid", "shim.pid"] {
                    if let Some(pid) = read_pid(&b.join(f)) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(self.dir.join("runc"))
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .output();
            }
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A network namespace with its loopback up; on drop, its processes are killed and it is
/// deleted.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("mat");
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name} failed");
        let ns = Netns { name };
        let ok = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(ok.success());
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// Runs a command in this namespace only (not `ip netns exec`, which remounts /sys).
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Builds a tar from (path, Some(content) | None for a directory) entries.
pub fn make_tar(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match content {
            Some(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(c.len() as u64);
                b.append_data(&mut h, path, *c).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// One image of a `docker save` archive (old layout): tags and uncompressed layer tars.
pub struct SavedImage<'a> {
    pub tags: &'a [&'a str],
    pub layers: Vec<Vec<u8>>,
    pub cmd: &'a [&'a str],
}

/// A `docker save` tarball in the old layout (`<id>/layer.tar`, `<config>.json`,
/// `manifest.json`). Returns the tarball and each image's id.
pub fn docker_save(images: &[SavedImage<'_>]) -> (Vec<u8>, Vec<String>) {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifest = Vec::new();
    let mut ids = Vec::new();
    for img in images {
        let diff_ids: Vec<String> = img.layers.iter().map(|l| sha256(l)).collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {
                "Cmd": img.cmd,
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FROM_IMAGE=yes"],
                "WorkingDir": "/",
                "StopSignal": "SIGQUIT",
                "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 1000000000u64, "Retries": 2},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let id = sha256(&config);
        let hex = id.trim_start_matches("sha256:").to_string();
        files.push((format!("{hex}.json"), config));
        let mut layer_paths = Vec::new();
        for (l, d) in img.layers.iter().zip(&diff_ids) {
            let dir = d.trim_start_matches("sha256:");
            let path = format!("{dir}/layer.tar");
            if !files.iter().any(|(p, _)| *p == path) {
                files.push((path.clone(), l.clone()));
                files.push((format!("{dir}/VERSION"), b"1.0".to_vec()));
            }
            layer_paths.push(path);
        }
        manifest.push(serde_json::json!({
            "Config": format!("{hex}.json"),
            "RepoTags": img.tags,
            "Layers": layer_paths,
        }));
        ids.push(id);
    }
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    let entries: Vec<(&str, Option<&[u8]>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_slice())))
        .collect();
    (make_tar(&entries), ids)
}

/// Layer 2 of the docker-save test images: files to be deleted later.
pub fn layer_two() -> Vec<u8> {
    make_tar(&[
        ("data", None),
        ("data/a.txt", Some(b"a")),
        ("data/b.txt", Some(b"b")),
        ("gone.txt", Some(b"soon gone")),
        ("kept.txt", Some(b"kept")),
    ])
}

/// Layer 3: whites out /gone.txt and makes /data opaque with only c.txt in it.
pub fn layer_three() -> Vec<u8> {
    make_tar(&[
        (".wh.gone.txt", Some(b"")),
        ("data", None),
        ("data/.wh..wh..opq", Some(b"")),
        ("data/c.txt", Some(b"c")),
    ])
}

/// A `docker save` tarball in the newer layout (docker 25+): blobs under `blobs/sha256/`,
/// an `index.json` and `oci-layout` beside `manifest.json`.
pub fn docker_save_new(tag: &str, layers: &[Vec<u8>]) -> (Vec<u8>, String) {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let id = sha256(&config);
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let mut files: Vec<(String, Vec<u8>)> = vec![(format!("blobs/sha256/{}", hex(&id)), config)];
    for (l, d) in layers.iter().zip(&diff_ids) {
        files.push((format!("blobs/sha256/{}", hex(d)), l.clone()));
    }
    let manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", hex(&id)),
        "RepoTags": [tag],
        "Layers": diff_ids.iter().map(|d| format!("blobs/sha256/{}", hex(d))).collect::<Vec<_>>(),
    }]);
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    files.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    files.push((
        "index.json".into(),
        br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
    ));
    let entries: Vec<(&str, Option<&[u8]>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_slice())))
        .collect();
    (make_tar(&entries), id)
}
