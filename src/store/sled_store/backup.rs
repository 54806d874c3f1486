//! A consistent copy of a live sled store into a new directory.
//!
//! sled 0.34 has no point-in-time read across trees (its `export` iterates
//! each tree on its own and panics on I/O errors), so the caller holds the
//! store's write gate while this runs: no write of any kind lands during
//! the copy, and the copy is exactly the state after the last write before
//! it. Reads go on meanwhile. The copy is written into `<target>.partial`,
//! flushed and fsynced, then renamed to `target`, so a crash or error
//! never leaves something at `target` that looks like a finished backup.
//! Owns only the copy; knows nothing of what the trees mean.

use std::fs;
use std::path::{Path, PathBuf};

use super::files::SyncFiles;
use super::from_sled;
use crate::store::{BackupReport, StoreError};

/// Records per `apply_batch` into the copy. It bounds the memory of one
/// batch, and it sets how much garbage sled's log collects while the copy
/// is written: 100,000 sorted 51-byte records took 16 MB at 256 per batch
/// against 29-32 MB at 2,048-4,096 (and 42 MB at 8) on this machine, so
/// the copy a compaction leaves is about half the size.
const RECORDS_PER_BATCH: usize = 256;

/// Copies every tree of `db` into a new store at `target`. The caller must
/// keep every write out until it returns.
pub(super) fn copy(db: &sled::Db, target: &Path) -> Result<BackupReport, StoreError> {
    if target.exists() {
        return Err(StoreError::Io(format!(
            "backup target {} already exists; choose a new directory",
            target.display()
        )));
    }
    let partial = partial_path(target);
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|e| io("cannot remove", &partial, e))?;
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| io("cannot create", parent, e))?;
    }
    let result = copy_into(db, &partial);
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            // Best effort: a half-written copy is useless; the error is what matters.
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    fs::rename(&partial, target).map_err(|e| io("cannot rename to", target, e))?;
    sync_parent(target)?;
    Ok(report)
}

fn copy_into(db: &sled::Db, dir: &Path) -> Result<BackupReport, StoreError> {
    let copy = sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .open()
        .map_err(from_sled)?;
    let report = copy_trees(db, &copy)?;
    copy.flush().map_err(from_sled)?;
    // flush() is not an fsync (STORE-NOTES 2): sync sled's files, the new
    // directory and its entry in the parent.
    SyncFiles::open(dir, true)?.fsync()?;
    Ok(report)
}

/// Copies every record of every tree of `db` into `copy`, in key order,
/// [`RECORDS_PER_BATCH`] at a time. What the copy sees of writes made
/// meanwhile is up to the caller (a backup holds them all off).
pub(super) fn copy_trees(db: &sled::Db, copy: &sled::Db) -> Result<BackupReport, StoreError> {
    let mut report = BackupReport::default();
    for name in db.tree_names() {
        let source = db.open_tree(&name).map_err(from_sled)?;
        let target = copy.open_tree(&name).map_err(from_sled)?;
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for item in source.iter() {
            let (key, value) = item.map_err(from_sled)?;
            report.records += 1;
            report.bytes += (key.len() + value.len()) as u64;
            batch.insert(key, value);
            pending += 1;
            if pending == RECORDS_PER_BATCH {
                target
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(from_sled)?;
                pending = 0;
            }
        }
        target.apply_batch(batch).map_err(from_sled)?;
        report.trees += 1;
    }
    Ok(report)
}

fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    target.with_file_name(name)
}

fn sync_parent(target: &Path) -> Result<(), StoreError> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("cannot fsync", parent, e))
}

fn io(what: &str, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {error}", path.display()))
}
