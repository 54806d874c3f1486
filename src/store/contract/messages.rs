//! Contract cases of the message path: send, dedupe, pull, ack.

use super::*;

/// Send to another user: gapless seqs per user, an entry in the recipient's
/// and the sender's queue, one body holding everything that was sent.
pub fn send_assigns_gapless_seqs_in_both_queues_with_one_body(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let (a, b, c) = (msg_id(10, 0), msg_id(10, 1), msg_id(11, 0));
    assert_eq!(sent(&apply_one(&store, send(1, 2, a))), (a, 1, 1, false));
    assert_eq!(sent(&apply_one(&store, send(1, 2, b))), (b, 2, 2, false));
    assert_eq!(sent(&apply_one(&store, send(2, 1, c))), (c, 3, 3, false));
    assert_eq!(seqs(&store, 1), [1, 2, 3]);
    assert_eq!(msg_ids(&store, 2), [a, b, c]);
    assert_eq!(
        (store.max_seq(1).unwrap(), store.max_seq(2).unwrap()),
        (3, 3)
    );
    assert_eq!(counts(&store), (6, 3));
    let first = &store.pull(2, 0, 1).unwrap().messages[0];
    assert_eq!(
        (first.from, first.to, first.from_device.as_str()),
        (1, 2, "phone")
    );
    assert_eq!(
        (first.client_msg_id.clone(), first.content_type.as_str()),
        (format!("c{a}"), CONTENT_TYPE)
    );
    assert_eq!(first.content, Bytes::from(format!("body {a}")));
}

/// A note to self is one entry, and its body goes with that one entry.
pub fn note_to_self_gets_one_entry_and_one_reference(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let id = msg_id(10, 0);
    assert_eq!(sent(&apply_one(&store, send(1, 1, id))), (id, 1, 1, false));
    assert_eq!(seqs(&store, 1), [1]);
    assert_eq!(counts(&store), (1, 1));
    apply_one(&store, ack(1, "phone", 1, 50));
    assert_eq!(
        apply_one(&store, collect(1, 0, u64::MAX, 10)),
        collected(1, 1, false)
    );
    assert_eq!(counts(&store), (0, 0));
}

/// A message id that is already stored (a broken id generator) fails the
/// whole batch and stores nothing, whether the first use is in an earlier
/// batch or the same one; an id below the floor that was never used is
/// stored like any other.
pub fn a_reused_message_id_fails_the_batch_and_stores_nothing(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let (a, b) = (msg_id(10, 0), msg_id(20, 0));
    apply_one(&store, send(1, 2, a));
    apply_one(&store, send(1, 2, b));
    let before = (counts(&store), seqs(&store, 1), seqs(&store, 3));

    let again = send_keyed(1, 3, a, "another", 0);
    assert!(store.apply(&[again]).is_err(), "id {a} is stored");
    let twice = [
        send_keyed(1, 3, msg_id(30, 0), "x", 0),
        send_keyed(1, 3, msg_id(30, 0), "y", 0),
    ];
    assert!(store.apply(&twice).is_err(), "the batch uses an id twice");
    assert_eq!((counts(&store), seqs(&store, 1), seqs(&store, 3)), before);

    // Out of order, never stored: taken.
    let late = msg_id(15, 0);
    assert_eq!(
        sent(&apply_one(&store, send(1, 3, late))),
        (late, 3, 1, false)
    );
    assert_eq!(msg_ids(&store, 3), [late]);
    assert_eq!(store.msg_id_floor().unwrap(), b);
}

/// A resend inside the window gets the first answer and stores nothing,
/// also when both sends are in one batch.
pub fn duplicate_client_msg_id_returns_first_answer_and_writes_nothing(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let (first, again, third) = (msg_id(10, 0), msg_id(20, 0), msg_id(30, 0));
    apply_one(&store, send_keyed(1, 2, first, "k", 0));
    let before = (
        counts(&store),
        store.max_seq(1).unwrap(),
        store.max_seq(2).unwrap(),
    );
    let outcome = apply_one(&store, send_keyed(1, 2, again, "k", 5));
    assert_eq!(sent(&outcome), (first, 1, 1, true));
    assert_eq!(
        (
            counts(&store),
            store.max_seq(1).unwrap(),
            store.max_seq(2).unwrap()
        ),
        before
    );

    let batch = apply(
        &store,
        &[
            send_keyed(1, 3, third, "j", 0),
            send_keyed(1, 3, third + 1, "j", 0),
        ],
    );
    assert_eq!(sent(&batch[0]), (third, 2, 1, false));
    assert_eq!(sent(&batch[1]), (third, 2, 1, true));
    assert_eq!(seqs(&store, 3), [1]);
}

/// A dedupe record older than the window is replaced by the new send.
pub fn expired_dedupe_record_does_not_dedupe(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let (old, new) = (msg_id(1000, 0), msg_id(3000, 0));
    apply_one(&store, send_keyed(1, 2, old, "k", 0));
    assert_eq!(
        sent(&apply_one(&store, send_keyed(1, 2, new, "k", 2000))),
        (new, 2, 2, false)
    );
    // The record now answers with the second message.
    let resend = apply_one(&store, send_keyed(1, 2, msg_id(3001, 0), "k", 2000));
    assert_eq!(sent(&resend), (new, 2, 2, true));
    assert_eq!(msg_ids(&store, 2), [old, new]);
}

