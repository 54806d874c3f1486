//! A small, fixed set of threads for password hashing.
//!
//! argon2id takes ~19 MiB and tens of milliseconds of a core per hash. On
//! tokio's blocking pool, hashes land on whichever of its (up to 512)
//! threads is free, and glibc keeps a memory arena per thread that rarely
//! shrinks: after a login storm the process held gigabytes. A fixed pool
//! bounds both the hashes in flight and the arenas that ever hold them.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Runs closures on `threads` dedicated threads, in submission order.
pub struct HashPool {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl HashPool {
    /// Start the threads. They exit when the pool is dropped.
    pub fn new(threads: usize) -> std::io::Result<HashPool> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("pigeon-hash-{i}"))
                .spawn(move || loop {
                    // Hold the lock only to take a job, never while running it.
                    let job = rx.lock().expect("hash queue lock is never poisoned").recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // the pool is gone
                    }
                })?;
        }
        Ok(HashPool {
            jobs: Mutex::new(jobs),
        })
    }

    /// Run `f` on a pool thread and wait for its result; None if the pool
    /// has stopped.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The waiter may have gone (its connection closed); nothing to do.
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .expect("hash queue lock is never poisoned")
            .send(job)
            .ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_pool_threads() {
        let pool = HashPool::new(2).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .flatten();
        assert!(name.unwrap().starts_with("pigeon-hash-"));
        let results =
            futures_util::future::join_all((0..10).map(|i| pool.run(move || i * 2))).await;
        assert_eq!(results, (0..10).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }
}
