//! The group, conversation and recall writes of a batch: the role rules,
//! the fan-out of a small group into every member's queue, the timeline of
//! a large group, the 1:1 conversation records and read positions.
//!
//! A group's stream has its own seq (the conv seq of everything in it). A
//! small group's entries go to every current member's queue; a large
//! group's go to its timeline once, and only the events that concern a
//! member personally (being added or removed, the group becoming large or
//! being dissolved) also go to that member's queue.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use prost::Message;

use super::{corrupt, tx, Batch, TxResult, META_NEXT_GROUP_ID};
use crate::store::records::{
    decode, decode_u64, pair_key, u64_key, BodyValue, GroupValue, MemberValue, PairConvValue,
};
use crate::store::sled_store::social::{
    body_group, conv_key, event_value, member_ids, read_seqs_mut, KIND_CHAT, KIND_GROUP_EVENT,
    KIND_RECALL,
};
use crate::store::sled_store::{from_sled, Trees};
use crate::store::{
    msg_id_time_ms, ConversationKey, GroupChange, GroupEventKind, GroupEventRecord, GroupId, MsgId,
    NewMessage, Refusal, Role, Seq, StoreError, UserId, WriteOp, WriteOutcome,
};

/// The size rules of a group op.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Above this many members a group is large.
    pub large_threshold: u32,
    /// No group grows above this.
    pub max_members: u32,
}

/// Where one appended entry went.
struct Appended {
    seq: Seq,
    queued: Vec<(UserId, Seq)>,
    timeline: Option<(GroupId, Seq)>,
}

/// Current members of every group the batch fans out to or changes, read
/// before the transaction (sled transactions cannot scan; the single
/// writer keeps them current, and the batch tracks its own changes). A
/// large group's send needs no member list, so it is not scanned.
pub(super) fn scan_groups(
    trees: &Trees,
    ops: &[WriteOp],
) -> Result<HashMap<GroupId, Vec<UserId>>, StoreError> {
    let mut wanted = BTreeSet::new();
    for op in ops {
        match op {
            WriteOp::Send { message, .. }
                if message.group != 0 && is_small(trees, message.group)? =>
            {
                wanted.insert(message.group);
            }
            WriteOp::ChangeGroup { group, .. } => {
                wanted.insert(*group);
            }
            WriteOp::Recall { target, .. } => {
                let group = body_group(trees, *target)?;
                if group != 0 && is_small(trees, group)? {
                    wanted.insert(group);
                }
            }
            _ => {}
        }
    }
    wanted
        .into_iter()
        .map(|group| Ok((group, member_ids(trees, group)?)))
        .collect()
}

/// The oldest timeline seqs each CollectTimeline of the batch may delete
/// (up to its bound and limit), read before the transaction.
pub(super) fn scan_timelines(
    trees: &Trees,
    ops: &[WriteOp],
) -> Result<HashMap<GroupId, Vec<Seq>>, StoreError> {
    let mut scans = HashMap::new();
    for op in ops {
        let WriteOp::CollectTimeline {
            group,
            up_to_seq,
            limit,
            ..
        } = op
        else {
            continue;
        };
        let range = pair_key(*group, 0)..=pair_key(*group, *up_to_seq);
        let mut seqs = Vec::new();
        for item in trees.groupseq_msgid.range(range).take(*limit) {
            let (key, _) = item.map_err(from_sled)?;
            seqs.push(crate::store::records::split_pair(&key)?.1);
        }
        scans.insert(*group, seqs);
    }
    Ok(scans)
}

fn is_small(trees: &Trees, group: GroupId) -> Result<bool, StoreError> {
    match trees.groupid_group.get(u64_key(group)).map_err(from_sled)? {
        Some(raw) => Ok(!decode::<GroupValue>("group", &raw)?.large),
        None => Ok(false),
    }
}

fn refused(refusal: Refusal) -> TxResult<WriteOutcome> {
    Ok(WriteOutcome::Refused(refusal))
}

