//! The control API over TCP with mutual TLS (`--remote-api-addr`).
//!
//! The server presents this node's certificate; a client must present a certificate of
//! this cluster's CA with the manager role (e.g. a copy of a manager's `certs/`).
//! Anything else is refused during or right after the handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use mesh_api::NodeRole;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::daemon::Daemon;

/// Serves `router` on `addr` until `stop` turns true.
pub async fn serve(
    d: Arc<Daemon>,
    addr: SocketAddr,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on --remote-api-addr {addr}"))?;
    info!(%addr, "remote API (mutual TLS) listening");
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "remote API accept failed");
                    continue;
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        let d = Arc::clone(&d);
        let router = router.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(d, tcp, router).await {
                debug!(%peer, error = format!("{e:#}"), "remote API connection refused or failed");
            }
        });
    }
}

async fn connection(
    d: Arc<Daemon>,
    tcp: tokio::net::TcpStream,
    router: Router,
) -> anyhow::Result<()> {
    let Some(identity) = d.identity() else {
        anyhow::bail!("this node is not part of a cluster: no certificate to serve with");
    };
    let config = mesh_transport::api_server_config(&identity)?;
    let tls = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_rustls::TlsAcceptor::from(config).accept(tcp),
    )
    .await
    .context("TLS handshake timed out")?
    .context("TLS handshake")?;
    let (_, conn) = tls.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no client certificate")?;
    let peer = mesh_pki::parse_node_cert_der(cert.as_ref())?;
    if peer.role != NodeRole::Manager || Some(peer.cluster_id.as_str()) != d.cluster_id().as_deref()
    {
        anyhow::bail!(
            "client certificate of node {} ({}) is not a manager certificate of this cluster",
            peer.node_id,
            peer.role
        );
    }
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
        .await
        .context("serving HTTP")?;
    Ok(())
}
