//! Node keys, certificate signing requests, node certificates and their verification.

use std::fmt;

use mesh_api::{NodeRole, ValidationError};
use rand::Rng;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType, SerialNumber,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::X509Name;

use crate::ca::{CaMaterial, time_from_ms};
use crate::error::{PkiError, Result};
use crate::pem::certificate_der;

/// Organizational unit (and SAN) of manager certificates.
pub const MANAGER_OU: &str = "swarm-manager";
/// Organizational unit (and SAN) of worker certificates.
pub const WORKER_OU: &str = "swarm-worker";

/// The organizational unit that encodes `role` in a node certificate.
pub fn role_ou(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Manager => MANAGER_OU,
        NodeRole::Worker => WORKER_OU,
    }
}

/// The role encoded by an organizational unit, if it is one of ours.
pub fn role_from_ou(ou: &str) -> Option<NodeRole> {
    match ou {
        MANAGER_OU => Some(NodeRole::Manager),
        WORKER_OU => Some(NodeRole::Worker),
        _ => None,
    }
}

/// Checks a cluster id: 1 to 64 characters among letters, digits, `.`, `_` and `-`.
pub(crate) fn check_cluster_id(cluster_id: &str) -> Result<(), ValidationError> {
    let ok = !cluster_id.is_empty()
        && cluster_id.len() <= 64
        && cluster_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "cluster id",
            format!("{cluster_id:?} is not a valid cluster id"),
            "use 1 to 64 letters, digits, `.`, `_` or `-` (normally a generated object id)",
        ))
    }
}

/// Checks a node id: a DNS label (1 to 63 lowercase letters, digits or `-`, not at either
/// end), because it becomes a DNS SAN of the certificate.
pub(crate) fn check_node_id(node_id: &str) -> Result<(), ValidationError> {
    let ok = !node_id.is_empty()
        && node_id.len() <= 63
        && !node_id.starts_with('-')
        && !node_id.ends_with('-')
        && node_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "node id",
            format!("{node_id:?} is not a valid node id"),
            "use 1 to 63 lowercase letters, digits or inner `-` (normally a generated object id)",
        ))
    }
}

/// A random positive 16-byte certificate serial number.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes[..]);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn parse_der<'a>(field: &'static str, der: &'a [u8]) -> Result<X509Certificate<'a>> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::BadCertificate {
            field,
            reason: e.to_string(),
        })
}

/// The raw public key bits of the certificate in `cert_pem`.
pub(crate) fn spki_bits_of_cert(field: &'static str, cert_pem: &str) -> Result<Vec<u8>> {
    let der = certificate_der(field, cert_pem)?;
    let cert = parse_der(field, &der)?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// A node's private key (ECDSA P-256). The key never leaves the node: the manager only sees
/// the certificate signing request.
pub struct NodeKey {
    key: KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

impl NodeKey {
    /// A fresh P-256 key.
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            PkiError::Generate {
                what: "generate a node key",
                source,
            }
        })?;
        Ok(Self { key })
    }

    /// Loads a key written by [`NodeKey::key_pem`].
    pub fn from_pem(key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey {
            field: "node key",
            reason: e.to_string(),
        })?;
        Ok(Self { key })
    }

    /// The private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate signing request for this key, PEM. Its subject is a placeholder: the
    /// manager decides the node id, role and cluster it certifies.
    pub fn csr_pem(&self) -> Result<String> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "swarm-node");
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&self.key)
            .map_err(|source| PkiError::Generate {
                what: "create a certificate signing request",
                source,
            })?;
        csr.pem().map_err(|source| PkiError::Generate {
            what: "encode the certificate signing request",
            source,
        })
    }

    /// Whether the certificate `cert_pem` certifies this key.
    pub fn matches_cert(&self, cert_pem: &str) -> Result<bool> {
        Ok(spki_bits_of_cert("node certificate", cert_pem)? == self.key.public_key_raw())
    }
}

/// Signs a node certificate for the key in `csr_pem` (whose signature is verified).
///
/// Subject: CN = `node_id`, OU = `swarm-manager` or `swarm-worker`, O = `cluster_id`; DNS
/// SANs: the node id and the OU. Valid from `not_before_unix_ms` for `validity_ms`; X.509
/// carries whole seconds, so both ends are truncated to the second (the certificate never
/// outlives the requested end). The validity must span at least one whole second.
pub fn sign_node_cert(
    ca: &CaMaterial,
    csr_pem: &str,
    node_id: &str,
    role: NodeRole,
    cluster_id: &str,
    not_before_unix_ms: u64,
    validity_ms: u64,
) -> Result<String> {
    check_node_id(node_id)?;
    check_cluster_id(cluster_id)?;
    let not_after_ms =
        not_before_unix_ms
            .checked_add(validity_ms)
            .ok_or_else(|| PkiError::BadValidity {
                reason: format!(
                    "not-before {not_before_unix_ms} ms plus {validity_ms} ms overflows"
                ),
            })?;
    if not_after_ms / 1000 <= not_before_unix_ms / 1000 {
        return Err(PkiError::BadValidity {
            reason: format!(
                "a validity of {validity_ms} ms does not span a whole second; certificates \
                 carry whole seconds, so use at least 1000 ms"
            ),
        });
    }

    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::BadCsr {
        reason: e.to_string(),
    })?;
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| PkiError::BadKey {
        field: "CA key",
        reason: e.to_string(),
    })?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|e| PkiError::BadCertificate {
            field: "CA certificate",
            reason: e.to_string(),
        })?;

    let ou = role_ou(role);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    let dns = |name: &str| {
        name.to_owned()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|source| PkiError::Generate {
                what: "encode a subject alternative name",
                source,
            })
    };
    params.subject_alt_names = vec![dns(node_id)?, dns(ou)?];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = time_from_ms(not_before_unix_ms, "not-before")?;
    params.not_after = time_from_ms(not_after_ms, "not-after")?;

    let cert = params
        .signed_by(&csr.public_key, &issuer)
        .map_err(|source| PkiError::Generate {
            what: "sign the node certificate",
            source,
        })?;
    tracing::debug!(node_id, %role, cluster_id, not_before_unix_ms, validity_ms, "signed a node certificate");
    Ok(cert.pem())
}

