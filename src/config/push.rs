//! The `[push]` section: offline push through APNs, FCM and a webhook.
//!
//! Keys are flat (`push.apns_key_file`, not `[push.apns]`) because every
//! other section is one level deep and the environment names follow the
//! dotted key. Checking that the key files parse is left to the push
//! module when it builds its clients; here only ranges, URLs and the
//! "all or none" rules are checked.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration_text, readable_file, ConfigError};

/// Production APNs.
pub const APNS_ENDPOINT: &str = "https://api.push.apple.com";
/// APNs for development builds of an app.
pub const APNS_SANDBOX_ENDPOINT: &str = "https://api.sandbox.push.apple.com";
/// FCM HTTP v1 (`/v1/projects/{id}/messages:send` is appended).
pub const FCM_ENDPOINT: &str = "https://fcm.googleapis.com";

/// Offline push settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Push {
    /// Whether the push worker runs at all.
    pub enabled: bool,
    /// Put the message text in the notification. Off: no content leaves
    /// the server, only a generic title, the badge, the conversation and
    /// the max seq.
    pub content_preview: bool,
    /// The notification title shown on the phone.
    pub alert_title: String,
    /// Pushes to one device are at least this far apart; messages in
    /// between raise the badge of the one pending push.
    #[serde(with = "duration_text")]
    pub coalesce_window: Duration,
    /// Deliveries in flight at once, per provider.
    pub concurrency: usize,
    /// First retry delay; doubles per attempt (full jitter).
    #[serde(with = "duration_text")]
    pub backoff_base: Duration,
    /// Longest retry delay (a Retry-After from the provider may be longer,
    /// up to one hour).
    #[serde(with = "duration_text")]
    pub backoff_cap: Duration,
    /// Deliveries tried for one job before it is dropped.
    pub max_attempts: u32,
    /// One provider request, connection included.
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    /// How often the outbox is checked for jobs whose retry time came
    /// (jobs written by this process wake the worker at once).
    #[serde(with = "duration_text")]
    pub poll_interval: Duration,
    /// Trust only this CA (PEM) for provider endpoints instead of the
    /// system's roots (for a TLS-inspecting proxy, or tests).
    pub ca_file: Option<PathBuf>,
    /// APNs signing key (.p8, PKCS#8 PEM) from the Apple developer account.
    pub apns_key_file: Option<PathBuf>,
    /// The key's id (10 characters, shown next to the key).
    pub apns_key_id: Option<String>,
    /// The Apple developer team id (10 characters).
    pub apns_team_id: Option<String>,
    /// Default `apns-topic` (the app's bundle id) for devices that
    /// registered without one.
    pub apns_topic: Option<String>,
    /// Production APNs base URL.
    pub apns_endpoint: String,
    /// Sandbox APNs base URL, for tokens registered as sandbox.
    pub apns_sandbox_endpoint: String,
    /// Google service-account key (JSON) with the Firebase messaging role.
    pub fcm_service_account_file: Option<PathBuf>,
    /// Firebase project id; unset: the service account's `project_id`.
    pub fcm_project_id: Option<String>,
    /// FCM base URL.
    pub fcm_endpoint: String,
    /// OAuth2 token URL; unset: the service account's `token_uri`.
    pub fcm_token_endpoint: Option<String>,
    /// The webhook's URL (https).
    pub webhook_url: Option<String>,
    /// File holding the webhook's HMAC-SHA256 secret (its bytes, trailing
    /// newline removed).
    pub webhook_secret_file: Option<PathBuf>,
}

impl Default for Push {
    fn default() -> Self {
        Push {
            enabled: false,
            content_preview: false,
            alert_title: "New message".to_owned(),
            coalesce_window: Duration::from_secs(10),
            concurrency: 64,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(5 * 60),
            max_attempts: 12,
            request_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            ca_file: None,
            apns_key_file: None,
            apns_key_id: None,
            apns_team_id: None,
            apns_topic: None,
            apns_endpoint: APNS_ENDPOINT.to_owned(),
            apns_sandbox_endpoint: APNS_SANDBOX_ENDPOINT.to_owned(),
            fcm_service_account_file: None,
            fcm_project_id: None,
            fcm_endpoint: FCM_ENDPOINT.to_owned(),
            fcm_token_endpoint: None,
            webhook_url: None,
            webhook_secret_file: None,
        }
    }
}

