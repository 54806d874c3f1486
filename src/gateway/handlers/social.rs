//! Handlers of the group, conversation, receipt, recall, device, typing and
//! presence requests: check the fields, call the service, translate the
//! answer. Each answer that waits for the store is queued as a future, so
//! answers keep request order without stalling the read loop.

use std::future::Future;

use pigeon_protocol::pb;
use pigeon_protocol::{Body, ErrorCode, KickReason};

use super::{envelope, fit_messages, Flow, Session, PULL_FRAME_RESERVE};
use crate::error::ServiceError;
use crate::gateway::connection::Outbound;
use crate::service::messaging::social::{
    role_from_wire, ConversationView, GroupChanged, GroupView, TypingTarget, MAX_PRESENCE_USERS,
};
use crate::service::Recipient;
use crate::session::Kick;
use crate::store::{ConversationKey, GroupChange, GroupId, PushTokenRecord};

impl Session {
    /// Queue the answer of a request whose service call may wait.
    async fn pending<F>(&mut self, id: u64, answer: F) -> Flow
    where
        F: Future<Output = Result<Body, ServiceError>> + Send + 'static,
    {
        let answer = async move { envelope(id, answer.await) };
        self.queue(Outbound::Pending(Box::pin(answer))).await
    }

    async fn invalid(&mut self, id: u64, message: &str) -> Flow {
        self.refuse(id, ErrorCode::InvalidArgument, message).await
    }

    /// Typing and presence share one bucket per connection.
    async fn ephemeral_allowed(&mut self, id: u64) -> Option<Flow> {
        match self.ephemeral.take(std::time::Instant::now()) {
            Ok(()) => None,
            Err(wait) => Some(self.rate_limited(id, wait).await),
        }
    }

