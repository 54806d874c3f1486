//! The sled engine behind [`Store`]: trees, schema version, durability.
//!
//! This is the only module of the server that imports sled. It owns the
//! trees (named key_value), opening (leftover snapshot clean-up, schema
//! check), `sync` and every read; the write batch of [`Store::apply`] lives in
//! [`batch`]. Key and value layouts are in [`super::records`].
//!
//! Trees (key → value):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `schema_version` / `msgid_floor` / `next_user_id` | u32 BE / u64 BE / u64 BE |
//! | `userid_user` | user (8 BE) | `UserValue` |
//! | `username_userid` | username (UTF-8) | user (8 BE) |
//! | `tokenhash_token` | SHA-256 of the token (32) | `TokenValue` |
//! | `userdevice_device` | user (8 BE) ++ device id | `DeviceValue` |
//! | `userseq_msgid` | user (8 BE) ++ seq (8 BE) | msg id (8 BE) |
//! | `userid_maxseq` | user (8 BE) | seq (8 BE): the max seq when the queue's top was last collected |
//! | `msgid_body` | msg id (8 BE) | `BodyValue` (with refcount) |
//! | `userclientmsgid_dedupe` | sender (8 BE) ++ client_msg_id | `DedupeValue` |
//! | `usertokenhash_device` | user (8 BE) ++ SHA-256 of the token (32) | device id (UTF-8) |
//! | `groupid_group` | group (8 BE) | `GroupValue` |
//! | `groupuser_member` | group (8 BE) ++ user (8 BE) | `MemberValue` (kept after leaving) |
//! | `usergroup_joined` | user (8 BE) ++ group (8 BE) | empty (current memberships) |
//! | `groupseq_msgid` | group (8 BE) ++ seq (8 BE) | msg id (8 BE): a large group's timeline |
//! | `userpeer_conv` | user (8 BE) ++ peer (8 BE) | empty: the user's 1:1 conversations (the index of `pair_conv`) |
//! | `pair_conv` | lower user (8 BE) ++ higher user (8 BE) | `PairConvValue` (1:1 conversation, both sides) |
//! | `userdevice_push` | user (8 BE) ++ device id | `PushTokenValue` |
//! | `userdevice_pushjob` | user (8 BE) ++ device id | `PushJobValue` (the outbox, one per device) |
//!
//! A user's max seq is the larger of its last queue entry and its
//! `userid_maxseq` record. A send does not write the record (its read and
//! insert were a sixth of the writer's instructions for a batch of 1:1
//! sends; see docs/performance.md); a Collect writes it before it removes
//! entries, so removing the top of a queue never lowers the max and a seq
//! is never handed out twice. The writer keeps the max seqs it has worked
//! out in memory (`tops.rs`), since finding a queue's last entry costs a
//! reverse scan.
//!
//! Every write takes the store's write gate shared; [`Store::backup`] takes
//! it exclusively, so a backup sees no write land while it copies.

mod accounts;
mod backup;
mod batch;
mod compact;
mod files;
mod layout;
mod manifest;
mod powerloss;
mod social;
#[cfg(test)]
mod tests;
mod tops;
pub(crate) mod verify;
mod wal;

use std::cell::Cell;
use std::ops::Bound;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use sled::Tree;

use super::records::{
    decode, decode_u64, pair_key, split_pair, split_user_seq, split_user_str, u64_key,
    user_seq_key, user_str_key, BodyValue, ConvValue, DedupeValue, DeviceValue, PairConvValue,
    TokenValue, UserValue,
};
use super::{
    msg_id_time_ms, BackupReport, CompactReport, Conversation, DeviceRecord, Durability, GroupId,
    GroupRecord, MemberRecord, MsgId, Page, PushJobRecord, Seq, SpaceUse, Store, StoreError,
    StoreStats, StoredMessage, TimelinePage, TokenRecord, UserId, UserRecord, WriteOp,
    WriteOutcome,
};
use files::SyncFiles;
use manifest::{Committed, Manifest};

/// The schema version this build reads and writes. Bump it when a key or
/// value layout changes incompatibly, and add the step to [`SledStore::migrate`].
///
/// Version 2 added the `usertokenhash_device` index; version 3 the group,
/// timeline and conversation trees and the new body fields (a version 2
/// store has none of them, so its migration only writes the number).
/// Version 4 stopped writing `userid_maxseq` on every send: a max seq is
/// the queue's top or the record, whichever is larger. A version 3 store
/// reads the same under that rule (its records are never below the top),
/// so its migration only writes the number; a version 3 build must refuse
/// a version 4 store, whose records may be below the top.
/// Version 5 keeps one conversation record per pair (`pair_conv`) instead
/// of one per user of it, and `userpeer_conv` only indexes them; see
/// [`SledStore::migrate_conversations`].
pub const SCHEMA_VERSION: u32 = 5;

const META_SCHEMA_VERSION: &[u8] = b"schema_version";
const META_MSGID_FLOOR: &[u8] = b"msgid_floor";
const META_NEXT_USER_ID: &[u8] = b"next_user_id";
const META_NEXT_GROUP_ID: &[u8] = b"next_group_id";
const META_READY_PROBE: &[u8] = b"ready_probe";

