//! The log's files on disk: creating a segment, writing records to it
//! durably, and keeping a checkpointed segment as the next one.
//!
//! Two ways a segment reaches the disk:
//!
//! - **Direct** (the default where the filesystem allows it): the file is
//!   opened `O_DIRECT | O_DSYNC`, and each [`Segment::write`] is one
//!   `pwrite` of whole blocks that returns once they are on the disk,
//!   device cache flushed: no copy into the page cache, no writeback, no
//!   separate `fdatasync`. The file is *prepared* before its first record:
//!   written once to [`PREPARED_MIN`] bytes (zeros, fsynced) or taken over
//!   from a checkpointed segment ([`recycle`]), so records overwrite
//!   blocks the file already has and change none of its metadata (a write
//!   past the prepared end still works, with a metadata update). The last,
//!   partly filled block stays in memory and is written again, whole, with
//!   the next records; the bytes it already held are written unchanged.
//!   On the 2-vCPU VM of docs/performance.md one such write cost 32–41 µs
//!   of CPU and 76–102 µs of waiting, against 55–68 µs and 122–186 µs for
//!   an append and `fdatasync` (one flush per write either way, counted in
//!   `/proc/diskstats`; the append also writes the file's size each time).
//! - **Buffered** (filesystems that refuse `O_DIRECT`, such as tmpfs
//!   before Linux 6.6, or [`SledOptions::direct_log`] off): appends to a
//!   fresh file, each followed by `fdatasync`.
//!
//! What a recycled segment leaves behind: past the newest record, the
//! frames of the segment it used to be. Their records are already in sled
//! (a segment is recycled only after the checkpoint that made it
//! redundant), and recovery never takes them for the segment's own: their
//! checksums are salted with the other segment's first lsn, and their
//! lsns are all below this segment's first (lsns only grow), so a
//! segment ends at the first frame that fails either (see `wal::frames`).
//!
//! [`SledOptions::direct_log`]: crate::store::sled_store::SledOptions::direct_log

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{io_error, sync_dir, SEGMENT_MAX_BYTES};
use crate::store::StoreError;

/// Direct writes are whole blocks of this size at offsets it divides, from
/// memory aligned to it: what `O_DIRECT` asks of 512-byte and 4 KiB
/// devices alike.
pub(in crate::store::sled_store) const BLOCK: usize = 4096;
/// A direct segment is prepared to at least this length before its first
/// record.
pub(super) const PREPARED_MIN: u64 = 1 << 20;
/// The checkpointed segment kept to become the next one (direct mode).
pub(super) const SPARE: &str = "spare";
/// The block buffer goes back to this size after a larger record.
const BUFFER_KEPT: usize = 64 * 1024;

/// The segment being appended to.
pub(super) struct Segment {
    file: File,
    pub path: PathBuf,
    /// The lsn of its first record (its name): its frames' checksum salt.
    pub first_lsn: u64,
    /// Bytes of frames written.
    pub bytes: u64,
    pub started: Instant,
    /// Direct mode: the blocks from the last partly filled one on.
    direct: Option<Aligned>,
    /// Test only: the next direct write is refused (see `refuse_next_write`).
    #[cfg(test)]
    refuse_next: bool,
}

impl Segment {
    /// Creates the segment whose first record is `first_lsn`, durably (the
    /// directory entry is fsynced before any record in it is): direct if
    /// `direct` and the filesystem allows it, else buffered.
    pub fn create(dir: &Path, first_lsn: u64, direct: bool) -> Result<Segment, StoreError> {
        let path = dir.join(super::segment_name(first_lsn));
        if direct {
            if let Some(file) = create_direct(dir, &path)? {
                sync_dir(dir)?;
                return Ok(Segment::new(
                    file,
                    path,
                    first_lsn,
                    Some(Aligned::with_len(BUFFER_KEPT)),
                ));
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("cannot create", &path, e))?;
        sync_dir(dir)?;
        Ok(Segment::new(file, path, first_lsn, None))
    }

    fn new(file: File, path: PathBuf, first_lsn: u64, direct: Option<Aligned>) -> Segment {
        Segment {
            file,
            path,
            first_lsn,
            bytes: 0,
            started: Instant::now(),
            direct,
            #[cfg(test)]
            refuse_next: false,
        }
    }

    /// Whether writes go straight to the disk (see the module doc).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Appends `frames` and returns once they are on the disk.
    pub fn write(&mut self, frames: &[u8]) -> Result<(), StoreError> {
        let path = &self.path;
        match &mut self.direct {
            None => {
                self.file
                    .write_all_at(frames, self.bytes)
                    .map_err(|e| io_error("cannot write", path, e))?;
                self.file
                    .sync_data()
                    .map_err(|e| io_error("cannot fdatasync", path, e))?;
            }
            Some(buffer) => {
                let at = self.bytes - self.bytes % BLOCK as u64;
                let kept = (self.bytes - at) as usize;
                let end = kept + frames.len();
                let blocks = buffer.blocks(kept, end.next_multiple_of(BLOCK));
                blocks[kept..end].copy_from_slice(frames);
                blocks[end..].fill(0);
                #[cfg(test)]
                let written = if std::mem::take(&mut self.refuse_next) {
                    Err(io::Error::from_raw_os_error(libc::EINVAL))
                } else {
                    self.file.write_all_at(blocks, at)
                };
                #[cfg(not(test))]
                let written = self.file.write_all_at(blocks, at);
                match written {
                    Ok(()) => {}
                    // The device wants more alignment than BLOCK (or the
                    // filesystem took O_DIRECT at open only): this segment
                    // goes on appending and fdatasyncing, and so do the
                    // next ones (see `Wal::sync`).
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                        tracing::warn!(
                            path = %path.display(),
                            error = %e,
                            "a direct write was refused; the write-ahead log appends and fdatasyncs"
                        );
                        self.file = OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(|e| io_error("cannot open", path, e))?;
                        self.direct = None;
                        return self.write(frames);
                    }
                    Err(e) => return Err(io_error("cannot write", path, e)),
                }
                // The new last block, partly filled, to the buffer's front.
                let tail = end - end % BLOCK;
                blocks.copy_within(tail..end, 0);
                buffer.shrink(end - tail);
            }
        }
        self.bytes += frames.len() as u64;
        Ok(())
    }

