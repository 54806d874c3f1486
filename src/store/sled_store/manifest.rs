//! The store's own record of what it has durably committed, kept beside
//! sled's files so that a store sled opens but which has lost acknowledged
//! writes is caught.
//!
//! sled 0.34.7 treats a record that fails its checksum as the end of its
//! log: a bit flip or a truncation in the middle of `db` opens "cleanly"
//! with everything after the damage gone, and a deleted or emptied `db`
//! opens as a new, empty store (measured; see docs/reliability.md).
//! The manifest holds the message id floor and the next user id as of the
//! last successful sync. Both only grow, so a store whose values are below
//! the manifest's has lost writes that were answered, and is refused.
//!
//! Layout of `pigeon.manifest`: two 64-byte slots, at offsets 0 and 4096
//! (separate pages, so a torn write damages at most one). Each slot:
//!
//! ```text
//!  0      4        8             16             24              32            40
//!  +------+--------+-------------+--------------+---------------+-------------+
//!  | PGMF | ver=1  | generation  | msgid floor  | next user id  | SHA-256[..8]|
//!  +------+--------+-------------+--------------+---------------+-------------+
//!   all integers big-endian; the hash covers bytes 0..32
//! ```
//!
//! A write goes to the slot the newest one is not in, so the other always
//! holds the previous, still true, record. Owns this one file; never reads
//! or writes sled's.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::store::StoreError;

/// The file's name inside the data directory.
pub(crate) const MANIFEST_FILE: &str = "pigeon.manifest";

const MAGIC: &[u8; 4] = b"PGMF";
const VERSION: u32 = 1;
const SLOT_LEN: usize = 40;
const SLOT_OFFSETS: [u64; 2] = [0, 4096];

/// What the store had durably committed at the last recorded sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Committed {
    /// The largest message id handed to the store.
    pub msgid_floor: u64,
    /// The id the next new user gets.
    pub next_user_id: u64,
}

impl Committed {
    /// What a store that never stored anything holds.
    pub(crate) fn fresh() -> Committed {
        Committed {
            msgid_floor: 0,
            next_user_id: 1,
        }
    }

    /// Why `found` (what the store holds now) cannot be the store this
    /// manifest was written for, if it cannot.
    pub(crate) fn lost_by(&self, found: &Committed) -> Option<String> {
        if found.msgid_floor < self.msgid_floor {
            return Some(format!(
                "the store holds messages up to id {} but message id {} was committed \
                 (the manifest says so): acknowledged messages are missing",
                found.msgid_floor, self.msgid_floor
            ));
        }
        if found.next_user_id < self.next_user_id {
            return Some(format!(
                "the store's next user id is {} but users up to id {} were committed \
                 (the manifest says so): accounts are missing",
                found.next_user_id,
                self.next_user_id.saturating_sub(1)
            ));
        }
        None
    }
}

/// What reading the manifest found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// No manifest file.
    Missing,
    /// The newest valid record.
    Found(Committed),
}

/// The open manifest file and the slot state.
pub(crate) struct Manifest {
    path: PathBuf,
    file: File,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    generation: u64,
    last: Committed,
}

fn io_error(what: &str, path: &Path, error: io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {error}", path.display()))
}

/// Reads the manifest in `dir` without creating anything. A file with no
/// valid slot is damage, reported as [`StoreError::Corrupt`].
pub(crate) fn read(dir: &Path) -> Result<Read, StoreError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) => return Err(io_error("cannot read", &path, e)),
    };
    match newest_slot(&bytes) {
        Some((_, committed)) => Ok(Read::Found(committed)),
        None => Err(StoreError::Corrupt(format!(
            "{} is damaged (no slot passes its checksum); it cannot vouch for the store",
            path.display()
        ))),
    }
}

/// The valid slot with the highest generation.
fn newest_slot(bytes: &[u8]) -> Option<(u64, Committed)> {
    SLOT_OFFSETS
        .iter()
        .filter_map(|&offset| {
            let start = usize::try_from(offset).ok()?;
            decode_slot(bytes.get(start..start + SLOT_LEN)?)
        })
        .max_by_key(|(generation, _)| *generation)
}

fn decode_slot(slot: &[u8]) -> Option<(u64, Committed)> {
    let u64_at = |at: usize| u64::from_be_bytes(slot[at..at + 8].try_into().expect("8 bytes"));
    if &slot[..4] != MAGIC || slot[4..8] != VERSION.to_be_bytes() {
        return None;
    }
    if slot[32..40] != checksum(&slot[..32]) {
        return None;
    }
    Some((
        u64_at(8),
        Committed {
            msgid_floor: u64_at(16),
            next_user_id: u64_at(24),
        },
    ))
}

