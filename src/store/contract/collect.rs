//! Contract cases of devices and garbage collection.

use super::*;

/// Touch makes a device at cursor 0, then updates platform and activity.
pub fn touch_creates_then_updates_device(fx: &mut impl StoreFixture) {
    let store = fx.open();
    fill(&store, 2);
    assert_eq!(
        apply_one(&store, touch(2, "tab", 3, 100)),
        WriteOutcome::Touched { acked_seq: 0 }
    );
    apply_one(&store, ack(2, "tab", 2, 150));
    assert_eq!(
        apply_one(&store, touch(2, "tab", 4, 200)),
        WriteOutcome::Touched { acked_seq: 2 }
    );
    let device = store.device(2, "tab").unwrap().expect("device");
    assert_eq!(device.device_id, "tab");
    assert_eq!(
        (
            device.platform,
            device.created_at_ms,
            device.last_active_ms,
            device.acked_seq
        ),
        (4, 100, 200, 2)
    );
    assert!(store.device(2, "other").unwrap().is_none());
    assert!(store.device(3, "tab").unwrap().is_none());
}

/// A user's devices come back ordered by id, and only that user's.
pub fn devices_are_listed_by_device_id(fx: &mut impl StoreFixture) {
    let store = fx.open();
    apply(
        &store,
        &[
            touch(1, "b", 1, 1),
            touch(1, "a", 2, 1),
            touch(2, "x", 1, 1),
            touch(1, "c", 3, 1),
        ],
    );
    let ids: Vec<String> = store
        .devices(1)
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(store.devices(2).unwrap().len(), 1);
    assert!(store.devices(3).unwrap().is_empty());
}

/// Collect stops at the lowest cursor of the active devices, counting a
/// device made earlier in the same batch.
pub fn collect_stops_at_lowest_cursor_of_active_devices(fx: &mut impl StoreFixture) {
    let store = fx.open();
    fill(&store, 5);
    apply(&store, &[ack(2, "a", 4, 5000), ack(2, "b", 2, 5000)]);
    let out = apply(
        &store,
        &[touch(2, "new", 1, 5000), collect(2, 4000, u64::MAX, 100)],
    );
    assert_eq!(
        out[1],
        collected(0, 0, false),
        "the new device holds everything"
    );
    apply_one(&store, ack(2, "new", 5, 5000));
    // Bodies stay: the sender's queue still references them.
    assert_eq!(
        apply_one(&store, collect(2, 4000, u64::MAX, 100)),
        collected(2, 0, false)
    );
    assert_eq!(seqs(&store, 2), [3, 4, 5]);
    assert_eq!(store.max_seq(2).unwrap(), 5);
}

/// A device silent since before `active_since_ms` does not hold the queue.
pub fn collect_ignores_inactive_devices(fx: &mut impl StoreFixture) {
    let store = fx.open();
    fill(&store, 5);
    apply(&store, &[touch(2, "old", 1, 1000), ack(2, "a", 4, 5000)]);
    assert_eq!(
        apply_one(&store, collect(2, 4000, u64::MAX, 100)),
        collected(4, 0, false)
    );
    assert_eq!(seqs(&store, 2), [5]);
}

/// With no active device (or none at all), nothing is deleted.
pub fn collect_keeps_everything_without_an_active_device(fx: &mut impl StoreFixture) {
    let store = fx.open();
    fill(&store, 3);
    assert_eq!(
        apply_one(&store, collect(2, 0, u64::MAX, 100)),
        collected(0, 0, false)
    );
    apply_one(&store, ack(2, "a", 3, 1000));
    assert_eq!(
        apply_one(&store, collect(2, 2000, u64::MAX, 100)),
        collected(0, 0, false)
    );
    assert_eq!(seqs(&store, 2), [1, 2, 3]);
}

/// Entries whose message is at or after `retain_since_ms` stay.
pub fn collect_keeps_retained_history(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let ids = fill(&store, 4);
    apply_one(&store, ack(2, "a", 4, 9000));
    assert_eq!(msg_id_time_ms(ids[2]), 3000);
    assert_eq!(
        apply_one(&store, collect(2, 0, 3000, 100)),
        collected(2, 0, false)
    );
    assert_eq!(seqs(&store, 2), [3, 4]);
}