    /// Makes the next direct write fail with `EINVAL`, as a device needing
    /// more alignment than [`BLOCK`] refuses it. (Moving the buffer off the
    /// block boundary would do it on ext4, but not on tmpfs, which has
    /// taken `O_DIRECT` without alignment rules since Linux 6.6.)
    #[cfg(test)]
    pub fn refuse_next_write(&mut self) {
        self.refuse_next = true;
    }
}

/// `path` opened for `O_DIRECT` writes, each durable on return if
/// `dsync`.
#[cfg(target_os = "linux")]
fn open_direct(path: &Path, dsync: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let sync = if dsync { libc::O_DSYNC } else { 0 };
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | sync)
        .open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path, _dsync: bool) -> io::Result<File> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// `path` as a prepared direct segment: the spare renamed, or a new file
/// prepared. `None`, and no file left at `path`, where the filesystem
/// refuses `O_DIRECT`.
fn create_direct(dir: &Path, path: &Path) -> Result<Option<File>, StoreError> {
    let spare = dir.join(SPARE);
    match fs::rename(&spare, path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            File::create(path).map_err(|e| io_error("cannot create", path, e))?;
        }
        Err(e) => return Err(io_error("cannot rename", &spare, e)),
    }
    let file = match open_direct(path, true) {
        Ok(file) => file,
        Err(e)
            if e.kind() == io::ErrorKind::Unsupported
                || e.kind() == io::ErrorKind::InvalidInput =>
        {
            fs::remove_file(path).map_err(|e| io_error("cannot remove", path, e))?;
            return Ok(None);
        }
        Err(e) => return Err(io_error("cannot open", path, e)),
    };
    prepare(path, PREPARED_MIN);
    Ok(Some(file))
}

