//! Who is online where: user → live sessions, each with a coalescing notify
//! slot and a kick signal. No I/O and no persistence.
//!
//! The messaging code never reaches this registry directly; it notifies
//! through the [`Notifier`] trait, so notify routing between several nodes
//! can later sit behind the same interface.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pigeon_protocol::{KickReason, PlatformClass};

use crate::config::KickPolicy;
use crate::store::{Seq, UserId};

/// Tells online devices that a user's queue grew. Must never block.
pub trait Notifier: Send + Sync + 'static {
    /// The user's queue now reaches `max_seq`.
    fn notify(&self, user: UserId, max_seq: Seq);
}

/// What one live session shares with the registry.
///
/// Notifies coalesce in `notified_seq` (only the highest matters); the
/// connection's writer wakes on `wake` and sends one Notify for the newest
/// value, so a slow device never accumulates a backlog.
#[derive(Debug, Default)]
pub struct SessionSignal {
    notified_seq: AtomicU64,
    kick: Mutex<Option<Kick>>,
    wake: tokio::sync::Notify,
}

/// Why and how a session was ended by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kick {
    /// The wire reason.
    pub reason: KickReason,
    /// Human detail.
    pub message: String,
}

impl SessionSignal {
    /// A fresh signal with nothing pending.
    pub fn new() -> Arc<Self> {
        Arc::new(SessionSignal::default())
    }

    /// Wait until a notify or kick may be pending. A wake-up that came before
    /// the wait is not lost.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// The highest notified seq so far.
    pub fn notified_seq(&self) -> Seq {
        self.notified_seq.load(Ordering::Acquire)
    }

    /// The kick, if this session has been ended.
    pub fn kicked(&self) -> Option<Kick> {
        self.kick
            .lock()
            .expect("kick lock is never poisoned")
            .clone()
    }

    fn raise(&self, max_seq: Seq) {
        self.notified_seq.fetch_max(max_seq, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// End this session with a kick; the connection sends it and closes.
    pub fn kick(&self, kick: Kick) {
        let mut slot = self.kick.lock().expect("kick lock is never poisoned");
        slot.get_or_insert(kick);
        drop(slot);
        self.wake.notify_one();
    }
}

struct Entry {
    device_id: Arc<str>,
    class: PlatformClass,
    generation: u64,
    signal: Arc<SessionSignal>,
}

/// The live sessions of every user.
pub struct SessionRegistry {
    users: Mutex<HashMap<UserId, Vec<Entry>>>,
    next_generation: AtomicU64,
    policy: KickPolicy,
}

/// A session's registration: needed to remove exactly this one later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device_id: Arc<str>,
    /// Unique per login; a stale connection's removal cannot touch a newer
    /// session of the same device.
    pub generation: u64,
}

impl SessionRegistry {
    /// An empty registry applying `policy` to new logins.
    pub fn new(policy: KickPolicy) -> Self {
        SessionRegistry {
            users: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            policy,
        }
    }

    /// Add a session; older sessions the kick policy replaces are removed
    /// and kicked.
    pub fn register(
        &self,
        user: UserId,
        device_id: &str,
        class: PlatformClass,
        signal: Arc<SessionSignal>,
    ) -> Registration {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let device_id: Arc<str> = Arc::from(device_id);
        let mut kicked = Vec::new();
        {
            let mut users = self.users.lock().expect("registry lock is never poisoned");
            let sessions = users.entry(user).or_default();
            sessions.retain(|old| {
                let reason = if *old.device_id == *device_id {
                    KickReason::SameDevice
                } else if self.policy == KickPolicy::PlatformClass && old.class == class {
                    KickReason::SamePlatformClass
                } else {
                    return true;
                };
                kicked.push((old.signal.clone(), reason, old.device_id.clone()));
                false
            });
            sessions.push(Entry {
                device_id: device_id.clone(),
                class,
                generation,
                signal,
            });
        }
        for (signal, reason, old_device) in kicked {
            let message = match reason {
                KickReason::SameDevice => "this device logged in again elsewhere".to_owned(),
                _ => format!("device {device_id} of the same platform class logged in; {old_device} is signed out"),
            };
            signal.kick(Kick { reason, message });
        }
        Registration {
            user,
            device_id,
            generation,
        }
    }

    /// Remove a session, only if it is still the registered one.
    pub fn unregister(&self, registration: &Registration) {
        let mut users = self.users.lock().expect("registry lock is never poisoned");
        let Some(sessions) = users.get_mut(&registration.user) else {
            return;
        };
        sessions.retain(|s| s.generation != registration.generation);
        if sessions.is_empty() {
            users.remove(&registration.user);
        }
    }

