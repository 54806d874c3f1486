//! Online compaction: copy the live records into a new generation of sled
//! files, switch the store to it, and delete the old files.
//!
//! sled 0.34 writes every change, deletes included, as new log records and
//! gives space back to the filesystem only when the segments at the end of
//! its file happen to be free; an ack-then-delete queue therefore keeps the
//! disk its busiest hour needed (docs/performance.md, workload 7). A fresh
//! copy holds only what is live. The copy is [`backup::copy`] (the caller
//! holds the write gate exclusively, so it is exact and nothing is
//! missed), the switch is [`layout::switch_to`] (one atomic rename), and the
//! old engine is closed and its files removed once no reader holds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{backup, from_sled, layout, Engine, SledStore};
use crate::store::{CompactReport, SpaceUse, StoreError};

/// How long a retired engine may stay in use by reads that started before
/// the switch; past it, its files are left for the next start to remove.
const RETIRE_WAIT: Duration = Duration::from_secs(10);

/// Disk use and live bytes of `engine`, counting no further than `limit`.
pub(super) fn space(engine: &Engine, limit: u64) -> Result<SpaceUse, StoreError> {
    let disk_bytes = engine.db.size_on_disk().map_err(from_sled)?;
    let mut live = 0u64;
    for name in engine.db.tree_names() {
        let tree = engine.db.open_tree(&name).map_err(from_sled)?;
        for item in tree.iter() {
            let (key, value) = item.map_err(from_sled)?;
            live += (key.len() + value.len()) as u64;
            if live > limit {
                return Ok(SpaceUse {
                    disk_bytes,
                    live_bytes: None,
                });
            }
        }
    }
    Ok(SpaceUse {
        disk_bytes,
        live_bytes: Some(live),
    })
}

pub(super) fn compact(store: &SledStore) -> Result<CompactReport, StoreError> {
    if store.powerloss.is_some() {
        // The injector's flusher holds the engine's handles.
        return Err(StoreError::Io(
            "compaction is not available under the power-loss test hook".into(),
        ));
    }
    let paused = Instant::now();
    let gate = store.write_gate.write().unwrap_or_else(|p| p.into_inner());
    store.check_healthy()?;
    // The copy needs room for the live data: at least the reserve sends need.
    store.check_space(true)?;
    let old = store.engine();
    let disk_before = old.db.size_on_disk().map_err(from_sled)?;
    let next = old.generation + 1;
    let dir = layout::generation_dir(&store.path, next);
    // A copy left by an attempt of this process that failed after its rename.
    layout::remove_generation(&store.path, next)?;
    let copied = backup::copy(&old.db, &dir)?;
    let engine = match Engine::open(&dir, next, &store.options, false)
        .and_then(|engine| layout::switch_to(&store.path, next).map(|()| engine))
    {
        Ok(engine) => Arc::new(engine),
        Err(e) => {
            // Before the switch the old generation is still the store.
            let _ = layout::remove_generation(&store.path, next);
            return Err(e);
        }
    };
    *store.engine.write().unwrap_or_else(|p| p.into_inner()) = engine.clone();
    drop(gate);
    let writes_paused_ms = paused.elapsed().as_millis() as u64;
    retire(store, old);
    let report = CompactReport {
        disk_before,
        disk_after: engine.db.size_on_disk().map_err(from_sled)?,
        records: copied.records,
        live_bytes: copied.bytes,
        writes_paused_ms,
    };
    tracing::info!(
        disk_before = report.disk_before,
        disk_after = report.disk_after,
        records = report.records,
        live_bytes = report.live_bytes,
        writes_paused_ms,
        generation = next,
        "store compacted"
    );
    Ok(report)
}

/// Closes the old engine once the reads that hold it are done, then
/// deletes its files. A read that outlasts [`RETIRE_WAIT`] keeps them for
/// now; the next start removes them (see [`layout::tidy`]).
fn retire(store: &SledStore, old: Arc<Engine>) {
    let deadline = Instant::now() + RETIRE_WAIT;
    while Arc::strong_count(&old) > 1 {
        if Instant::now() >= deadline {
            tracing::warn!(
                generation = old.generation,
                "a read still holds the store's previous files; they are removed at the next start"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let generation = old.generation;
    drop(old);
    if let Err(e) = layout::remove_generation(&store.path, generation) {
        tracing::warn!(error = %e, generation, "cannot remove the store's previous files");
    }
}
