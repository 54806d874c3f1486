//! The state one connection's handle and tasks share, and the tasks
//! themselves: the writer (owns the sink), the reader (owns the stream,
//! routes answers by request id, queues pushes, detects idleness) and the
//! heartbeat. Nothing here knows about logins beyond the heartbeat timing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use pigeon_protocol::{pb, Body, Codec, Envelope};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ServerEvent;
use crate::error::SdkError;

pub(super) type Transport = Framed<TlsStream<TcpStream>, Codec>;

/// How long closing may take to send a TLS close_notify and stop the tasks.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Requests waiting for their answer, and whether the connection is over.
#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, oneshot::Sender<Option<Body>>>,
    /// Set once, with the first reason the connection ended.
    closed: Option<String>,
}

/// Server pushes not yet taken by `next_event`. Holds at most one Notify
/// (newer ones raise its max_seq in place), one GroupNotify per group, one
/// ReadReceipt per peer, one Typing per (sender, group) and one Presence
/// per user (see `merge`), so a slow reader of events never lets the queue
/// grow beyond the number of peers and groups; Kick and fatal Error come at
/// most once or twice per connection because the server closes after them.
#[derive(Default)]
struct EventQueue {
    queue: VecDeque<ServerEvent>,
    closed: bool,
}

/// Everything the handle and the tasks of one connection share.
pub(super) struct Shared {
    pub(super) peer: String,
    pub(super) request_timeout: Duration,
    outbound: mpsc::Sender<Envelope>,
    next_id: AtomicU64,
    pending: Mutex<Pending>,
    events: Mutex<EventQueue>,
    events_ready: tokio::sync::Notify,
    /// The idle limit in ms once known from the login answer (0: none yet).
    idle_timeout_ms: AtomicU64,
    heartbeat_started: AtomicBool,
    pub(super) cancel: CancellationToken,
    pub(super) tasks: TaskTracker,
}

