//! HTTP/JSON client of meshd's control API, over a unix socket or mutual-TLS TCP.
//!
//! One HTTP/1.1 connection per request: the CLI makes a handful of calls per run, and a
//! fresh connection keeps failures independent (one failed node of `node rm a b` does not
//! poison the next).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use mesh_api::ValidationError;
use mesh_api::api::ErrorBody;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::error::{CliError, Result};

/// How long to wait for a TCP connection and its TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer the CLI accepts from the daemon.
const MAX_BODY: usize = 64 << 20;
/// `User-Agent` of every request.
const AGENT: &str = concat!("swarm/", env!("CARGO_PKG_VERSION"));

/// The daemon's local socket as `-H` spells it.
pub const DEFAULT_HOST: &str = "unix:///run/meshd/meshd.sock";

/// Port of the daemon's remote API when `tcp://HOST` gives none.
pub const DEFAULT_REMOTE_API_PORT: u16 = 2376;

/// Where the daemon listens, as given to `-H/--host` or `SWARM_HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// `unix:///PATH`: the daemon's local socket.
    Unix(PathBuf),
    /// `tcp://HOST:PORT`: the daemon's remote API, mutual TLS.
    Tcp {
        /// Host name or IP address (without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl Default for Host {
    fn default() -> Self {
        Host::Unix(PathBuf::from(mesh_api::api::DEFAULT_SOCKET))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Unix(path) => write!(f, "unix://{}", path.display()),
            Host::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Host::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

impl FromStr for Host {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const FIELD: &str = "-H/--host";
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(ValidationError::new(
                    FIELD,
                    format!("{s:?} does not name an absolute socket path"),
                    "write unix:///PATH, e.g. unix:///run/meshd/meshd.sock",
                ));
            }
            return Ok(Host::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let fix =
                "write tcp://HOST[:PORT], e.g. tcp://192.0.2.1:2376 or tcp://[2001:db8::1]:2376";
            let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
                let Some((host, after)) = bracketed.split_once(']') else {
                    return Err(ValidationError::new(
                        FIELD,
                        format!("{s:?} has an unclosed '['"),
                        fix,
                    ));
                };
                match after {
                    "" => (host, None),
                    _ => match after.strip_prefix(':') {
                        Some(port) => (host, Some(port)),
                        None => {
                            return Err(ValidationError::new(
                                FIELD,
                                format!("{s:?} has {after:?} after the address"),
                                fix,
                            ));
                        }
                    },
                }
            } else {
                match rest.matches(':').count() {
                    0 => (rest, None),
                    1 => rest
                        .split_once(':')
                        .map(|(h, p)| (h, Some(p)))
                        .unwrap_or((rest, None)),
                    _ => {
                        return Err(ValidationError::new(
                            FIELD,
                            format!("{s:?} has an IPv6 address without brackets"),
                            fix,
                        ));
                    }
                }
            };
            if host.is_empty() || host.contains(['/', '@', '?', '#', '[', ']']) {
                return Err(ValidationError::new(
                    FIELD,
                    format!("{s:?} has no valid host"),
                    fix,
                ));
            }
            let port = match port.map(str::parse::<u16>) {
                None => DEFAULT_REMOTE_API_PORT,
                Some(Ok(p)) if p > 0 => p,
                Some(_) => {
                    return Err(ValidationError::new(
                        FIELD,
                        format!("{s:?} does not end with a TCP port"),
                        "give a port between 1 and 65535, e.g. tcp://192.0.2.1:2376",
                    ));
                }
            };
            return Ok(Host::Tcp {
                host: host.to_string(),
                port,
            });
        }
        Err(ValidationError::new(
            FIELD,
            format!("unsupported address {s:?}"),
            "use unix:///PATH (the local socket) or tcp://HOST:PORT (remote, mutual TLS)",
        ))
    }
}

