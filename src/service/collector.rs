//! The background collector: every `gc_interval` it walks every user with
//! queue entries and queues a Collect op for each (acks collect their own
//! user at once; this sweep catches entries that aged past the retention
//! period or were held back by a device that has since gone inactive), then
//! expires old dedupe records. Work per step is bounded, so a sweep never
//! holds the writer for long. After each sweep it compacts the store when
//! the store's files have outgrown its live data (see `compactor`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::StoreSettings;
use crate::error::ServiceError;

use super::messaging::Messaging;

/// Users fetched per step of the sweep.
const USERS_PER_STEP: usize = 256;
const GROUPS_PER_STEP: usize = 64;
const TIMELINE_ENTRIES_PER_OP: usize = 10_000;

/// Collect every large group's timeline up to the lowest position of its
/// active members (a member's position is their timeline cursor or their
/// join, whichever is later; a member silent for `device_inactive_after`
/// does not hold it back), subject to the retention period. A dissolved
/// group has no members left to wait for. Returns the groups visited.
async fn collect_timelines(
    messaging: &Messaging,
    store: &Arc<dyn crate::store::Store>,
) -> Result<u64, ServiceError> {
    let mut visited = 0u64;
    let mut after = 0;
    loop {
        let reader = store.clone();
        let groups = tokio::task::spawn_blocking(move || {
            reader.groups_with_timeline(after, GROUPS_PER_STEP)
        })
        .await
        .map_err(|_| ServiceError::ShuttingDown)??;
        let Some(&last) = groups.last() else { break };
        visited += groups.len() as u64;
        for group in groups {
            let reader = store.clone();
            let now = now_ms();
            let (active_since, retain_since) = messaging.collect_cutoffs(now);
            let up_to = tokio::task::spawn_blocking(move || {
                let Some(record) = reader.group(group)? else {
                    return Ok::<_, crate::store::StoreError>(None);
                };
                if record.dissolved {
                    return Ok(Some(record.max_seq));
                }
                let lowest = reader
                    .members(group)?
                    .iter()
                    .filter(|m| m.last_active_ms >= active_since)
                    .map(|m| m.acked_seq.max(m.joined_seq))
                    .min();
                Ok(lowest)
            })
            .await
            .map_err(|_| ServiceError::ShuttingDown)??;
            let Some(up_to_seq) = up_to else { continue };
            messaging
                .committer()
                .write(crate::store::WriteOp::CollectTimeline {
                    group,
                    up_to_seq,
                    retain_since_ms: retain_since,
                    limit: TIMELINE_ENTRIES_PER_OP,
                })
                .await?;
        }
        after = last;
    }
    Ok(visited)
}
/// Dedupe records scanned per step.
const DEDUPE_PER_STEP: usize = 4096;

/// Run sweeps every `interval` until `shutdown`.
pub async fn run(
    messaging: Arc<Messaging>,
    store: Arc<dyn crate::store::Store>,
    interval: Duration,
    dedupe_window: Duration,
    compaction: StoreSettings,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; start one interval in
                         // The disk use the last compaction left (see `compactor`).
    let mut last_compacted = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = sweep(&messaging, &store, dedupe_window) => r,
        };
        match result {
            Ok((users, dedupe)) => tracing::debug!(users, dedupe_expired = dedupe, "gc sweep done"),
            Err(e) => tracing::warn!(error = %e, "gc sweep failed; retrying next interval"),
        }
        // After the sweep: what it collected is what a compaction gives back.
        let reader = store.clone();
        let settings = compaction.clone();
        let mut last = last_compacted;
        let compacted = tokio::task::spawn_blocking(move || {
            let result = super::compactor::maybe_compact(reader.as_ref(), &settings, &mut last);
            (result, last)
        });
        let (result, last) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = compacted => match r {
                Ok(done) => done,
                Err(_) => return,
            },
        };
        last_compacted = last;
        if let Err(e) = result {
            tracing::warn!(error = %e, "compaction failed; the store goes on in its current files");
        }
    }
}

/// One full sweep; returns (users visited, dedupe records expired).
pub async fn sweep(
    messaging: &Messaging,
    store: &Arc<dyn crate::store::Store>,
    dedupe_window: Duration,
) -> Result<(u64, u64), ServiceError> {
    let committer = messaging.committer();
    let mut visited = 0u64;
    let mut after = 0;
    loop {
        let store = store.clone();
        let users =
            tokio::task::spawn_blocking(move || store.users_with_entries(after, USERS_PER_STEP))
                .await
                .map_err(|_| ServiceError::ShuttingDown)??;
        let Some(&last) = users.last() else { break };
        visited += users.len() as u64;
        let now = now_ms();
        let ops = users.iter().map(|&user| messaging.collect_op(user, now));
        for outcome in committer.write_in_steps(ops.collect()).await {
            outcome?;
        }
        after = last;
    }
    visited += collect_timelines(messaging, store).await?;
    let older_than = now_ms().saturating_sub(dedupe_window.as_millis() as u64);
    let mut expired = 0;
    let mut resume = None;
    loop {
        let (n, next) = committer
            .expire_dedupe(older_than, resume, DEDUPE_PER_STEP)
            .await?;
        expired += n;
        match next {
            Some(position) => resume = Some(position),
            None => break,
        }
    }
    Ok((visited, expired))
}