/// Tuning of the sled engine; the defaults suit a single pigeond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledOptions {
    /// Bytes of sled's page cache (sled's own default is 1 GiB, too much for
    /// a server that also holds many connections).
    pub cache_capacity_bytes: u64,
    /// How often sled's background flusher writes and fsyncs; it bounds the
    /// loss window of [`Durability::Buffered`].
    pub flush_every_ms: Option<u64>,
    /// Below this much free space on the data directory's filesystem, sends
    /// and new users are refused (retryable) before sled writes anything;
    /// below a quarter of it, every write is. sled 0.34 cannot recover from
    /// running out of space itself (every later write fails until restart),
    /// so the store stops short of it. 0 turns the guard off.
    pub min_free_bytes: u64,
    /// With `fsync` durability: how often sled is made durable behind the
    /// write-ahead log and the log's older segments deleted (see [`wal`]).
    /// It bounds the log a crash leaves to replay.
    pub checkpoint_every: Duration,
    /// Whether the write-ahead log writes with `O_DIRECT | O_DSYNC` into
    /// prepared files where the filesystem allows it (otherwise it appends
    /// and fdatasyncs); see [`wal`]. Off only to test the other way.
    pub direct_log: bool,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_capacity_bytes: 64 * 1024 * 1024,
            flush_every_ms: Some(500),
            min_free_bytes: 32 * 1024 * 1024,
            checkpoint_every: Duration::from_secs(1),
            direct_log: true,
        }
    }
}

/// The trees of one database, opened once.
struct Trees {
    meta: Tree,
    userid_user: Tree,
    username_userid: Tree,
    tokenhash_token: Tree,
    userdevice_device: Tree,
    userseq_msgid: Tree,
    userid_maxseq: Tree,
    msgid_body: Tree,
    userclientmsgid_dedupe: Tree,
    usertokenhash_device: Tree,
    groupid_group: Tree,
    groupuser_member: Tree,
    usergroup_joined: Tree,
    groupseq_msgid: Tree,
    userpeer_conv: Tree,
    userdevice_push: Tree,
    userdevice_pushjob: Tree,
    pair_conv: Tree,
}

impl Trees {
    fn open(db: &sled::Db) -> Result<Trees, StoreError> {
        let tree = |name: &str| db.open_tree(name).map_err(from_sled);
        Ok(Trees {
            meta: tree("meta")?,
            userid_user: tree("userid_user")?,
            username_userid: tree("username_userid")?,
            tokenhash_token: tree("tokenhash_token")?,
            userdevice_device: tree("userdevice_device")?,
            userseq_msgid: tree("userseq_msgid")?,
            userid_maxseq: tree("userid_maxseq")?,
            msgid_body: tree("msgid_body")?,
            userclientmsgid_dedupe: tree("userclientmsgid_dedupe")?,
            usertokenhash_device: tree("usertokenhash_device")?,
            groupid_group: tree("groupid_group")?,
            groupuser_member: tree("groupuser_member")?,
            usergroup_joined: tree("usergroup_joined")?,
            groupseq_msgid: tree("groupseq_msgid")?,
            userpeer_conv: tree("userpeer_conv")?,
            userdevice_push: tree("userdevice_push")?,
            userdevice_pushjob: tree("userdevice_pushjob")?,
            pair_conv: tree("pair_conv")?,
        })
    }
}

/// One open sled database: its trees, and the handles that make its flush
/// durable. A compaction opens a new one beside it and retires the old.
struct Engine {
    db: sled::Db,
    trees: Trees,
    files: SyncFiles,
    /// Which generation of the layout this is (see [`layout`]).
    generation: u64,
}

impl Engine {
    /// Opens sled in `dir` (a generation's directory) with `options`.
    fn open(
        dir: &Path,
        generation: u64,
        options: &SledOptions,
        created: bool,
    ) -> Result<Engine, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity_bytes)
            .flush_every_ms(options.flush_every_ms);
        let db = open_db(&config)?;
        let trees = Trees::open(&db)?;
        let files = SyncFiles::open(dir, created)?;
        Ok(Engine {
            db,
            trees,
            files,
            generation,
        })
    }

    /// Flushes sled's log, then fsyncs what `flush` does not (STORE-NOTES 2).
    fn fsync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(from_sled)?;
        self.files.fsync()
    }
}

/// The sled engine.
///
/// Single-writer assumption: every [`Store::apply`] call comes from one
/// thread (the service's committer). `apply` finds the entries and devices a
/// `Collect` looks at with range scans before its transaction (sled
/// transactions cannot scan) and re-reads each inside it; a concurrent
/// `apply` could add a device between the two and is therefore not allowed.
/// The other methods may be called from any thread.
pub struct SledStore {
    /// The open sled database; replaced (under the exclusive write gate)
    /// when [`Store::compact`] switches to a compacted copy. Writers take
    /// the gate before the engine, so no write lands in a retired one.
    /// Shared with the write-ahead log's checkpointer.
    engine: Arc<RwLock<Arc<Engine>>>,
    /// The data directory (the manifest, the lock, the layout pointer).
    path: PathBuf,
    /// How sled is opened (cache size, flusher), for a compacted copy.
    options: SledOptions,
    durability: Durability,
    /// The record of what the last sync made durable.
    manifest: Manifest,
    /// See [`SledOptions::min_free_bytes`].
    min_free_bytes: u64,
    /// Set by the first I/O error of a sled write or sync: sled 0.34 keeps
    /// failing after one, and its memory may hold writes the disk does not.
    failed: Arc<Mutex<Option<String>>>,
    /// With `fsync` durability, the write-ahead log that makes each applied
    /// batch durable (see [`wal`]); `None` otherwise.
    wal: Option<Mutex<wal::Wal>>,
    /// The log's counters (see [`Store::wal_totals`]), and the records
    /// replayed when the store was opened.
    wal_stats: Option<Arc<wal::WalStats>>,
    wal_replayed: u64,
    /// Max seqs as the writer last left them (see [`tops`]).
    tops: tops::Tops,
    /// The highest message id the last successful `sync` made durable (as
    /// far as the durability setting goes). Pulls and timelines stop below
    /// the first entry above it, so no device is shown, and moves its
    /// cursor past, a message a crash or power cut could still take back
    /// (and whose seq the next message would then reuse).
    visible_msg_id: std::sync::atomic::AtomicU64,
    /// Taken shared by every write and exclusively by a backup or a
    /// compaction.
    write_gate: RwLock<()>,
    /// Held for a whole compaction, so a second one (the collector's and an
    /// operator's at once) waits for the first instead of writing into the
    /// same new generation.
    compacting: Mutex<()>,
    /// Compactions done and the milliseconds writes waited for them, for
    /// metrics (read without waiting for a running compaction).
    compactions_done: std::sync::atomic::AtomicU64,
    compactions_paused_ms: std::sync::atomic::AtomicU64,
    /// Test only: the power-loss injector (see [`powerloss`]); `None`
    /// unless [`SledStore::with_powerloss_snapshots`] was called.
    powerloss: Option<powerloss::PowerLoss>,
    /// Held for the store's life: one process per data directory.
    _lock: std::fs::File,
}

