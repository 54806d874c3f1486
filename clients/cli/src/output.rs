//! How messages and results are printed: a readable line for people, one
//! JSON object per line with `--json` for scripts. Pure formatting, no I/O.

use base64::Engine;
use chrono::{DateTime, Local, TimeZone};
use pigeon_sdk::pb;
use serde_json::{json, Value};

/// The content as text, if it is meant and valid as text: a `text/*` (or
/// empty) content type and valid UTF-8.
pub fn text_of(message: &pb::Message) -> Option<&str> {
    let content_type = message.content_type.trim().to_ascii_lowercase();
    let textual = content_type.is_empty() || content_type.starts_with("text/");
    if !textual {
        return None;
    }
    std::str::from_utf8(&message.content).ok()
}

/// A message as a JSON object: seq, msg_id, from, to, ts (ms since the
/// epoch), content_type, and text or content_base64.
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
    match text_of(message) {
        Some(text) => object["text"] = json!(text),
        None => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&message.content);
            object["content_base64"] = json!(encoded);
        }
    }
    object
}

/// A message as one line for people: `[seq 3] alice -> bob 12:01:02: hello`.
pub fn message_line(message: &pb::Message) -> String {
    let body = match text_of(message) {
        Some(text) => escape_controls(text),
        None => format!(
            "<{}, {} bytes>",
            escape_controls(content_type_or_default(message)),
            message.content.len()
        ),
    };
    format!(
        "[seq {}] {} -> {} {}: {}",
        message.seq,
        name_or_id(&message.from_username, message.from_user_id),
        name_or_id(&message.to_username, message.to_user_id),
        human_time(message.sent_at_ms, &Local::now()),
        body
    )
}

fn content_type_or_default(message: &pb::Message) -> &str {
    match message.content_type.as_str() {
        "" => "text/plain",
        other => other,
    }
}

fn name_or_id(name: &str, id: u64) -> String {
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

    #[test]
    fn time_shows_date_only_for_other_days() {
        let now = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
        assert_eq!(human_time(1_700_000_000_000, &now), "22:13:20");
        assert_eq!(human_time(1_600_000_000_000, &now), "2020-09-13 12:26:40");
        assert_eq!(human_time(u64::MAX, &now), format!("@{}", u64::MAX));
    }
}
