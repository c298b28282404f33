//! The image store against real archives: the OCI layout from scripts/build-test-image.sh
//! and `docker save` tarballs built here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure is a test failure

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::*;
use mesh_agent::ImageError;

fn layer_dirs(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("layers"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.to_str().unwrap()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

#[test]
fn loads_resolves_shares_layers_and_refuses_bad_archives() {
    init_tracing();
    require_host();
    let root = TestRoot::new();
    let store = root.store();

    // The OCI layout test image.
    let loaded = store.load(&test_image()).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].tags, ["meshd-test:latest"]);
    let id = loaded[0].id.clone();
    for reference in [
        "meshd-test",
        "meshd-test:latest",
        "docker.io/library/meshd-test:latest",
        "docker.io/meshd-test",
        &id,
        &id["sha256:".len().."sha256:".len() + 12],
        &id[..20],
    ] {
        let img = store
            .resolve(reference)
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(img.id, id, "{reference}");
    }
    let img = store.resolve("meshd-test").unwrap();
    assert_eq!(img.tags, ["meshd-test:latest"]);
    assert_eq!(
        img.config.cmd.as_deref(),
        Some(&["/serve.sh".to_string()][..])
    );
    assert_eq!(img.config.exposed_ports, ["80/tcp"]);
    assert!(img.size > 500_000, "size {}", img.size);
    assert_eq!(img.chain_ids.len(), 1);
    let manifest = img.manifest_digest.clone().unwrap();
    assert_eq!(
        store.resolve(&format!("meshd-test@{manifest}")).unwrap().id,
        id
    );
    let base_dir = root
        .dir
        .join("layers")
        .join(&img.chain_ids[0]["sha256:".len()..]);
    assert!(base_dir.join("bin/busybox").is_file());
    assert!(
        fs::symlink_metadata(base_dir.join("bin/sh"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::metadata(base_dir.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let base_inode = fs::metadata(&base_dir).unwrap().ino();

    // Unknown references are a matchable error.
    match store.resolve("nope:1") {
        Err(ImageError::ImageNotFound { reference }) => assert_eq!(reference, "nope:1"),
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    assert!(matches!(
        store.resolve("Bad Name"),
        Err(ImageError::InvalidReference { .. })
    ));

    // A docker save archive (old layout) whose images share the test image's base layer.
    let base = test_image_base_layer();
    let (tarball, ids) = docker_save(&[
        SavedImage {
            tags: &["example.com/team/app:v1"],
            layers: vec![base.clone(), layer_two()],
            cmd: &["sh"],
        },
        SavedImage {
            tags: &["app-b:latest", "app-b:2"],
            layers: vec![base.clone(), layer_two(), layer_three()],
            cmd: &["sh"],
        },
    ]);
    let dir = tempfile::tempdir().unwrap();
    let docker_tar = dir.path().join("save.tar");
    fs::write(&docker_tar, &tarball).unwrap();
    let loaded = store.load(&docker_tar).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].tags, ["example.com/team/app:v1"]);
    assert_eq!(loaded[1].tags, ["app-b:latest", "app-b:2"]);
    assert_eq!(store.resolve("example.com/team/app:v1").unwrap().id, ids[0]);
    assert_eq!(store.resolve("app-b").unwrap().id, ids[1]);
    assert_eq!(
        store.resolve(&ids[1]["sha256:".len()..][..12]).unwrap().id,
        ids[1]
    );
    let b = store.resolve("app-b:2").unwrap();
    assert_eq!(b.config.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(b.config.healthcheck.as_ref().unwrap().retries, Some(2));
    assert_eq!(store.list().unwrap().len(), 3);

    // Layers are unpacked once: three layers in all, the base one untouched.
    assert_eq!(layer_dirs(&root.dir).len(), 3);
    assert_eq!(fs::metadata(&base_dir).unwrap().ino(), base_inode);
    assert_eq!(b.chain_ids[0], img.chain_ids[0]);

    // Whiteouts were converted for overlayfs.
    let top = root
        .dir
        .join("layers")
        .join(&b.chain_ids[2]["sha256:".len()..]);
    let wh = fs::symlink_metadata(top.join("gone.txt")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(
        xattr(&top.join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(top.join("data/c.txt").is_file());
    assert!(!top.join("data/.wh..wh..opq").exists());

    // Loading the same archive again changes nothing.
    store.load(&docker_tar).unwrap();
    assert_eq!(layer_dirs(&root.dir).len(), 3);

    // A corrupt archive is refused and the store is left as it was.
    let before_layers = layer_dirs(&root.dir);
    let before_images = store.list().unwrap();
    let (mut bad, _) = docker_save(&[SavedImage {
        tags: &["broken:1"],
        layers: vec![base.clone(), layer_two(), layer_three()],
        cmd: &["sh"],
    }]);
    // Change the content of data/c.txt in the third layer (the tar is not compressed, so the
    // layer's bytes are there as they are): its digest no longer matches the config's.
    let good = layer_three();
    let at = bad
        .windows(good.len())
        .position(|w| w == &good[..])
        .unwrap();
    assert_eq!(bad[at + 2048], b'c');
    bad[at + 2048] = b'd';
    let bad_tar = dir.path().join("bad.tar");
    fs::write(&bad_tar, &bad).unwrap();
    let fresh = TestRoot::new();
    let fresh_store = fresh.store();
    let err = fresh_store.load(&bad_tar).unwrap_err();
    assert!(matches!(err, ImageError::BadArchive { .. }), "{err}");
    assert!(err.to_string().contains("digest"), "{err}");
    assert!(fresh_store.list().unwrap().is_empty());
    assert!(
        layer_dirs(&fresh.dir).is_empty(),
        "{:?}",
        layer_dirs(&fresh.dir)
    );
    assert_eq!(fs::read_dir(fresh.dir.join("tmp")).unwrap().count(), 0);
    assert!(fresh_store.resolve("broken:1").is_err());

    // Not an image at all.
    let junk = dir.path().join("junk.tar");
    fs::write(&junk, make_tar(&[("hello.txt", Some(b"hi"))])).unwrap();
    let err = store.load(&junk).unwrap_err().to_string();
    assert!(err.contains("neither manifest.json"), "{err}");
    fs::write(&junk, b"definitely not a tar").unwrap();
    assert!(store.load(&junk).is_err());
    assert_eq!(layer_dirs(&root.dir), before_layers);
    assert_eq!(store.list().unwrap(), before_images);

    // A corrupt OCI blob is caught by its digest.
    let mut oci = fs::read(test_image()).unwrap();
    let len = oci.len();
    oci[len / 2] ^= 0xff;
    let bad_oci = dir.path().join("bad-oci.tar");
    fs::write(&bad_oci, &oci).unwrap();
    let err = fresh_store.load(&bad_oci).unwrap_err().to_string();
    assert!(err.contains("digest") || err.contains("corrupt"), "{err}");
    assert!(layer_dirs(&fresh.dir).is_empty());

    // The newer docker save layout, whose blobs are checked against their names.
    let (new_layout, new_id) = docker_save_new("newlayout:1", &[base.clone(), layer_two()]);
    let new_tar = dir.path().join("new.tar");
    fs::write(&new_tar, &new_layout).unwrap();
    let loaded = fresh_store.load(&new_tar).unwrap();
    assert_eq!(loaded[0].id, new_id);
    assert_eq!(
        fresh_store.resolve("newlayout:1").unwrap().chain_ids.len(),
        2
    );
    let mut corrupt = new_layout.clone();
    let two = layer_two();
    let at = corrupt
        .windows(two.len())
        .position(|w| w == &two[..])
        .unwrap();
    let pos = at + two.windows(9).position(|w| w == b"soon gone").unwrap();
    corrupt[pos] = b'S';
    let corrupt_tar = dir.path().join("corrupt-new.tar");
    fs::write(&corrupt_tar, &corrupt).unwrap();
    let third = TestRoot::new();
    let err = third.store().load(&corrupt_tar).unwrap_err().to_string();
    assert!(err.contains("digest"), "{err}");
    assert!(layer_dirs(&third.dir).is_empty());

    // Removing: a tag with siblings only untags; the last name removes the image and the
    // layers only it used.
    let r = store.remove("app-b:2", false).unwrap();
    assert_eq!(r.untagged, ["app-b:2"]);
    assert!(r.deleted.is_none());
    let r = store.remove("app-b", false).unwrap();
    assert_eq!(r.deleted.as_deref(), Some(ids[1].as_str()));
    assert_eq!(r.layers_deleted, [b.chain_ids[2].clone()]);
    assert_eq!(layer_dirs(&root.dir).len(), 2);
    assert!(matches!(
        store.remove("app-b", false),
        Err(ImageError::ImageNotFound { .. })
    ));
}
