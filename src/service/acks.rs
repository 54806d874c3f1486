//! Deferred cursor writes for the acknowledgement a pull carries.
//!
//! A `Pull { after_seq }` acknowledges `after_seq` (docs/protocol.md §5.6).
//! Writing that cursor before answering cost the pull a second trip through
//! the committer and its fsync, after the send's own: at 10,000 msgs/s it
//! doubled the delivery latency and was a quarter of the writer's work
//! (docs/performance.md). A cursor that is written late is safe to lose: a
//! device whose acknowledgement a crash took back is sent those entries
//! again, and clients drop duplicates by seq (§7.2).
//!
//! So a pull only records its acknowledgement here, in memory, and answers.
//! [`run`] writes what was recorded every `messaging.ack_write_interval`,
//! one cursor write per device however many pulls it made, followed by one
//! collection per user, and once more when the server stops. Everything
//! that reads a device's cursor for a client (login, explicit acks, pulls)
//! takes the recorded value into account, so a client never sees its cursor
//! move back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Seq, UserId, WriteOp, WriteOutcome};

use super::messaging::Messaging;

/// An acknowledgement accepted but not yet written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAck {
    /// The highest seq acknowledged.
    pub seq: Seq,
    /// When, ms since the epoch: it marks the device active as of then.
    pub at_ms: u64,
}

/// Per user, per device.
pub type PerDevice<T> = HashMap<UserId, HashMap<String, T>>;

/// Acknowledgements accepted from pulls, per (user, device): recorded and
/// waiting, or taken and being written. Both count for what a client is
/// told, so an answer never shows a cursor below one it showed before.
#[derive(Default)]
pub struct AckLedger {
    state: Mutex<Ledger>,
    /// Held by a [`write_pending`] for its whole write, so that writes do
    /// not overlap: one that starts (the timer's, a test's, the last one at
    /// a stop) returns only after the one before it is written too.
    turn: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Ledger {
    pending: PerDevice<PendingAck>,
    /// Taken by a writer and not yet written: the highest seq per device.
    writing: PerDevice<Seq>,
}

impl Ledger {
    fn writing_seq(&self, user: UserId, device_id: &str) -> Seq {
        self.writing
            .get(&user)
            .and_then(|devices| devices.get(device_id))
            .copied()
            .unwrap_or(0)
    }
}

fn remove<T>(map: &mut PerDevice<T>, user: UserId, device_id: &str) -> Option<T> {
    let devices = map.get_mut(&user)?;
    let removed = devices.remove(device_id);
    if devices.is_empty() {
        map.remove(&user);
    }
    removed
}

impl AckLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.state
            .lock()
            .expect("ack ledger lock is never poisoned")
    }

    /// Record that `device_id` of `user` acknowledged up to `seq` at `at_ms`.
    /// Returns the highest seq known for it, recorded or being written.
    pub fn accept(&self, user: UserId, device_id: &str, seq: Seq, at_ms: u64) -> Seq {
        let mut ledger = self.lock();
        let writing = ledger.writing_seq(user, device_id);
        let devices = ledger.pending.entry(user).or_default();
        let recorded = match devices.get_mut(device_id) {
            Some(ack) => {
                ack.seq = ack.seq.max(seq);
                ack.at_ms = ack.at_ms.max(at_ms);
                ack.seq
            }
            None => {
                devices.insert(device_id.to_owned(), PendingAck { seq, at_ms });
                seq
            }
        };
        recorded.max(writing)
    }

    /// The highest seq recorded for a device or being written (0 if none).
    pub fn pending_seq(&self, user: UserId, device_id: &str) -> Seq {
        let ledger = self.lock();
        let recorded = ledger
            .pending
            .get(&user)
            .and_then(|devices| devices.get(device_id))
            .map_or(0, |ack| ack.seq);
        recorded.max(ledger.writing_seq(user, device_id))
    }

    /// Drop what a device recorded (it is being revoked).
    pub fn forget(&self, user: UserId, device_id: &str) {
        let mut ledger = self.lock();
        remove(&mut ledger.pending, user, device_id);
        remove(&mut ledger.writing, user, device_id);
    }

    /// Take everything recorded so far, to write it; it stays visible
    /// (see [`AckLedger::pending_seq`]) until [`AckLedger::written`].
    pub fn take(&self) -> PerDevice<PendingAck> {
        let mut ledger = self.lock();
        let taken = std::mem::take(&mut ledger.pending);
        for (user, devices) in &taken {
            let writing = ledger.writing.entry(*user).or_default();
            for (device_id, ack) in devices {
                let seq = writing.entry(device_id.clone()).or_default();
                *seq = (*seq).max(ack.seq);
            }
        }
        taken
    }

    /// What [`AckLedger::take`] returned has been written (or failed to
    /// be); a device taken again since keeps its higher seq.
    pub fn written(&self, taken: &PerDevice<PendingAck>) {
        let mut ledger = self.lock();
        for (user, devices) in taken {
            for (device_id, ack) in devices {
                if ledger.writing_seq(*user, device_id) <= ack.seq {
                    remove(&mut ledger.writing, *user, device_id);
                }
            }
        }
    }

    /// How many devices have an acknowledgement recorded and not yet
    /// taken by a writer.
    pub fn waiting(&self) -> usize {
        self.lock().pending.values().map(HashMap::len).sum()
    }

    /// Whether nothing is recorded and nothing is being written.
    #[cfg(test)]
    fn is_idle(&self) -> bool {
        let ledger = self.lock();
        ledger.pending.is_empty() && ledger.writing.is_empty()
    }
}

