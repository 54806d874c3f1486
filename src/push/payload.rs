//! What a notification says, before each provider wraps it in its own
//! format. By default no message content: a generic title, the badge, the
//! conversation and the max seq (the app pulls the rest over its own
//! connection). The preview is added only when `push.content_preview` is on.

use super::PushJob;

/// The conversation a push is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversation {
    /// A 1:1 chat with this user.
    Peer(u64),
    /// A group chat.
    Group(u64),
}

impl Conversation {
    /// The collapse id / tag: one notification per conversation on the
    /// phone (`p<id>` or `g<id>`, well under APNs' 64 bytes).
    pub fn collapse_id(&self) -> String {
        match self {
            Conversation::Peer(id) => format!("p{id}"),
            Conversation::Group(id) => format!("g{id}"),
        }
    }
}

/// The notification, provider-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The generic title (`push.alert_title`).
    pub title: String,
    /// The unread count.
    pub badge: u64,
    /// Which chat.
    pub conversation: Conversation,
    /// What the app should pull up to.
    pub max_seq: u64,
    /// Message text, only with `push.content_preview` on.
    pub preview: Option<String>,
}

/// Longest preview sent, in characters; the phone shows a line or two.
const PREVIEW_CHARS: usize = 200;

impl Notice {
    /// The notice for `job`; `preview_allowed` is the server option, so a
    /// preview the store wrote is still dropped when the option is off.
    pub fn for_job(job: &PushJob, title: &str, preview_allowed: bool) -> Notice {
        let conversation = if job.group_id != 0 {
            Conversation::Group(job.group_id)
        } else {
            Conversation::Peer(job.peer_user_id)
        };
        let preview = job
            .preview
            .as_deref()
            .filter(|_| preview_allowed)
            .map(|text| text.chars().take(PREVIEW_CHARS).collect());
        Notice {
            title: title.to_owned(),
            badge: job.badge,
            conversation,
            max_seq: job.max_seq,
            preview,
        }
    }

    /// The conversation as the JSON fields apps read: `peer_user_id` or
    /// `group_id`.
    pub fn conversation_fields(&self) -> (&'static str, u64) {
        match self.conversation {
            Conversation::Peer(id) => ("peer_user_id", id),
            Conversation::Group(id) => ("group_id", id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::PushTarget;

    fn job(preview: Option<&str>) -> PushJob {
        PushJob {
            user: 1,
            device_id: "phone".into(),
            target: PushTarget::Webhook,
            badge: 3,
            peer_user_id: 0,
            group_id: 9,
            max_seq: 40,
            preview: preview.map(str::to_owned),
            attempts: 0,
            not_before_ms: 0,
            generation: 1,
        }
    }

    #[test]
    fn no_content_unless_the_option_is_on() {
        let off = Notice::for_job(&job(Some("secret")), "New message", false);
        assert_eq!(off.preview, None);
        assert_eq!(off.conversation, Conversation::Group(9));
        assert_eq!(off.conversation.collapse_id(), "g9");
        let on = Notice::for_job(&job(Some("hello")), "New message", true);
        assert_eq!(on.preview.as_deref(), Some("hello"));
        let long = "é".repeat(500);
        let cut = Notice::for_job(&job(Some(&long)), "t", true);
        assert_eq!(cut.preview.unwrap().chars().count(), PREVIEW_CHARS);
    }
}
