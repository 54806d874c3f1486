//! The sync engine: pull pages above the cursor until `has_more` is false,
//! drop duplicates (seq at or below the cursor), hand new messages to a
//! [`SyncSink`] in seq order, persist the cursor after each page (before
//! the next pull tells the server), and ack after the last page.
//!
//! [`take_inline`] does the same for the entries a Notify carries inline.
//!
//! Delivery is at-least-once up to the sink: the cursor is committed only
//! after the sink accepted every message of the page, and the server hears
//! about the cursor only after the commit. Owns no connection and no timers.

use std::future::Future;

use pigeon_protocol::pb;

use crate::connection::Connection;
use crate::error::SdkError;

/// Entries asked for per pull when the caller has no preference.
pub const DEFAULT_PULL_LIMIT: u32 = 100;

/// Where synced messages and the cursor go.
pub trait SyncSink {
    /// Hand one new message to the application. Called in increasing seq
    /// order and never twice for the same seq within one sync.
    fn deliver(
        &mut self,
        message: pb::Message,
    ) -> impl Future<Output = Result<(), SdkError>> + Send;

    /// Persist `cursor` (the highest seq delivered). Called once per page
    /// that delivered something, before the server is told.
    fn commit(&mut self, cursor: u64) -> impl Future<Output = Result<(), SdkError>> + Send;
}

/// What one sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// The cursor after the sync (committed and acked).
    pub cursor: u64,
    /// How many new messages were delivered.
    pub delivered: usize,
    /// Duplicates (seq at or below the cursor) that were dropped.
    pub duplicates: usize,
    /// The top of the queue as of the last page.
    pub max_seq: u64,
}

/// The cursor to resume from after a login: the local one, unless it is
/// above the server's queue (the server's data was reset), in which case
/// the server's cursor for this device.
pub fn resume_cursor(local: u64, answer: &pb::LoginResponse) -> u64 {
    if local > answer.max_seq {
        answer.acked_seq.min(answer.max_seq)
    } else {
        local
    }
}

/// Pull everything above `cursor`, deliver it, commit and ack. `limit` is
/// the page size (0: the server's default).
pub async fn sync_to_end<S: SyncSink + Send>(
    conn: &Connection,
    mut cursor: u64,
    limit: u32,
    sink: &mut S,
) -> Result<SyncReport, SdkError> {
    let mut report = SyncReport {
        cursor,
        delivered: 0,
        duplicates: 0,
        max_seq: 0,
    };
    let server_acked = loop {
        let page = conn.pull(cursor, limit).await?;
        report.max_seq = page.max_seq;
        let before = cursor;
        for message in page.messages {
            if message.seq <= cursor {
                report.duplicates += 1;
                continue;
            }
            let seq = message.seq;
            sink.deliver(message).await?;
            cursor = seq;
            report.delivered += 1;
        }
        if cursor > before {
            sink.commit(cursor).await?;
        }
        if !page.has_more {
            break page.acked_seq;
        }
        if cursor == before {
            return Err(SdkError::Protocol(format!(
                "pull above seq {cursor} said has_more but returned nothing new"
            )));
        }
    };
    if cursor > server_acked {
        conn.ack(cursor).await?;
    }
    report.cursor = cursor;
    Ok(report)
}

/// Take the entries a Notify carries inline (a login with
/// `inline_messages`) when they continue `cursor`: deliver those above it
/// (a pull may already have returned the first few) and commit the new
/// cursor, as a pull's page would be. Returns the new cursor, or `None`
/// when they start above `cursor + 1` or end at or below `cursor` (or
/// there are none): then the caller pulls if the queue is ahead. Nothing
/// is acknowledged here; the caller acks later.
pub async fn take_inline<S: SyncSink + Send>(
    cursor: u64,
    notify: pb::Notify,
    sink: &mut S,
) -> Result<Option<u64>, SdkError> {
    let Some(start) = inline_start(cursor, &notify.messages)? else {
        return Ok(None);
    };
    let mut taken = cursor;
    for message in notify.messages.into_iter().skip(start) {
        taken = message.seq;
        sink.deliver(message).await?;
    }
    sink.commit(taken).await?;
    Ok(Some(taken))
}