impl Shared {
    pub(super) fn new(
        peer: String,
        request_timeout: Duration,
        outbound: mpsc::Sender<Envelope>,
    ) -> Shared {
        Shared {
            peer,
            request_timeout,
            outbound,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(Pending::default()),
            events: Mutex::new(EventQueue::default()),
            events_ready: tokio::sync::Notify::new(),
            idle_timeout_ms: AtomicU64::new(0),
            heartbeat_started: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    fn fresh_id(&self) -> u64 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// The error for a request on (or interrupted by) a closed connection.
    pub(super) fn closed_error(&self) -> SdkError {
        let pending = self.pending.lock().expect("pending lock poisoned");
        SdkError::closed(
            pending
                .closed
                .clone()
                .unwrap_or_else(|| "connection closed".into()),
        )
    }

    /// Why the connection ended, once it has.
    pub(super) fn close_reason(&self) -> Option<String> {
        let pending = self.pending.lock().expect("pending lock poisoned");
        pending.closed.clone()
    }

    /// End the connection (idempotent; the first reason sticks): fail every
    /// waiting request, end the event stream, stop the tasks.
    pub(super) fn shutdown(&self, reason: impl Into<String>) {
        {
            let mut pending = self.pending.lock().expect("pending lock poisoned");
            if pending.closed.is_none() {
                let reason = reason.into();
                tracing::debug!(peer = %self.peer, %reason, "connection closed");
                pending.closed = Some(reason);
                // Dropping the senders wakes every waiter with "closed".
                pending.waiters.clear();
            }
        }
        self.events.lock().expect("events lock poisoned").closed = true;
        self.events_ready.notify_one();
        self.cancel.cancel();
    }

    /// Send one request and wait for its answer, whatever its kind
    /// (an `Error` answer comes back as `Ok(Body::Error)`).
    pub(super) async fn exchange(&self, body: Body) -> Result<Body, SdkError> {
        let id = self.fresh_id();
        let what = body.name();
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("pending lock poisoned");
            if pending.closed.is_some() {
                // Closed before the request was queued: certainly not sent.
                return Err(SdkError::NotConnected);
            }
            pending.waiters.insert(id, tx);
        }
        let _forget = ForgetOnDrop { shared: self, id };
        let round_trip = async {
            // If the writer is gone the frame was never written either.
            self.outbound
                .send(Envelope::new(id, body))
                .await
                .map_err(|_| SdkError::NotConnected)?;
            rx.await.map_err(|_| self.closed_error())
        };
        let answer = tokio::time::timeout(self.request_timeout, round_trip)
            .await
            .map_err(|_| SdkError::Timeout {
                what,
                after: self.request_timeout,
            })??;
        answer.ok_or_else(|| SdkError::Protocol(format!("empty answer to {what}")))
    }

    /// Queue a frame for writing without waiting for any answer.
    pub(super) async fn write(&self, envelope: Envelope) -> Result<(), SdkError> {
        let send = self.outbound.send(envelope);
        match tokio::time::timeout(self.request_timeout, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(SdkError::Timeout {
                what: "room in the write queue",
                after: self.request_timeout,
            }),
        }
    }

    /// The next server push, or None once the connection is closed and
    /// every queued push was taken.
    pub(super) async fn next_event(&self) -> Option<ServerEvent> {
        loop {
            let notified = self.events_ready.notified();
            {
                let mut events = self.events.lock().expect("events lock poisoned");
                if let Some(event) = events.queue.pop_front() {
                    return Some(event);
                }
                if events.closed {
                    // Leave a wake-up for any other waiter.
                    self.events_ready.notify_one();
                    return None;
                }
            }
            notified.await;
        }
    }

    fn push_event(&self, event: ServerEvent) {
        let mut events = self.events.lock().expect("events lock poisoned");
        if events.queue.iter_mut().any(|queued| merge(queued, &event)) {
            return;
        }
        events.queue.push_back(event);
        drop(events);
        self.events_ready.notify_one();
    }

    /// Route one frame from the server: an answer to its waiter, a push to
    /// the event queue.
    fn dispatch(&self, envelope: Envelope) {
        let id = envelope.request_id;
        if id != 0 {
            let waiter = self
                .pending
                .lock()
                .expect("pending lock poisoned")
                .waiters
                .remove(&id);
            match waiter {
                // A send error means the requester gave up (timed out): the
                // late answer has nowhere to go and is dropped.
                Some(tx) => drop(tx.send(envelope.body)),
                None => self.push_event(ServerEvent::Unsolicited(envelope)),
            }
            return;
        }
        match envelope.body {
            Some(Body::Notify(notify)) => self.push_event(ServerEvent::Notify(notify)),
            Some(Body::GroupNotify(notify)) => self.push_event(ServerEvent::GroupNotify(notify)),
            Some(Body::ReadReceipt(receipt)) => self.push_event(ServerEvent::ReadReceipt(receipt)),
            Some(Body::TypingEvent(typing)) => self.push_event(ServerEvent::Typing(typing)),
            Some(Body::PresenceEvent(pb::PresenceEvent {
                presence: Some(presence),
            })) => self.push_event(ServerEvent::Presence(presence)),
            Some(Body::Kick(kick)) => self.push_event(ServerEvent::Kick(kick)),
            Some(Body::Error(error)) => self.push_event(ServerEvent::Error(error)),
            body => self.push_event(ServerEvent::Unsolicited(Envelope {
                request_id: 0,
                body,
            })),
        }
    }

    fn idle_timeout(&self) -> Option<Duration> {
        match self.idle_timeout_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Apply the timing of a login answer: the idle limit, and start the
    /// heartbeat (once per connection).
    pub(super) fn start_liveness(self: &std::sync::Arc<Self>, answer: &pb::LoginResponse) {
        let interval = match answer.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms.into()),
        };
        let idle = match answer.idle_timeout_ms {
            0 => interval * 5 / 2,
            ms => Duration::from_millis(ms.into()),
        };
        self.idle_timeout_ms
            .store(idle.as_millis() as u64, Ordering::Relaxed);
        if !self.heartbeat_started.swap(true, Ordering::Relaxed) {
            self.tasks.spawn(heartbeat(self.clone(), interval));
        }
    }
}