impl SledStore {
    /// Opens (or creates) the store in `path` with [`SledOptions::default`].
    pub fn open(path: &Path, durability: Durability) -> Result<SledStore, StoreError> {
        Self::open_with(path, durability, &SledOptions::default())
    }

    /// Opens (or creates) the store in `path`. Removes an unfinished sled
    /// snapshot first, writes the schema version into a new store and
    /// refuses one written by an incompatible version.
    pub fn open_with(
        path: &Path,
        durability: Durability,
        options: &SledOptions,
    ) -> Result<SledStore, StoreError> {
        let (store, recorded) = Self::open_unchecked(path, durability, options)?;
        let found = store.committed()?;
        match recorded {
            manifest::Read::Found(recorded) => {
                if let Some(loss) = recorded.lost_by(&found) {
                    return Err(StoreError::Corrupt(format!(
                        "{loss}. sled opened {} without an error, so its log or a snapshot \
                         was damaged (it stops reading at the first bad record). Keep a copy of \
                         the directory, run `pigeond verify`, and restore the last backup",
                        path.display()
                    )));
                }
            }
            manifest::Read::Missing if found != Committed::fresh() => {
                tracing::warn!(
                    data_dir = %path.display(),
                    "the store has data but no {}: recording one now (a store from an \
                     older pigeond, or a restored backup)",
                    manifest::MANIFEST_FILE
                );
            }
            manifest::Read::Missing => {}
        }
        store.check_schema()?;
        // What sled recovered may sit only in the page cache (a crash under
        // `flush` durability): make it durable before the manifest vouches.
        store.fsync()?;
        store.record_committed(true)?;
        // Everything sled recovered is durable now.
        store.reveal(store.msg_id_floor()?);
        Ok(store)
    }

    /// Opens sled and the manifest without comparing them (verify reports
    /// instead of refusing). Returns what the manifest held before.
    fn open_unchecked(
        path: &Path,
        durability: Durability,
        options: &SledOptions,
    ) -> Result<(SledStore, manifest::Read), StoreError> {
        let created = !path.exists();
        let lock = files::lock_dir(path)?;
        let (generation, dir) = layout::current(path)?;
        layout::tidy(path, generation)?;
        files::remove_unfinished_snapshots(&dir)?;
        let recorded = manifest::read(path)?;
        if recorded != manifest::Read::Missing && !dir.join("db").exists() {
            return Err(StoreError::Corrupt(format!(
                "{} has a {} but no sled `db` file: the store's data is gone. \
                 Restore the last backup",
                path.display(),
                manifest::MANIFEST_FILE
            )));
        }
        let engine = Engine::open(&dir, generation, options, created)?;
        let recovered = wal::recover(path, &engine)?;
        let manifest = Manifest::open(path)?;
        let engine = Arc::new(RwLock::new(Arc::new(engine)));
        let failed = Arc::new(Mutex::new(None));
        let wal = match durability {
            Durability::Fsync => Some(Mutex::new(wal::Wal::start(
                path,
                recovered.next_lsn,
                options.checkpoint_every,
                options.direct_log,
                engine.clone(),
                failed.clone(),
            )?)),
            Durability::Flush | Durability::Buffered => None,
        };
        let wal_stats = wal
            .as_ref()
            .map(|w| w.lock().unwrap_or_else(|p| p.into_inner()).stats());
        let store = SledStore {
            engine,
            path: path.to_owned(),
            options: options.clone(),
            durability,
            manifest,
            min_free_bytes: options.min_free_bytes,
            failed,
            wal,
            wal_stats,
            wal_replayed: recovered.replayed,
            tops: tops::Tops::default(),
            visible_msg_id: std::sync::atomic::AtomicU64::new(0),
            write_gate: RwLock::new(()),
            compacting: Mutex::new(()),
            compactions_done: std::sync::atomic::AtomicU64::new(0),
            compactions_paused_ms: std::sync::atomic::AtomicU64::new(0),
            powerloss: None,
            _lock: lock,
        };
        Ok((store, recorded))
    }

    /// Test only (the `PIGEON_TEST_POWERLOSS_SNAPSHOT` hook): from now on,
    /// copy the data directory into `target` after every fsync, before
    /// anything it made durable is answered; see [`powerloss`]. Takes the
    /// first copy before it returns.
    pub fn with_powerloss_snapshots(mut self, target: &Path) -> Result<SledStore, StoreError> {
        let snapshots = Arc::new(powerloss::Snapshots::open(&self.path, target)?);
        self.fsync()?;
        snapshots.take()?;
        let engine = self.engine();
        let flusher = match (self.durability, self.options.flush_every_ms) {
            (Durability::Fsync, _) | (_, None) => None,
            (_, Some(ms)) => Some(powerloss::Flusher::start(
                engine.db.clone(),
                SyncFiles::open(&engine.files.path, false)?,
                snapshots.clone(),
                Duration::from_millis(ms),
            )?),
        };
        self.powerloss = Some(powerloss::PowerLoss {
            snapshots,
            _flusher: flusher,
        });
        Ok(self)
    }