/// The three PEM files of a mutual-TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster's root CA certificate (`--tlscacert`, `ca.crt`).
    pub ca: PathBuf,
    /// This client's certificate chain (`--tlscert`, `node.crt`).
    pub cert: PathBuf,
    /// This client's private key (`--tlskey`, `node.key`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Picks the TLS files for `host`: each flag wins over `cert_path/<default name>`.
    /// Unix hosts need none (`Ok(None)`); TCP hosts need all three.
    pub fn resolve(
        host: &Host,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        cert_path: Option<&Path>,
    ) -> Result<Option<TlsFiles>> {
        if matches!(host, Host::Unix(_)) {
            if ca.is_some() || cert.is_some() || key.is_some() {
                debug!("TLS files are ignored for a unix socket host");
            }
            return Ok(None);
        }
        let pick = |flag: Option<PathBuf>, name: &str, missing: &'static str| {
            flag.or_else(|| cert_path.map(|dir| dir.join(name)))
                .ok_or_else(|| CliError::MissingTls {
                    host: host.to_string(),
                    missing,
                })
        };
        Ok(Some(TlsFiles {
            ca: pick(ca, "ca.crt", "--tlscacert")?,
            cert: pick(cert, "node.crt", "--tlscert")?,
            key: pick(key, "node.key", "--tlskey")?,
        }))
    }

    /// Builds the rustls client configuration: the server must present a certificate
    /// chaining to `ca` (its name is not checked: node certificates carry node IDs), and
    /// the client authenticates with `cert` and `key`.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let ca_pem = read_file("--tlscacert", &self.ca)?;
        let mut roots = RootCertStore::empty();
        for cert in load_certs("--tlscacert", &self.ca, &ca_pem)? {
            roots.add(cert).map_err(|e| CliError::BadPem {
                flag: "--tlscacert",
                path: self.ca.clone(),
                problem: format!("{e}; give the cluster's root CA certificate"),
            })?;
        }
        let chain = load_certs(
            "--tlscert",
            &self.cert,
            &read_file("--tlscert", &self.cert)?,
        )?;
        let key_pem = read_file("--tlskey", &self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CliError::BadPem {
            flag: "--tlskey",
            path: self.key.clone(),
            problem: format!(
                "{e}; give the node's private key in PEM (-----BEGIN PRIVATE KEY-----)"
            ),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = ClusterCaVerifier {
            roots: Arc::new(roots),
            algorithms: provider.signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain, key)?;
        Ok(config)
    }
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| CliError::ReadFile {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn load_certs(flag: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |problem: String| CliError::BadPem {
        flag,
        path: path.to_path_buf(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{e}; give certificates in PEM")))?;
    if certs.is_empty() {
        return Err(bad(
            "no certificate found; give certificates in PEM (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// Accepts a server certificate that chains to the cluster's root CA, whatever names it
/// carries: meshd node certificates name node IDs, not host names.
#[derive(Debug)]
struct ClusterCaVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ClusterCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
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

/// Percent-encodes one path segment (a node ID or host name given by the user).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client of one meshd daemon.
#[derive(Clone)]
pub struct Client {
    host: Host,
    tls: Option<TlsConnector>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.host.to_string())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Client {
    /// A client of the daemon at `host`. TCP hosts need `tls` (see [`TlsFiles::resolve`]);
    /// the files are read here, so a bad file fails before any request.
    pub fn new(host: Host, tls: Option<&TlsFiles>) -> Result<Self> {
        let tls = match (&host, tls) {
            (Host::Unix(_), _) => None,
            (Host::Tcp { .. }, None) => {
                return Err(CliError::MissingTls {
                    host: host.to_string(),
                    missing: "--tlscacert",
                });
            }
            (Host::Tcp { .. }, Some(files)) => {
                Some(TlsConnector::from(Arc::new(files.client_config()?)))
            }
        };
        Ok(Client { host, tls })
    }

    /// The daemon's address.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// `GET path`, decoding the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.send(Method::GET, path, None).await?;
        decode(path, &body)
    }

    /// `POST path` with a JSON body, decoding the JSON answer.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let json = serde_json::to_vec(body).map_err(|e| CliError::Request {
            route: path.to_string(),
            detail: e.to_string(),
        })?;
        let answer = self.send(Method::POST, path, Some(json)).await?;
        decode(path, &answer)
    }

    /// `POST path` without a body, decoding the JSON answer.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let answer = self.send(Method::POST, path, None).await?;
        decode(path, &answer)
    }

    /// `DELETE path` (the path may carry a query); the answer's body is ignored.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.send(Method::DELETE, path, None).await.map(drop)
    }

    /// Sends one request and returns the body of a 2xx answer. A non-2xx answer becomes
    /// [`CliError::Daemon`] with the [`ErrorBody`] message.
    pub async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes> {
        debug!(%method, path, host = %self.host, "request");
        let mut sender = self.connect().await?;
        let host_header = match &self.host {
            Host::Unix(_) => "localhost".to_string(),
            Host::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Host::Tcp { host, port } => format!("{host}:{port}"),
        };
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, host_header)
            .header(USER_AGENT, AGENT)
            .header(ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::Request {
                route: path.to_string(),
                detail: e.to_string(),
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| CliError::Http {
                host: self.host.to_string(),
                source,
            })?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| CliError::Decode {
                route: path.to_string(),
                detail: format!("cannot read the answer: {e}"),
            })?
            .to_bytes();
        debug!(%method, path, status = status.as_u16(), len = bytes.len(), "answer");
        if status.is_success() {
            return Ok(bytes);
        }
        Err(daemon_error(status, &bytes))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        match &self.host {
            Host::Unix(path) => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(|e| self.connect_error(e))?;
                self.handshake(TokioIo::new(stream)).await
            }
            Host::Tcp { host, port } => {
                let Some(connector) = &self.tls else {
                    return Err(CliError::MissingTls {
                        host: self.host.to_string(),
                        missing: "--tlscacert",
                    });
                };
                let tcp = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    TcpStream::connect((host.as_str(), *port)),
                )
                .await
                .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)))
                .map_err(|e| self.connect_error(e))?;
                if let Err(e) = tcp.set_nodelay(true) {
                    debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let name = ServerName::try_from(host.clone())
                    .or_else(|_| ServerName::try_from("meshd".to_string()))
                    .map_err(|e| CliError::TlsHandshake {
                        host: self.host.to_string(),
                        source: io::Error::new(io::ErrorKind::InvalidInput, e),
                    })?;
                let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::TimedOut)))
                    .map_err(|source| CliError::TlsHandshake {
                        host: self.host.to_string(),
                        source,
                    })?;
                self.handshake(TokioIo::new(tls)).await
            }
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<SendRequest<Full<Bytes>>>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, connection) =
            hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|source| CliError::Http {
                    host: self.host.to_string(),
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection to meshd ended with an error");
            }
        });
        Ok(sender)
    }

    fn connect_error(&self, source: io::Error) -> CliError {
        debug!(error = %source, host = %self.host, "cannot connect");
        let host = self.host.to_string();
        if source.kind() == io::ErrorKind::PermissionDenied {
            CliError::PermissionDenied { host, source }
        } else {
            CliError::Connect { host, source }
        }
    }
}

