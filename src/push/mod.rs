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
//! - A new job is written due at once (`not_before_ms` = now) and a
//!   coalesced update (a newer message for a device that already has a
//!   pending job) keeps the pending job's `not_before_ms` and `attempts`,
//!   raises `badge`/`max_seq` and bumps `generation`.
//! - The worker spaces pushes to one device at least `push.coalesce_window`
//!   apart by deferring (with [`Outbox::retry`], attempts unchanged) a job
//!   that comes due sooner than that after the device's last push.
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
