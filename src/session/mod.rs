//! Who is online where: user → live sessions, each with a coalescing notify
//! slot and a kick signal. No I/O and no persistence.
//!
//! The messaging code never reaches this registry directly; it notifies
//! through the [`Notifier`] trait, so notify routing between several nodes
//! can later sit behind the same interface.

pub mod presence;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pigeon_protocol::{KickReason, Platform, PlatformClass};

use crate::config::KickPolicy;
use crate::store::{GroupId, Seq, StoredMessage, UserId};
use presence::Presences;

/// Tells online devices that a user's queue grew, that a large group's
/// timeline grew, or an ephemeral event. Must never block.
pub trait Notifier: Send + Sync + 'static {
    /// The user's queue now reaches `max_seq`.
    fn notify(&self, user: UserId, max_seq: Seq);

    /// The user's queue now reaches `seq` with `message` (a chat message,
    /// shared by every queue it went into; its own `seq` is not the
    /// user's). Sessions that asked for inline messages may get it inside
    /// their Notify; the others, and by default every session, get
    /// [`Notifier::notify`].
    fn notify_message(&self, user: UserId, seq: Seq, message: &Arc<StoredMessage>) {
        let _ = message;
        self.notify(user, seq);
    }

    /// A large group's timeline now reaches `seq` with `message` (a chat
    /// message); like [`Notifier::notify_message`] for its GroupNotify.
    fn notify_group_message(
        &self,
        group: GroupId,
        seq: Seq,
        members: &[UserId],
        message: &Arc<StoredMessage>,
    ) {
        let _ = message;
        self.notify_group(group, seq, members);
    }

    /// A large group's timeline now reaches `max_seq`; tell the online
    /// ones among `members`.
    fn notify_group(&self, group: GroupId, max_seq: Seq, members: &[UserId]);

    /// An ephemeral event for every online device of `user` (dropped for
    /// offline users and, oldest first, for devices that do not read).
    fn push(&self, user: UserId, event: Push);

    /// Whether a message for this device of `user` should also go out as
    /// an offline push: none of the user's devices has a live session in
    /// the foreground (no session, or each app said it is in the
    /// background).
    fn wants_push(&self, user: UserId, device_id: &str) -> bool;
}

/// An ephemeral server push, never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// `reader` read your 1:1 conversation with them up to `read_seq`.
    ReadReceipt {
        /// Who read.
        reader: UserId,
        /// Their read position.
        read_seq: Seq,
    },
    /// `from` is typing (or stopped) to you or in `group`.
    Typing {
        /// Who.
        from: UserId,
        /// The group (0 for 1:1).
        group: GroupId,
        /// Typing or stopped.
        typing: bool,
    },
    /// A watched user went online or offline.
    Presence {
        /// Who.
        user: UserId,
        /// Online now.
        online: bool,
        /// Last seen, ms since the epoch.
        last_seen_ms: u64,
    },
}

/// Ephemeral events (and inline entries) a session holds for a slow reader
/// before dropping the oldest.
const EVENT_QUEUE_CAP: usize = 256;

/// The largest content a Notify carries inline; a bigger message is only
/// announced, and the device pulls it.
pub const INLINE_MAX_CONTENT: usize = 4096;

/// Content bytes of inline entries one session holds at most while its
/// writer has not sent them: a reader that falls behind costs this much,
/// not its backlog. Entries past it are only announced.
pub const INLINE_BUDGET: usize = 16 * 1024;

/// What a session's writer has to send besides notifies: ephemeral events,
/// and the entries a Notify or GroupNotify may carry inline, in the order
/// they came.
#[derive(Debug)]
enum Pending {
    Event(Push),
    Entry(Seq, Arc<StoredMessage>),
    GroupEntry(GroupId, Seq, Arc<StoredMessage>),
}

impl Pending {
    fn inline_bytes(&self) -> usize {
        match self {
            Pending::Entry(_, m) | Pending::GroupEntry(_, _, m) => m.content.len(),
            Pending::Event(_) => 0,
        }
    }
}

/// Entries for one Notify or GroupNotify: `(seq, message)` in seq order.
pub type InlineEntries = Vec<(Seq, Arc<StoredMessage>)>;

