//! Test-only power-loss fault injector: keeps a copy of the data directory
//! as it stood right after pigeond's latest fsync, so that a test can kill
//! pigeond, put that copy in place of the data directory ("every write that
//! was not fsynced is lost") and restart it.
//!
//! Inert unless the (undocumented for operators) environment variable
//! `PIGEON_TEST_POWERLOSS_SNAPSHOT=DIR` is set, which [`crate::config`]
//! reads; nothing here runs otherwise. Never set it in production: every
//! fsync then costs a copy of the whole store.
//!
//! What a snapshot holds: every file of the data directory except the lock
//! file, copied *after* an fsync returned and *before* the caller answers
//! anyone (the committer answers only after [`Store::sync`] returns), so it
//! holds at least everything any answer so far vouched for. sled and other
//! threads keep writing while it is copied, so it may also hold some later,
//! unsynced bytes, part of a page or a file, as a real power cut may also
//! persist some of them. The copy is retried if sled created, renamed or
//! removed a file meanwhile (a snapshot, a blob), so that it never holds a
//! directory listing no disk ever had.
//!
//! Layout of `DIR`: `partial` is the copy being made; when complete it is
//! renamed to `state.<n>` (n zero-padded, increasing), and older states are
//! removed after that. The newest `state.<n>` is the last fsynced state;
//! a kill during the copy leaves `partial` (ignored) and the previous
//! state. Owns `DIR`; reads the data directory, never writes it.
//!
//! In `flush` and `buffered` durability pigeond makes no fsync of its own
//! after opening; sled's background flusher does, every `flush_every_ms`,
//! and it cannot be observed from outside sled. [`Flusher`] stands in for
//! it: on the same period it fsyncs as pigeond would (db, blobs, directory)
//! and takes a snapshot, so the loss window the tests show is the one of
//! time. sled's own background fsync covers less than this (STORE-NOTES 2),
//! so a real power cut under those settings can lose more than the tests
//! show.
//!
//! [`Store::sync`]: crate::store::Store::sync

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::files::{SyncFiles, LOCK_FILE};
use super::from_sled;
use crate::store::StoreError;

/// The copy in progress inside the snapshot directory.
const PARTIAL: &str = "partial";
/// Prefix of a complete snapshot's directory name.
const STATE_PREFIX: &str = "state.";
/// Copies tried before giving up on a directory that keeps changing.
const ATTEMPTS: usize = 10;

fn io_error(what: &str, path: &Path, error: io::Error) -> StoreError {
    StoreError::Io(format!(
        "power-loss snapshot: {what} {}: {error}",
        path.display()
    ))
}

/// Makes the "last fsynced state" copies of one data directory.
pub(super) struct Snapshots {
    data: PathBuf,
    target: PathBuf,
    /// The number of the next state; the lock also serialises copies.
    next: Mutex<u64>,
}

impl Snapshots {
    /// Prepares `target` (creating it), continuing the numbering of states
    /// left there by an earlier process.
    pub(super) fn open(data: &Path, target: &Path) -> Result<Snapshots, StoreError> {
        fs::create_dir_all(target).map_err(|e| io_error("cannot create", target, e))?;
        let newest = newest_state(target)?.map_or(0, |(n, _)| n);
        Ok(Snapshots {
            data: data.to_owned(),
            target: target.to_owned(),
            next: Mutex::new(newest + 1),
        })
    }

    /// Copies the data directory into the next state. Call only after an
    /// fsync returned and before anything it made durable is answered.
    pub(super) fn take(&self) -> Result<(), StoreError> {
        // A poisoned lock means a copy panicked; `partial` is redone below.
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let partial = self.target.join(PARTIAL);
        for _ in 0..ATTEMPTS {
            remove_dir_if_present(&partial)?;
            fs::create_dir(&partial).map_err(|e| io_error("cannot create", &partial, e))?;
            let before = listing(&self.data)?;
            let copied = copy_dir(&self.data, &partial)?;
            if !copied || listing(&self.data)? != before {
                continue;
            }
            let state = self.target.join(format!("{STATE_PREFIX}{:020}", *next));
            fs::rename(&partial, &state).map_err(|e| io_error("cannot rename", &partial, e))?;
            *next += 1;
            return self.remove_older_than(&state);
        }
        Err(StoreError::Io(format!(
            "power-loss snapshot: {} changed during each of {ATTEMPTS} copies",
            self.data.display()
        )))
    }

    fn remove_older_than(&self, newest: &Path) -> Result<(), StoreError> {
        for (_, path) in states(&self.target)? {
            if path != newest {
                remove_dir_if_present(&path)?;
            }
        }
        Ok(())
    }
}

