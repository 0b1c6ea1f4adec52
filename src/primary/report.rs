//! What a member answers about the primary's work, from its own view:
//! `GET /v1/plan` (what placement and the rebalancer would do now),
//! `GET /v1/plan?database=D&replicas=K`, `GET /v1/gc`, and, as a holder,
//! `POST /v1/internal/trash` (it trashes its copy only if its view agrees).

use serde::{Deserialize, Serialize};

use super::Role;
use super::actions::{TrashRequest, check_trash};
use super::gc::{Eligible, eligible};
use super::round::usage;
use crate::cluster::{Member, Membership, PrimaryStatus};
use crate::local::{Inventory, Local, NodeError};
use crate::placement::plan::{NodeUse, Plan, plan, what_if};
use crate::placement::rebalance::{Move, rebalance};
use crate::registry::Registry;

/// `GET /v1/plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanReport {
    /// The node that computed it, from its own view.
    pub node: String,
    pub primary: Option<PrimaryStatus>,
    #[serde(flatten)]
    pub plan: Plan,
    /// What the rebalancer would move next (only once nothing else is under way).
    pub moves: Vec<Move>,
}

/// `GET /v1/gc`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcReport {
    /// The node that computed it, from its own view.
    pub node: String,
    pub primary: Option<PrimaryStatus>,
    /// Whether a disk past its high watermark makes the primary collect now.
    pub triggered: bool,
    /// Disks past their high watermark, as `node/disk`.
    pub full_disks: Vec<String>,
    /// Databases no alias points to and not marked `keep`, least recently read
    /// first: the order garbage collection deletes them in.
    pub eligible: Vec<Eligible>,
    /// This node's trash (soonest purged first) and lazy cache (in eviction
    /// order); filled by `gc_report`, not by the primary's rounds.
    #[serde(default)]
    pub trash: Vec<crate::local::index::TrashItem>,
    #[serde(default)]
    pub cache: Vec<crate::local::index::CacheItem>,
}

/// `GET /v1/plan?database=D&replicas=K`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhatIf {
    pub database: String,
    pub replicas_now: crate::catalog::Replicas,
    pub replicas: crate::catalog::Replicas,
    pub nodes: Vec<NodeUse>,
}

impl Role {
    /// `GET /v1/gc`: the databases garbage collection may delete, in order, and
    /// whether a full disk makes it run now.
    pub async fn gc_report(
        &self,
        node: &Local,
        membership: &Membership,
    ) -> Result<GcReport, NodeError> {
        let members = membership.members().await;
        let inventories = membership.live_inventories(node, &members)?;
        let mut report = gc_report_of(
            self,
            &node.registry()?,
            node.config().cluster.gc_min_age_secs * 1000,
            membership.node_id(),
            &members,
            &inventories,
        );
        let removals = node.removals()?;
        report.trash = removals.trash;
        report.cache = removals.cache;
        Ok(report)
    }

    /// `POST /v1/internal/trash`: trashes this node's copy if its own view
    /// agrees (see `check_trash`); a refusal is a conflict naming the reason.
    pub async fn trash(
        &self,
        node: &Local,
        membership: &Membership,
        request: &TrashRequest,
    ) -> Result<(), NodeError> {
        let state = membership.current_state(node).await?;
        let (known_term, seen) = self.standing();
        let layout = node
            .layouts()?
            .into_iter()
            .find(|l| l.name == request.database);
        check_trash(
            request,
            node.id(),
            known_term,
            seen.as_ref(),
            layout.as_ref(),
            &state,
        )
        .map_err(|refusal| NodeError::Conflict(refusal.to_string()))?;
        node.trash_shard(&request.database, &request.shard)?;
        Ok(())
    }

    /// `GET /v1/plan`: what placement would do now, from this node's view.
    pub async fn plan(
        &self,
        node: &Local,
        membership: &Membership,
    ) -> Result<PlanReport, NodeError> {
        let state = membership.current_state(node).await?;
        let layouts = node.layouts()?;
        let planned = plan(&layouts, &state);
        let settled = planned.downloads.is_empty()
            && planned.trashes.is_empty()
            && planned.waiting.is_empty();
        let moves = if settled {
            let cluster = &node.config().cluster;
            let members = membership.members().await;
            let inventories = membership.live_inventories(node, &members)?;
            rebalance(
                &layouts,
                &state,
                &usage(&members, &inventories),
                cluster.max_concurrent_moves,
                cluster.rebalance_threshold,
            )
        } else {
            Vec::new()
        };
        Ok(PlanReport {
            node: membership.node_id().to_string(),
            primary: self.status(),
            plan: planned,
            moves,
        })
    }
}

/// `GET /v1/plan?database=D&replicas=K`: bytes of D per node now and with K.
pub async fn what_if_replicas(
    node: &Local,
    membership: &Membership,
    database: &str,
    replicas: crate::catalog::Replicas,
) -> Result<WhatIf, NodeError> {
    let state = membership.current_state(node).await?;
    let layout = node
        .layouts()?
        .into_iter()
        .find(|l| l.name == database)
        .ok_or_else(|| NodeError::not_found("database", database))?;
    Ok(WhatIf {
        database: database.to_string(),
        replicas_now: layout.replicas,
        replicas,
        nodes: what_if(&layout, &state, replicas),
    })
}

/// The garbage collection report of one view of the cluster (this node's
/// trash and cache left out), as of the role's clock: databases defined
/// less than `min_age_ms` ago are not eligible yet.
pub(super) fn gc_report_of(
    role: &Role,
    registry: &Registry,
    min_age_ms: u64,
    node_id: &str,
    members: &[Member],
    inventories: &[Inventory],
) -> GcReport {
    let full_disks: Vec<String> = members
        .iter()
        .filter(|m| m.live)
        .flat_map(|m| {
            m.disks
                .iter()
                .filter(|(_, d)| d.full)
                .map(move |(id, _)| format!("{}/{id}", m.id))
        })
        .collect();
    GcReport {
        node: node_id.to_string(),
        primary: role.status(),
        triggered: !full_disks.is_empty(),
        full_disks,
        eligible: eligible(registry, inventories, role.now_ms(), min_age_ms),
        trash: Vec::new(),
        cache: Vec::new(),
    }
}
