//! Formatting of the lists the social commands print: groups, members,
//! conversations (with the unread total) and devices. Pure formatting.

use chrono::Local;
use pigeon_sdk::pb;
use serde_json::{json, Value};

use super::{escape_controls, human_time, name_or_id, text_of_parts};

/// "owner" rather than "GROUP_ROLE_OWNER"; "none" when not a member.
pub fn role_name(role: pb::GroupRole) -> &'static str {
    match role {
        pb::GroupRole::Owner => "owner",
        pb::GroupRole::Admin => "admin",
        pb::GroupRole::Member => "member",
        pb::GroupRole::Unspecified => "none",
    }
}

/// A group as a JSON object (`event: "group"`).
pub fn group_json(group: &pb::GroupInfo) -> Value {
    json!({
        "event": "group",
        "group": group.group_id,
        "name": group.name,
        "owner_user_id": group.owner_user_id,
        "role": role_name(group.my_role()),
        "member_count": group.member_count,
        "large": group.large,
        "max_seq": group.max_seq,
        "dissolved": group.dissolved,
        "created_at_ms": group.created_at_ms,
    })
}

/// A group as one line: `5  team  owner  3 members  large`.
pub fn group_line(group: &pb::GroupInfo) -> String {
    let mut line = format!(
        "{}  {}  {}  {} member{}",
        group.group_id,
        escape_controls(&group.name),
        role_name(group.my_role()),
        group.member_count,
        if group.member_count == 1 { "" } else { "s" }
    );
    if group.large {
        line.push_str("  large");
    }
    if group.dissolved {
        line.push_str("  dissolved");
    }
    line
}

/// A group member as a JSON object (`event: "member"`).
pub fn member_json(group_id: u64, member: &pb::GroupMember) -> Value {
    json!({
        "event": "member",
        "group": group_id,
        "user_id": member.user_id,
        "username": member.username,
        "role": role_name(member.role()),
        "joined_at_ms": member.joined_at_ms,
    })
}

/// A member as one line: `alice  owner`.
pub fn member_line(member: &pb::GroupMember) -> String {
    format!(
        "{}  {}",
        name_or_id(&member.username, member.user_id),
        role_name(member.role())
    )
}

fn last_text(conversation: &pb::Conversation) -> Option<&str> {
    if conversation.last_content.is_empty() {
        return None;
    }
    text_of_parts(&conversation.last_content_type, &conversation.last_content)
}

/// A conversation as a JSON object (`event: "conversation"`): `peer` or
/// `group`, unread, read positions and the last message.
pub fn conversation_json(conversation: &pb::Conversation) -> Value {
    let mut object = json!({
        "event": "conversation",
        "unread": conversation.unread,
        "last_seq": conversation.last_seq,
        "read_seq": conversation.read_seq,
        "last_msg_id": conversation.last_msg_id,
        "last_from_user_id": conversation.last_from_user_id,
        "last_activity_ms": conversation.last_activity_ms,
    });
    if conversation.group_id != 0 {
        object["group"] = json!(conversation.group_id);
        object["group_name"] = json!(conversation.group_name);
    } else {
        object["peer"] = json!(conversation.peer_username);
        object["peer_user_id"] = json!(conversation.peer_user_id);
        object["peer_read_seq"] = json!(conversation.peer_read_seq);
    }
    if let Some(text) = last_text(conversation) {
        object["last_text"] = json!(text);
    }
    object
}

/// A conversation as one line: `bob  2 unread  12:01:02  hello`.
pub fn conversation_line(conversation: &pb::Conversation) -> String {
    let who = match conversation.group_id {
        0 => name_or_id(&conversation.peer_username, conversation.peer_user_id),
        group => format!(
            "{} (group {group})",
            escape_controls(&conversation.group_name)
        ),
    };
    let mut line = format!("{who}  {} unread", conversation.unread);
    if conversation.last_activity_ms != 0 {
        line.push_str("  ");
        line.push_str(&human_time(conversation.last_activity_ms, &Local::now()));
    }
    if let Some(text) = last_text(conversation) {
        let preview: String = text.chars().take(60).collect();
        line.push_str("  ");
        line.push_str(&escape_controls(&preview).replace('\n', " "));
    }
    line
}

