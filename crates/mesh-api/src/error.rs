//! Validation errors: each message names the field that is wrong and how to fix it.

/// A user input that was refused. The message names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}; {fix}")]
pub struct ValidationError {
    /// The flag or field that is wrong, as the user wrote it (e.g. `--label-add`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
