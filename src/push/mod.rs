//! Offline push: from the durable outbox to the phone.
//!
//! When none of a recipient's devices is connected, the store writes a
//! [`PushJob`] into a durable outbox in the same atomic batch as the message
//! (at most one pending job per device, carrying the latest badge). This
//! module owns everything from the outbox outwards: the [`Outbox`] interface
//! the store implements, the worker that drains it, and the provider
//! clients (APNs, FCM, a signed webhook). It reads the outbox and asks it
//! whether a device is online; it never touches sessions, the gateway or
//! the message path, and a slow or failing provider never slows a send.
//!
//! The contract with the store side:
//!
//! - A new job is due at once, or when the device's coalesce window
//!   (`push.coalesce_window` after its last push) ends; a coalesced update
//!   (a newer message for a device that already has a pending job) keeps
//!   the pending job's `not_before_ms` and `attempts`, raises
//!   `badge`/`max_seq` and bumps `generation`.
//! - The worker also spaces the pushes it sent itself at least
//!   `push.coalesce_window` apart, deferring (with [`Outbox::retry`],
//!   attempts unchanged) a job that comes due sooner than that, so an
//!   outbox that does not track push times still coalesces.
//! - A job is deleted only by [`Outbox::done`] (provider accepted it, the
//!   device is online, or the provider refused it for a reason other than
//!   the token) or [`Outbox::token_rejected`]; both leave a newer
//!   generation in place, so a message that arrived during delivery still
//!   gets its push.

use std::future::Future;

use crate::store::StoreError;

/// One pending push to one device: what the outbox holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    /// The recipient.
    pub user: u64,
    /// The recipient's device (the client-chosen device id).
    pub device_id: String,
    /// Where the device receives pushes.
    pub target: PushTarget,
    /// The user's unread count when the job was last updated.
    pub badge: u64,
    /// The conversation of the latest message: the peer for a 1:1 message,
    /// 0 for a group message.
    pub peer_user_id: u64,
    /// The group of the latest message, 0 for a 1:1 message.
    pub group_id: u64,
    /// The top of the user's queue (or the group timeline) when the job was
    /// last updated, so the app knows what to pull.
    pub max_seq: u64,
    /// Text of the latest message; only set when the server option
    /// `push.content_preview` is on (and then only for text content).
    pub preview: Option<String>,
    /// Deliveries tried so far that failed with a retryable error.
    pub attempts: u32,
    /// Not to be tried before this time (ms since the Unix epoch).
    pub not_before_ms: u64,
    /// Bumped by the store on every coalesced update, so the worker's
    /// `done`/`retry` never removes or delays a newer job.
    pub generation: u64,
}

/// Where a device receives pushes, as it registered them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTarget {
    /// Apple Push Notification service.
    Apns {
        /// The device token (hex, as the app got it from iOS).
        device_token: String,
        /// The app's bundle id (the `apns-topic`); empty: `push.apns_topic`.
        topic: String,
        /// Whether the token belongs to the sandbox (development) environment.
        sandbox: bool,
    },
    /// Firebase Cloud Messaging (HTTP v1).
    Fcm {
        /// The FCM registration token.
        registration_token: String,
    },
    /// The operator's webhook (`push.webhook_url`); the device registered
    /// for it without a token of its own.
    Webhook,
}

/// The durable outbox of push jobs, implemented by the store side.
pub trait Outbox: Send + Sync + 'static {
    /// Jobs due at `now_ms` (not_before_ms <= now), oldest first, at most `limit`.
    fn due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<PushJob>, StoreError>> + Send;

    /// Provider accepted it, or the device is online now: delete the job if
    /// its generation is unchanged (a newer coalesced job stays).
    fn done(&self, job: &PushJob) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Try again at `not_before_ms` with `attempts` (only if generation unchanged).
    fn retry(
        &self,
        job: &PushJob,
        not_before_ms: u64,
        attempts: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The provider refused the token for good: delete the device's push
    /// token and the job.
    fn token_rejected(&self, job: &PushJob) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the device has a live session (then no push is sent; call `done`).
    fn is_online(&self, user: u64, device_id: &str) -> bool;

    /// Resolves when a new job may be due (so the worker sleeps until then
    /// or until the next retry time).
    fn wait_for_work(&self) -> impl Future<Output = ()> + Send;
}

pub mod apns;
pub mod fcm;
pub mod http;
pub mod jwt;
pub mod outcome;
pub mod payload;
pub mod webhook;
pub mod worker;

use std::sync::Arc;

use crate::config::Push;
use apns::{ApnsClient, ApnsSettings};
use fcm::{FcmClient, FcmSettings, ServiceAccount};
use http::{HttpsClient, Protocols};
use outcome::Outcome;
use payload::Notice;
use webhook::WebhookClient;

