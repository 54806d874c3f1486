//! Offline push: register or remove this device's push token, and tell the
//! server when the app goes to the background. Each call sends one request
//! and unwraps its answer; an `Error` answer becomes [`SdkError::Server`]
//! (see [`Connection::request`]). The token belongs to the device the
//! connection logged in with.

use std::fmt;

use pigeon_protocol::{pb, Body};

use super::Connection;
use crate::error::SdkError;

/// Where the server should send this device's pushes while it has no
/// foreground session.
#[derive(Clone, PartialEq, Eq)]
pub enum PushRegistration {
    /// Apple Push Notification service.
    Apns {
        /// The APNs device token (hex), 1 to 4096 bytes.
        token: String,
        /// The app's bundle id (apns-topic); empty: the server's
        /// `push.apns_topic`.
        topic: String,
        /// True for tokens of development builds (the sandbox environment).
        sandbox: bool,
    },
    /// Firebase Cloud Messaging.
    Fcm {
        /// The FCM registration token, 1 to 4096 bytes.
        token: String,
    },
    /// The operator's webhook (its URL is server configuration); no token.
    Webhook,
}

impl PushRegistration {
    /// The provider, as the protocol names it.
    pub fn provider(&self) -> pb::PushProvider {
        match self {
            PushRegistration::Apns { .. } => pb::PushProvider::Apns,
            PushRegistration::Fcm { .. } => pb::PushProvider::Fcm,
            PushRegistration::Webhook => pb::PushProvider::Webhook,
        }
    }

    /// The request that registers this.
    fn request(self) -> pb::PushTokenRequest {
        let provider = self.provider() as i32;
        let (token, topic, sandbox) = match self {
            PushRegistration::Apns {
                token,
                topic,
                sandbox,
            } => (token, topic, sandbox),
            PushRegistration::Fcm { token } => (token, String::new(), false),
            PushRegistration::Webhook => (String::new(), String::new(), false),
        };
        pb::PushTokenRequest {
            provider,
            token,
            topic,
            sandbox,
            remove: false,
        }
    }
}

impl fmt::Debug for PushRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Push tokens address one phone: keep them out of debug logs.
        match self {
            PushRegistration::Apns { topic, sandbox, .. } => f
                .debug_struct("Apns")
                .field("token", &"***")
                .field("topic", topic)
                .field("sandbox", sandbox)
                .finish(),
            PushRegistration::Fcm { .. } => f.debug_struct("Fcm").field("token", &"***").finish(),
            PushRegistration::Webhook => f.write_str("Webhook"),
        }
    }
}

impl Connection {
    /// Register this device's push token, replacing any earlier one. While
    /// the device has no live session (or said it is in the background,
    /// see [`Connection::set_background`]), messages for the user make the
    /// server push to it. A token of the wrong size, a token with
    /// `Webhook`, or a topic over 255 bytes is refused with
    /// `INVALID_ARGUMENT`. Needs a login.
    pub async fn register_push_token(
        &self,
        registration: PushRegistration,
    ) -> Result<(), SdkError> {
        let body = Body::PushToken(registration.request());
        expect_answer!(self.request(body).await?, PushTokenSet)?;
        Ok(())
    }

    /// Remove this device's push token (nothing happens if it has none):
    /// the server stops pushing to it. Needs a login.
    pub async fn remove_push_token(&self) -> Result<(), SdkError> {
        let body = Body::PushToken(pb::PushTokenRequest {
            remove: true,
            ..Default::default()
        });
        expect_answer!(self.request(body).await?, PushTokenSet)?;
        Ok(())
    }

    /// Tell the server the app went to the background (`true`) or came
    /// back (`false`). In the background the connection stays up, but
    /// messages for this device also make the server push to its
    /// registered token, as if it were offline. A new login starts in the
    /// foreground. Needs a login.
    pub async fn set_background(&self, background: bool) -> Result<(), SdkError> {
        let body = Body::AppState(pb::AppStateRequest { background });
        expect_answer!(self.request(body).await?, AppStateSet)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_registration_fills_only_its_provider_fields() {
        let apns = PushRegistration::Apns {
            token: "ab12".into(),
            topic: "com.example.chat".into(),
            sandbox: true,
        }
        .request();
        assert_eq!(apns.provider(), pb::PushProvider::Apns);
        assert_eq!(
            (apns.token.as_str(), apns.topic.as_str(), apns.sandbox),
            ("ab12", "com.example.chat", true)
        );
        let fcm = PushRegistration::Fcm { token: "f".into() }.request();
        assert_eq!(fcm.provider(), pb::PushProvider::Fcm);
        assert_eq!((fcm.token.as_str(), fcm.topic.as_str()), ("f", ""));
        let webhook = PushRegistration::Webhook.request();
        assert_eq!(webhook.provider(), pb::PushProvider::Webhook);
        assert!(webhook.token.is_empty() && !webhook.remove);
    }

    #[test]
    fn debug_hides_the_token() {
        let apns = PushRegistration::Apns {
            token: "secret-token".into(),
            topic: "com.example.chat".into(),
            sandbox: false,
        };
        let shown = format!(
            "{apns:?} {:?}",
            PushRegistration::Fcm {
                token: "secret-token".into()
            }
        );
        assert!(!shown.contains("secret-token"), "{shown}");
        assert!(shown.contains("com.example.chat"), "{shown}");
    }
}