/// What a node certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node id (subject CN).
    pub node_id: String,
    /// The role (subject OU).
    pub role: NodeRole,
    /// The cluster id (subject O).
    pub cluster_id: String,
    /// Start of validity, Unix milliseconds (whole seconds).
    pub not_before_ms: u64,
    /// End of validity, Unix milliseconds (whole seconds).
    pub not_after_ms: u64,
}

fn single_attr(
    name: &X509Name<'_>,
    what: &str,
    iter: impl Iterator<Item = String>,
) -> Result<String> {
    let values: Vec<String> = iter.collect();
    match values.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(PkiError::NotANodeCertificate {
            reason: format!("the subject {name} has no {what}"),
        }),
        _ => Err(PkiError::NotANodeCertificate {
            reason: format!("the subject {name} has more than one {what}"),
        }),
    }
}

/// Reads the identity out of a node certificate (PEM). It does not check who signed it: see
/// [`verify_signed_by`].
pub fn parse_node_cert(cert_pem: &str) -> Result<NodeIdentity> {
    let der = certificate_der("node certificate", cert_pem)?;
    parse_node_cert_der(&der)
}

/// [`parse_node_cert`] for a certificate in DER form (as TLS hands it over).
pub fn parse_node_cert_der(der: &[u8]) -> Result<NodeIdentity> {
    let cert = parse_der("node certificate", der)?;
    let subject = cert.subject();
    let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        attr.as_str().map(str::to_owned).unwrap_or_default()
    };
    let node_id = single_attr(subject, "common name", subject.iter_common_name().map(text))?;
    let ou = single_attr(
        subject,
        "organizational unit",
        subject.iter_organizational_unit().map(text),
    )?;
    let cluster_id = single_attr(
        subject,
        "organization",
        subject.iter_organization().map(text),
    )?;
    let role = role_from_ou(&ou).ok_or_else(|| PkiError::NotANodeCertificate {
        reason: format!("organizational unit {ou:?} is neither {MANAGER_OU} nor {WORKER_OU}"),
    })?;
    check_node_id(&node_id).map_err(|e| PkiError::NotANodeCertificate { reason: e.problem })?;
    let ms = |secs: i64, what: &str| {
        u64::try_from(secs)
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| PkiError::NotANodeCertificate {
                reason: format!("its {what} is before 1970"),
            })
    };
    let validity = cert.validity();
    Ok(NodeIdentity {
        node_id,
        role,
        cluster_id,
        not_before_ms: ms(validity.not_before.timestamp(), "not-before")?,
        not_after_ms: ms(validity.not_after.timestamp(), "not-after")?,
    })
}

