//! The behaviour every [`Store`] engine must have, as one test suite.
//!
//! Owns the engine-neutral cases; knows no engine. An engine's tests provide
//! a [`StoreFixture`] (fresh, empty storage that can be reopened) and expand
//! [`store_contract_tests!`] with it, which makes one named `#[test]` per
//! case; the cases live in the submodules by topic. Engine-specific
//! behaviour (files, schema bytes) is tested beside the engine, not here.

use bytes::Bytes;

use super::{
    msg_id_time_ms, MsgId, NewMessage, Seq, Store, StoreStats, TokenRecord, UserId, WriteOp,
    WriteOutcome, MSG_ID_COUNTER_BITS,
};

mod accounts;
mod collect;
mod messages;

pub use accounts::*;
pub use collect::*;
pub use messages::*;

/// Empty storage for one test case, which an engine opens over.
pub trait StoreFixture {
    /// The engine under test.
    type Engine: Store;
    /// Opens the engine; after the previous one is dropped, a second call
    /// must see everything the first wrote.
    fn open(&mut self) -> Self::Engine;
}

/// Expands to one `#[test]` per contract case, each with a fresh fixture
/// made by evaluating `$fixture`.
macro_rules! store_contract_tests {
    ($fixture:expr) => {
        $crate::store::contract::store_contract_tests!(@cases $fixture;
            send_assigns_gapless_seqs_in_both_queues_with_one_body,
            note_to_self_gets_one_entry_and_one_reference,
            duplicate_client_msg_id_returns_first_answer_and_writes_nothing,
            a_reused_message_id_fails_the_batch_and_stores_nothing,
            expired_dedupe_record_does_not_dedupe,
            sends_to_one_user_in_one_batch_get_consecutive_seqs_in_op_order,
            refused_op_does_not_abort_the_batch,
            pull_pages_through_the_queue,
            ack_moves_forward_only_and_refuses_beyond_max,
            deferred_ack_moves_only_an_existing_device,
            touch_creates_then_updates_device,
            devices_are_listed_by_device_id,
            collect_stops_at_lowest_cursor_of_active_devices,
            collect_ignores_inactive_devices,
            collect_keeps_everything_without_an_active_device,
            collect_keeps_retained_history,
            collect_of_a_queue_wholly_retained_takes_nothing,
            collect_respects_limit_and_reports_more,
            collecting_the_top_keeps_the_max_seq,
            body_is_deleted_only_with_its_last_reference,
            create_user_assigns_ids_and_refuses_taken_names,
            tokens_are_put_read_and_deleted,
            msg_id_floor_rises_and_never_falls,
            expire_dedupe_resumes_until_done,
            users_with_entries_pages_by_user,
            everything_survives_reopen_and_seqs_are_never_reused,
            users_are_listed_in_id_order_by_page,
            user_flags_and_password_hash_change_and_persist,
            user_tokens_are_deleted_by_user_or_device,
            check_writable_succeeds_and_is_invisible,
            compaction_gives_space_back_and_keeps_every_live_record,
        );
    };
    (@cases $fixture:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                let mut fixture = $fixture;
                $crate::store::contract::$case(&mut fixture);
            }
        )+
    };
}
pub(crate) use store_contract_tests;

const CONTENT_TYPE: &str = "text/plain";

/// A message id made at `time_ms`, `n`-th in that millisecond.
pub fn msg_id(time_ms: u64, n: u64) -> MsgId {
    (time_ms << MSG_ID_COUNTER_BITS) | n
}

/// A Send op of `from` to `to` whose id (and client id) derive from `id`.
pub fn send(from: UserId, to: UserId, id: MsgId) -> WriteOp {
    send_keyed(from, to, id, &format!("c{id}"), 0)
}

/// A Send op with an explicit client message id and dedupe window.
pub fn send_keyed(from: UserId, to: UserId, id: MsgId, client_id: &str, since: u64) -> WriteOp {
    WriteOp::Send {
        message: NewMessage {
            msg_id: id,
            group: 0,
            from,
            from_device: "phone".into(),
            to,
            client_msg_id: client_id.into(),
            content_type: CONTENT_TYPE.into(),
            content: Bytes::from(format!("body {id}")),
        },
        dedupe_since_ms: since,
        push: Default::default(),
    }
}

fn ack(user: UserId, device: &str, seq: Seq, now_ms: u64) -> WriteOp {
    WriteOp::Ack {
        user,
        device_id: device.into(),
        seq,
        now_ms,
        if_present: false,
    }
}

fn touch(user: UserId, device: &str, platform: i32, now_ms: u64) -> WriteOp {
    WriteOp::Touch {
        user,
        device_id: device.into(),
        platform,
        now_ms,
    }
}

fn collect(user: UserId, active_since_ms: u64, retain_since_ms: u64, limit: usize) -> WriteOp {
    WriteOp::Collect {
        user,
        active_since_ms,
        retain_since_ms,
        limit,
    }
}

fn apply(store: &impl Store, ops: &[WriteOp]) -> Vec<WriteOutcome> {
    let outcomes = store.apply(ops).expect("apply");
    // Pulls show what a sync made durable (see `Store::pull`).
    store.sync().expect("sync");
    assert_eq!(outcomes.len(), ops.len(), "one outcome per op");
    outcomes
}

fn apply_one(store: &impl Store, op: WriteOp) -> WriteOutcome {
    apply(store, &[op]).remove(0)
}

/// (msg_id, sender_seq, recipient_seq, duplicate) of a Sent outcome.
fn sent(outcome: &WriteOutcome) -> (MsgId, Seq, Seq, bool) {
    match outcome {
        WriteOutcome::Sent {
            msg_id,
            sender_seq,
            recipient_seq,
            duplicate,
            ..
        } => (*msg_id, *sender_seq, *recipient_seq, *duplicate),
        other => panic!("expected Sent, got {other:?}"),
    }
}

fn collected(entries: u64, bodies: u64, more: bool) -> WriteOutcome {
    WriteOutcome::Collected {
        entries,
        bodies,
        more,
    }
}

fn seqs(store: &impl Store, user: UserId) -> Vec<Seq> {
    let page = store.pull(user, 0, usize::MAX).expect("pull");
    page.messages.iter().map(|m| m.seq).collect()
}

fn msg_ids(store: &impl Store, user: UserId) -> Vec<MsgId> {
    let page = store.pull(user, 0, usize::MAX).expect("pull");
    page.messages.iter().map(|m| m.msg_id).collect()
}

fn counts(store: &impl Store) -> (u64, u64) {
    let StoreStats {
        entries, bodies, ..
    } = store.stats().expect("stats");
    (entries, bodies)
}

/// Sends `n` messages from 1 to 2 at times 1000, 2000, ...; returns the ids.
fn fill(store: &impl Store, n: u64) -> Vec<MsgId> {
    let ids: Vec<MsgId> = (1..=n).map(|i| msg_id(1000 * i, 0)).collect();
    let ops: Vec<WriteOp> = ids.iter().map(|id| send(1, 2, *id)).collect();
    apply(store, &ops);
    ids
}
