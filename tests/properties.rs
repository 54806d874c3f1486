//! Property tests over the real server: proptest generates request
//! sequences of several devices of two users, a raw TLS client per device
//! sends them, and after every request the answers and the store are
//! checked against a model.
//!
//! - No sequence of requests lets user A read, ack or recall user B's
//!   data, nor log in as B with A's token. A recall by the sender clears
//!   the content everywhere and appends a RECALL entry to both queues; by
//!   the recipient it is PERMISSION_DENIED, by anyone else UNKNOWN_MESSAGE.
//! - Cursors never move backwards, across reconnects too.
//! - Garbage collection (history_retention = 0, so every ack collects)
//!   never removes an entry some device of the user has not acked, and
//!   removes what all of them have.
//!
//! Case counts are small so the file runs in well under a minute in a debug
//! build; `PIGEON_PROPTEST_CASES=500 cargo test --release --test properties`
//! runs longer. docs/reliability.md has the request-sequence fuzzer
//! that checks the same over the service layer at thousands of runs a second.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use pigeon_protocol::pb::{self, login_request::Credential};
use pigeon_protocol::{Body, ErrorCode, Platform};
use pigeon_server::config::Config;
use pigeon_server::store::Durability;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

/// Cases per property unless `PIGEON_PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 32;
/// Most requests in one case.
const MAX_REQUESTS: usize = 40;

/// Users are named per case so that cases share one server.
static NEXT_CASE: AtomicU64 = AtomicU64::new(1);

/// A seq named relative to the state, so that generated values hit the
/// edges (the top, the cursor, just beyond).
#[derive(Debug, Clone, Copy)]
enum Anchor {
    At(u64),
    BelowMax(u64),
    AboveCursor(u64),
    BeyondMax(u64),
}

impl Anchor {
    fn resolve(self, max_seq: u64, cursor: u64) -> u64 {
        match self {
            Anchor::At(n) => n,
            Anchor::BelowMax(n) => max_seq.saturating_sub(n),
            Anchor::AboveCursor(n) => cursor + n,
            Anchor::BeyondMax(n) => max_seq + 1 + n,
        }
    }
}

/// One request of one device (an index into the layout's devices).
#[derive(Debug, Clone)]
enum Request {
    /// A new message to a user, or a resend of the device's last one.
    Send {
        device: usize,
        to: usize,
        resend: bool,
    },
    Pull {
        device: usize,
        after: Anchor,
        limit: u32,
    },
    Ack {
        device: usize,
        seq: Anchor,
    },
    /// Close the connection and log in again with the device's token.
    Reconnect {
        device: usize,
    },
    /// A new connection logging in with this device's token but claiming
    /// `victim`'s username, or (`other_device`) another device id.
    Impersonate {
        device: usize,
        victim: usize,
        other_device: bool,
    },
    /// Recall one of the messages sent so far (`pick` modulo their number),
    /// whoever sent it.
    Recall {
        device: usize,
        pick: usize,
    },
}

/// Who the devices are: (user, platform); one platform class per device of
/// a user, so that the default kick policy lets them all stay online.
struct Layout {
    users: usize,
    devices: &'static [(usize, Platform)],
}

const TWO_USERS: Layout = Layout {
    users: 2,
    devices: &[
        (0, Platform::Ios),
        (0, Platform::Desktop),
        (1, Platform::Ios),
    ],
};

const THREE_DEVICES: Layout = Layout {
    users: 2,
    devices: &[
        (0, Platform::Ios),
        (0, Platform::Desktop),
        (0, Platform::Web),
        (1, Platform::Android),
    ],
};

fn anchor() -> impl Strategy<Value = Anchor> {
    prop_oneof![
        (0u64..6).prop_map(Anchor::At),
        (0u64..4).prop_map(Anchor::BelowMax),
        (0u64..3).prop_map(Anchor::AboveCursor),
        (0u64..3).prop_map(Anchor::BeyondMax),
    ]
}

