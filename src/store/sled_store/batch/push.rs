//! The outbox writes of a batch: push tokens, and one pending push job per
//! device written in the same transaction as the message it announces, so
//! a crash loses neither. A newer message rewrites the device's job
//! (coalescing) with a new generation; a delivery result applies only to
//! the generation it delivered.

use prost::Message;

use super::{tx, Batch, TxResult};
use crate::store::records::{decode, user_str_key, DeviceValue, PushJobValue, PushTokenValue};
use crate::store::sled_store::social::token_value;
use crate::store::{
    msg_id_time_ms, NewMessage, PushPlan, PushTokenRecord, Seq, UserId, WriteOutcome,
};

impl Batch<'_> {
    fn token_value(&self, key: &[u8]) -> TxResult<Option<PushTokenValue>> {
        match self.push_tokens.get(key)? {
            Some(raw) => Ok(Some(tx(decode("push token", &raw))?)),
            None => Ok(None),
        }
    }

    fn job_value(&self, key: &[u8]) -> TxResult<Option<PushJobValue>> {
        match self.push_jobs.get(key)? {
            Some(raw) => Ok(Some(tx(decode("push job", &raw))?)),
            None => Ok(None),
        }
    }

    /// A job for each planned device whose user got an entry of this
    /// message (the sender's own devices never get one).
    pub(super) fn write_push_jobs(
        &mut self,
        m: &NewMessage,
        plan: &PushPlan,
        queued: &[(UserId, Seq)],
    ) -> TxResult<()> {
        let now = msg_id_time_ms(m.msg_id);
        for (user, device_id) in &plan.targets {
            let Some(&(_, seq)) = queued.iter().find(|(u, _)| u == user) else {
                continue;
            };
            if *user == m.from {
                continue;
            }
            let key = user_str_key(*user, device_id);
            // Unregistered since the committer looked: nothing to push to.
            let Some(token) = self.token_value(&key)? else {
                continue;
            };
            let acked = match self.devices.get(&key)? {
                Some(raw) => tx(decode::<DeviceValue>("device", &raw))?.acked_seq,
                None => 0,
            };
            let mut job = self.job_value(&key)?.unwrap_or_else(|| PushJobValue {
                not_before_ms: now.max(token.last_pushed_ms.saturating_add(plan.coalesce_ms)),
                ..PushJobValue::default()
            });
            job.badge = seq.saturating_sub(acked);
            job.peer = if m.group == 0 { m.from } else { 0 };
            job.group = m.group;
            job.max_seq = seq;
            job.preview = plan.preview.clone();
            job.generation = m.msg_id;
            job.token = Some(token);
            self.push_jobs.insert(&key[..], job.encode_to_vec())?;
        }
        Ok(())
    }

    pub(super) fn set_push_token(
        &mut self,
        user: UserId,
        device_id: &str,
        token: Option<&PushTokenRecord>,
    ) -> TxResult<WriteOutcome> {
        let key = user_str_key(user, device_id);
        match token {
            Some(token) => {
                let mut value = token_value(token);
                // A re-registration keeps the coalescing clock.
                if let Some(old) = self.token_value(&key)? {
                    value.last_pushed_ms = old.last_pushed_ms;
                }
                self.push_tokens.insert(&key[..], value.encode_to_vec())?;
                Ok(WriteOutcome::PushUpdated(true))
            }
            None => {
                let existed = self.push_tokens.remove(&key[..])?;
                self.push_jobs.remove(&key[..])?;
                Ok(WriteOutcome::PushUpdated(existed))
            }
        }
    }

    pub(super) fn push_done(
        &mut self,
        user: UserId,
        device_id: &str,
        generation: u64,
        pushed: bool,
        now_ms: u64,
    ) -> TxResult<WriteOutcome> {
        let key = user_str_key(user, device_id);
        if let (true, Some(mut token)) = (pushed, self.token_value(&key)?) {
            token.last_pushed_ms = now_ms;
            self.push_tokens.insert(&key[..], token.encode_to_vec())?;
        }
        match self.job_value(&key)? {
            Some(job) if job.generation == generation => {
                self.push_jobs.remove(&key[..])?;
                Ok(WriteOutcome::PushUpdated(true))
            }
            _ => Ok(WriteOutcome::PushUpdated(false)),
        }
    }

    pub(super) fn push_retry(
        &mut self,
        user: UserId,
        device_id: &str,
        generation: u64,
        not_before_ms: u64,
        attempts: u32,
    ) -> TxResult<WriteOutcome> {
        let key = user_str_key(user, device_id);
        let Some(mut job) = self.job_value(&key)? else {
            return Ok(WriteOutcome::PushUpdated(false));
        };
        // A newer message rewrote the job meanwhile: its content is newer,
        // but the provider is still failing, so it waits all the same.
        job.not_before_ms = job.not_before_ms.max(not_before_ms);
        job.attempts = if job.generation == generation {
            attempts
        } else {
            job.attempts.max(attempts)
        };
        self.push_jobs.insert(&key[..], job.encode_to_vec())?;
        Ok(WriteOutcome::PushUpdated(true))
    }

    pub(super) fn push_token_rejected(
        &mut self,
        user: UserId,
        device_id: &str,
        token: &str,
    ) -> TxResult<WriteOutcome> {
        let key = user_str_key(user, device_id);
        // The device may have registered a fresh token since: keep that one.
        match self.token_value(&key)? {
            Some(current) if current.token == token => {
                self.push_tokens.remove(&key[..])?;
                self.push_jobs.remove(&key[..])?;
                Ok(WriteOutcome::PushUpdated(true))
            }
            _ => Ok(WriteOutcome::PushUpdated(false)),
        }
    }
}
