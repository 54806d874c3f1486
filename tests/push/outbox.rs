//! An outbox over a Vec, with the store's rules (one job per device,
//! generation checks), that reports every call to the test.

use std::collections::HashSet;
use std::sync::Mutex;

use pigeon_server::push::{Outbox, PushJob, PushTarget};
use pigeon_server::store::StoreError;
use tokio::sync::{mpsc, Notify};

use super::fake::WAIT;

/// What the worker did to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Done(PushJob),
    Retry {
        job: PushJob,
        not_before_ms: u64,
        attempts: u32,
    },
    Rejected(PushJob),
}

pub struct VecOutbox {
    jobs: Mutex<Vec<PushJob>>,
    online: Mutex<HashSet<(u64, String)>>,
    wake: Notify,
    events: mpsc::UnboundedSender<Event>,
}

pub struct Events(mpsc::UnboundedReceiver<Event>);

impl Events {
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.0.recv())
            .await
            .expect("the worker did nothing with the outbox in time")
            .expect("outbox gone")
    }
}

impl VecOutbox {
    pub fn new() -> (VecOutbox, Events) {
        let (events, rx) = mpsc::unbounded_channel();
        let outbox = VecOutbox {
            jobs: Mutex::new(Vec::new()),
            online: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            events,
        };
        (outbox, Events(rx))
    }

    /// Write a job the way the store does: a device's pending job is
    /// replaced (coalesced) with a newer generation, keeping its timing.
    pub fn put(&self, mut job: PushJob) {
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(old) = jobs
            .iter_mut()
            .find(|j| j.user == job.user && j.device_id == job.device_id)
        {
            job.generation = old.generation + 1;
            job.not_before_ms = old.not_before_ms;
            job.attempts = old.attempts;
            *old = job;
        } else {
            jobs.push(job);
        }
        drop(jobs);
        self.wake.notify_one();
    }

    pub fn set_online(&self, user: u64, device: &str) {
        self.online
            .lock()
            .unwrap()
            .insert((user, device.to_owned()));
    }

    pub fn pending(&self) -> Vec<PushJob> {
        self.jobs.lock().unwrap().clone()
    }

    fn same(a: &PushJob, b: &PushJob) -> bool {
        a.user == b.user && a.device_id == b.device_id
    }
}

impl Outbox for VecOutbox {
    async fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<PushJob>, StoreError> {
        let mut due: Vec<PushJob> = self
            .jobs
            .lock()
            .unwrap()
            .iter()
            .filter(|j| j.not_before_ms <= now_ms)
            .cloned()
            .collect();
        due.sort_by_key(|j| j.not_before_ms);
        due.truncate(limit);
        Ok(due)
    }

    async fn done(&self, job: &PushJob) -> Result<(), StoreError> {
        self.jobs
            .lock()
            .unwrap()
            .retain(|j| !(Self::same(j, job) && j.generation == job.generation));
        let _ = self.events.send(Event::Done(job.clone()));
        Ok(())
    }

    async fn retry(
        &self,
        job: &PushJob,
        not_before_ms: u64,
        attempts: u32,
    ) -> Result<(), StoreError> {
        for j in self.jobs.lock().unwrap().iter_mut() {
            if Self::same(j, job) && j.generation == job.generation {
                j.not_before_ms = not_before_ms;
                j.attempts = attempts;
            }
        }
        let _ = self.events.send(Event::Retry {
            job: job.clone(),
            not_before_ms,
            attempts,
        });
        Ok(())
    }

    async fn token_rejected(&self, job: &PushJob) -> Result<(), StoreError> {
        self.jobs.lock().unwrap().retain(|j| !Self::same(j, job));
        let _ = self.events.send(Event::Rejected(job.clone()));
        Ok(())
    }

    fn is_online(&self, user: u64, device_id: &str) -> bool {
        self.online
            .lock()
            .unwrap()
            .contains(&(user, device_id.to_owned()))
    }

    async fn wait_for_work(&self) {
        self.wake.notified().await
    }
}

/// A job for `user`'s `device`, due at `now_ms`, from peer 7.
pub fn job(user: u64, device: &str, target: PushTarget, now_ms: u64) -> PushJob {
    PushJob {
        user,
        device_id: device.to_owned(),
        target,
        badge: 1,
        peer_user_id: 7,
        group_id: 0,
        max_seq: 11,
        preview: None,
        attempts: 0,
        not_before_ms: now_ms,
        generation: 1,
    }
}
