//! `pigeond verify`: a full check of a stopped store, on a copy.
//!
//! sled rewrites parts of its files whenever it opens (the log tail, a new
//! snapshot), so verify never opens the data directory itself: it takes the
//! directory's lock (refusing a running pigeond), copies the files into a
//! scratch directory beside it, and opens and walks the copy. It reports
//! every problem it finds rather than stopping at the first. Owns the
//! cross-tree invariants; the encodings stay in `records`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::manifest::{self, Committed};
use super::social::conv_key;
use super::{
    catching_panics, files, from_sled, SledOptions, SledStore, META_MSGID_FLOOR,
    META_SCHEMA_VERSION,
};
use crate::store::records::{
    decode, decode_u64, pair_key, split_pair, split_user_seq, split_user_str, u64_key, BodyValue,
    DedupeValue, DeviceValue, PairConvValue, TokenValue, UserValue,
};
use crate::store::{Durability, StoreError};

/// Problems listed in full; beyond this only counted.
const MAX_LISTED: usize = 50;

/// What [`verify`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records read per tree, in walk order.
    pub records: Vec<(&'static str, u64)>,
    /// The first problems found, each naming what is wrong.
    pub problems: Vec<String>,
    /// Problems in all (may exceed `problems.len()`).
    pub problem_count: u64,
}

impl VerifyReport {
    /// The report as `pigeond verify` prints it.
    pub fn render(&self, dir: &Path) -> String {
        let mut out = format!("verify {}\n", dir.display());
        for (tree, n) in &self.records {
            out.push_str(&format!("  {tree}: {n} records\n"));
        }
        for problem in &self.problems {
            out.push_str(&format!("PROBLEM: {problem}\n"));
        }
        let unlisted = self.problem_count - self.problems.len() as u64;
        if unlisted > 0 {
            out.push_str(&format!("... and {unlisted} more problems\n"));
        }
        if self.is_clean() {
            out.push_str("ok: no problems found\n");
        }
        out
    }

    /// True if nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(text);
        }
    }
}

/// Checks the stopped store in `dir` (see the module doc). `Err` only when
/// the check itself could not run (no such directory, in use, no space for
/// the copy); damage is reported in the [`VerifyReport`].
pub fn verify(dir: &Path) -> Result<VerifyReport, StoreError> {
    if !super::holds_store(dir) && !dir.join(manifest::MANIFEST_FILE).exists() {
        return Err(StoreError::Io(format!(
            "{} holds no pigeon store (no `db`, no {})",
            dir.display(),
            manifest::MANIFEST_FILE
        )));
    }
    let lock = files::lock_dir(dir)?;
    let scratch = scratch_path(dir);
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(|e| io("cannot remove", &scratch, e))?;
    }
    let copied = copy_dir(dir, &scratch);
    drop(lock);
    let report = copied.map(|()| verify_copy(&scratch));
    if let Err(e) = fs::remove_dir_all(&scratch) {
        tracing::warn!(dir = %scratch.display(), error = %e, "cannot remove verify's copy");
    }
    report
}

fn verify_copy(copy: &Path) -> VerifyReport {
    let mut report = VerifyReport::default();
    let options = SledOptions {
        // Never refuse for space: verify writes nothing that matters.
        min_free_bytes: 0,
        ..SledOptions::default()
    };
    let (store, recorded) = match SledStore::open_unchecked(copy, Durability::Buffered, &options) {
        Ok(opened) => opened,
        Err(e) => {
            report.problem(format!("the store does not open: {e}"));
            return report;
        }
    };
    match (&recorded, store.committed()) {
        (manifest::Read::Found(recorded), Ok(found)) => {
            if let Some(loss) = recorded.lost_by(&found) {
                report.problem(loss);
            }
        }
        (manifest::Read::Missing, Ok(found)) if found != Committed::fresh() => {
            report.problem(format!(
                "no {}: nothing vouches that the store is complete",
                manifest::MANIFEST_FILE
            ))
        }
        (_, Err(e)) => report.problem(format!("meta: {e}")),
        _ => {}
    }
    walk(&store, &mut report);
    report
}

