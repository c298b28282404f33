//! Paths inside a rootfs (symlinks resolved within it) and users from its /etc/passwd.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Resolves `path` inside `root` the way the container will see it: symlinks, absolute or
/// relative, are followed but never leave `root`. Missing components are kept as they are.
pub(crate) fn secure_join(root: &Path, path: &Path) -> io::Result<PathBuf> {
    fn parts(p: &Path) -> VecDeque<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    }
    let mut resolved = PathBuf::new();
    let mut pending = parts(path);
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&c);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {}",
                        path.display()
                    )));
                }
                let target = fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut next = parts(&target);
                next.extend(pending);
                pending = next;
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// A user as the container process will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_in_root(root: &Path, rel: &str) -> String {
    secure_join(root, Path::new(rel))
        .and_then(fs::read)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `spec` (`uid`, `uid:gid`, `name`, `name:group`; root when `None`) against the
/// rootfs's /etc/passwd and /etc/group, the way docker does. The error says what is unknown.
pub(crate) fn resolve_user(rootfs: &Path, spec: Option<&str>) -> Result<ResolvedUser, String> {
    let passwd = parse_passwd(&read_in_root(rootfs, "etc/passwd"));
    let groups = parse_group(&read_in_root(rootfs, "etc/group"));
    let spec = spec.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|e| e.uid == uid),
        Err(_) => Some(passwd.iter().find(|e| e.name == user_part).ok_or_else(|| {
            format!(
                "unknown user `{user_part}`: the image's /etc/passwd has no such user; use a numeric uid or a user it defines"
            )
        })?),
    };
    let uid = match user_part.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map(|e| e.uid).unwrap_or_default(),
    };
    let (gid, additional_gids) = match group_part {
        Some(g) => {
            let gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => groups
                    .iter()
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| {
                        format!(
                            "unknown group `{g}`: the image's /etc/group has no such group; use a numeric gid or a group it defines"
                        )
                    })?,
            };
            (gid, Vec::new())
        }
        None => {
            let gid = entry.map(|e| e.gid).unwrap_or(0);
            let extra = match entry {
                Some(e) => groups
                    .iter()
                    .filter(|g| g.members.contains(&e.name) && g.gid != gid)
                    .map(|g| g.gid)
                    .collect(),
                None => Vec::new(),
            };
            (gid, extra)
        }
    };
    let home = entry
        .map(|e| e.home.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            d.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn users_resolve_like_docker() {
        let d = rootfs();
        let r = |s| resolve_user(d.path(), s);
        assert_eq!(r(None).unwrap().home, "/root");
        let app = r(Some("app")).unwrap();
        assert_eq!(
            (app.uid, app.gid, app.additional_gids.clone()),
            (1000, 1000, vec![10])
        );
        assert_eq!(app.home, "/home/app");
        let g = r(Some("app:wheel")).unwrap();
        assert_eq!((g.uid, g.gid), (1000, 10));
        let n = r(Some("4242:77")).unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 77, "/"));
        assert!(
            r(Some("nobody"))
                .unwrap_err()
                .contains("unknown user `nobody`")
        );
        assert!(
            r(Some("app:staff"))
                .unwrap_err()
                .contains("unknown group `staff`")
        );
    }

    #[test]
    fn secure_join_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("real")).unwrap();
        std::os::unix::fs::symlink("/real", d.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", d.path().join("escape")).unwrap();
        assert_eq!(
            secure_join(d.path(), Path::new("/abs/x")).unwrap(),
            d.path().join("real/x")
        );
        assert_eq!(
            secure_join(d.path(), Path::new("escape/passwd")).unwrap(),
            d.path().join("etc/passwd")
        );
    }
}