/// Where a notify's inline run becomes new for `cursor`: the index of its
/// entry at `cursor + 1`, or `None` if the run does not reach it (starts
/// above it, ends at or below the cursor, or is empty). A run with a gap
/// is a server bug, refused before anything is delivered.
pub(crate) fn inline_start(
    cursor: u64,
    messages: &[pb::Message],
) -> Result<Option<usize>, SdkError> {
    let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
        return Ok(None);
    };
    if first.seq > cursor + 1 || last.seq <= cursor {
        return Ok(None);
    }
    if let Some(pair) = messages.windows(2).find(|p| p[1].seq != p[0].seq + 1) {
        return Err(SdkError::Protocol(format!(
            "a notify's entries jump from seq {} to {}",
            pair[0].seq, pair[1].seq
        )));
    }
    Ok(Some((cursor + 1 - first.seq) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what a sync delivers and commits.
    #[derive(Default)]
    struct Recorded {
        delivered: Vec<u64>,
        committed: Vec<u64>,
    }

    impl SyncSink for Recorded {
        async fn deliver(&mut self, message: pb::Message) -> Result<(), SdkError> {
            self.delivered.push(message.seq);
            Ok(())
        }

        async fn commit(&mut self, cursor: u64) -> Result<(), SdkError> {
            self.committed.push(cursor);
            Ok(())
        }
    }

    fn notify(max_seq: u64, seqs: &[u64]) -> pb::Notify {
        let messages = seqs
            .iter()
            .map(|&seq| pb::Message {
                seq,
                ..Default::default()
            })
            .collect();
        pb::Notify { max_seq, messages }
    }

    #[tokio::test]
    async fn inline_entries_that_continue_the_cursor_are_delivered_and_committed() {
        let mut sink = Recorded::default();
        let taken = take_inline(4, notify(7, &[5, 6, 7]), &mut sink).await;
        assert_eq!(taken.unwrap(), Some(7));
        assert_eq!((sink.delivered, sink.committed), (vec![5, 6, 7], vec![7]));
    }

    #[tokio::test]
    async fn inline_entries_a_pull_already_returned_are_skipped() {
        let mut sink = Recorded::default();
        let taken = take_inline(5, notify(7, &[4, 5, 6, 7]), &mut sink).await;
        assert_eq!(taken.unwrap(), Some(7));
        assert_eq!((sink.delivered, sink.committed), (vec![6, 7], vec![7]));
    }

    #[tokio::test]
    async fn inline_entries_after_a_gap_or_none_at_all_leave_it_to_a_pull() {
        for (cursor, n) in [
            (3, notify(7, &[5, 6, 7])),
            (4, notify(7, &[])),
            (8, notify(7, &[7])),
        ] {
            let mut sink = Recorded::default();
            assert_eq!(take_inline(cursor, n, &mut sink).await.unwrap(), None);
            assert!(sink.delivered.is_empty() && sink.committed.is_empty());
        }
        let mut sink = Recorded::default();
        let jumped = take_inline(4, notify(8, &[5, 6, 8]), &mut sink).await;
        assert!(matches!(jumped, Err(SdkError::Protocol(_))), "{jumped:?}");
        assert!(
            sink.delivered.is_empty(),
            "nothing delivered from a broken run"
        );
    }

    fn answer(max_seq: u64, acked_seq: u64) -> pb::LoginResponse {
        pb::LoginResponse {
            max_seq,
            acked_seq,
            ..Default::default()
        }
    }

    #[test]
    fn local_cursor_wins_while_it_is_within_the_queue() {
        assert_eq!(resume_cursor(5, &answer(10, 2)), 5);
        assert_eq!(resume_cursor(10, &answer(10, 10)), 10);
        assert_eq!(resume_cursor(0, &answer(10, 4)), 0);
    }

    #[test]
    fn cursor_above_the_queue_falls_back_to_the_servers() {
        assert_eq!(resume_cursor(50, &answer(10, 3)), 3);
        assert_eq!(resume_cursor(50, &answer(0, 0)), 0);
    }
}
