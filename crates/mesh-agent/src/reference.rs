//! Image references the way docker reads them: `busybox` is `docker.io/library/busybox:latest`.

use crate::digest::sha256_hex;

const DEFAULT_DOMAIN: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    /// Full repository name, e.g. `docker.io/library/busybox`.
    pub name: String,
    /// The tag, if one was written.
    pub tag: Option<String>,
    /// The `sha256:` digest, if one was written (`name@sha256:...`).
    pub digest: Option<String>,
}

impl Reference {
    /// `name:tag`, with `latest` when no tag was written.
    pub fn full(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            self.tag.as_deref().unwrap_or(DEFAULT_TAG)
        )
    }
}

/// Parses and normalizes `reference`; the error says what is wrong.
pub(crate) fn parse(reference: &str) -> Result<Reference, String> {
    if reference.is_empty() {
        return Err("it is empty; write NAME[:TAG] such as busybox:latest".into());
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("it contains whitespace".into());
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => {
            if sha256_hex(digest).is_none() {
                return Err(format!(
                    "`{digest}` is not a digest; write sha256: and 64 hex digits"
                ));
            }
            (rest, Some(digest.to_string()))
        }
        None => (reference, None),
    };
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        validate_tag(tag)?;
    }
    let name = normalize_name(name)?;
    Ok(Reference {
        name,
        tag: tag.map(str::to_string),
        digest,
    })
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag `{tag}` is not valid: use letters, digits, `_`, `.`, `-` (at most 128, not starting with `.` or `-`)"
        ))
    }
}

fn normalize_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the repository name is empty".into());
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let domain = if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        let d = parts.remove(0);
        if !d
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        {
            return Err(format!("registry `{d}` is not a host name"));
        }
        if d == "index.docker.io" {
            DEFAULT_DOMAIN.to_string()
        } else {
            d.to_string()
        }
    } else {
        DEFAULT_DOMAIN.to_string()
    };
    for p in &parts {
        validate_component(p)?;
    }
    if domain == DEFAULT_DOMAIN && parts.len() == 1 {
        parts.insert(0, "library");
    }
    Ok(format!("{domain}/{}", parts.join("/")))
}

fn validate_component(p: &str) -> Result<(), String> {
    if p.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("`{p}`: repository names must be lowercase"));
    }
    let bytes = p.as_bytes();
    let ok = !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{p}` is not a valid name component: use lowercase letters, digits and `.`, `_`, `-` between them"
        ))
    }
}

/// The short form users type: `docker.io/library/busybox:latest` → `busybox:latest`.
pub(crate) fn familiar(full: &str) -> String {
    if let Some(rest) = full.strip_prefix("docker.io/library/")
        && !rest.contains('/')
    {
        return rest.to_string();
    }
    if let Some(rest) = full.strip_prefix("docker.io/") {
        return rest.to_string();
    }
    full.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        let full = |s: &str| parse(s).unwrap().full();
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1.35"), "docker.io/library/busybox:1.35");
        assert_eq!(
            full("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            full("docker.io/library/busybox:latest"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(full("me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(full("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(full("ghcr.io/a/b:c"), "ghcr.io/a/b:c");
        assert_eq!(
            full("meshd-test:latest"),
            "docker.io/library/meshd-test:latest"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
    }

    #[test]
    fn refuses_bad_references() {
        assert!(parse("").is_err());
        assert!(parse("BusyBox").unwrap_err().contains("lowercase"));
        assert!(parse("busybox:").is_err());
        assert!(parse("busybox:-x").is_err());
        assert!(parse("bad name").is_err());
        assert!(parse("a@sha256:1234").is_err());
        assert!(parse("-a").is_err());
    }

    #[test]
    fn familiar_strips_the_defaults() {
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("docker.io/me/app:v1"), "me/app:v1");
        assert_eq!(familiar("ghcr.io/a/b:c"), "ghcr.io/a/b:c");
    }
}
