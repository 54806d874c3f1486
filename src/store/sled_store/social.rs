//! Reads of groups, members, timelines and conversations in the sled
//! engine, and the conversions between their stored values and the store's
//! records. The writes are in `batch::social`.

use std::ops::Bound;

use super::{from_sled, SledStore, Trees};
use crate::store::records::{
    decode, pair_key, split_pair, split_user_str, u64_key, BodyValue, ConvValue, EventValue,
    GroupValue, MemberValue, PairConvValue, PushJobValue, PushTokenValue,
};
use crate::store::{
    Conversation, EntryKind, GroupEventKind, GroupEventRecord, GroupId, GroupRecord, MemberRecord,
    MsgId, PushJobRecord, PushTokenRecord, Role, Seq, StoreError, StoredMessage, TimelinePage,
    UserId,
};

/// The wire's MessageKind numbers, as bodies store them.
pub(super) const KIND_CHAT: u32 = 0;
pub(super) const KIND_GROUP_EVENT: u32 = 2;
pub(super) const KIND_RECALL: u32 = 3;

/// A body read back as a stored message at `seq`.
pub(super) fn stored(
    seq: Seq,
    msg_id: MsgId,
    body: BodyValue,
) -> Result<StoredMessage, StoreError> {
    let kind = match body.kind {
        KIND_CHAT | 1 => EntryKind::Chat,
        KIND_GROUP_EVENT => {
            let event = body
                .event
                .ok_or_else(|| StoreError::Corrupt(format!("group event {msg_id} has no event")))?;
            EntryKind::GroupEvent(event_record(event)?)
        }
        KIND_RECALL => EntryKind::Recall(body.recalled_msg_id),
        other => {
            return Err(StoreError::Corrupt(format!(
                "body {msg_id} has unknown kind {other}"
            )))
        }
    };
    Ok(StoredMessage {
        seq,
        msg_id,
        from: body.from,
        from_device: body.from_device,
        to: body.to,
        client_msg_id: body.client_msg_id,
        content_type: body.content_type,
        content: body.content,
        group: body.group,
        kind,
        conv_seq: body.conv_seq,
        recalled: body.recalled,
    })
}

fn event_record(event: EventValue) -> Result<GroupEventRecord, StoreError> {
    let kind = GroupEventKind::from_number(event.kind)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown group event kind {}", event.kind)))?;
    Ok(GroupEventRecord {
        kind,
        actor: event.actor,
        targets: event.targets,
        role: Role::from_number(event.role),
        group_name: event.group_name,
        timeline_from_seq: event.timeline_from_seq,
    })
}

/// The stored value of an event.
pub(super) fn event_value(event: &GroupEventRecord) -> EventValue {
    EventValue {
        kind: event.kind as u32,
        actor: event.actor,
        targets: event.targets.clone(),
        role: event.role.map_or(0, Role::number),
        group_name: event.group_name.clone(),
        timeline_from_seq: event.timeline_from_seq,
    }
}

pub(super) fn group_record(id: GroupId, v: GroupValue) -> GroupRecord {
    GroupRecord {
        id,
        name: v.name,
        owner: v.owner,
        created_at_ms: v.created_at_ms,
        member_count: v.member_count,
        large: v.large,
        timeline_from_seq: v.timeline_from_seq,
        max_seq: v.max_seq,
        dissolved: v.dissolved,
        last_msg_id: v.last_msg_id,
        last_from: v.last_from,
        last_activity_ms: v.last_activity_ms,
    }
}

pub(super) fn member_record(group: GroupId, user: UserId, v: MemberValue) -> MemberRecord {
    MemberRecord {
        group,
        user,
        role: Role::from_number(v.role),
        joined_seq: v.joined_seq,
        joined_at_ms: v.joined_at_ms,
        left_seq: v.left_seq,
        read_seq: v.read_seq,
        acked_seq: v.acked_seq,
        last_active_ms: v.last_active_ms,
    }
}

pub(super) fn group(trees: &Trees, group: GroupId) -> Result<Option<GroupRecord>, StoreError> {
    let Some(raw) = trees.groupid_group.get(u64_key(group)).map_err(from_sled)? else {
        return Ok(None);
    };
    Ok(Some(group_record(group, decode("group", &raw)?)))
}

