//! Online compaction: copy the live records into a new generation of sled
//! files, switch the store to it, and delete the old files.
//!
//! sled 0.34 writes every change, deletes included, as new log records and
//! gives space back to the filesystem only when the segments at the end of
//! its file happen to be free; an ack-then-delete queue therefore keeps the
//! disk its busiest hour needed (docs/performance.md, workload 7). A fresh
//! copy holds only what is live.
//!
//! Writes go on during the copy. From a moment with no write in flight
//! (under the write gate) a watcher collects the key of every write to
//! every tree (sled's subscribers see transactional writes too); the copy
//! then reads the trees while they change, and the keys written meanwhile
//! are copied again, in rounds, until few are left. Those last ones are
//! copied with writes held off, so the copy equals the store at that
//! instant: a key's final value is read from the store itself, whatever
//! order its events arrived in. The switch is [`layout::switch_to`] (one
//! atomic rename), and the old engine is closed and its files removed once
//! no reader holds it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{backup, from_sled, layout, Engine, SledStore};
use crate::store::{BackupReport, CompactReport, SpaceUse, StoreError};

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
    // Watch every tree from a moment when no write is in flight, so that
    // every write from here on is seen (sled checks for watchers before
    // each write, without a fence of its own: the gate is the fence).
    let (old, watch) = {
        let _gate = store.write_gate.write().unwrap_or_else(|p| p.into_inner());
        store.check_healthy()?;
        // The copy needs room for the live data: at least the reserve sends need.
        store.check_space(true)?;
        let old = store.engine();
        let watch = Watch::start(&old.db)?;
        (old, watch)
    };
    let disk_before = old.db.size_on_disk().map_err(from_sled)?;
    let next = old.generation + 1;
    let dir = layout::generation_dir(&store.path, next);
    // A copy left by an attempt of this process that failed.
    layout::remove_generation(&store.path, next)?;
    let result = copy_then_switch(store, &old, watch, &dir, next);
    let (engine, copied, writes_paused_ms) = match result {
        Ok(done) => done,
        Err(e) => {
            match layout::current(&store.path) {
                // Failed before the switch: the old generation is still
                // the store, and the copy goes.
                Ok((current, _)) if current != next => {
                    let _ = layout::remove_generation(&store.path, next);
                }
                // The pointer's rename happened but did not complete (its
                // fsync failed), or cannot be read: either generation may
                // be the one the next start opens, and both are complete.
                // Take no more writes, so that they stay equal; pigeond
                // stops and starts again on whichever it is.
                _ => {
                    let reason = format!("switching to the compacted store failed: {e}");
                    let _ = store.track::<()>(Err(StoreError::Io(reason)));
                }
            }
            return Err(e);
        }
    };
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

/// Catch-up rounds without the gate before the last one under it.
const CATCH_UP_ROUNDS: usize = 4;
/// Few enough changed keys to recopy while writes wait.
const CATCH_UP_UNDER_GATE: usize = 2_000;

/// Copies the live records while writes go on, recopies the keys written
/// meanwhile until few are left, recopies those with writes held off,
/// makes the copy durable and switches the store to it. Returns the new
/// engine, what was copied, and how long writes waited.
fn copy_then_switch(
    store: &SledStore,
    old: &Engine,
    mut watch: Watch,
    dir: &Path,
    next: u64,
) -> Result<(Arc<Engine>, BackupReport, u64), StoreError> {
    let engine = Engine::open(dir, next, &store.options, true)?;
    let copied = backup::copy_trees(&old.db, &engine.db)?;
    for _ in 0..CATCH_UP_ROUNDS {
        let changed = watch.take();
        let count: usize = changed.iter().map(|(_, keys)| keys.len()).sum();
        recopy(&old.db, &engine.db, changed)?;
        if count <= CATCH_UP_UNDER_GATE {
            break;
        }
    }
    // Most of the copy reaches the disk here, so that the flush under the
    // gate has only the last keys to write.
    engine.fsync()?;
    let paused = Instant::now();
    let gate = store.write_gate.write().unwrap_or_else(|p| p.into_inner());
    store.check_healthy()?;
    // No write is in flight now: what the watch holds is all there is.
    recopy(&old.db, &engine.db, watch.finish()?)?;
    engine.fsync()?;
    layout::switch_to(&store.path, next)?;
    let engine = Arc::new(engine);
    *store.engine.write().unwrap_or_else(|p| p.into_inner()) = engine.clone();
    drop(gate);
    Ok((engine, copied, paused.elapsed().as_millis() as u64))
}