    pub(super) async fn social(&mut self, id: u64, body: Body) -> Flow {
        let messaging = self.gateway.messaging.clone();
        let caller = self.caller().clone();
        match body {
            Body::GroupCreate(r) => {
                let members = recipients(r.member_user_ids, r.member_usernames);
                self.pending(id, async move {
                    let changed = messaging.create_group(&caller, r.name, &members).await?;
                    Ok(group_response(changed))
                })
                .await
            }
            Body::GroupAdd(r) => {
                let Some(group) = group_id(r.group_id) else {
                    return self.invalid(id, "group_id must be set").await;
                };
                let users = recipients(r.user_ids, r.usernames);
                self.pending(id, async move {
                    let changed = messaging.add_members(&caller, group, &users).await?;
                    Ok(group_response(changed))
                })
                .await
            }
            Body::GroupRemove(r) => {
                let Some(group) = group_id(r.group_id) else {
                    return self.invalid(id, "group_id must be set").await;
                };
                let user = match (r.user_id, r.username.is_empty()) {
                    (0, false) => Recipient::Name(r.username),
                    (user, true) if user != 0 => Recipient::Id(user),
                    _ => {
                        return self
                            .invalid(id, "set exactly one of user_id and username")
                            .await
                    }
                };
                self.pending(id, async move {
                    let changed = messaging.remove_member(&caller, group, &user).await?;
                    Ok(group_response(changed))
                })
                .await
            }
            Body::GroupLeave(r) => self.change(id, r.group_id, GroupChange::Leave).await,
            Body::GroupDissolve(r) => self.change(id, r.group_id, GroupChange::Dissolve).await,
            Body::GroupSetRole(r) => {
                let Some(role) = role_from_wire(r.role) else {
                    return self
                        .invalid(id, "role must be MEMBER, ADMIN or OWNER")
                        .await;
                };
                if r.user_id == 0 {
                    return self.invalid(id, "user_id must be set").await;
                }
                let change = GroupChange::SetRole(r.user_id, role);
                self.change(id, r.group_id, change).await
            }
            Body::GroupList(_) => {
                self.pending(id, async move {
                    let groups = messaging.list_groups(&caller).await?;
                    let groups = groups.iter().map(group_info).collect();
                    Ok(Body::GroupListed(pb::GroupListResponse { groups }))
                })
                .await
            }
            Body::GroupMembers(r) => {
                let Some(group) = group_id(r.group_id) else {
                    return self.invalid(id, "group_id must be set").await;
                };
                self.pending(id, async move {
                    let (members, has_more) = messaging
                        .group_members(&caller, group, r.after_user_id, r.limit)
                        .await?;
                    let members = members
                        .into_iter()
                        .map(|m| pb::GroupMember {
                            user_id: m.member.user,
                            username: m.username.to_string(),
                            role: m.member.role.map_or(0, |r| r.number() as i32),
                            joined_at_ms: m.member.joined_at_ms,
                        })
                        .collect();
                    Ok(Body::GroupMembersListed(pb::GroupMembersResponse {
                        group_id: group,
                        members,
                        has_more,
                    }))
                })
                .await
            }
            Body::GroupPull(r) => {
                let Some(group) = group_id(r.group_id) else {
                    return self.invalid(id, "group_id must be set").await;
                };
                let budget = self.gateway.limits.max_frame_bytes as usize - PULL_FRAME_RESERVE;
                self.pending(id, async move {
                    let page = messaging
                        .group_pull(&caller, group, r.after_seq, r.limit)
                        .await?;
                    let total = page.messages.len();
                    let messages = fit_messages(page.messages, budget);
                    Ok(Body::GroupPulled(pb::GroupPullResponse {
                        group_id: group,
                        has_more: page.has_more || messages.len() < total,
                        messages,
                        max_seq: page.max_seq,
                    }))
                })
                .await
            }
            Body::Conversations(r) => {
                self.pending(id, async move {
                    let (views, total_unread) = messaging.conversations(&caller, r.limit).await?;
                    Ok(Body::ConversationsListed(pb::ConversationsResponse {
                        conversations: views.into_iter().map(conversation).collect(),
                        total_unread,
                    }))
                })
                .await
            }
            Body::Read(r) => {
                let conversation = match (r.peer_user_id, r.group_id) {
                    (peer, 0) if peer != 0 => ConversationKey::Peer(peer),
                    (0, group) if group != 0 => ConversationKey::Group(group),
                    _ => {
                        return self
                            .invalid(id, "set exactly one of peer_user_id and group_id")
                            .await
                    }
                };
                self.pending(id, async move {
                    let (read_seq, unread) = messaging.read(&caller, conversation, r.seq).await?;
                    Ok(Body::ReadSet(pb::ReadResponse { read_seq, unread }))
                })
                .await
            }
            Body::ReadCount(r) => {
                let Some(group) = group_id(r.group_id) else {
                    return self.invalid(id, "group_id must be set").await;
                };
                self.pending(id, async move {
                    let (read, members) = messaging.read_count(&caller, group, r.seq).await?;
                    Ok(Body::ReadCounted(pb::ReadCountResponse { read, members }))
                })
                .await
            }
            Body::Recall(r) => {
                if r.msg_id == 0 {
                    return self.invalid(id, "msg_id must be set").await;
                }
                self.pending(id, async move {
                    messaging.recall(&caller, r.msg_id).await?;
                    Ok(Body::Recalled(pb::RecallResponse { msg_id: r.msg_id }))
                })
                .await
            }
            Body::Devices(_) => {
                let registry = self.gateway.registry.clone();
                self.pending(id, async move {
                    let online = registry.online_devices(caller.user);
                    let devices = messaging.devices(&caller).await?;
                    let devices = devices
                        .into_iter()
                        .map(|d| pb::Device {
                            online: online.iter().any(|o| **o == *d.device_id),
                            current: d.device_id == caller.device_id,
                            device_id: d.device_id,
                            platform: d.platform,
                            created_at_ms: d.created_at_ms,
                            last_active_ms: d.last_active_ms,
                            acked_seq: d.acked_seq,
                        })
                        .collect();
                    Ok(Body::DevicesListed(pb::DevicesResponse { devices }))
                })
                .await
            }
            Body::RevokeDevice(r) => {
                if r.device_id.is_empty() {
                    return self.invalid(id, "device_id must be set").await;
                }
                let registry = self.gateway.registry.clone();
                self.pending(id, async move {
                    messaging.revoke_device(&caller, &r.device_id).await?;
                    let kick = Kick {
                        reason: KickReason::Revoked,
                        message: "this device was revoked from another device".into(),
                    };
                    registry.kick_user(caller.user, Some(&r.device_id), kick);
                    tracing::info!(
                        user_id = caller.user,
                        device = caller.device_id.as_str(),
                        revoked = %r.device_id,
                        "device revoked by its user"
                    );
                    Ok(Body::DeviceRevoked(pb::RevokeDeviceResponse {}))
                })
                .await
            }
            Body::Typing(r) => {
                if let Some(flow) = self.ephemeral_allowed(id).await {
                    return flow;
                }
                let target = match (r.to_user_id, r.group_id) {
                    (peer, 0) if peer != 0 => TypingTarget::Peer(peer),
                    (0, group) if group != 0 => TypingTarget::Group(group),
                    _ => {
                        return self
                            .invalid(id, "set exactly one of to_user_id and group_id")
                            .await
                    }
                };
                let registry = self.gateway.registry.clone();
                self.pending(id, async move {
                    messaging
                        .typing(&caller, target, r.typing, registry.as_ref())
                        .await?;
                    Ok(Body::TypingSent(pb::TypingResponse {}))
                })
                .await
            }
            Body::Presence(r) => {
                if let Some(flow) = self.ephemeral_allowed(id).await {
                    return flow;
                }
                self.presence(id, r.user_ids).await
            }
            Body::PushToken(r) => {
                let token = if r.remove {
                    None
                } else {
                    let provider = match pb::PushProvider::try_from(r.provider) {
                        Ok(p) if p != pb::PushProvider::Unspecified => p as u32,
                        _ => {
                            return self
                                .invalid(id, "provider must be APNS, FCM or WEBHOOK")
                                .await
                        }
                    };
                    Some(PushTokenRecord {
                        provider,
                        token: r.token,
                        topic: r.topic,
                        sandbox: r.sandbox,
                        last_pushed_ms: 0,
                    })
                };
                self.pending(id, async move {
                    messaging.set_push_token(&caller, token).await?;
                    Ok(Body::PushTokenSet(pb::PushTokenResponse {}))
                })
                .await
            }
            Body::AppState(r) => {
                self.signal.set_background(r.background);
                let answer = Body::AppStateSet(pb::AppStateResponse {});
                self.answer(id, Ok(answer), false).await
            }
            other => {
                let message = format!("{} is sent by the server, not by clients", other.name());
                self.refuse(id, ErrorCode::UnknownRequest, &message).await
            }
        }
    }