    /// What the store holds of the values the manifest vouches for.
    fn committed(&self) -> Result<Committed, StoreError> {
        let e = self.engine();
        let next_user_id = match Self::read_u64(&e.trees.meta, META_NEXT_USER_ID, "next user id")? {
            0 => 1,
            id => id,
        };
        Ok(Committed {
            msgid_floor: self.msg_id_floor()?,
            next_user_id,
        })
    }

    /// Writes the manifest with what the store holds; call only after the
    /// store's files are synced as far as `durable` claims.
    fn record_committed(&self, durable: bool) -> Result<(), StoreError> {
        let committed = self.committed()?;
        self.manifest.record(committed, durable)
    }

    /// Reads the schema version, writing it (durably) into a new store.
    fn check_schema(&self) -> Result<(), StoreError> {
        let e = self.engine();
        let meta = &e.trees.meta;
        let Some(raw) = meta.get(META_SCHEMA_VERSION).map_err(from_sled)? else {
            if !meta.is_empty() {
                return Err(StoreError::Corrupt(
                    "meta has records but no schema version".into(),
                ));
            }
            meta.insert(META_SCHEMA_VERSION, &SCHEMA_VERSION.to_be_bytes())
                .map_err(from_sled)?;
            // A new store is made durable whatever the configured durability,
            // so that a crash never leaves a data directory without a version.
            return self.fsync();
        };
        let found: [u8; 4] = raw
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("schema version of {} bytes", raw.len())))?;
        self.migrate(u32::from_be_bytes(found))
    }

    /// Brings a store written by an older schema up to [`SCHEMA_VERSION`].
    ///
    /// Each step rewrites records idempotently and writes its new version
    /// into `meta` last (durably), so a crash mid-way re-runs it.
    fn migrate(&self, found: u32) -> Result<(), StoreError> {
        let e = self.engine();
        match found {
            SCHEMA_VERSION => Ok(()),
            1 => {
                let indexed = accounts::index_existing_tokens(&e.trees)?;
                tracing::info!(tokens = indexed, "indexed the tokens of every user");
                self.migrated_to(2)
            }
            // Groups and conversations start empty; bodies without the new
            // fields decode as 1:1 chat messages.
            2 => self.migrated_to(3),
            // A version 3 max seq record is never below the queue's top, so
            // it reads right under the version 4 rule.
            3 => self.migrated_to(4),
            4 => {
                let pairs = self.migrate_conversations()?;
                tracing::info!(pairs, "one conversation record per pair");
                self.migrated_to(5)
            }
            _ => Err(StoreError::SchemaVersion {
                found,
                expected: SCHEMA_VERSION,
            }),
        }
    }

    /// Records (durably) that the store is now at `version`, then goes on
    /// migrating from there.
    fn migrated_to(&self, version: u32) -> Result<(), StoreError> {
        self.engine()
            .trees
            .meta
            .insert(META_SCHEMA_VERSION, &version.to_be_bytes())
            .map_err(from_sled)?;
        self.fsync()?;
        tracing::info!("store migrated from schema {} to {version}", version - 1);
        self.migrate(version)
    }

    /// Schema 4 → 5: writes each pair's record from the two per-user
    /// records, then empties those (their keys stay as the index). Safe to
    /// re-run after a crash at any point before the version is written: a
    /// pair's record only ever grows (every field merged by `merge_conv`),
    /// and an emptied per-user record reads as all zeros, so running the
    /// first pass again over a half-emptied index changes nothing. Returns
    /// the number of pairs.
    fn migrate_conversations(&self) -> Result<u64, StoreError> {
        let e = self.engine();
        let t = &e.trees;
        let mut pairs = 0;
        for item in t.userpeer_conv.iter() {
            let (key, raw) = item.map_err(from_sled)?;
            let (user, peer) = split_pair(&key)?;
            let mine: ConvValue = decode("conversation", &raw)?;
            let conv_key = social::conv_key(user, peer);
            let mut pair = match t.pair_conv.get(conv_key).map_err(from_sled)? {
                Some(raw) => decode("conversation", &raw)?,
                None => {
                    pairs += 1;
                    PairConvValue::default()
                }
            };
            social::merge_conv(&mut pair, user, peer, &mine);
            t.pair_conv
                .insert(conv_key, prost::Message::encode_to_vec(&pair))
                .map_err(from_sled)?;
            // A one-sided pair (never written so) still gets both keys.
            let theirs = pair_key(peer, user);
            if t.userpeer_conv.get(theirs).map_err(from_sled)?.is_none() {
                t.userpeer_conv.insert(theirs, &[][..]).map_err(from_sled)?;
            }
        }
        self.fsync()?;
        for item in t.userpeer_conv.iter() {
            let (key, raw) = item.map_err(from_sled)?;
            if !raw.is_empty() {
                t.userpeer_conv.insert(key, &[][..]).map_err(from_sled)?;
            }
        }
        self.fsync()?;
        Ok(pairs)
    }

    /// Let pulls show messages up to `msg_id` (just made durable).
    fn reveal(&self, msg_id: MsgId) {
        self.visible_msg_id
            .fetch_max(msg_id, std::sync::atomic::Ordering::AcqRel);
    }

    /// The highest message id a pull may show: everything with buffered
    /// durability (which promises nothing), else what the last sync made
    /// durable.
    fn visible_msg_id(&self) -> MsgId {
        match self.durability {
            Durability::Buffered => MsgId::MAX,
            _ => self
                .visible_msg_id
                .load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// Refuses writes once sled has failed one (see `failed`).
    fn check_healthy(&self) -> Result<(), StoreError> {
        match self.failure() {
            Some(reason) => Err(StoreError::Io(format!(
                "the store stopped taking writes after a failed write ({reason}); \
                 pigeond must restart"
            ))),
            None => Ok(()),
        }
    }

    /// Remembers an I/O error of a write or sync as the store's failure.
    fn track<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Io(reason)) = &result {
            self.fail(reason);
        }
        result
    }

    /// Makes `reason` the store's failure (the first one stays): every
    /// later write is refused until pigeond restarts.
    fn fail(&self, reason: &str) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.is_none() {
            tracing::error!(error = %reason, "store write failed; refusing writes until restart");
            *failed = Some(reason.to_owned());
        }
    }

    /// Applies a record that is already on the disk in the log to sled.
    /// Any failure stops the store, I/O or not: sled would hold part of the
    /// record, and once a later record's lsn were in sled, recovery would
    /// never replay the rest. Stopped, the next start replays all of it.
    fn apply_logged(&self, trees: &Trees, record: &[u8]) -> Result<(), StoreError> {
        wal::apply_record(trees, record).inspect_err(|e| self.fail(&e.to_string()))
    }

    /// The free-space guard (see [`SledOptions::min_free_bytes`]): `grows`
    /// says the write stores new messages or users.
    fn check_space(&self, grows: bool) -> Result<(), StoreError> {
        let e = self.engine();
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let free = files::free_bytes(&e.files.path)?;
        let need = if grows {
            self.min_free_bytes
        } else {
            self.min_free_bytes / 4
        };
        if free < need {
            return Err(StoreError::Io(format!(
                "the data directory's filesystem has {free} bytes free, below the {need} \
                 bytes kept in reserve; writes resume when space is freed"
            )));
        }
        Ok(())
    }

    /// Makes what the engine holds durable by sled's own flush and fsyncs
    /// (the whole of `sync` without a write-ahead log, and the sync of the
    /// writes that do not go through it: accounts, tokens).
    fn sync_engine(&self) -> Result<(), StoreError> {
        let e = self.engine();
        self.check_healthy()?;
        // Read before the flush: the flush makes at least this durable.
        let committed = self.committed()?;
        match self.durability {
            Durability::Fsync => {}
            // Nothing is durable against power loss yet, so the manifest
            // must not claim it: the OS may write the manifest's page back
            // before sled's, and a power cut would then refuse a store
            // that lost only what `flush` may lose.
            Durability::Flush => {
                self.track(e.db.flush().map(drop).map_err(from_sled))?;
                self.reveal(committed.msgid_floor);
                return Ok(());
            }
            Durability::Buffered => return Ok(()),
        }
        self.track(e.fsync())?;
        self.made_durable(committed)
    }

    /// After an fsync that made `committed` durable: records it in the
    /// manifest, takes the power-loss test's snapshot, and lets pulls show it.
    fn made_durable(&self, committed: Committed) -> Result<(), StoreError> {
        self.track(self.manifest.record(committed, true))?;
        if let Some(injector) = &self.powerloss {
            self.track(injector.snapshots.take())?;
        }
        // Last: the power-loss test's snapshot of this durable state must
        // exist before any pull can show what it holds.
        self.reveal(committed.msgid_floor);
        Ok(())
    }

    /// Flushes and fsyncs the current engine (see [`Engine::fsync`]).
    fn fsync(&self) -> Result<(), StoreError> {
        self.engine().fsync()
    }

    /// The current engine. Writers must hold the write gate first.
    fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The shared side of the write gate; a poisoned gate only means a
    /// writer panicked, and the data is still sled's to vouch for.
    fn writing(&self) -> RwLockReadGuard<'_, ()> {
        self.write_gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads a u64 stored under `key` (0 if absent).
    fn read_u64(tree: &Tree, key: &[u8], what: &str) -> Result<u64, StoreError> {
        match tree.get(key).map_err(from_sled)? {
            Some(raw) => decode_u64(what, &raw),
            None => Ok(0),
        }
    }

    /// Up to `limit` entries of a queue or timeline range (keys: owner ++
    /// seq, values: msg id) with their bodies, stopping before the first
    /// entry no sync has made durable (see `visible_msg_id`). Returns the
    /// messages, whether durable entries follow, and the seq of the first
    /// entry held back.
    fn durable_page(
        &self,
        trees: &Trees,
        mut entries: sled::Iter,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool, Option<Seq>), StoreError> {
        let visible = self.visible_msg_id();
        let mut messages = Vec::new();
        for item in entries.by_ref().take(limit) {
            let (key, value) = item.map_err(from_sled)?;
            let seq = split_user_seq(&key)?.1;
            let msg_id = decode_u64("queue entry", &value)?;
            if msg_id > visible {
                return Ok((messages, false, Some(seq)));
            }
            messages.push(stored_message(trees, seq, msg_id)?);
        }
        let has_more = match entries.next().transpose().map_err(from_sled)? {
            Some((_, value)) => decode_u64("queue entry", &value)? <= visible,
            None => false,
        };
        Ok((messages, has_more, None))
    }
}