/// Writes zeros from the end of the file at `path` (a file holding no
/// record: new, or recycled) to `len` bytes, a multiple of [`BLOCK`], and
/// fsyncs them. Written with `O_DIRECT` too, so that no page of a segment
/// is ever in the page cache from a buffered write that a direct one
/// would have to replace. Best effort: on a full disk the segment takes
/// the slower path past its end instead, so a failure is only logged.
fn prepare(path: &Path, len: u64) {
    debug_assert!(len.is_multiple_of(BLOCK as u64));
    let extend = || -> io::Result<()> {
        let file = open_direct(path, false)?;
        let mut at = file.metadata()?.len();
        if at >= len {
            return Ok(());
        }
        at -= at % BLOCK as u64;
        let mut buffer = Aligned::with_len(BUFFER_KEPT);
        let zeros = buffer.blocks(0, BUFFER_KEPT);
        while at < len {
            let n = (len - at).min(BUFFER_KEPT as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_data()
    };
    if let Err(e) = extend() {
        tracing::warn!(path = %path.display(), error = %e, "could not prepare a log segment");
    }
}

/// Keeps the checkpointed segment at `path`, which reached `reached`
/// bytes, as the next segment, sized to half as long again: extended, or
/// cut back if more than twice that (a burst's segment, once the load has
/// fallen, gives its disk back). Removes it if a spare is already there.
pub(super) fn recycle(dir: &Path, path: &Path, reached: u64) -> Result<(), StoreError> {
    let spare = dir.join(SPARE);
    if spare.exists() {
        return super::remove(path);
    }
    fs::rename(path, &spare).map_err(|e| io_error("cannot rename", path, e))?;
    let want = (reached + reached / 2)
        .clamp(PREPARED_MIN, SEGMENT_MAX_BYTES)
        .next_multiple_of(BLOCK as u64);
    let len = fs::metadata(&spare)
        .map_err(|e| io_error("cannot stat", &spare, e))?
        .len();
    if len > want * 2 {
        OpenOptions::new()
            .write(true)
            .open(&spare)
            .and_then(|file| file.set_len(want))
            .map_err(|e| io_error("cannot truncate", &spare, e))?;
    } else {
        prepare(&spare, want);
    }
    Ok(())
}

/// Bytes starting at a [`BLOCK`]-aligned address.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn with_len(len: usize) -> Aligned {
        let raw = vec![0; len + BLOCK];
        let start = (BLOCK - raw.as_ptr() as usize % BLOCK) % BLOCK;
        Aligned { raw, start }
    }

    fn len(&self) -> usize {
        self.raw.len() - BLOCK
    }

    /// The first `len` aligned bytes, of which the first `keep` are kept
    /// if the buffer has to grow.
    fn blocks(&mut self, keep: usize, len: usize) -> &mut [u8] {
        if len > self.len() {
            let mut bigger = Aligned::with_len(len.next_power_of_two());
            bigger.raw[bigger.start..bigger.start + keep]
                .copy_from_slice(&self.raw[self.start..self.start + keep]);
            *self = bigger;
        }
        &mut self.raw[self.start..self.start + len]
    }

    /// Gives back the memory a large record took, keeping the first `keep`
    /// bytes.
    fn shrink(&mut self, keep: usize) {
        if self.len() > BUFFER_KEPT {
            let mut smaller = Aligned::with_len(BUFFER_KEPT);
            smaller.raw[smaller.start..smaller.start + keep]
                .copy_from_slice(&self.raw[self.start..self.start + keep]);
            *self = smaller;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    #[test]
    fn a_recycled_segment_is_sized_to_what_it_reached_and_one_spare_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two, three) = (
            dir.path().join("1.log"),
            dir.path().join("2.log"),
            dir.path().join("3.log"),
        );
        let spare = dir.path().join(SPARE);
        // A short segment becomes a spare of the prepared minimum.
        fs::write(&one, vec![1; 10_000]).unwrap();
        recycle(dir.path(), &one, 10_000).unwrap();
        assert!(!one.exists());
        assert_eq!(len(&spare), PREPARED_MIN);
        // Its whole blocks stay as they were; from the last, partly
        // written one on it is zeros.
        let bytes = fs::read(&spare).unwrap();
        assert!(bytes[..2 * BLOCK].iter().all(|b| *b == 1));
        assert!(bytes[2 * BLOCK..].iter().all(|b| *b == 0));
        // With a spare there already, the next one goes.
        fs::write(&two, b"x").unwrap();
        recycle(dir.path(), &two, 1).unwrap();
        assert!(!two.exists());
        assert_eq!(len(&spare), PREPARED_MIN);
        // A long segment that ended up holding little is cut back; one that
        // reached most of its length is extended to half as long again.
        fs::remove_file(&spare).unwrap();
        let big = 8 * PREPARED_MIN;
        File::create(&three).unwrap().set_len(big).unwrap();
        recycle(dir.path(), &three, 100_000).unwrap();
        assert_eq!(len(&spare), PREPARED_MIN);
        fs::remove_file(&spare).unwrap();
        File::create(&three).unwrap().set_len(big).unwrap();
        recycle(dir.path(), &three, big).unwrap();
        assert_eq!(len(&spare), big + big / 2);
    }

    #[test]
    fn the_buffer_is_aligned_and_keeps_its_front_as_it_grows_and_shrinks() {
        let mut buffer = Aligned::with_len(BLOCK);
        let blocks = buffer.blocks(0, BLOCK);
        assert_eq!(blocks.as_ptr() as usize % BLOCK, 0);
        blocks[..3].copy_from_slice(b"abc");
        let grown = buffer.blocks(3, 5 * BLOCK);
        assert_eq!(grown.len(), 5 * BLOCK);
        assert_eq!(grown.as_ptr() as usize % BLOCK, 0);
        assert_eq!(&grown[..3], b"abc");
        // Under the kept size: stays.
        buffer.shrink(3);
        assert_eq!(buffer.len(), 8 * BLOCK);
        let mut big = Aligned::with_len(BUFFER_KEPT);
        big.blocks(0, 4 * BUFFER_KEPT)[..2].copy_from_slice(b"xy");
        big.shrink(2);
        assert_eq!(big.len(), BUFFER_KEPT);
        assert_eq!(big.blocks(2, BLOCK).as_ptr() as usize % BLOCK, 0);
        assert_eq!(&big.blocks(2, BLOCK)[..2], b"xy");
    }
}
