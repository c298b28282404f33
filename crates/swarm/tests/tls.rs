//! `swarm -H tcp://…` against a fake meshd behind real mutual TLS (rustls), with
//! certificates made by rcgen: the server certificate must chain to the given CA, its
//! name is not checked (node certificates name node IDs), and the client authenticates
//! with its own certificate.

// Certificate helpers: a failure to make test certificates is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A node certificate as meshd makes them: the node ID as its only name.
fn node_cert(ca: &Ca, node_id: &str) -> (String, String) {
    let mut params = CertificateParams::new(vec![node_id.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn server_config(ca: &Ca, node_id: &str) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let (cert, key) = node_cert(ca, node_id);
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    Arc::new(config)
}

/// Writes ca.crt, node.crt and node.key (the SWARM_CERT_PATH layout) into `dir`.
fn write_client_files(dir: &Path, trusted: &Ca, signer: &Ca) {
    let (cert, key) = node_cert(signer, "clientnode000000000000000");
    std::fs::write(dir.join("ca.crt"), &trusted.pem).unwrap();
    std::fs::write(dir.join("node.crt"), cert).unwrap();
    std::fs::write(dir.join("node.key"), key).unwrap();
}

fn flags(dir: &Path) -> Vec<String> {
    ["ca.crt", "node.crt", "node.key"]
        .iter()
        .zip(["--tlscacert", "--tlscert", "--tlskey"])
        .flat_map(|(file, flag)| [flag.to_string(), dir.join(file).display().to_string()])
        .collect()
}

#[test]
fn mutual_tls_with_flags_reaches_the_daemon() {
    let cluster = ca("cluster root");
    let d = FakeDaemon::tls(server_config(&cluster, "srvnode000000000000000000"), api);
    let dir = tempfile::tempdir().unwrap();
    write_client_files(dir.path(), &cluster, &cluster);
    let mut args: Vec<String> = vec!["-H".into(), d.host.clone()];
    args.extend(flags(dir.path()));
    args.extend(["node".into(), "ls".into(), "-q".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = swarm(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 4, "{}", stdout(&o));
    assert_eq!(d.lines(), ["GET /v1/nodes"]);
}

#[test]
fn mutual_tls_with_swarm_cert_path() {
    let cluster = ca("cluster root");
    let d = FakeDaemon::tls(server_config(&cluster, "srvnode000000000000000000"), api);
    let dir = tempfile::tempdir().unwrap();
    write_client_files(dir.path(), &cluster, &cluster);
    let cert_path = dir.path().display().to_string();
    let o = swarm(
        &["join-token", "-q", "manager"],
        &[("SWARM_HOST", &d.host), ("SWARM_CERT_PATH", &cert_path)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "SWMTKN-1-digest-managersecret\n");
    assert_eq!(d.lines(), ["GET /v1/swarm/join-token/manager"]);
}

#[test]
fn a_server_outside_the_cluster_ca_is_refused() {
    let cluster = ca("cluster root");
    let impostor = ca("impostor root");
    let d = FakeDaemon::tls(server_config(&impostor, "srvnode000000000000000000"), api);
    let dir = tempfile::tempdir().unwrap();
    write_client_files(dir.path(), &cluster, &cluster);
    let cert_path = dir.path().display().to_string();
    let o = swarm(&["-H", &d.host, "info"], &[("SWARM_CERT_PATH", &cert_path)]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "TLS handshake with the meshd daemon at {} failed",
            d.host
        )),
        "{err}"
    );
    assert!(d.requests().is_empty());
}

#[test]
fn a_client_outside_the_cluster_ca_gets_nothing() {
    let cluster = ca("cluster root");
    let stranger = ca("stranger root");
    let d = FakeDaemon::tls(server_config(&cluster, "srvnode000000000000000000"), api);
    let dir = tempfile::tempdir().unwrap();
    // Trusts the right CA but presents a certificate the cluster never signed.
    write_client_files(dir.path(), &cluster, &stranger);
    let cert_path = dir.path().display().to_string();
    let o = swarm(&["-H", &d.host, "info"], &[("SWARM_CERT_PATH", &cert_path)]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(!stderr(&o).is_empty());
    assert!(d.requests().is_empty());
}

#[test]
fn missing_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().display().to_string();
    let o = swarm(
        &["-H", "tcp://127.0.0.1:9", "info"],
        &[("SWARM_CERT_PATH", &cert_path)],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("cannot read --tlscacert file "), "{err}");
    assert!(err.contains("ca.crt"), "{err}");
}