/// Checks that `cert_pem` was issued and signed by the CA `ca_cert_pem`. Validity dates are
/// not checked here (TLS checks them against the clock).
pub fn verify_signed_by(cert_pem: &str, ca_cert_pem: &str) -> Result<()> {
    let der = certificate_der("certificate", cert_pem)?;
    let ca_der = certificate_der("CA certificate", ca_cert_pem)?;
    let cert = parse_der("certificate", &der)?;
    let ca = parse_der("CA certificate", &ca_der)?;
    if !ca.is_ca() {
        return Err(PkiError::NotSignedBy {
            reason: format!("{} is not a CA certificate", ca.subject()),
        });
    }
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(PkiError::NotSignedBy {
            reason: format!(
                "it was issued by {}, not by {}",
                cert.issuer(),
                ca.subject()
            ),
        });
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|e| PkiError::NotSignedBy {
            reason: format!("the signature does not verify with the CA's key ({e})"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::generate_root_ca;

    const T0: u64 = 1_700_000_000_000;
    const DAY: u64 = 24 * 3600 * 1000;
    const NODE: &str = "abcdefghijklmnopqrstuvwxy";

    fn signed(ca: &CaMaterial, role: NodeRole) -> (NodeKey, String) {
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_pem().unwrap();
        let cert = sign_node_cert(ca, &csr, NODE, role, "cluster1", T0, DAY).unwrap();
        (key, cert)
    }

    #[test]
    fn identity_reads_back() {
        let ca = generate_root_ca("cluster1").unwrap();
        for role in [NodeRole::Manager, NodeRole::Worker] {
            let (key, cert) = signed(&ca, role);
            let id = parse_node_cert(&cert).unwrap();
            assert_eq!(
                id,
                NodeIdentity {
                    node_id: NODE.into(),
                    role,
                    cluster_id: "cluster1".into(),
                    not_before_ms: T0,
                    not_after_ms: T0 + DAY,
                }
            );
            assert!(key.matches_cert(&cert).unwrap());
            verify_signed_by(&cert, &ca.cert_pem).unwrap();
        }
    }

    #[test]
    fn sans_and_usages_are_set() {
        let ca = generate_root_ca("cluster1").unwrap();
        let (_, cert_pem) = signed(&ca, NodeRole::Worker);
        let der = certificate_der("t", &cert_pem).unwrap();
        let cert = parse_der("t", &der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            vec![format!("DNSName({NODE})"), "DNSName(swarm-worker)".into()]
        );
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
    }

    #[test]
    fn validity_is_respected_to_the_second() {
        let ca = generate_root_ca("c").unwrap();
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_pem().unwrap();
        let cert = sign_node_cert(&ca, &csr, NODE, NodeRole::Worker, "c", T0 + 250, 3_000).unwrap();
        let id = parse_node_cert(&cert).unwrap();
        assert_eq!(id.not_before_ms, T0);
        assert_eq!(id.not_after_ms, T0 + 3_000);
        let err = sign_node_cert(&ca, &csr, NODE, NodeRole::Worker, "c", T0 + 250, 500)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 1000 ms"), "{err}");
        let err = sign_node_cert(&ca, &csr, NODE, NodeRole::Worker, "c", u64::MAX, 5_000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("overflows"), "{err}");
    }

    #[test]
    fn foreign_ca_signature_fails() {
        let ca = generate_root_ca("cluster1").unwrap();
        let foreign = generate_root_ca("cluster1").unwrap();
        let (_, cert) = signed(&ca, NodeRole::Manager);
        let err = verify_signed_by(&cert, &foreign.cert_pem).unwrap_err();
        assert!(matches!(err, PkiError::NotSignedBy { .. }), "{err}");
        // A CA with a different name fails on the issuer check.
        let other = generate_root_ca("cluster2").unwrap();
        let err = verify_signed_by(&cert, &other.cert_pem).unwrap_err();
        assert!(err.to_string().contains("issued by"), "{err}");
        // A node certificate is not a CA.
        let err = verify_signed_by(&cert, &cert).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = generate_root_ca("c").unwrap();
        let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
        let err = sign_node_cert(&ca, "junk", NODE, NodeRole::Worker, "c", T0, DAY).unwrap_err();
        assert!(matches!(err, PkiError::BadCsr { .. }), "{err}");
        // Flip one base64 character inside the body of the CSR (its signature).
        let mut lines: Vec<String> = csr.lines().map(str::to_owned).collect();
        let idx = lines.len() - 2;
        let line = &mut lines[idx];
        let pos = line.len() / 2;
        let c = line.as_bytes()[pos];
        let repl = if c == b'A' { "B" } else { "A" };
        line.replace_range(pos..pos + 1, repl);
        let tampered = lines.join("\n");
        let err = sign_node_cert(&ca, &tampered, NODE, NodeRole::Worker, "c", T0, DAY).unwrap_err();
        assert!(matches!(err, PkiError::BadCsr { .. }), "{err}");
    }

    #[test]
    fn bad_ids_are_refused() {
        let ca = generate_root_ca("c").unwrap();
        let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
        for bad in ["", "UPPER", "-lead", "trail-", "a.b", &"a".repeat(64)] {
            let err = sign_node_cert(&ca, &csr, bad, NodeRole::Worker, "c", T0, DAY).unwrap_err();
            assert!(err.to_string().contains("node id"), "{bad:?}: {err}");
        }
        let err = sign_node_cert(&ca, &csr, NODE, NodeRole::Worker, "a b", T0, DAY).unwrap_err();
        assert!(err.to_string().contains("cluster id"), "{err}");
    }

    #[test]
    fn ca_certificate_is_not_a_node_certificate() {
        let ca = generate_root_ca("c").unwrap();
        let err = parse_node_cert(&ca.cert_pem).unwrap_err();
        assert!(matches!(err, PkiError::NotANodeCertificate { .. }), "{err}");
        let err = parse_node_cert("garbage").unwrap_err();
        assert!(err.to_string().contains("node certificate"), "{err}");
    }

    #[test]
    fn node_key_round_trips_through_pem() {
        let key = NodeKey::generate().unwrap();
        let again = NodeKey::from_pem(&key.key_pem()).unwrap();
        assert_eq!(key.key_pem(), again.key_pem());
        assert!(!format!("{key:?}").contains("PRIVATE"));
        assert!(NodeKey::from_pem("nope").is_err());
    }
}
