//! How messages and results are printed: a readable line for people, one
//! JSON object per line with `--json` for scripts. Pure formatting, no I/O:
//! names the entries do not carry (group names, the targets of group
//! events) come from a [`Directory`] the caller fills in.

mod directory;
mod push;
mod social;

use base64::Engine;
use chrono::{DateTime, Local, TimeZone};
use pigeon_sdk::pb;
use pigeon_sdk::pb::{GroupEventType, MessageKind};
use serde_json::{json, Value};

pub use directory::Directory;
pub use push::{push_registered_json, push_registered_line, push_removed_json, push_removed_line};
pub use social::{
    conversation_json, conversation_line, device_json, device_line, group_json, group_line,
    member_json, member_line, role_name, total_json, total_line,
};

/// Where an entry was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The user's queue: `seq` is the inbox seq.
    Inbox,
    /// A large group's timeline: `seq` is the group seq.
    Timeline,
}

/// The content as text, if it is meant and valid as text: a `text/*` (or
/// empty) content type and valid UTF-8.
pub fn text_of(message: &pb::Message) -> Option<&str> {
    text_of_parts(&message.content_type, &message.content)
}

/// [`text_of`] for a content type and content found elsewhere (the last
/// message of a conversation).
pub(crate) fn text_of_parts<'a>(content_type: &str, content: &'a [u8]) -> Option<&'a str> {
    let content_type = content_type.trim().to_ascii_lowercase();
    let textual = content_type.is_empty() || content_type.starts_with("text/");
    if !textual {
        return None;
    }
    std::str::from_utf8(content).ok()
}

/// Any entry as a JSON object: a chat message (`event: "message"`), a
/// group event (`"group_event"`) or a recall (`"recall"`).
pub fn entry_json(message: &pb::Message, source: Source, directory: &Directory) -> Value {
    let mut object = match message.kind() {
        MessageKind::GroupEvent => group_event_json(message, directory),
        MessageKind::Recall => json!({
            "event": "recall",
            "recalled_msg_id": message.recalled_msg_id,
            "by": message.from_username,
            "by_user_id": message.from_user_id,
        }),
        MessageKind::Chat | MessageKind::Unspecified => message_json(message),
    };
    for (key, value) in [
        ("seq", json!(message.seq)),
        ("msg_id", json!(message.msg_id)),
        ("ts", json!(message.sent_at_ms)),
    ] {
        object[key] = value;
    }
    if message.group_id != 0 {
        object["group"] = json!(message.group_id);
        if let Some(name) = directory.group_name(message.group_id) {
            object["group_name"] = json!(name);
        }
    }
    if message.conv_seq != 0 {
        object["conv_seq"] = json!(message.conv_seq);
    }
    if source == Source::Timeline {
        object["timeline"] = json!(true);
    }
    object
}

/// A chat message as a JSON object: seq, msg_id, from, to, ts (ms since
/// the epoch), content_type, and text or content_base64 (or `recalled`).
pub fn message_json(message: &pb::Message) -> Value {
    let mut object = json!({
        "event": "message",
        "seq": message.seq,
        "msg_id": message.msg_id,
        "from": message.from_username,
        "from_user_id": message.from_user_id,
        "from_device_id": message.from_device_id,
        "to": message.to_username,
        "to_user_id": message.to_user_id,
        "ts": message.sent_at_ms,
        "client_msg_id": message.client_msg_id,
        "content_type": content_type_or_default(message),
    });
    if message.group_id != 0 {
        object["group"] = json!(message.group_id);
    }
    if message.recalled {
        object["recalled"] = json!(true);
        return object;
    }
    match text_of(message) {
        Some(text) => object["text"] = json!(text),
        None => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&message.content);
            object["content_base64"] = json!(encoded);
        }
    }
    object
}

fn group_event_json(message: &pb::Message, directory: &Directory) -> Value {
    let event = message.group_event.clone().unwrap_or_default();
    let targets: Vec<Value> = event
        .target_user_ids
        .iter()
        .map(|&id| json!({"user_id": id, "username": directory.user_name(id)}))
        .collect();
    let mut object = json!({
        "event": "group_event",
        "type": event_type_name(event.r#type()),
        "actor": directory.user_name(event.actor_user_id),
        "actor_user_id": event.actor_user_id,
        "targets": targets,
        "group_name": event.group_name,
        "text": group_event_text(message, directory),
    });
    match event.r#type() {
        GroupEventType::RoleChanged => object["role"] = json!(role_name(event.role())),
        GroupEventType::BecameLarge => object["timeline_from_seq"] = json!(event.timeline_from_seq),
        _ => {}
    }
    object
}