/// Brings `keys` of each named tree in `copy` to what `db` holds now.
fn recopy(db: &sled::Db, copy: &sled::Db, changed: Changed) -> Result<(), StoreError> {
    for (name, keys) in changed {
        let source = db.open_tree(&name).map_err(from_sled)?;
        let target = copy.open_tree(&name).map_err(from_sled)?;
        let mut batch = sled::Batch::default();
        for key in keys {
            match source.get(&key).map_err(from_sled)? {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        target.apply_batch(batch).map_err(from_sled)?;
    }
    Ok(())
}

/// Keys written per tree.
type Changed = Vec<(sled::IVec, HashSet<sled::IVec>)>;

/// Which keys of every tree were written since [`Watch::start`]: a thread
/// drains sled's subscriber of each tree (a full subscriber would hold up
/// the writer) into sets of keys.
struct Watch {
    changed: Arc<Mutex<Changed>>,
    finish: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    /// A compaction that failed half-way stops the watcher too.
    fn drop(&mut self) {
        self.finish.store(true, Ordering::Release);
    }
}

impl Watch {
    /// Subscribes to every tree of `db`; call with the write gate held.
    fn start(db: &sled::Db) -> Result<Watch, StoreError> {
        let mut subscribers = Vec::new();
        let mut changed = Vec::new();
        for (i, name) in db.tree_names().into_iter().enumerate() {
            let tree = db.open_tree(&name).map_err(from_sled)?;
            subscribers.push((i, tree.watch_prefix(Vec::new())));
            changed.push((name, HashSet::new()));
        }
        let changed = Arc::new(Mutex::new(changed));
        let finish = Arc::new(AtomicBool::new(false));
        let thread = {
            let changed = changed.clone();
            let finish = finish.clone();
            std::thread::Builder::new()
                .name("pigeon-compact-watch".into())
                .spawn(move || drain(subscribers, &changed, &finish))
                .map_err(|e| StoreError::Io(format!("cannot start the compaction watcher: {e}")))?
        };
        Ok(Watch {
            changed,
            finish,
            thread: Some(thread),
        })
    }

    /// The keys written since the last take, leaving empty sets.
    fn take(&mut self) -> Changed {
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        changed
            .iter_mut()
            .map(|(name, keys)| (name.clone(), std::mem::take(keys)))
            .collect()
    }

    /// With no write in flight: drains what is left and stops watching.
    fn finish(mut self) -> Result<Changed, StoreError> {
        self.finish.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| StoreError::Io("the compaction watcher panicked".into()))?;
        }
        Ok(self.take())
    }
}

/// The watcher thread: moves written keys from the subscribers into
/// `changed` until `finish`, then drains each subscriber to empty.
fn drain(
    mut subscribers: Vec<(usize, sled::Subscriber)>,
    changed: &Mutex<Changed>,
    finish: &AtomicBool,
) {
    let mut last_round = false;
    loop {
        let finishing = finish.load(Ordering::Acquire);
        let wait = if finishing {
            Duration::ZERO
        } else {
            Duration::from_millis(1)
        };
        for (tree, subscriber) in subscribers.iter_mut() {
            let mut keys = Vec::new();
            while let Ok(event) = subscriber.next_timeout(wait) {
                keys.push(event.key().clone());
                // Move on to the other trees now and then; never when
                // finishing, which must leave every subscriber empty.
                if keys.len() >= 1024 && !finishing {
                    break;
                }
            }
            if !keys.is_empty() {
                let mut changed = changed.lock().unwrap_or_else(|p| p.into_inner());
                changed[*tree].1.extend(keys);
            }
        }
        if last_round {
            return;
        }
        // One more full pass once told to finish: nothing new can arrive.
        last_round = finishing;
    }
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