/// Walks every tree and checks each record and the links between them.
fn walk(store: &SledStore, report: &mut VerifyReport) {
    let engine = store.engine();
    let t = &engine.trees;
    let e = |e: StoreError| e.to_string();

    let floor = match t.meta.get(META_MSGID_FLOOR) {
        Ok(Some(raw)) => decode_u64("msgid floor", &raw).unwrap_or(u64::MAX),
        _ => 0,
    };
    if !matches!(t.meta.get(META_SCHEMA_VERSION), Ok(Some(_))) {
        report.problem("meta: no schema version".into());
    }
    check(report, "meta", &t.meta, &mut |_, _| Ok(()));

    let mut users = std::collections::HashSet::new();
    check(report, "userid_user", &t.userid_user, &mut |k, v| {
        let id = decode_u64("user key", k).map_err(e)?;
        decode::<UserValue>("user", v).map_err(e)?;
        users.insert(id);
        Ok(())
    });
    check(
        report,
        "username_userid",
        &t.username_userid,
        &mut |k, v| {
            let id = decode_u64("username index", v).map_err(e)?;
            if !users.contains(&id) {
                return Err(format!(
                    "{} points at missing user {id}",
                    String::from_utf8_lossy(k)
                ));
            }
            Ok(())
        },
    );
    check(
        report,
        "tokenhash_token",
        &t.tokenhash_token,
        &mut |k, v| {
            let token = decode::<TokenValue>("token", v).map_err(e)?;
            if k.len() != 32 {
                return Err(format!("token key of {} bytes", k.len()));
            }
            if !users.contains(&token.user_id) {
                return Err(format!("a token of missing user {}", token.user_id));
            }
            Ok(())
        },
    );
    let mut max_seqs = HashMap::new();
    check(report, "userid_maxseq", &t.userid_maxseq, &mut |k, v| {
        max_seqs.insert(
            decode_u64("max seq key", k).map_err(e)?,
            decode_u64("max seq", v).map_err(e)?,
        );
        Ok(())
    });
    let mut refs: HashMap<u64, u32> = HashMap::new();
    check(report, "userseq_msgid", &t.userseq_msgid, &mut |k, v| {
        let (user, seq) = split_user_seq(k).map_err(e)?;
        let msg_id = decode_u64("queue entry", v).map_err(e)?;
        *refs.entry(msg_id).or_default() += 1;
        // A max seq is the queue's top or its record, whichever is larger.
        let max = max_seqs.entry(user).or_insert(0);
        *max = (*max).max(seq);
        if msg_id > floor {
            return Err(format!(
                "entry {seq} of user {user} has message id {msg_id} above the floor {floor}"
            ));
        }
        match t.msgid_body.get(u64_key(msg_id)) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!(
                "entry {seq} of user {user}: body {msg_id} is missing"
            )),
            Err(err) => Err(format!("entry {seq} of user {user}: {}", from_sled(err))),
        }
    });
    check(
        report,
        "userdevice_device",
        &t.userdevice_device,
        &mut |k, v| {
            let (user, device) = split_user_str(k).map_err(e)?;
            let d = decode::<DeviceValue>("device", v).map_err(e)?;
            let max = max_seqs.get(&user).copied().unwrap_or(0);
            if d.acked_seq > max {
                return Err(format!(
                    "device {device} of user {user} acked {} above max seq {max}",
                    d.acked_seq
                ));
            }
            Ok(())
        },
    );
    check(report, "msgid_body", &t.msgid_body, &mut |k, v| {
        let msg_id = decode_u64("body key", k).map_err(e)?;
        let body = decode::<BodyValue>("message body", v).map_err(e)?;
        let found = refs.get(&msg_id).copied().unwrap_or(0);
        if body.refcount != found {
            return Err(format!(
                "body {msg_id} counts {} references, {found} entries point at it",
                body.refcount
            ));
        }
        Ok(())
    });
    check(
        report,
        "userclientmsgid_dedupe",
        &t.userclientmsgid_dedupe,
        &mut |k, v| {
            split_user_str(k).map_err(e)?;
            let d = decode::<DedupeValue>("dedupe record", v).map_err(e)?;
            if d.msg_id > floor {
                return Err(format!(
                    "dedupe record with message id {} above the floor {floor}",
                    d.msg_id
                ));
            }
            Ok(())
        },
    );
    check(report, "userpeer_conv", &t.userpeer_conv, &mut |k, v| {
        let (user, peer) = split_pair(k).map_err(e)?;
        if !v.is_empty() {
            return Err(format!("index key {user} → {peer} has a value"));
        }
        let has = |tree: &sled::Tree, key: &[u8]| tree.get(key).map(|v| v.is_some());
        match (
            has(&t.pair_conv, &conv_key(user, peer)),
            has(&t.userpeer_conv, &pair_key(peer, user)),
        ) {
            (Ok(true), Ok(true)) => Ok(()),
            (Ok(false), _) => Err(format!("{user} → {peer}: the pair has no record")),
            (_, Ok(false)) => Err(format!("{user} → {peer}: {peer} → {user} is missing")),
            (Err(err), _) | (_, Err(err)) => Err(format!("{user} → {peer}: {}", from_sled(err))),
        }
    });
    check(report, "pair_conv", &t.pair_conv, &mut |k, v| {
        let (low, high) = split_pair(k).map_err(e)?;
        let c = decode::<PairConvValue>("conversation", v).map_err(e)?;
        if low > high {
            return Err(format!("pair {low}, {high} is not in order"));
        }
        if c.low_read_seq.max(c.high_read_seq) > c.last_seq {
            return Err(format!(
                "pair {low}, {high}: read up to {} / {}, above the last message {}",
                c.low_read_seq, c.high_read_seq, c.last_seq
            ));
        }
        if c.last_msg_id > floor {
            return Err(format!(
                "pair {low}, {high}: last message id {} above the floor {floor}",
                c.last_msg_id
            ));
        }
        for (user, peer) in [(low, high), (high, low)] {
            match t.userpeer_conv.get(pair_key(user, peer)) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("pair {low}, {high} is not indexed for {user}")),
                Err(err) => return Err(format!("pair {low}, {high}: {}", from_sled(err))),
            }
        }
        Ok(())
    });
    check(
        report,
        "usertokenhash_device",
        &t.usertokenhash_device,
        &mut |k, v| {
            if k.len() != 8 + 32 {
                return Err(format!("key of {} bytes", k.len()));
            }
            std::str::from_utf8(v).map_err(|_| "device id is not UTF-8".to_owned())?;
            Ok(())
        },
    );
}

