//! The cluster's root certificate authority.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

use crate::error::{PkiError, Result};
use crate::node::{check_cluster_id, random_serial, spki_bits_of_cert};
use crate::token::ca_digest;

/// Common name of every root CA.
pub const CA_COMMON_NAME: &str = "swarm-ca";
/// How long a root CA is valid (20 years).
pub const CA_VALIDITY_MS: u64 = 20 * 365 * 24 * 3600 * 1000;
/// How far back a root CA's validity starts, so that nodes with a clock slightly behind accept
/// it.
const CA_BACKDATE_MS: u64 = 3600 * 1000;

/// A root CA: its certificate, its private key and the certificate's digest.
#[derive(Clone, PartialEq, Eq)]
pub struct CaMaterial {
    /// Root certificate, PEM.
    pub cert_pem: String,
    /// Root private key, PEM (PKCS#8). Held by managers only.
    pub key_pem: String,
    /// [`ca_digest`] of the certificate, as join tokens carry it.
    pub digest: String,
}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial")
            .field("digest", &self.digest)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl CaMaterial {
    /// Rebuilds the material from a stored certificate and key, checking that they belong
    /// together and recomputing the digest.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey {
            field: "CA key",
            reason: e.to_string(),
        })?;
        let spki = spki_bits_of_cert("CA certificate", cert_pem)?;
        if spki != key.public_key_raw() {
            return Err(PkiError::BadKey {
                field: "CA key",
                reason: "the key does not belong to the CA certificate".into(),
            });
        }
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            digest: ca_digest(cert_pem)?,
        })
    }
}

/// The current time in Unix milliseconds.
pub(crate) fn now_ms() -> Result<u64> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Clock)?;
    u64::try_from(since.as_millis()).map_err(|_| PkiError::Clock)
}

/// Unix milliseconds as a certificate time, truncated to whole seconds (the precision of
/// X.509 validity).
pub(crate) fn time_from_ms(ms: u64, what: &str) -> Result<OffsetDateTime> {
    let secs = i64::try_from(ms / 1000).map_err(|_| PkiError::BadValidity {
        reason: format!("{what} ({ms} ms) is too far in the future"),
    })?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| PkiError::BadValidity {
        reason: format!("{what} ({ms} ms): {e}"),
    })
}

/// Creates a new root CA for the cluster `cluster_id`: ECDSA P-256, CN `swarm-ca`,
/// O = cluster id, valid for 20 years (from one hour ago).
pub fn generate_root_ca(cluster_id: &str) -> Result<CaMaterial> {
    check_cluster_id(cluster_id)?;
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate {
            what: "generate the CA key",
            source,
        })?;
    let now = now_ms()?;
    let not_before = now.saturating_sub(CA_BACKDATE_MS);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time_from_ms(not_before, "CA not-before")?;
    params.not_after = time_from_ms(now.saturating_add(CA_VALIDITY_MS), "CA not-after")?;
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Generate {
            what: "self-sign the CA certificate",
            source,
        })?;
    let cert_pem = cert.pem();
    let digest = ca_digest(&cert_pem)?;
    tracing::info!(cluster_id, %digest, "generated a new root CA");
    Ok(CaMaterial {
        cert_pem,
        key_pem: key.serialize_pem(),
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::pem::parse_x509_pem;

    #[test]
    fn root_ca_has_the_expected_shape() {
        let ca = generate_root_ca("cluster-7").unwrap();
        let (_, pem) = parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert!(cert.is_ca());
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "swarm-ca");
        let o = cert.subject().iter_organization().next().unwrap();
        assert_eq!(o.as_str().unwrap(), "cluster-7");
        let validity = cert.validity();
        let years =
            (validity.not_after.timestamp() - validity.not_before.timestamp()) / (365 * 24 * 3600);
        assert!(years >= 19, "{years}");
        cert.verify_signature(None).unwrap();
        assert!(ca.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn root_ca_from_pem_checks_the_pair() {
        let ca = generate_root_ca("c").unwrap();
        let other = generate_root_ca("c").unwrap();
        assert_eq!(CaMaterial::from_pem(&ca.cert_pem, &ca.key_pem).unwrap(), ca);
        let err = CaMaterial::from_pem(&ca.cert_pem, &other.key_pem).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let err = CaMaterial::from_pem(&ca.cert_pem, "junk").unwrap_err();
        assert!(err.to_string().contains("CA key"), "{err}");
    }

    #[test]
    fn bad_cluster_id_is_refused() {
        let err = generate_root_ca("").unwrap_err().to_string();
        assert!(err.contains("cluster id"), "{err}");
        let err = generate_root_ca("a/b").unwrap_err().to_string();
        assert!(err.contains("cluster id"), "{err}");
    }
}
