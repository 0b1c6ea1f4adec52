//! Acknowledged changes: a change of definitions or aliases is answered once
//! every live member gossips the registry digest this node has — the change
//! has reached them all — as Elasticsearch answers `acknowledged` once every
//! node has applied a cluster-state change. The change is pushed to every
//! live member at once (not left to gossip): a node that dies right after
//! taking a change has already handed it on, so the change does not wait
//! for its return to appear.

use std::time::Duration;

use tokio::time::Instant;

use super::Membership;
use crate::local::Local;

/// How long a push of the registry to one member may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(2);

impl Membership {
    /// Sends this node's registry to every live member
    /// (`POST /v1/internal/registry`, merged there as a pulled one would
    /// be), all at once; returns how many took it.
    pub async fn push_registry(&self, node: &Local) -> usize {
        let Ok(registry) = node.registry() else {
            return 0;
        };
        let members = self.members().await;
        let pushes = members
            .iter()
            .filter(|m| m.live && !m.is_self && !m.leaving)
            .filter_map(|m| m.node.as_ref().map(|info| (m.id.clone(), info.url())))
            .map(|(id, url)| {
                let mut request = self
                    .http_client()
                    .post(format!("{url}/v1/internal/registry"))
                    .timeout(PUSH_TIMEOUT)
                    .json(&registry);
                if let Some(secret) = node.config().auth.peer_secret() {
                    request = request.bearer_auth(secret);
                }
                async move {
                    match request.send().await {
                        Ok(answer) if answer.status().is_success() => true,
                        Ok(answer) => {
                            tracing::debug!(member = %id, status = %answer.status(), "registry push refused");
                            false
                        }
                        Err(e) => {
                            tracing::debug!(member = %id, error = %e, "registry push failed");
                            false
                        }
                    }
                }
            });
        futures::future::join_all(pushes)
            .await
            .into_iter()
            .filter(|taken| *taken)
            .count()
    }

    /// Waits, at most `timeout`, until every live member has this node's
    /// registry. Returns whether they all have it.
    pub async fn await_registry_agreement(&self, node: &Local, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let poll = (node.config().cluster.gossip_interval() / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        loop {
            let Ok(registry) = node.registry() else {
                return false;
            };
            let own = registry.digest().hash;
            let members = self.members().await;
            let agreed = members
                .iter()
                .filter(|m| m.live && !m.is_self)
                .all(|m| m.registry.as_ref().is_some_and(|r| r.hash == own));
            if agreed {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(poll).await;
        }
    }
}