/// Requests for `layout`, with weights (send, pull, ack, reconnect,
/// impersonate, recall).
fn requests(layout: &Layout, weights: [u32; 6]) -> impl Strategy<Value = Vec<Request>> {
    let devices = layout.devices.len();
    let users = layout.users;
    let [send, pull, ack, reconnect, impersonate, recall] = weights;
    let request = prop_oneof![
        send => (0..devices, 0..users, prop::bool::weighted(0.2))
            .prop_map(|(device, to, resend)| Request::Send { device, to, resend }),
        pull => (0..devices, anchor(), 0u32..4)
            .prop_map(|(device, after, limit)| Request::Pull { device, after, limit }),
        ack => (0..devices, anchor()).prop_map(|(device, seq)| Request::Ack { device, seq }),
        reconnect => (0..devices).prop_map(|device| Request::Reconnect { device }),
        impersonate => (0..devices, 0..users, any::<bool>()).prop_map(
            |(device, victim, other_device)| Request::Impersonate { device, victim, other_device }
        ),
        recall => (0..devices, 0usize..64).prop_map(|(device, pick)| Request::Recall { device, pick }),
    ];
    prop::collection::vec(request, 1..MAX_REQUESTS)
}

/// What a queue entry must hold: (msg_id, from, to, content). A RECALL
/// entry's msg_id is not in any answer: 0 in the model, not compared.
type Entry = (u64, u64, u64, Vec<u8>);

/// Whether a stored or pulled entry is the one the model expects.
fn same_entry(want: &Entry, got: &Entry) -> bool {
    (want.0 == 0 || want.0 == got.0) && (want.1, want.2, &want.3) == (got.1, got.2, &got.3)
}

/// A message sent so far: (msg_id, sender, recipient, recalled).
#[derive(Debug, Clone, Copy)]
struct Sent {
    msg_id: u64,
    from: usize,
    to: usize,
    recalled: bool,
}

#[derive(Default)]
struct Queue {
    max_seq: u64,
    entries: BTreeMap<u64, Entry>,
    /// Entries at or below this may be collected: the highest value the
    /// lowest cursor of the user's devices ever had.
    collectable: u64,
}

struct Device {
    user: usize,
    id: String,
    platform: Platform,
    token: String,
    client: RawClient,
    cursor: u64,
    /// The last new send: (recipient, client_msg_id, content, msg_id, seq).
    last_send: Option<(usize, String, Vec<u8>, u64, u64)>,
}

/// One case: its users, devices and the model of their queues.
struct World<'a> {
    server: &'a TestServer,
    names: Vec<String>,
    ids: Vec<u64>,
    devices: Vec<Device>,
    queues: Vec<Queue>,
    sends: u64,
    sent: Vec<Sent>,
}

