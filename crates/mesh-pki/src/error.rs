//! Errors of the PKI: each names what was wrong and how to fix it.

use std::path::PathBuf;

use mesh_api::ValidationError;

/// Everything that can go wrong in the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A user input (a token, an id) was refused; the message names the field and the fix.
    #[error(transparent)]
    Invalid(#[from] ValidationError),

    /// {field} is not a valid PEM certificate: {reason}; pass the PEM text of a certificate
    /// (`-----BEGIN CERTIFICATE-----`)
    #[error(
        "{field} is not a valid PEM certificate: {reason}; pass the PEM text of a certificate \
         (`-----BEGIN CERTIFICATE-----`)"
    )]
    BadCertificate {
        /// Which input held the certificate.
        field: &'static str,
        /// What the parser said.
        reason: String,
    },

    /// {field} is not a valid PEM private key: {reason}; pass a PKCS#8 ECDSA P-256 key
    /// (`-----BEGIN PRIVATE KEY-----`)
    #[error(
        "{field} is not a valid PEM private key: {reason}; pass a PKCS#8 ECDSA P-256 key \
         (`-----BEGIN PRIVATE KEY-----`)"
    )]
    BadKey {
        /// Which input held the key.
        field: &'static str,
        /// What the parser said.
        reason: String,
    },

    /// the certificate signing request was refused: {reason}; generate it with
    /// `NodeKey::csr_pem` and send it unchanged
    #[error(
        "the certificate signing request was refused: {reason}; generate it with \
         `NodeKey::csr_pem` and send it unchanged"
    )]
    BadCsr {
        /// Why it was refused.
        reason: String,
    },

    /// cannot {what}: {source}
    #[error("cannot {what}: {source}")]
    Generate {
        /// The step that failed.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// the certificate is not signed by this cluster's CA: {reason}
    #[error("the certificate is not signed by this cluster's CA: {reason}")]
    NotSignedBy {
        /// What did not match.
        reason: String,
    },

    /// the certificate is not a meshd node certificate: {reason}
    #[error("the certificate is not a meshd node certificate: {reason}")]
    NotANodeCertificate {
        /// What is missing or wrong.
        reason: String,
    },

    /// the certificate validity is out of range: {reason}
    #[error("the certificate validity is out of range: {reason}")]
    BadValidity {
        /// What is out of range.
        reason: String,
    },

    /// the credentials in {dir} are inconsistent: {reason}; remove the directory and join
    /// the cluster again
    #[error(
        "the credentials in {dir} are inconsistent: {reason}; remove the directory and join \
         the cluster again"
    )]
    InconsistentCredentials {
        /// The credentials directory.
        dir: PathBuf,
        /// What does not match.
        reason: String,
    },

    /// cannot {op} {path}: {source}
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// The operation, e.g. `write`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// the system clock is before 1970; set the clock
    #[error("the system clock is before 1970; set the clock")]
    Clock,
}

/// Result of the PKI.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;
