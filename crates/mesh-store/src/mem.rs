//! An in-process [`RaftTransport`] connecting stores in one process, for tests and labs.
//!
//! Members can be cut off to simulate a partition or a dead host: a cut member neither sends
//! nor receives, and a reply in flight when the cut happens is lost.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::MemberInfo;
use crate::RaftTransport;
use crate::RpcHandler;
use crate::TransportError;

#[derive(Default)]
struct MemState {
    handlers: HashMap<u64, Arc<dyn RpcHandler>>,
    cut: HashSet<u64>,
}

/// A switchboard routing RPCs between the members registered on it.
#[derive(Clone, Default)]
pub struct MemNetwork {
    state: Arc<Mutex<MemState>>,
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Route RPCs addressed to `id` to `handler` (replacing any previous one).
    pub fn register(&self, id: u64, handler: Arc<dyn RpcHandler>) {
        self.lock().handlers.insert(id, handler);
    }

    /// Stop routing to `id`, as if its host were gone.
    pub fn unregister(&self, id: u64) {
        self.lock().handlers.remove(&id);
    }

    /// Cut `id` off: it can neither send nor receive until [`MemNetwork::heal`].
    pub fn cut(&self, id: u64) {
        self.lock().cut.insert(id);
    }

    /// Reconnect a member cut off by [`MemNetwork::cut`].
    pub fn heal(&self, id: u64) {
        self.lock().cut.remove(&id);
    }

    /// Whether `id` is currently cut off.
    pub fn is_cut(&self, id: u64) -> bool {
        self.lock().cut.contains(&id)
    }

    /// The transport member `from` uses to reach the others.
    pub fn transport(&self, from: u64) -> Arc<dyn RaftTransport> {
        Arc::new(MemTransport {
            net: self.clone(),
            from,
        })
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
            let handler = net.route(from, target)?;
            let reply = tokio::time::timeout(timeout, handler.handle_rpc(payload))
                .await
                .map_err(|_| TransportError::Timeout {
                    target,
                    after: timeout,
                })?;
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
