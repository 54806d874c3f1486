//! What `pigeon push` prints. Pure formatting. The token itself is never
//! printed back: it addresses one phone and the user just typed it.

use pigeon_sdk::PushRegistration;
use serde_json::{json, Value};

use super::escape_controls;

/// "apns", "fcm" or "webhook".
pub fn provider_name(registration: &PushRegistration) -> &'static str {
    match registration {
        PushRegistration::Apns { .. } => "apns",
        PushRegistration::Fcm { .. } => "fcm",
        PushRegistration::Webhook => "webhook",
    }
}

/// A registration as a JSON object (`event: "push_registered"`).
pub fn push_registered_json(registration: &PushRegistration, device_id: &str) -> Value {
    let mut object = json!({
        "event": "push_registered",
        "provider": provider_name(registration),
        "device_id": device_id,
    });
    if let PushRegistration::Apns { topic, sandbox, .. } = registration {
        object["topic"] = json!(topic);
        object["sandbox"] = json!(sandbox);
    }
    object
}

/// A registration as a line: `registered an APNs token (topic
/// com.example.chat, sandbox) for device d1`.
pub fn push_registered_line(registration: &PushRegistration, device_id: &str) -> String {
    let what = match registration {
        PushRegistration::Apns { topic, sandbox, .. } => format!(
            "an APNs token (topic {}{})",
            escape_controls(topic),
            if *sandbox { ", sandbox" } else { "" }
        ),
        PushRegistration::Fcm { .. } => "an FCM token".into(),
        PushRegistration::Webhook => "the webhook".into(),
    };
    format!(
        "registered {what} for device {}",
        escape_controls(device_id)
    )
}

/// A removal as a JSON object (`event: "push_removed"`).
pub fn push_removed_json(device_id: &str) -> Value {
    json!({"event": "push_removed", "device_id": device_id})
}

/// A removal as a line.
pub fn push_removed_line(device_id: &str) -> String {
    format!(
        "removed the push token of device {}",
        escape_controls(device_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_name_provider_and_device_but_not_the_token() {
        let apns = PushRegistration::Apns {
            token: "secret-token".into(),
            topic: "com.example.chat".into(),
            sandbox: true,
        };
        assert_eq!(
            push_registered_line(&apns, "d1"),
            "registered an APNs token (topic com.example.chat, sandbox) for device d1"
        );
        let value = push_registered_json(&apns, "d1");
        assert_eq!(value["provider"], "apns");
        assert_eq!(value["device_id"], "d1");
        assert_eq!(value["topic"], "com.example.chat");
        assert_eq!(value["sandbox"], true);
        assert!(!value.to_string().contains("secret-token"), "{value}");

        let fcm = PushRegistration::Fcm {
            token: "secret-token".into(),
        };
        assert_eq!(
            push_registered_line(&fcm, "d1"),
            "registered an FCM token for device d1"
        );
        let value = push_registered_json(&fcm, "d1");
        assert_eq!(value["provider"], "fcm");
        assert!(value.get("topic").is_none());
        assert_eq!(
            push_registered_line(&PushRegistration::Webhook, "d1"),
            "registered the webhook for device d1"
        );
        assert_eq!(push_removed_json("d1")["event"], "push_removed");
        assert_eq!(
            push_removed_line("d1"),
            "removed the push token of device d1"
        );
    }
}