/// A push provider (also the index of its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// Apple Push Notification service.
    Apns = 0,
    /// Firebase Cloud Messaging.
    Fcm = 1,
    /// The operator's webhook.
    Webhook = 2,
}

/// A push setting that cannot be used, naming its config key.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {problem}")]
pub struct SetupError {
    /// The dotted config key.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl From<SetupError> for crate::config::ConfigError {
    fn from(e: SetupError) -> Self {
        crate::config::ConfigError::Invalid {
            key: e.key,
            problem: e.problem,
        }
    }
}

/// The configured provider clients.
#[derive(Default)]
pub struct Providers {
    /// APNs, if `push.apns_key_file` is set.
    pub apns: Option<ApnsClient>,
    /// FCM, if `push.fcm_service_account_file` is set.
    pub fcm: Option<FcmClient>,
    /// The webhook, if `push.webhook_url` is set.
    pub webhook: Option<WebhookClient>,
}

impl Providers {
    /// Read the key files and build a client for each configured provider.
    pub fn from_config(push: &Push) -> Result<Providers, SetupError> {
        let read = |key: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| SetupError {
                key,
                problem: format!("cannot read {}: {e}", path.display()),
            })
        };
        let roots = if push.apns_configured() || push.fcm_configured() || push.webhook_configured()
        {
            let roots = http::roots(push.ca_file.as_deref()).map_err(|e| SetupError {
                key: "push.ca_file",
                problem: e.to_string(),
            })?;
            Arc::new(roots)
        } else {
            return Ok(Providers::default());
        };
        let mut providers = Providers::default();
        if let (Some(file), Some(key_id), Some(team_id)) =
            (&push.apns_key_file, &push.apns_key_id, &push.apns_team_id)
        {
            let settings = ApnsSettings {
                key_pem: read("push.apns_key_file", file)?,
                key_id: key_id.clone(),
                team_id: team_id.clone(),
                default_topic: push.apns_topic.clone(),
                endpoint: push.apns_endpoint.clone(),
                sandbox_endpoint: push.apns_sandbox_endpoint.clone(),
                timeout: push.request_timeout,
            };
            let http = HttpsClient::new(roots.clone(), Protocols::H2Only);
            providers.apns = Some(ApnsClient::new(settings, http)?);
        }
        if let Some(file) = &push.fcm_service_account_file {
            let key = "push.fcm_service_account_file";
            let text = read(key, file)?;
            let account: ServiceAccount =
                serde_json::from_slice(&text).map_err(|e| SetupError {
                    key,
                    problem: format!("not a service-account key file: {e}"),
                })?;
            let settings = FcmSettings {
                account,
                project_id: push.fcm_project_id.clone(),
                endpoint: push.fcm_endpoint.clone(),
                token_endpoint: push.fcm_token_endpoint.clone(),
                timeout: push.request_timeout,
            };
            let http = HttpsClient::new(roots.clone(), Protocols::H2Only);
            providers.fcm = Some(FcmClient::new(settings, http)?);
        }
        if let (Some(url), Some(file)) = (&push.webhook_url, &push.webhook_secret_file) {
            let key = "push.webhook_secret_file";
            let mut secret = read(key, file)?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.is_empty() {
                return Err(SetupError {
                    key,
                    problem: format!("{} is empty", file.display()),
                });
            }
            let http = HttpsClient::new(roots, Protocols::H2OrHttp1);
            providers.webhook = Some(WebhookClient::new(
                url.clone(),
                &secret,
                push.request_timeout,
                http,
            ));
        }
        Ok(providers)
    }

    /// The provider that serves `target`, if it is configured.
    pub fn serving(&self, target: &PushTarget) -> Option<Provider> {
        let provider = Provider::of(target);
        let configured = match provider {
            Provider::Apns => self.apns.is_some(),
            Provider::Fcm => self.fcm.is_some(),
            Provider::Webhook => self.webhook.is_some(),
        };
        configured.then_some(provider)
    }

    /// Try one delivery of `notice` for `job`.
    pub async fn deliver(&self, job: &PushJob, notice: &Notice, now_ms: u64) -> Outcome {
        let unconfigured = || Outcome::Failed {
            reason: "provider not configured".to_owned(),
        };
        match &job.target {
            PushTarget::Apns {
                device_token,
                topic,
                sandbox,
            } => match &self.apns {
                Some(apns) => {
                    apns.deliver(device_token, topic, *sandbox, notice, now_ms)
                        .await
                }
                None => unconfigured(),
            },
            PushTarget::Fcm { registration_token } => match &self.fcm {
                Some(fcm) => fcm.deliver(registration_token, notice, now_ms).await,
                None => unconfigured(),
            },
            PushTarget::Webhook => match &self.webhook {
                Some(webhook) => webhook.deliver(job, notice, now_ms).await,
                None => unconfigured(),
            },
        }
    }
}