/// What a session's writer takes at a wake-up (see
/// [`SessionSignal::take`]).
#[derive(Debug, Default)]
pub struct Taken {
    /// The queue's new top, above the last one sent, with its inline
    /// entries (empty if none end at it without a gap).
    pub notify: Option<(Seq, InlineEntries)>,
    /// Each large group's new timeline top, with its inline entries.
    pub groups: Vec<(GroupId, Seq, InlineEntries)>,
    /// Ephemeral events, oldest first.
    pub events: Vec<Push>,
}

/// Adds `entry` to `run`, which keeps only a run without gaps: after a
/// gap it starts again.
fn extend_run(run: &mut InlineEntries, entry: (Seq, Arc<StoredMessage>)) {
    if run.last().is_some_and(|(last, _)| *last + 1 != entry.0) {
        run.clear();
    }
    run.push(entry);
}

/// `run` if it ends at `top`, else nothing: a Notify's entries must reach
/// its max_seq.
fn ending_at(mut run: InlineEntries, top: Seq) -> InlineEntries {
    if run.last().map(|(last, _)| *last) != Some(top) {
        run.clear();
    }
    run
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
    /// Large groups' timeline tops not yet sent, coalesced per group.
    groups: Mutex<HashMap<GroupId, Seq>>,
    /// Ephemeral events and inline entries not yet sent, oldest first,
    /// capped.
    events: Mutex<VecDeque<Pending>>,
    /// The app said it is in the background: offline pushes go out too.
    background: std::sync::atomic::AtomicBool,
    /// The login asked for new entries inside Notify.
    inline: std::sync::atomic::AtomicBool,
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

    fn raise_group(&self, group: GroupId, max_seq: Seq) {
        self.raise_group_top(group, max_seq);
        self.wake.notify_one();
    }

    fn raise_group_top(&self, group: GroupId, max_seq: Seq) {
        let mut groups = self.groups.lock().expect("group lock is never poisoned");
        let top = groups.entry(group).or_default();
        *top = (*top).max(max_seq);
    }

    /// Raise the notified seq to `seq` and, if this session takes inline
    /// entries and there is room, keep `message` for the Notify (see
    /// [`SessionSignal::keep_inline`]).
    fn raise_entry(&self, seq: Seq, message: &Arc<StoredMessage>) {
        let entry = |m| Pending::Entry(seq, m);
        let raise = || {
            self.notified_seq.fetch_max(seq, Ordering::AcqRel);
        };
        if !self.keep_inline(message, entry, raise) {
            self.raise(seq);
        }
    }

    /// [`SessionSignal::raise_entry`] for a large group's timeline.
    fn raise_group_entry(&self, group: GroupId, seq: Seq, message: &Arc<StoredMessage>) {
        let entry = |m| Pending::GroupEntry(group, seq, m);
        if !self.keep_inline(message, entry, || self.raise_group_top(group, seq)) {
            self.raise_group(group, seq);
        }
    }

    /// If this session takes inline entries and `message` is small enough,
    /// keep it as `entry` when there is room (skipped when full: the gap
    /// it leaves makes its notify go out without entries, and the device
    /// pulls), then `raise`, both under the event lock, so
    /// [`SessionSignal::take`] never sees an entry above the top it reads;
    /// wake the writer. False if this session does not take it at all
    /// (nothing done: the caller raises as for any notify).
    fn keep_inline(
        &self,
        message: &Arc<StoredMessage>,
        entry: impl FnOnce(Arc<StoredMessage>) -> Pending,
        raise: impl FnOnce(),
    ) -> bool {
        let len = message.content.len();
        if !self.inline.load(Ordering::Acquire) || len > INLINE_MAX_CONTENT {
            return false;
        }
        let mut events = self.events.lock().expect("event lock is never poisoned");
        let held: usize = events.iter().map(Pending::inline_bytes).sum();
        if held + len <= INLINE_BUDGET && events.len() < EVENT_QUEUE_CAP {
            events.push_back(entry(message.clone()));
        }
        raise();
        drop(events);
        self.wake.notify_one();
        true
    }

    /// Queue an ephemeral event; the oldest goes when the queue is full.
    pub fn push(&self, event: Push) {
        let mut events = self.events.lock().expect("event lock is never poisoned");
        if events.len() >= EVENT_QUEUE_CAP {
            events.pop_front();
        }
        events.push_back(Pending::Event(event));
        drop(events);
        self.wake.notify_one();
    }

    /// Ask for (or stop) inline entries in this session's notifies.
    pub fn set_inline(&self, inline: bool) {
        self.inline.store(inline, Ordering::Release);
    }

    /// Record the app's state (AppStateRequest).
    pub fn set_background(&self, background: bool) {
        self.background.store(background, Ordering::Release);
    }

    /// Whether the app said it is in the background.
    pub fn is_background(&self) -> bool {
        self.background.load(Ordering::Acquire)
    }

    /// Take everything pending but a kick: the queue notify, if its seq is
    /// above `notified` (which it raises), each large group's new top, the
    /// inline entries that end at each without a gap, and the ephemeral
    /// events. Reads the tops under the event lock (the order raises take
    /// it in), so no entry taken is above the top it goes with.
    pub fn take(&self, notified: &mut Seq) -> Taken {
        let mut events = self.events.lock().expect("event lock is never poisoned");
        let seq = self.notified_seq();
        let tops: Vec<(GroupId, Seq)> = self
            .groups
            .lock()
            .expect("group lock is never poisoned")
            .drain()
            .collect();
        let mut taken = Taken::default();
        let mut queue_run = InlineEntries::new();
        let mut group_runs: HashMap<GroupId, InlineEntries> = HashMap::new();
        for pending in events.drain(..) {
            match pending {
                Pending::Event(event) => taken.events.push(event),
                Pending::Entry(seq, m) => extend_run(&mut queue_run, (seq, m)),
                Pending::GroupEntry(group, seq, m) => {
                    extend_run(group_runs.entry(group).or_default(), (seq, m))
                }
            }
        }
        drop(events);
        if seq > *notified {
            *notified = seq;
            taken.notify = Some((seq, ending_at(queue_run, seq)));
        }
        taken.groups = tops
            .into_iter()
            .map(|(group, top)| {
                let run = group_runs.remove(&group).unwrap_or_default();
                (group, top, ending_at(run, top))
            })
            .collect();
        taken
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
    platform: Platform,
    class: PlatformClass,
    generation: u64,
    signal: Arc<SessionSignal>,
}

/// The live sessions of every user.
pub struct SessionRegistry {
    users: Mutex<HashMap<UserId, Vec<Entry>>>,
    next_generation: AtomicU64,
    policy: KickPolicy,
    presences: Presences,
    /// Live sessions per platform number, changed only under `users`' lock
    /// so they always match the map; read without it (metrics, stats).
    by_platform: [AtomicI64; PLATFORM_SLOTS],
}

/// Platform numbers counted one by one; higher ones share the last slot.
const PLATFORM_SLOTS: usize = 8;

fn platform_slot(platform: Platform) -> usize {
    usize::try_from(platform as i32)
        .unwrap_or(PLATFORM_SLOTS - 1)
        .min(PLATFORM_SLOTS - 1)
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
            presences: Presences::default(),
            by_platform: Default::default(),
        }
    }

    /// Add a session; older sessions the kick policy replaces are removed
    /// and kicked.
    pub fn register(
        &self,
        user: UserId,
        device_id: &str,
        platform: Platform,
        signal: Arc<SessionSignal>,
    ) -> Registration {
        let class = platform.class();
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let device_id: Arc<str> = Arc::from(device_id);
        let mut kicked = Vec::new();
        let came_online;
        {
            let mut users = self.users.lock().expect("registry lock is never poisoned");
            let sessions = users.entry(user).or_default();
            came_online = sessions.is_empty();
            sessions.retain(|old| {
                let reason = if *old.device_id == *device_id {
                    KickReason::SameDevice
                } else if self.policy == KickPolicy::PlatformClass && old.class == class {
                    KickReason::SamePlatformClass
                } else {
                    return true;
                };
                kicked.push((old.signal.clone(), reason, old.device_id.clone()));
                self.counted(old.platform, -1);
                false
            });
            self.counted(platform, 1);
            // Most users have one or two devices online: grow one at a time
            // rather than to the default first capacity of four.
            sessions.reserve_exact(1);
            sessions.push(Entry {
                device_id: device_id.clone(),
                platform,
                class,
                generation,
                signal,
            });
        }
        if came_online {
            self.presences.changed(user, true, crate::clock::now_ms());
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
        let before = sessions.len();
        sessions.retain(|s| {
            let gone = s.generation == registration.generation;
            if gone {
                self.counted(s.platform, -1);
            }
            !gone
        });
        let went_offline = sessions.is_empty() && before > 0;
        if sessions.is_empty() {
            users.remove(&registration.user);
        }
        drop(users);
        if went_offline {
            self.presences
                .changed(registration.user, false, crate::clock::now_ms());
        }
    }

    /// Presence subscriptions and last-seen times.
    pub fn presences(&self) -> &Presences {
        &self.presences
    }

    /// Whether `user` has a live session.
    pub fn is_online(&self, user: UserId) -> bool {
        let users = self.users.lock().expect("registry lock is never poisoned");
        users.get(&user).is_some_and(|s| !s.is_empty())
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
                self.counted(s.platform, -1);
            }
            !hit
        });
        let went_offline = sessions.is_empty();
        if went_offline {
            users.remove(&user);
        }
        drop(users);
        if went_offline {
            self.presences.changed(user, false, crate::clock::now_ms());
        }
    }

    /// Kick every session (server shutdown).
    pub fn kick_all(&self, kick: Kick) {
        let users = {
            let mut users = self.users.lock().expect("registry lock is never poisoned");
            for count in &self.by_platform {
                count.store(0, Ordering::Relaxed);
            }
            std::mem::take(&mut *users)
        };
        for entry in users.into_values().flatten() {
            entry.signal.kick(kick.clone());
        }
    }

    /// Live sessions per platform number, for metrics and the admin's stats.
    pub fn sessions_by_platform(&self) -> Vec<(i32, u64)> {
        self.by_platform
            .iter()
            .enumerate()
            .filter_map(|(slot, n)| {
                let n = u64::try_from(n.load(Ordering::Relaxed)).ok()?;
                Some((i32::try_from(slot).ok()?, n))
            })
            .collect()
    }

    /// Call only with the `users` lock held, so counts match the map.
    fn counted(&self, platform: Platform, delta: i64) {
        self.by_platform[platform_slot(platform)].fetch_add(delta, Ordering::Relaxed);
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

    fn notify_message(&self, user: UserId, seq: Seq, message: &Arc<StoredMessage>) {
        let users = self.users.lock().expect("registry lock is never poisoned");
        for entry in users.get(&user).into_iter().flatten() {
            entry.signal.raise_entry(seq, message);
        }
    }

    fn notify_group_message(
        &self,
        group: GroupId,
        seq: Seq,
        members: &[UserId],
        message: &Arc<StoredMessage>,
    ) {
        let users = self.users.lock().expect("registry lock is never poisoned");
        for member in members {
            for entry in users.get(member).into_iter().flatten() {
                entry.signal.raise_group_entry(group, seq, message);
            }
        }
    }

    fn notify_group(&self, group: GroupId, max_seq: Seq, members: &[UserId]) {
        let users = self.users.lock().expect("registry lock is never poisoned");
        for member in members {
            for entry in users.get(member).into_iter().flatten() {
                entry.signal.raise_group(group, max_seq);
            }
        }
    }

    fn push(&self, user: UserId, event: Push) {
        let users = self.users.lock().expect("registry lock is never poisoned");
        for entry in users.get(&user).into_iter().flatten() {
            entry.signal.push(event.clone());
        }
    }

    fn wants_push(&self, user: UserId, _device_id: &str) -> bool {
        // Pushed only while none of the user's devices has a session in
        // the foreground: a user reading on the laptop gets no phone push.
        let users = self.users.lock().expect("registry lock is never poisoned");
        !users
            .get(&user)
            .into_iter()
            .flatten()
            .any(|e| !e.signal.is_background())
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
        let platform = match class {
            PlatformClass::Mobile => Platform::Ios,
            PlatformClass::Desktop => Platform::Desktop,
            PlatformClass::Web => Platform::Web,
        };
        (r.register(user, device, platform, signal.clone()), signal)
    }

    fn count_of(r: &SessionRegistry, platform: Platform) -> u64 {
        let found = r.sessions_by_platform().into_iter();
        found
            .filter(|(p, _)| *p == platform as i32)
            .map(|(_, n)| n)
            .sum()
    }

    #[test]
    fn sessions_are_counted_by_platform_through_every_exit() {
        let r = SessionRegistry::new(KickPolicy::PlatformClass);
        let (phone, _) = register(&r, 1, "phone", PlatformClass::Mobile);
        register(&r, 1, "laptop", PlatformClass::Desktop);
        register(&r, 2, "web", PlatformClass::Web);
        assert_eq!(count_of(&r, Platform::Ios), 1);
        // Replaced by a newer login of the same class: still one.
        register(&r, 1, "tablet", PlatformClass::Mobile);
        assert_eq!(count_of(&r, Platform::Ios), 1);
        r.unregister(&phone); // stale: already gone, nothing to subtract
        assert_eq!(count_of(&r, Platform::Ios), 1);
        r.kick_user(
            1,
            None,
            Kick {
                reason: KickReason::Revoked,
                message: String::new(),
            },
        );
        assert_eq!(
            (count_of(&r, Platform::Ios), count_of(&r, Platform::Desktop)),
            (0, 0)
        );
        assert_eq!(count_of(&r, Platform::Web), 1);
        r.kick_all(Kick {
            reason: KickReason::ServerShutdown,
            message: String::new(),
        });
        assert_eq!(count_of(&r, Platform::Web), 0);
        assert_eq!(r.session_count(), 0);
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
    fn pushes_go_out_only_while_no_device_of_the_user_is_in_the_foreground() {
        let r = SessionRegistry::new(KickPolicy::PlatformClass);
        assert!(r.wants_push(1, "phone"), "offline: push");
        let (phone_reg, phone) = register(&r, 1, "phone", PlatformClass::Mobile);
        assert!(!r.wants_push(1, "phone"), "in the foreground: no push");
        phone.set_background(true);
        assert!(r.wants_push(1, "phone"), "backgrounded: push");
        let (laptop, _) = register(&r, 1, "laptop", PlatformClass::Desktop);
        assert!(!r.wants_push(1, "phone"), "reading on the laptop: no push");
        r.unregister(&laptop);
        r.unregister(&phone_reg);
        assert!(r.wants_push(1, "phone"));
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

    fn chat(content_len: usize) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            seq: 0,
            msg_id: 1,
            from: 2,
            from_device: "d".into(),
            to: 1,
            client_msg_id: "c".into(),
            content_type: "t".into(),
            content: vec![7u8; content_len].into(),
            group: 0,
            kind: crate::store::EntryKind::Chat,
            conv_seq: 1,
            recalled: false,
        })
    }

    fn seqs(taken: &Taken) -> Option<(Seq, Vec<Seq>)> {
        let (max, entries) = taken.notify.as_ref()?;
        Some((*max, entries.iter().map(|(seq, _)| *seq).collect()))
    }

    /// Two sessions of user 1: one that did not ask for inline entries,
    /// one that did.
    fn plain_and_inline(r: &SessionRegistry) -> (Arc<SessionSignal>, Arc<SessionSignal>) {
        let (_, plain) = register(r, 1, "plain", PlatformClass::Mobile);
        let (_, inline) = register(r, 1, "inline", PlatformClass::Desktop);
        inline.set_inline(true);
        (plain, inline)
    }

    #[test]
    fn inline_entries_go_only_to_sessions_that_asked_and_only_without_gaps() {
        let r = SessionRegistry::new(KickPolicy::Device);
        let (plain, inline) = plain_and_inline(&r);
        let m = chat(10);
        r.notify_message(1, 4, &m);
        r.notify_message(1, 5, &m);
        let mut sent = 0;
        assert_eq!(seqs(&plain.take(&mut sent)), Some((5, vec![])));
        let mut sent = 0;
        assert_eq!(seqs(&inline.take(&mut sent)), Some((5, vec![4, 5])));
        assert_eq!(seqs(&inline.take(&mut sent)), None, "nothing new");

        // An entry announced without its message (a group event) breaks
        // the run: only what follows it is carried.
        r.notify_message(1, 6, &m);
        r.notify(1, 7);
        r.notify_message(1, 8, &m);
        assert_eq!(seqs(&inline.take(&mut sent)), Some((8, vec![8])));
        // A run that does not reach the top is not carried at all.
        r.notify_message(1, 9, &m);
        r.notify(1, 10);
        assert_eq!(seqs(&inline.take(&mut sent)), Some((10, vec![])));
        // Events still come out, in order, beside the notify.
        r.notify_message(1, 11, &m);
        r.push(
            1,
            Push::ReadReceipt {
                reader: 2,
                read_seq: 3,
            },
        );
        let taken = inline.take(&mut sent);
        assert_eq!(seqs(&taken), Some((11, vec![11])));
        assert_eq!(
            taken.events,
            vec![Push::ReadReceipt {
                reader: 2,
                read_seq: 3
            }]
        );
    }

    fn group_seqs(taken: &Taken) -> Vec<(GroupId, Seq, Vec<Seq>)> {
        let mut groups: Vec<_> = taken
            .groups
            .iter()
            .map(|(g, top, entries)| (*g, *top, entries.iter().map(|(s, _)| *s).collect()))
            .collect();
        groups.sort();
        groups
    }

    #[test]
    fn large_group_entries_are_kept_per_group_beside_the_queue_ones() {
        let r = SessionRegistry::new(KickPolicy::Device);
        let (plain, s) = plain_and_inline(&r);
        let m = chat(10);
        r.notify_group_message(7, 3, &[1, 2], &m);
        r.notify_message(1, 1, &m);
        r.notify_group_message(8, 1, &[1], &m);
        r.notify_group_message(7, 4, &[1, 2], &m);
        let mut sent = 0;
        let taken = s.take(&mut sent);
        assert_eq!(seqs(&taken), Some((1, vec![1])));
        assert_eq!(
            group_seqs(&taken),
            vec![(7, 4, vec![3, 4]), (8, 1, vec![1])]
        );
        let mut sent = 0;
        let bare = plain.take(&mut sent);
        assert_eq!(group_seqs(&bare), vec![(7, 4, vec![]), (8, 1, vec![])]);

        // An event in the timeline (announced bare) breaks the group's run.
        r.notify_group_message(7, 5, &[1], &m);
        r.notify_group(7, 6, &[1]);
        assert_eq!(group_seqs(&s.take(&mut sent)), vec![(7, 6, vec![])]);
        r.notify_group_message(7, 7, &[1], &m);
        assert_eq!(group_seqs(&s.take(&mut sent)), vec![(7, 7, vec![7])]);
        // Not a member named: nothing.
        r.notify_group_message(9, 1, &[2], &m);
        assert!(s.take(&mut sent).groups.is_empty());
    }

    #[test]
    fn a_slow_reader_holds_a_bounded_share_of_inline_content() {
        let r = SessionRegistry::new(KickPolicy::Device);
        let (_, s) = register(&r, 1, "phone", PlatformClass::Mobile);
        s.set_inline(true);
        let big = chat(INLINE_MAX_CONTENT + 1);
        r.notify_message(1, 1, &big);
        let mut sent = 0;
        assert_eq!(seqs(&s.take(&mut sent)), Some((1, vec![])), "too big");
        let m = chat(INLINE_MAX_CONTENT);
        let fit = INLINE_BUDGET / INLINE_MAX_CONTENT;
        for seq in 2..=(2 + fit as u64) {
            r.notify_message(1, seq, &m);
        }
        // One more than fits: its entry was skipped, so the run that ends
        // at the top is broken and nothing is carried.
        let top = 2 + fit as u64;
        assert_eq!(seqs(&s.take(&mut sent)), Some((top, vec![])));
        // Taken, the room is back.
        r.notify_message(1, top + 1, &m);
        assert_eq!(seqs(&s.take(&mut sent)), Some((top + 1, vec![top + 1])));
    }
}