/// A queue whose oldest entry is within the retention period gives nothing
/// back, whatever the cursors say and whatever else its batch does; once
/// the cut-off passes, the same queue is collected as usual.
pub fn collect_of_a_queue_wholly_retained_takes_nothing(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let ids = fill(&store, 3);
    apply_one(&store, ack(2, "a", 3, 9000));
    let batch = apply(
        &store,
        &[
            touch(2, "b", 3, 9100),
            ack(2, "b", 3, 9100),
            collect(2, 0, msg_id_time_ms(ids[0]), 100),
            send(1, 2, msg_id(9200, 0)),
            collect(2, 0, msg_id_time_ms(ids[0]), 100),
        ],
    );
    assert_eq!(batch[2], collected(0, 0, false));
    assert_eq!(batch[4], collected(0, 0, false));
    assert_eq!(seqs(&store, 2), [1, 2, 3, 4]);
    // The first two are older than the cut-off now; 3 and 4 are not. (The
    // bodies stay: the sender's queue holds them too.)
    assert_eq!(
        apply_one(&store, collect(2, 0, msg_id_time_ms(ids[2]), 100)),
        collected(2, 0, false)
    );
    assert_eq!(seqs(&store, 2), [3, 4]);
}

/// At most `limit` entries go per op; `more` says whether some remain.
pub fn collect_respects_limit_and_reports_more(fx: &mut impl StoreFixture) {
    let store = fx.open();
    fill(&store, 5);
    apply_one(&store, ack(2, "a", 5, 9000));
    assert_eq!(
        apply_one(&store, collect(2, 0, u64::MAX, 0)),
        collected(0, 0, true)
    );
    assert_eq!(
        apply_one(&store, collect(2, 0, u64::MAX, 2)),
        collected(2, 0, true)
    );
    // Two Collects of one user in one batch share the queue.
    let out = apply(
        &store,
        &[collect(2, 0, u64::MAX, 1), collect(2, 0, u64::MAX, 1)],
    );
    assert_eq!(out, [collected(1, 0, true), collected(1, 0, true)]);
    assert_eq!(
        apply_one(&store, collect(2, 0, u64::MAX, 1)),
        collected(1, 0, false)
    );
    assert_eq!(
        apply_one(&store, collect(2, 0, u64::MAX, 1)),
        collected(0, 0, false)
    );
    assert!(seqs(&store, 2).is_empty());
}

/// Collecting a queue's top, alone or in a batch with sends to the same
/// user, never lowers its max seq, before a reopen or after: the next send
/// takes the next seq.
pub fn collecting_the_top_keeps_the_max_seq(fx: &mut impl StoreFixture) {
    let store = fx.open();
    fill(&store, 2);
    // Collect to empty, then a send, in one batch.
    let out = apply(
        &store,
        &[
            ack(2, "tab", 2, 9000),
            collect(2, 0, u64::MAX, 10),
            send(1, 2, msg_id(3000, 0)),
        ],
    );
    assert_eq!(out[1], collected(2, 0, false));
    assert_eq!(sent(&out[2]), (msg_id(3000, 0), 3, 3, false));
    // A send, then everything collected, in one batch.
    let out = apply(
        &store,
        &[
            send(1, 2, msg_id(3000, 1)),
            ack(2, "tab", 4, 9000),
            collect(2, 0, u64::MAX, 10),
        ],
    );
    assert_eq!(sent(&out[0]), (msg_id(3000, 1), 4, 4, false));
    assert_eq!(out[2], collected(2, 0, false));
    assert!(seqs(&store, 2).is_empty());
    assert_eq!(store.max_seq(2).unwrap(), 4);
    store.sync().unwrap();
    drop(store);

    let store = fx.open();
    assert_eq!(store.max_seq(2).unwrap(), 4);
    assert_eq!(
        sent(&apply_one(&store, send(1, 2, msg_id(3000, 2)))),
        (msg_id(3000, 2), 5, 5, false)
    );
    assert_eq!(seqs(&store, 2), [5]);
}

