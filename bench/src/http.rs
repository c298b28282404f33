//! A small HTTP/1.1 client over a unix socket (meshd's API) or TCP (etcd's JSON gateway):
//! one keep-alive connection per [`Conn`], requests one at a time.
//!
//! Sockets belong to the network namespace of the thread that creates them: run the
//! futures of this module inside [`crate::netns`] to reach a lab host's address.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpStream, UnixStream};

use crate::BenchError;

/// Largest answer body read.
const MAX_BODY: usize = 16 << 20;
/// How much of a body an error message shows.
const ERROR_BODY_CHARS: usize = 300;

/// Where an HTTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket (meshd's API).
    Unix(PathBuf),
    /// A TCP address (etcd's client URL).
    Tcp(SocketAddr),
}

impl Endpoint {
    /// The `Host` header sent to this endpoint.
    fn host_header(&self) -> String {
        match self {
            Endpoint::Unix(_) => "localhost".to_owned(),
            Endpoint::Tcp(addr) => addr.to_string(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

/// One keep-alive connection.
pub struct Conn {
    endpoint: Endpoint,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Connects to `endpoint` (within `timeout`) and does the HTTP/1.1 handshake.
    pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Conn, BenchError> {
        let connect_err = |reason: String| BenchError::Connect {
            target: endpoint.to_string(),
            reason,
        };
        let connecting = async {
            match endpoint {
                Endpoint::Unix(path) => {
                    let s = UnixStream::connect(path)
                        .await
                        .map_err(|e| connect_err(e.to_string()))?;
                    handshake(endpoint, TokioIo::new(s)).await
                }
                Endpoint::Tcp(addr) => {
                    let s = TcpStream::connect(addr)
                        .await
                        .map_err(|e| connect_err(e.to_string()))?;
                    // Small requests: send each at once, as every HTTP client does.
                    s.set_nodelay(true)
                        .map_err(|e| connect_err(format!("TCP_NODELAY: {e}")))?;
                    handshake(endpoint, TokioIo::new(s)).await
                }
            }
        };
        match tokio::time::timeout(timeout, connecting).await {
            Ok(r) => r,
            Err(_) => Err(connect_err(format!("no connection within {timeout:?}"))),
        }
    }

    /// Sends one request and reads the whole answer: its status and body.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes), BenchError> {
        let target = || format!("{}{path}", self.endpoint);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.endpoint.host_header())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| BenchError::Http {
                target: target(),
                reason: format!("cannot build the request: {e}"),
            })?;
        self.sender.ready().await.map_err(|e| BenchError::Http {
            target: target(),
            reason: e.to_string(),
        })?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| BenchError::Http {
                target: target(),
                reason: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| BenchError::Http {
                target: target(),
                reason: format!("cannot read the answer: {e}"),
            })?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Sends one request with a JSON body (or none) and decodes a 2xx JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, BenchError> {
        let target_text = format!("{}{path}", self.endpoint);
        let target = || target_text.clone();
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| BenchError::Http {
                target: target(),
                reason: format!("cannot encode the request: {e}"),
            })?),
            None => Bytes::new(),
        };
        let (status, answer) = self.call(method, path, bytes).await?;
        if !(200..300).contains(&status) {
            return Err(BenchError::Status {
                target: target(),
                status,
                body: shorten(&answer),
            });
        }
        serde_json::from_slice(&answer).map_err(|source| BenchError::Decode {
            target: target(),
            source,
            body: shorten(&answer),
        })
    }
}

/// One request on a fresh connection, the whole bounded by `timeout`.
pub async fn request_json<T: DeserializeOwned>(
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    body: Option<&(impl Serialize + ?Sized)>,
    timeout: Duration,
) -> Result<T, BenchError> {
    let exchange = async {
        let mut conn = Conn::connect(endpoint, timeout).await?;
        conn.json(method, path, body).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(BenchError::timeout(
            format!("{path} on {endpoint}"),
            timeout,
        )),
    }
}

async fn handshake<T>(endpoint: &Endpoint, io: T) -> Result<Conn, BenchError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| BenchError::Connect {
            target: endpoint.to_string(),
            reason: format!("HTTP handshake: {e}"),
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::trace!(error = %e, "connection ended with an error");
        }
    });
    Ok(Conn {
        endpoint: endpoint.clone(),
        sender,
    })
}

/// The start of a body, for error messages.
pub fn shorten(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(ERROR_BODY_CHARS).collect();
    if text.chars().count() > ERROR_BODY_CHARS {
        out.push('…');
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_display_and_host_headers() {
        let u = Endpoint::Unix(PathBuf::from("/tmp/x.sock"));
        assert_eq!(u.to_string(), "unix:///tmp/x.sock");
        assert_eq!(u.host_header(), "localhost");
        let t = Endpoint::Tcp("192.0.2.1:2379".parse().unwrap());
        assert_eq!(t.to_string(), "http://192.0.2.1:2379");
        assert_eq!(t.host_header(), "192.0.2.1:2379");
    }

    #[test]
    fn long_bodies_are_shortened() {
        let long = "x".repeat(1000);
        let s = shorten(long.as_bytes());
        assert_eq!(s.chars().count(), ERROR_BODY_CHARS + 1);
        assert!(s.ends_with('…'));
        assert_eq!(shorten(b" ok \n"), "ok");
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_naming_it() {
        let dir = std::env::temp_dir().join("mesh-bench-no-such-dir");
        let ep = Endpoint::Unix(dir.join("none.sock"));
        let err = Conn::connect(&ep, Duration::from_secs(1))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("none.sock"), "{err}");
    }
}
