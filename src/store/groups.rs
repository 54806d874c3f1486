//! The domain records of groups, conversations and recalls, as the store
//! trait speaks them. No protocol types: roles and event kinds are the
//! store's own enums, numbered like the wire's so the gateway maps them 1:1.

use super::{MsgId, Seq, UserId};

/// A group's numeric id (its own number space, starting at 1).
pub type GroupId = u64;

/// A member's role. The numbers match the wire's `GroupRole`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Sends and reads.
    Member = 1,
    /// Also adds members, removes plain members, recalls any message.
    Admin = 2,
    /// Also removes admins, sets roles, dissolves. Exactly one per group.
    Owner = 3,
}

impl Role {
    /// The stored number (0 = no longer a member).
    pub fn number(self) -> u32 {
        self as u32
    }

    /// A stored number back; `None` for 0 (a former member) or unknown.
    pub fn from_number(n: u32) -> Option<Role> {
        match n {
            1 => Some(Role::Member),
            2 => Some(Role::Admin),
            3 => Some(Role::Owner),
            _ => None,
        }
    }

    /// Owner or admin: may add members and recall others' messages.
    pub fn is_manager(self) -> bool {
        self >= Role::Admin
    }
}

/// A group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// Its id.
    pub id: GroupId,
    /// Its name.
    pub name: String,
    /// The owner.
    pub owner: UserId,
    /// Creation, ms since the epoch.
    pub created_at_ms: u64,
    /// Current members, the owner included.
    pub member_count: u32,
    /// Large: messages from `timeline_from_seq` on are in the timeline.
    pub large: bool,
    /// The first group seq in the timeline (0 while small).
    pub timeline_from_seq: Seq,
    /// The highest group seq (messages and events).
    pub max_seq: Seq,
    /// Dissolved by its owner.
    pub dissolved: bool,
    /// The last message or event (0 if none).
    pub last_msg_id: MsgId,
    /// Who sent it.
    pub last_from: UserId,
    /// When the group last had activity, ms since the epoch.
    pub last_activity_ms: u64,
}

/// One user's membership of a group, kept after they leave (so they can
/// read the timeline up to their removal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The group.
    pub group: GroupId,
    /// The user.
    pub user: UserId,
    /// `None` once the user left or was removed.
    pub role: Option<Role>,
    /// The group seq before the user's join event: they read above it.
    pub joined_seq: Seq,
    /// When they joined, ms since the epoch.
    pub joined_at_ms: u64,
    /// For a former member: the seq of the event that removed them (they
    /// read up to it). 0 for a current member.
    pub left_seq: Seq,
    /// Read position (a group seq).
    pub read_seq: Seq,
    /// Timeline cursor of a large group (a group seq).
    pub acked_seq: Seq,
    /// Last send, read or timeline pull, ms since the epoch.
    pub last_active_ms: u64,
}

impl MemberRecord {
    /// The highest group seq this member may read.
    pub fn visible_up_to(&self, group: &GroupRecord) -> Seq {
        if self.role.is_some() {
            group.max_seq
        } else {
            self.left_seq
        }
    }

    /// Unread in this group: everything above the read position (or the
    /// join) up to the group's top.
    pub fn unread(&self, group: &GroupRecord) -> u64 {
        group
            .max_seq
            .saturating_sub(self.read_seq.max(self.joined_seq))
    }
}

/// A change of a group (see [`super::WriteOp::ChangeGroup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// Add users (owner or admin). Current members are skipped.
    Add(Vec<UserId>),
    /// Remove a member: the owner removes anyone else, an admin plain
    /// members only.
    Remove(UserId),
    /// The actor leaves (not the owner).
    Leave,
    /// The owner dissolves the group.
    Dissolve,
    /// The owner sets a member's role; `Owner` hands ownership over.
    SetRole(UserId, Role),
}

/// Why a write was refused by a rule; nothing of the op was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The actor (or the target) is not a current member.
    NotMember(String),
    /// The actor's role does not allow it.
    PermissionDenied(String),
    /// No such group, or it was dissolved.
    UnknownGroup,
    /// No such message visible to the caller.
    UnknownMessage,
    /// The message is older than the recall window.
    RecallWindowPassed,
    /// The group would pass the maximum size.
    GroupFull {
        /// The maximum.
        max: u32,
    },
    /// A read or ack above the conversation's top.
    BeyondMax {
        /// The top.
        max_seq: Seq,
    },
    /// A large-group-only request on a small group, or similar.
    Invalid(String),
}