impl Push {
    /// Whether APNs is configured (key file, key id and team id).
    pub fn apns_configured(&self) -> bool {
        self.apns_key_file.is_some()
    }

    /// Whether FCM is configured.
    pub fn fcm_configured(&self) -> bool {
        self.fcm_service_account_file.is_some()
    }

    /// Whether the webhook is configured.
    pub fn webhook_configured(&self) -> bool {
        self.webhook_url.is_some()
    }

    /// Check ranges, URLs and the all-or-none groups; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_owned(),
            })
        };
        if self.concurrency == 0 {
            return invalid("push.concurrency", "must be above 0");
        }
        if self.max_attempts == 0 {
            return invalid("push.max_attempts", "must be above 0");
        }
        for (key, value) in [
            ("push.backoff_base", self.backoff_base),
            ("push.request_timeout", self.request_timeout),
            ("push.poll_interval", self.poll_interval),
        ] {
            if value.is_zero() {
                return invalid(key, "must be above zero");
            }
        }
        if self.backoff_cap < self.backoff_base {
            return invalid("push.backoff_cap", "must be at least push.backoff_base");
        }
        if self.alert_title.trim().is_empty() {
            return invalid("push.alert_title", "must not be empty");
        }
        for (key, url) in [
            ("push.apns_endpoint", Some(&self.apns_endpoint)),
            (
                "push.apns_sandbox_endpoint",
                Some(&self.apns_sandbox_endpoint),
            ),
            ("push.fcm_endpoint", Some(&self.fcm_endpoint)),
            ("push.fcm_token_endpoint", self.fcm_token_endpoint.as_ref()),
            ("push.webhook_url", self.webhook_url.as_ref()),
        ] {
            if let Some(url) = url {
                https_url(url).map_err(|problem| ConfigError::Invalid { key, problem })?;
            }
        }
        let apns = [
            ("push.apns_key_file", self.apns_key_file.is_some()),
            ("push.apns_key_id", self.apns_key_id.is_some()),
            ("push.apns_team_id", self.apns_team_id.is_some()),
        ];
        if apns.iter().any(|(_, set)| *set) {
            if let Some((key, _)) = apns.iter().find(|(_, set)| !set) {
                return invalid(
                    key,
                    "must be set with push.apns_key_file, push.apns_key_id and push.apns_team_id",
                );
            }
        }
        if self.webhook_url.is_some() != self.webhook_secret_file.is_some() {
            return invalid(
                "push.webhook_secret_file",
                "push.webhook_url and push.webhook_secret_file must be set together",
            );
        }
        for (key, path) in [
            ("push.ca_file", &self.ca_file),
            ("push.apns_key_file", &self.apns_key_file),
            (
                "push.fcm_service_account_file",
                &self.fcm_service_account_file,
            ),
            ("push.webhook_secret_file", &self.webhook_secret_file),
        ] {
            if let Some(path) = path {
                readable_file(path).map_err(|problem| ConfigError::Invalid { key, problem })?;
            }
        }
        if self.enabled
            && !self.apns_configured()
            && !self.fcm_configured()
            && !self.webhook_configured()
        {
            return invalid(
                "push.enabled",
                "no provider is configured: set push.apns_key_file, \
                 push.fcm_service_account_file or push.webhook_url",
            );
        }
        Ok(())
    }
}

/// An `https://host[:port][/path]` URL; the error says what is wrong.
fn https_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!("{url:?} is not an https:// URL"));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    url.parse::<http::Uri>()
        .map(drop)
        .map_err(|e| format!("{url:?}: {e}"))
}