impl<'a> World<'a> {
    async fn new(server: &'a TestServer, layout: &Layout) -> World<'a> {
        let case = NEXT_CASE.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = (0..layout.users).map(|u| format!("p{case}-u{u}")).collect();
        let mut ids = Vec::new();
        for name in &names {
            ids.push(server.raw().await.register(name).await);
        }
        let mut devices = Vec::new();
        for (i, &(user, platform)) in layout.devices.iter().enumerate() {
            let id = format!("dev{i}");
            let mut client = server.raw().await;
            let login = client.login(&names[user], &id, platform).await;
            assert_eq!((login.user_id, login.acked_seq), (ids[user], 0));
            devices.push(Device {
                user,
                id,
                platform,
                token: login.token,
                client,
                cursor: 0,
                last_send: None,
            });
        }
        let queues = (0..layout.users).map(|_| Queue::default()).collect();
        World {
            server,
            names,
            ids,
            devices,
            queues,
            sends: 0,
            sent: Vec::new(),
        }
    }

    async fn apply(&mut self, request: &Request) {
        match *request {
            Request::Send { device, to, resend } => self.send(device, to, resend).await,
            Request::Pull {
                device,
                after,
                limit,
            } => self.pull(device, after, limit).await,
            Request::Ack { device, seq } => self.ack(device, seq).await,
            Request::Reconnect { device } => self.reconnect(device).await,
            Request::Impersonate {
                device,
                victim,
                other_device,
            } => self.impersonate(device, victim, other_device).await,
            Request::Recall { device, pick } => self.recall(device, pick).await,
        }
        // Pulls record their acknowledgement; the store has it once written.
        self.server.acks.write_now().await;
        self.check_store();
    }

    async fn send(&mut self, device: usize, to: usize, resend: bool) {
        let from = self.devices[device].user;
        if let (true, Some(last)) = (resend, self.devices[device].last_send.clone()) {
            let (to, cmid, content, msg_id, seq) = last;
            let body = send_body(&self.names[to], &cmid, content);
            let answer = self.devices[device].client.request(body).await;
            let Body::Sent(sent) = answer else {
                panic!("resend: {answer:?}")
            };
            assert!(sent.duplicate, "a resend is a duplicate");
            assert_eq!((sent.msg_id, sent.seq), (msg_id, seq));
            return;
        }
        self.sends += 1;
        let cmid = format!("c{}", self.sends);
        let content = format!("{}->{} #{}", self.names[from], self.names[to], self.sends);
        let content = content.into_bytes();
        let body = send_body(&self.names[to], &cmid, content.clone());
        let answer = self.devices[device].client.request(body).await;
        let Body::Sent(sent) = answer else {
            panic!("send: {answer:?}")
        };
        assert!(!sent.duplicate);
        assert_eq!(sent.seq, self.queues[from].max_seq + 1, "gapless seqs");
        let entry = (sent.msg_id, self.ids[from], self.ids[to], content.clone());
        let targets = if from == to {
            vec![from]
        } else {
            vec![to, from]
        };
        for user in targets {
            let q = &mut self.queues[user];
            q.max_seq += 1;
            q.entries.insert(q.max_seq, entry.clone());
        }
        self.devices[device].last_send = Some((to, cmid, content, sent.msg_id, sent.seq));
        self.sent.push(Sent {
            msg_id: sent.msg_id,
            from,
            to,
            recalled: false,
        });
    }

    async fn recall(&mut self, device: usize, pick: usize) {
        if self.sent.is_empty() {
            return;
        }
        let i = pick % self.sent.len();
        let s = self.sent[i];
        let caller = self.devices[device].user;
        let request = Body::Recall(pb::RecallRequest { msg_id: s.msg_id });
        let answer = self.devices[device].client.request(request).await;
        // Certainly still stored: an entry of it above its queue's
        // collectable mark. Otherwise GC may have taken the body.
        let stored = self.queues.iter().any(|q| {
            q.entries
                .range(q.collectable + 1..)
                .any(|(_, e)| e.0 == s.msg_id)
        });
        let code = |body: &Body| match body {
            Body::Error(e) => ErrorCode::try_from(e.code).ok(),
            _ => None,
        };
        if caller != s.from {
            let allowed: &[ErrorCode] = match (caller == s.to, stored) {
                (true, true) => &[ErrorCode::PermissionDenied],
                (true, false) => &[ErrorCode::PermissionDenied, ErrorCode::UnknownMessage],
                (false, _) => &[ErrorCode::UnknownMessage],
            };
            let got = code(&answer);
            assert!(
                got.is_some_and(|c| allowed.contains(&c)),
                "{} recalled {}'s message: {answer:?}",
                self.names[caller],
                self.names[s.from]
            );
            return;
        }
        match answer {
            Body::Recalled(_) => {}
            ref other if !stored && code(other) == Some(ErrorCode::UnknownMessage) => return,
            other => panic!("the sender's recall: {other:?}"),
        }
        if s.recalled {
            return; // answered again, nothing new stored
        }
        self.sent[i].recalled = true;
        for q in &mut self.queues {
            for entry in q.entries.values_mut().filter(|e| e.0 == s.msg_id) {
                entry.3.clear();
            }
        }
        let targets = if s.from == s.to {
            vec![s.from]
        } else {
            vec![s.to, s.from]
        };
        let entry = (0, self.ids[caller], self.ids[s.to], Vec::new());
        for user in targets {
            let q = &mut self.queues[user];
            q.max_seq += 1;
            q.entries.insert(q.max_seq, entry.clone());
        }
    }

    async fn pull(&mut self, device: usize, after: Anchor, limit: u32) {
        let user = self.devices[device].user;
        let max_seq = self.queues[user].max_seq;
        let cursor = self.devices[device].cursor;
        let after = after.resolve(max_seq, cursor);
        let request = Body::Pull(pb::PullRequest {
            after_seq: after,
            limit,
        });
        let answer = self.devices[device].client.request(request).await;
        if after > max_seq {
            expect_error(&answer, ErrorCode::AckBeyondMaxSeq);
            return;
        }
        let Body::Pulled(page) = answer else {
            panic!("pull after {after}: {answer:?}")
        };
        self.advance(device, page.acked_seq, cursor.max(after))
            .await;
        assert_eq!(page.max_seq, max_seq);
        let q = &self.queues[user];
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]) && seqs.iter().all(|&s| s > after));
        for m in &page.messages {
            let want = q
                .entries
                .get(&m.seq)
                .unwrap_or_else(|| panic!("{} read seq {} it never had", self.names[user], m.seq));
            let got = (m.msg_id, m.from_user_id, m.to_user_id, m.content.to_vec());
            assert!(
                same_entry(want, &got),
                "{} read a wrong entry: {got:?}, not {want:?}",
                self.names[user]
            );
        }
        // Nothing that must still be there is skipped up to where the page
        // ends (or the top, if it says there is no more).
        let end = match (page.has_more, seqs.last()) {
            (true, Some(&last)) => last,
            (true, None) => panic!("has_more on an empty page"),
            (false, _) => max_seq,
        };
        let floor = after.max(q.collectable);
        let required = q.entries.range(floor + 1..).map(|(s, _)| *s);
        for seq in required.take_while(|&s| s <= end) {
            assert!(
                seqs.contains(&seq),
                "pull after {after} skipped seq {seq}: {seqs:?}"
            );
        }
        let limit = if limit == 0 { 100 } else { limit as usize };
        assert!(seqs.len() <= limit && (seqs.len() == limit || !page.has_more));
    }

    async fn ack(&mut self, device: usize, seq: Anchor) {
        let user = self.devices[device].user;
        let max_seq = self.queues[user].max_seq;
        let cursor = self.devices[device].cursor;
        let seq = seq.resolve(max_seq, cursor);
        let answer = self.devices[device].client.ack(seq).await;
        if seq > max_seq {
            expect_error(&answer, ErrorCode::AckBeyondMaxSeq);
            return;
        }
        let Body::Acked(acked) = answer else {
            panic!("ack {seq}: {answer:?}")
        };
        self.advance(device, acked.acked_seq, cursor.max(seq)).await;
    }

    /// The cursor after an ack: as predicted, never backwards; once the
    /// acknowledgements pulls record are written, everything every device of
    /// the user acked is collected.
    async fn advance(&mut self, device: usize, answered: u64, expected: u64) {
        let d = &mut self.devices[device];
        assert!(
            answered >= d.cursor,
            "cursor moved back: {} → {answered}",
            d.cursor
        );
        assert_eq!(answered, expected);
        d.cursor = answered;
        let user = d.user;
        let min = self.min_cursor(user);
        let q = &mut self.queues[user];
        q.collectable = q.collectable.max(min);
        self.server.acks.write_now().await;
        let left = self.server.store.pull(self.ids[user], 0, 1).unwrap();
        if let Some(first) = left.messages.first() {
            assert!(
                first.seq > min,
                "seq {} survived a collect at {min}",
                first.seq
            );
        }
    }

    fn min_cursor(&self, user: usize) -> u64 {
        let cursors = self.devices.iter().filter(|d| d.user == user);
        cursors.map(|d| d.cursor).min().unwrap_or(0)
    }

    async fn token_login(
        &self,
        device: usize,
        username: &str,
        device_id: &str,
    ) -> (RawClient, Body) {
        let d = &self.devices[device];
        let mut client = self.server.raw().await;
        let credential = Credential::Token(d.token.clone());
        let body = login_body(username, device_id, d.platform, credential);
        let answer = client.request(body).await;
        (client, answer)
    }

    async fn reconnect(&mut self, device: usize) {
        let d = &self.devices[device];
        let (user, id) = (d.user, d.id.clone());
        let (client, answer) = self.token_login(device, "", &id).await;
        let Body::LoggedIn(login) = answer else {
            panic!("token login: {answer:?}")
        };
        self.logged_in(device, client, &login, user);
    }

    fn logged_in(
        &mut self,
        device: usize,
        client: RawClient,
        login: &pb::LoginResponse,
        user: usize,
    ) {
        assert_eq!(login.user_id, self.ids[user]);
        assert_eq!(login.max_seq, self.queues[user].max_seq);
        let d = &mut self.devices[device];
        assert_eq!(
            login.acked_seq, d.cursor,
            "a login reports the cursor unchanged"
        );
        // The old connection is kicked (same device) or closing; drop it.
        d.client = client;
    }

    async fn impersonate(&mut self, device: usize, victim: usize, other_device: bool) {
        let owner = self.devices[device].user;
        let device_id = if other_device {
            "someone-else".to_owned()
        } else {
            self.devices[device].id.clone()
        };
        let (client, answer) = self
            .token_login(device, &self.names[victim], &device_id)
            .await;
        if victim == owner && !other_device {
            let Body::LoggedIn(login) = answer else {
                panic!("own token, own name: {answer:?}")
            };
            self.logged_in(device, client, &login, owner);
            return;
        }
        expect_error(&answer, ErrorCode::AuthFailed);
    }

    /// Every queue holds exactly its user's entries as sent (those at or
    /// below the collectable mark may be gone), every cursor is as answered.
    fn check_store(&self) {
        let store = &self.server.store;
        for (user, q) in self.queues.iter().enumerate() {
            let id = self.ids[user];
            assert_eq!(store.max_seq(id).unwrap(), q.max_seq);
            let page = store.pull(id, 0, 10_000).unwrap();
            for m in &page.messages {
                assert!(
                    m.from == id || m.to == id,
                    "a foreign entry in {id}'s queue"
                );
                let want = q.entries.get(&m.seq).expect("an entry the model knows");
                let got = (m.msg_id, m.from, m.to, m.content.to_vec());
                assert!(same_entry(want, &got), "{got:?}, not {want:?}");
            }
            let present: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
            for seq in q.entries.range(q.collectable + 1..).map(|(s, _)| s) {
                assert!(
                    present.contains(seq),
                    "seq {seq} of {id} was collected unacked"
                );
            }
            let mut cursors: Vec<(String, u64)> = store
                .devices(id)
                .unwrap()
                .into_iter()
                .map(|d| (d.device_id, d.acked_seq))
                .collect();
            let mut expected: Vec<(String, u64)> = self
                .devices
                .iter()
                .filter(|d| d.user == user)
                .map(|d| (d.id.clone(), d.cursor))
                .collect();
            cursors.sort();
            expected.sort();
            assert_eq!(cursors, expected, "devices and cursors of {id}");
        }
    }
}