impl Drop for SledStore {
    /// A clean stop leaves no log to replay: sled is made durable and the
    /// segments removed. After a failure the log stays for the next start.
    fn drop(&mut self) {
        let Some(wal) = self.wal.take() else {
            return;
        };
        let wal = wal.into_inner().unwrap_or_else(|p| p.into_inner());
        if self.failure().is_some() {
            return;
        }
        if let Err(e) = wal.close(&self.engine()) {
            tracing::warn!(error = %e, "final checkpoint failed; the next start replays the log");
        }
    }
}

/// The stored message a queue entry at `seq` points at.
fn stored_message(trees: &Trees, seq: Seq, msg_id: MsgId) -> Result<StoredMessage, StoreError> {
    let Some(raw) = trees.msgid_body.get(u64_key(msg_id)).map_err(from_sled)? else {
        return Err(StoreError::Corrupt(format!(
            "queue entry {seq} has no body {msg_id}"
        )));
    };
    let body: BodyValue = decode("message body", &raw)?;
    social::stored(seq, msg_id, body)
}

impl Store for SledStore {
    fn apply(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        let _writing = self.writing();
        let e = self.engine();
        self.check_healthy()?;
        let grows = ops.iter().any(|op| op.msg_ids_needed() > 0);
        self.check_space(grows)?;
        let Some(wal) = &self.wal else {
            let applied = self.track(batch::apply(&e.trees, &self.tops, ops, None))?;
            self.tops.note(applied.max_seqs.into_iter());
            return Ok(applied.outcomes);
        };
        // Write-ahead: the record is durable before sled sees its writes
        // (see `batch::apply`).
        let mut wal = wal.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let applied = self.track(batch::apply(
            &e.trees,
            &self.tops,
            ops,
            Some(wal.next_lsn()),
        ))?;
        if applied.record.is_empty() {
            return Ok(applied.outcomes);
        }
        let worked = Instant::now();
        wal.append(&applied.record);
        self.track(wal.sync())?;
        let logged = Instant::now();
        self.apply_logged(&e.trees, &applied.record)?;
        self.tops.note(applied.max_seqs.into_iter());
        if let Some(stats) = &self.wal_stats {
            stats.add_batch(worked - started, logged - worked, logged.elapsed());
        }
        // The batch is durable and in sled: a failure to start the next
        // segment stops the writes after it, not this batch's answer.
        let _ = self.track(wal.rotate_if_due());
        Ok(applied.outcomes)
    }

