//! PEM helpers.

use x509_parser::pem::parse_x509_pem;

use crate::error::{PkiError, Result};

/// The DER of the first `CERTIFICATE` block in `pem`, checked to parse as X.509.
pub(crate) fn certificate_der(field: &'static str, pem: &str) -> Result<Vec<u8>> {
    let bad = |reason: String| PkiError::BadCertificate { field, reason };
    let (_, block) = parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if block.label != "CERTIFICATE" {
        return Err(bad(format!(
            "the PEM block is a {:?}, not a CERTIFICATE",
            block.label
        )));
    }
    x509_parser::parse_x509_certificate(&block.contents).map_err(|e| bad(e.to_string()))?;
    Ok(block.contents)
}
