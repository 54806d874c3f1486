//! Groups, conversations, read positions, recall, devices, typing and
//! presence visibility. Every rule that must hold against concurrent
//! changes (membership, roles, the recall window) is checked by the store
//! inside the committer's batch, so a check and the write it guards can
//! never be split by another request; the checks here are the ones that
//! only read (listing, who may see whose presence).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{unexpected, Caller, Delivered, Messaging, Recipient};
use crate::clock::now_ms;
use crate::error::ServiceError;
use crate::session::{Notifier, Push};
use crate::store::{
    ConversationKey, DeviceRecord, GroupChange, GroupId, GroupRecord, MemberRecord, MsgId,
    PushTokenRecord, Refusal, Role, Seq, StoreError, UserId, WriteOp, WriteOutcome,
};

/// Most users one presence request (and one connection) may watch.
pub const MAX_PRESENCE_USERS: usize = 1000;
/// Most members one create or add request may name.
const MAX_NAMED_MEMBERS: usize = 10_000;
/// Most conversations one list returns.
const MAX_CONVERSATIONS: usize = 1000;
/// Largest last-message content a conversation list carries (1,000 of
/// them stay well inside a frame).
const MAX_PREVIEW_BYTES: usize = 512;
/// Most members one page of a member list holds.
const MAX_MEMBERS_PAGE: usize = 1000;

/// A group as the caller sees it.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// The group.
    pub group: GroupRecord,
    /// The caller's membership (current or former), if any.
    pub me: Option<MemberRecord>,
}

/// The answer to a group change.
#[derive(Debug, Clone)]
pub struct GroupChanged {
    /// The group after the change.
    pub view: GroupView,
    /// The seq of the event written (0 if nothing changed).
    pub event_seq: Seq,
}

/// A member with the name a client shows.
#[derive(Debug, Clone)]
pub struct NamedMember {
    /// The record.
    pub member: MemberRecord,
    /// The username.
    pub username: Arc<str>,
}

/// A page of a large group's timeline.
#[derive(Debug, Clone)]
pub struct TimelineView {
    /// Entries in group seq order.
    pub messages: Vec<Delivered>,
    /// The highest seq the caller may read.
    pub max_seq: Seq,
    /// More wait above the last one.
    pub has_more: bool,
}

/// One entry of the conversation list.
#[derive(Debug, Clone)]
pub struct ConversationView {
    /// The 1:1 peer (0 for a group).
    pub peer: UserId,
    /// The peer's username.
    pub peer_name: Arc<str>,
    /// The group (0 for 1:1).
    pub group: GroupId,
    /// The group's name.
    pub group_name: String,
    /// The last conv seq.
    pub last_seq: Seq,
    /// The last message.
    pub last_msg_id: MsgId,
    /// Its sender.
    pub last_from: UserId,
    /// Last activity, ms since the epoch.
    pub last_activity_ms: u64,
    /// The last message's type and content, when still stored and not
    /// recalled.
    pub last_content: Option<(String, bytes::Bytes)>,
    /// Unread.
    pub unread: u64,
    /// The caller's read position.
    pub read_seq: Seq,
    /// For 1:1, the peer's read position.
    pub peer_read_seq: Seq,
}

/// Who may act in which conversation for typing indicators.
#[derive(Debug, Clone, Copy)]
pub enum TypingTarget {
    /// A 1:1 peer.
    Peer(UserId),
    /// A group.
    Group(GroupId),
}

/// Maps a store refusal to the error a client gets; `subject` names the
/// group or message the request was about.
pub fn refusal_error(refusal: Refusal, subject: u64) -> ServiceError {
    match refusal {
        Refusal::NotMember(why) => ServiceError::NotAMember(why),
        Refusal::PermissionDenied(why) => ServiceError::PermissionDenied(why),
        Refusal::UnknownGroup => ServiceError::UnknownGroup(subject),
        Refusal::UnknownMessage => ServiceError::UnknownMessage(subject),
        Refusal::RecallWindowPassed => ServiceError::RecallWindowPassed(subject),
        Refusal::GroupFull { max } => ServiceError::GroupFull(max),
        Refusal::BeyondMax { max_seq } => ServiceError::AckBeyondMaxSeq {
            seq: subject,
            max_seq,
        },
        Refusal::Invalid(why) => ServiceError::InvalidArgument(why),
    }
}