    fn sync(&self) -> Result<(), StoreError> {
        match &self.wal {
            // `apply` made its record durable already.
            Some(_) => {
                self.check_healthy()?;
                let committed = self.committed()?;
                self.made_durable(committed)
            }
            None => self.sync_engine(),
        }
    }

    fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: u64,
    ) -> Result<Option<UserRecord>, StoreError> {
        let _writing = self.writing();
        let e = self.engine();
        self.check_healthy()?;
        self.check_space(true)?;
        let created = self.track(batch::create_user(
            &e.trees,
            username,
            password_hash,
            now_ms,
        ))?;
        if created.is_some() {
            self.sync_engine()?;
        }
        Ok(created)
    }

    fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let e = self.engine();
        let Some(raw) = e.trees.userid_user.get(u64_key(id)).map_err(from_sled)? else {
            return Ok(None);
        };
        Ok(Some(decode::<UserValue>("user", &raw)?.into_record(id)))
    }

    fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let e = self.engine();
        let Some(raw) = e.trees.username_userid.get(username).map_err(from_sled)? else {
            return Ok(None);
        };
        let id = decode_u64("username index", &raw)?;
        match self.user(id)? {
            Some(user) => Ok(Some(user)),
            None => Err(StoreError::Corrupt(format!(
                "username index points at missing user {id}"
            ))),
        }
    }

    fn put_token(&self, token_hash: &[u8; 32], token: &TokenRecord) -> Result<(), StoreError> {
        let _writing = self.writing();
        let e = self.engine();
        self.check_healthy()?;
        self.check_space(false)?;
        self.track(accounts::put_token(&e.trees, token_hash, token))?;
        self.sync_engine()
    }

    fn token(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let e = self.engine();
        let Some(raw) = e.trees.tokenhash_token.get(token_hash).map_err(from_sled)? else {
            return Ok(None);
        };
        Ok(Some(decode::<TokenValue>("token", &raw)?.into_record()))
    }

    fn delete_token(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        let _writing = self.writing();
        let e = self.engine();
        accounts::delete_token(&e.trees, token_hash)?;
        self.sync_engine()
    }

    fn devices(&self, user: UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        let e = self.engine();
        let mut devices = Vec::new();
        for item in e.trees.userdevice_device.scan_prefix(u64_key(user)) {
            let (key, raw) = item.map_err(from_sled)?;
            let (_, device_id) = split_user_str(&key)?;
            devices.push(decode::<DeviceValue>("device", &raw)?.into_record(device_id));
        }
        Ok(devices)
    }

    fn device(&self, user: UserId, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let e = self.engine();
        let key = user_str_key(user, device_id);
        let Some(raw) = e.trees.userdevice_device.get(key).map_err(from_sled)? else {
            return Ok(None);
        };
        Ok(Some(
            decode::<DeviceValue>("device", &raw)?.into_record(device_id.to_owned()),
        ))
    }

    fn max_seq(&self, user: UserId) -> Result<Seq, StoreError> {
        if let Some(seq) = self.tops.get(user) {
            return Ok(seq);
        }
        let e = self.engine();
        // The top first: a Collect writes the record before it removes
        // entries, so whichever of its writes this read misses, the other
        // read sees the max.
        let top = queue_top(&e.trees.userseq_msgid, user)?;
        let recorded = Self::read_u64(&e.trees.userid_maxseq, &u64_key(user), "max seq")?;
        Ok(top.max(recorded))
    }

    fn pull(&self, user: UserId, after_seq: Seq, limit: usize) -> Result<Page, StoreError> {
        let e = self.engine();
        let max_seq = self.max_seq(user)?;
        let Some(first) = after_seq.checked_add(1) else {
            return Ok(Page {
                messages: Vec::new(),
                max_seq,
                has_more: false,
            });
        };
        let range = user_seq_key(user, first)..=user_seq_key(user, Seq::MAX);
        let entries = e.trees.userseq_msgid.range(range);
        let (messages, has_more, held_back) = self.durable_page(&e.trees, entries, limit)?;
        Ok(Page {
            messages,
            // Not durable yet: the queue ends below it for now (the notify
            // after the sync brings the device back).
            max_seq: held_back.map_or(max_seq, |seq| seq - 1),
            has_more,
        })
    }

    fn group(&self, group: GroupId) -> Result<Option<GroupRecord>, StoreError> {
        let e = self.engine();
        social::group(&e.trees, group)
    }

    fn member(&self, group: GroupId, user: UserId) -> Result<Option<MemberRecord>, StoreError> {
        let e = self.engine();
        social::member(&e.trees, group, user)
    }

    fn members(&self, group: GroupId) -> Result<Vec<MemberRecord>, StoreError> {
        let e = self.engine();
        social::members(&e.trees, group)
    }

    fn members_page(
        &self,
        group: GroupId,
        after: UserId,
        limit: usize,
    ) -> Result<Vec<MemberRecord>, StoreError> {
        let e = self.engine();
        social::members_page(&e.trees, group, after, limit)
    }

    fn user_groups(&self, user: UserId) -> Result<Vec<GroupId>, StoreError> {
        let e = self.engine();
        social::user_groups(&e.trees, user)
    }

    fn timeline(
        &self,
        group: GroupId,
        after_seq: Seq,
        up_to: Seq,
        limit: usize,
    ) -> Result<TimelinePage, StoreError> {
        social::timeline(self, group, after_seq, up_to, limit)
    }

    fn conversations(&self, user: UserId) -> Result<Vec<Conversation>, StoreError> {
        let e = self.engine();
        social::conversations(&e.trees, user)
    }

    fn push_devices(&self, user: UserId) -> Result<Vec<String>, StoreError> {
        let e = self.engine();
        social::push_devices(&e.trees, user)
    }

    fn due_push_jobs(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<(Vec<PushJobRecord>, Option<u64>), StoreError> {
        let e = self.engine();
        social::due_push_jobs(&e.trees, now_ms, limit)
    }

    fn message(&self, msg_id: MsgId) -> Result<Option<StoredMessage>, StoreError> {
        let e = self.engine();
        let Some(raw) = e.trees.msgid_body.get(u64_key(msg_id)).map_err(from_sled)? else {
            return Ok(None);
        };
        social::stored(0, msg_id, decode("message body", &raw)?).map(Some)
    }

    fn msg_id_floor(&self) -> Result<MsgId, StoreError> {
        let e = self.engine();
        Self::read_u64(&e.trees.meta, META_MSGID_FLOOR, "msgid floor")
    }

    fn expire_dedupe(
        &self,
        older_than_ms: u64,
        resume: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(u64, Option<Vec<u8>>), StoreError> {
        let _writing = self.writing();
        let e = self.engine();
        let tree = &e.trees.userclientmsgid_dedupe;
        // `resume` is the last key scanned by the previous call.
        let start = match &resume {
            Some(key) => Bound::Excluded(key.clone()),
            None => Bound::Unbounded,
        };
        let mut records = tree.range::<Vec<u8>, _>((start, Bound::Unbounded));
        let mut last = resume;
        let mut deleted = 0;
        for item in records.by_ref().take(limit) {
            let (key, raw) = item.map_err(from_sled)?;
            let record: DedupeValue = decode("dedupe record", &raw)?;
            if msg_id_time_ms(record.msg_id) < older_than_ms {
                // Compare-and-swap: a send that replaced this record since the
                // scan read it keeps its fresh record.
                let swapped = tree.compare_and_swap(&key, Some(&raw), None::<&[u8]>);
                if swapped.map_err(from_sled)?.is_ok() {
                    deleted += 1;
                }
            }
            last = Some(key.to_vec());
        }
        let more = records.next().transpose().map_err(from_sled)?.is_some();
        Ok((
            deleted,
            if more {
                Some(last.unwrap_or_default())
            } else {
                None
            },
        ))
    }

    fn users_with_entries(&self, after: UserId, limit: usize) -> Result<Vec<UserId>, StoreError> {
        let e = self.engine();
        owners_after(&e.trees.userseq_msgid, after, limit)
    }

    fn groups_with_timeline(
        &self,
        after: GroupId,
        limit: usize,
    ) -> Result<Vec<GroupId>, StoreError> {
        let e = self.engine();
        owners_after(&e.trees.groupseq_msgid, after, limit)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let e = self.engine();
        // `len` walks the tree: fine for operators and tests, not a hot path.
        Ok(StoreStats {
            entries: e.trees.userseq_msgid.len() as u64,
            bodies: e.trees.msgid_body.len() as u64,
            disk_bytes: e.db.size_on_disk().map_err(from_sled)?,
        })
    }

    fn list_users(&self, after: UserId, limit: usize) -> Result<Vec<UserRecord>, StoreError> {
        let e = self.engine();
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut users = Vec::new();
        for item in e.trees.userid_user.range(u64_key(first)..).take(limit) {
            let (key, raw) = item.map_err(from_sled)?;
            let id = decode_u64("user key", &key)?;
            users.push(decode::<UserValue>("user", &raw)?.into_record(id));
        }
        Ok(users)
    }

    fn set_disabled(&self, user: UserId, disabled: bool) -> Result<bool, StoreError> {
        let _writing = self.writing();
        let e = self.engine();
        let found = accounts::update_user(&e.trees, user, |u| u.disabled = disabled)?;
        if found {
            self.sync_engine()?;
        }
        Ok(found)
    }

    fn set_password_hash(&self, user: UserId, password_hash: &str) -> Result<bool, StoreError> {
        let _writing = self.writing();
        let e = self.engine();
        let found = accounts::update_user(&e.trees, user, |u| {
            u.password_hash = password_hash.to_owned()
        })?;
        if found {
            self.sync_engine()?;
        }
        Ok(found)
    }

    fn delete_user_tokens(&self, user: UserId, device_id: Option<&str>) -> Result<u64, StoreError> {
        let _writing = self.writing();
        let e = self.engine();
        let deleted = accounts::delete_user_tokens(&e.trees, user, device_id)?;
        if deleted > 0 {
            self.sync_engine()?;
        }
        Ok(deleted)
    }

    fn backup(&self, target: &Path) -> Result<BackupReport, StoreError> {
        let _exclusive = self.write_gate.write().unwrap_or_else(|p| p.into_inner());
        let e = self.engine();
        backup::copy(&e.db, target)
    }

    fn space(&self, live_limit: u64) -> Result<SpaceUse, StoreError> {
        compact::space(&self.engine(), live_limit)
    }

    fn compact(&self) -> Result<CompactReport, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let _turn = self.compacting.lock().unwrap_or_else(|p| p.into_inner());
        let report = compact::compact(self)?;
        self.compactions_done.fetch_add(1, Relaxed);
        self.compactions_paused_ms
            .fetch_add(report.writes_paused_ms, Relaxed);
        Ok(report)
    }

    fn compaction_totals(&self) -> super::CompactionTotals {
        use std::sync::atomic::Ordering::Relaxed;
        super::CompactionTotals {
            count: self.compactions_done.load(Relaxed),
            writes_paused_ms: self.compactions_paused_ms.load(Relaxed),
        }
    }

    fn wal_totals(&self) -> super::WalTotals {
        use std::sync::atomic::Ordering::Relaxed;
        let mut totals = super::WalTotals {
            replayed_at_open: self.wal_replayed,
            ..Default::default()
        };
        if let Some(stats) = &self.wal_stats {
            totals.checkpoints = stats.checkpoints.load(Relaxed);
            totals.checkpoint_ms = stats.checkpoint_ms.load(Relaxed);
            totals.segment_bytes = stats.segment_bytes.load(Relaxed);
            totals.work_us = stats.work_us.load(Relaxed);
            totals.log_us = stats.log_us.load(Relaxed);
            totals.apply_us = stats.apply_us.load(Relaxed);
            totals.direct = stats.direct.load(Relaxed);
        }
        totals
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        let _writing = self.writing();
        let e = self.engine();
        self.check_healthy()?;
        // The probe writes nothing when sends are refused for space: its
        // marker would be the write that fills the disk.
        self.check_space(true)?;
        let now = crate::clock::now_ms();
        e.trees
            .meta
            .insert(META_READY_PROBE, &u64_key(now))
            .map(drop)
            .map_err(from_sled)
    }
}