impl Refusal {
    /// The caller is not a current member of `group`.
    pub fn not_member(group: GroupId) -> Refusal {
        Refusal::NotMember(format!("you are not a member of group {group}"))
    }
}

/// The kinds of group events; numbers match the wire's `GroupEventType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEventKind {
    /// Created; targets are the initial members.
    Created = 1,
    /// Targets added by the actor.
    Added = 2,
    /// Targets removed by the actor.
    Removed = 3,
    /// The actor left.
    Left = 4,
    /// Dissolved by the owner.
    Dissolved = 5,
    /// The target's role changed to `role`.
    RoleChanged = 6,
    /// The group became large at `timeline_from_seq`.
    BecameLarge = 7,
}

impl GroupEventKind {
    /// A stored number back.
    pub fn from_number(n: u32) -> Option<GroupEventKind> {
        use GroupEventKind::*;
        [
            Created,
            Added,
            Removed,
            Left,
            Dissolved,
            RoleChanged,
            BecameLarge,
        ]
        .into_iter()
        .find(|k| *k as u32 == n)
    }
}

/// A group event as stored in its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEventRecord {
    /// What happened.
    pub kind: GroupEventKind,
    /// Who did it.
    pub actor: UserId,
    /// Whom it concerns.
    pub targets: Vec<UserId>,
    /// For RoleChanged: the new role.
    pub role: Option<Role>,
    /// The group's name at the time.
    pub group_name: String,
    /// For BecameLarge: the first timeline seq.
    pub timeline_from_seq: Seq,
}

/// What a queue or timeline entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A message a user sent.
    Chat,
    /// A group membership change.
    GroupEvent(GroupEventRecord),
    /// The recall of this message.
    Recall(MsgId),
}

/// A conversation as `Read` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConversationKey {
    /// 1:1 with this peer.
    Peer(UserId),
    /// A group.
    Group(GroupId),
}

/// A user's 1:1 conversation record, maintained on every send and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The peer.
    pub peer: UserId,
    /// The last message's conv seq.
    pub last_seq: Seq,
    /// The user's read position.
    pub read_seq: Seq,
    /// The peer's read position.
    pub peer_read_seq: Seq,
    /// The last message (0 if none).
    pub last_msg_id: MsgId,
    /// Who sent it.
    pub last_from: UserId,
    /// Last activity, ms since the epoch.
    pub last_activity_ms: u64,
}

/// A page of a large group's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TimelinePage {
    /// Entries in group seq order (`seq` is the group seq).
    pub messages: Vec<super::StoredMessage>,
    /// True if entries above the last one (up to the bound) exist.
    pub has_more: bool,
    /// The seq of the first entry left out because no sync has made it
    /// durable yet (see [`super::Store::pull`]); the page ends below it.
    pub not_durable_from: Option<Seq>,
}

/// A device's push registration. `provider` is the wire's PushProvider
/// number (1 APNs, 2 FCM, 3 webhook).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushTokenRecord {
    /// 1 APNs, 2 FCM, 3 webhook.
    pub provider: u32,
    /// The provider's device token (empty for the webhook).
    pub token: String,
    /// APNs topic (bundle id).
    pub topic: String,
    /// APNs sandbox environment.
    pub sandbox: bool,
    /// When the last push to this device was accepted (ms), for coalescing.
    pub last_pushed_ms: u64,
}

/// One pending push for one device: at most one per device, overwritten
/// by newer messages (coalescing) with a new `generation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJobRecord {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device_id: String,
    /// Where to deliver (as registered when the job was last written).
    pub token: PushTokenRecord,
    /// The device's unread count (entries it has not acknowledged).
    pub badge: u64,
    /// The conversation of the latest message: the 1:1 peer...
    pub peer: UserId,
    /// ...or the group.
    pub group: GroupId,
    /// The user's queue top at the latest message.
    pub max_seq: Seq,
    /// Content preview (only when the server option is on).
    pub preview: Option<String>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Not to be tried before this (ms).
    pub not_before_ms: u64,
    /// Changes on every rewrite: a delivery result applies only to the
    /// generation it delivered.
    pub generation: u64,
}

/// Which devices a send writes push jobs for (decided by the committer
/// from who is offline or in the background), and how.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushPlan {
    /// (user, device) pairs with a push token and no foreground session.
    pub targets: Vec<(UserId, String)>,
    /// A device pushed less than this long ago waits out the rest.
    pub coalesce_ms: u64,
    /// The preview to carry (only when the server option is on).
    pub preview: Option<String>,
}
