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
