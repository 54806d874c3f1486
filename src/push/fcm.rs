//! Firebase Cloud Messaging, HTTP v1 API.
//!
//! Auth is OAuth2 with a service account: an RS256 JWT assertion (`iss` =
//! the account's email, `scope` = firebase.messaging, `aud` = the token
//! URL) is exchanged at the token endpoint for an access token, which is
//! kept until shortly before it expires. One exchange at a time: pushes
//! that need a token while one is being fetched wait for it.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{HttpsClient, Reply};
use super::jwt::Signer;
use super::outcome::{retry_after, Outcome};
use super::payload::Notice;
use super::SetupError;

/// The OAuth2 scope for sending with FCM.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's token endpoint, when neither the config nor the key names one.
pub const TOKEN_ENDPOINT: &str = "https://oauth2.googleapis.com/token";
/// Lifetime asked for in the assertion (Google's maximum).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// An access token is replaced this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The fields of a service-account key file that are used.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    /// The project the account belongs to.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The key's id (the JWT `kid`).
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// PKCS#8 PEM RSA key.
    pub private_key: String,
    /// The account's email (the JWT `iss`).
    pub client_email: String,
    /// Where access tokens come from.
    #[serde(default)]
    pub token_uri: Option<String>,
}

/// What the FCM client needs from the config.
#[derive(Debug, Clone)]
pub struct FcmSettings {
    /// The service account, parsed.
    pub account: ServiceAccount,
    /// `push.fcm_project_id`, if set.
    pub project_id: Option<String>,
    /// The API base URL.
    pub endpoint: String,
    /// `push.fcm_token_endpoint`, if set.
    pub token_endpoint: Option<String>,
    /// One request's deadline.
    pub timeout: Duration,
}

/// One FCM sender.
pub struct FcmClient {
    http: HttpsClient,
    signer: Signer,
    kid: Option<String>,
    email: String,
    token_endpoint: String,
    send_url: String,
    timeout: Duration,
    /// The access token and when (unix ms) to stop using it. A tokio mutex
    /// held across the exchange, so concurrent pushes share one exchange.
    access: tokio::sync::Mutex<Option<(String, u64)>>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl FcmClient {
    /// A client; fails if the key or the project id is missing or unusable.
    pub fn new(settings: FcmSettings, http: HttpsClient) -> Result<FcmClient, SetupError> {
        let invalid = |problem: String| SetupError {
            key: "push.fcm_service_account_file",
            problem,
        };
        let account = settings.account;
        let signer = Signer::rs256_from_pem(account.private_key.as_bytes())
            .map_err(|e| invalid(format!("private_key: {e}")))?;
        let project = settings
            .project_id
            .or(account.project_id)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| SetupError {
                key: "push.fcm_project_id",
                problem: "not set, and the service account has no project_id".to_owned(),
            })?;
        if !project
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b':' || b == b'.')
        {
            return Err(SetupError {
                key: "push.fcm_project_id",
                problem: format!("{project:?} is not a project id"),
            });
        }
        let token_endpoint = settings
            .token_endpoint
            .or(account.token_uri)
            .unwrap_or_else(|| TOKEN_ENDPOINT.to_owned());
        let endpoint = settings.endpoint.trim_end_matches('/');
        Ok(FcmClient {
            http,
            signer,
            kid: account.private_key_id,
            email: account.client_email,
            token_endpoint,
            send_url: format!("{endpoint}/v1/projects/{project}/messages:send"),
            timeout: settings.timeout,
            access: tokio::sync::Mutex::new(None),
        })
    }

    /// A usable access token: the kept one, or a fresh exchange.
    async fn access_token(&self, now_ms: u64) -> Result<String, Outcome> {
        let mut kept = self.access.lock().await;
        if let Some((token, until)) = kept.as_ref() {
            if now_ms < *until {
                return Ok(token.clone());
            }
        }
        let iat = now_ms / 1000;
        let claims = Claims {
            iss: &self.email,
            scope: SCOPE,
            aud: &self.token_endpoint,
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs(),
        };
        let assertion = self
            .signer
            .sign(self.kid.as_deref(), &claims)
            .map_err(|e| Outcome::Failed {
                reason: e.to_string(),
            })?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| Outcome::Failed {
                reason: format!("cannot build the token request: {e}"),
            })?;
        let reply = self
            .http
            .send(request, self.timeout)
            .await
            .map_err(|e| Outcome::retry(format!("fcm token: {e}")))?;
        if reply.status != StatusCode::OK {
            let now = UNIX_EPOCH + Duration::from_millis(now_ms);
            if reply.status.is_client_error() && reply.status != StatusCode::TOO_MANY_REQUESTS {
                // The key, account or clock is wrong: nothing a retry fixes
                // by itself, but the job is kept (and retried) meanwhile.
                tracing::error!(
                    status = reply.status.as_u16(),
                    body = %String::from_utf8_lossy(&reply.body),
                    "the FCM token endpoint refused the service account"
                );
            }
            return Err(Outcome::Retry {
                after: retry_after(&reply.headers, now),
                reason: format!("fcm token endpoint {}", reply.status.as_u16()),
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&reply.body)
            .map_err(|e| Outcome::retry(format!("fcm token answer: {e}")))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        // Keep it until shortly before it expires (half of it, if short).
        let usable = lifetime.checked_sub(REFRESH_MARGIN).unwrap_or(lifetime / 2);
        let until = now_ms + usable.as_millis() as u64;
        *kept = Some((answer.access_token.clone(), until));
        Ok(answer.access_token)
    }

    async fn forget_token(&self) {
        *self.access.lock().await = None;
    }

    /// Send `notice` to one registration token.
    pub async fn deliver(&self, registration_token: &str, notice: &Notice, now_ms: u64) -> Outcome {
        if registration_token.is_empty() {
            return Outcome::TokenRejected {
                reason: "empty registration token".to_owned(),
            };
        }
        let access = match self.access_token(now_ms).await {
            Ok(access) => access,
            Err(outcome) => return outcome,
        };
        let body = message(registration_token, notice).to_string();
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.send_url)
            .header("authorization", format!("Bearer {access}"))
            .header("content-type", "application/json; charset=utf-8")
            .body(Full::new(Bytes::from(body)));
        let reply = match self.http.deliver(request, self.timeout).await {
            Ok(reply) => reply,
            Err(outcome) => return outcome,
        };
        let outcome = classify(&reply, now_ms);
        if reply.status == StatusCode::UNAUTHORIZED {
            self.forget_token().await;
        }
        outcome
    }
}