/// Whether `dir` holds sled's files of a store, in either layout (see
/// [`layout`]).
pub fn holds_store(dir: &Path) -> bool {
    dir.join("db").exists() || dir.join(layout::POINTER_FILE).exists()
}

/// The highest seq in `user`'s queue, 0 if it is empty. A user's max seq
/// is the larger of this and its `userid_maxseq` record, which only a
/// Collect writes (see the module docs).
fn queue_top(queue: &Tree, user: UserId) -> Result<Seq, StoreError> {
    let range = user_seq_key(user, 0)..=user_seq_key(user, Seq::MAX);
    match queue.range(range).next_back() {
        Some(item) => {
            let (key, _) = item.map_err(from_sled)?;
            Ok(split_user_seq(&key)?.1)
        }
        None => Ok(0),
    }
}

/// The distinct first halves (user or group ids) of a tree keyed by two
/// u64s, above `after`, at most `limit`: one seek per owner, jumping to its
/// first key and then past its whole range.
fn owners_after(tree: &Tree, after: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
    let mut owners = Vec::new();
    let mut next = after.checked_add(1);
    while let Some(candidate) = next {
        if owners.len() >= limit {
            break;
        }
        let Some(item) = tree.range(user_seq_key(candidate, 0)..).next() else {
            break;
        };
        let (key, _) = item.map_err(from_sled)?;
        let (owner, _) = split_user_seq(&key)?;
        owners.push(owner);
        next = owner.checked_add(1);
    }
    Ok(owners)
}

