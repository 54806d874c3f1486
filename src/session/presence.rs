//! Who watches whose presence, and when each user was last seen. In
//! memory only: presence is ephemeral and never stored.
//!
//! A session subscribes to a user with [`Presences::watch`] (after the
//! service checked it may see that user); when the user's first session
//! starts or last session ends, every live watcher gets a
//! [`Push::Presence`]. Watchers are weak references, so a closed session
//! costs nothing but a slot that the next change of that user prunes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::{Push, SessionSignal};
use crate::store::UserId;

/// Presence subscriptions and last-seen times.
#[derive(Default)]
pub struct Presences {
    watchers: Mutex<HashMap<UserId, Vec<Weak<SessionSignal>>>>,
    last_seen: Mutex<HashMap<UserId, u64>>,
}

impl Presences {
    /// Subscribe `signal` to `user`'s changes (once, however often asked).
    pub fn watch(&self, user: UserId, signal: &Arc<SessionSignal>) {
        let mut watchers = self
            .watchers
            .lock()
            .expect("presence lock is never poisoned");
        let list = watchers.entry(user).or_default();
        list.retain(|w| w.strong_count() > 0);
        if !list
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(signal)))
        {
            list.push(Arc::downgrade(signal));
        }
    }

    /// `user` went online or offline at `now_ms`: remember it and tell the
    /// live watchers.
    pub fn changed(&self, user: UserId, online: bool, now_ms: u64) {
        self.last_seen
            .lock()
            .expect("presence lock is never poisoned")
            .insert(user, now_ms);
        let live: Vec<Arc<SessionSignal>> = {
            let mut watchers = self
                .watchers
                .lock()
                .expect("presence lock is never poisoned");
            let Some(list) = watchers.get_mut(&user) else {
                return;
            };
            let live: Vec<_> = list.iter().filter_map(Weak::upgrade).collect();
            list.retain(|w| w.strong_count() > 0);
            if list.is_empty() {
                watchers.remove(&user);
            }
            live
        };
        for signal in live {
            signal.push(Push::Presence {
                user,
                online,
                last_seen_ms: now_ms,
            });
        }
    }

    /// When `user` last came or went in this process's life.
    pub fn last_seen(&self, user: UserId) -> Option<u64> {
        self.last_seen
            .lock()
            .expect("presence lock is never poisoned")
            .get(&user)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_watchers_hear_changes_and_dead_ones_are_pruned() {
        let presences = Presences::default();
        let alive = SessionSignal::new();
        let gone = SessionSignal::new();
        presences.watch(7, &alive);
        presences.watch(7, &alive);
        presences.watch(7, &gone);
        drop(gone);
        presences.changed(7, true, 100);
        assert_eq!(
            alive.take(&mut 0).events,
            vec![Push::Presence {
                user: 7,
                online: true,
                last_seen_ms: 100
            }]
        );
        assert_eq!(presences.watchers.lock().unwrap()[&7].len(), 1);
        assert_eq!(presences.last_seen(7), Some(100));
        assert_eq!(presences.last_seen(8), None);
    }
}