/// Map an FCM answer to an outcome.
fn classify(reply: &Reply, now_ms: u64) -> Outcome {
    if reply.status.is_success() {
        return Outcome::Delivered;
    }
    let error = serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|v| v.get("error").cloned())
        .unwrap_or(Value::Null);
    let status = error.get("status").and_then(Value::as_str).unwrap_or("");
    let details = error.get("details").and_then(Value::as_array);
    let details = details.map(Vec::as_slice).unwrap_or_default();
    let error_code = details
        .iter()
        .find_map(|d| d.get("errorCode")?.as_str())
        .unwrap_or(status);
    let on_token = details.iter().any(|d| {
        d.get("fieldViolations")
            .and_then(Value::as_array)
            .is_some_and(|fields| {
                fields
                    .iter()
                    .any(|f| f.get("field").and_then(Value::as_str) == Some("message.token"))
            })
    }) || error
        .get("message")
        .and_then(Value::as_str)
        .is_some_and(|m| m.contains("registration token"));
    let described = format!("fcm {} {error_code}", reply.status.as_u16());
    let now = UNIX_EPOCH + Duration::from_millis(now_ms);
    match (reply.status.as_u16(), error_code) {
        (_, "UNREGISTERED" | "SENDER_ID_MISMATCH") => Outcome::TokenRejected { reason: described },
        (_, "INVALID_ARGUMENT") if on_token => Outcome::TokenRejected { reason: described },
        (_, "THIRD_PARTY_AUTH_ERROR") => Outcome::Failed { reason: described },
        // The access token expired or was revoked: a fresh one next time.
        (401, _) => Outcome::retry(described),
        (429, _) | (500..=599, _) => Outcome::Retry {
            after: retry_after(&reply.headers, now),
            reason: described,
        },
        _ => Outcome::Failed { reason: described },
    }
}

/// The v1 message: a notification with the generic title, pigeon's data
/// (strings, as FCM requires), a collapse key and tag per conversation,
/// and the badge for Android and for iOS devices reached through FCM.
pub fn message(registration_token: &str, notice: &Notice) -> Value {
    let collapse = notice.conversation.collapse_id();
    let (field, id) = notice.conversation_fields();
    let mut notification = json!({ "title": notice.title });
    if let Some(preview) = &notice.preview {
        notification["body"] = Value::from(preview.as_str());
    }
    json!({
        "message": {
            "token": registration_token,
            "notification": notification,
            "data": {
                field: id.to_string(),
                "max_seq": notice.max_seq.to_string(),
                "badge": notice.badge.to_string(),
            },
            "android": {
                "collapse_key": collapse,
                "priority": "HIGH",
                "notification": {
                    "tag": collapse,
                    "notification_count": notice.badge,
                },
            },
            "apns": {
                "headers": { "apns-collapse-id": collapse, "apns-priority": "10" },
                "payload": { "aps": { "badge": notice.badge, "thread-id": collapse } },
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn reply(status: u16, body: Value) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    fn fcm_error(status: u16, name: &str, code: Option<&str>, field: Option<&str>) -> Reply {
        let mut details = vec![];
        if let Some(code) = code {
            details.push(json!({
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": code,
            }));
        }
        if let Some(field) = field {
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{ "field": field, "description": "bad" }],
            }));
        }
        reply(
            status,
            json!({ "error": { "code": status, "message": "x", "status": name, "details": details } }),
        )
    }

    #[test]
    fn errors_are_classified_by_fcm_error_code() {
        let c = |r: &Reply| classify(r, 0).label();
        assert_eq!(c(&reply(200, json!({"name": "m/1"}))), "delivered");
        assert_eq!(
            c(&fcm_error(404, "NOT_FOUND", Some("UNREGISTERED"), None)),
            "token_rejected"
        );
        assert_eq!(
            c(&fcm_error(
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                Some("message.token")
            )),
            "token_rejected"
        );
        assert_eq!(
            c(&fcm_error(
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
                Some("message.android.ttl")
            )),
            "failed"
        );
        assert_eq!(
            c(&fcm_error(
                429,
                "RESOURCE_EXHAUSTED",
                Some("QUOTA_EXCEEDED"),
                None
            )),
            "retry"
        );
        assert_eq!(
            c(&fcm_error(503, "UNAVAILABLE", Some("UNAVAILABLE"), None)),
            "retry"
        );
        assert_eq!(c(&fcm_error(401, "UNAUTHENTICATED", None, None)), "retry");
        assert_eq!(c(&reply(500, json!("not json at all"))), "retry");
    }
}