pub(super) fn member(
    trees: &Trees,
    group: GroupId,
    user: UserId,
) -> Result<Option<MemberRecord>, StoreError> {
    let key = pair_key(group, user);
    let Some(raw) = trees.groupuser_member.get(key).map_err(from_sled)? else {
        return Ok(None);
    };
    Ok(Some(member_record(group, user, decode("member", &raw)?)))
}

pub(super) fn members(trees: &Trees, group: GroupId) -> Result<Vec<MemberRecord>, StoreError> {
    let mut members = Vec::new();
    for item in trees.groupuser_member.scan_prefix(u64_key(group)) {
        let (key, raw) = item.map_err(from_sled)?;
        let (_, user) = split_pair(&key)?;
        let member = member_record(group, user, decode("member", &raw)?);
        if member.role.is_some() {
            members.push(member);
        }
    }
    Ok(members)
}

pub(super) fn members_page(
    trees: &Trees,
    group: GroupId,
    after: UserId,
    limit: usize,
) -> Result<Vec<MemberRecord>, StoreError> {
    let Some(first) = after.checked_add(1) else {
        return Ok(Vec::new());
    };
    let mut page = Vec::new();
    let range = pair_key(group, first)..=pair_key(group, UserId::MAX);
    for item in trees.groupuser_member.range(range) {
        if page.len() == limit {
            break;
        }
        let (key, raw) = item.map_err(from_sled)?;
        let (_, user) = split_pair(&key)?;
        let member = member_record(group, user, decode("member", &raw)?);
        if member.role.is_some() {
            page.push(member);
        }
    }
    Ok(page)
}

/// Current members' ids only (the batch's pre-scan).
pub(super) fn member_ids(trees: &Trees, group: GroupId) -> Result<Vec<UserId>, StoreError> {
    Ok(members(trees, group)?.into_iter().map(|m| m.user).collect())
}

pub(super) fn user_groups(trees: &Trees, user: UserId) -> Result<Vec<GroupId>, StoreError> {
    let mut groups = Vec::new();
    for item in trees.usergroup_joined.scan_prefix(u64_key(user)) {
        let (key, _) = item.map_err(from_sled)?;
        groups.push(split_pair(&key)?.1);
    }
    Ok(groups)
}

pub(super) fn timeline(
    store: &SledStore,
    group: GroupId,
    after_seq: Seq,
    up_to: Seq,
    limit: usize,
) -> Result<TimelinePage, StoreError> {
    if after_seq >= up_to {
        return Ok(TimelinePage::default());
    }
    let range = (
        Bound::Excluded(pair_key(group, after_seq)),
        Bound::Included(pair_key(group, up_to)),
    );
    let engine = store.engine();
    let entries = engine.trees.groupseq_msgid.range(range);
    let (messages, has_more, not_durable_from) =
        store.durable_page(&engine.trees, entries, limit)?;
    Ok(TimelinePage {
        messages,
        has_more,
        not_durable_from,
    })
}

/// The `pair_conv` key of the conversation of `a` and `b`, either way
/// round: the lower id first.
pub(super) fn conv_key(a: UserId, b: UserId) -> [u8; 16] {
    pair_key(a.min(b), a.max(b))
}

/// `user`'s read position in their conversation with `peer`, then the
/// peer's. In a note to self, the lower one's then the higher one's, which
/// stays 0: nobody else reads it.
pub(super) fn read_seqs_mut(
    conv: &mut PairConvValue,
    user: UserId,
    peer: UserId,
) -> (&mut Seq, &mut Seq) {
    if user <= peer {
        (&mut conv.low_read_seq, &mut conv.high_read_seq)
    } else {
        (&mut conv.high_read_seq, &mut conv.low_read_seq)
    }
}

/// The conversation as `user` sees it.
pub(super) fn conversation(user: UserId, peer: UserId, mut v: PairConvValue) -> Conversation {
    let (read_seq, peer_read_seq) = read_seqs_mut(&mut v, user, peer);
    let (read_seq, peer_read_seq) = (*read_seq, *peer_read_seq);
    Conversation {
        peer,
        last_seq: v.last_seq,
        read_seq,
        peer_read_seq,
        last_msg_id: v.last_msg_id,
        last_from: v.last_from,
        last_activity_ms: v.last_activity_ms,
    }
}

