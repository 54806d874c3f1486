//! The typed requests beyond 1:1 messaging: groups and their timelines,
//! the conversation list and read positions, recall, the caller's devices,
//! typing and presence. Each one sends one request and unwraps its answer;
//! an `Error` answer becomes [`SdkError::Server`] (see
//! [`Connection::request`]). No state is kept here.

use bytes::Bytes;
use pigeon_protocol::{pb, Body};

use super::{Connection, Peer, Recipient};
use crate::error::SdkError;

/// Split users given by id or name into the two repeated fields the group
/// requests carry.
fn ids_and_names(users: &[Recipient]) -> (Vec<u64>, Vec<String>) {
    let mut ids = Vec::new();
    let mut names = Vec::new();
    for user in users {
        match user {
            Recipient::Id(id) => ids.push(*id),
            Recipient::Name(name) => names.push(name.clone()),
        }
    }
    (ids, names)
}

/// (peer_user_id, group_id) for requests that name one conversation.
fn peer_fields(peer: Peer) -> (u64, u64) {
    match peer {
        Peer::User(id) => (id, 0),
        Peer::Group(id) => (0, id),
    }
}

impl Connection {
    /// Create a group with the caller as owner and `members` as plain
    /// members; the answer holds the new group (its id in
    /// `group.group_id`).
    pub async fn group_create(
        &self,
        name: &str,
        members: &[Recipient],
    ) -> Result<pb::GroupResponse, SdkError> {
        let (member_user_ids, member_usernames) = ids_and_names(members);
        let body = Body::GroupCreate(pb::GroupCreateRequest {
            name: name.to_owned(),
            member_user_ids,
            member_usernames,
        });
        expect_answer!(self.request(body).await?, Group)
    }

    /// Add members (owner or admin); users already in the group are skipped.
    pub async fn group_add(
        &self,
        group_id: u64,
        members: &[Recipient],
    ) -> Result<pb::GroupResponse, SdkError> {
        let (user_ids, usernames) = ids_and_names(members);
        let body = Body::GroupAdd(pb::GroupAddRequest {
            group_id,
            user_ids,
            usernames,
        });
        expect_answer!(self.request(body).await?, Group)
    }

    /// Remove one member (the owner anyone, an admin plain members).
    pub async fn group_remove(
        &self,
        group_id: u64,
        member: impl Into<Recipient>,
    ) -> Result<pb::GroupResponse, SdkError> {
        let (user_id, username) = match member.into() {
            Recipient::Id(id) => (id, String::new()),
            Recipient::Name(name) => (0, name),
        };
        let body = Body::GroupRemove(pb::GroupRemoveRequest {
            group_id,
            user_id,
            username,
        });
        expect_answer!(self.request(body).await?, Group)
    }

    /// Leave a group (an owner hands ownership over first).
    pub async fn group_leave(&self, group_id: u64) -> Result<pb::GroupResponse, SdkError> {
        let body = Body::GroupLeave(pb::GroupLeaveRequest { group_id });
        expect_answer!(self.request(body).await?, Group)
    }

    /// Dissolve a group (owner only).
    pub async fn group_dissolve(&self, group_id: u64) -> Result<pb::GroupResponse, SdkError> {
        let body = Body::GroupDissolve(pb::GroupDissolveRequest { group_id });
        expect_answer!(self.request(body).await?, Group)
    }

    /// The groups the caller is a member of, by id.
    pub async fn group_list(&self) -> Result<Vec<pb::GroupInfo>, SdkError> {
        let body = Body::GroupList(pb::GroupListRequest {});
        Ok(expect_answer!(self.request(body).await?, GroupListed)?.groups)
    }

    /// One page of a group's members: user ids above `after_user_id`, in
    /// user id order (members only). `limit` 0: the server's default.
    pub async fn group_members_page(
        &self,
        group_id: u64,
        after_user_id: u64,
        limit: u32,
    ) -> Result<pb::GroupMembersResponse, SdkError> {
        let body = Body::GroupMembers(pb::GroupMembersRequest {
            group_id,
            after_user_id,
            limit,
        });
        expect_answer!(self.request(body).await?, GroupMembersListed)
    }

    /// Every member of a group, in user id order (members only), asking
    /// page after page until the server says there are no more.
    pub async fn group_members(&self, group_id: u64) -> Result<Vec<pb::GroupMember>, SdkError> {
        let mut members: Vec<pb::GroupMember> = Vec::new();
        loop {
            let after = members.last().map_or(0, |m| m.user_id);
            let page = self.group_members_page(group_id, after, 0).await?;
            let progressed = page.members.last().is_some_and(|m| m.user_id > after);
            members.extend(page.members);
            if !page.has_more {
                return Ok(members);
            }
            if !progressed {
                return Err(SdkError::Protocol(format!(
                    "members of group {group_id} above user {after}: has_more but nothing new"
                )));
            }
        }
    }

