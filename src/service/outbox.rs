//! The push outbox over the store: what the push worker ([`crate::push`])
//! reads and updates. Jobs are written by the committer in the same batch
//! as their message; every update here goes through the committer too, so
//! a job's generation check and its write cannot be split.

use std::sync::Arc;

use tokio::sync::Notify;

use super::committer::Committer;
use crate::push::{Outbox, PushJob, PushTarget};
use crate::session::Notifier;
use crate::store::{PushJobRecord, Store, StoreError, WriteOp};

/// The wire's PushProvider numbers, as tokens are stored.
pub const PROVIDER_APNS: u32 = 1;
/// FCM.
pub const PROVIDER_FCM: u32 = 2;
/// The operator's webhook.
pub const PROVIDER_WEBHOOK: u32 = 3;

/// The store's outbox, as the push worker sees it.
pub struct StoreOutbox {
    store: Arc<dyn Store>,
    committer: Committer,
    notifier: Arc<dyn Notifier>,
    wake: Arc<Notify>,
}

impl StoreOutbox {
    /// The outbox of `store`, updated through `committer`; `wake` is the
    /// committer's signal that a batch wrote jobs.
    pub fn new(
        store: Arc<dyn Store>,
        committer: Committer,
        notifier: Arc<dyn Notifier>,
        wake: Arc<Notify>,
    ) -> Self {
        StoreOutbox {
            store,
            committer,
            notifier,
            wake,
        }
    }

    async fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        self.committer.write(op).await.map(drop)
    }
}

fn job(record: PushJobRecord) -> Option<PushJob> {
    let token = record.token;
    let target = match token.provider {
        PROVIDER_APNS => PushTarget::Apns {
            device_token: token.token,
            topic: token.topic,
            sandbox: token.sandbox,
        },
        PROVIDER_FCM => PushTarget::Fcm {
            registration_token: token.token,
        },
        PROVIDER_WEBHOOK => PushTarget::Webhook,
        _ => return None,
    };
    Some(PushJob {
        user: record.user,
        device_id: record.device_id,
        target,
        badge: record.badge,
        peer_user_id: record.peer,
        group_id: record.group,
        max_seq: record.max_seq,
        preview: record.preview,
        attempts: record.attempts,
        not_before_ms: record.not_before_ms,
        generation: record.generation,
    })
}

fn token_of(target: &PushTarget) -> String {
    match target {
        PushTarget::Apns { device_token, .. } => device_token.clone(),
        PushTarget::Fcm { registration_token } => registration_token.clone(),
        PushTarget::Webhook => String::new(),
    }
}

impl Outbox for StoreOutbox {
    async fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<PushJob>, StoreError> {
        let store = self.store.clone();
        let (records, _) = tokio::task::spawn_blocking(move || store.due_push_jobs(now_ms, limit))
            .await
            .map_err(|_| StoreError::Io("the outbox read was cancelled".into()))??;
        Ok(records.into_iter().filter_map(job).collect())
    }

    async fn done(&self, job: &PushJob) -> Result<(), StoreError> {
        // The worker also calls this for a device found online: then no
        // push went out and the device's coalescing clock stays where it
        // was. (A device that came online right after a real push only
        // loses the spacing of its next push.)
        let pushed = !self.is_online(job.user, &job.device_id);
        self.write(WriteOp::PushDone {
            user: job.user,
            device_id: job.device_id.clone(),
            generation: job.generation,
            pushed,
            now_ms: crate::clock::now_ms(),
        })
        .await
    }

    async fn retry(
        &self,
        job: &PushJob,
        not_before_ms: u64,
        attempts: u32,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::PushRetry {
            user: job.user,
            device_id: job.device_id.clone(),
            generation: job.generation,
            not_before_ms,
            attempts,
        })
        .await
    }

    async fn token_rejected(&self, job: &PushJob) -> Result<(), StoreError> {
        self.write(WriteOp::PushTokenRejected {
            user: job.user,
            device_id: job.device_id.clone(),
            token: token_of(&job.target),
        })
        .await
    }

    fn is_online(&self, user: u64, device_id: &str) -> bool {
        !self.notifier.wants_push(user, device_id)
    }

    async fn wait_for_work(&self) {
        self.wake.notified().await
    }
}