/// Fold `new` into `queued` when `new` supersedes it (same kind and key);
/// returns whether it did. Counters only move up: a merged notify or
/// receipt carries the highest value seen, whichever arrived last.
fn merge(queued: &mut ServerEvent, new: &ServerEvent) -> bool {
    match (queued, new) {
        (ServerEvent::Notify(q), ServerEvent::Notify(n)) => {
            merge_run(&mut q.max_seq, &mut q.messages, n.max_seq, &n.messages)
        }
        (ServerEvent::GroupNotify(q), ServerEvent::GroupNotify(n)) if q.group_id == n.group_id => {
            merge_run(&mut q.max_seq, &mut q.messages, n.max_seq, &n.messages)
        }
        (ServerEvent::ReadReceipt(q), ServerEvent::ReadReceipt(n))
            if q.peer_user_id == n.peer_user_id =>
        {
            q.read_seq = q.read_seq.max(n.read_seq);
        }
        (ServerEvent::Typing(q), ServerEvent::Typing(n))
            if (q.from_user_id, q.group_id) == (n.from_user_id, n.group_id) =>
        {
            q.typing = n.typing;
        }
        (ServerEvent::Presence(q), ServerEvent::Presence(n)) if q.user_id == n.user_id => {
            *q = *n;
        }
        _ => return false,
    }
    true
}

/// Content bytes of inline entries one unread Notify holds at most; past
/// that it keeps only `max_seq` and the client pulls.
const INLINE_HELD_MAX: usize = 64 * 1024;

/// Fold a newer notify (`n_max` and its inline entries) into an unread
/// one (`q_max`, `q_messages`), a Notify or one group's GroupNotify.
/// Inline entries survive only as a run without gaps that ends at the
/// merged max_seq, as the server sends them, and only while they are
/// small: otherwise the notify says only how far the queue or timeline
/// reaches.
fn merge_run(
    q_max: &mut u64,
    q_messages: &mut Vec<pb::Message>,
    n_max: u64,
    n_messages: &[pb::Message],
) {
    if n_max <= *q_max {
        return;
    }
    let continues = match (q_messages.last(), n_messages.first()) {
        (Some(last), Some(first)) => first.seq == last.seq + 1,
        _ => false,
    };
    if !continues {
        q_messages.clear();
    }
    q_messages.extend(n_messages.iter().cloned());
    *q_max = n_max;
    let held: usize = q_messages.iter().map(|m| m.content.len()).sum();
    if held > INLINE_HELD_MAX {
        q_messages.clear();
    }
}

/// The heartbeat when the server does not say.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// Removes a request's waiter when the request is abandoned (timeout or
/// the caller dropped the future), so the map never keeps dead entries.
struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.waiters.remove(&self.id);
        }
    }
}

/// Owns the sink: drains the outbound queue, flushing once per burst.
pub(super) async fn write_loop(
    shared: std::sync::Arc<Shared>,
    mut sink: SplitSink<Transport, Envelope>,
    mut outbound: mpsc::Receiver<Envelope>,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            next = outbound.recv() => next,
        };
        let Some(first) = next else { break };
        let burst = async {
            sink.feed(first).await?;
            while let Ok(more) = outbound.try_recv() {
                sink.feed(more).await?;
            }
            sink.flush().await
        };
        match tokio::time::timeout(shared.request_timeout, burst).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.shutdown(format!("write failed: {e}"));
                break;
            }
            Err(_) => {
                shared.shutdown("write timed out");
                break;
            }
        }
    }
    // Best effort TLS close_notify; the connection is going away either way.
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
}

/// Owns the stream: routes frames, and ends the connection when the server
/// goes quiet for longer than the idle limit.
pub(super) async fn read_loop(shared: std::sync::Arc<Shared>, mut stream: SplitStream<Transport>) {
    let reason = loop {
        let idle = shared.idle_timeout();
        let next = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break "closed by the client".to_string(),
            next = next_within(&mut stream, idle) => next,
        };
        match next {
            Err(_) => {
                break format!(
                    "no frame from the server for {:?}",
                    idle.unwrap_or_default()
                )
            }
            Ok(None) => break "closed by the server".to_string(),
            Ok(Some(Err(e))) => break format!("read failed: {e}"),
            Ok(Some(Ok(envelope))) => shared.dispatch(envelope),
        }
    };
    shared.shutdown(reason);
}

