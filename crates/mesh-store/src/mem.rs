//! An in-process [`RaftTransport`] connecting stores in one process, for tests and labs.
//!
//! Faults it can simulate:
//! - [`MemNetwork::cut`]: a partition that the sender notices at once (no route: the call
//!   fails as unreachable); a reply in flight when the cut happens is lost.
//! - [`MemNetwork::silence`]: a host that died without closing its connections, as a QUIC peer
//!   killed with SIGKILL: calls to or from it get no answer and hang until their timeout,
//!   replies it has not delivered yet are lost the same way.
//! - [`MemNetwork::hold_replies`]: a member handles the calls it receives but its replies are
//!   held back until released (or lost if it is silenced meanwhile).

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::MemberInfo;
use crate::RaftTransport;
use crate::RpcHandler;
use crate::TransportError;

#[derive(Default)]
struct MemState {
    handlers: HashMap<u64, Arc<dyn RpcHandler>>,
    cut: HashSet<u64>,
    silent: HashSet<u64>,
    held: HashSet<u64>,
}

/// A switchboard routing RPCs between the members registered on it.
#[derive(Clone)]
pub struct MemNetwork {
    state: Arc<Mutex<MemState>>,
    /// Bumped on every fault change, to wake calls waiting on one.
    changes: Arc<watch::Sender<u64>>,
}

impl Default for MemNetwork {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            changes: Arc::new(watch::channel(0).0),
        }
    }
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the fault state and wake the calls waiting on it.
    fn update(&self, f: impl FnOnce(&mut MemState)) {
        f(&mut self.lock());
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Route RPCs addressed to `id` to `handler` (replacing any previous one).
    pub fn register(&self, id: u64, handler: Arc<dyn RpcHandler>) {
        self.lock().handlers.insert(id, handler);
    }

    /// Stop routing to `id`, as if its host were gone and refused connections.
    pub fn unregister(&self, id: u64) {
        self.lock().handlers.remove(&id);
    }

    /// Cut `id` off: it can neither send nor receive until [`MemNetwork::heal`]; calls fail at
    /// once as unreachable.
    pub fn cut(&self, id: u64) {
        self.update(|st| {
            st.cut.insert(id);
        });
    }

    /// Make `id` silent, like a host that died without closing its connections: calls to or
    /// from it hang until their timeout and then fail with [`TransportError::Timeout`], and
    /// so do calls in flight whose reply it has not delivered yet. Undone by
    /// [`MemNetwork::heal`].
    pub fn silence(&self, id: u64) {
        self.update(|st| {
            st.silent.insert(id);
        });
    }

    /// Reconnect a member cut off by [`MemNetwork::cut`] or silenced by
    /// [`MemNetwork::silence`].
    pub fn heal(&self, id: u64) {
        self.update(|st| {
            st.cut.remove(&id);
            st.silent.remove(&id);
        });
    }

    /// Whether `id` is currently cut off.
    pub fn is_cut(&self, id: u64) -> bool {
        self.lock().cut.contains(&id)
    }

    /// Whether `id` is currently silenced.
    pub fn is_silent(&self, id: u64) -> bool {
        self.lock().silent.contains(&id)
    }

    /// Hold back the replies of `id`: calls to it are handled, but their replies wait until
    /// [`MemNetwork::release_replies`] (or their timeout, or are lost if `id` is silenced).
    pub fn hold_replies(&self, id: u64) {
        self.update(|st| {
            st.held.insert(id);
        });
    }

    /// Deliver the replies of `id` again, those held back included.
    pub fn release_replies(&self, id: u64) {
        self.update(|st| {
            st.held.remove(&id);
        });
    }

    /// The transport member `from` uses to reach the others.
    pub fn transport(&self, from: u64) -> Arc<dyn RaftTransport> {
        Arc::new(MemTransport {
            net: self.clone(),
            from,
        })
    }

    fn silent_link(&self, from: u64, target: u64) -> bool {
        let st = self.lock();
        st.silent.contains(&from) || st.silent.contains(&target)
    }

    fn route(&self, from: u64, target: u64) -> Result<Arc<dyn RpcHandler>, TransportError> {
        let st = self.lock();
        if st.cut.contains(&from) || st.cut.contains(&target) {
            return Err(TransportError::Unreachable {
                target,
                reason: format!("link {from} -> {target} is cut"),
            });
        }
        st.handlers
            .get(&target)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable {
                target,
                reason: "no such member on the network".to_string(),
            })
    }
}

struct MemTransport {
    net: MemNetwork,
    from: u64,
}

impl RaftTransport for MemTransport {
    fn call(
        &self,
        target: u64,
        _member: &MemberInfo,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let net = self.net.clone();
        let from = self.from;
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let timed_out = TransportError::Timeout {
                target,
                after: timeout,
            };
            // Subscribed before looking, so that no fault change is missed.
            let mut changes = net.changes.subscribe();
            if net.silent_link(from, target) {
                tokio::time::sleep_until(deadline).await;
                return Err(timed_out);
            }
            let handler = net.route(from, target)?;
            let reply = tokio::time::timeout_at(deadline, handler.handle_rpc(payload))
                .await
                .map_err(|_| timed_out.clone())?;
            loop {
                // A reply not delivered before its sender went silent never arrives.
                if net.silent_link(from, target) {
                    tokio::time::sleep_until(deadline).await;
                    return Err(timed_out);
                }
                if !net.lock().held.contains(&target) {
                    break;
                }
                tokio::select! {
                    r = changes.changed() => {
                        if r.is_err() {
                            tokio::time::sleep_until(deadline).await;
                            return Err(timed_out);
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => return Err(timed_out),
                }
            }
            // A link cut while the call was in flight loses the reply.
            if let Err(e) = net.route(from, target) {
                return Err(TransportError::Other {
                    target,
                    reason: format!("reply lost: {e}"),
                });
            }
            Ok(reply)
        })
    }
}