/// Checks one record (key, value); `Err` names the problem.
type RecordCheck<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), String> + 'a;

/// Reads every record of `tree`, handing each to `f`; a problem `f`
/// returns is reported under the tree's name.
fn check(
    report: &mut VerifyReport,
    name: &'static str,
    tree: &sled::Tree,
    f: &mut RecordCheck<'_>,
) {
    let mut n = 0u64;
    let walked = catching_panics(|| {
        for item in tree.iter() {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    report.problem(format!("{name}: cannot read: {}", from_sled(e)));
                    return;
                }
            };
            n += 1;
            if let Err(problem) = f(&key, &value) {
                report.problem(format!("{name}: {problem}"));
            }
        }
    });
    if let Err(message) = walked {
        report.problem(format!(
            "{name}: sled failed reading the tree after {n} records ({message}): a page is damaged"
        ));
    }
    report.records.push((name, n));
}

fn scratch_path(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    dir.with_file_name(format!(".{name}.verify-{}", std::process::id()))
}

fn io(what: &str, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {error}", path.display()))
}

/// Copies sled's files (the lock file aside) from `from` into a new `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(to).map_err(|e| io("cannot create", to, e))?;
    for entry in fs::read_dir(from).map_err(|e| io("cannot list", from, e))? {
        let entry = entry.map_err(|e| io("cannot list", from, e))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(|e| io("cannot stat", &source, e))?;
        if kind.is_dir() {
            copy_dir(&source, &target)?;
        } else if entry.file_name() != "pigeond.lock" {
            fs::copy(&source, &target).map_err(|e| io("cannot copy", &source, e))?;
        }
    }
    Ok(())
}