    /// Set a member's role (owner only); `Owner` hands ownership over.
    pub async fn group_set_role(
        &self,
        group_id: u64,
        user_id: u64,
        role: pb::GroupRole,
    ) -> Result<pb::GroupResponse, SdkError> {
        let body = Body::GroupSetRole(pb::GroupSetRoleRequest {
            group_id,
            user_id,
            role: role as i32,
        });
        expect_answer!(self.request(body).await?, Group)
    }

    /// Read a large group's timeline above `after_seq` (which the server
    /// also records as this user's timeline cursor). `limit` 0: the
    /// server's default page.
    pub async fn group_pull(
        &self,
        group_id: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<pb::GroupPullResponse, SdkError> {
        let body = Body::GroupPull(pb::GroupPullRequest {
            group_id,
            after_seq,
            limit,
        });
        expect_answer!(self.request(body).await?, GroupPulled)
    }

    /// Send one message to a group (members only). Retry with the same
    /// `client_msg_id`, as for [`Connection::send`].
    pub async fn send_group(
        &self,
        group_id: u64,
        client_msg_id: impl Into<String>,
        content_type: impl Into<String>,
        content: impl Into<Bytes>,
    ) -> Result<pb::SendResponse, SdkError> {
        let body = Body::Send(pb::SendRequest {
            group_id,
            to_user_id: 0,
            to_username: String::new(),
            client_msg_id: client_msg_id.into(),
            content_type: content_type.into(),
            content: content.into(),
        });
        expect_answer!(self.request(body).await?, Sent)
    }

    /// The conversation list, most recent first, with unread counts and the
    /// total (the badge). `limit` 0: all (up to the server's cap).
    pub async fn conversations(&self, limit: u32) -> Result<pb::ConversationsResponse, SdkError> {
        let body = Body::Conversations(pb::ConversationsRequest { limit });
        expect_answer!(self.request(body).await?, ConversationsListed)
    }

    /// Mark a conversation read up to and including `seq` (a conv_seq).
    /// For 1:1 the peer's online devices get a read receipt.
    pub async fn read(&self, peer: Peer, seq: u64) -> Result<pb::ReadResponse, SdkError> {
        let (peer_user_id, group_id) = peer_fields(peer);
        let body = Body::Read(pb::ReadRequest {
            peer_user_id,
            group_id,
            seq,
        });
        expect_answer!(self.request(body).await?, ReadSet)
    }

    /// How many current members of a group have read up to `seq`.
    pub async fn read_count(
        &self,
        group_id: u64,
        seq: u64,
    ) -> Result<pb::ReadCountResponse, SdkError> {
        let body = Body::ReadCount(pb::ReadCountRequest { group_id, seq });
        expect_answer!(self.request(body).await?, ReadCounted)
    }

    /// Recall (unsend) a message within the server's recall window.
    pub async fn recall(&self, msg_id: u64) -> Result<(), SdkError> {
        let body = Body::Recall(pb::RecallRequest { msg_id });
        expect_answer!(self.request(body).await?, Recalled)?;
        Ok(())
    }

    /// The caller's devices, by device id.
    pub async fn devices(&self) -> Result<Vec<pb::Device>, SdkError> {
        let body = Body::Devices(pb::DevicesRequest {});
        Ok(expect_answer!(self.request(body).await?, DevicesListed)?.devices)
    }

    /// Revoke another of the caller's devices: its tokens go, its live
    /// session is kicked, its cursor is forgotten.
    pub async fn revoke_device(&self, device_id: &str) -> Result<(), SdkError> {
        let body = Body::RevokeDevice(pb::RevokeDeviceRequest {
            device_id: device_id.to_owned(),
        });
        expect_answer!(self.request(body).await?, DeviceRevoked)?;
        Ok(())
    }

    /// Tell a peer or a group that the caller is (`true`) or stopped
    /// (`false`) typing. Ephemeral and rate limited by the server.
    pub async fn typing(&self, peer: Peer, typing: bool) -> Result<(), SdkError> {
        let (to_user_id, group_id) = peer_fields(peer);
        let body = Body::Typing(pb::TypingRequest {
            to_user_id,
            group_id,
            typing,
        });
        expect_answer!(self.request(body).await?, TypingSent)?;
        Ok(())
    }

    /// The presence of some users, in request order, and a subscription of
    /// this connection to their changes ([`super::ServerEvent::Presence`]).
    pub async fn presence(&self, user_ids: &[u64]) -> Result<Vec<pb::Presence>, SdkError> {
        let body = Body::Presence(pb::PresenceRequest {
            user_ids: user_ids.to_vec(),
        });
        Ok(expect_answer!(self.request(body).await?, PresenceListed)?.presences)
    }
}
