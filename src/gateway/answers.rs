//! The bounded queue between a connection's read loop (one sender) and its
//! write loop (one receiver).
//!
//! tokio's mpsc channel would do, but every channel costs about 900 bytes
//! before anything is sent: its shared state is cache-line padded (three
//! 128-byte-aligned parts) and it allocates its first block of 32 slots up
//! front. With one channel per connection that was a tenth of an idle
//! connection's memory. This queue is a mutex around a `VecDeque` (freed
//! when empty) and two `Notify`s, about 150 bytes; one sender and one
//! receiver is all a connection needs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// A bounded single-producer single-consumer queue.
pub fn queue<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            sender_gone: false,
            receiver_gone: false,
        }),
        capacity: capacity.max(1),
        item_added: Notify::new(),
        space_freed: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Wakes the receiver; `notify_one` keeps a permit when it is not
    /// waiting yet, so a wake between its check and its wait is not lost.
    item_added: Notify,
    /// Wakes the sender when a full queue has room again.
    space_freed: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    sender_gone: bool,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing here panics while holding the lock; a poisoned state is
        // still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The receiver is gone: the item was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// The sending half (the read loop's).
pub struct Sender<T>(Arc<Shared<T>>);

/// The receiving half (the write loop's).
pub struct Receiver<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queue `item`, waiting while the queue is full.
    pub async fn send(&self, item: T) -> Result<(), Closed> {
        loop {
            {
                let mut state = self.0.lock();
                if state.receiver_gone {
                    return Err(Closed);
                }
                if state.items.len() < self.0.capacity {
                    state.items.push_back(item);
                    drop(state);
                    self.0.item_added.notify_one();
                    return Ok(());
                }
            }
            self.0.space_freed.notified().await;
        }
    }
}

impl<T> Receiver<T> {
    /// The next item in order; `None` once the queue is empty and the
    /// sender is gone.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut state = self.0.lock();
                if let Some(item) = state.items.pop_front() {
                    if state.items.is_empty() {
                        state.items = VecDeque::new();
                    }
                    drop(state);
                    self.0.space_freed.notify_one();
                    return Some(item);
                }
                if state.sender_gone {
                    return None;
                }
            }
            self.0.item_added.notified().await;
        }
    }

    /// Nothing is queued right now.
    pub fn is_empty(&self) -> bool {
        self.0.lock().items.is_empty()
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.item_added.notify_one();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.0.lock();
            state.receiver_gone = true;
            std::mem::take(&mut state.items)
        };
        // Dropped outside the lock: an item may be a future holding
        // anything.
        drop(items);
        self.0.space_freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn items_arrive_in_order_and_the_buffer_is_freed_when_empty() {
        let (tx, mut rx) = queue(8);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        assert!(!rx.is_empty());
        for i in 0..5 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert!(rx.is_empty());
        assert_eq!(rx.0.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_makes_the_sender_wait_until_the_receiver_takes_one() {
        let (tx, mut rx) = queue(2);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        let mut third = Box::pin(tx.send(3));
        assert!(
            third.as_mut().now_or_never().is_none(),
            "a full queue takes no more"
        );
        assert_eq!(rx.recv().await, Some(1));
        tokio::time::timeout(WAIT, third).await.unwrap().unwrap();
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let (tx, mut rx) = queue(4);
        let receiver = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.send("answer").await.unwrap();
        let got = tokio::time::timeout(WAIT, receiver).await.unwrap().unwrap();
        assert_eq!(got, Some("answer"));
    }

    #[tokio::test]
    async fn the_receiver_drains_what_is_queued_then_sees_the_end() {
        let (tx, mut rx) = queue(4);
        tx.send(7).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(7));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_sender_gets_closed_once_the_receiver_is_gone_even_while_waiting() {
        let (tx, rx) = queue(1);
        tx.send(1).await.unwrap();
        let mut waiting = Box::pin(tx.send(2));
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(rx);
        let result = tokio::time::timeout(WAIT, waiting).await.unwrap();
        assert_eq!(result, Err(Closed));
        assert_eq!(tx.send(3).await, Err(Closed));
    }
}