/// Sends in one batch are stored in op order, seqs consecutive per user.
pub fn sends_to_one_user_in_one_batch_get_consecutive_seqs_in_op_order(fx: &mut impl StoreFixture) {
    let store = fx.open();
    apply_one(&store, send(3, 2, msg_id(5, 0)));
    let ids = [msg_id(10, 0), msg_id(10, 1), msg_id(10, 2), msg_id(10, 3)];
    let out = apply(
        &store,
        &[
            send(1, 2, ids[0]),
            send(3, 2, ids[1]),
            send(1, 2, ids[2]),
            send(2, 2, ids[3]),
            ack(2, "d", 5, 9),
        ],
    );
    let answers: Vec<_> = out[..4].iter().map(sent).collect();
    assert_eq!(
        answers,
        [
            (ids[0], 1, 2, false),
            (ids[1], 2, 3, false),
            (ids[2], 2, 4, false),
            (ids[3], 5, 5, false)
        ]
    );
    // An ack in the same batch sees the seqs the batch assigned.
    assert_eq!(out[4], WriteOutcome::Acked { acked_seq: 5 });
    assert_eq!(msg_ids(&store, 2)[1..], ids);
    assert_eq!(
        (
            store.max_seq(1).unwrap(),
            store.max_seq(2).unwrap(),
            store.max_seq(3).unwrap()
        ),
        (2, 5, 2)
    );
}

/// A refused ack leaves the other ops of its batch applied.
pub fn refused_op_does_not_abort_the_batch(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let out = apply(
        &store,
        &[
            send(1, 2, msg_id(1, 0)),
            ack(2, "d", 7, 5),
            send(1, 2, msg_id(1, 1)),
        ],
    );
    assert_eq!(out[1], WriteOutcome::AckBeyondMax { max_seq: 1 });
    assert_eq!(seqs(&store, 2), [1, 2]);
    assert!(
        store.device(2, "d").unwrap().is_none(),
        "a refused ack changes nothing"
    );
}

/// Pull returns pages above `after_seq` with max_seq and has_more.
pub fn pull_pages_through_the_queue(fx: &mut impl StoreFixture) {
    let store = fx.open();
    fill(&store, 5);
    let page_seqs = |after, limit| {
        let page = store.pull(2, after, limit).expect("pull");
        assert_eq!(page.max_seq, 5);
        (
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            page.has_more,
        )
    };
    assert_eq!(page_seqs(0, 2), (vec![1, 2], true));
    assert_eq!(page_seqs(2, 2), (vec![3, 4], true));
    assert_eq!(page_seqs(4, 2), (vec![5], false));
    assert_eq!(page_seqs(3, 2), (vec![4, 5], false));
    assert_eq!(page_seqs(3, 10), (vec![4, 5], false));
    assert_eq!(page_seqs(0, 0), (vec![], true));
    assert_eq!(page_seqs(5, 10), (vec![], false));
    assert_eq!(page_seqs(99, 10), (vec![], false));
    assert_eq!(page_seqs(u64::MAX, 10), (vec![], false));
    let unknown = store.pull(42, 0, 10).unwrap();
    assert_eq!(
        (unknown.messages.len(), unknown.max_seq, unknown.has_more),
        (0, 0, false)
    );
}

/// Cursors only move forward; an ack above max_seq is refused.
pub fn ack_moves_forward_only_and_refuses_beyond_max(fx: &mut impl StoreFixture) {
    let store = fx.open();
    fill(&store, 3);
    assert_eq!(
        apply_one(&store, ack(2, "a", 2, 100)),
        WriteOutcome::Acked { acked_seq: 2 }
    );
    assert_eq!(
        apply_one(&store, ack(2, "a", 1, 200)),
        WriteOutcome::Acked { acked_seq: 2 }
    );
    assert_eq!(
        apply_one(&store, ack(2, "a", 4, 300)),
        WriteOutcome::AckBeyondMax { max_seq: 3 }
    );
    let device = store
        .device(2, "a")
        .unwrap()
        .expect("ack creates the device");
    assert_eq!(
        (
            device.acked_seq,
            device.last_active_ms,
            device.created_at_ms
        ),
        (2, 200, 100)
    );
    assert_eq!(
        apply_one(&store, ack(2, "a", 3, 400)),
        WriteOutcome::Acked { acked_seq: 3 }
    );
    assert_eq!(
        apply_one(&store, ack(9, "a", 0, 400)),
        WriteOutcome::Acked { acked_seq: 0 }
    );
    assert_eq!(
        apply_one(&store, ack(9, "a", 1, 400)),
        WriteOutcome::AckBeyondMax { max_seq: 0 }
    );
}

/// A deferred ack (`if_present`) moves an existing device's cursor like any
/// ack, and leaves a missing (revoked) device missing.
pub fn deferred_ack_moves_only_an_existing_device(fx: &mut impl StoreFixture) {
    let store = fx.open();
    fill(&store, 3);
    let deferred = |device: &str, seq: Seq, now_ms: u64| WriteOp::Ack {
        user: 2,
        device_id: device.into(),
        seq,
        now_ms,
        if_present: true,
    };
    apply_one(&store, touch(2, "phone", 1, 100));
    assert_eq!(
        apply_one(&store, deferred("phone", 2, 200)),
        WriteOutcome::Acked { acked_seq: 2 }
    );
    let phone = store.device(2, "phone").unwrap().expect("still there");
    assert_eq!((phone.acked_seq, phone.last_active_ms), (2, 200));
    assert_eq!(
        apply_one(&store, deferred("gone", 3, 300)),
        WriteOutcome::Acked { acked_seq: 0 }
    );
    assert!(store.device(2, "gone").unwrap().is_none(), "not created");
    assert_eq!(
        apply_one(&store, deferred("phone", 4, 300)),
        WriteOutcome::AckBeyondMax { max_seq: 3 }
    );
}
