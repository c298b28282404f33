//! Placement constraints: `node.labels.zone==a`, `node.role!=manager`, …

use crate::error::ValidationError;
use crate::node::Node;

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintKey {
    /// `node.id`.
    NodeId,
    /// `node.hostname`.
    Hostname,
    /// `node.role`.
    Role,
    /// `node.platform.os`.
    Os,
    /// `node.platform.arch`.
    Arch,
    /// `node.labels.KEY`.
    Label(String),
}

/// One parsed `--constraint` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// Left side.
    pub key: ConstraintKey,
    /// `==` (true) or `!=` (false).
    pub equal: bool,
    /// Right side.
    pub value: String,
}

impl Constraint {
    /// Parses `KEY==VALUE` or `KEY!=VALUE`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let (k, v, equal) = if let Some((k, v)) = s.split_once("==") {
            (k, v, true)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, v, false)
        } else {
            return Err(ValidationError::new(
                "--constraint",
                format!("{s:?} has no == or != operator"),
                "write e.g. node.labels.zone==a or node.role!=manager",
            ));
        };
        let (k, value) = (k.trim(), v.trim());
        if value.is_empty() {
            return Err(ValidationError::new(
                "--constraint",
                format!("{s:?} has no value"),
                "write e.g. node.labels.zone==a",
            ));
        }
        let key = match k {
            "node.id" => ConstraintKey::NodeId,
            "node.hostname" => ConstraintKey::Hostname,
            "node.role" => {
                if value != "manager" && value != "worker" {
                    return Err(ValidationError::new(
                        "--constraint",
                        format!("unknown role {value:?}"),
                        "node.role is manager or worker",
                    ));
                }
                ConstraintKey::Role
            }
            "node.platform.os" => ConstraintKey::Os,
            "node.platform.arch" => ConstraintKey::Arch,
            _ => match k.strip_prefix("node.labels.") {
                Some(label) if !label.is_empty() => ConstraintKey::Label(label.to_string()),
                _ => {
                    return Err(ValidationError::new(
                        "--constraint",
                        format!("unknown key {k:?}"),
                        "use node.id, node.hostname, node.role, node.platform.os, \
                         node.platform.arch or node.labels.KEY",
                    ));
                }
            },
        };
        Ok(Self {
            key,
            equal,
            value: value.to_string(),
        })
    }

    /// Whether `node` satisfies the constraint. A missing label only satisfies `!=`.
    pub fn matches(&self, node: &Node) -> bool {
        let actual: Option<&str> = match &self.key {
            ConstraintKey::NodeId => Some(&node.id),
            ConstraintKey::Hostname => Some(&node.description.hostname),
            ConstraintKey::Role => Some(node.spec.role.as_str()),
            ConstraintKey::Os => Some(&node.description.os),
            ConstraintKey::Arch => Some(&node.description.architecture),
            ConstraintKey::Label(l) => node.spec.labels.get(l).map(String::as_str),
        };
        let eq = match (&self.key, actual) {
            // Host names and OS names compare case-insensitively, like swarmkit.
            (ConstraintKey::Hostname | ConstraintKey::Os, Some(a)) => {
                a.eq_ignore_ascii_case(&self.value)
            }
            (_, Some(a)) => a == self.value,
            (_, None) => false,
        };
        eq == self.equal
    }
}

/// Parses every expression; the first bad one is the error.
pub fn parse_all(exprs: &[String]) -> Result<Vec<Constraint>, ValidationError> {
    exprs.iter().map(|e| Constraint::parse(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_errors() {
        let c = Constraint::parse("node.labels.zone==a").unwrap();
        assert_eq!(c.key, ConstraintKey::Label("zone".into()));
        assert!(c.equal);
        let c = Constraint::parse("node.role != manager").unwrap();
        assert!(!c.equal);
        assert!(Constraint::parse("node.labels.zone=a").is_err());
        assert!(Constraint::parse("node.colour==red").is_err());
        assert!(Constraint::parse("node.role==boss").is_err());
        assert!(Constraint::parse("node.labels.==x").is_err());
        assert!(Constraint::parse("node.hostname==").is_err());
    }
}