async fn next_within(
    stream: &mut SplitStream<Transport>,
    limit: Option<Duration>,
) -> Result<Option<Result<Envelope, pigeon_protocol::CodecError>>, tokio::time::error::Elapsed> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, stream.next()).await,
        None => Ok(stream.next().await),
    }
}

/// Sends a Ping every `interval`; a Ping that gets no answer in time means
/// the connection is dead.
async fn heartbeat(shared: std::sync::Arc<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let ping = Body::Ping(pb::Ping {
            client_time_ms: now_ms(),
        });
        match shared.exchange(ping).await {
            Ok(_) => {}
            Err(SdkError::Timeout { after, .. }) => {
                shared.shutdown(format!("heartbeat not answered within {after:?}"));
                return;
            }
            Err(SdkError::Closed { .. }) => return,
            Err(e) => tracing::debug!(peer = %shared.peer, error = %e, "heartbeat failed"),
        }
    }
}

/// Milliseconds since the Unix epoch by the local clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notify(max_seq: u64, seqs: &[u64], size: usize) -> pb::Notify {
        let messages = seqs
            .iter()
            .map(|&seq| pb::Message {
                seq,
                content: vec![0; size].into(),
                ..Default::default()
            })
            .collect();
        pb::Notify { max_seq, messages }
    }

    fn seqs(n: &pb::Notify) -> (u64, Vec<u64>) {
        (n.max_seq, n.messages.iter().map(|m| m.seq).collect())
    }

    fn merge_notify(q: &mut pb::Notify, n: &pb::Notify) {
        merge_run(&mut q.max_seq, &mut q.messages, n.max_seq, &n.messages);
    }

    #[test]
    fn merged_notifies_keep_inline_entries_only_as_a_run_that_ends_at_the_top() {
        let mut q = notify(5, &[4, 5], 1);
        merge_notify(&mut q, &notify(7, &[6, 7], 1));
        assert_eq!(seqs(&q), (7, vec![4, 5, 6, 7]), "a continuing run grows");
        merge_notify(&mut q, &notify(9, &[9], 1));
        assert_eq!(seqs(&q), (9, vec![9]), "after a gap only the new run");
        merge_notify(&mut q, &notify(10, &[], 1));
        assert_eq!(seqs(&q), (10, vec![]), "a bare notify ends the run");
        merge_notify(&mut q, &notify(8, &[8], 1));
        assert_eq!(seqs(&q), (10, vec![]), "an older notify changes nothing");
    }

    #[test]
    fn group_notifies_merge_their_runs_per_group() {
        let group = |id: u64, n: pb::Notify| {
            ServerEvent::GroupNotify(pb::GroupNotify {
                group_id: id,
                max_seq: n.max_seq,
                messages: n.messages,
            })
        };
        let mut q = group(1, notify(4, &[3, 4], 1));
        assert!(merge(&mut q, &group(1, notify(5, &[5], 1))));
        assert!(
            !merge(&mut q, &group(2, notify(9, &[9], 1))),
            "another group"
        );
        let ServerEvent::GroupNotify(q) = q else {
            unreachable!()
        };
        let seqs: Vec<u64> = q.messages.iter().map(|m| m.seq).collect();
        assert_eq!((q.max_seq, seqs), (5, vec![3, 4, 5]));
    }

    #[test]
    fn an_unread_notify_holds_a_bounded_amount_of_inline_content() {
        let mut q = notify(1, &[1], INLINE_HELD_MAX / 2);
        merge_notify(&mut q, &notify(2, &[2], INLINE_HELD_MAX / 2));
        assert_eq!(seqs(&q), (2, vec![1, 2]));
        merge_notify(&mut q, &notify(3, &[3], 1));
        assert_eq!(seqs(&q), (3, vec![]), "past the bound: a pull instead");
    }
}