/// Every complete state in `target`, by number.
fn states(target: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(target).map_err(|e| io_error("cannot list", target, e))? {
        let entry = entry.map_err(|e| io_error("cannot list", target, e))?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(STATE_PREFIX))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        found.push((n, entry.path()));
    }
    found.sort();
    Ok(found)
}

fn newest_state(target: &Path) -> Result<Option<(u64, PathBuf)>, StoreError> {
    Ok(states(target)?.pop())
}

fn remove_dir_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("cannot remove", path, e)),
        _ => Ok(()),
    }
}

/// The names of the data directory's files and of those in its
/// subdirectories (sled's `blobs`), without the lock file.
fn listing(dir: &Path) -> Result<BTreeSet<PathBuf>, StoreError> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(relative) = dirs.pop() {
        let path = dir.join(&relative);
        for entry in fs::read_dir(&path).map_err(|e| io_error("cannot list", &path, e))? {
            let entry = entry.map_err(|e| io_error("cannot list", &path, e))?;
            let name = relative.join(entry.file_name());
            if name.as_os_str() == LOCK_FILE {
                continue;
            }
            let is_dir = entry
                .file_type()
                .map_err(|e| io_error("cannot stat", &entry.path(), e))?
                .is_dir();
            if is_dir {
                dirs.push(name.clone());
            }
            names.insert(name);
        }
    }
    Ok(names)
}

/// Copies `from` into the empty directory `to`, one level of
/// subdirectories deep (sled's `blobs`). False if a file vanished while it
/// was copied (sled removed it), which makes the copy worthless.
fn copy_dir(from: &Path, to: &Path) -> Result<bool, StoreError> {
    for entry in fs::read_dir(from).map_err(|e| io_error("cannot list", from, e))? {
        let entry = entry.map_err(|e| io_error("cannot list", from, e))?;
        let name = entry.file_name();
        if name == LOCK_FILE {
            continue;
        }
        let source = entry.path();
        let dest = to.join(&name);
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("cannot stat", &source, e)),
        };
        if file_type.is_dir() {
            fs::create_dir(&dest).map_err(|e| io_error("cannot create", &dest, e))?;
            if !copy_dir(&source, &dest)? {
                return Ok(false);
            }
            continue;
        }
        match fs::copy(&source, &dest) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("cannot copy", &source, e)),
        }
    }
    Ok(true)
}

/// Stand-in for sled's background fsync in `flush` and `buffered`
/// durability (see the module doc): every period, fsync and snapshot.
pub(super) struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread; it stops when the flusher is dropped.
    pub(super) fn start(
        db: sled::Db,
        files: SyncFiles,
        snapshots: Arc<Snapshots>,
        every: Duration,
    ) -> Result<Flusher, StoreError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pigeon-powerloss-flusher".into())
            .spawn(move || {
                // Nothing is ever sent: the sender's drop ends the wait.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let synced = db
                        .flush()
                        .map_err(from_sled)
                        .and_then(|_| files.fsync())
                        .and_then(|()| snapshots.take());
                    if let Err(e) = synced {
                        tracing::error!(error = %e, "power-loss stand-in flusher failed");
                    }
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the power-loss flusher: {e}")))?;
        Ok(Flusher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the power-loss flusher panicked");
            }
        }
    }
}

/// The injector as the store holds it.
pub(super) struct PowerLoss {
    pub(super) snapshots: Arc<Snapshots>,
    /// Only in `flush` and `buffered` durability.
    pub(super) _flusher: Option<Flusher>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_a_complete_copy_and_replaces_the_previous_one() {
        let data = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        fs::write(data.path().join("db"), b"one").unwrap();
        fs::write(data.path().join(LOCK_FILE), b"").unwrap();
        fs::create_dir(data.path().join("blobs")).unwrap();
        fs::write(data.path().join("blobs").join("7"), b"blob").unwrap();
        let snapshots = Snapshots::open(data.path(), target.path()).unwrap();
        snapshots.take().unwrap();
        fs::write(data.path().join("db"), b"two").unwrap();
        snapshots.take().unwrap();
        let states = states(target.path()).unwrap();
        assert_eq!(states.len(), 1);
        let (n, state) = &states[0];
        assert_eq!(*n, 2);
        assert_eq!(fs::read(state.join("db")).unwrap(), b"two");
        assert_eq!(fs::read(state.join("blobs").join("7")).unwrap(), b"blob");
        assert!(!state.join(LOCK_FILE).exists());
        // A later process continues the numbering.
        fs::create_dir(target.path().join(PARTIAL)).unwrap();
        let again = Snapshots::open(data.path(), target.path()).unwrap();
        again.take().unwrap();
        assert_eq!(newest_state(target.path()).unwrap().unwrap().0, 3);
        assert!(!target.path().join(PARTIAL).exists());
    }
}
