//! The write-ahead log of `fsync` durability: what makes a committed batch
//! durable, so that sled's own flush and its transactions leave the hot
//! path.
//!
//! Why: a batch made durable by sled itself costs a sled transaction, whose
//! commit writes out sled's io buffer twice (`PageCache::pin_log` rolls it
//! before and after its batch marker), then a `Db::flush`, an fsync of the
//! `db` file and one of the directory (STORE-NOTES 2). Each of those io
//! buffer writes is a `pwrite` plus a waiting `sync_file_range` on one of
//! sled's io threads, which sled wakes all together; at 5,000 sends/s
//! strace counted ~1,100 such writes a second besides the flushes. One
//! durable write to a file of our own replaces all of it (`O_DIRECT |
//! O_DSYNC` into a prepared file where the filesystem allows, else an
//! append and `fdatasync`: see `segment`).
//!
//! The order, per [`Store::apply`](crate::store::Store::apply) batch (see
//! `batch::apply`): the batch is worked out against sled plus its own
//! writes so far, without touching sled; its writes become one record with
//! the next log sequence number (lsn), the last entry writing that lsn into
//! `meta` under [`META_WAL_LSN`]; the record is appended, durably;
//! only then are its writes applied to sled, in order, as plain inserts and
//! removes. So sled never holds a write the log could lose, sled's lsn says
//! which record it holds last (once sled holds that write it holds every
//! write before it: sled recovers a prefix of its own log), and a record is
//! whole after a crash because it is replayed whole. Replaying sets keys to
//! the values the record names whatever state they were in, so replaying a
//! record sled already (partly) holds is harmless. sled is made durable
//! only at a checkpoint, in the background, about once a second.
//!
//! Files: `wal/<first lsn, 20 digits>.log` in the data directory, each a
//! sequence of frames `[len: u32 LE][crc32: u32 LE][payload]`; payload
//! `[lsn: u64 LE][entries]`; the crc32 is of the segment's first lsn (u64
//! LE) and then the payload, so that no frame counts in any segment but
//! its own (see [`frames`]); entry `[tree: u8][kind: u8][key len:
//! u32 LE][key]`, then `[value len: u32 LE][value]` for an insert (tree ids
//! are `batch::logged_trees`' order). The writer appends to the newest
//! segment. Once a segment is [`SledOptions::checkpoint_every`] old (or
//! [`SEGMENT_MAX_BYTES`] long), the checkpointer is idle and every record
//! in it is applied to sled, the writer starts the next segment and hands
//! the old one to the checkpointer thread, which makes sled durable (flush
//! and fsyncs) and then deletes the segment, or in direct mode keeps it as
//! `wal/spare`, the next segment's file. After the last record, a segment
//! holds zeros or, recycled, older frames (see [`frames`]).
//!
//! Recovery, at every open: read sled's lsn L, replay the records above L
//! in order (they must follow L without a gap, or sled's files are damaged
//! or older than the log, and the store refuses to open), make sled
//! durable, delete the segments and start a new one. A segment's records
//! end at the first frame cut short, failing its checksum or older than
//! the one before. At the newest segment's end that is a write the crash
//! interrupted, never answered; before a newer segment it is corruption,
//! found because each segment is named by its first lsn and must begin
//! where the one before it ended.
//!
//! Writes outside batches (users, tokens, password and disabled flags) stay
//! sled transactions made durable by sled's own flush and fsyncs: they are
//! rare, and they write none of the keys a record writes.
//!
//! [`SledOptions::checkpoint_every`]: super::SledOptions::checkpoint_every
//!
//! Owns the `wal` directory; knows nothing of the records' meaning.

mod segment;

#[cfg(test)]
pub(super) use segment::BLOCK;

use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use segment::Segment;

use super::{from_sled, Engine, Trees};
use crate::store::records::decode_u64;
use crate::store::StoreError;

/// The directory of the log, inside the data directory.
pub(super) const WAL_DIR: &str = "wal";
/// The lsn of the last record sled holds (u64 BE), in `meta`.
pub(super) const META_WAL_LSN: &[u8] = b"wal_lsn";
/// A segment this long is handed to the checkpointer even if younger than
/// the checkpoint interval.
pub(super) const SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;

