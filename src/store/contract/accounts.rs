//! Contract cases of users, tokens, the id floor, the background sweeps
//! and persistence.

use super::*;

/// Ids start at 1 and count up; a taken name is refused without using an id.
pub fn create_user_assigns_ids_and_refuses_taken_names(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let alice = store
        .create_user("alice", "hash-a", 10)
        .unwrap()
        .expect("alice");
    assert_eq!(
        (
            alice.id,
            alice.username.as_str(),
            alice.password_hash.as_str()
        ),
        (1, "alice", "hash-a")
    );
    assert_eq!((alice.created_at_ms, alice.disabled), (10, false));
    assert_eq!(
        store
            .create_user("bob", "hash-b", 11)
            .unwrap()
            .expect("bob")
            .id,
        2
    );
    assert!(store.create_user("alice", "other", 12).unwrap().is_none());
    assert_eq!(
        store
            .create_user("carol", "hash-c", 13)
            .unwrap()
            .expect("carol")
            .id,
        3
    );
    assert_eq!(store.user(1).unwrap(), Some(alice.clone()));
    assert_eq!(store.user_by_name("alice").unwrap(), Some(alice));
    assert_eq!(store.user_by_name("bob").unwrap().map(|u| u.id), Some(2));
    assert!(store.user(99).unwrap().is_none());
    assert!(store.user_by_name("zed").unwrap().is_none());
}

/// Tokens are stored under their hash, replaced, and deleted.
pub fn tokens_are_put_read_and_deleted(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let (hash, other) = ([7u8; 32], [8u8; 32]);
    let token = TokenRecord {
        user_id: 1,
        device_id: "phone".into(),
        expires_at_ms: 99,
    };
    store.put_token(&hash, &token).unwrap();
    assert_eq!(store.token(&hash).unwrap(), Some(token.clone()));
    assert!(store.token(&other).unwrap().is_none());
    let renewed = TokenRecord {
        expires_at_ms: 199,
        ..token
    };
    store.put_token(&hash, &renewed).unwrap();
    assert_eq!(store.token(&hash).unwrap(), Some(renewed));
    store.delete_token(&hash).unwrap();
    assert!(store.token(&hash).unwrap().is_none());
    store.delete_token(&other).unwrap();
}

/// The floor is the largest id ever stored.
pub fn msg_id_floor_rises_and_never_falls(fx: &mut impl StoreFixture) {
    let store = fx.open();
    assert_eq!(store.msg_id_floor().unwrap(), 0);
    apply(
        &store,
        &[
            send(1, 2, msg_id(10, 0)),
            send(1, 2, msg_id(12, 0)),
            send(1, 2, msg_id(11, 0)),
        ],
    );
    assert_eq!(store.msg_id_floor().unwrap(), msg_id(12, 0));
    apply_one(&store, send(1, 2, msg_id(5, 0)));
    assert_eq!(store.msg_id_floor().unwrap(), msg_id(12, 0));
    apply_one(&store, ack(2, "a", 1, 1));
    assert_eq!(store.msg_id_floor().unwrap(), msg_id(12, 0));
}

/// Expiry runs in resumable steps and deletes only old records.
pub fn expire_dedupe_resumes_until_done(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let ops: Vec<WriteOp> = (1..=5)
        .map(|i| send_keyed(1 + i % 2, 3, msg_id(1000 * i, 0), &format!("k{i}"), 0))
        .collect();
    apply(&store, &ops);
    let (mut deleted, mut resume, mut calls) = (0, None, 0);
    loop {
        let (n, next) = store.expire_dedupe(3500, resume, 2).unwrap();
        deleted += n;
        calls += 1;
        assert!(calls <= 4, "the scan must end");
        let Some(next) = next else { break };
        resume = Some(next);
    }
    assert_eq!(deleted, 3);
    // k1 (time 1000) was expired: a resend is a new message; k4 is not.
    assert!(
        !sent(&apply_one(
            &store,
            send_keyed(2, 3, msg_id(9000, 0), "k1", 0)
        ))
        .3
    );
    assert!(
        sent(&apply_one(
            &store,
            send_keyed(1, 3, msg_id(9000, 1), "k4", 0)
        ))
        .3
    );
    assert_eq!(store.expire_dedupe(0, None, 100).unwrap(), (0, None));
}

