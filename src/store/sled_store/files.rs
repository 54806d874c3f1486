//! sled's files as seen from outside sled: what its `flush` leaves unsynced,
//! and the unfinished snapshot it cannot open past.
//!
//! Owns the file handles used for fsync; never writes a file itself except
//! deleting a `snap.*.generating` leftover. See STORE-NOTES items 2 and 3.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::StoreError;

fn io_error(what: &str, path: &Path, error: io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {error}", path.display()))
}

/// Name of the lock file that keeps a second pigeond out of a data directory.
pub(super) const LOCK_FILE: &str = "pigeond.lock";

/// Takes the data directory's exclusive lock (creating the directory if
/// needed), before anything in it is touched: the snapshot clean-up below
/// must never run under a live pigeond. The lock lasts while the returned
/// file is open and is released by the OS if the process dies.
pub(super) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))?;
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("cannot open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::Io(format!(
            "{} is in use by another pigeond (lock {} is held)",
            dir.display(),
            path.display()
        ))),
        Err(fs::TryLockError::Error(e)) => Err(io_error("cannot lock", &path, e)),
    }
}

/// Deletes every `snap.*.generating` file in `dir`: a snapshot that a crash
/// during sled's start-up left unfinished, which makes every later open fail
/// with `Corruption` (STORE-NOTES 3). The previous complete snapshot and the
/// log still hold everything, so deleting it loses nothing.
pub(super) fn remove_unfinished_snapshots(dir: &Path) -> Result<(), StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("cannot list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error("cannot list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with("snap.") && name.ends_with(".generating")) {
            continue;
        }
        let path = entry.path();
        fs::remove_file(&path).map_err(|e| io_error("cannot remove", &path, e))?;
        tracing::warn!(
            file = %path.display(),
            "removed an unfinished sled snapshot left by a crash during start-up"
        );
    }
    Ok(())
}

/// Open handles for the fsyncs that make sled's `flush` durable.
pub(super) struct SyncFiles {
    /// The data directory's path (for the free-space guard).
    pub(super) path: PathBuf,
    /// The data directory: its entries (new blobs, renamed snapshots).
    dir: File,
    /// sled's log and page file; `flush` only `sync_file_range`s it.
    db: File,
    /// Where sled puts values too large for a log segment (about 128 KiB
    /// and up). sled writes these files without any sync at all.
    blobs: PathBuf,
    /// Blob files already fsynced, so each is synced once. Only a cache:
    /// losing it costs extra fsyncs, never durability.
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl SyncFiles {
    /// Opens the handles once sled has created its files. `created` says the
    /// data directory is new, so its entry in the parent is synced as well;
    /// the `conf` file, which sled writes only at creation, is synced here
    /// once rather than on every sync.
    pub(super) fn open(dir: &Path, created: bool) -> Result<SyncFiles, StoreError> {
        let open = |path: &Path| File::open(path).map_err(|e| io_error("cannot open", path, e));
        let files = SyncFiles {
            path: dir.to_owned(),
            dir: open(dir)?,
            db: open(&dir.join("db"))?,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        };
        let conf = dir.join("conf");
        if conf.exists() {
            open(&conf)?
                .sync_all()
                .map_err(|e| io_error("cannot fsync", &conf, e))?;
        }
        if created {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            open(parent)?
                .sync_all()
                .map_err(|e| io_error("cannot fsync", parent, e))?;
        }
        Ok(files)
    }

    /// Fsyncs the db file, any blob not yet synced, and the directory. Call
    /// after `Db::flush`.
    pub(super) fn fsync(&self) -> Result<(), StoreError> {
        self.db
            .sync_all()
            .map_err(|e| io_error("cannot fsync", Path::new("db"), e))?;
        self.fsync_new_blobs()?;
        self.dir
            .sync_all()
            .map_err(|e| io_error("cannot fsync", Path::new("data directory"), e))
    }

    fn fsync_new_blobs(&self) -> Result<(), StoreError> {
        let entries = match fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("cannot list", &self.blobs, e)),
        };
        // A poisoned lock only means another sync panicked; the set is
        // still a valid cache.
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list", &self.blobs, e))?;
            let name = entry.file_name();
            if !synced.contains(&name) && fsync_blob(&entry.path())? {
                any_new = true;
                synced.insert(name.clone());
            }
            present.insert(name);
        }
        // Forget blobs sled has garbage-collected so the set stays small.
        synced.retain(|name| present.contains(name));
        if any_new {
            let dir = open_dir(&self.blobs)?;
            dir.sync_all()
                .map_err(|e| io_error("cannot fsync", &self.blobs, e))?;
        }
        Ok(())
    }
}

/// Fsyncs one blob; false if sled removed it meanwhile.
fn fsync_blob(path: &Path) -> Result<bool, StoreError> {
    match File::open(path) {
        Ok(file) => file
            .sync_all()
            .map_err(|e| io_error("cannot fsync", path, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error("cannot open", path, e)),
    }
    Ok(true)
}

fn open_dir(path: &Path) -> Result<File, StoreError> {
    File::open(path).map_err(|e| io_error("cannot open", path, e))
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem.
pub(super) fn free_bytes(dir: &Path) -> Result<u64, StoreError> {
    fs2::available_space(dir).map_err(|e| io_error("cannot read the free space of", dir, e))
}