/// Retention 0 so that every ack collects; no limits that a case could
/// trip by design (failed impersonations, bursts).
fn property_config(config: &mut Config) {
    config.messaging.history_retention = Duration::ZERO;
    config.messaging.durability = Durability::Buffered;
    config.accounts.login_failures_per_account = 1_000_000;
    config.accounts.login_failures_per_address = 1_000_000;
}

fn cases() -> u32 {
    std::env::var("PIGEON_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Run `cases()` generated sequences for `layout` against one server.
fn check_property(layout: &'static Layout, weights: [u32; 6]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(TestServer::start(property_config));
    let config = ProptestConfig {
        cases: cases(),
        max_shrink_iters: 100,
        // Failures print the minimal sequence; nothing is written into tests/.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&requests(layout, weights), |requests| {
        runtime.block_on(async {
            let mut world = World::new(&server, layout).await;
            for request in &requests {
                world.apply(request).await;
            }
        });
        Ok(())
    });
    runtime.block_on(server.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn no_request_sequence_reads_acks_recalls_or_logs_into_another_users_data() {
    check_property(&TWO_USERS, [4, 3, 3, 1, 2, 2]);
}

#[test]
fn cursors_never_move_backwards_across_acks_pulls_and_reconnects() {
    check_property(&THREE_DEVICES, [3, 3, 3, 2, 1, 1]);
}

#[test]
fn gc_never_removes_an_entry_an_active_device_has_not_acked() {
    check_property(&THREE_DEVICES, [4, 2, 4, 1, 1, 1]);
}
