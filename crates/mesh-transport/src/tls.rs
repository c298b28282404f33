//! rustls and quinn configurations: mutual TLS against the cluster CA.
//!
//! Every configuration names the ring provider explicitly; nothing depends on a process-wide
//! default provider.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::Identity;
use crate::error::TransportError;

/// The ALPN protocol every meshd connection speaks.
pub const ALPN: &[u8] = b"meshd/1";
/// The server name clients send. It is not checked: node certificates name node ids, and the
/// chain to the cluster CA is what is verified.
pub(crate) const SERVER_NAME: &str = "meshd";
/// Interval between keep-alive packets on idle connections.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A connection silent for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT_MS: u32 = 5_000;
/// Flow-control window of one stream (Raft snapshots travel on one stream).
const STREAM_WINDOW: u32 = 16 << 20;
/// Flow-control window of one connection.
const CONNECTION_WINDOW: u32 = 64 << 20;
/// Concurrent calls on one connection.
const MAX_CONCURRENT_CALLS: u32 = 1024;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn identity_err(field: &'static str, reason: impl Into<String>) -> TransportError {
    TransportError::Identity {
        field,
        reason: reason.into(),
    }
}

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// All certificates in `pem`.
pub(crate) fn parse_certs(
    field: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| identity_err(field, e.to_string()))?;
    if certs.is_empty() {
        return Err(identity_err(field, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| identity_err("key_pem", e.to_string()))
}

fn roots(ca_cert_pem: &str) -> Result<Arc<RootCertStore>, TransportError> {
    let mut store = RootCertStore::empty();
    for cert in parse_certs("ca_cert_pem", ca_cert_pem)? {
        store
            .add(cert)
            .map_err(|e| identity_err("ca_cert_pem", e.to_string()))?;
    }
    Ok(Arc::new(store))
}

/// The certificate chain we present: our certificate, then the CA.
fn chain(identity: &Identity) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let mut chain = parse_certs("cert_pem", &identity.cert_pem)?;
    chain.extend(parse_certs("ca_cert_pem", &identity.ca_cert_pem)?);
    Ok(chain)
}

/// Keep-alive, idle timeout and windows shared by both ends.
fn transport_config() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_CALLS))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Arc::new(t)
}

/// Server side: presents the node certificate with the CA; client certificates are optional
/// but, when present, must chain to the cluster CA (otherwise the handshake fails).
pub(crate) fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, TransportError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        roots(&identity.ca_cert_pem)?,
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(tls_err)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(identity)?, parse_key(&identity.key_pem)?)
        .map_err(|e| identity_err("key_pem", e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// How a client checks the server.
pub(crate) enum Trust<'a> {
    /// The server certificate must chain to this CA (PEM).
    Ca(&'a str),
    /// Anything goes: used only to fetch the CA certificate, which the caller then pins
    /// against the join token's digest.
    Anything,
}

/// Client side: presents `identity` if given, checks the server as `trust` says.
pub(crate) fn client_config(
    identity: Option<&Identity>,
    trust: Trust<'_>,
) -> Result<quinn::ClientConfig, TransportError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(ServerVerifier {
        roots: match trust {
            Trust::Ca(ca) => Some(roots(ca)?),
            Trust::Anything => None,
        },
        algorithms,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match identity {
        Some(identity) => builder
            .with_client_auth_cert(chain(identity)?, parse_key(&identity.key_pem)?)
            .map_err(|e| identity_err("key_pem", e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The endpoint configuration: its stateless-reset key and connection-id generator key are
/// derived from the node's private key, so that a node restarted on the same address
/// recognizes the connection ids it issued before and resets its peers' stale connections at
/// once, instead of letting them time out.
pub(crate) fn endpoint_config(
    identity: &Identity,
) -> Result<quinn::EndpointConfig, TransportError> {
    let key = parse_key(&identity.key_pem)?;
    let derive = |label: &[u8]| {
        let mut hasher = Sha256::new();
        hasher.update(b"meshd quic endpoint v1\0");
        hasher.update(label);
        hasher.update(b"\0");
        hasher.update(key.secret_der());
        hasher.finalize()
    };
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derive(b"stateless reset"));
    let cid = derive(b"connection id");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(config)
}

/// Checks the server certificate the way the caller asked: with `roots`, it must chain to
/// the cluster CA and be currently valid (the server name is not checked: node
/// certificates name node IDs); without, any certificate is accepted — only for fetching
/// the CA certificate before it can be pinned. The handshake signature is always checked
/// against the presented key.
#[derive(Debug)]
struct ServerVerifier {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// TLS server configuration for the control API over TCP (`meshd --remote-api-addr`):
/// presents the node certificate, and REQUIRES a client certificate chaining to the
/// cluster CA. The caller checks the client's role after the handshake.
pub fn api_server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        roots(&identity.ca_cert_pem)?,
        provider.clone(),
    )
    .build()
    .map_err(tls_err)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(identity)?, parse_key(&identity.key_pem)?)
        .map_err(|e| identity_err("key_pem", e.to_string()))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}
