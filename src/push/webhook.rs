//! The generic webhook: one signed JSON POST per push, for operators who
//! relay pushes through their own service.
//!
//! Signature: `X-Pigeon-Signature: v1=<hex HMAC-SHA256(secret,
//! "{timestamp}.{body}")>` with `X-Pigeon-Timestamp: {unix seconds}`, so a
//! receiver can check both the body and its freshness (and refuse
//! replays). The answer: 2xx accepted; 410 Gone means the device is gone
//! (its registration is removed); 429, 5xx and no answer are retried;
//! anything else is dropped and logged.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use ring::hmac;
use serde_json::{json, Value};

use super::http::HttpsClient;
use super::outcome::{retry_after, Outcome};
use super::payload::Notice;
use super::PushJob;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-pigeon-signature";
/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "x-pigeon-timestamp";

/// One webhook sender.
pub struct WebhookClient {
    http: HttpsClient,
    url: String,
    key: hmac::Key,
    timeout: Duration,
}

impl WebhookClient {
    /// A client posting to `url`, signing with `secret`.
    pub fn new(url: String, secret: &[u8], timeout: Duration, http: HttpsClient) -> WebhookClient {
        WebhookClient {
            http,
            url,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            timeout,
        }
    }

    /// Post `notice` for `job`'s device.
    pub async fn deliver(&self, job: &PushJob, notice: &Notice, now_ms: u64) -> Outcome {
        let body = body(job, notice).to_string();
        let timestamp = (now_ms / 1000).to_string();
        let signature = sign(&self.key, &timestamp, body.as_bytes());
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, format!("v1={signature}"))
            .body(Full::new(Bytes::from(body)));
        let reply = match self.http.deliver(request, self.timeout).await {
            Ok(reply) => reply,
            Err(outcome) => return outcome,
        };
        let described = format!("webhook {}", reply.status.as_u16());
        let now = UNIX_EPOCH + Duration::from_millis(now_ms);
        match reply.status.as_u16() {
            200..=299 => Outcome::Delivered,
            410 => Outcome::TokenRejected { reason: described },
            429 | 500..=599 => Outcome::Retry {
                after: retry_after(&reply.headers, now),
                reason: described,
            },
            _ => Outcome::Failed { reason: described },
        }
    }
}

/// Hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn sign(key: &hmac::Key, timestamp: &str, body: &[u8]) -> String {
    let mut context = hmac::Context::with_key(key);
    context.update(timestamp.as_bytes());
    context.update(b".");
    context.update(body);
    hex(context.sign().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// The JSON posted: who, which device, and the same provider-neutral
/// notice the phone providers get.
pub fn body(job: &PushJob, notice: &Notice) -> Value {
    let (field, id) = notice.conversation_fields();
    let mut body = json!({
        "user_id": job.user,
        "device_id": job.device_id,
        "title": notice.title,
        "badge": notice.badge,
        field: id,
        "collapse_id": notice.conversation.collapse_id(),
        "max_seq": notice.max_seq,
    });
    if let Some(preview) = &notice.preview {
        body["preview"] = Value::from(preview.as_str());
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: Python's hmac.new(b"Jefe",
        // b'1700000000.{"a":1}', hashlib.sha256).hexdigest().
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            sign(&key, "1700000000", br#"{"a":1}"#),
            "fa5f6481efc59da48b19c9dc10196c9953e5651f8304b3a318b6b87d70272e0a"
        );
    }
}