fn changed(group: GroupId, appended: Appended) -> WriteOutcome {
    WriteOutcome::GroupChanged {
        group,
        event_seq: appended.seq,
        queued: appended.queued,
        timeline: appended.timeline,
    }
}

/// The body of a group event by `actor`.
fn event_body(group: GroupId, event: &GroupEventRecord) -> BodyValue {
    BodyValue {
        from: event.actor,
        group,
        kind: KIND_GROUP_EVENT,
        event: Some(event_value(event)),
        ..BodyValue::default()
    }
}

fn event(
    kind: GroupEventKind,
    actor: UserId,
    targets: Vec<UserId>,
    name: &str,
) -> GroupEventRecord {
    GroupEventRecord {
        kind,
        actor,
        targets,
        role: None,
        group_name: name.to_owned(),
        timeline_from_seq: 0,
    }
}

impl Batch<'_> {
    fn group_value(&self, group: GroupId) -> TxResult<Option<GroupValue>> {
        match self.groups.get(u64_key(group))? {
            Some(raw) => Ok(Some(tx(decode("group", &raw))?)),
            None => Ok(None),
        }
    }

    fn put_group(&self, group: GroupId, value: &GroupValue) -> TxResult<()> {
        self.groups
            .insert(&u64_key(group)[..], value.encode_to_vec())?;
        Ok(())
    }

    fn member_value(&self, group: GroupId, user: UserId) -> TxResult<Option<MemberValue>> {
        match self.members.get(pair_key(group, user))? {
            Some(raw) => Ok(Some(tx(decode("member", &raw))?)),
            None => Ok(None),
        }
    }

    fn put_member(&self, group: GroupId, user: UserId, value: &MemberValue) -> TxResult<()> {
        self.members
            .insert(&pair_key(group, user)[..], value.encode_to_vec())?;
        Ok(())
    }

    /// The user's role if a current member.
    fn role(&self, group: GroupId, user: UserId) -> TxResult<Option<Role>> {
        Ok(self
            .member_value(group, user)?
            .and_then(|m| Role::from_number(m.role)))
    }

    /// Current members as this batch has changed them.
    fn member_set(&mut self, group: GroupId) -> TxResult<&mut BTreeSet<UserId>> {
        if !self.member_sets.contains_key(&group) {
            let Some(scanned) = self.group_scans.get(&group) else {
                return Err(corrupt(format!(
                    "group {group}'s members were not read before the batch"
                )));
            };
            self.member_sets
                .insert(group, scanned.iter().copied().collect());
        }
        Ok(self
            .member_sets
            .get_mut(&group)
            .expect("inserted just above"))
    }

    /// Appends an entry to a group's stream at the next group seq: into
    /// every current member's queue (small group) or the timeline (large),
    /// and into the queues of `also`. Writes the body with its refcount;
    /// the caller writes the group record once it is done with it.
    fn append(
        &mut self,
        group_id: GroupId,
        group: &mut GroupValue,
        mut body: BodyValue,
        msg_id: MsgId,
        also: &[UserId],
    ) -> TxResult<Appended> {
        let seq = group.max_seq + 1;
        group.max_seq = seq;
        if body.kind != KIND_RECALL {
            group.last_msg_id = msg_id;
            group.last_from = body.from;
        }
        group.last_activity_ms = msg_id_time_ms(msg_id);
        let mut recipients: BTreeSet<UserId> = also.iter().copied().collect();
        let mut timeline = None;
        let mut refs = 0u32;
        if group.large {
            self.timeline
                .insert(&pair_key(group_id, seq)[..], &u64_key(msg_id)[..])?;
            timeline = Some((group_id, seq));
            refs += 1;
        } else {
            recipients.extend(self.member_set(group_id)?.iter().copied());
        }
        let mut queued = Vec::with_capacity(recipients.len());
        for user in recipients {
            queued.push((user, self.push_entry(user, msg_id)?));
        }
        refs += queued.len() as u32;
        body.refcount = refs;
        body.conv_seq = seq;
        if refs > 0 {
            self.bodies
                .insert(&u64_key(msg_id)[..], body.encode_to_vec())?;
        }
        self.top_msg_id = self.top_msg_id.max(msg_id);
        Ok(Appended {
            seq,
            queued,
            timeline,
        })
    }

    /// The next conv seq of a 1:1 pair, written into the pair's record (the
    /// sender's read position moves with it). The pair's first message also
    /// writes the index keys of both users.
    pub(super) fn advance_conversation(
        &mut self,
        from: UserId,
        to: UserId,
        msg_id: MsgId,
    ) -> TxResult<Seq> {
        let key = conv_key(from, to);
        let mut conv = match self.conv_value(&key)? {
            Some(conv) => conv,
            None => {
                self.conv_index.insert(&pair_key(from, to)[..], &[][..])?;
                if from != to {
                    self.conv_index.insert(&pair_key(to, from)[..], &[][..])?;
                }
                PairConvValue::default()
            }
        };
        let seq = conv.last_seq + 1;
        conv.last_seq = seq;
        conv.last_msg_id = msg_id;
        conv.last_from = from;
        conv.last_activity_ms = msg_id_time_ms(msg_id);
        *read_seqs_mut(&mut conv, from, to).0 = seq;
        self.convs.insert(&key[..], conv.encode_to_vec())?;
        Ok(seq)
    }

    fn conv_value(&self, key: &[u8]) -> TxResult<Option<PairConvValue>> {
        match self.convs.get(key)? {
            Some(raw) => Ok(Some(tx(decode("conversation", &raw))?)),
            None => Ok(None),
        }
    }

    /// A message to a group: the sender must be a current member.
    pub(super) fn send_group(&mut self, m: &NewMessage) -> TxResult<WriteOutcome> {
        let Some(mut group) = self.group_value(m.group)?.filter(|g| !g.dissolved) else {
            return refused(Refusal::UnknownGroup);
        };
        let Some(mut member) = self.member_value(m.group, m.from)?.filter(|v| v.role != 0) else {
            return refused(Refusal::not_member(m.group));
        };
        let appended = self.append(m.group, &mut group, super::chat_body(m), m.msg_id, &[])?;
        member.read_seq = appended.seq;
        member.last_active_ms = msg_id_time_ms(m.msg_id);
        self.put_member(m.group, m.from, &member)?;
        self.put_group(m.group, &group)?;
        let sender_seq = appended
            .queued
            .iter()
            .find(|(user, _)| *user == m.from)
            .map_or(0, |(_, seq)| *seq);
        Ok(WriteOutcome::Sent {
            msg_id: m.msg_id,
            sender_seq,
            recipient_seq: 0,
            duplicate: false,
            conv_seq: appended.seq,
            queued: appended.queued,
            timeline: appended.timeline,
        })
    }

    pub(super) fn create_group(
        &mut self,
        owner: UserId,
        name: &str,
        members: &[UserId],
        limits: Limits,
        now_ms: u64,
        msg_id: MsgId,
    ) -> TxResult<WriteOutcome> {
        let mut users: BTreeSet<UserId> = members.iter().copied().collect();
        users.insert(owner);
        if users.len() > limits.max_members as usize {
            return refused(Refusal::GroupFull {
                max: limits.max_members,
            });
        }
        let id = match self.meta.get(META_NEXT_GROUP_ID)? {
            Some(raw) => tx(decode_u64("next group id", &raw))?,
            None => 1,
        };
        let next = id
            .checked_add(1)
            .ok_or_else(|| corrupt("group ids exhausted".into()))?;
        self.meta.insert(META_NEXT_GROUP_ID, &u64_key(next)[..])?;
        let large = users.len() > limits.large_threshold as usize;
        let mut group = GroupValue {
            name: name.to_owned(),
            owner,
            created_at_ms: now_ms,
            member_count: users.len() as u32,
            large,
            timeline_from_seq: u64::from(large),
            ..GroupValue::default()
        };
        for &user in &users {
            let role = if user == owner {
                Role::Owner
            } else {
                Role::Member
            };
            let member = MemberValue {
                role: role.number(),
                joined_at_ms: now_ms,
                last_active_ms: now_ms,
                ..MemberValue::default()
            };
            self.put_member(id, user, &member)?;
            self.joined.insert(&pair_key(user, id)[..], &[][..])?;
        }
        self.member_sets.insert(id, users.clone());
        let targets = users.iter().copied().filter(|u| *u != owner).collect();
        let mut created = event(GroupEventKind::Created, owner, targets, name);
        created.timeline_from_seq = group.timeline_from_seq;
        let also: Vec<UserId> = if large {
            users.into_iter().collect()
        } else {
            Vec::new()
        };
        let appended = self.append(id, &mut group, event_body(id, &created), msg_id, &also)?;
        self.put_group(id, &group)?;
        Ok(changed(id, appended))
    }

    pub(super) fn change_group(
        &mut self,
        group_id: GroupId,
        actor: UserId,
        change: &GroupChange,
        limits: Limits,
        now_ms: u64,
        msg_id: MsgId,
    ) -> TxResult<WriteOutcome> {
        let Some(mut group) = self.group_value(group_id)?.filter(|g| !g.dissolved) else {
            return refused(Refusal::UnknownGroup);
        };
        let Some(actor_role) = self.role(group_id, actor)? else {
            return refused(Refusal::not_member(group_id));
        };
        let denied = |why: &str| refused(Refusal::PermissionDenied(why.to_owned()));
        match change {
            GroupChange::Add(users) => {
                if !actor_role.is_manager() {
                    return denied("only the owner or an admin adds members");
                }
                let current = self.member_set(group_id)?;
                let new: Vec<UserId> = users
                    .iter()
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|u| !current.contains(u))
                    .collect();
                if new.is_empty() {
                    return Ok(WriteOutcome::GroupChanged {
                        group: group_id,
                        event_seq: 0,
                        queued: Vec::new(),
                        timeline: None,
                    });
                }
                if group.member_count as usize + new.len() > limits.max_members as usize {
                    return refused(Refusal::GroupFull {
                        max: limits.max_members,
                    });
                }
                self.add_members(group_id, &mut group, actor, new, limits, now_ms, msg_id)
            }
            GroupChange::Remove(target) => {
                if *target == actor {
                    return refused(Refusal::Invalid(
                        "to leave a group, use leave rather than remove".into(),
                    ));
                }
                let Some(target_role) = self.role(group_id, *target)? else {
                    return refused(Refusal::NotMember(format!(
                        "user {target} is not a member of group {group_id}"
                    )));
                };
                let allowed = actor_role == Role::Owner
                    || (actor_role == Role::Admin && target_role == Role::Member);
                if !allowed {
                    return denied("the owner removes anyone; an admin removes plain members only");
                }
                let removed = event(GroupEventKind::Removed, actor, vec![*target], &group.name);
                self.remove_member(group_id, &mut group, *target, &removed, msg_id)
            }
            GroupChange::Leave => {
                if actor_role == Role::Owner {
                    return denied(
                        "the owner cannot leave: hand ownership to another member first, \
                         or dissolve the group",
                    );
                }
                let left = event(GroupEventKind::Left, actor, Vec::new(), &group.name);
                self.remove_member(group_id, &mut group, actor, &left, msg_id)
            }
            GroupChange::Dissolve => {
                if actor_role != Role::Owner {
                    return denied("only the owner dissolves the group");
                }
                self.dissolve(group_id, &mut group, actor, msg_id)
            }
            GroupChange::SetRole(target, role) => {
                if actor_role != Role::Owner {
                    return denied("only the owner sets roles");
                }
                if *target == actor {
                    return refused(Refusal::Invalid(
                        "the owner's role changes only by handing ownership to another member"
                            .into(),
                    ));
                }
                let Some(mut target_member) = self
                    .member_value(group_id, *target)?
                    .filter(|m| m.role != 0)
                else {
                    return refused(Refusal::NotMember(format!(
                        "user {target} is not a member of group {group_id}"
                    )));
                };
                target_member.role = role.number();
                self.put_member(group_id, *target, &target_member)?;
                if *role == Role::Owner {
                    let mut owner = self
                        .member_value(group_id, actor)?
                        .ok_or_else(|| corrupt("the owner has no member record".into()))?;
                    owner.role = Role::Admin.number();
                    self.put_member(group_id, actor, &owner)?;
                    group.owner = *target;
                }
                let mut roled = event(
                    GroupEventKind::RoleChanged,
                    actor,
                    vec![*target],
                    &group.name,
                );
                roled.role = Some(*role);
                let appended = self.append(
                    group_id,
                    &mut group,
                    event_body(group_id, &roled),
                    msg_id,
                    &[],
                )?;
                self.put_group(group_id, &group)?;
                Ok(changed(group_id, appended))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_members(
        &mut self,
        group_id: GroupId,
        group: &mut GroupValue,
        actor: UserId,
        new: Vec<UserId>,
        limits: Limits,
        now_ms: u64,
        msg_id: MsgId,
    ) -> TxResult<WriteOutcome> {
        let joined_seq = group.max_seq;
        for &user in &new {
            // A returning member starts afresh: what was sent while they
            // were away stays invisible.
            let member = MemberValue {
                role: Role::Member.number(),
                joined_seq,
                joined_at_ms: now_ms,
                last_active_ms: now_ms,
                read_seq: joined_seq,
                ..MemberValue::default()
            };
            self.put_member(group_id, user, &member)?;
            self.joined.insert(&pair_key(user, group_id)[..], &[][..])?;
            self.member_set(group_id)?.insert(user);
        }
        group.member_count += new.len() as u32;
        let also = if group.large { new.clone() } else { Vec::new() };
        let added = event(GroupEventKind::Added, actor, new, &group.name);
        let mut appended =
            self.append(group_id, group, event_body(group_id, &added), msg_id, &also)?;
        if !group.large && group.member_count > limits.large_threshold {
            group.large = true;
            group.timeline_from_seq = group.max_seq + 1;
            let everyone: Vec<UserId> = self.member_set(group_id)?.iter().copied().collect();
            let mut became = event(GroupEventKind::BecameLarge, actor, Vec::new(), &group.name);
            became.timeline_from_seq = group.timeline_from_seq;
            let body = event_body(group_id, &became);
            let more = self.append(group_id, group, body, msg_id + 1, &everyone)?;
            appended.queued.extend(more.queued);
            appended.timeline = more.timeline;
        }
        self.put_group(group_id, group)?;
        Ok(changed(group_id, appended))
    }

    /// Takes `user` out of the group, writing `why` (which the user gets
    /// too); they can still read up to it.
    fn remove_member(
        &mut self,
        group_id: GroupId,
        group: &mut GroupValue,
        user: UserId,
        why: &GroupEventRecord,
        msg_id: MsgId,
    ) -> TxResult<WriteOutcome> {
        // Every ChangeGroup's group is scanned, so the set is known.
        self.member_set(group_id)?.remove(&user);
        group.member_count = group.member_count.saturating_sub(1);
        self.joined.remove(&pair_key(user, group_id)[..])?;
        let appended = self.append(group_id, group, event_body(group_id, why), msg_id, &[user])?;
        let mut member = self
            .member_value(group_id, user)?
            .ok_or_else(|| corrupt(format!("member {user} of group {group_id} vanished")))?;
        member.role = 0;
        member.left_seq = appended.seq;
        self.put_member(group_id, user, &member)?;
        self.put_group(group_id, group)?;
        Ok(changed(group_id, appended))
    }

    fn dissolve(
        &mut self,
        group_id: GroupId,
        group: &mut GroupValue,
        actor: UserId,
        msg_id: MsgId,
    ) -> TxResult<WriteOutcome> {
        let everyone: Vec<UserId> = self.member_set(group_id)?.iter().copied().collect();
        let also = if group.large {
            everyone.clone()
        } else {
            Vec::new()
        };
        let dissolved = event(GroupEventKind::Dissolved, actor, Vec::new(), &group.name);
        let appended = self.append(
            group_id,
            group,
            event_body(group_id, &dissolved),
            msg_id,
            &also,
        )?;
        for &user in &everyone {
            if let Some(mut member) = self.member_value(group_id, user)? {
                member.role = 0;
                member.left_seq = appended.seq;
                self.put_member(group_id, user, &member)?;
            }
            self.joined.remove(&pair_key(user, group_id)[..])?;
        }
        self.member_set(group_id)?.clear();
        group.dissolved = true;
        group.member_count = 0;
        self.put_group(group_id, group)?;
        Ok(changed(group_id, appended))
    }

    pub(super) fn read(
        &mut self,
        user: UserId,
        conversation: ConversationKey,
        seq: Seq,
        now_ms: u64,
    ) -> TxResult<WriteOutcome> {
        match conversation {
            ConversationKey::Peer(peer) => {
                let key = conv_key(user, peer);
                let Some(mut conv) = self.conv_value(&key)? else {
                    if seq == 0 {
                        return Ok(WriteOutcome::ReadSet {
                            read_seq: 0,
                            unread: 0,
                            receipt_to: None,
                        });
                    }
                    return refused(Refusal::BeyondMax { max_seq: 0 });
                };
                if seq > conv.last_seq {
                    return refused(Refusal::BeyondMax {
                        max_seq: conv.last_seq,
                    });
                }
                let (read_seq, _) = read_seqs_mut(&mut conv, user, peer);
                let advanced = seq > *read_seq;
                *read_seq = (*read_seq).max(seq);
                let read_seq = *read_seq;
                let mut receipt_to = None;
                if advanced {
                    self.convs.insert(&key[..], conv.encode_to_vec())?;
                    if peer != user {
                        receipt_to = Some(peer);
                    }
                }
                Ok(WriteOutcome::ReadSet {
                    read_seq,
                    unread: conv.last_seq - read_seq,
                    receipt_to,
                })
            }
            ConversationKey::Group(group_id) => {
                let Some(group) = self.group_value(group_id)? else {
                    return refused(Refusal::UnknownGroup);
                };
                let Some(mut member) = self.member_value(group_id, user)?.filter(|m| m.role != 0)
                else {
                    return refused(Refusal::not_member(group_id));
                };
                if seq > group.max_seq {
                    return refused(Refusal::BeyondMax {
                        max_seq: group.max_seq,
                    });
                }
                member.read_seq = member.read_seq.max(seq);
                member.last_active_ms = now_ms;
                self.put_member(group_id, user, &member)?;
                Ok(WriteOutcome::ReadSet {
                    read_seq: member.read_seq,
                    unread: group
                        .max_seq
                        .saturating_sub(member.read_seq.max(member.joined_seq)),
                    receipt_to: None,
                })
            }
        }
    }

    pub(super) fn recall(
        &mut self,
        caller: UserId,
        caller_device: &str,
        target: MsgId,
        window_since_ms: u64,
        msg_id: MsgId,
    ) -> TxResult<WriteOutcome> {
        let key = u64_key(target);
        let Some(raw) = self.bodies.get(key)? else {
            return refused(Refusal::UnknownMessage);
        };
        let mut body: BodyValue = tx(decode("message body", &raw))?;
        if body.kind != KIND_CHAT {
            return refused(Refusal::Invalid(
                "only chat messages can be recalled, not events".into(),
            ));
        }
        if body.group == 0 {
            if caller != body.from {
                return refused(if caller == body.to {
                    Refusal::PermissionDenied("only the sender recalls a 1:1 message".into())
                } else {
                    Refusal::UnknownMessage
                });
            }
        } else {
            match self.member_value(body.group, caller)? {
                None => return refused(Refusal::UnknownMessage),
                Some(m) => match Role::from_number(m.role) {
                    None => {
                        return refused(Refusal::NotMember(format!(
                            "you are no longer a member of group {}",
                            body.group
                        )))
                    }
                    Some(role) if caller != body.from && !role.is_manager() => {
                        return refused(Refusal::PermissionDenied(
                            "only the sender, the owner or an admin recalls a group message".into(),
                        ))
                    }
                    Some(_) => {}
                },
            }
        }
        if body.recalled {
            return Ok(WriteOutcome::Recalled {
                queued: Vec::new(),
                timeline: None,
            });
        }
        // Recallable while now < sent + window: a window of 0 allows none.
        if msg_id_time_ms(target) <= window_since_ms {
            return refused(Refusal::RecallWindowPassed);
        }
        let recall_body = BodyValue {
            from: caller,
            to: body.to,
            from_device: caller_device.to_owned(),
            group: body.group,
            kind: KIND_RECALL,
            recalled_msg_id: target,
            ..BodyValue::default()
        };
        body.recalled = true;
        body.content = Bytes::new();
        body.content_type.clear();
        self.bodies.insert(&key[..], body.encode_to_vec())?;
        if body.group == 0 {
            let users: BTreeSet<UserId> = [body.from, body.to].into_iter().collect();
            let mut queued = Vec::with_capacity(users.len());
            for user in users {
                queued.push((user, self.push_entry(user, msg_id)?));
            }
            let stored = BodyValue {
                refcount: queued.len() as u32,
                ..recall_body
            };
            self.bodies
                .insert(&u64_key(msg_id)[..], stored.encode_to_vec())?;
            self.top_msg_id = self.top_msg_id.max(msg_id);
            return Ok(WriteOutcome::Recalled {
                queued,
                timeline: None,
            });
        }
        let Some(mut group) = self.group_value(body.group)?.filter(|g| !g.dissolved) else {
            return refused(Refusal::UnknownGroup);
        };
        let appended = self.append(body.group, &mut group, recall_body, msg_id, &[])?;
        self.put_group(body.group, &group)?;
        Ok(WriteOutcome::Recalled {
            queued: appended.queued,
            timeline: appended.timeline,
        })
    }

    pub(super) fn collect_timeline(
        &mut self,
        group: GroupId,
        up_to_seq: Seq,
        retain_since_ms: u64,
        limit: usize,
    ) -> TxResult<WriteOutcome> {
        let (mut entries, mut bodies) = (0u64, 0u64);
        let seqs = self.timeline_scans.get(&group).cloned().unwrap_or_default();
        for seq in seqs.into_iter().filter(|s| *s <= up_to_seq) {
            let key = pair_key(group, seq);
            let Some(raw) = self.timeline.get(key)? else {
                continue;
            };
            let msg_id = tx(decode_u64("timeline entry", &raw))?;
            // Ids grow with seq: everything after this is recent too.
            if msg_id_time_ms(msg_id) >= retain_since_ms || entries as usize == limit {
                break;
            }
            self.timeline.remove(&key[..])?;
            entries += 1;
            bodies += u64::from(self.release_body(msg_id)?);
        }
        Ok(WriteOutcome::Collected {
            entries,
            bodies,
            more: false,
        })
    }

    pub(super) fn timeline_ack(
        &mut self,
        user: UserId,
        group_id: GroupId,
        seq: Seq,
        now_ms: u64,
    ) -> TxResult<WriteOutcome> {
        let Some(group) = self.group_value(group_id)? else {
            return refused(Refusal::UnknownGroup);
        };
        let Some(mut member) = self.member_value(group_id, user)? else {
            return refused(Refusal::not_member(group_id));
        };
        let top = if member.role != 0 {
            group.max_seq
        } else {
            member.left_seq
        };
        if seq > top {
            return refused(Refusal::BeyondMax { max_seq: top });
        }
        member.acked_seq = member.acked_seq.max(seq);
        member.last_active_ms = now_ms;
        self.put_member(group_id, user, &member)?;
        Ok(WriteOutcome::TimelineAcked {
            acked_seq: member.acked_seq,
        })
    }
}