/// The collector's sweep finds users with entries in id order, paged.
pub fn users_with_entries_pages_by_user(fx: &mut impl StoreFixture) {
    let store = fx.open();
    assert!(store.users_with_entries(0, 10).unwrap().is_empty());
    apply(
        &store,
        &[
            send(1, 2, msg_id(1, 0)),
            send(1, 5, msg_id(1, 1)),
            send(1, 7, msg_id(1, 2)),
            send(1, 7, msg_id(1, 3)),
        ],
    );
    assert_eq!(store.users_with_entries(0, 10).unwrap(), [1, 2, 5, 7]);
    assert_eq!(store.users_with_entries(2, 2).unwrap(), [5, 7]);
    assert_eq!(store.users_with_entries(1, 1).unwrap(), [2]);
    assert!(store.users_with_entries(7, 10).unwrap().is_empty());
    assert!(store.users_with_entries(u64::MAX, 10).unwrap().is_empty());
    assert!(store.users_with_entries(0, 0).unwrap().is_empty());
    apply(&store, &[ack(5, "a", 1, 10), collect(5, 0, u64::MAX, 10)]);
    assert_eq!(store.users_with_entries(0, 10).unwrap(), [1, 2, 7]);
}

/// Users, entries, cursors, max seqs and the floor survive a reopen; a
/// queue emptied by collection continues above its old max seq.
pub fn everything_survives_reopen_and_seqs_are_never_reused(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let user = store.create_user("alice", "h", 1).unwrap().expect("alice");
    store
        .put_token(
            &[1; 32],
            &TokenRecord {
                user_id: 1,
                device_id: "d".into(),
                expires_at_ms: 5,
            },
        )
        .unwrap();
    let ids = fill(&store, 3);
    apply(
        &store,
        &[
            ack(1, "phone", 3, 9000),
            collect(1, 0, u64::MAX, 10),
            ack(2, "tab", 1, 9000),
        ],
    );
    assert!(seqs(&store, 1).is_empty());
    store.sync().unwrap();
    let stats = counts(&store);
    drop(store);

    let store = fx.open();
    assert_eq!(store.user(1).unwrap(), Some(user));
    assert_eq!(store.user_by_name("alice").unwrap().map(|u| u.id), Some(1));
    assert!(store.token(&[1; 32]).unwrap().is_some());
    assert_eq!(msg_ids(&store, 2), ids);
    assert_eq!(counts(&store), stats);
    assert_eq!(
        store.device(2, "tab").unwrap().map(|d| d.acked_seq),
        Some(1)
    );
    assert_eq!(
        (store.max_seq(1).unwrap(), store.max_seq(2).unwrap()),
        (3, 3)
    );
    assert_eq!(store.msg_id_floor().unwrap(), ids[2]);
    let next = msg_id(9000, 0);
    assert_eq!(
        sent(&apply_one(&store, send(1, 2, next))),
        (next, 4, 4, false)
    );
    assert_eq!(seqs(&store, 1), [4]);
    assert_eq!(
        store.create_user("bob", "h", 2).unwrap().map(|u| u.id),
        Some(2)
    );
}