/// The unread total (the badge) as a JSON object.
pub fn total_json(total_unread: u64, conversations: usize) -> Value {
    json!({"event": "unread_total", "total_unread": total_unread, "conversations": conversations})
}

/// The unread total as a line.
pub fn total_line(total_unread: u64) -> String {
    format!("{total_unread} unread in total")
}

fn platform_name(platform: pb::Platform) -> &'static str {
    let name = platform.as_str_name();
    name.strip_prefix("PLATFORM_").unwrap_or(name)
}

/// A device as a JSON object (`event: "device"`).
pub fn device_json(device: &pb::Device) -> Value {
    json!({
        "event": "device",
        "device_id": device.device_id,
        "platform": platform_name(device.platform()).to_ascii_lowercase(),
        "online": device.online,
        "current": device.current,
        "created_at_ms": device.created_at_ms,
        "last_active_ms": device.last_active_ms,
        "acked_seq": device.acked_seq,
    })
}

/// A device as one line: `d1  cli  online  this device  last active 12:01:02`.
pub fn device_line(device: &pb::Device) -> String {
    let mut line = format!(
        "{}  {}  {}",
        escape_controls(&device.device_id),
        platform_name(device.platform()).to_ascii_lowercase(),
        if device.online { "online" } else { "offline" }
    );
    if device.current {
        line.push_str("  this device");
    }
    if device.last_active_ms != 0 {
        line.push_str("  last active ");
        line.push_str(&human_time(device.last_active_ms, &Local::now()));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_members_print_roles_by_name() {
        let group = pb::GroupInfo {
            group_id: 5,
            name: "team".into(),
            member_count: 3,
            my_role: pb::GroupRole::Owner as i32,
            large: true,
            ..Default::default()
        };
        assert_eq!(group_line(&group), "5  team  owner  3 members  large");
        let value = group_json(&group);
        assert_eq!(
            (value["group"].clone(), value["role"].clone()),
            (json!(5), json!("owner"))
        );
        let member = pb::GroupMember {
            user_id: 2,
            username: "bob".into(),
            role: pb::GroupRole::Admin as i32,
            joined_at_ms: 1,
        };
        assert_eq!(member_line(&member), "bob  admin");
        assert_eq!(member_json(5, &member)["role"], "admin");
    }

    #[test]
    fn conversations_show_unread_and_a_one_line_preview() {
        let peer = pb::Conversation {
            peer_user_id: 2,
            peer_username: "bob".into(),
            unread: 2,
            last_seq: 6,
            read_seq: 4,
            peer_read_seq: 6,
            last_content: b"hello\nthere".to_vec().into(),
            ..Default::default()
        };
        assert_eq!(conversation_line(&peer), "bob  2 unread  hello there");
        let value = conversation_json(&peer);
        assert_eq!(value["peer"], "bob");
        assert_eq!(value["unread"], 2);
        assert_eq!(value["peer_read_seq"], 6);
        assert!(value.get("group").is_none());
        let group = pb::Conversation {
            group_id: 5,
            group_name: "team".into(),
            unread: 1,
            last_content_type: "image/png".into(),
            last_content: vec![1, 2].into(),
            ..Default::default()
        };
        assert_eq!(conversation_line(&group), "team (group 5)  1 unread");
        let value = conversation_json(&group);
        assert_eq!(value["group"], 5);
        assert!(value.get("last_text").is_none());
        assert_eq!(total_line(3), "3 unread in total");
        assert_eq!(total_json(3, 2)["total_unread"], 3);
    }

    #[test]
    fn devices_show_platform_and_state() {
        let device = pb::Device {
            device_id: "d1".into(),
            platform: pb::Platform::Cli as i32,
            online: true,
            current: true,
            ..Default::default()
        };
        assert_eq!(device_line(&device), "d1  cli  online  this device");
        let value = device_json(&device);
        assert_eq!(value["platform"], "cli");
        assert_eq!(value["current"], true);
    }
}
