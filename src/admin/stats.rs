//! The observability routes: the Prometheus scrape and the operator's
//! stats (sessions by platform, the deepest queues, store size). Reads
//! only; every scan is bounded.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::http::{Request, Response};
use super::routes::{blocking, number_param, Answer};
use super::Context;
use crate::metrics::{platform_label, Scrape};
use crate::store::{DeviceRecord, Store, StoreError, StoreStats, UserId};

/// Most queues the stats rank.
const MAX_TOP: usize = 100;
/// Most users the stats visit for the deepest queues.
const STATS_SCAN_LIMIT: usize = 100_000;
/// Users fetched per step of that visit.
const STATS_STEP: usize = 256;
/// How long a scrape reuses the store's counters.
const STORE_STATS_TTL: Duration = Duration::from_secs(15);

pub(super) async fn metrics(ctx: &Context) -> Answer {
    let store = cached_store_stats(ctx).await;
    let commit = &ctx.commit_stats;
    let committer = ctx.messaging.committer();
    let scrape = Scrape {
        sessions_by_platform: ctx.registry.sessions_by_platform(),
        commit_batches: commit.batches.load(Ordering::Relaxed),
        commit_syncs: commit.syncs.load(Ordering::Relaxed),
        commit_sends: commit.sends.load(Ordering::Relaxed),
        commit_queue: committer.queued() as u64,
        commit_lingers: commit.lingers.load(Ordering::Relaxed),
        acks_waiting: ctx.messaging.acks().waiting() as u64,
        queue_entries: store.as_ref().map(|s| s.entries),
        bodies: store.as_ref().map(|s| s.bodies),
        store_bytes: store.as_ref().map(|s| s.disk_bytes),
        compactions: ctx.store.compaction_totals(),
        wal: ctx.store.wal_totals(),
        ready: ctx.serving.load(Ordering::Acquire) && committer.is_running(),
    };
    let mut response = Response::text(200, ctx.metrics.render(&scrape));
    response.content_type = "text/plain; version=0.0.4; charset=utf-8";
    Ok(response)
}

/// The store's counters, at most [`STORE_STATS_TTL`] old; `None` if the
/// store cannot say (the scrape still answers, without those series).
async fn cached_store_stats(ctx: &Context) -> Option<StoreStats> {
    {
        let cache = ctx.store_stats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, stats)) = &*cache {
            if at.elapsed() < STORE_STATS_TTL {
                return Some(stats.clone());
            }
        }
    }
    let store = ctx.store.clone();
    match tokio::task::spawn_blocking(move || store.stats()).await {
        Ok(Ok(stats)) => {
            let mut cache = ctx.store_stats.lock().unwrap_or_else(|p| p.into_inner());
            *cache = Some((Instant::now(), stats.clone()));
            Some(stats)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "store stats for a scrape failed");
            None
        }
        Err(_) => None,
    }
}

#[derive(Serialize)]
struct QueueView {
    user_id: UserId,
    username: String,
    depth: u64,
    max_seq: u64,
}

pub(super) async fn stats(ctx: &Context, request: &Request) -> Answer {
    let top = number_param(request, "top")?.unwrap_or(10).min(MAX_TOP);
    let (deepest, scanned, complete, store) = blocking(ctx, move |s| {
        let Deepest {
            queues,
            scanned,
            complete,
        } = deepest_queues(s, top)?;
        let mut views = Vec::with_capacity(queues.len());
        for (depth, user_id, max_seq) in queues {
            let username = s.user(user_id)?.map(|u| u.username).unwrap_or_default();
            views.push(QueueView {
                user_id,
                username,
                depth,
                max_seq,
            });
        }
        Ok((views, scanned, complete, s.stats()?))
    })
    .await?;
    let by_platform: serde_json::Map<String, serde_json::Value> = ctx
        .registry
        .sessions_by_platform()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, n)| (platform_label(p).to_owned(), n.into()))
        .collect();
    let commit = &ctx.commit_stats;
    Ok(Response::json(
        200,
        &serde_json::json!({
            "sessions": ctx.registry.session_count(),
            "sessions_by_platform": by_platform,
            "connections_open": ctx.metrics.connections_open.get(),
            "queues": {
                "deepest": deepest,
                "users_scanned": scanned,
                "complete": complete,
            },
            "store": {
                "queue_entries": store.entries,
                "message_bodies": store.bodies,
                "disk_bytes": store.disk_bytes,
            },
            "committer": {
                "batches": commit.batches.load(Ordering::Relaxed),
                "syncs": commit.syncs.load(Ordering::Relaxed),
                "sends": commit.sends.load(Ordering::Relaxed),
                "lingers": commit.lingers.load(Ordering::Relaxed),
                "queued": ctx.messaging.committer().queued(),
            },
        }),
    ))
}

/// The `top` deepest queues as (depth, user, max_seq), deepest first,
/// visiting at most [`STATS_SCAN_LIMIT`] users with entries; also how many
/// were visited and whether that was all of them.
fn deepest_queues(store: &dyn Store, top: usize) -> Result<Deepest, StoreError> {
    let mut heap = BinaryHeap::with_capacity(top + 1);
    let mut scanned = 0;
    let mut after = 0;
    loop {
        let users = store.users_with_entries(after, STATS_STEP)?;
        let Some(&last) = users.last() else {
            break;
        };
        for user in users {
            let max_seq = store.max_seq(user)?;
            let depth = queue_depth(max_seq, &store.devices(user)?);
            heap.push(Reverse((depth, user, max_seq)));
            if heap.len() > top {
                heap.pop();
            }
            scanned += 1;
        }
        if scanned >= STATS_SCAN_LIMIT {
            return Ok(Deepest::from_heap(heap, scanned, false));
        }
        after = last;
    }
    Ok(Deepest::from_heap(heap, scanned, true))
}

/// The deepest queues found by a bounded visit.
struct Deepest {
    /// (depth, user, max_seq), deepest first.
    queues: Vec<(u64, UserId, u64)>,
    /// Users visited.
    scanned: usize,
    /// Whether that was every user with entries.
    complete: bool,
}

impl Deepest {
    fn from_heap(
        heap: BinaryHeap<Reverse<(u64, UserId, u64)>>,
        scanned: usize,
        complete: bool,
    ) -> Self {
        let queues = heap.into_sorted_vec().into_iter().map(|r| r.0).collect();
        Deepest {
            queues,
            scanned,
            complete,
        }
    }
}

/// Entries not yet acknowledged by the user's slowest device (all of
/// them if the user has no device).
pub(super) fn queue_depth(max_seq: u64, devices: &[DeviceRecord]) -> u64 {
    let lowest = devices.iter().map(|d| d.acked_seq).min().unwrap_or(0);
    max_seq.saturating_sub(lowest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(acked_seq: u64) -> DeviceRecord {
        DeviceRecord {
            device_id: "d".into(),
            platform: 1,
            created_at_ms: 0,
            last_active_ms: 0,
            acked_seq,
        }
    }

    #[test]
    fn queue_depth_counts_what_the_slowest_device_has_not_acked() {
        assert_eq!(queue_depth(10, &[]), 10);
        assert_eq!(queue_depth(10, &[device(7), device(3)]), 7);
        assert_eq!(queue_depth(10, &[device(10)]), 0);
    }
}