/// Turns a non-2xx answer into the error the user sees.
fn daemon_error(status: hyper::StatusCode, body: &[u8]) -> CliError {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return CliError::Daemon {
            status: status.as_u16(),
            message: e.message,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        status.to_string()
    } else {
        let mut t: String = text.chars().take(1_000).collect();
        if t.len() < text.len() {
            t.push('…');
        }
        format!("{status}: {t}")
    };
    CliError::Daemon {
        status: status.as_u16(),
        message,
    }
}

/// Decodes a 2xx body; an empty body reads as JSON `null` (fine for `{}`-style answers).
fn decode<T: DeserializeOwned>(route: &str, body: &[u8]) -> Result<T> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| CliError::Decode {
        route: route.to_string(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_and_print() {
        let h: Host = "unix:///run/meshd/meshd.sock".parse().unwrap();
        assert_eq!(h, Host::Unix("/run/meshd/meshd.sock".into()));
        assert_eq!(h.to_string(), "unix:///run/meshd/meshd.sock");
        assert_eq!(Host::default(), h);
        assert_eq!(DEFAULT_HOST.parse::<Host>().unwrap(), h);
        let h: Host = "tcp://192.0.2.1:2376".parse().unwrap();
        assert_eq!(
            h,
            Host::Tcp {
                host: "192.0.2.1".into(),
                port: 2376
            }
        );
        assert_eq!(h.to_string(), "tcp://192.0.2.1:2376");
        let h: Host = "tcp://[2001:db8::1]:2376/".parse().unwrap();
        assert_eq!(
            h,
            Host::Tcp {
                host: "2001:db8::1".into(),
                port: 2376
            }
        );
        assert_eq!(h.to_string(), "tcp://[2001:db8::1]:2376");
        let h: Host = "tcp://manager-1:2376".parse().unwrap();
        assert_eq!(h.to_string(), "tcp://manager-1:2376");
        let h: Host = "tcp://manager-1".parse().unwrap();
        assert_eq!(h.to_string(), "tcp://manager-1:2376");
        let h: Host = "tcp://[::1]".parse().unwrap();
        assert_eq!(h.to_string(), "tcp://[::1]:2376");
    }

    #[test]
    fn bad_hosts_name_the_flag_and_the_fix() {
        for bad in [
            "",
            "/run/meshd.sock",
            "unix://relative.sock",
            "unix://",
            "http://x:1",
            "tcp://:2376",
            "tcp://host:",
            "tcp://[::1]x",
            "tcp://[]:1",
            "tcp://host:0",
            "tcp://host:99999",
            "tcp://2001:db8::1:2376",
            "tcp://[::1:2376",
        ] {
            let e = bad.parse::<Host>().unwrap_err();
            assert_eq!(e.field, "-H/--host", "{bad}");
            assert!(!e.fix.is_empty(), "{bad}");
        }
    }

    #[test]
    fn tls_files_resolve_from_flags_then_cert_path() {
        let tcp: Host = "tcp://h:1".parse().unwrap();
        let files = TlsFiles::resolve(
            &tcp,
            Some("/x/ca.pem".into()),
            None,
            None,
            Some(Path::new("/certs")),
        )
        .unwrap()
        .unwrap();
        assert_eq!(files.ca, PathBuf::from("/x/ca.pem"));
        assert_eq!(files.cert, PathBuf::from("/certs/node.crt"));
        assert_eq!(files.key, PathBuf::from("/certs/node.key"));

        let e = TlsFiles::resolve(&tcp, Some("/ca".into()), None, None, None).unwrap_err();
        assert!(
            matches!(e, CliError::MissingTls { missing, .. } if missing == "--tlscert"),
            "{e}"
        );
        let unix = Host::default();
        assert_eq!(
            TlsFiles::resolve(&unix, None, None, None, None).unwrap(),
            None
        );
    }

    #[test]
    fn tls_files_that_are_missing_or_not_pem_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            ca: dir.path().join("ca.crt"),
            cert: dir.path().join("node.crt"),
            key: dir.path().join("node.key"),
        };
        let e = files.client_config().unwrap_err();
        assert!(
            matches!(
                e,
                CliError::ReadFile {
                    flag: "--tlscacert",
                    ..
                }
            ),
            "{e}"
        );
        std::fs::write(&files.ca, "not a certificate").unwrap();
        let e = files.client_config().unwrap_err();
        assert!(
            matches!(
                e,
                CliError::BadPem {
                    flag: "--tlscacert",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("no certificate found"), "{e}");
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("abc-1.x_y~z"), "abc-1.x_y~z");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn error_bodies_become_daemon_errors() {
        let body = br#"{"kind":"not_found","message":"no such node: x"}"#;
        let e = daemon_error(hyper::StatusCode::NOT_FOUND, body);
        assert_eq!(e.to_string(), "Error response from daemon: no such node: x");
        let e = daemon_error(hyper::StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(
            e.to_string(),
            "Error response from daemon: 502 Bad Gateway: upstream down"
        );
        let e = daemon_error(hyper::StatusCode::INTERNAL_SERVER_ERROR, b"");
        assert_eq!(
            e.to_string(),
            "Error response from daemon: 500 Internal Server Error"
        );
    }

    #[test]
    fn empty_bodies_decode_as_null() {
        let _: serde::de::IgnoredAny = decode("/v1/x", b"").unwrap();
        let _: serde::de::IgnoredAny = decode("/v1/x", b"{}").unwrap();
        let e = decode::<mesh_api::api::Info>("/v1/info", b"[1]").unwrap_err();
        assert!(e.to_string().contains("/v1/info"), "{e}");
    }
}
