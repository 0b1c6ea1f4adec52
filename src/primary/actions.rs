//! The primary's destructive work, and the checks a node makes before obeying.
//!
//! Before trashing an extra copy the primary asks the members whose copies make
//! it extra, over HTTP (not gossip), for their inventories, and goes on only if
//! each still holds a ready copy. It then asks the holder of the extra copy to
//! trash it (`POST /v1/internal/trash`). The holder refuses a term older than
//! one it knows, a sender that is not the primary it sees, and a trash that
//! would leave fewer ready copies elsewhere than placement wants in its own view
//! (`check_trash`, pure).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Primary, Role};
use crate::cluster::Membership;
use crate::local::Local;
use crate::placement::HeldState;
use crate::placement::inventory::Inventory;
use crate::placement::plan::{Action, ClusterState, Layout};

/// The body of `POST /v1/internal/trash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrashRequest {
    pub database: String,
    pub shard: String,
    /// The primary asking, and its term.
    pub primary: String,
    pub term: u64,
}

/// Why a node keeps a copy the primary asked it to trash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("term {request} is stale: this node knows term {known}")]
    StaleTerm { request: u64, known: u64 },
    #[error("{sender} is not the primary this node sees ({seen})")]
    NotPrimary { sender: String, seen: String },
    #[error("database {0:?} is not defined here")]
    UnknownDatabase(String),
    #[error("placement puts {0} on this node in its own view")]
    PlacedHere(String),
    #[error("{shard} has {ready} ready copies elsewhere in this node's view, {wanted} wanted")]
    TooFewCopies {
        shard: String,
        ready: usize,
        wanted: usize,
    },
}

/// Whether the node `self_id` may trash its copy as `request` asks, given its
/// own view: the highest term it knows, the primary it sees, and the cluster.
pub fn check_trash(
    request: &TrashRequest,
    self_id: &str,
    known_term: u64,
    seen: Option<&Primary>,
    layout: Option<&Layout>,
    state: &ClusterState,
) -> Result<(), Refusal> {
    if request.term < known_term {
        return Err(Refusal::StaleTerm {
            request: request.term,
            known: known_term,
        });
    }
    match seen {
        Some(primary) if primary.id == request.primary => {}
        Some(primary) if request.term > primary.term => {}
        other => {
            return Err(Refusal::NotPrimary {
                sender: request.primary.clone(),
                seen: other.map_or("none".to_string(), |p| {
                    format!("{} in term {}", p.id, p.term)
                }),
            });
        }
    }
    let Some(layout) = layout else {
        return Err(Refusal::UnknownDatabase(request.database.clone()));
    };
    let shard = format!("{}/{}", request.database, request.shard);
    let shards: Vec<&str> = layout.shards.iter().map(|(s, _)| s.as_str()).collect();
    let chosen = state.chosen_for(&layout.name, &shards, layout.replicas, &request.shard);
    if chosen.iter().any(|c| c == self_id) {
        return Err(Refusal::PlacedHere(shard));
    }
    let ready = state
        .copies(&request.database, &request.shard)
        .filter(|(node, s)| *node != self_id && state.live.contains(*node) && s.is_serving())
        .count();
    let wanted = chosen.len().max(1);
    if ready < wanted {
        return Err(Refusal::TooFewCopies {
            shard,
            ready,
            wanted,
        });
    }
    Ok(())
}

/// Trashes extra copies, at most `limit`, each after checking over HTTP that the
/// copies making it extra are ready. `http` maps member ids to HTTP addresses.
/// Returns how many copies were trashed.
pub(crate) async fn trash_extra_copies(
    role: &Role,
    node: &Local,
    membership: &Membership,
    primary: &Primary,
    trashes: &[Action],
    limit: usize,
) -> usize {
    let client = membership.pull_client();
    let http = &membership.http_addresses().await;
    let mut inventories: HashMap<String, Option<Inventory>> = HashMap::new();
    let mut trashed = 0;
    for action in trashes.iter().take(limit) {
        let mut confirmed = !action.ready_on.is_empty();
        for holder in &action.ready_on {
            if !inventories.contains_key(holder) {
                let inventory = fetch_inventory(node, client, http, holder).await;
                inventories.insert(holder.clone(), inventory);
            }
            let ready = inventories[holder]
                .as_ref()
                .and_then(|i| i.databases.get(&action.database))
                .and_then(|d| d.shards.get(&action.shard))
                .is_some_and(|p| p.state == HeldState::Ready || p.state == HeldState::Lazy);
            confirmed &= ready;
        }
        if !confirmed {
            info!(database = %action.database, shard = %action.shard, node = %action.node,
                "extra copy kept: its replacements are not all ready when asked");
            continue;
        }
        let request = TrashRequest {
            database: action.database.clone(),
            shard: action.shard.clone(),
            primary: primary.id.clone(),
            term: primary.term,
        };
        let result = if action.node == node.id() {
            role.trash(node, membership, &request)
                .await
                .map_err(|e| e.to_string())
        } else {
            post_trash(node, client, http, &action.node, &request).await
        };
        match result {
            Ok(()) => {
                trashed += 1;
                info!(database = %action.database, shard = %action.shard, node = %action.node,
                    reason = %action.reason, "primary trashed an extra copy");
            }
            Err(e) => {
                warn!(database = %action.database, shard = %action.shard, node = %action.node,
                    error = %e, "extra copy not trashed")
            }
        }
    }
    trashed
}