/// The sender collecting its copy leaves the body for the recipient.
pub fn body_is_deleted_only_with_its_last_reference(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let id = msg_id(1000, 0);
    apply_one(&store, send(1, 2, id));
    apply_one(&store, ack(1, "phone", 1, 5000));
    assert_eq!(
        apply_one(&store, collect(1, 0, u64::MAX, 10)),
        collected(1, 0, false)
    );
    assert_eq!(counts(&store), (1, 1));
    assert_eq!(
        msg_ids(&store, 2),
        [id],
        "the recipient still reads the body"
    );
    apply_one(&store, ack(2, "tab", 1, 5000));
    assert_eq!(
        apply_one(&store, collect(2, 0, u64::MAX, 10)),
        collected(1, 1, false)
    );
    assert_eq!(counts(&store), (0, 0));
}

/// After a queue is acked and collected, a compaction gives the space
/// back, keeps every live record (users, tokens, cursors, max seqs, the
/// entries still queued) and the store goes on, across a reopen, with
/// seqs continuing where they were.
pub fn compaction_gives_space_back_and_keeps_every_live_record(fx: &mut impl StoreFixture) {
    let store = fx.open();
    store.create_user("ann", "h", 1).unwrap().expect("ann");
    let token = TokenRecord {
        user_id: 1,
        device_id: "phone".into(),
        expires_at_ms: 7,
    };
    store.put_token(&[9; 32], &token).unwrap();
    // Churn: 2,000 messages queued, then acked and collected on both sides.
    for round in 0..20u64 {
        let ops: Vec<WriteOp> = (0..100)
            .map(|i| send(1, 2, msg_id(1000 + round * 100 + i, 0)))
            .collect();
        apply(&store, &ops);
    }
    apply(
        &store,
        &[
            ack(1, "phone", 2000, 9_000_000),
            ack(2, "tab", 1999, 9_000_000),
            collect(1, 0, u64::MAX, 10_000),
            collect(2, 0, u64::MAX, 10_000),
        ],
    );
    let kept = msg_ids(&store, 2);
    assert_eq!(kept.len(), 1, "the unacked entry stays");
    let before = store.space(u64::MAX).unwrap();
    let live = before.live_bytes.expect("counted without a limit");
    assert!(live < before.disk_bytes, "{before:?}");
    assert_eq!(
        store.space(0).unwrap().live_bytes,
        None,
        "stops at the limit"
    );

    let report = store.compact().unwrap();
    // sled's background flusher may have written since `before`.
    assert!(report.disk_before >= before.disk_bytes / 2, "{report:?}");
    assert_eq!(report.live_bytes, live, "{report:?}");
    assert!(
        report.disk_after < report.disk_before,
        "no space given back: {report:?}"
    );
    assert_eq!(store.space(u64::MAX).unwrap().live_bytes, Some(live));
    assert_eq!(msg_ids(&store, 2), kept);
    assert_eq!(counts(&store), (1, 1));
    // Writes go on in the compacted store, seqs continuing.
    let next = sent(&apply_one(&store, send(1, 2, msg_id(9_000_001, 0))));
    assert_eq!((next.1, next.2), (2001, 2001));
    let again = store.compact().unwrap();
    assert!(again.records >= report.records, "{again:?}");
    drop(store);

    let store = fx.open();
    assert_eq!(store.user_by_name("ann").unwrap().map(|u| u.id), Some(1));
    assert_eq!(store.token(&[9; 32]).unwrap(), Some(token));
    assert_eq!(
        store.device(2, "tab").unwrap().map(|d| d.acked_seq),
        Some(1999)
    );
    assert_eq!(
        (store.max_seq(1).unwrap(), store.max_seq(2).unwrap()),
        (2001, 2001)
    );
    assert_eq!(seqs(&store, 2), [2000, 2001]);
}
