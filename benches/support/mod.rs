//! What the store benchmarks share: sends made the way the committer makes
//! them, and users to send between. Included by each bench target with
//! `mod support;`.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pigeon_server::store::{NewMessage, SledStore, Store, WriteOp, MSG_ID_COUNTER_BITS};

/// Body bytes of every benchmarked send.
pub const PAYLOAD: usize = 100;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Message ids the way the committer issues them: time << 16 | counter,
/// always increasing.
#[derive(Default)]
pub struct Ids(Cell<u64>);

impl Ids {
    pub fn next(&self) -> u64 {
        let id = (now_ms() << MSG_ID_COUNTER_BITS).max(self.0.get() + 1);
        self.0.set(id);
        id
    }
}

/// A 1:1 send of [`PAYLOAD`] bytes with the next id.
pub fn send_op(ids: &Ids, from: u64, to: u64) -> WriteOp {
    let msg_id = ids.next();
    WriteOp::Send {
        message: NewMessage {
            msg_id,
            from,
            group: 0,
            from_device: "bench".into(),
            to,
            client_msg_id: format!("c{msg_id}"),
            content_type: "text/plain".into(),
            content: Bytes::from(vec![b'x'; PAYLOAD]),
        },
        dedupe_since_ms: 0,
        push: Default::default(),
    }
}

/// Users `prefix0 .. prefix{n-1}`, new in `store`; their ids.
pub fn create_users(store: &SledStore, prefix: &str, n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| {
            store
                .create_user(&format!("{prefix}{i}"), "x", now_ms())
                .expect("created")
                .expect("new")
                .id
        })
        .collect()
}
