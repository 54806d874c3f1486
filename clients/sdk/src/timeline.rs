//! Following large groups' timelines, next to the inbox.
//!
//! A small group's messages sit in every member's queue (the inbox), so the
//! inbox sync (`sync`) delivers them. A large group's messages, from its
//! `timeline_from_seq` on, sit only in the group's own timeline, which each
//! member reads with `GroupPull` from a cursor of its own. This module keeps
//! those per-group cursors moving: list the caller's groups, and for each
//! large one that is ahead of its cursor, pull pages in group seq order,
//! drop duplicates, hand new entries to a [`TimelineSink`] and commit the
//! cursor after each page.
//!
//! How an application merges the two streams: the inbox and each group
//! timeline are ordered on their own, and there is no order across them.
//! Key the display by conversation (`group_id`, else the 1:1 peer) and
//! order within a conversation by `conv_seq`, which is the group seq for
//! groups whether an entry came from the inbox (before the group became
//! large) or from the timeline. Pull the timeline again when a
//! `GroupNotify` for the group is ahead of its cursor, and list the groups
//! again when the inbox delivers a group event (an ADDED or BECAME_LARGE
//! entry may start a new timeline to follow).
//!
//! Owns no connection, no timers and no storage: the caller persists the
//! cursors the sink is given (the `Client` and the CLI keep them in the
//! `Profile`).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::future::Future;

use pigeon_protocol::{pb, ErrorCode};

use crate::connection::Connection;
use crate::error::SdkError;

/// Where timeline entries and per-group cursors go.
pub trait TimelineSink {
    /// Hand one new timeline entry of `group_id` to the application. Called
    /// in increasing group seq order per group, never twice for one seq
    /// within one sync.
    fn deliver(
        &mut self,
        group_id: u64,
        message: pb::Message,
    ) -> impl Future<Output = Result<(), SdkError>> + Send;

    /// Persist `cursor` (the highest group seq delivered) for `group_id`.
    /// Called once per page that delivered something.
    fn commit(
        &mut self,
        group_id: u64,
        cursor: u64,
    ) -> impl Future<Output = Result<(), SdkError>> + Send;
}

/// Where a member with no cursor yet starts reading a large group's
/// timeline: above the last seq that went to the inbox, or above the seq
/// at which the member joined, whichever is later.
pub fn timeline_start(info: &pb::GroupInfo) -> u64 {
    info.timeline_from_seq
        .saturating_sub(1)
        .max(info.joined_seq)
}

/// What one group's sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSyncReport {
    /// The group.
    pub group_id: u64,
    /// The cursor after the sync (committed).
    pub cursor: u64,
    /// New entries delivered.
    pub delivered: usize,
    /// Duplicates (seq at or below the cursor) dropped.
    pub duplicates: usize,
    /// The highest seq the caller may read, as of the last page.
    pub max_seq: u64,
}

/// Pull group `group_id`'s timeline above `cursor` until `has_more` is
/// false, delivering new entries and committing after each page. `limit`
/// is the page size (0: the server's default).
pub async fn sync_group_to_end<S: TimelineSink + Send>(
    conn: &Connection,
    group_id: u64,
    mut cursor: u64,
    limit: u32,
    sink: &mut S,
) -> Result<GroupSyncReport, SdkError> {
    let mut report = GroupSyncReport {
        group_id,
        cursor,
        delivered: 0,
        duplicates: 0,
        max_seq: 0,
    };
    loop {
        let page = conn.group_pull(group_id, cursor, limit).await?;
        report.max_seq = page.max_seq;
        let before = cursor;
        for message in page.messages {
            if message.seq <= cursor {
                report.duplicates += 1;
                continue;
            }
            let seq = message.seq;
            sink.deliver(group_id, message).await?;
            cursor = seq;
            report.delivered += 1;
        }
        if cursor > before {
            sink.commit(group_id, cursor).await?;
        }
        if !page.has_more {
            break;
        }
        if cursor == before {
            return Err(SdkError::Protocol(format!(
                "group {group_id} pull above seq {cursor} said has_more but returned nothing new"
            )));
        }
    }
    report.cursor = cursor;
    Ok(report)
}

/// Take the timeline entries a GroupNotify carries inline when they
/// continue the group's `cursor` (see [`crate::sync::take_inline`]):
/// deliver those above it, commit the new cursor, return it; `None` when
/// they do not reach it, and the caller pulls the timeline. The next
/// GroupPull's `after_seq` tells the server how far the member read.
pub async fn take_group_inline<S: TimelineSink + Send>(
    cursor: u64,
    notify: pb::GroupNotify,
    sink: &mut S,
) -> Result<Option<u64>, SdkError> {
    let Some(start) = crate::sync::inline_start(cursor, &notify.messages)? else {
        return Ok(None);
    };
    let mut taken = cursor;
    for message in notify.messages.into_iter().skip(start) {
        taken = message.seq;
        sink.deliver(notify.group_id, message).await?;
    }
    sink.commit(notify.group_id, taken).await?;
    Ok(Some(taken))
}

/// What [`follow_large_groups`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowReport {
    /// The large groups the caller is a member of now.
    pub following: BTreeSet<u64>,
    /// New entries delivered across all groups.
    pub delivered: usize,
    /// Groups that had a cursor but are no longer to be followed (the
    /// caller left, was removed, or the group is gone), after their last
    /// readable entries were delivered: the caller drops their cursors.
    pub gone: Vec<u64>,
    /// False when the server does not know group requests at all (an older
    /// server): there is nothing to follow.
    pub supported: bool,
}

