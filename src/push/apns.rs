//! Apple Push Notification service over HTTP/2 with token-based auth.
//!
//! The provider token is an ES256 JWT (`kid` = key id, `iss` = team id,
//! `iat`) signed with the .p8 key. Apple wants it reused, not minted per
//! push, and refuses tokens older than an hour, so one token is kept and
//! replaced after [`TOKEN_LIFETIME`] or when APNs says it expired.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::http::{HttpsClient, Reply};
use super::jwt::Signer;
use super::outcome::{retry_after, Outcome};
use super::payload::Notice;
use super::SetupError;

/// How long one provider token is used (Apple: between 20 and 60 minutes).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);
/// APNs drops a notification it could not deliver after this long.
const EXPIRATION: Duration = Duration::from_secs(24 * 3600);
/// Longest device token accepted (they are 32 bytes = 64 hex today).
const MAX_TOKEN_HEX: usize = 200;

/// What the APNs client needs from the config.
#[derive(Debug, Clone)]
pub struct ApnsSettings {
    /// The .p8 key, PEM.
    pub key_pem: Vec<u8>,
    /// The key's id.
    pub key_id: String,
    /// The team id.
    pub team_id: String,
    /// The topic for devices that registered none.
    pub default_topic: Option<String>,
    /// Production base URL.
    pub endpoint: String,
    /// Sandbox base URL.
    pub sandbox_endpoint: String,
    /// One request's deadline.
    pub timeout: Duration,
}

/// One APNs sender (both environments).
pub struct ApnsClient {
    http: HttpsClient,
    signer: Signer,
    key_id: String,
    team_id: String,
    default_topic: Option<String>,
    endpoint: String,
    sandbox_endpoint: String,
    timeout: Duration,
    /// The provider token and when (unix seconds) it was issued.
    token: Mutex<Option<(String, u64)>>,
}

/// The claims of a provider token.
#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

impl ApnsClient {
    /// A client; fails if the key is not a P-256 PKCS#8 key.
    pub fn new(settings: ApnsSettings, http: HttpsClient) -> Result<ApnsClient, SetupError> {
        let signer = Signer::es256_from_pem(&settings.key_pem).map_err(|e| SetupError {
            key: "push.apns_key_file",
            problem: e.to_string(),
        })?;
        Ok(ApnsClient {
            http,
            signer,
            key_id: settings.key_id,
            team_id: settings.team_id,
            default_topic: settings.default_topic,
            endpoint: settings.endpoint.trim_end_matches('/').to_owned(),
            sandbox_endpoint: settings.sandbox_endpoint.trim_end_matches('/').to_owned(),
            timeout: settings.timeout,
            token: Mutex::new(None),
        })
    }

    /// The provider token for `now_secs`: the kept one while it is young
    /// enough, else a fresh one.
    fn provider_token(&self, now_secs: u64) -> Result<String, String> {
        let mut kept = self.token.lock().expect("apns token lock poisoned");
        if let Some((token, issued)) = kept.as_ref() {
            if now_secs.saturating_sub(*issued) < TOKEN_LIFETIME.as_secs() && *issued <= now_secs {
                return Ok(token.clone());
            }
        }
        let claims = Claims {
            iss: &self.team_id,
            iat: now_secs,
        };
        let token = self
            .signer
            .sign(Some(&self.key_id), &claims)
            .map_err(|e| e.to_string())?;
        *kept = Some((token.clone(), now_secs));
        Ok(token)
    }

    fn forget_token(&self) {
        *self.token.lock().expect("apns token lock poisoned") = None;
    }

    /// Send `notice` to one device.
    pub async fn deliver(
        &self,
        device_token: &str,
        topic: &str,
        sandbox: bool,
        notice: &Notice,
        now_ms: u64,
    ) -> Outcome {
        if device_token.is_empty()
            || device_token.len() > MAX_TOKEN_HEX
            || !device_token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Outcome::TokenRejected {
                reason: "malformed device token".to_owned(),
            };
        }
        let topic = match (topic.is_empty(), &self.default_topic) {
            (false, _) => topic,
            (true, Some(default)) => default.as_str(),
            (true, None) => {
                return Outcome::Failed {
                    reason:
                        "no apns topic: the device registered none and push.apns_topic is unset"
                            .to_owned(),
                }
            }
        };
        let now_secs = now_ms / 1000;
        let token = match self.provider_token(now_secs) {
            Ok(token) => token,
            Err(e) => return Outcome::Failed { reason: e },
        };
        let base = if sandbox {
            &self.sandbox_endpoint
        } else {
            &self.endpoint
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{base}/3/device/{device_token}"))
            .header("authorization", format!("bearer {token}"))
            .header("apns-topic", topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-collapse-id", notice.conversation.collapse_id())
            .header(
                "apns-expiration",
                (now_secs + EXPIRATION.as_secs()).to_string(),
            )
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload(notice).to_string())));
        match self.http.deliver(request, self.timeout).await {
            Ok(reply) => self.classify(&reply, now_ms),
            Err(outcome) => outcome,
        }
    }

    fn classify(&self, reply: &Reply, now_ms: u64) -> Outcome {
        if reply.status == StatusCode::OK {
            return Outcome::Delivered;
        }
        let reason = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("reason")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        let described = format!("apns {} {reason}", reply.status.as_u16());
        let now = UNIX_EPOCH + Duration::from_millis(now_ms);
        classify_status(reply, &reason, described, now, || self.forget_token())
    }
}

fn classify_status(
    reply: &Reply,
    reason: &str,
    described: String,
    now: SystemTime,
    forget_token: impl FnOnce(),
) -> Outcome {
    match (reply.status.as_u16(), reason) {
        (410, _) | (_, "BadDeviceToken" | "Unregistered" | "DeviceTokenNotForTopic") => {
            Outcome::TokenRejected { reason: described }
        }
        (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
            // Mint a new token for the next attempt; if the key itself is
            // wrong this keeps failing until max_attempts, and is logged.
            forget_token();
            Outcome::retry(described)
        }
        (429, _) | (500..=599, _) => Outcome::Retry {
            after: retry_after(&reply.headers, now),
            reason: described,
        },
        _ => Outcome::Failed { reason: described },
    }
}

/// The JSON body: an alert with the generic title (and the preview as
/// body only when allowed), the badge, the thread, and pigeon's own keys
/// for the app.
pub fn payload(notice: &Notice) -> Value {
    let mut alert = json!({ "title": notice.title });
    if let Some(preview) = &notice.preview {
        alert["body"] = Value::from(preview.as_str());
    }
    let (field, id) = notice.conversation_fields();
    json!({
        "aps": {
            "alert": alert,
            "badge": notice.badge,
            "sound": "default",
            "thread-id": notice.conversation.collapse_id(),
        },
        "pigeon": { field: id, "max_seq": notice.max_seq },
    })
}