impl Messaging {
    /// Run a blocking store read off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn crate::store::Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(store.as_ref()))
            .await
            .map_err(|_| ServiceError::ShuttingDown)?
            .map_err(ServiceError::from)
    }

    fn resolve_all(&self, users: &[Recipient]) -> Result<Vec<UserId>, ServiceError> {
        if users.len() > MAX_NAMED_MEMBERS {
            return Err(ServiceError::InvalidArgument(format!(
                "at most {MAX_NAMED_MEMBERS} users per request"
            )));
        }
        users.iter().map(|u| self.resolve(u)).collect()
    }

    fn group_limits(&self) -> (u32, u32) {
        (
            self.rules.large_group_threshold,
            self.rules.max_group_members,
        )
    }

    /// Create a group owned by the caller.
    pub async fn create_group(
        &self,
        caller: &Caller,
        name: String,
        members: &[Recipient],
    ) -> Result<GroupChanged, ServiceError> {
        validate_group_name(&name)?;
        let members = self.resolve_all(members)?;
        let (large_threshold, max_members) = self.group_limits();
        let outcome = self
            .committer
            .write(WriteOp::CreateGroup {
                owner: caller.user,
                name,
                members,
                large_threshold,
                max_members,
                now_ms: now_ms(),
                msg_id: 0,
            })
            .await?;
        self.group_answer(caller, 0, outcome).await
    }

    /// Add members, by id or name.
    pub async fn add_members(
        &self,
        caller: &Caller,
        group: GroupId,
        users: &[Recipient],
    ) -> Result<GroupChanged, ServiceError> {
        if users.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "name at least one user".into(),
            ));
        }
        let users = self.resolve_all(users)?;
        self.change_group(caller, group, GroupChange::Add(users))
            .await
    }

    /// Remove one member, by id or name.
    pub async fn remove_member(
        &self,
        caller: &Caller,
        group: GroupId,
        user: &Recipient,
    ) -> Result<GroupChanged, ServiceError> {
        let user = self.resolve(user)?;
        self.change_group(caller, group, GroupChange::Remove(user))
            .await
    }

    /// Leave, dissolve or set a role.
    pub async fn change_group(
        &self,
        caller: &Caller,
        group: GroupId,
        change: GroupChange,
    ) -> Result<GroupChanged, ServiceError> {
        let (large_threshold, max_members) = self.group_limits();
        let outcome = self
            .committer
            .write(WriteOp::ChangeGroup {
                group,
                actor: caller.user,
                change,
                large_threshold,
                max_members,
                now_ms: now_ms(),
                msg_id: 0,
            })
            .await?;
        self.group_answer(caller, group, outcome).await
    }

    async fn group_answer(
        &self,
        caller: &Caller,
        subject: GroupId,
        outcome: WriteOutcome,
    ) -> Result<GroupChanged, ServiceError> {
        match outcome {
            WriteOutcome::GroupChanged {
                group, event_seq, ..
            } => Ok(GroupChanged {
                view: self.group_view(caller.user, group).await?,
                event_seq,
            }),
            WriteOutcome::Refused(refusal) => Err(refusal_error(refusal, subject)),
            other => Err(unexpected(other)),
        }
    }

    async fn group_view(&self, user: UserId, group: GroupId) -> Result<GroupView, ServiceError> {
        self.blocking(move |store| {
            let Some(record) = store.group(group)? else {
                return Ok(None);
            };
            let me = store.member(group, user)?;
            Ok(Some(GroupView { group: record, me }))
        })
        .await?
        .ok_or(ServiceError::UnknownGroup(group))
    }

    /// The caller's current groups.
    pub async fn list_groups(&self, caller: &Caller) -> Result<Vec<GroupView>, ServiceError> {
        let user = caller.user;
        self.blocking(move |store| {
            let mut views = Vec::new();
            for id in store.user_groups(user)? {
                if let Some(group) = store.group(id)? {
                    let me = store.member(id, user)?;
                    views.push(GroupView { group, me });
                }
            }
            Ok(views)
        })
        .await
    }

    /// A group the caller is a current member of (for reads that need it).
    async fn membership(
        &self,
        caller: &Caller,
        group: GroupId,
    ) -> Result<(GroupRecord, MemberRecord), ServiceError> {
        let view = self.group_view(caller.user, group).await?;
        match view.me {
            Some(me) if me.role.is_some() => Ok((view.group, me)),
            _ if view.group.dissolved => Err(ServiceError::UnknownGroup(group)),
            _ => Err(refusal_error(Refusal::not_member(group), group)),
        }
    }

    /// A page of the members of a group the caller belongs to, above
    /// `after_user`; true if more follow.
    pub async fn group_members(
        &self,
        caller: &Caller,
        group: GroupId,
        after_user: UserId,
        limit: u32,
    ) -> Result<(Vec<NamedMember>, bool), ServiceError> {
        self.membership(caller, group).await?;
        let limit = match limit {
            0 => MAX_MEMBERS_PAGE,
            n => (n as usize).min(MAX_MEMBERS_PAGE),
        };
        // One more than asked tells whether another page follows.
        let mut members = self
            .blocking(move |store| store.members_page(group, after_user, limit + 1))
            .await?;
        let more = members.len() > limit;
        members.truncate(limit);
        let page = members
            .into_iter()
            .map(|member| {
                Ok(NamedMember {
                    username: self.username(member.user)?,
                    member,
                })
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        Ok((page, more))
    }

    /// A page of a large group's timeline above `after_seq`, recording
    /// `after_seq` as the caller's timeline cursor.
    pub async fn group_pull(
        &self,
        caller: &Caller,
        group: GroupId,
        after_seq: Seq,
        limit: u32,
    ) -> Result<TimelineView, ServiceError> {
        let view = self.group_view(caller.user, group).await?;
        let Some(me) = view.me.filter(|m| m.role.is_some() || m.left_seq > 0) else {
            return Err(refusal_error(Refusal::not_member(group), group));
        };
        if !view.group.large {
            return Err(ServiceError::InvalidArgument(format!(
                "group {group} is small: its messages are in your queue"
            )));
        }
        let outcome = self
            .committer
            .write(WriteOp::TimelineAck {
                user: caller.user,
                group,
                seq: after_seq,
                now_ms: now_ms(),
            })
            .await?;
        match outcome {
            WriteOutcome::TimelineAcked { .. } => {}
            WriteOutcome::Refused(refusal) => return Err(refusal_error(refusal, after_seq)),
            other => return Err(unexpected(other)),
        }
        let up_to = me.visible_up_to(&view.group);
        // A member reads from the later of their join and the timeline's start.
        let from = after_seq
            .max(me.joined_seq)
            .max(view.group.timeline_from_seq.saturating_sub(1));
        let limit = match limit {
            0 => 100,
            n => (n as usize).min(self.rules.max_pull),
        };
        let page = self
            .blocking(move |store| store.timeline(group, from, up_to, limit))
            .await?;
        Ok(TimelineView {
            messages: self.named(page.messages)?,
            // Like a pull: the top is below what is not durable yet.
            max_seq: page.not_durable_from.map_or(up_to, |seq| seq - 1),
            has_more: page.has_more,
        })
    }

    /// The caller's conversations, most recent first, and the total unread.
    pub async fn conversations(
        &self,
        caller: &Caller,
        limit: u32,
    ) -> Result<(Vec<ConversationView>, u64), ServiceError> {
        let user = caller.user;
        let (direct, groups) = self
            .blocking(move |store| {
                let direct = store.conversations(user)?;
                let mut groups = Vec::new();
                for id in store.user_groups(user)? {
                    if let (Some(group), Some(me)) = (store.group(id)?, store.member(id, user)?) {
                        groups.push((group, me));
                    }
                }
                Ok((direct, groups))
            })
            .await?;
        let mut views = Vec::with_capacity(direct.len() + groups.len());
        for c in direct {
            views.push(ConversationView {
                peer: c.peer,
                peer_name: self.username(c.peer)?,
                group: 0,
                group_name: String::new(),
                last_seq: c.last_seq,
                last_msg_id: c.last_msg_id,
                last_from: c.last_from,
                last_activity_ms: c.last_activity_ms,
                last_content: None,
                unread: c.last_seq.saturating_sub(c.read_seq),
                read_seq: c.read_seq,
                peer_read_seq: c.peer_read_seq,
            });
        }
        for (group, me) in groups {
            views.push(ConversationView {
                peer: 0,
                peer_name: Arc::from(""),
                group: group.id,
                unread: me.unread(&group),
                group_name: group.name,
                last_seq: group.max_seq,
                last_msg_id: group.last_msg_id,
                last_from: group.last_from,
                last_activity_ms: group.last_activity_ms,
                last_content: None,
                read_seq: me.read_seq.max(me.joined_seq),
                peer_read_seq: 0,
            });
        }
        let total_unread = views.iter().map(|v| v.unread).sum();
        views.sort_by(|a, b| {
            (b.last_activity_ms, b.last_msg_id).cmp(&(a.last_activity_ms, a.last_msg_id))
        });
        let limit = match limit {
            0 => MAX_CONVERSATIONS,
            n => (n as usize).min(MAX_CONVERSATIONS),
        };
        views.truncate(limit);
        let ids: Vec<MsgId> = views.iter().map(|v| v.last_msg_id).collect();
        let bodies = self
            .blocking(move |store| {
                ids.into_iter()
                    .map(|id| if id == 0 { Ok(None) } else { store.message(id) })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        for (view, body) in views.iter_mut().zip(bodies) {
            view.last_content = body
                .filter(|m| {
                    !m.recalled
                        && m.kind == crate::store::EntryKind::Chat
                        && m.content.len() <= MAX_PREVIEW_BYTES
                })
                .map(|m| (m.content_type, m.content));
        }
        Ok((views, total_unread))
    }

    /// Set the caller's read position; returns (read_seq, unread). A 1:1
    /// peer's online devices get a receipt (the committer sends it).
    pub async fn read(
        &self,
        caller: &Caller,
        conversation: ConversationKey,
        seq: Seq,
    ) -> Result<(Seq, u64), ServiceError> {
        let outcome = self
            .committer
            .write(WriteOp::Read {
                user: caller.user,
                conversation,
                seq,
                now_ms: now_ms(),
            })
            .await?;
        match outcome {
            WriteOutcome::ReadSet {
                read_seq, unread, ..
            } => Ok((read_seq, unread)),
            WriteOutcome::Refused(Refusal::UnknownGroup) => match conversation {
                ConversationKey::Group(group) => Err(ServiceError::UnknownGroup(group)),
                ConversationKey::Peer(peer) => Err(ServiceError::UnknownUser(peer.to_string())),
            },
            WriteOutcome::Refused(refusal) => Err(refusal_error(refusal, seq)),
            other => Err(unexpected(other)),
        }
    }

    /// How many current members have read up to `seq`: (read, members).
    /// Counted from the members' read positions: no row per message.
    pub async fn read_count(
        &self,
        caller: &Caller,
        group: GroupId,
        seq: Seq,
    ) -> Result<(u32, u32), ServiceError> {
        let (record, _) = self.membership(caller, group).await?;
        if seq > record.max_seq {
            return Err(ServiceError::AckBeyondMaxSeq {
                seq,
                max_seq: record.max_seq,
            });
        }
        let members = self.blocking(move |store| store.members(group)).await?;
        let read = members.iter().filter(|m| m.read_seq >= seq).count();
        Ok((read as u32, members.len() as u32))
    }

    /// Recall a message the caller may recall, within the window.
    pub async fn recall(&self, caller: &Caller, msg_id: MsgId) -> Result<(), ServiceError> {
        let window = self.rules.recall_window.as_millis() as u64;
        let outcome = self
            .committer
            .write(WriteOp::Recall {
                caller: caller.user,
                caller_device: caller.device_id.clone(),
                target: msg_id,
                window_since_ms: now_ms().saturating_sub(window),
                msg_id: 0,
            })
            .await?;
        match outcome {
            WriteOutcome::Recalled { .. } => Ok(()),
            WriteOutcome::Refused(refusal) => Err(refusal_error(refusal, msg_id)),
            other => Err(unexpected(other)),
        }
    }

    /// The caller's devices.
    pub async fn devices(&self, caller: &Caller) -> Result<Vec<DeviceRecord>, ServiceError> {
        let user = caller.user;
        self.blocking(move |store| store.devices(user)).await
    }

    /// Revoke one of the caller's other devices: tokens deleted (durably),
    /// device record forgotten. The gateway kicks its live session.
    pub async fn revoke_device(
        &self,
        caller: &Caller,
        device_id: &str,
    ) -> Result<(), ServiceError> {
        if device_id == caller.device_id {
            return Err(ServiceError::InvalidArgument(
                "this is the calling device: log out instead".into(),
            ));
        }
        let user = caller.user;
        let device = device_id.to_owned();
        let known = self
            .blocking(move |store| {
                let known = store.device(user, &device)?.is_some();
                store.delete_user_tokens(user, Some(&device))?;
                Ok(known)
            })
            .await?;
        if !known {
            return Err(ServiceError::UnknownDevice(device_id.to_owned()));
        }
        // Its recorded acknowledgement must not outlive it (and the deferred
        // write would not recreate it anyway: `if_present`).
        self.acks().forget(user, device_id);
        self.committer
            .write(WriteOp::ForgetDevice {
                user,
                device_id: device_id.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Who gets a typing indicator from the caller: the peer, or the
    /// group's other current members.
    pub async fn typing_recipients(
        &self,
        caller: &Caller,
        target: TypingTarget,
    ) -> Result<Vec<UserId>, ServiceError> {
        match target {
            TypingTarget::Peer(peer) => {
                self.resolve(&Recipient::Id(peer))?;
                Ok(vec![peer])
            }
            TypingTarget::Group(group) => {
                self.membership(caller, group).await?;
                let members = self.blocking(move |store| store.members(group)).await?;
                Ok(members
                    .into_iter()
                    .map(|m| m.user)
                    .filter(|u| *u != caller.user)
                    .collect())
            }
        }
    }

    /// Send a typing indicator to online devices only.
    pub async fn typing(
        &self,
        caller: &Caller,
        target: TypingTarget,
        typing: bool,
        notifier: &dyn Notifier,
    ) -> Result<(), ServiceError> {
        let group = match target {
            TypingTarget::Group(g) => g,
            TypingTarget::Peer(_) => 0,
        };
        for user in self.typing_recipients(caller, target).await? {
            notifier.push(
                user,
                Push::Typing {
                    from: caller.user,
                    group,
                    typing,
                },
            );
        }
        Ok(())
    }

    /// For each user, whether the caller may see their presence: a 1:1
    /// peer (a conversation exists) or a fellow member of a group.
    pub async fn presence_visible(
        &self,
        caller: &Caller,
        users: &[UserId],
    ) -> Result<Vec<bool>, ServiceError> {
        if users.len() > MAX_PRESENCE_USERS {
            return Err(ServiceError::InvalidArgument(format!(
                "at most {MAX_PRESENCE_USERS} users per presence request"
            )));
        }
        let me = caller.user;
        let users = users.to_vec();
        self.blocking(move |store| {
            let peers: BTreeSet<UserId> = store
                .conversations(me)?
                .into_iter()
                .map(|c| c.peer)
                .collect();
            let groups = store.user_groups(me)?;
            users
                .into_iter()
                .map(|user| {
                    if user == me || peers.contains(&user) {
                        return Ok(true);
                    }
                    for group in &groups {
                        if store
                            .member(*group, user)?
                            .is_some_and(|m| m.role.is_some())
                        {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                })
                .collect()
        })
        .await
    }

    /// Register (`Some`) or remove (`None`) the caller's push token.
    pub async fn set_push_token(
        &self,
        caller: &Caller,
        token: Option<PushTokenRecord>,
    ) -> Result<(), ServiceError> {
        if let Some(t) = &token {
            let needs_token = t.provider != crate::service::outbox::PROVIDER_WEBHOOK;
            if needs_token && !(1..=4096).contains(&t.token.len()) {
                return Err(ServiceError::InvalidArgument(
                    "an APNs or FCM token is 1 to 4096 bytes".into(),
                ));
            }
            if !needs_token && !t.token.is_empty() {
                return Err(ServiceError::InvalidArgument(
                    "a webhook registration carries no token".into(),
                ));
            }
            if t.topic.len() > 255 {
                return Err(ServiceError::InvalidArgument(
                    "topic is at most 255 bytes".into(),
                ));
            }
        }
        self.committer
            .write(WriteOp::SetPushToken {
                user: caller.user,
                device_id: caller.device_id.clone(),
                token,
            })
            .await?;
        Ok(())
    }

    /// The latest activity of any of `user`'s devices (for last seen after
    /// a restart).
    pub async fn last_active(&self, user: UserId) -> Result<u64, ServiceError> {
        let devices = self.blocking(move |store| store.devices(user)).await?;
        Ok(devices.iter().map(|d| d.last_active_ms).max().unwrap_or(0))
    }
}

fn validate_group_name(name: &str) -> Result<(), ServiceError> {
    if (1..=64).contains(&name.len()) {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(
            "a group name is 1 to 64 bytes".into(),
        ))
    }
}

/// A role from its wire number; `None` for 0 or unknown.
pub fn role_from_wire(n: i32) -> Option<Role> {
    u32::try_from(n).ok().and_then(Role::from_number)
}