    async fn change(&mut self, id: u64, group: u64, change: GroupChange) -> Flow {
        let Some(group) = group_id(group) else {
            return self.invalid(id, "group_id must be set").await;
        };
        let messaging = self.gateway.messaging.clone();
        let caller = self.caller().clone();
        self.pending(id, async move {
            let changed = messaging.change_group(&caller, group, change).await?;
            Ok(group_response(changed))
        })
        .await
    }

    /// Answer each user's presence (visible ones only) and subscribe this
    /// connection to their changes.
    async fn presence(&mut self, id: u64, users: Vec<u64>) -> Flow {
        let fresh = users.iter().filter(|u| !self.watched.contains(u)).count();
        if users.len() > MAX_PRESENCE_USERS || self.watched.len() + fresh > MAX_PRESENCE_USERS {
            let message = format!("at most {MAX_PRESENCE_USERS} users per connection");
            return self.invalid(id, &message).await;
        }
        let messaging = self.gateway.messaging.clone();
        let caller = self.caller().clone();
        let visible = match messaging.presence_visible(&caller, &users).await {
            Ok(visible) => visible,
            Err(e) => return self.answer_service(id, Err(e)).await,
        };
        let registry = self.gateway.registry.clone();
        let mut presences = Vec::with_capacity(users.len());
        for (user, visible) in users.into_iter().zip(visible) {
            if !visible {
                presences.push(pb::Presence {
                    user_id: user,
                    ..Default::default()
                });
                continue;
            }
            registry.presences().watch(user, &self.signal);
            self.watched.insert(user);
            let online = registry.is_online(user);
            let last_seen_ms = match registry.presences().last_seen(user) {
                Some(ms) => ms,
                None => match messaging.last_active(user).await {
                    Ok(ms) => ms,
                    Err(e) => return self.answer_service(id, Err(e)).await,
                },
            };
            presences.push(pb::Presence {
                user_id: user,
                visible: true,
                online,
                last_seen_ms,
            });
        }
        let answer = Body::PresenceListed(pb::PresenceResponse { presences });
        self.answer(id, Ok(answer), false).await
    }
}

fn group_id(id: u64) -> Option<GroupId> {
    (id != 0).then_some(id)
}

fn recipients(ids: Vec<u64>, names: Vec<String>) -> Vec<Recipient> {
    ids.into_iter()
        .map(Recipient::Id)
        .chain(names.into_iter().map(Recipient::Name))
        .collect()
}

fn group_info(view: &GroupView) -> pb::GroupInfo {
    let g = &view.group;
    let me = view.me.as_ref();
    pb::GroupInfo {
        group_id: g.id,
        name: g.name.clone(),
        owner_user_id: g.owner,
        member_count: g.member_count,
        large: g.large,
        max_seq: g.max_seq,
        my_role: me.and_then(|m| m.role).map_or(0, |r| r.number() as i32),
        created_at_ms: g.created_at_ms,
        timeline_from_seq: g.timeline_from_seq,
        joined_seq: me.map_or(0, |m| m.joined_seq),
        dissolved: g.dissolved,
    }
}

fn group_response(changed: GroupChanged) -> Body {
    Body::Group(pb::GroupResponse {
        group: Some(group_info(&changed.view)),
        event_seq: changed.event_seq,
    })
}

fn conversation(v: ConversationView) -> pb::Conversation {
    let (last_content_type, last_content) = v.last_content.unwrap_or_default();
    pb::Conversation {
        peer_user_id: v.peer,
        peer_username: v.peer_name.to_string(),
        group_id: v.group,
        group_name: v.group_name,
        last_seq: v.last_seq,
        last_msg_id: v.last_msg_id,
        last_from_user_id: v.last_from,
        last_activity_ms: v.last_activity_ms,
        last_content_type,
        last_content,
        unread: v.unread,
        read_seq: v.read_seq,
        peer_read_seq: v.peer_read_seq,
    }
}