/// Merges `user`'s schema 4 record of their conversation with `peer` into
/// the pair's record: the later last message, the higher read positions.
/// Merging a record twice, or an all-zero one, changes nothing.
pub(super) fn merge_conv(pair: &mut PairConvValue, user: UserId, peer: UserId, old: &ConvValue) {
    if old.last_seq > pair.last_seq {
        pair.last_seq = old.last_seq;
        pair.last_msg_id = old.last_msg_id;
        pair.last_from = old.last_from;
        pair.last_activity_ms = old.last_activity_ms;
    }
    let (mine, theirs) = read_seqs_mut(pair, user, peer);
    *mine = (*mine).max(old.read_seq);
    *theirs = (*theirs).max(old.peer_read_seq);
}

/// `user`'s 1:1 conversations: the peers from the index, each pair's
/// record from `pair_conv`.
pub(super) fn conversations(trees: &Trees, user: UserId) -> Result<Vec<Conversation>, StoreError> {
    let mut found = Vec::new();
    for item in trees.userpeer_conv.scan_prefix(u64_key(user)) {
        let (key, _) = item.map_err(from_sled)?;
        let (_, peer) = split_pair(&key)?;
        let Some(raw) = trees
            .pair_conv
            .get(conv_key(user, peer))
            .map_err(from_sled)?
        else {
            return Err(StoreError::Corrupt(format!(
                "user {user}'s conversation with {peer} is indexed but has no record"
            )));
        };
        found.push(conversation(user, peer, decode("conversation", &raw)?));
    }
    Ok(found)
}

/// The group a stored body belongs to (0 for 1:1, or no such body), for the
/// batch's pre-scan of a recall.
pub(super) fn body_group(trees: &Trees, msg_id: MsgId) -> Result<GroupId, StoreError> {
    match trees.msgid_body.get(u64_key(msg_id)).map_err(from_sled)? {
        Some(raw) => Ok(decode::<BodyValue>("message body", &raw)?.group),
        None => Ok(0),
    }
}

pub(super) fn push_devices(trees: &Trees, user: UserId) -> Result<Vec<String>, StoreError> {
    let mut devices = Vec::new();
    for item in trees.userdevice_push.scan_prefix(u64_key(user)) {
        let (key, _) = item.map_err(from_sled)?;
        devices.push(split_user_str(&key)?.1);
    }
    Ok(devices)
}

pub(crate) fn token_record(v: PushTokenValue) -> PushTokenRecord {
    PushTokenRecord {
        provider: v.provider,
        token: v.token,
        topic: v.topic,
        sandbox: v.sandbox,
        last_pushed_ms: v.last_pushed_ms,
    }
}

pub(crate) fn token_value(r: &PushTokenRecord) -> PushTokenValue {
    PushTokenValue {
        provider: r.provider,
        token: r.token.clone(),
        topic: r.topic.clone(),
        sandbox: r.sandbox,
        last_pushed_ms: r.last_pushed_ms,
    }
}

/// Walks the outbox (one row per device with a pending push). A walk is
/// fine for the outbox's size: it holds one row per offline device with
/// something new, and rows go once delivered.
pub(super) fn due_push_jobs(
    trees: &Trees,
    now_ms: u64,
    limit: usize,
) -> Result<(Vec<PushJobRecord>, Option<u64>), StoreError> {
    let mut due = Vec::new();
    let mut next: Option<u64> = None;
    for item in trees.userdevice_pushjob.iter() {
        let (key, raw) = item.map_err(from_sled)?;
        let (user, device_id) = split_user_str(&key)?;
        let v: PushJobValue = decode("push job", &raw)?;
        if v.not_before_ms > now_ms {
            next = Some(next.map_or(v.not_before_ms, |n| n.min(v.not_before_ms)));
            continue;
        }
        due.push(PushJobRecord {
            user,
            device_id,
            token: token_record(v.token.unwrap_or_default()),
            badge: v.badge,
            peer: v.peer,
            group: v.group,
            max_seq: v.max_seq,
            preview: v.preview,
            attempts: v.attempts,
            not_before_ms: v.not_before_ms,
            generation: v.generation,
        });
    }
    due.sort_by_key(|j| j.not_before_ms);
    if due.len() > limit {
        let first_left = due[limit].not_before_ms;
        next = Some(next.map_or(first_left, |n| n.min(first_left)));
        due.truncate(limit);
    }
    Ok((due, next))
}