/// "ADDED" rather than "GROUP_EVENT_TYPE_ADDED".
pub fn event_type_name(kind: GroupEventType) -> &'static str {
    let name = kind.as_str_name();
    name.strip_prefix("GROUP_EVENT_TYPE_").unwrap_or(name)
}

/// What a group event says, as a sentence: "bob joined (added by alice)",
/// "carol was removed by alice", "you left".
pub fn group_event_text(message: &pb::Message, directory: &Directory) -> String {
    let Some(event) = &message.group_event else {
        return "group changed".into();
    };
    let actor = directory.subject(event.actor_user_id);
    let targets = event
        .target_user_ids
        .iter()
        .map(|&id| directory.subject(id))
        .collect::<Vec<_>>();
    let joined = targets.join(", ");
    let by_self = event.target_user_ids == [event.actor_user_id];
    let plural = targets.len() > 1 || targets.first().is_some_and(|t| t == "you");
    let (was, is) = if plural {
        ("were", "are")
    } else {
        ("was", "is")
    };
    match event.r#type() {
        GroupEventType::Created if targets.is_empty() => {
            format!("{actor} created the group {:?}", event.group_name)
        }
        GroupEventType::Created => {
            format!(
                "{actor} created the group {:?} with {joined}",
                event.group_name
            )
        }
        GroupEventType::Added if by_self => format!("{actor} joined"),
        GroupEventType::Added => format!("{joined} joined (added by {actor})"),
        GroupEventType::Removed => format!("{joined} {was} removed by {actor}"),
        GroupEventType::Left => format!("{actor} left"),
        GroupEventType::Dissolved => format!("{actor} dissolved the group"),
        GroupEventType::RoleChanged if event.role() == pb::GroupRole::Owner => {
            format!("{joined} {is} now the owner (handed over by {actor})")
        }
        GroupEventType::RoleChanged => format!(
            "{joined} {is} now {} (set by {actor})",
            role_name(event.role())
        ),
        GroupEventType::BecameLarge => format!(
            "the group became large: from seq {} on, its messages are in its timeline",
            event.timeline_from_seq
        ),
        GroupEventType::Unspecified => "the group changed".into(),
    }
}

/// Any entry as one line for people.
pub fn entry_line(message: &pb::Message, source: Source, directory: &Directory) -> String {
    let place = match source {
        Source::Inbox => format!("seq {}", message.seq),
        Source::Timeline => format!("group {} seq {}", message.group_id, message.seq),
    };
    let when = human_time(message.sent_at_ms, &Local::now());
    let from = name_or_id(&message.from_username, message.from_user_id);
    match message.kind() {
        MessageKind::GroupEvent => format!(
            "[{place}] {} {when}: {}",
            directory.group(message.group_id),
            group_event_text(message, directory)
        ),
        MessageKind::Recall => {
            let within = match message.group_id {
                0 => String::new(),
                group => format!(" in {}", directory.group(group)),
            };
            format!(
                "[{place}] {from} recalled message {}{within} {when}",
                message.recalled_msg_id
            )
        }
        MessageKind::Chat | MessageKind::Unspecified => {
            let to = match message.group_id {
                0 => name_or_id(&message.to_username, message.to_user_id),
                group => directory.group(group),
            };
            format!("[{place}] {from} -> {to} {when}: {}", body_text(message))
        }
    }
}

/// A chat message as one line for people: `[seq 3] alice -> bob 12:01:02: hello`.
#[cfg(test)]
pub fn message_line(message: &pb::Message) -> String {
    entry_line(message, Source::Inbox, &Directory::default())
}

fn body_text(message: &pb::Message) -> String {
    if message.recalled {
        return "<recalled>".into();
    }
    match text_of(message) {
        Some(text) => escape_controls(text),
        None => format!(
            "<{}, {} bytes>",
            escape_controls(content_type_or_default(message)),
            message.content.len()
        ),
    }
}

