//! The primary's round: once this member is the settled primary, after it
//! has placed its own shards, it backs the registry up, trashes extra copies
//! (each verified first, see `actions`), evens out disk use a few moves at a
//! time, and, while a disk is past its high watermark, deletes the coldest
//! unaliased database.

use tracing::info;

use super::Role;
use super::actions::trash_extra_copies;
use super::report::gc_report_of;
use crate::cluster::{Member, Membership, Peer, Round};
use crate::local::{Inventory, Local, NodeError};
use crate::placement::plan::plan;
use crate::placement::rebalance::{Usage, rebalance};
use crate::sync::lock;

impl Role {
    /// The primary's part of a round in which this member placed (`round`
    /// is what that round read); nothing unless it is the settled primary.
    pub(crate) async fn act(
        &self,
        node: &Local,
        membership: &Membership,
        peers: &[Peer],
        round: &Round,
    ) -> Result<(), NodeError> {
        let cluster = &node.config().cluster;
        if !self.may_act(cluster.primary_settle_secs * 1000) {
            return Ok(());
        }
        let Some(primary) = self.own_primacy() else {
            return Ok(());
        };
        // Backups (cluster/backup): restore into an empty cluster, back up changes; never waits.
        let registries: Vec<Option<usize>> = peers
            .iter()
            .map(|p| p.registry.as_ref().map(|r| r.entries))
            .collect();
        membership.backups.on_primary_round(node, &registries);
        let layouts = node.layouts()?;
        let state = &round.state;
        let planned = plan(&layouts, state);
        if planned.downloads.is_empty() && planned.trashes.is_empty() && planned.waiting.is_empty()
        {
            // Settled: even out disk use, a few moves at a time.
            let moves = rebalance(
                &layouts,
                state,
                &usage(&round.members, &round.inventories),
                cluster.max_concurrent_moves,
                cluster.rebalance_threshold,
            );
            if !moves.is_empty() {
                let pins: Vec<(String, Vec<String>)> =
                    moves.iter().map(|m| (m.key(), m.nodes.clone())).collect();
                node.pin_shards(&pins)?;
                for m in &moves {
                    info!(database = %m.database, shard = %m.shard, from = %m.from, to = %m.to,
                        reason = %m.reason, "rebalancer moves a copy");
                }
            }
        }
        if !planned.trashes.is_empty() {
            trash_extra_copies(
                self,
                node,
                membership,
                &primary,
                &planned.trashes,
                cluster.max_concurrent_moves,
            )
            .await;
        }
        self.collect_garbage(node, membership, round).await
    }

    /// While a member's disk is past its high watermark, deletes the coldest
    /// eligible database, one per `cluster.gc_interval_secs`.
    async fn collect_garbage(
        &self,
        node: &Local,
        membership: &Membership,
        round: &Round,
    ) -> Result<(), NodeError> {
        let now = self.now_ms();
        let interval_ms = node.config().cluster.gc_interval_secs * 1000;
        if now.saturating_sub(*lock(&self.last_gc_ms)) < interval_ms {
            return Ok(());
        }
        let report = gc_report_of(
            self,
            &node.registry()?,
            node.config().cluster.gc_min_age_secs * 1000,
            membership.node_id(),
            &round.members,
            &round.inventories,
        );
        let Some(first) = report.eligible.first() else {
            return Ok(());
        };
        if !report.triggered {
            return Ok(());
        }
        *lock(&self.last_gc_ms) = now;
        node.remove_database(&first.database).await?;
        info!(database = %first.database, bytes = first.bytes, full_disks = ?report.full_disks,
            "garbage collection deleted the least recently read unaliased database");
        Ok(())
    }
}

/// Each live member's use for the rebalancer: the bytes of the copies it
/// holds (trashed ones excluded, as they are on their way out) against the
/// capacity of its disks.
pub(super) fn usage(members: &[Member], inventories: &[Inventory]) -> Vec<Usage> {
    members
        .iter()
        .filter(|m| m.live)
        .map(|m| {
            let used = inventories
                .iter()
                .filter(|i| i.node == m.id)
                .flat_map(|i| i.databases.values())
                .filter(|d| d.state != crate::catalog::DbState::Trashed)
                .flat_map(|d| d.shards.values().chain(d.global.as_ref()))
                .filter(|p| p.state != crate::placement::HeldState::Trashed)
                .map(|p| p.bytes)
                .sum();
            Usage {
                node: m.id.clone(),
                used,
                capacity: m.disks.values().map(|d| d.capacity).sum(),
            }
        })
        .collect()
}
