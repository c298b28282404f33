//! The node agent's session with the managers: heartbeats, certificate renewal and
//! role changes. Runs on every active node, managers included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::NodeRole;
use mesh_manager::manager::now_ms;
use mesh_manager::rpc::{self, Heartbeat, HeartbeatResponse, RenewRequest, RenewResponse, codes};
use mesh_pki::{NodeCredentials, NodeKey};
use mesh_transport::CallError;
use tracing::{debug, info, warn};

use crate::daemon::{Active, Daemon};

/// Runs the session until the node leaves or the daemon stops.
pub async fn run(daemon: Arc<Daemon>, active: Arc<Active>) {
    let mut stop = active.stop_signal();
    let mut period = Duration::from_millis(mesh_api::cluster::DEFAULT_HEARTBEAT_PERIOD_MS);
    let mut leader_hint: Option<String> = None;
    loop {
        // Heartbeats start every period (not a period after the last one ended), so a
        // slow answer does not stretch the gap the leader sees.
        let started = tokio::time::Instant::now();
        match heartbeat(&daemon, &active, &mut leader_hint, period).await {
            Ok(resp) => {
                period = Duration::from_millis(resp.heartbeat_period_ms.clamp(50, 60_000));
                if let Err(e) = follow(&daemon, &active, &resp).await {
                    warn!(
                        error = format!("{e:#}"),
                        "could not apply the managers' answer"
                    );
                }
                daemon.set_error("");
            }
            Err(e) => {
                debug!(error = %e, "heartbeat failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + period) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
    }
    debug!("node session ended");
}

async fn heartbeat(
    daemon: &Daemon,
    active: &Active,
    leader_hint: &mut Option<String>,
    period: Duration,
) -> anyhow::Result<HeartbeatResponse> {
    let st = active.local_state();
    let creds = active.credentials();
    let expiry = mesh_pki::parse_node_cert(&creds.cert_pem)
        .map(|i| i.not_after_ms)
        .unwrap_or(0);
    let port = st
        .listen_addr
        .parse::<SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(mesh_api::api::DEFAULT_CONTROL_PORT);
    let body = serde_json::to_vec(&Heartbeat {
        description: crate::daemon::description(daemon.config()),
        addr: st.advertise_addr.clone(),
        control_addr: format!("{}:{port}", st.advertise_addr),
        data_port: daemon.config().data_port,
        raft_id: st.raft_id,
        cert_expiry: expiry,
        network_keys: active.net().public_keys(),
    })?;
    let mut targets: Vec<String> = leader_hint.iter().cloned().collect();
    targets.extend(st.managers.iter().cloned());
    targets.dedup();
    let timeout = (period * 2).clamp(Duration::from_millis(300), Duration::from_secs(2));
    let mut last_err = anyhow::anyhow!("no manager address known");
    for target in targets {
        let Ok(addr) = target.parse::<SocketAddr>() else {
            continue;
        };
        match active
            .transport()
            .call(addr, rpc::HEARTBEAT, body.clone(), timeout)
            .await
        {
            Ok(reply) => {
                let resp: HeartbeatResponse = serde_json::from_slice(&reply)?;
                *leader_hint = Some(target);
                return Ok(resp);
            }
            Err(CallError::Remote(r)) if r.code == codes::NOT_LEADER => {
                if !r.message.is_empty() && r.message != target {
                    // Try the leader right away.
                    if let Ok(la) = r.message.parse::<SocketAddr>()
                        && let Ok(reply) = active
                            .transport()
                            .call(la, rpc::HEARTBEAT, body.clone(), timeout)
                            .await
                    {
                        let resp: HeartbeatResponse = serde_json::from_slice(&reply)?;
                        *leader_hint = Some(r.message);
                        return Ok(resp);
                    }
                }
                last_err = anyhow::anyhow!("{target} is not the leader");
            }
            Err(CallError::Remote(r)) if r.code == codes::REMOVED => {
                daemon.set_error(format!(
                    "this node was removed from the cluster: {}; run `swarm leave --force` and join again",
                    r.message
                ));
                return Err(anyhow::anyhow!("removed: {}", r.message));
            }
            Err(e) => last_err = anyhow::anyhow!("{target}: {e}"),
        }
    }
    *leader_hint = None;
    Err(last_err)
}

/// Acts on the managers' answer: remember managers, renew the certificate when the
/// desired role changed or it ages, start or stop the local manager plane.
async fn follow(
    daemon: &Daemon,
    active: &Arc<Active>,
    resp: &HeartbeatResponse,
) -> anyhow::Result<()> {
    if resp.network_version != active.net().applied_version() && active.net().begin_sync() {
        // In the background: plumbing must not delay heartbeats.
        let a = Arc::clone(active);
        tokio::spawn(async move {
            if let Err(e) = a.sync_network().await {
                warn!(
                    error = format!("{e:#}"),
                    "could not bring the overlay in line; will retry"
                );
                a.net().invalidate();
            }
            a.net().end_sync();
        });
    }
    if !resp.managers.is_empty() {
        let st = active.local_state();
        if st.managers != resp.managers {
            let st = active.update_local(|s| s.managers = resp.managers.clone());
            daemon.data_dir().save_state(&st)?;
        }
    }
    let creds = active.credentials();
    let ident = mesh_pki::parse_node_cert(&creds.cert_pem)?;
    let want = resp.desired_role;
    let renew_for_role = match (ident.role, want) {
        (NodeRole::Worker, NodeRole::Manager) => true,
        // A demoted manager renews as a worker only once it has left Raft.
        (NodeRole::Manager, NodeRole::Worker) => !resp.raft_member,
        _ => false,
    };
    let aging = mesh_pki::should_renew(ident.not_before_ms, ident.not_after_ms, now_ms());
    if renew_for_role || aging {
        let role = renew(daemon, active, &creds).await?;
        info!(%role, "renewed the node certificate");
        let st = active.update_local(|s| s.role = role);
        daemon.data_dir().save_state(&st)?;
    }
    let ident = mesh_pki::parse_node_cert(&active.credentials().cert_pem)?;
    match ident.role {
        NodeRole::Manager => {
            if active.current_manager().is_none() {
                info!("this node is now a manager: starting the manager plane");
                daemon.start_manager(active).await?;
            }
        }
        NodeRole::Worker => {
            if active.current_manager().is_some() && !resp.raft_member {
                info!("this node is no longer a manager: stopping the manager plane");
                daemon.stop_manager(active, true).await;
            }
        }
    }
    Ok(())
}

async fn renew(
    daemon: &Daemon,
    active: &Active,
    creds: &NodeCredentials,
) -> anyhow::Result<NodeRole> {
    let key = NodeKey::generate()?;
    let body = serde_json::to_vec(&RenewRequest {
        csr_pem: key.csr_pem()?,
    })?;
    let st = active.local_state();
    let mut last = anyhow::anyhow!("no manager address known");
    for target in &st.managers {
        let Ok(addr) = target.parse::<SocketAddr>() else {
            continue;
        };
        match active
            .transport()
            .call(addr, rpc::RENEW, body.clone(), Duration::from_secs(5))
            .await
        {
            Ok(reply) => {
                let r: RenewResponse = serde_json::from_slice(&reply)?;
                mesh_pki::verify_signed_by(&r.cert_pem, &creds.ca_cert_pem)?;
                let next = NodeCredentials {
                    ca_cert_pem: creds.ca_cert_pem.clone(),
                    cert_pem: r.cert_pem,
                    key_pem: key.key_pem(),
                };
                next.save(&daemon.data_dir().certs())?;
                active.set_credentials(next)?;
                return Ok(r.role);
            }
            Err(e) => last = anyhow::anyhow!("{target}: {e}"),
        }
    }
    Err(last)
}