/// The admin's listing pages through users in id order.
pub fn users_are_listed_in_id_order_by_page(fx: &mut impl StoreFixture) {
    let store = fx.open();
    assert!(store.list_users(0, 10).unwrap().is_empty());
    for name in ["ann", "bob", "cat", "dan"] {
        store.create_user(name, "h", 1).unwrap().expect(name);
    }
    let names = |users: Vec<crate::store::UserRecord>| -> Vec<String> {
        users.into_iter().map(|u| u.username).collect()
    };
    assert_eq!(names(store.list_users(0, 2).unwrap()), ["ann", "bob"]);
    assert_eq!(names(store.list_users(2, 10).unwrap()), ["cat", "dan"]);
    assert!(store.list_users(4, 10).unwrap().is_empty());
    assert!(store.list_users(u64::MAX, 10).unwrap().is_empty());
    assert!(store.list_users(0, 0).unwrap().is_empty());
}

/// Disabling, enabling and a new password hash change only that user and
/// survive a reopen; an unknown user is reported, not created.
pub fn user_flags_and_password_hash_change_and_persist(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let ann = store.create_user("ann", "old", 1).unwrap().expect("ann");
    let bob = store.create_user("bob", "bobs", 1).unwrap().expect("bob");
    assert!(store.set_disabled(ann.id, true).unwrap());
    assert!(store.set_password_hash(ann.id, "new").unwrap());
    assert!(!store.set_disabled(99, true).unwrap());
    assert!(!store.set_password_hash(99, "x").unwrap());
    assert!(store.user(99).unwrap().is_none());
    drop(store);

    let store = fx.open();
    let changed = store.user_by_name("ann").unwrap().expect("ann");
    assert_eq!(
        (changed.disabled, changed.password_hash.as_str()),
        (true, "new")
    );
    assert_eq!(store.user(bob.id).unwrap(), Some(bob));
    assert!(store.set_disabled(ann.id, false).unwrap());
    assert!(!store.user(ann.id).unwrap().expect("ann").disabled);
}

/// Revoking by user removes every token of that user; by device, only that
/// device's; other users keep theirs; a replaced token moves users cleanly.
pub fn user_tokens_are_deleted_by_user_or_device(fx: &mut impl StoreFixture) {
    let store = fx.open();
    let token = |user_id, device: &str| TokenRecord {
        user_id,
        device_id: device.into(),
        expires_at_ms: 99,
    };
    store.put_token(&[1; 32], &token(1, "phone")).unwrap();
    store.put_token(&[2; 32], &token(1, "phone")).unwrap();
    store.put_token(&[3; 32], &token(1, "laptop")).unwrap();
    store.put_token(&[4; 32], &token(2, "phone")).unwrap();
    assert_eq!(store.delete_user_tokens(1, Some("phone")).unwrap(), 2);
    assert!(store.token(&[1; 32]).unwrap().is_none());
    assert!(store.token(&[2; 32]).unwrap().is_none());
    assert!(store.token(&[3; 32]).unwrap().is_some());
    assert_eq!(store.delete_user_tokens(1, Some("phone")).unwrap(), 0);
    // A logout (single delete) also leaves nothing for a later revoke.
    store.delete_token(&[3; 32]).unwrap();
    assert_eq!(store.delete_user_tokens(1, None).unwrap(), 0);
    // The same hash re-issued to another user belongs to that user only.
    store.put_token(&[5; 32], &token(1, "tab")).unwrap();
    store.put_token(&[5; 32], &token(3, "tab")).unwrap();
    assert_eq!(store.delete_user_tokens(1, None).unwrap(), 0);
    assert_eq!(store.delete_user_tokens(3, None).unwrap(), 1);
    assert_eq!(store.token(&[4; 32]).unwrap(), Some(token(2, "phone")));
    assert_eq!(store.delete_user_tokens(2, None).unwrap(), 1);
    assert!(store.token(&[4; 32]).unwrap().is_none());
}

/// The readiness probe's write succeeds on a healthy store and changes
/// nothing a client can see.
pub fn check_writable_succeeds_and_is_invisible(fx: &mut impl StoreFixture) {
    let store = fx.open();
    store.check_writable().unwrap();
    assert_eq!(counts(&store), (0, 0));
    assert_eq!(store.msg_id_floor().unwrap(), 0);
    assert!(store.list_users(0, 10).unwrap().is_empty());
}
