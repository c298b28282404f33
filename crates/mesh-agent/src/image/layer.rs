//! Unpacking one layer tarball into a directory ready to be an overlayfs lower layer.
//!
//! Ownership, modes, times, symlinks, hard links, device nodes and `SCHILY.xattr.*` extended
//! attributes are kept. OCI whiteouts are converted to overlayfs's own form: `.wh.NAME` becomes
//! a 0:0 character device `NAME`, and `.wh..wh..opq` marks its directory opaque with the
//! `trusted.overlay.opaque=y` attribute. Entries are confined to the destination: `..`
//! components and paths that go through a symlink are refused.

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Wraps `r` in the decompressor its first bytes call for (gzip, zstd or none).
pub(crate) fn decompressed<'a, R: BufRead + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = ruzstd::decoding::StreamingDecoder::new(r)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(r))
    }
}

/// Turns an archive path into a clean relative path; `None` for the root itself.
pub(crate) fn clean_relative(path: &Path) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                return Err(format!("entry `{}` contains `..`", path.display()));
            }
            Component::Prefix(_) => {
                return Err(format!("entry `{}` has a path prefix", path.display()));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Creates the missing parents of `rel` under `dest`, refusing to go through anything that is
/// not a real directory (a symlink in particular).
fn ensure_parents(dest: &Path, rel: &Path) -> io::Result<()> {
    let mut cur = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "`{}` is not a directory (entries may not go through symlinks)",
                    cur.strip_prefix(dest).unwrap_or(&cur).display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur)?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` unless it is a directory and `keep_dir`.
fn clear(path: &Path, keep_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => {
            if keep_dir {
                Ok(())
            } else {
                fs::remove_dir_all(path)
            }
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Sets an extended attribute on `path` itself (not a symlink's target).
pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cpath(path)?;
    let n = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: both strings are NUL-terminated and live across the call; value/len describe a
    // valid byte slice.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets access and modification time of `path` itself (not a symlink's target).
fn set_mtime(path: &Path, secs: u64) -> io::Result<()> {
    let p = cpath(path)?;
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    // SAFETY: p is NUL-terminated, ts points at two timespecs as utimensat requires.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unpacks the (decompressed) layer tar `reader` into `dest`, which must exist. Returns the
/// total size of the regular files in it.
pub(crate) fn unpack_layer<R: Read>(reader: R, dest: &Path) -> Result<u64, String> {
    let mut archive = tar::Archive::new(reader);
    let mut size = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| format!("reading the layer tar: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the layer tar: {e}"))?;
        let raw_path = entry
            .path()
            .map_err(|e| format!("bad entry path: {e}"))?
            .into_owned();
        size += unpack_entry(&mut entry, &raw_path, dest)
            .map_err(|e| format!("entry `{}`: {e}", raw_path.display()))?;
    }
    Ok(size)
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw_path: &Path,
    dest: &Path,
) -> Result<u64, String> {
    let io = |what: &str, e: io::Error| format!("{what}: {e}");
    let header = entry.header().clone();
    let kind = header.entry_type();
    let rel = clean_relative(raw_path)?;
    let Some(rel) = rel else {
        // The layer's root directory: only its metadata matters.
        if kind.is_dir() {
            apply_metadata(entry, &header, dest, false)?;
        }
        return Ok(0);
    };
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dst = dest.join(&rel);

    if name == OPAQUE_MARKER {
        let dir = dst.parent().unwrap_or(dest).to_path_buf();
        ensure_parents(dest, &rel).map_err(|e| io("creating parents", e))?;
        set_xattr(&dir, "trusted.overlay.opaque", b"y")
            .map_err(|e| io("marking the directory opaque", e))?;
        return Ok(0);
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.is_empty() || hidden.starts_with(WHITEOUT_PREFIX) {
            return Err("malformed whiteout name".into());
        }
        ensure_parents(dest, &rel).map_err(|e| io("creating parents", e))?;
        let target = dst.with_file_name(hidden);
        clear(&target, false).map_err(|e| io("clearing the whited-out path", e))?;
        mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| format!("creating the whiteout device: {e}"))?;
        return Ok(0);
    }

    ensure_parents(dest, &rel).map_err(|e| io("creating parents", e))?;
    let mut size = 0;
    if kind.is_dir() {
        clear(&dst, true).map_err(|e| io("replacing", e))?;
        if !dst.is_dir() {
            fs::create_dir(&dst).map_err(|e| io("creating the directory", e))?;
        }
        apply_metadata(entry, &header, &dst, false)?;
    } else if kind.is_symlink() {
        let target = entry
            .link_name()
            .map_err(|e| format!("bad symlink target: {e}"))?
            .ok_or("symlink without a target")?;
        clear(&dst, false).map_err(|e| io("replacing", e))?;
        symlink(&target, &dst).map_err(|e| io("creating the symlink", e))?;
        apply_metadata(entry, &header, &dst, true)?;
    } else if kind.is_hard_link() {
        let target = entry
            .link_name()
            .map_err(|e| format!("bad hard link target: {e}"))?
            .ok_or("hard link without a target")?;
        let target_rel = clean_relative(&target)?.ok_or("hard link to the layer root")?;
        ensure_parents(dest, &target_rel).map_err(|e| io("checking the link target", e))?;
        let src = dest.join(&target_rel);
        if src != dst {
            clear(&dst, false).map_err(|e| io("replacing", e))?;
            fs::hard_link(&src, &dst)
                .map_err(|e| io(&format!("linking to `{}`", target.display()), e))?;
        }
    } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
        let (flag, dev) = if kind.is_fifo() {
            (SFlag::S_IFIFO, 0)
        } else {
            let major = header
                .device_major()
                .ok()
                .flatten()
                .ok_or("device without a major number")?;
            let minor = header
                .device_minor()
                .ok()
                .flatten()
                .ok_or("device without a minor number")?;
            let flag = if kind.is_character_special() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            (flag, makedev(u64::from(major), u64::from(minor)))
        };
        clear(&dst, false).map_err(|e| io("replacing", e))?;
        mknod(&dst, flag, Mode::empty(), dev).map_err(|e| format!("mknod: {e}"))?;
        apply_metadata(entry, &header, &dst, false)?;
    } else if kind.is_pax_global_extensions()
        || kind.is_pax_local_extensions()
        || kind.is_gnu_longname()
        || kind.is_gnu_longlink()
    {
        return Ok(0);
    } else {
        // Regular files, contiguous files and anything unknown (POSIX says: a regular file).
        clear(&dst, false).map_err(|e| io("replacing", e))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dst)
            .map_err(|e| io("creating the file", e))?;
        size = io::copy(entry, &mut f).map_err(|e| io("writing the file", e))?;
        drop(f);
        apply_metadata(entry, &header, &dst, false)?;
    }
    Ok(size)
}

/// Owner, mode, extended attributes and mtime from the header, in that order (chown clears
/// set-id bits, so the mode comes after it).
fn apply_metadata<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    header: &tar::Header,
    dst: &Path,
    is_symlink: bool,
) -> Result<(), String> {
    let uid = header.uid().map_err(|e| format!("bad uid: {e}"))?;
    let gid = header.gid().map_err(|e| format!("bad gid: {e}"))?;
    let uid = u32::try_from(uid).map_err(|_| format!("uid {uid} out of range"))?;
    let gid = u32::try_from(gid).map_err(|_| format!("gid {gid} out of range"))?;
    lchown(dst, Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))?;
    if !is_symlink {
        let mode = header.mode().map_err(|e| format!("bad mode: {e}"))? & 0o7777;
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod: {e}"))?;
    }
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                // Best effort: a filesystem without that namespace must not fail the load.
                if let Err(e) = set_xattr(dst, name, ext.value_bytes()) {
                    tracing::debug!(path = %dst.display(), xattr = name, error = %e, "xattr not kept");
                }
            }
        }
    }
    if let Ok(mtime) = header.mtime() {
        set_mtime(dst, mtime).map_err(|e| format!("setting mtime: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_refuses_parent_components() {
        assert_eq!(
            clean_relative(Path::new("./a/b")).unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(
            clean_relative(Path::new("/a")).unwrap(),
            Some(PathBuf::from("a"))
        );
        assert_eq!(clean_relative(Path::new("./")).unwrap(), None);
        assert!(clean_relative(Path::new("a/../../etc")).is_err());
    }
}
