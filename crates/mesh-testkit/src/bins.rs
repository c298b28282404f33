//! Finding the `meshd` and `swarm` binaries.

use std::path::{Path, PathBuf};

use crate::error::LabError;

/// The `meshd` binary: `$MESHD_BIN`, else `meshd` next to the running executable (a test
/// binary in `target/<profile>/deps/` finds `target/<profile>/meshd`).
pub fn meshd_bin() -> Result<PathBuf, LabError> {
    locate("meshd", "meshd", "MESHD_BIN")
}

/// The `swarm` binary: `$SWARM_BIN`, else `swarm` next to the running executable.
pub fn swarm_bin() -> Result<PathBuf, LabError> {
    locate("swarm", "swarm", "SWARM_BIN")
}

fn locate(
    name: &'static str,
    package: &'static str,
    env: &'static str,
) -> Result<PathBuf, LabError> {
    if let Some(value) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(LabError::BinaryNotFound {
                name,
                package,
                env,
                searched: format!("{} (from {env})", path.display()),
            })
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| LabError::io("find the current executable", e))?;
    let candidates = candidates(&exe, name);
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    Err(LabError::BinaryNotFound {
        name,
        package,
        env,
        searched: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Where to look for `name` given the running executable: its directory and the two above
/// (`deps/`, `examples/` and the profile directory).
fn candidates(exe: &Path, name: &str) -> Vec<PathBuf> {
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_up_from_deps() {
        let c = candidates(Path::new("/t/debug/deps/lab-1234"), "meshd");
        assert_eq!(
            c,
            vec![
                PathBuf::from("/t/debug/deps/meshd"),
                PathBuf::from("/t/debug/meshd"),
                PathBuf::from("/t/meshd"),
            ]
        );
    }
}