pub(super) const SEGMENT_SUFFIX: &str = ".log";
const FRAME_HEADER: usize = 8;
/// Bytes of queued frames' memory kept between syncs.
const PENDING_KEPT: usize = 64 * 1024;
const KIND_REMOVE: u8 = 0;
const KIND_INSERT: u8 = 1;

fn io_error(what: &str, path: &Path, error: io::Error) -> StoreError {
    StoreError::Io(format!(
        "write-ahead log: {what} {}: {error}",
        path.display()
    ))
}

fn corrupt(path: &Path, what: String) -> StoreError {
    StoreError::Corrupt(format!("write-ahead log {}: {what}", path.display()))
}

/// Appends one insert to a record being built.
pub(super) fn encode_insert(record: &mut Vec<u8>, tree: u8, key: &[u8], value: &[u8]) {
    record.extend_from_slice(&[tree, KIND_INSERT]);
    record.extend_from_slice(&(key.len() as u32).to_le_bytes());
    record.extend_from_slice(key);
    record.extend_from_slice(&(value.len() as u32).to_le_bytes());
    record.extend_from_slice(value);
}

/// Appends one remove to a record being built.
pub(super) fn encode_remove(record: &mut Vec<u8>, tree: u8, key: &[u8]) {
    record.extend_from_slice(&[tree, KIND_REMOVE]);
    record.extend_from_slice(&(key.len() as u32).to_le_bytes());
    record.extend_from_slice(key);
}

/// One write of a record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Entry<'a> {
    Insert {
        tree: u8,
        key: &'a [u8],
        value: &'a [u8],
    },
    Remove {
        tree: u8,
        key: &'a [u8],
    },
}

/// The entries of a record's payload (after its lsn), or why they do not
/// parse.
pub(super) fn entries(mut bytes: &[u8]) -> Result<Vec<Entry<'_>>, String> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if bytes.len() < n {
            return Err(format!("an entry ends {} bytes early", n - bytes.len()));
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn len(bytes: &mut &[u8]) -> Result<usize, String> {
        let raw = take(bytes, 4)?;
        Ok(u32::from_le_bytes(raw.try_into().expect("4 bytes")) as usize)
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let head = take(&mut bytes, 2)?;
        let (tree, kind) = (head[0], head[1]);
        let key_len = len(&mut bytes)?;
        let key = take(&mut bytes, key_len)?;
        match kind {
            KIND_INSERT => {
                let value_len = len(&mut bytes)?;
                let value = take(&mut bytes, value_len)?;
                out.push(Entry::Insert { tree, key, value });
            }
            KIND_REMOVE => out.push(Entry::Remove { tree, key }),
            other => return Err(format!("unknown entry kind {other}")),
        }
    }
    Ok(out)
}

fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// The segments in `dir`, oldest first, with their first lsn.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("cannot list", dir, e)),
    };
    let mut found = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| io_error("cannot list", dir, e))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((first, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// The frames of the segment whose first record is `first_lsn`: `(lsn,
/// payload after the lsn)`, up to the first frame that is cut short, fails
/// its checksum, or has a lower lsn than the one expected. A recycled
/// segment holds older frames past its records (see `segment`); they fail
/// the checksum, salted with another segment's first lsn, and their lsns
/// are lower. Zeros end the frames too (a length of 0). A frame whose lsn
/// is higher than expected is returned: records are missing, and
/// [`recover`] says so.
///
/// A segment written before checksums were salted (commit 4fd6988 and
/// earlier), which a crash left for this start to replay, is read with
/// unsalted checksums if not one of its frames checks salted.
pub(super) fn frames(bytes: &[u8], first_lsn: u64) -> Vec<(u64, Range<usize>)> {
    let salted = scan(bytes, first_lsn, true);
    if salted.is_empty() {
        return scan(bytes, first_lsn, false);
    }
    salted
}

/// The checksum of a frame's `payload`, salted with the first lsn of the
/// segment it is in, or not (older segments).
fn checksum(salt: Option<u64>, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    if let Some(first_lsn) = salt {
        hasher.update(&first_lsn.to_le_bytes());
    }
    hasher.update(payload);
    hasher.finalize()
}

/// [`frames`], with salted checksums or not.
fn scan(bytes: &[u8], first_lsn: u64, salted: bool) -> Vec<(u64, Range<usize>)> {
    let salt = salted.then_some(first_lsn);
    let mut out = Vec::new();
    let mut at = 0;
    let mut expected = first_lsn;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEADER + 8 {
            break;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len < 8 || rest.len() < FRAME_HEADER + len {
            break;
        }
        let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
        if checksum(salt, payload) != crc {
            break;
        }
        let lsn = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
        if lsn < expected {
            break;
        }
        let start = at + FRAME_HEADER + 8;
        out.push((lsn, start..at + FRAME_HEADER + len));
        at += FRAME_HEADER + len;
        expected = lsn + 1;
    }
    out
}

fn missing(path: &Path, from: u64, to: u64) -> StoreError {
    corrupt(
        path,
        format!(
            "records {from} to {to} are missing: sled's files are damaged, or older than the log"
        ),
    )
}

/// What [`recover`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Recovered {
    /// Records applied to sled.
    pub replayed: u64,
    /// The lsn the next record gets.
    pub next_lsn: u64,
}

/// The lsn of the last record sled holds.
pub(super) fn sled_lsn(trees: &Trees) -> Result<u64, StoreError> {
    match trees.meta.get(META_WAL_LSN).map_err(from_sled)? {
        Some(raw) => decode_u64("write-ahead log lsn", &raw),
        None => Ok(0),
    }
}

/// Replays the log in `data` onto `engine` (see the module doc), makes the
/// engine durable, and removes the replayed segments.
pub(super) fn recover(data: &Path, engine: &Engine) -> Result<Recovered, StoreError> {
    let dir = data.join(WAL_DIR);
    let found = segments(&dir)?;
    let sled_holds = sled_lsn(&engine.trees)?;
    let mut last = sled_holds;
    let mut replayed = 0;
    for (first, path) in &found {
        // A segment begins where the one before ended: a gap means a
        // damaged record at the end of that one, or a lost segment.
        if *first > last + 1 {
            return Err(missing(path, last + 1, first - 1));
        }
        let bytes = fs::read(path).map_err(|e| io_error("cannot read", path, e))?;
        for (lsn, payload) in frames(&bytes, *first) {
            if lsn <= last {
                continue;
            }
            if lsn != last + 1 {
                return Err(missing(path, last + 1, lsn - 1));
            }
            apply_record(&engine.trees, &bytes[payload]).map_err(|e| match e {
                StoreError::Corrupt(what) => corrupt(path, what),
                other => other,
            })?;
            last = lsn;
            replayed += 1;
        }
    }
    if replayed > 0 {
        tracing::info!(
            records = replayed,
            from = sled_holds + 1,
            to = last,
            "replayed the write-ahead log"
        );
    }
    if !found.is_empty() {
        engine.fsync()?;
        for (_, path) in &found {
            remove(path)?;
        }
    }
    // A spare a crash left behind goes too: the next segment is prepared
    // afresh, and a store that writes no direct segments (`flush`
    // durability, or a filesystem without `O_DIRECT`) would keep it for
    // good.
    remove(&dir.join(segment::SPARE))?;
    Ok(Recovered {
        replayed,
        next_lsn: last + 1,
    })
}

/// Applies a record's entries to sled, in order: after its `fdatasync`, and
/// at recovery.
pub(super) fn apply_record(trees: &Trees, record: &[u8]) -> Result<(), StoreError> {
    for entry in entries(record).map_err(StoreError::Corrupt)? {
        apply_entry(trees, entry)?;
    }
    Ok(())
}

fn apply_entry(trees: &Trees, entry: Entry<'_>) -> Result<(), StoreError> {
    let tree_id = match entry {
        Entry::Insert { tree, .. } | Entry::Remove { tree, .. } => tree,
    };
    let Some(tree) = super::batch::logged_tree(trees, tree_id) else {
        return Err(StoreError::Corrupt(format!("unknown tree {tree_id}")));
    };
    match entry {
        Entry::Insert { key, value, .. } => tree.insert(key, value).map(drop),
        Entry::Remove { key, .. } => tree.remove(key).map(drop),
    }
    .map_err(from_sled)
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("cannot remove", path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot fsync", dir, e))
}

/// Counters of the log, shared with the checkpointer thread and read by
/// metrics without taking the writer's lock.
#[derive(Default)]
pub(super) struct WalStats {
    pub checkpoints: AtomicU64,
    pub checkpoint_ms: AtomicU64,
    pub segment_bytes: AtomicU64,
    /// Microseconds the writer spent on batches, by phase (see
    /// [`WalTotals`](crate::store::WalTotals)).
    pub work_us: AtomicU64,
    pub log_us: AtomicU64,
    pub apply_us: AtomicU64,
    /// Whether the segment being written is direct (see `segment`).
    pub direct: AtomicBool,
}

impl WalStats {
    /// Counts one batch's time: worked out, logged, applied to sled.
    pub(super) fn add_batch(&self, work: Duration, log: Duration, apply: Duration) {
        for (counter, spent) in [
            (&self.work_us, work),
            (&self.log_us, log),
            (&self.apply_us, apply),
        ] {
            counter.fetch_add(spent.as_micros() as u64, Ordering::Relaxed);
        }
    }
}

/// The writer's side of the log: appends records, makes them durable, and
/// hands full segments to the checkpointer.
pub(super) struct Wal {
    dir: PathBuf,
    segment: Segment,
    /// Frames appended since the last [`Wal::sync`].
    pending: Vec<u8>,
    next_lsn: u64,
    every: Duration,
    checkpointer: Checkpointer,
    stats: Arc<WalStats>,
}

impl Wal {
    /// Starts a new segment after [`recover`] and the checkpointer thread;
    /// `direct` asks for direct segments where the filesystem allows them.
    pub(super) fn start(
        data: &Path,
        next_lsn: u64,
        every: Duration,
        direct: bool,
        engine: Arc<RwLock<Arc<Engine>>>,
        failed: Arc<Mutex<Option<String>>>,
    ) -> Result<Wal, StoreError> {
        let dir = data.join(WAL_DIR);
        if !dir.exists() {
            fs::create_dir(&dir).map_err(|e| io_error("cannot create", &dir, e))?;
            sync_dir(data)?;
        }
        let segment = Segment::create(&dir, next_lsn, direct)?;
        if direct && !segment.is_direct() {
            tracing::info!(
                dir = %dir.display(),
                "the filesystem refuses O_DIRECT: the write-ahead log appends and fdatasyncs"
            );
        }
        let stats = Arc::new(WalStats::default());
        stats.direct.store(segment.is_direct(), Ordering::Relaxed);
        Ok(Wal {
            dir: dir.clone(),
            segment,
            pending: Vec::new(),
            next_lsn,
            every,
            checkpointer: Checkpointer::start(dir, engine, failed, stats.clone())?,
            stats,
        })
    }

    /// The log's counters.
    pub(super) fn stats(&self) -> Arc<WalStats> {
        self.stats.clone()
    }

    /// The lsn the next record gets.
    pub(super) fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Queues the record of the batch just applied with lsn
    /// [`Wal::next_lsn`]; [`Wal::sync`] makes it durable.
    pub(super) fn append(&mut self, entries: &[u8]) {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        let len = 8 + entries.len();
        let start = self.pending.len();
        self.pending.reserve(FRAME_HEADER + len);
        self.pending.extend_from_slice(&(len as u32).to_le_bytes());
        // The checksum's place, filled in once the payload is there.
        self.pending.extend_from_slice(&[0; 4]);
        self.pending.extend_from_slice(&lsn.to_le_bytes());
        self.pending.extend_from_slice(entries);
        let payload = &self.pending[start + FRAME_HEADER..];
        let crc = checksum(Some(self.segment.first_lsn), payload);
        self.pending[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes the queued records, if any, and returns once they are on
    /// the disk.
    pub(super) fn sync(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.segment.write(&self.pending)?;
        // A refused direct write leaves the segment buffered.
        self.stats
            .direct
            .store(self.segment.is_direct(), Ordering::Relaxed);
        self.stats
            .segment_bytes
            .store(self.segment.bytes, Ordering::Relaxed);
        self.pending.clear();
        // A large batch's memory goes back; a usual one's is kept.
        self.pending.shrink_to(PENDING_KEPT);
        Ok(())
    }

    /// If the segment is due and the checkpointer idle, starts the next
    /// segment and hands this one over. Call only once every record synced
    /// so far is applied to sled: the checkpoint that deletes the segment
    /// must find them there.
    pub(super) fn rotate_if_due(&mut self) -> Result<(), StoreError> {
        let due = self.segment.bytes > 0
            && (self.segment.started.elapsed() >= self.every
                || self.segment.bytes >= SEGMENT_MAX_BYTES);
        if due && self.pending.is_empty() && self.checkpointer.is_idle() {
            // Direct again only if this one still is (asked for, taken by
            // the filesystem, no write refused).
            let direct = self.segment.is_direct();
            let next = Segment::create(&self.dir, self.next_lsn, direct)?;
            self.stats.direct.store(next.is_direct(), Ordering::Relaxed);
            let full = std::mem::replace(&mut self.segment, next);
            self.stats.segment_bytes.store(0, Ordering::Relaxed);
            // A direct segment's file is kept for the segment after next.
            let recycle = full.is_direct().then_some(full.bytes);
            self.checkpointer.hand(full.path, recycle);
        }
        Ok(())
    }

    /// Stops the checkpointer, makes the engine durable and removes every
    /// segment and the spare: a clean stop leaves nothing to replay.
    pub(super) fn close(mut self, engine: &Engine) -> Result<(), StoreError> {
        self.checkpointer.stop();
        self.sync()?;
        engine.fsync()?;
        for (_, path) in segments(&self.dir)? {
            remove(&path)?;
        }
        remove(&self.dir.join(segment::SPARE))
    }
}

/// A segment handed to the checkpointer: its path, and for a direct one
/// the bytes it reached (it is recycled, see `segment::recycle`).
type Handed = (PathBuf, Option<u64>);

/// The background thread that makes sled durable behind the log and
/// deletes (or recycles) the segments that made it redundant.
struct Checkpointer {
    idle: Arc<AtomicBool>,
    sender: Option<mpsc::Sender<Handed>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn start(
        dir: PathBuf,
        engine: Arc<RwLock<Arc<Engine>>>,
        failed: Arc<Mutex<Option<String>>>,
        stats: Arc<WalStats>,
    ) -> Result<Checkpointer, StoreError> {
        let idle = Arc::new(AtomicBool::new(true));
        let (sender, receiver) = mpsc::channel::<Handed>();
        let thread_idle = idle.clone();
        let thread = std::thread::Builder::new()
            .name("pigeon-checkpoint".into())
            .spawn(move || {
                for (segment, recycle) in receiver {
                    // The current engine: a compaction may have switched
                    // since the segment was handed over, and its copy holds
                    // (durably) everything the old engine did.
                    let started = Instant::now();
                    let current = engine.read().unwrap_or_else(|p| p.into_inner()).clone();
                    let done = current.fsync().and_then(|()| match recycle {
                        Some(reached) => segment::recycle(&dir, &segment, reached),
                        None => remove(&segment),
                    });
                    drop(current);
                    if done.is_ok() {
                        stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                        let ms = started.elapsed().as_millis() as u64;
                        stats.checkpoint_ms.fetch_add(ms, Ordering::Relaxed);
                    }
                    if let Err(e) = done {
                        // The segment stays and is replayed at the next
                        // start; sled may hold writes its disk does not.
                        tracing::error!(error = %e, "checkpoint failed; refusing writes until restart");
                        let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
                        failed.get_or_insert_with(|| e.to_string());
                    }
                    thread_idle.store(true, Ordering::Release);
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            idle,
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    fn is_idle(&self) -> bool {
        self.idle.load(Ordering::Acquire)
    }

    fn hand(&self, segment: PathBuf, recycle: Option<u64>) {
        self.idle.store(false, Ordering::Release);
        if let Some(sender) = &self.sender {
            // The thread only ends when the sender is dropped.
            let _ = sender.send((segment, recycle));
        }
    }

    fn stop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_named() {
        let mut record = Vec::new();
        encode_insert(&mut record, 3, b"key", b"value");
        encode_remove(&mut record, 12, b"gone");
        encode_insert(&mut record, 0, b"", b"");
        assert_eq!(
            entries(&record).unwrap(),
            vec![
                Entry::Insert {
                    tree: 3,
                    key: b"key",
                    value: b"value"
                },
                Entry::Remove {
                    tree: 12,
                    key: b"gone"
                },
                Entry::Insert {
                    tree: 0,
                    key: b"",
                    value: b""
                },
            ]
        );
        let cut = &record[..record.len() - 1];
        assert!(entries(cut).unwrap_err().contains("early"));
        let mut bad_kind = record.clone();
        bad_kind[1] = 9;
        assert!(entries(&bad_kind).unwrap_err().contains("kind 9"));
    }

    /// A log in a temporary data directory, direct or not, with records
    /// 1 to 3 synced.
    fn three_records(direct: bool) -> (tempfile::TempDir, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let engine_dir = data.join("sled");
        let engine = Arc::new(RwLock::new(Arc::new(
            Engine::open(&engine_dir, 0, &super::super::SledOptions::default(), true).unwrap(),
        )));
        let failed = Arc::new(Mutex::new(None));
        let every = Duration::from_secs(3600);
        let mut wal = Wal::start(data, 1, every, direct, engine, failed).unwrap();
        for i in 0..3u8 {
            let mut record = Vec::new();
            encode_insert(&mut record, 0, &[i], &[i; 10]);
            wal.append(&record);
        }
        wal.sync().unwrap();
        (dir, wal)
    }

    fn lsns(frames: &[(u64, Range<usize>)]) -> Vec<u64> {
        frames.iter().map(|f| f.0).collect()
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_the_frames() {
        for direct in [true, false] {
            let (_dir, mut wal) = three_records(direct);
            let path = wal.segment.path.clone();
            let whole = fs::read(&path).unwrap();
            wal.sync().unwrap();
            assert_eq!(
                fs::read(&path).unwrap(),
                whole,
                "nothing queued, nothing written"
            );
            let found = frames(&whole, 1);
            assert_eq!(lsns(&found), vec![1, 2, 3], "direct: {direct}");
            let end = found[2].1.end;
            assert_eq!(wal.segment.bytes, end as u64);
            if direct {
                assert!(whole.len() as u64 >= segment::PREPARED_MIN);
                assert!(
                    whole[end..].iter().all(|b| *b == 0),
                    "zeros after the records"
                );
            } else {
                assert_eq!(whole.len(), end);
            }
            assert_eq!(lsns(&frames(&whole[..end - 3], 1)), vec![1, 2]);
            let mut flipped = whole.clone();
            flipped[end - 1] ^= 1;
            assert_eq!(lsns(&frames(&flipped, 1)), vec![1, 2]);
        }
    }

    #[test]
    fn older_frames_end_a_segment_and_newer_ones_are_returned() {
        let (_dir, wal) = three_records(true);
        let whole = fs::read(&wal.segment.path).unwrap();
        let found = frames(&whole, 1);
        let (second, end) = (found[1].1.start - 16, found[2].1.end);
        let third = found[2].1.start - 16;
        // Records 1 and 2, then record 1 again: what a recycled segment
        // holds past its records.
        let mut stale = whole[..third].to_vec();
        stale.extend_from_slice(&whole[..second]);
        assert_eq!(lsns(&frames(&stale, 1)), vec![1, 2]);
        // A segment named 2 whose first frame is 1: nothing of it is new.
        assert!(frames(&whole, 2).is_empty());
        // Records 1 and 3: 3 is returned, and recovery names 2 as missing.
        let mut gap = whole[..second].to_vec();
        gap.extend_from_slice(&whole[third..end]);
        assert_eq!(lsns(&frames(&gap, 1)), vec![1, 3]);
    }

    /// One frame by hand: `lsn` with one insert, its checksum salted with
    /// `salt` or not.
    fn frame(salt: Option<u64>, lsn: u64) -> Vec<u8> {
        let mut payload = lsn.to_le_bytes().to_vec();
        encode_insert(&mut payload, 0, &lsn.to_be_bytes(), b"value");
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&checksum(salt, &payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn a_frame_counts_only_in_its_own_segment() {
        // Segment 10's records 10 and 11, then a frame salted for segment 1
        // with the very lsn expected next: bytes a recycled file may hold
        // (a message body shaped as a frame, say). It is not record 12.
        let mut bytes = [frame(Some(10), 10), frame(Some(10), 11)].concat();
        bytes.extend_from_slice(&frame(Some(1), 12));
        assert_eq!(lsns(&frames(&bytes, 10)), vec![10, 11]);
        // Nor is an unsalted one, or one salted for a later segment.
        let unsalted = [frame(Some(10), 10), frame(None, 11)].concat();
        assert_eq!(lsns(&frames(&unsalted, 10)), vec![10]);
        let later = [frame(Some(10), 10), frame(Some(11), 11)].concat();
        assert_eq!(lsns(&frames(&later, 10)), vec![10]);
        // A segment written before checksums were salted is read whole.
        let old = [frame(None, 10), frame(None, 11), frame(None, 12)].concat();
        assert_eq!(lsns(&frames(&old, 10)), vec![10, 11, 12]);
        // What the log writes is salted with its segment's first lsn.
        let (_dir, wal) = three_records(true);
        let whole = fs::read(&wal.segment.path).unwrap();
        assert_eq!(lsns(&scan(&whole, 1, true)), vec![1, 2, 3]);
        assert!(scan(&whole, 1, false).is_empty());
    }

    #[test]
    fn a_large_batch_does_not_keep_its_memory() {
        let (_dir, mut wal) = three_records(true);
        let mut record = Vec::new();
        encode_insert(&mut record, 0, b"large", &vec![1; 4 << 20]);
        wal.append(&record);
        assert!(wal.pending.capacity() > 4 << 20);
        wal.sync().unwrap();
        assert!(wal.pending.capacity() <= PENDING_KEPT);
        let whole = fs::read(&wal.segment.path).unwrap();
        assert_eq!(lsns(&frames(&whole, 1)), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_refused_direct_write_goes_on_appending_and_fdatasyncing() {
        let (_dir, mut wal) = three_records(true);
        wal.segment.refuse_next_write();
        let mut record = Vec::new();
        encode_insert(&mut record, 2, b"after", b"refused");
        wal.append(&record);
        wal.sync().unwrap();
        assert!(!wal.segment.is_direct());
        assert!(!wal.stats.direct.load(Ordering::Relaxed));
        wal.append(&record);
        wal.sync().unwrap();
        let whole = fs::read(&wal.segment.path).unwrap();
        let found = frames(&whole, 1);
        assert_eq!(lsns(&found), vec![1, 2, 3, 4, 5]);
        assert_eq!(found[4].1.end as u64, wal.segment.bytes);
        // The next segment is not tried direct again.
        wal.every = Duration::ZERO;
        wal.rotate_if_due().unwrap();
        assert!(!wal.segment.is_direct());
        assert!(wal.segment.path.ends_with(segment_name(6)));
    }

    #[test]
    fn a_direct_log_writes_across_blocks_and_grows_past_its_prepared_end() {
        let (_dir, mut wal) = three_records(true);
        assert!(wal.segment.is_direct() && wal.stats.direct.load(Ordering::Relaxed));
        let prepared = fs::metadata(&wal.segment.path).unwrap().len();
        // Records of odd sizes, some larger than a block, until the
        // segment is past the prepared length.
        let mut written = 3u64;
        let mut sizes = [1usize, 4000, 9000, 77, segment::BLOCK].into_iter().cycle();
        while wal.segment.bytes <= prepared + 3 * segment::BLOCK as u64 {
            let mut record = Vec::new();
            let size = sizes.next().unwrap();
            encode_insert(&mut record, 1, &written.to_be_bytes(), &vec![7; size]);
            wal.append(&record);
            written += 1;
            if written.is_multiple_of(3) {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
        let whole = fs::read(&wal.segment.path).unwrap();
        assert!(whole.len() as u64 > prepared);
        let found = frames(&whole, 1);
        assert_eq!(lsns(&found), (1..=written).collect::<Vec<_>>());
        assert_eq!(found.last().unwrap().1.end as u64, wal.segment.bytes);
        for (lsn, payload) in &found[3..] {
            let entry = &entries(&whole[payload.clone()]).unwrap()[0];
            let Entry::Insert { key, .. } = entry else {
                panic!("an insert")
            };
            assert_eq!(*key, &(lsn - 1).to_be_bytes());
        }
    }
}