    /// Kick every session of a user (or only those of one device).
    pub fn kick_user(&self, user: UserId, device_id: Option<&str>, kick: Kick) {
        let mut users = self.users.lock().expect("registry lock is never poisoned");
        let Some(sessions) = users.get_mut(&user) else {
            return;
        };
        sessions.retain(|s| {
            let hit = device_id.is_none_or(|d| *s.device_id == *d);
            if hit {
                s.signal.kick(kick.clone());
            }
            !hit
        });
        if sessions.is_empty() {
            users.remove(&user);
        }
    }

    /// Kick every session (server shutdown).
    pub fn kick_all(&self, kick: Kick) {
        let users =
            std::mem::take(&mut *self.users.lock().expect("registry lock is never poisoned"));
        for entry in users.into_values().flatten() {
            entry.signal.kick(kick.clone());
        }
    }

    /// The device ids with a live session for a user.
    pub fn online_devices(&self, user: UserId) -> Vec<Arc<str>> {
        let users = self.users.lock().expect("registry lock is never poisoned");
        users
            .get(&user)
            .map(|s| s.iter().map(|e| e.device_id.clone()).collect())
            .unwrap_or_default()
    }

    /// How many sessions are live.
    pub fn session_count(&self) -> usize {
        let users = self.users.lock().expect("registry lock is never poisoned");
        users.values().map(Vec::len).sum()
    }
}

impl Notifier for SessionRegistry {
    fn notify(&self, user: UserId, max_seq: Seq) {
        let users = self.users.lock().expect("registry lock is never poisoned");
        for entry in users.get(&user).into_iter().flatten() {
            entry.signal.raise(max_seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(
        r: &SessionRegistry,
        user: UserId,
        device: &str,
        class: PlatformClass,
    ) -> (Registration, Arc<SessionSignal>) {
        let signal = SessionSignal::new();
        (r.register(user, device, class, signal.clone()), signal)
    }

    #[test]
    fn same_device_login_kicks_the_older_session() {
        let r = SessionRegistry::new(KickPolicy::Device);
        let (_, old) = register(&r, 1, "phone", PlatformClass::Mobile);
        let (_, new) = register(&r, 1, "phone", PlatformClass::Mobile);
        assert_eq!(old.kicked().unwrap().reason, KickReason::SameDevice);
        assert!(new.kicked().is_none());
        assert_eq!(r.session_count(), 1);
    }

    #[test]
    fn platform_class_policy_kicks_other_devices_of_the_class_only() {
        let r = SessionRegistry::new(KickPolicy::PlatformClass);
        let (_, ios) = register(&r, 1, "iphone", PlatformClass::Mobile);
        let (_, desk) = register(&r, 1, "laptop", PlatformClass::Desktop);
        let (_, other_user) = register(&r, 2, "android", PlatformClass::Mobile);
        let (_, android) = register(&r, 1, "android", PlatformClass::Mobile);
        assert_eq!(ios.kicked().unwrap().reason, KickReason::SamePlatformClass);
        assert!(desk.kicked().is_none());
        assert!(other_user.kicked().is_none());
        assert!(android.kicked().is_none());
        let device_policy = SessionRegistry::new(KickPolicy::Device);
        let (_, a) = register(&device_policy, 1, "iphone", PlatformClass::Mobile);
        register(&device_policy, 1, "android", PlatformClass::Mobile);
        assert!(a.kicked().is_none());
    }

    #[test]
    fn a_stale_session_closing_never_removes_the_newer_login() {
        let r = SessionRegistry::new(KickPolicy::PlatformClass);
        let (stale, _) = register(&r, 1, "phone", PlatformClass::Mobile);
        let (_fresh, fresh_signal) = register(&r, 1, "phone", PlatformClass::Mobile);
        r.unregister(&stale);
        assert_eq!(r.online_devices(1).len(), 1);
        r.notify(1, 9);
        assert_eq!(fresh_signal.notified_seq(), 9);
    }

    #[test]
    fn notifies_coalesce_to_the_highest_seq() {
        let r = SessionRegistry::new(KickPolicy::PlatformClass);
        let (_, s) = register(&r, 1, "phone", PlatformClass::Mobile);
        for seq in [3, 9, 5] {
            r.notify(1, seq);
        }
        assert_eq!(s.notified_seq(), 9);
    }
}