fn content_type_or_default(message: &pb::Message) -> &str {
    match message.content_type.as_str() {
        "" => "text/plain",
        other => other,
    }
}

pub(crate) fn name_or_id(name: &str, id: u64) -> String {
    if name.is_empty() {
        format!("#{id}")
    } else {
        escape_controls(name)
    }
}

/// Local time of day for today's messages, date and time for older ones.
pub fn human_time<Tz: TimeZone>(ts_ms: u64, now: &DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let Some(at) = i64::try_from(ts_ms)
        .ok()
        .and_then(|ms| now.timezone().timestamp_millis_opt(ms).single())
    else {
        return format!("@{ts_ms}");
    };
    if at.date_naive() == now.date_naive() {
        at.format("%H:%M:%S").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

/// Escape control characters (except newline and tab) so a message cannot
/// move the cursor or recolour someone's terminal.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch.is_control() && ch != '\n' && ch != '\t' {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn message(content_type: &str, content: &[u8]) -> pb::Message {
        pb::Message {
            seq: 3,
            msg_id: 77,
            from_user_id: 1,
            from_username: "alice".into(),
            to_user_id: 2,
            to_username: "bob".into(),
            from_device_id: "d1".into(),
            content_type: content_type.into(),
            content: content.to_vec().into(),
            sent_at_ms: 1_700_000_000_000,
            client_msg_id: "c1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn text_message_json_has_the_required_fields() {
        let value = message_json(&message("text/plain", b"hello"));
        assert_eq!(value["seq"], 3);
        assert_eq!(value["msg_id"], 77);
        assert_eq!(value["from"], "alice");
        assert_eq!(value["to"], "bob");
        assert_eq!(value["text"], "hello");
        assert_eq!(value["ts"], 1_700_000_000_000u64);
        assert!(value.get("content_base64").is_none());
        let line = serde_json::to_string(&value).unwrap();
        assert!(!line.contains('\n'));
    }

    #[test]
    fn empty_content_type_counts_as_text() {
        let value = message_json(&message("", "héllo".as_bytes()));
        assert_eq!(value["text"], "héllo");
        assert_eq!(value["content_type"], "text/plain");
    }

    #[test]
    fn binary_content_is_base64_with_its_type() {
        let value = message_json(&message("application/octet-stream", &[0, 159, 255]));
        assert!(value.get("text").is_none());
        assert_eq!(value["content_base64"], "AJ//");
        assert_eq!(value["content_type"], "application/octet-stream");
    }

    #[test]
    fn invalid_utf8_text_is_treated_as_binary() {
        let value = message_json(&message("text/plain", &[0xC3]));
        assert!(value.get("text").is_none());
        assert_eq!(value["content_base64"], "ww==");
    }

    #[test]
    fn human_line_reads_naturally() {
        let line = message_line(&message("text/plain", b"hello"));
        assert!(line.starts_with("[seq 3] alice -> bob "), "{line}");
        assert!(line.ends_with(": hello"), "{line}");
        let line = message_line(&message("image/png", &[1, 2, 3]));
        assert!(line.ends_with(": <image/png, 3 bytes>"), "{line}");
    }

    #[test]
    fn control_characters_are_escaped_for_terminals() {
        let line = message_line(&message("text/plain", b"hi\x1b[31m red\nnext"));
        assert!(!line.contains('\x1b'), "{line:?}");
        assert!(line.contains("\\u{1b}[31m red\nnext"), "{line:?}");
    }

    fn directory() -> Directory {
        let mut directory = Directory::new(Some(1), Some("alice"));
        directory.learn_user(2, "bob");
        directory.learn_user(3, "carol");
        directory.learn_group(5, "team");
        directory
    }

    fn event(kind: GroupEventType, actor: u64, targets: &[u64]) -> pb::Message {
        pb::Message {
            seq: 9,
            msg_id: 500,
            from_user_id: actor,
            group_id: 5,
            conv_seq: 4,
            kind: MessageKind::GroupEvent as i32,
            group_event: Some(pb::GroupEvent {
                r#type: kind as i32,
                actor_user_id: actor,
                target_user_ids: targets.to_vec(),
                group_name: "team".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn group_events_read_as_sentences() {
        let d = directory();
        let text = |m: &pb::Message| group_event_text(m, &d);
        assert_eq!(
            text(&event(GroupEventType::Added, 1, &[2])),
            "bob joined (added by you)"
        );
        assert_eq!(
            text(&event(GroupEventType::Removed, 2, &[3])),
            "carol was removed by bob"
        );
        assert_eq!(
            text(&event(GroupEventType::Removed, 2, &[1])),
            "you were removed by bob"
        );
        assert_eq!(text(&event(GroupEventType::Left, 3, &[])), "carol left");
        assert_eq!(
            text(&event(GroupEventType::Created, 1, &[2, 3])),
            "you created the group \"team\" with bob, carol"
        );
        assert_eq!(
            text(&event(GroupEventType::Added, 2, &[3, 77])),
            "carol, #77 joined (added by bob)"
        );
        let mut owner = event(GroupEventType::RoleChanged, 1, &[2]);
        owner.group_event.as_mut().unwrap().role = pb::GroupRole::Owner as i32;
        assert_eq!(text(&owner), "bob is now the owner (handed over by you)");
        let mut admin = event(GroupEventType::RoleChanged, 1, &[2]);
        admin.group_event.as_mut().unwrap().role = pb::GroupRole::Admin as i32;
        assert_eq!(text(&admin), "bob is now admin (set by you)");
    }

    #[test]
    fn group_event_json_names_type_actor_targets_and_group() {
        let value = entry_json(
            &event(GroupEventType::Removed, 2, &[3]),
            Source::Inbox,
            &directory(),
        );
        assert_eq!(value["event"], "group_event");
        assert_eq!(value["type"], "REMOVED");
        assert_eq!(value["actor"], "bob");
        assert_eq!(value["targets"][0]["username"], "carol");
        assert_eq!(value["group"], 5);
        assert_eq!(value["group_name"], "team");
        assert_eq!(value["text"], "carol was removed by bob");
        assert_eq!(
            (value["seq"].clone(), value["conv_seq"].clone()),
            (json!(9), json!(4))
        );
        let line = entry_line(
            &event(GroupEventType::Left, 3, &[]),
            Source::Inbox,
            &directory(),
        );
        assert!(line.starts_with("[seq 9] team (group 5) "), "{line}");
        assert!(line.ends_with(": carol left"), "{line}");
    }

    #[test]
    fn group_messages_carry_the_group() {
        let mut m = message("text/plain", b"hi all");
        m.group_id = 5;
        m.to_user_id = 0;
        m.to_username.clear();
        let value = entry_json(&m, Source::Timeline, &directory());
        assert_eq!(value["event"], "message");
        assert_eq!(value["group"], 5);
        assert_eq!(value["group_name"], "team");
        assert_eq!(value["text"], "hi all");
        assert_eq!(value["timeline"], true);
        let line = entry_line(&m, Source::Timeline, &directory());
        assert!(
            line.starts_with("[group 5 seq 3] alice -> team (group 5) "),
            "{line}"
        );
        assert!(message_json(&message("text/plain", b"x"))
            .get("group")
            .is_none());
    }

    #[test]
    fn recalls_and_recalled_messages_are_readable() {
        let recall = pb::Message {
            seq: 7,
            msg_id: 900,
            from_user_id: 2,
            from_username: "bob".into(),
            kind: MessageKind::Recall as i32,
            recalled_msg_id: 77,
            ..Default::default()
        };
        let line = entry_line(&recall, Source::Inbox, &directory());
        assert!(
            line.starts_with("[seq 7] bob recalled message 77 "),
            "{line}"
        );
        let value = entry_json(&recall, Source::Inbox, &directory());
        assert_eq!(value["event"], "recall");
        assert_eq!(value["recalled_msg_id"], 77);
        assert_eq!(value["by"], "bob");
        let mut gone = message("", b"");
        gone.recalled = true;
        assert!(message_line(&gone).ends_with(": <recalled>"));
        let value = message_json(&gone);
        assert_eq!(value["recalled"], true);
        assert!(value.get("text").is_none());
    }

    #[test]
    fn time_shows_date_only_for_other_days() {
        let now = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
        assert_eq!(human_time(1_700_000_000_000, &now), "22:13:20");
        assert_eq!(human_time(1_600_000_000_000, &now), "2020-09-13 12:26:40");
        assert_eq!(human_time(u64::MAX, &now), format!("@{}", u64::MAX));
    }
}