fn encode_slot(generation: u64, committed: &Committed) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    slot[..4].copy_from_slice(MAGIC);
    slot[4..8].copy_from_slice(&VERSION.to_be_bytes());
    slot[8..16].copy_from_slice(&generation.to_be_bytes());
    slot[16..24].copy_from_slice(&committed.msgid_floor.to_be_bytes());
    slot[24..32].copy_from_slice(&committed.next_user_id.to_be_bytes());
    let sum = checksum(&slot[..32]);
    slot[32..40].copy_from_slice(&sum);
    slot
}

fn checksum(bytes: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(bytes);
    digest[..8].try_into().expect("a SHA-256 has 32 bytes")
}

impl Manifest {
    /// Opens (creating if missing) the manifest in `dir`. A new file is
    /// fsynced with its directory entry before this returns.
    pub(crate) fn open(dir: &Path) -> Result<Manifest, StoreError> {
        let path = dir.join(MANIFEST_FILE);
        let existed = path.exists();
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error("cannot open", &path, e))?;
        let bytes = fs::read(&path).map_err(|e| io_error("cannot read", &path, e))?;
        let (generation, last) = newest_slot(&bytes).unwrap_or_default();
        let manifest = Manifest {
            path,
            file,
            state: Mutex::new(SlotState { generation, last }),
        };
        if !existed {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("cannot fsync", dir, e))?;
        }
        Ok(manifest)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(|e| io_error("cannot fsync", &self.path, e))
    }

    /// Records `committed` if it moved; `durable` fsyncs the record (call
    /// it only once the store's own files are synced, so the manifest never
    /// claims more than the disk holds).
    pub(crate) fn record(&self, committed: Committed, durable: bool) -> Result<(), StoreError> {
        // A poisoned lock means a record panicked half-way; the slots on
        // disk still carry their own checksums.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.generation > 0 && state.last == committed {
            return Ok(());
        }
        let generation = state.generation + 1;
        let offset = SLOT_OFFSETS[(generation % 2) as usize];
        self.file
            .write_all_at(&encode_slot(generation, &committed), offset)
            .map_err(|e| io_error("cannot write", &self.path, e))?;
        // The record is written only after sled's own fsync, so whenever
        // the OS writes it back it never claims more than the disk holds;
        // fsyncing it on every commit would add a second fsync to every
        // send's path for nothing but a fresher record after a power cut.
        // So it is fsynced every SYNC_EVERY records, and on drop.
        if durable && generation.is_multiple_of(SYNC_EVERY) {
            self.sync()?;
        }
        state.generation = generation;
        state.last = committed;
        Ok(())
    }
}

/// Records between two fsyncs of the manifest (see [`Manifest::record`]):
/// after a power cut it may be this many commits behind, never ahead.
const SYNC_EVERY: u64 = 64;

impl Drop for Manifest {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!(error = %e, "final fsync of the manifest failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(floor: u64, next: u64) -> Committed {
        Committed {
            msgid_floor: floor,
            next_user_id: next,
        }
    }

    #[test]
    fn newest_record_wins_and_survives_reopen() {
        let dir = tempfile::TempDir::new().unwrap();
        assert_eq!(read(dir.path()).unwrap(), Read::Missing);
        let manifest = Manifest::open(dir.path()).unwrap();
        for floor in 1..=5 {
            manifest.record(committed(floor, 2), true).unwrap();
        }
        drop(manifest);
        assert_eq!(read(dir.path()).unwrap(), Read::Found(committed(5, 2)));
        let manifest = Manifest::open(dir.path()).unwrap();
        manifest.record(committed(6, 3), true).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Read::Found(committed(6, 3)));
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_other_one() {
        let dir = tempfile::TempDir::new().unwrap();
        let manifest = Manifest::open(dir.path()).unwrap();
        manifest.record(committed(7, 2), true).unwrap(); // generation 1: slot 1
        manifest.record(committed(9, 2), true).unwrap(); // generation 2: slot 0
        drop(manifest);
        let path = dir.path().join(MANIFEST_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 0x01; // inside slot 0's floor
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Read::Found(committed(7, 2)));
        // Both slots damaged: no record can be trusted.
        bytes[4096 + 20] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(dir.path()), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn loss_is_named() {
        let manifest = committed(100, 5);
        assert!(manifest.lost_by(&committed(100, 5)).is_none());
        assert!(manifest.lost_by(&committed(101, 6)).is_none());
        assert!(manifest
            .lost_by(&committed(99, 5))
            .unwrap()
            .contains("messages"));
        assert!(manifest
            .lost_by(&committed(100, 4))
            .unwrap()
            .contains("accounts"));
    }
}