/// Bring every large group of the caller up to date: list the groups, and
/// pull each large one whose `max_seq` is above its cursor (`cursors`, or
/// [`timeline_start`] for a group never read). Groups in `cursors` that
/// are no longer listed are read up to where the caller may still read
/// (a removed member reads up to the removal) and reported as `gone`.
pub async fn follow_large_groups<S: TimelineSink + Send>(
    conn: &Connection,
    cursors: &BTreeMap<u64, u64>,
    limit: u32,
    sink: &mut S,
) -> Result<FollowReport, SdkError> {
    let groups = match conn.group_list().await {
        Ok(groups) => groups,
        Err(e) if e.server_code() == Some(ErrorCode::UnknownRequest) => {
            return Ok(FollowReport::default());
        }
        Err(e) => return Err(e),
    };
    follow_listed_groups(conn, &groups, cursors, limit, sink).await
}

/// [`follow_large_groups`] with a group list the caller already has (the
/// answer of a `group_list` made just before).
pub async fn follow_listed_groups<S: TimelineSink + Send>(
    conn: &Connection,
    groups: &[pb::GroupInfo],
    cursors: &BTreeMap<u64, u64>,
    limit: u32,
    sink: &mut S,
) -> Result<FollowReport, SdkError> {
    let mut report = FollowReport {
        supported: true,
        ..FollowReport::default()
    };
    for info in groups.iter().filter(|g| g.large) {
        report.following.insert(info.group_id);
        let cursor = cursors
            .get(&info.group_id)
            .copied()
            .unwrap_or_else(|| timeline_start(info));
        if info.max_seq > cursor {
            let synced = sync_group_to_end(conn, info.group_id, cursor, limit, sink).await?;
            report.delivered += synced.delivered;
        }
    }
    for (&group_id, &cursor) in cursors {
        if report.following.contains(&group_id) {
            continue;
        }
        match sync_group_to_end(conn, group_id, cursor, limit, sink).await {
            Ok(synced) => report.delivered += synced.delivered,
            Err(e) if is_no_longer_readable(&e) => {}
            Err(e) => return Err(e),
        }
        report.gone.push(group_id);
    }
    Ok(report)
}

/// The msg_ids of the latest group events the inbox delivered, to drop
/// their second copy from a timeline: a large group's personal events
/// (REMOVED, LEFT, DISSOLVED) land both in the member's queue and in the
/// group's timeline, with the same msg_id. Bounded: the oldest ids go.
#[derive(Debug, Clone, Default)]
pub struct SeenEvents {
    order: VecDeque<u64>,
    ids: HashSet<u64>,
}

impl SeenEvents {
    /// How many ids are remembered; both copies of an event are written in
    /// one batch, so the second one is never far behind the first.
    pub const CAPACITY: usize = 1024;

    /// Remember `message` if it is a group event.
    pub fn note(&mut self, message: &pb::Message) {
        if message.kind() != pb::MessageKind::GroupEvent || !self.ids.insert(message.msg_id) {
            return;
        }
        self.order.push_back(message.msg_id);
        if self.order.len() > Self::CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
    }

    /// Whether `message` is a group event already delivered from the inbox.
    pub fn is_duplicate(&self, message: &pb::Message) -> bool {
        message.kind() == pb::MessageKind::GroupEvent && self.ids.contains(&message.msg_id)
    }
}

/// Whether a GroupPull refusal means the timeline will never be readable
/// again by this user (rather than "try later").
pub fn is_no_longer_readable(error: &SdkError) -> bool {
    matches!(
        error.server_code(),
        Some(
            ErrorCode::NotAMember
                | ErrorCode::UnknownGroup
                | ErrorCode::InvalidArgument
                | ErrorCode::PermissionDenied
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(timeline_from_seq: u64, joined_seq: u64) -> pb::GroupInfo {
        pb::GroupInfo {
            large: true,
            timeline_from_seq,
            joined_seq,
            ..Default::default()
        }
    }

    #[test]
    fn a_member_from_before_the_switch_starts_at_the_timeline() {
        // Seqs 1..=9 went to the inbox; the timeline holds 10 on.
        assert_eq!(timeline_start(&group(10, 3)), 9);
    }

    #[test]
    fn a_member_who_joined_later_starts_at_the_join() {
        assert_eq!(timeline_start(&group(10, 42)), 42);
        // Large from the start: the timeline begins at seq 1.
        assert_eq!(timeline_start(&group(1, 0)), 0);
        assert_eq!(timeline_start(&group(0, 0)), 0);
    }

    #[test]
    fn seen_events_drop_second_copies_of_events_only() {
        let event = |msg_id| pb::Message {
            msg_id,
            kind: pb::MessageKind::GroupEvent as i32,
            ..Default::default()
        };
        let chat = pb::Message {
            msg_id: 1,
            ..Default::default()
        };
        let mut seen = SeenEvents::default();
        seen.note(&event(1));
        seen.note(&chat);
        assert!(seen.is_duplicate(&event(1)));
        assert!(!seen.is_duplicate(&chat));
        for id in 2..=SeenEvents::CAPACITY as u64 + 1 {
            seen.note(&event(id));
        }
        assert!(!seen.is_duplicate(&event(1)), "the oldest id was let go");
        assert!(seen.is_duplicate(&event(2)));
    }

    #[test]
    fn membership_refusals_end_following_but_outages_do_not() {
        let refusal = |code| SdkError::from_wire(pb::Error::new(code, "x"));
        assert!(is_no_longer_readable(&refusal(ErrorCode::NotAMember)));
        assert!(is_no_longer_readable(&refusal(ErrorCode::UnknownGroup)));
        assert!(!is_no_longer_readable(&refusal(ErrorCode::Unavailable)));
        assert!(!is_no_longer_readable(&SdkError::NotConnected));
    }
}