/// A handle that writes the recorded acknowledgements on demand, for tests
/// and tools that inspect the store while the server runs. It does not keep
/// the server's message path alive.
#[derive(Clone)]
pub struct AckWriter(std::sync::Weak<Messaging>);

impl AckWriter {
    /// A handle on `messaging`.
    pub fn new(messaging: &Arc<Messaging>) -> Self {
        AckWriter(Arc::downgrade(messaging))
    }

    /// Write what is recorded now and wait until it is applied (a no-op
    /// once the server stopped).
    pub async fn write_now(&self) {
        if let Some(messaging) = self.0.upgrade() {
            write_pending(&messaging).await;
        }
    }

    /// How many devices have an acknowledgement recorded and not written.
    pub fn recorded(&self) -> usize {
        self.0.upgrade().map_or(0, |m| m.acks().waiting())
    }
}

/// Write the recorded acknowledgements every `interval` until `shutdown`,
/// then once more. Runs until the last write is done, so the caller waits
/// for it before it stops the committer.
pub async fn run(messaging: Arc<Messaging>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded by the shutdown token.
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        write_pending(&messaging).await;
    }
    write_pending(&messaging).await;
}

/// Write every recorded acknowledgement: one cursor write per device, then
/// one collection per user, in steps that sends can pass between (see
/// [`Committer::write_in_steps`](super::committer::Committer::write_in_steps)).
/// A failure leaves the cursor where it was; the device's next pull or ack
/// moves it again.
pub async fn write_pending(messaging: &Messaging) {
    let _turn = messaging.acks().turn.lock().await;
    let taken = messaging.acks().take();
    if taken.is_empty() {
        return;
    }
    let mut ops = Vec::new();
    for (&user, devices) in &taken {
        let mut latest = 0;
        for (device_id, ack) in devices {
            latest = latest.max(ack.at_ms);
            ops.push(WriteOp::Ack {
                user,
                device_id: device_id.clone(),
                seq: ack.seq,
                now_ms: ack.at_ms,
                // The device may have been revoked since its pull.
                if_present: true,
            });
        }
        ops.push(messaging.collect_op(user, latest));
    }
    for outcome in messaging.committer().write_in_steps(ops).await {
        match outcome {
            Ok(WriteOutcome::Acked { .. } | WriteOutcome::Collected { .. }) => {}
            Ok(other) => tracing::warn!(?other, "unexpected outcome of a deferred ack"),
            Err(e) => tracing::warn!(error = %e, "a deferred ack or its collection failed"),
        }
    }
    messaging.acks().written(&taken);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_keeps_the_highest_seq_and_latest_time() {
        let ledger = AckLedger::default();
        assert_eq!(ledger.accept(1, "a", 5, 100), 5);
        assert_eq!(
            ledger.accept(1, "a", 3, 200),
            5,
            "a lower seq does not lower it"
        );
        assert_eq!(ledger.accept(1, "b", 2, 50), 2);
        assert_eq!(ledger.pending_seq(1, "a"), 5);
        assert_eq!(ledger.pending_seq(2, "a"), 0);
        assert_eq!(ledger.waiting(), 2);
        let taken = ledger.take();
        assert_eq!(taken[&1]["a"], PendingAck { seq: 5, at_ms: 200 });
        assert_eq!(ledger.waiting(), 0, "nothing left to take");
        ledger.written(&taken);
        assert!(ledger.is_idle());
    }

    /// Between take and written a device's seq stays visible, so an answer
    /// (a pull with a lower anchor, a login) never shows a lower cursor.
    #[test]
    fn taken_acks_count_until_written() {
        let ledger = AckLedger::default();
        ledger.accept(1, "a", 5, 100);
        let taken = ledger.take();
        assert_eq!(ledger.pending_seq(1, "a"), 5);
        assert_eq!(ledger.accept(1, "a", 3, 200), 5, "a lower anchor answers 5");
        ledger.accept(1, "a", 7, 300);
        let again = ledger.take();
        ledger.written(&taken);
        assert_eq!(ledger.pending_seq(1, "a"), 7, "the newer write is still on");
        ledger.written(&again);
        assert_eq!(ledger.pending_seq(1, "a"), 0);
        assert!(ledger.is_idle());
    }

    #[test]
    fn forget_drops_one_device() {
        let ledger = AckLedger::default();
        ledger.accept(1, "a", 5, 100);
        ledger.accept(1, "b", 6, 100);
        ledger.forget(1, "a");
        assert_eq!(ledger.pending_seq(1, "a"), 0);
        assert_eq!(ledger.pending_seq(1, "b"), 6);
        ledger.forget(1, "b");
        assert!(ledger.is_idle());
    }
}