async fn fetch_inventory(
    node: &Local,
    client: &reqwest::Client,
    http: &HashMap<String, String>,
    member: &str,
) -> Option<Inventory> {
    if member == node.id() {
        return node.inventory().ok();
    }
    let address = http.get(member)?;
    let url = crate::net::base_url(address);
    let mut request = client.get(format!("{url}/v1/internal/inventory"));
    if let Some(secret) = node.config().auth.peer_secret() {
        request = request.bearer_auth(secret);
    }
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

async fn post_trash(
    node: &Local,
    client: &reqwest::Client,
    http: &HashMap<String, String>,
    member: &str,
    body: &TrashRequest,
) -> Result<(), String> {
    let address = http
        .get(member)
        .ok_or_else(|| format!("no HTTP address known for {member}"))?;
    let url = crate::net::base_url(address);
    let mut request = client.post(format!("{url}/v1/internal/trash")).json(body);
    if let Some(secret) = node.config().auth.peer_secret() {
        request = request.bearer_auth(secret);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    Err(format!("HTTP {status}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Replicas;

    fn state(ready_on: &[&str]) -> ClusterState {
        let mut cluster = crate::placement::plan::fixtures::cluster(&["a", "b", "c"]);
        for id in ready_on {
            cluster.set_state(id, "db", "0", HeldState::Ready);
        }
        cluster
    }

    #[test]
    fn a_holder_refuses_stale_terms_strangers_and_too_few_copies() {
        let full = state(&["a", "b", "c"]);
        let layout = Layout {
            name: "db".into(),
            replicas: Replicas::Count(2),
            shards: vec![("0".into(), 100)],
            global_bytes: 0,
        };
        let chosen = full.placement(&layout).swap_remove(0);
        let extra = ["a", "b", "c"]
            .into_iter()
            .find(|id| !chosen.iter().any(|c| c == id))
            .unwrap();
        let primary = Primary {
            id: "a".into(),
            term: 3,
        };
        let request = TrashRequest {
            database: "db".into(),
            shard: "0".into(),
            primary: "a".into(),
            term: 3,
        };
        let check = |request: &TrashRequest, me: &str, state: &ClusterState| {
            check_trash(request, me, 3, Some(&primary), Some(&layout), state)
        };
        assert_eq!(check(&request, extra, &full), Ok(()));
        let stale = TrashRequest {
            term: 2,
            ..request.clone()
        };
        assert!(matches!(
            check(&stale, extra, &full),
            Err(Refusal::StaleTerm { .. })
        ));
        let stranger = TrashRequest {
            primary: "b".into(),
            ..request.clone()
        };
        assert!(matches!(
            check(&stranger, extra, &full),
            Err(Refusal::NotPrimary { .. })
        ));
        assert!(matches!(
            check(&request, &chosen[0], &full),
            Err(Refusal::PlacedHere(_))
        ));
        // One chosen copy is not ready in this holder's view.
        let short = state(&[extra, &chosen[0]]);
        assert!(matches!(
            check(&request, extra, &short),
            Err(Refusal::TooFewCopies {
                ready: 1,
                wanted: 2,
                ..
            })
        ));
        // A node that sees no primary (a minority side) refuses everything.
        assert!(matches!(
            check_trash(&request, extra, 3, None, Some(&layout), &full),
            Err(Refusal::NotPrimary { .. })
        ));
        assert!(matches!(
            check_trash(&request, extra, 3, Some(&primary), None, &full),
            Err(Refusal::UnknownDatabase(_))
        ));
    }
}