/// Opens sled, waiting a little for its file lock. A `Db` dropped in this
/// process releases the lock only when sled's background threads let go of
/// it, a moment later, so a quick reopen (a restart inside one process, the
/// tests) would otherwise fail. Another process holding the store still
/// fails, after [`LOCK_WAIT`].
fn open_db(config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match open_catching_panics(config)? {
            Err(sled::Error::Io(e)) if is_lock_conflict(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(sled::Error::Corruption { .. }) => {
                return Err(StoreError::Corrupt(
                    "sled found a damaged record in its files (`conf`, `db` or a `snap.*` \
                     snapshot) and will not open them"
                        .into(),
                ))
            }
            result => return result.map_err(from_sled),
        }
    }
}

thread_local! {
    /// True while this thread runs sled code whose panics are reported as
    /// an error instead of by the panic hook (see [`catching_panics`]).
    static OPENING: Cell<bool> = const { Cell::new(false) };
}

/// sled 0.34.7 panics, rather than returning an error, on some damage to
/// its files (a truncated `db`, a flipped byte in an early segment: "tried
/// to serialize Uninitialized" while rewriting its snapshot). The panic is
/// turned into [`StoreError::Corrupt`] so that pigeond can say what is
/// wrong and exit, and the panic hook stays quiet for it.
fn open_catching_panics(config: &sled::Config) -> Result<sled::Result<sled::Db>, StoreError> {
    catching_panics(|| config.open()).map_err(|message| {
        StoreError::Corrupt(format!(
            "sled failed while reading its files ({message}): its log (`db`) or a snapshot \
             (`snap.*`) is damaged"
        ))
    })
}

/// Runs `f`, turning a panic into its message, with the panic hook quiet
/// for it. sled 0.34.7 also panics on reads of some damaged pages (a
/// failed assertion in `node.rs`), which `verify` must survive.
pub(crate) fn catching_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !OPENING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = OPENING.with(|o| o.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    OPENING.with(|o| o.set(was));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned())
    })
}

/// How long [`open_db`] waits for sled's lock.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// sled 0.34 reports a held lock only as this message in an `Other` error.
fn is_lock_conflict(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::Other
        && error.to_string().contains("could not acquire lock")
}

/// Maps a sled error: I/O stays retryable, everything else means the data
/// or the engine is not in a state this code can work with.
fn from_sled(error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(e) => StoreError::Io(e.to_string()),
        other => StoreError::Corrupt(other.to_string()),
    }
}
